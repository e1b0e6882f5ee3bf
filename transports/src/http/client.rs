//! The client of a hub (`tide sync http://…`, SPEC.md §5): hello, then exchanges, each
//! carrying one page up and bringing one page back, until neither side lacks anything.
//! Blocking, one request at a time.

use std::time::Duration;

use tide_bundle::WriteOptions;
use tide_core::{Card, Replica};

use super::{hex, request_message, response_message, unhex};
use crate::error::{Result, TransportError};
use crate::pages::Outbox;
use crate::report::SyncReport;
use crate::{Carrier, DEFAULT_PAGE_BYTES};

/// The smallest page a client shrinks to when a proxy refuses large bodies.
const MIN_PAGE: u64 = 64 << 10;

/// A hub at a URL.
pub struct HubClient {
    base: String,
    agent: ureq::Agent,
    /// About how many bytes of changes a page sent holds.
    pub page_bytes: u64,
    /// With nothing to exchange, how long the last request may wait at the hub for a
    /// change to arrive (0: do not wait).
    pub wait_s: u64,
}

/// What a hub said in `hello`.
struct Hello {
    card: Card,
    challenge: Vec<u8>,
    max_request: u64,
}

impl HubClient {
    /// The hub at `url` (`http://host:port`, or with a path prefix behind a proxy).
    pub fn new(url: &str) -> HubClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        HubClient {
            base: url.trim_end_matches('/').to_string(),
            agent,
            page_bytes: DEFAULT_PAGE_BYTES,
            wait_s: 0,
        }
    }

    fn hello(&self, replica: &Replica) -> Result<Hello> {
        let url = format!("{}/v1/hello", self.base);
        let mut r = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| unreachable(&url, e))?;
        let text = r
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .map_err(|e| unreachable(&url, e))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| TransportError::Protocol(format!("{url} is not a tide hub")))?;
        let card = doc["card"]
            .as_str()
            .and_then(|c| Card::parse(c).ok())
            .ok_or_else(|| TransportError::Protocol(format!("{url} gave no hub card")))?;
        let known = replica.peers()?;
        if !known
            .iter()
            .any(|p| p.id == card.id && p.sign_key == card.sign_key)
        {
            return Err(TransportError::UnknownHub {
                url: self.base.clone(),
                card: card.to_line(),
            });
        }
        Ok(Hello {
            card,
            challenge: doc["challenge"]
                .as_str()
                .and_then(unhex)
                .unwrap_or_default(),
            max_request: doc["limits"]["max_request"].as_u64().unwrap_or(u64::MAX),
        })
    }
}

/// One answer of the hub.
struct Answered {
    status: u16,
    body: Vec<u8>,
    more: bool,
}

impl Carrier for HubClient {
    fn sync(&mut self, replica: &mut Replica) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut hello = self.hello(replica)?;
        let me = replica.id()?;
        let my_card = replica.card()?.to_line();
        let identity = replica.signing_identity()?;
        let mut counter = 0u64;
        let mut page_bytes = self.page_bytes.min(hello.max_request / 2).max(MIN_PAGE);
        let mut outbox = Outbox::new(replica.peer_ack(hello.card.id)?, page_bytes);
        let mut renewed = false;
        loop {
            // What goes up: the next page of what the hub lacks, or an acknowledgement.
            let mut body = Vec::new();
            let mut sent = None;
            if outbox.has_more(replica)? {
                let page = outbox.next_page(replica, &WriteOptions::default(), &mut body)?;
                if page.page.changes > 0 {
                    sent = Some(page.page.changes);
                }
                // A page of no changes is an acknowledgement already.
            } else {
                tide_bundle::write_ack(replica, &WriteOptions::default(), &mut body)?;
            }
            let wait = if sent.is_none() { self.wait_s } else { 0 };
            let path = if wait > 0 {
                format!("/v1/exchange?wait={wait}")
            } else {
                "/v1/exchange".to_string()
            };
            counter += 1;
            let hash = blake3::hash(&body);
            let message = request_message(
                hello.card.id,
                me,
                &hello.challenge,
                counter,
                "POST",
                &path,
                &body,
            );
            let url = format!("{}{path}", self.base);
            let mut r = self
                .agent
                .post(&url)
                .header("content-type", "application/vnd.tide.bundle")
                .header("tide-replica", me.to_hex())
                .header("tide-card", &my_card)
                .header("tide-challenge", hex(&hello.challenge))
                .header("tide-counter", counter.to_string())
                .header("tide-body-hash", hash.to_hex().to_string())
                .header("tide-signature", hex(&identity.sign(&message)))
                .send(&body[..])
                .map_err(|e| unreachable(&url, e))?;
            let status = r.status().as_u16();
            let more = r.headers().get("tide-more").is_some_and(|v| v == "1");
            let signature = r
                .headers()
                .get("tide-signature")
                .and_then(|v| v.to_str().ok())
                .and_then(unhex);
            let answer = Answered {
                status,
                body: r
                    .body_mut()
                    .with_config()
                    .limit(16 << 30)
                    .read_to_vec()
                    .map_err(|e| unreachable(&url, e))?,
                more,
            };
            match answer.status {
                200 => {
                    // A later expiry (a long sync) may renew the challenge again.
                    renewed = false;
                    let signed = response_message(me, &hello.challenge, counter, 200, &answer.body);
                    let holds = signature
                        .and_then(|s| <[u8; 64]>::try_from(s).ok())
                        .is_some_and(|s| {
                            tide_core::verify_signature(&hello.card.sign_key, &signed, &s)
                        });
                    if !holds {
                        return Err(TransportError::Protocol(
                            "the hub's answer is not signed by the hub: something between altered or replayed it".into(),
                        ));
                    }
                    if let Some(changes) = sent {
                        report.pages_sent += 1;
                        report.changes_sent += changes;
                        report.bytes_sent += body.len() as u64;
                    }
                    let imported = tide_bundle::import(replica, &mut &answer.body[..], None)?;
                    if imported.header.changes > 0 {
                        report.received(&imported.report);
                    }
                    if outbox.done() && sent.is_none() && !answer.more {
                        crate::report::note_synced(replica, hello.card.id)?;
                        return Ok(report);
                    }
                }
                401 if !renewed && problem_type(&answer.body) == "challenge-expired" => {
                    // Once: a fresh challenge, and the page again from what the hub holds.
                    renewed = true;
                    hello = self.hello(replica)?;
                    counter = 0;
                    outbox = Outbox::new(replica.peer_ack(hello.card.id)?, page_bytes);
                }
                413 if page_bytes > MIN_PAGE => {
                    page_bytes = (page_bytes / 2).max(MIN_PAGE);
                    outbox = Outbox::new(replica.peer_ack(hello.card.id)?, page_bytes);
                }
                413 => {
                    return Err(TransportError::TooLarge {
                        url,
                        bytes: body.len() as u64,
                    });
                }
                403 if problem_type(&answer.body) == "unknown-replica" => {
                    return Err(TransportError::UnknownToHub {
                        url: self.base.clone(),
                        replica: me,
                    });
                }
                _ => {
                    return Err(TransportError::Protocol(format!(
                        "the hub answered {}: {}",
                        answer.status,
                        problem_detail(&answer.body)
                    )));
                }
            }
        }
    }
}

fn problem_type(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn problem_detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .map(|v| {
            format!(
                "{} ({})",
                v["title"].as_str().unwrap_or(""),
                v["detail"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

fn unreachable(url: &str, e: ureq::Error) -> TransportError {
    TransportError::Unreachable {
        url: url.to_string(),
        why: e.to_string(),
    }
}

impl HubClient {
    /// Live sync over a WebSocket (SPEC.md §5.3) until `keep_going` says stop or the
    /// connection ends: pages arrive as the hub gains them, and this replica's new
    /// changes go up as they are written (looked for every 200 ms). `moved` is told
    /// after each page either way. An error says why the connection ended; the caller
    /// reconnects, or falls back to [`Carrier::sync`] with `wait_s` where a proxy
    /// refuses the upgrade.
    pub fn live(
        &mut self,
        replica: &mut Replica,
        keep_going: &dyn Fn() -> bool,
        moved: &mut dyn FnMut(&SyncReport),
    ) -> Result<()> {
        use tungstenite::Message;
        use tungstenite::client::IntoClientRequest;
        let hello = self.hello(replica)?;
        let me = replica.id()?;
        let Some(rest) = self.base.strip_prefix("http://") else {
            return Err(TransportError::Protocol(
                "live sync needs a plain http:// hub here; use the exchange with wait".into(),
            ));
        };
        let url = format!("ws://{rest}/v1/live");
        let identity = replica.signing_identity()?;
        let message = request_message(
            hello.card.id,
            me,
            &hello.challenge,
            1,
            "GET",
            "/v1/live",
            &[],
        );
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| unreachable_ws(&url, e))?;
        let headers = request.headers_mut();
        for (k, v) in [
            ("tide-replica", me.to_hex()),
            ("tide-card", replica.card()?.to_line()),
            ("tide-challenge", hex(&hello.challenge)),
            ("tide-counter", "1".to_string()),
            ("tide-body-hash", blake3::hash(&[]).to_hex().to_string()),
            ("tide-signature", hex(&identity.sign(&message))),
        ] {
            headers.insert(
                k,
                v.parse()
                    .expect("ids, hex and cards are valid header values"),
            );
        }
        let (mut socket, _) = tungstenite::connect(request).map_err(|e| unreachable_ws(&url, e))?;
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_mut() {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        }
        let send = |socket: &mut tungstenite::WebSocket<_>, bytes: Vec<u8>| {
            socket
                .send(Message::Binary(bytes.into()))
                .map_err(|e| unreachable_ws(&url, e))
        };
        let mut ack = Vec::new();
        tide_bundle::write_ack(replica, &WriteOptions::default(), &mut ack)?;
        send(&mut socket, ack)?;
        let mut awaiting = true;
        let mut heard = std::time::Instant::now();
        while keep_going() {
            match socket.read() {
                Ok(Message::Binary(bytes)) => {
                    heard = std::time::Instant::now();
                    awaiting = false;
                    let imported = tide_bundle::import(replica, &mut &bytes[..], None)?;
                    if imported.header.sender != hello.card.id {
                        return Err(TransportError::Protocol(
                            "a live message not signed by the hub".into(),
                        ));
                    }
                    if imported.header.changes > 0 {
                        let mut report = SyncReport::default();
                        report.received(&imported.report);
                        moved(&report);
                        let mut ack = Vec::new();
                        tide_bundle::write_ack(replica, &WriteOptions::default(), &mut ack)?;
                        send(&mut socket, ack)?;
                        awaiting = true;
                    }
                }
                Ok(Message::Close(_)) => return Err(TransportError::Closed),
                Ok(_) => heard = std::time::Instant::now(),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(unreachable_ws(&url, e)),
            }
            if heard.elapsed() > Duration::from_secs(60) {
                return Err(TransportError::Closed);
            }
            if !awaiting {
                // This replica's new writes, a page at a time.
                let mut outbox = Outbox::new(replica.peer_ack(hello.card.id)?, self.page_bytes);
                if !outbox.has_more(replica)? {
                    continue;
                }
                let mut body = Vec::new();
                let page = outbox.next_page(replica, &WriteOptions::default(), &mut body)?;
                if page.page.changes > 0 {
                    send(&mut socket, body)?;
                    awaiting = true;
                    let report = SyncReport {
                        pages_sent: 1,
                        changes_sent: page.page.changes,
                        bytes_sent: page.export.bytes,
                        ..SyncReport::default()
                    };
                    moved(&report);
                }
            }
        }
        let _ = socket.close(None);
        Ok(())
    }
}

fn unreachable_ws(url: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Unreachable {
        url: url.to_string(),
        why: e.to_string(),
    }
}
