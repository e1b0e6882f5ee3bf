//! The hub (`tide serve`, SPEC.md §5): a replica that relays, answering the HTTP
//! exchange. One thread owns the replica and does every database step in turn (SQLite
//! has one writer anyway); the HTTP side (axum on tokio) only parses, waits and answers,
//! so a slow or hostile client never holds the store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tide_bundle::WriteOptions;
use tide_core::{Card, KeyStore, Replica, ReplicaId, SecretIdentity, VersionVector};
use tokio::sync::{oneshot, watch};

use super::{Limits, hex, request_message, response_message, unhex};
use crate::error::{Result, TransportError};
use crate::pages::Outbox;

/// How a hub runs.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// What it announces and enforces.
    pub limits: Limits,
    /// How long a challenge from `hello` stays valid, in seconds.
    pub challenge_ttl_s: u64,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            limits: Limits::default(),
            challenge_ttl_s: 600,
        }
    }
}

/// A running hub; stops when [`Hub::stop`] is called or it is dropped.
pub struct Hub {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Hub {
    /// Starts a hub for the replica at `db` (made a relay), listening on `listen`
    /// (`127.0.0.1:0` picks a free port). Returns once it accepts connections.
    pub fn start(db: PathBuf, keys: KeyStore, listen: &str, options: HubOptions) -> Result<Hub> {
        let listener = std::net::TcpListener::bind(listen).map_err(|e| TransportError::Io {
            path: listen.into(),
            source: e,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TransportError::Io {
                path: listen.into(),
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| TransportError::Io {
            path: listen.into(),
            source: e,
        })?;
        // The store opens first: a database that cannot be a hub fails here, not later.
        let (jobs, store) = Store::spawn(db, keys, options.clone())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| TransportError::Io {
                    path: "the hub's runtime".into(),
                    source: e,
                })?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| {
                    TransportError::Io {
                        path: "the hub's socket".into(),
                        source: e,
                    }
                })?;
                let app = App {
                    jobs,
                    generation: store.generation,
                    limits: options.limits,
                    challenge_ttl_s: options.challenge_ttl_s,
                };
                let router = Router::new()
                    .route("/v1/hello", get(hello))
                    .route("/v1/health", get(health))
                    .route("/v1/exchange", post(exchange))
                    .route("/v1/live", get(live))
                    .with_state(app);
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .map_err(|e| TransportError::Io {
                        path: "the hub's socket".into(),
                        source: e,
                    })
            })
        });
        Ok(Hub {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes the requests in flight, and closes the store.
    pub fn stop(mut self) -> Result<()> {
        self.shut()
    }

    /// Runs until the process is interrupted (Ctrl-C), then stops.
    pub fn run_until_interrupted(self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        // The signal is caught on a small runtime of its own.
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
            }
            let _ = tx.send(());
        });
        let _ = rx.recv();
        self.stop()
    }

    fn shut(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.shut();
    }
}

/// What the HTTP side holds: the way to the store, and the store's change counter.
#[derive(Clone)]
struct App {
    jobs: mpsc::Sender<Job>,
    generation: watch::Receiver<u64>,
    limits: Limits,
    challenge_ttl_s: u64,
}

/// A request's identity, once checked.
#[derive(Clone)]
struct Auth {
    replica: ReplicaId,
    challenge: Vec<u8>,
    counter: u64,
    body_hash: [u8; 32],
}

/// What the store answers.
struct Answer {
    status: u16,
    body: Vec<u8>,
    problem: bool,
    more: bool,
    /// The body is a page (it carries changes), not an acknowledgement.
    more_or_changes: bool,
    /// Signed for this request (authenticated answers only).
    signature: Option<[u8; 64]>,
    /// Nothing to send yet: what the replica holds and the store's counter then, for a
    /// request that may wait.
    idle: Option<(VersionVector, u64)>,
}

impl Answer {
    fn problem(
        status: u16,
        kind: &str,
        title: &str,
        detail: String,
        extra: Option<(&str, String)>,
    ) -> Answer {
        let mut doc = serde_json::json!({"type": kind, "title": title, "detail": detail});
        if let Some((k, v)) = extra {
            doc[k] = serde_json::Value::String(v);
        }
        Answer {
            status,
            body: doc.to_string().into_bytes(),
            problem: true,
            more: false,
            more_or_changes: false,
            signature: None,
            idle: None,
        }
    }
}

enum Job {
    Hello(oneshot::Sender<(String, String)>),
    Health(oneshot::Sender<std::result::Result<(u64, Option<u64>), String>>),
    /// Checks a request's headers before its body is read.
    Check(
        Box<Headers>,
        oneshot::Sender<std::result::Result<Auth, Box<Answer>>>,
    ),
    /// Imports the body and answers with a page.
    Exchange(Auth, Bytes, bool, oneshot::Sender<Answer>),
    /// A page for a replica holding the vector (after a wait).
    Page(Auth, VersionVector, oneshot::Sender<Answer>),
    /// A message of a live connection: imported, answered with a page or an
    /// acknowledgement (bundles are signed; the connection was authenticated).
    Frame(ReplicaId, Bytes, oneshot::Sender<Answer>),
    /// What a replica of a live connection lacks, if anything: a page, unasked.
    Push(VersionVector, oneshot::Sender<Option<Answer>>),
}

/// The headers of an exchange request, as sent.
struct Headers {
    replica: Option<String>,
    card: Option<String>,
    challenge: Option<String>,
    counter: Option<String>,
    body_hash: Option<String>,
    signature: Option<String>,
    method: &'static str,
    path: String,
}

/// The replica the hub serves, owned by one thread.
struct Store {
    replica: Replica,
    identity: SecretIdentity,
    card: Card,
    secret: [u8; 32],
    options: HubOptions,
    generation: watch::Sender<u64>,
    last_change: Option<SystemTime>,
    checks: u64,
}

/// Most pending replicas listed at once: a flood of unknown keys cannot grow the list.
const MAX_PENDING: usize = 1000;

/// What [`Store::spawn`] hands the HTTP side.
struct Spawned {
    generation: watch::Receiver<u64>,
}

impl Store {
    fn spawn(
        db: PathBuf,
        keys: KeyStore,
        options: HubOptions,
    ) -> Result<(mpsc::Sender<Job>, Spawned)> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<watch::Receiver<u64>>>();
        std::thread::spawn(move || {
            let store = (|| -> Result<Store> {
                let mut replica = Replica::open_existing(&db, keys)?;
                replica.set_relay(true)?;
                let identity = replica.signing_identity()?;
                let card = replica.card()?;
                let secret = match replica.transport_state("hub secret")? {
                    Some(s) if s.len() == 32 => s.try_into().expect("checked length"),
                    _ => {
                        let mut s = [0u8; 32];
                        getrandom::fill(&mut s).expect("the operating system gives random bytes");
                        replica.set_transport_state("hub secret", &s)?;
                        s
                    }
                };
                let (generation, _) = watch::channel(0u64);
                Ok(Store {
                    replica,
                    identity,
                    card,
                    secret,
                    options,
                    generation,
                    last_change: None,
                    checks: 0,
                })
            })();
            let mut store = match store {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(s.generation.subscribe()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok(job) = inbox.recv() {
                store.run(job);
            }
        });
        let generation = ready_rx
            .recv()
            .map_err(|_| TransportError::Protocol("the hub's store did not start".into()))??;
        Ok((jobs, Spawned { generation }))
    }

    fn run(&mut self, job: Job) {
        match job {
            Job::Hello(reply) => {
                let _ = reply.send((self.card.to_line(), hex(&self.challenge())));
            }
            Job::Health(reply) => {
                let answer = self
                    .replica
                    .version_vector()
                    .map(|v| {
                        let age = self
                            .last_change
                            .and_then(|t| t.elapsed().ok())
                            .map(|d| d.as_secs());
                        (v.values().sum(), age)
                    })
                    .map_err(|e| e.to_string());
                let _ = reply.send(answer);
            }
            Job::Check(headers, reply) => {
                let _ = reply.send(self.check(&headers));
            }
            Job::Exchange(auth, body, wait, reply) => {
                let answer = self.exchange(&auth, &body, wait);
                let _ = reply.send(self.signed(&auth, answer));
            }
            Job::Frame(replica, body, reply) => {
                let auth = Auth {
                    replica,
                    challenge: Vec::new(),
                    counter: 0,
                    body_hash: [0; 32],
                };
                let _ = reply.send(self.exchange(&auth, &body, false));
            }
            Job::Push(since, reply) => {
                let page = self
                    .page(&since, false)
                    .ok()
                    .filter(|a| a.status == 200 && a.more_or_changes);
                let _ = reply.send(page);
            }
            Job::Page(auth, since, reply) => {
                let answer = self.page(&since, false).unwrap_or_else(|e| {
                    Answer::problem(500, "internal", "the hub failed", e.to_string(), None)
                });
                let _ = reply.send(self.signed(&auth, answer));
            }
        }
    }

    /// A fresh challenge: expiry, random bytes, and a mac over both.
    fn challenge(&self) -> Vec<u8> {
        let expiry = now_s() + self.options.challenge_ttl_s;
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).expect("the operating system gives random bytes");
        let mut c = expiry.to_be_bytes().to_vec();
        c.extend_from_slice(&random);
        let mac = blake3::keyed_hash(&self.secret, &c);
        c.extend_from_slice(&mac.as_bytes()[..16]);
        c
    }

    /// Whether a challenge is one of ours and unexpired.
    fn challenge_holds(&self, c: &[u8]) -> bool {
        if c.len() != 40 {
            return false;
        }
        let mac = blake3::keyed_hash(&self.secret, &c[..24]);
        let expiry = u64::from_be_bytes(c[..8].try_into().expect("8 bytes"));
        mac.as_bytes()[..16] == c[24..] && expiry >= now_s()
    }

    /// The header checks of SPEC.md §5.2, in order, before any body is read.
    fn check(&mut self, h: &Headers) -> std::result::Result<Auth, Box<Answer>> {
        let bad = |detail: &str| {
            Box::new(Answer::problem(
                400,
                "bad-request",
                "the request is not the exchange",
                detail.into(),
                None,
            ))
        };
        let replica = h
            .replica
            .as_deref()
            .and_then(|s| ReplicaId::parse_hex(s).ok())
            .ok_or_else(|| bad("Tide-Replica must be a replica id (32 hex digits)"))?;
        let peers = self.replica.peers().map_err(|e| Box::new(internal(e)))?;
        let Some(card) = peers.into_iter().find(|c| c.id == replica) else {
            self.note_pending(replica, h.card.as_deref());
            return Err(Box::new(Answer::problem(
                403,
                "unknown-replica",
                "this hub does not know the replica",
                format!(
                    "replica {} is not a peer of this hub; on the hub: tide peers accept {}",
                    replica.to_hex(),
                    replica.short()
                ),
                None,
            )));
        };
        let challenge = h.challenge.as_deref().and_then(unhex).unwrap_or_default();
        if !self.challenge_holds(&challenge) {
            return Err(Box::new(Answer::problem(
                401,
                "challenge-expired",
                "the challenge is not valid (expired or not this hub's)",
                "ask again with the fresh challenge".into(),
                Some(("challenge", hex(&self.challenge()))),
            )));
        }
        let counter: u64 = h
            .counter
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("Tide-Counter must be a number"))?;
        let body_hash: [u8; 32] = h
            .body_hash
            .as_deref()
            .and_then(unhex)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("Tide-Body-Hash must be 64 hex digits"))?;
        let signature: [u8; 64] = h
            .signature
            .as_deref()
            .and_then(unhex)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("Tide-Signature must be 128 hex digits"))?;
        let mut message = request_message(
            self.card.id,
            replica,
            &challenge,
            counter,
            h.method,
            &h.path,
            &[],
        );
        // The message ends with the body's hash, which the header gives.
        message.truncate(message.len() - 32);
        message.extend_from_slice(&body_hash);
        if !tide_core::verify_signature(&card.sign_key, &message, &signature) {
            return Err(Box::new(Answer::problem(
                401,
                "bad-signature",
                "the request's signature does not verify",
                format!("not signed by replica {}'s key", replica.short()),
                None,
            )));
        }
        let key = format!("auth {} {}", replica.to_hex(), hex(&challenge));
        let used: u64 = self
            .replica
            .transport_state(&key)
            .map_err(|e| Box::new(internal(e)))?
            .and_then(|b| String::from_utf8(b).ok()?.parse().ok())
            .unwrap_or(0);
        if counter <= used {
            return Err(Box::new(Answer::problem(
                401,
                "replayed",
                "the request was already seen",
                format!("counter {counter} is not above {used}"),
                None,
            )));
        }
        self.replica
            .set_transport_state(&key, counter.to_string().as_bytes())
            .map_err(|e| Box::new(internal(e)))?;
        self.checks += 1;
        if self.checks.is_multiple_of(256) {
            self.forget_expired();
        }
        Ok(Auth {
            replica,
            challenge,
            counter,
            body_hash,
        })
    }

    /// Counters of expired challenges can go: those challenges are refused anyway.
    fn forget_expired(&mut self) {
        let Ok(states) = self.replica.transport_states("auth ") else {
            return;
        };
        for (key, _) in states {
            let expired = key
                .rsplit(' ')
                .next()
                .and_then(unhex)
                .filter(|c| c.len() == 40)
                .is_none_or(|c| u64::from_be_bytes(c[..8].try_into().expect("8 bytes")) < now_s());
            if expired {
                let _ = self.replica.remove_transport_state(&key);
            }
        }
    }

    /// Lists an unknown replica that presented its card, for an operator to accept.
    fn note_pending(&mut self, replica: ReplicaId, card: Option<&str>) {
        let Some(card) = card
            .and_then(|c| Card::parse(c).ok())
            .filter(|c| c.id == replica)
        else {
            return;
        };
        let key = format!("pending {}", replica.to_hex());
        let known = self.replica.transport_state(&key).ok().flatten();
        let first = known
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.lines().nth(1))
            .map(str::to_string)
            .unwrap_or_else(|| now_s().to_string());
        if known.is_none()
            && self
                .replica
                .transport_states("pending ")
                .map_or(true, |p| p.len() >= MAX_PENDING)
        {
            return;
        }
        let value = format!("{}\n{first}\n{}\n", card.to_line(), now_s());
        let _ = self.replica.set_transport_state(&key, value.as_bytes());
    }

    /// Imports the replica's bundle and answers with a page of what it lacks.
    fn exchange(&mut self, auth: &Auth, body: &[u8], wait: bool) -> Answer {
        let header = match tide_bundle::read_header(&mut &body[..], 0) {
            Ok((h, _)) => h,
            Err(e) => return bad_bundle(e.to_string()),
        };
        if header.sender != auth.replica {
            return bad_bundle(format!(
                "the bundle is signed by {}, not by the replica that sent it",
                header.sender.short()
            ));
        }
        match tide_bundle::import(&mut self.replica, &mut &body[..], None) {
            Ok(imported) => {
                if imported.report.stored > 0 {
                    self.last_change = Some(SystemTime::now());
                    self.generation.send_modify(|g| *g += 1);
                }
            }
            Err(tide_bundle::BundleError::Core(e)) => {
                return Answer::problem(500, "internal", "the hub failed", e.to_string(), None);
            }
            Err(e) => return bad_bundle(e.to_string()),
        }
        self.page(&header.ack, wait).unwrap_or_else(|e| {
            Answer::problem(500, "internal", "the hub failed", e.to_string(), None)
        })
    }

    /// A page of what a replica holding `since` lacks, or an acknowledgement.
    fn page(&mut self, since: &VersionVector, may_wait: bool) -> Result<Answer> {
        let mut outbox = Outbox::new(since.clone(), self.options.limits.max_page);
        let mut body = Vec::new();
        let page = outbox.next_page(&mut self.replica, &WriteOptions::default(), &mut body)?;
        if page.page.changes > 0 {
            return Ok(Answer {
                status: 200,
                body,
                problem: false,
                more: page.page.more,
                more_or_changes: true,
                signature: None,
                idle: None,
            });
        }
        // Nothing for it: the bundle written is an acknowledgement already.
        Ok(Answer {
            status: 200,
            body,
            problem: false,
            more: false,
            more_or_changes: false,
            signature: None,
            idle: may_wait.then(|| (since.clone(), *self.generation.borrow())),
        })
    }

    /// Signs an answer for the request it answers (SPEC.md §5.2).
    fn signed(&self, auth: &Auth, mut answer: Answer) -> Answer {
        let message = response_message(
            auth.replica,
            &auth.challenge,
            auth.counter,
            answer.status,
            &answer.body,
        );
        answer.signature = Some(self.identity.sign(&message));
        answer
    }
}

fn bad_bundle(detail: String) -> Answer {
    Answer::problem(400, "bad-bundle", "the bundle was refused", detail, None)
}

fn internal(e: impl std::fmt::Display) -> Answer {
    Answer::problem(500, "internal", "the hub failed", e.to_string(), None)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = r.headers_mut();
        h.insert(
            "content-type",
            HeaderValue::from_static(if self.problem {
                "application/problem+json"
            } else {
                "application/vnd.tide.bundle"
            }),
        );
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        if !self.problem {
            h.insert(
                "tide-more",
                HeaderValue::from_static(if self.more { "1" } else { "0" }),
            );
        }
        if let Some(sig) = self.signature
            && let Ok(v) = HeaderValue::from_str(&hex(&sig))
        {
            h.insert("tide-signature", v);
        }
        r
    }
}

/// Asks the store and waits for its answer; a store that is gone is a 503.
async fn ask<T>(app: &App, job: impl FnOnce(oneshot::Sender<T>) -> Job) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    app.jobs.send(job(tx)).ok()?;
    rx.await.ok()
}

fn unavailable() -> Response {
    Answer::problem(
        503,
        "busy",
        "the hub's store is not answering",
        "try again later".into(),
        None,
    )
    .into_response()
}

async fn hello(State(app): State<App>) -> Response {
    let Some((card, challenge)) = ask(&app, Job::Hello).await else {
        return unavailable();
    };
    let doc = serde_json::json!({
        "protocol": 1,
        "card": card,
        "limits": {
            "max_request": app.limits.max_request,
            "max_page": app.limits.max_page,
            "max_wait_s": app.limits.max_wait_s,
        },
        "challenge": challenge,
        "challenge_ttl_s": app.challenge_ttl_s,
    });
    (
        [
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        doc.to_string(),
    )
        .into_response()
}

async fn health(State(app): State<App>) -> Response {
    match ask(&app, Job::Health).await {
        Some(Ok((changes, age))) => (
            [("content-type", "application/json")],
            serde_json::json!({"ok": true, "changes": changes, "last_change_age_s": age})
                .to_string(),
        )
            .into_response(),
        Some(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/json")],
            serde_json::json!({"ok": false, "error": e}).to_string(),
        )
            .into_response(),
        None => unavailable(),
    }
}

async fn exchange(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = match &query {
        Some(q) => format!("/v1/exchange?{q}"),
        None => "/v1/exchange".to_string(),
    };
    let wait = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(app.limits.max_wait_s);
    let checked = Box::new(Headers {
        replica: header("tide-replica"),
        card: header("tide-card"),
        challenge: header("tide-challenge"),
        counter: header("tide-counter"),
        body_hash: header("tide-body-hash"),
        signature: header("tide-signature"),
        method: "POST",
        path,
    });
    let auth = match ask(&app, |tx| Job::Check(checked, tx)).await {
        Some(Ok(auth)) => auth,
        Some(Err(answer)) => return (*answer).into_response(),
        None => return unavailable(),
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let read = match declared {
        Some(n) if n > app.limits.max_request => None,
        _ => {
            // A client that sends its body slower than this holds no store and no more
            // than the body's bound; it is told to go away.
            let reading = axum::body::to_bytes(body, app.limits.max_request as usize);
            match tokio::time::timeout(BODY_TIMEOUT, reading).await {
                Ok(read) => Some(read),
                Err(_) => {
                    return Answer::problem(
                        408,
                        "too-slow",
                        "the body did not arrive in time",
                        format!(
                            "a request body must arrive within {} s",
                            BODY_TIMEOUT.as_secs()
                        ),
                        None,
                    )
                    .into_response();
                }
            }
        }
    };
    let bytes = match read {
        Some(Ok(b)) => b,
        // Cut short, not too large: the connection ended inside the body.
        Some(Err(e)) if !e.to_string().contains("length limit") => {
            return Answer::problem(
                400,
                "bad-request",
                "the body ended early",
                e.to_string(),
                None,
            )
            .into_response();
        }
        _ => {
            return Answer::problem(
                413,
                "too-large",
                "the request is larger than this hub takes",
                format!("at most {} bytes", app.limits.max_request),
                Some(("limit", app.limits.max_request.to_string())),
            )
            .into_response();
        }
    };
    if blake3::hash(&bytes).as_bytes() != &auth.body_hash {
        return Answer::problem(
            400,
            "bad-request",
            "the body is not the one signed",
            "Tide-Body-Hash does not match the body".into(),
            None,
        )
        .into_response();
    }
    let Some(answer) = ask(&app, |tx| Job::Exchange(auth.clone(), bytes, wait > 0, tx)).await
    else {
        return unavailable();
    };
    let Some((since, seen)) = answer.idle.clone() else {
        return answer.into_response();
    };
    // Nothing for the replica yet: wait for a change to arrive, then answer again.
    let mut generation = app.generation.clone();
    let changed = tokio::time::timeout(Duration::from_secs(wait), async {
        while *generation.borrow_and_update() == seen {
            if generation.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if !changed {
        return answer.into_response();
    }
    match ask(&app, |tx| Job::Page(auth, since, tx)).await {
        Some(a) => a.into_response(),
        None => unavailable(),
    }
}

/// How long a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the hub pings a live connection.
const PING: Duration = Duration::from_secs(20);

async fn live(
    State(app): State<App>,
    headers: HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let checked = Box::new(Headers {
        replica: header("tide-replica"),
        card: header("tide-card"),
        challenge: header("tide-challenge"),
        counter: header("tide-counter"),
        body_hash: header("tide-body-hash"),
        signature: header("tide-signature"),
        method: "GET",
        path: "/v1/live".into(),
    });
    // An upgrade has no body: the signed hash must be an empty body's.
    let auth = match ask(&app, |tx| Job::Check(checked, tx)).await {
        Some(Ok(auth)) if auth.body_hash == *blake3::hash(&[]).as_bytes() => auth,
        Some(Ok(_)) => {
            return Answer::problem(
                400,
                "bad-request",
                "a live connection has no body",
                String::new(),
                None,
            )
            .into_response();
        }
        Some(Err(answer)) => return (*answer).into_response(),
        None => return unavailable(),
    };
    upgrade
        .max_message_size(app.limits.max_request as usize)
        .on_upgrade(move |socket| live_connection(app, auth.replica, socket))
}

/// One live connection (SPEC.md §5.3): every message of the replica answered with one
/// bundle; a page pushed when the hub gains what the replica lacks.
async fn live_connection(app: App, replica: ReplicaId, mut socket: axum::extract::ws::WebSocket) {
    use axum::extract::ws::Message;
    let mut generation = app.generation.clone();
    let mut ping = tokio::time::interval(PING);
    // What the replica holds, from its latest bundle; and whether a page of ours awaits
    // its answer.
    let mut theirs: Option<VersionVector> = None;
    let mut in_flight = false;
    loop {
        tokio::select! {
            message = socket.recv() => {
                let bytes = match message {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return,
                };
                if let Ok((h, _)) = tide_bundle::read_header(&mut &bytes[..], 0) {
                    theirs = Some(h.ack);
                }
                let Some(answer) = ask(&app, |tx| Job::Frame(replica, bytes, tx)).await else {
                    return;
                };
                if answer.problem {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                in_flight = answer.more_or_changes;
                if socket.send(Message::Binary(answer.body.into())).await.is_err() {
                    return;
                }
            }
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(since) = theirs.clone().filter(|_| !in_flight) else {
                    continue;
                };
                if let Some(Some(page)) = ask(&app, |tx| Job::Push(since, tx)).await {
                    in_flight = true;
                    if socket.send(Message::Binary(page.body.into())).await.is_err() {
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}
