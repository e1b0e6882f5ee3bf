//! A hub over HTTP on loopback, started by the test for each cluster, with a proxy in
//! front of it that does the faults: replicas sync with the hub through the proxy, the
//! sender first, then the receiver, whose answers the proxy cuts, drops, alters or
//! replays. The proxy forwards one request per connection, as a proxy may.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tide_core::{KeyStore, Replica};
use tide_tests::Cluster;
use tide_transports::Carrier;
use tide_transports::http::client::HubClient;
use tide_transports::http::hub::{Hub, HubOptions};

use crate::{Fault, Link, Outcome, PAGE};

pub struct Http {
    hubs: HashMap<PathBuf, (Hub, Proxy)>,
}

impl Http {
    pub fn new() -> Http {
        Http {
            hubs: HashMap::new(),
        }
    }

    /// The hub of cluster `c` (made and started the first time), behind its proxy.
    fn proxy(&mut self, c: &mut Cluster) -> &Proxy {
        let dir = c.dir.path().to_path_buf();
        if !self.hubs.contains_key(&dir) {
            let db = dir.join("hub.db");
            let keys = KeyStore::at(dir.join("keys-hub"));
            let mut hub = Replica::open(&db, keys.clone()).unwrap();
            hub.init("hub").unwrap();
            let card = hub.card().unwrap();
            for r in c.replicas.iter_mut() {
                hub.add_peer(&r.card().unwrap()).unwrap();
                r.add_peer(&card).unwrap();
            }
            drop(hub);
            let mut options = HubOptions::default();
            options.limits.max_page = PAGE;
            let server = Hub::start(db, keys, "127.0.0.1:0", options).unwrap();
            let proxy = Proxy::start(server.addr());
            self.hubs.insert(dir.clone(), (server, proxy));
        }
        &self.hubs[&dir].1
    }
}

fn sync(url: &str, r: &mut Replica) -> Result<tide_transports::SyncReport, String> {
    let mut client = HubClient::new(url);
    client.page_bytes = PAGE;
    client.sync(r).map_err(|e| e.to_string())
}

impl Link for Http {
    fn carry(&mut self, c: &mut Cluster, from: usize, to: usize, fault: Fault) -> Outcome {
        let proxy = self.proxy(c);
        let url = proxy.url();
        proxy.set(Fault::None);
        let sent = sync(&url, &mut c.replicas[from]);
        if let Err(e) = &sent {
            return Outcome {
                pages_sent: 0,
                error: Some(e.clone()),
            };
        }
        proxy.set(fault);
        let received = sync(&url, &mut c.replicas[to]);
        let pages = proxy.pages();
        proxy.set(Fault::None);
        Outcome {
            pages_sent: pages,
            error: received.err(),
        }
    }

    fn one_way(
        &mut self,
        _: &mut Cluster,
        _: usize,
        _: usize,
        _: &[bool],
    ) -> Option<Vec<Vec<(tide_core::ReplicaId, tide_core::SeqRuns)>>> {
        None
    }
}

/// A loopback proxy in front of a hub that does one fault to the pages it passes back.
struct Proxy {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<(Fault, usize)>>,
}

impl Proxy {
    fn start(hub: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((Fault::None, 0usize)));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let _ = serve(client, hub, &shared);
            }
        });
        Proxy { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the fault for what follows, and counts pages from 0.
    fn set(&self, fault: Fault) {
        *self.state.lock().unwrap() = (fault, 0);
    }

    /// Pages passed back (or cut, dropped, altered) since the last [`Proxy::set`].
    fn pages(&self) -> usize {
        self.state.lock().unwrap().1
    }
}

/// Reads one HTTP/1.1 message (head and `content-length` body).
fn read_message(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((head, body))
}

/// `head` with its `connection` header replaced by `close`.
fn closing(head: &str) -> String {
    let mut out: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .collect();
    out.push("connection: close");
    format!("{}\r\n\r\n", out.join("\r\n"))
}

fn serve(
    mut client: TcpStream,
    hub: std::net::SocketAddr,
    state: &Mutex<(Fault, usize)>,
) -> std::io::Result<()> {
    let (head, body) = read_message(&mut client)?;
    let forward = |head: &str, body: &[u8]| -> std::io::Result<(String, Vec<u8>)> {
        let mut up = TcpStream::connect(hub)?;
        up.write_all(closing(head).as_bytes())?;
        up.write_all(body)?;
        read_message(&mut up)
    };
    let (rhead, mut rbody) = forward(&head, &body)?;
    let is_page = head.starts_with("POST /v1/exchange")
        && rhead.starts_with("HTTP/1.1 200")
        && tide_bundle::read_header(&mut &rbody[..], 0).is_ok_and(|(h, _)| h.changes > 0);
    if is_page {
        let (fault, n) = {
            let mut s = state.lock().unwrap();
            s.1 += 1;
            (s.0, s.1 - 1)
        };
        match fault {
            // The connection drops instead of the answer.
            Fault::CutAfter(k) if n >= k => return Ok(()),
            Fault::Lose(k) if n == k => return Ok(()),
            Fault::Tamper(k) if n == k => {
                let at = rbody.len() / 2;
                rbody[at] ^= 0x40;
            }
            // The request again, as a replay: the hub must refuse it.
            Fault::Twice => {
                let (again, _) = forward(&head, &body)?;
                assert!(
                    again.starts_with("HTTP/1.1 401"),
                    "a replayed request was not refused: {again}"
                );
            }
            _ => {}
        }
    }
    client.write_all(closing(&rhead).as_bytes())?;
    client.write_all(&rbody)?;
    client.flush()
}

crate::conformance!(Http::new());

/// Live sync over a WebSocket (transports/SPEC.md §5.3): a replica connected live gets
/// another's write as soon as that one reaches the hub, and its own writes go up
/// unasked; both end identical.
#[test]
fn a_live_connection_receives_and_sends_changes_as_they_come() {
    let mut link = Http::new();
    let mut c = crate::cluster(2);
    let url = link.proxy(&mut c).url();
    // Straight to the hub: the test proxy forwards one request per connection and no
    // upgrades.
    let hub = link.hubs.values().next().unwrap().0.addr();
    let live_url = format!("http://{hub}");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let path = c.path(1);
    let keys = c.dir.path().join("keys1");
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut r = Replica::open_existing(&path, KeyStore::at(keys)).unwrap();
        r.connection()
            .execute("INSERT INTO t VALUES ('from-live', 1, 'x')", [])
            .unwrap();
        let mut client = HubClient::new(&live_url);
        client.live(
            &mut r,
            &|| !flag.load(std::sync::atomic::Ordering::Relaxed),
            &mut |_| {},
        )
    });
    c.write(0, "INSERT INTO t VALUES ('from-exchange', 2, 'y')");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        sync(&url, &mut c.replicas[0]).unwrap();
        let here: i64 =
            tide_tests::query_one(&c.path(0), "SELECT count(*) FROM t WHERE id = 'from-live'");
        let there: i64 = tide_tests::query_one(
            &c.path(1),
            "SELECT count(*) FROM t WHERE id = 'from-exchange'",
        );
        if here == 1 && there == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "live sync moved nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    thread.join().unwrap().unwrap();
    sync(&url, &mut c.replicas[0]).unwrap();
    c.assert_converged();
}
