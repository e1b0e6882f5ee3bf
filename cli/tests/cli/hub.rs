//! `tide serve` and `tide sync http://…`: a hub over HTTP (transports/SPEC.md §5), run as
//! the real binary on loopback, with devices syncing through it as the real binary on
//! real files.
//!
//! What must hold: devices that sync through a hub converge and lose no write, however
//! often the hub is killed and restarted and however many exchanges are cut mid-page; a
//! replica the hub does not know is refused, listed for the operator, and syncs once
//! accepted; requests that are not signed by a known replica, replayed requests and
//! forged ones are refused before their body is read and change nothing; the hub's health
//! says how many changes it holds.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Run, Site};

/// The table every device tracks: a text key, so rows inserted on different devices
/// never collide.
const SCHEMA: &str = "CREATE TABLE t(id TEXT PRIMARY KEY, n INTEGER, note TEXT)";

// ---------------------------------------------------------------------------------------
// Processes: the hub and the syncs that get killed.
// ---------------------------------------------------------------------------------------

/// `tide args` in the site, as [`crate::common::tide_in`] runs it, not yet started.
fn tide_command(site: &Site, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tide"));
    cmd.args(args)
        .current_dir(site.dir.path())
        .env("TIDE_HOME", site.path("keys"))
        .env_remove("TIDE_DB")
        .env_remove("TIDE_PASSPHRASE");
    cmd
}

/// A child process killed (SIGKILL) and reaped when dropped, even when a test panics.
struct Killed(Child);

impl Killed {
    /// Kills it now; `Some(code)` when it had already exited on its own, `None` when
    /// the kill ended it.
    fn kill(&mut self) -> Option<i32> {
        if let Ok(Some(status)) = self.0.try_wait() {
            return Some(status.code().unwrap_or(-1));
        }
        let _ = self.0.kill();
        let status = self.0.wait().unwrap();
        status.code()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `tide --db hub.db serve`.
struct HubProcess {
    child: Killed,
    /// `127.0.0.1:PORT`, as it announced.
    addr: String,
    /// Everything it has written to stderr so far.
    said: Arc<Mutex<String>>,
}

impl HubProcess {
    /// Starts the hub of `site` (`hub.db`) listening on `listen`; returns once it says it
    /// serves, or what it said when it exits first (a port still taken, for one).
    fn start(site: &Site, listen: &str) -> Result<HubProcess, String> {
        let mut child = tide_command(site, &["--db", "hub.db", "serve", "--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = Killed(child);
        let said = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let said = said.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    said.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split(" on http://").nth(1)
                        && line.starts_with("Serving")
                    {
                        let addr = rest.split(';').next().unwrap().trim().to_string();
                        return Ok(HubProcess { child, addr, said });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    drop(child);
                    return Err(said.lock().unwrap().clone());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "tide serve --listen {listen} did not say it serves within 30 s:\n{}",
                        said.lock().unwrap()
                    );
                }
            }
        }
    }

    /// Starts it, insisting that it starts.
    fn must_start(site: &Site, listen: &str) -> HubProcess {
        HubProcess::start(site, listen)
            .unwrap_or_else(|said| panic!("tide serve --listen {listen} failed:\n{said}"))
    }

    /// Starts it again on `addr` after a kill; the port may be briefly unavailable, so
    /// it tries again for a while, then takes a new port. Returns the hub and whether
    /// the port changed.
    fn restart(site: &Site, addr: &str) -> (HubProcess, bool) {
        let mut last = String::new();
        for _ in 0..20 {
            match HubProcess::start(site, addr) {
                Ok(hub) => return (hub, false),
                Err(said) => last = said,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{addr} stayed unavailable ({last}); the hub restarts on a new port");
        (HubProcess::must_start(site, "127.0.0.1:0"), true)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no graceful shutdown, requests in flight are cut.
    fn kill(mut self) {
        assert_eq!(
            self.child.kill(),
            None,
            "the hub exited before it was killed:\n{}",
            self.said.lock().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client, for requests the command line never sends.
// ---------------------------------------------------------------------------------------

/// One HTTP/1.1 message as it crossed the socket.
#[derive(Clone, Debug)]
struct Message {
    /// The start line and headers, up to and including the blank line.
    head: String,
    body: Vec<u8>,
}

impl Message {
    /// The exact bytes.
    fn raw(&self) -> Vec<u8> {
        let mut raw = self.head.clone().into_bytes();
        raw.extend_from_slice(&self.body);
        raw
    }

    /// The status of a response.
    fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a response: {}", self.head))
    }

    /// The first header `name` (any case).
    fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }

    /// The body as JSON.
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body is not JSON ({e}):\n{}{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `type` of an `application/problem+json` answer, which it must be.
    fn problem(&self) -> String {
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "an error is a problem document:\n{}{}",
            self.head,
            String::from_utf8_lossy(&self.body)
        );
        self.json()["type"]
            .as_str()
            .unwrap_or_else(|| panic!("a problem has a type: {}", self.json()))
            .to_string()
    }

    /// The first line, for messages.
    fn start_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// The same message with header `name` set to `value` (replaced when present).
    fn with_header(&self, name: &str, value: &str) -> Message {
        let mut lines: Vec<String> = self
            .head
            .trim_end_matches("\r\n")
            .split("\r\n")
            .filter(|l| {
                !l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            })
            .map(String::from)
            .collect();
        lines.push(format!("{name}: {value}"));
        Message {
            head: format!("{}\r\n\r\n", lines.join("\r\n")),
            body: self.body.clone(),
        }
    }

    /// The same request to another path.
    fn with_target(&self, target: &str) -> Message {
        let (first, rest) = self.head.split_once("\r\n").unwrap();
        let mut parts: Vec<&str> = first.split(' ').collect();
        parts[1] = target;
        Message {
            head: format!("{}\r\n{rest}", parts.join(" ")),
            body: self.body.clone(),
        }
    }
}

fn header_in(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads one message: its head, then `Content-Length` bytes of body (or, for a response
/// without one, everything up to the end). `None` when the peer closes before a byte.
fn read_message(s: &mut TcpStream) -> std::io::Result<Option<Message>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf[end..].to_vec();
    assert!(
        header_in(&head, "transfer-encoding").is_none(),
        "a chunked message, which these tests do not read:\n{head}"
    );
    match header_in(&head, "content-length").map(|v| v.parse::<usize>().unwrap()) {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None if head.starts_with("HTTP/") => {
            s.read_to_end(&mut body)?;
        }
        None => {}
    }
    Ok(Some(Message { head, body }))
}

/// Connects to `addr` with timeouts, so a hub that never answers fails the test.
fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `raw` (a whole request) to `addr` and reads the answer.
fn send_raw(addr: &str, raw: &[u8]) -> Message {
    let mut s = connect(addr);
    // A hub may answer (413) and close before an oversized body is all sent: the
    // answer is what counts.
    let _ = s.write_all(raw);
    read_message(&mut s)
        .unwrap_or_else(|e| panic!("no answer from {addr}: {e}"))
        .unwrap_or_else(|| panic!("{addr} closed the connection without an answer"))
}

/// A request with `headers` and `body`, on its own connection (`Connection: close`).
fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Message {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw)
}

fn get(addr: &str, target: &str) -> Message {
    request(addr, "GET", target, &[], &[])
}

/// Sends only the head of a request that declares a body of `declared` bytes, and reads
/// the answer without sending a byte of that body: an answer proves the hub decided on
/// the headers alone.
fn head_only(addr: &str, headers: &[(&str, String)], declared: u64) -> Message {
    let mut head = format!(
        "POST /v1/exchange HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {declared}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut s = connect(addr);
    s.write_all(head.as_bytes()).unwrap();
    read_message(&mut s)
        .unwrap_or_else(|e| {
            panic!("the hub did not answer before the body ({e}): it waited for {declared} bytes")
        })
        .expect("an answer")
}

/// A fresh `hello` from the hub.
fn hello(addr: &str) -> Value {
    let r = get(addr, "/v1/hello");
    assert_eq!(r.status(), 200, "{}", r.start_line());
    r.json()
}

/// `GET /v1/health`, which must answer 200 with JSON.
fn health(addr: &str) -> Value {
    let r = get(addr, "/v1/health");
    assert_eq!(r.status(), 200, "{}", r.start_line());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    r.json()
}

// ---------------------------------------------------------------------------------------
// A recording proxy between `tide sync` and the hub.
// ---------------------------------------------------------------------------------------

/// What went through the proxy: one exchange request and what answered it (`None` when
/// the proxy held the request back).
type Seen = Vec<(Message, Option<Message>)>;

/// A proxy on loopback that forwards each request to the hub byte for byte, one request
/// per connection, and keeps every `POST /v1/exchange` with the hub's answer. While
/// `hold` is set, it keeps exchange requests without forwarding them and answers `503`.
struct Proxy {
    addr: String,
    seen: Arc<Mutex<Seen>>,
    hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(hub: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (hub, seen, hold, stop) =
                (hub.to_string(), seen.clone(), hold.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut client) = conn else { continue };
                    let _ = client.set_read_timeout(Some(Duration::from_secs(20)));
                    let Ok(Some(req)) = read_message(&mut client) else {
                        continue;
                    };
                    let exchange = req.head.starts_with("POST /v1/exchange");
                    let answer = if exchange && hold.load(Ordering::SeqCst) {
                        let body = br#"{"type":"busy","title":"held by the proxy","detail":""}"#;
                        Message {
                            head: format!(
                                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            ),
                            body: body.to_vec(),
                        }
                    } else {
                        let mut up = connect(&hub);
                        up.write_all(&req.raw()).unwrap();
                        read_message(&mut up).unwrap().unwrap()
                    };
                    if exchange {
                        let forwarded = !hold.load(Ordering::SeqCst);
                        seen.lock()
                            .unwrap()
                            .push((req, forwarded.then(|| answer.clone())));
                    }
                    let back = answer.with_header("connection", "close");
                    let _ = client.write_all(&back.raw());
                    let _ = client.shutdown(Shutdown::Both);
                }
            })
        };
        Proxy {
            addr,
            seen,
            hold,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What went through so far, and forgets it.
    fn take(&self) -> Seen {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Devices, a hub, and what they say.
// ---------------------------------------------------------------------------------------

/// Devices tracking `t` and a hub (`hub.db`) in one site, and everything `tide` said.
struct Net {
    site: Site,
    said: RefCell<String>,
}

impl Net {
    /// Devices `names` that hold the hub's card and whose cards the hub holds; with
    /// `each_other`, they also hold each other's cards.
    fn new(names: &[&str], each_other: bool) -> Net {
        let site = Site::new();
        site.ok(&["--db", "hub.db", "init", "--name", "hub"]);
        let card = site.ok(&["--db", "hub.db", "id", "--card"]).stdout;
        std::fs::write(site.path("hub.card"), card).unwrap();
        for n in names {
            site.replica_with(n, SCHEMA, &["t"]);
            site.ok(&["--db", &format!("{n}.db"), "peers", "add", "hub.card"]);
            site.ok(&["--db", "hub.db", "peers", "add", &format!("{n}.card")]);
        }
        if each_other {
            site.trust_each_other(names);
        }
        Net {
            site,
            said: RefCell::new(String::new()),
        }
    }

    /// Runs `tide --db NAME.db args` (global flags may lead `args`), keeping what it
    /// said; never an internal error (1) or a panic (101).
    fn tide(&self, name: &str, args: &[&str]) -> Run {
        let r = self.tide_any(name, args);
        assert!(
            r.code != 1 && r.code != 101,
            "tide --db {name}.db {args:?} failed with exit {}:\n{}{}\nearlier:\n{}",
            r.code,
            r.stdout,
            r.stderr,
            self.recent()
        );
        r
    }

    /// [`Net::tide`] without the check on the exit code.
    fn tide_any(&self, name: &str, args: &[&str]) -> Run {
        let db = format!("{name}.db");
        let mut all = vec!["--db", db.as_str()];
        all.extend(args);
        let r = self.site.tide(&all);
        self.note(&format!(
            "$ tide {}\n{}{}[exit {}]",
            all.join(" "),
            r.stdout,
            r.stderr,
            r.code
        ));
        r
    }

    /// [`Net::tide`], insisting on exit 0.
    fn ok(&self, name: &str, args: &[&str]) -> Run {
        let r = self.tide(name, args);
        assert_eq!(
            r.code,
            0,
            "tide --db {name}.db {args:?} failed:\n{}{}\nearlier:\n{}",
            r.stdout,
            r.stderr,
            self.recent()
        );
        r
    }

    fn note(&self, what: &str) {
        let mut said = self.said.borrow_mut();
        said.push_str(what);
        said.push('\n');
    }

    /// The end of what was said, for a failure message.
    fn recent(&self) -> String {
        let said = self.said.borrow();
        let mut from = said.len().saturating_sub(8000);
        while !said.is_char_boundary(from) {
            from += 1;
        }
        said[from..].to_string()
    }

    /// `tide --db NAME.db --json sync URL extra...`, exit 0, its summary parsed.
    fn sync(&self, name: &str, url: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--json", "sync", url];
        args.extend(extra);
        let r = self.ok(name, &args);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("tide sync --json printed no JSON ({e}):\n{}", r.stdout))
    }

    fn id(&self, name: &str) -> String {
        self.ok(name, &["id"]).stdout.trim().to_string()
    }

    fn rows(&self, name: &str) -> String {
        self.site
            .table(&format!("{name}.db"), "SELECT * FROM t ORDER BY id")
    }

    /// The open conflicts, without the field that depends on the replica asking
    /// (`local`: whether it wrote the value).
    fn conflicts(&self, name: &str) -> Value {
        let r = self.ok(name, &["--json", "conflicts", "list"]);
        let mut v: Value = serde_json::from_str(&r.stdout).unwrap();
        for c in v.as_array_mut().expect("a list of conflicts") {
            for cand in c["candidates"].as_array_mut().expect("candidates") {
                cand.as_object_mut().unwrap().remove("local");
            }
        }
        v
    }

    /// Every change in the log, as (origin, seq, state), in the order listed.
    fn log(&self, name: &str) -> Vec<(String, u64, String)> {
        let r = self.ok(name, &["--json", "log", "--limit", "1000000"]);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        v.as_array()
            .expect("a list of changes")
            .iter()
            .map(|e| {
                (
                    e["origin"].as_str().unwrap().to_string(),
                    e["seq"].as_u64().unwrap(),
                    e["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn status(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(name, &["--json", "status"]).stdout).unwrap()
    }
}

/// The number a `--json` summary gives for `field`.
fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field} in {v}"))
}

/// Every table's rows, tide's own included: what the database holds, logically. Read
/// through a read-only connection, so it can look while the hub runs.
fn dump(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let mut out = String::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |row| {
                Ok((0..n)
                    .map(|i| format!("{:?}", row.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join(" | "))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        rows.sort();
        out.push_str(&format!("{t}:\n{}\n", rows.join("\n")));
    }
    out
}

/// A small deterministic pseudo-random generator (xorshift64*): a seed fixes every
/// choice of the scenario. (Timings still vary: where a kill cuts an exchange differs
/// between runs of one seed; a failure shows the seed and every command's output.)
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------
// 1. Three devices and a hub that is killed; syncs cut mid-page.
// ---------------------------------------------------------------------------------------

const THREE: [&str; 3] = ["a", "b", "c"];

const SEEDS: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0x7469_6465_6875_6221,
    0x0000_0000_0000_002a,
    0x5eed_0000_0000_0004,
];
const STEPS: usize = 30;

/// What the devices wrote, to check the end state against.
///
/// Rows are only inserted by the device whose name prefixes their key, with `n` set once
/// and never changed; any device updates any row's `note`. Every value written to a note
/// stays visible (as the shown value or a conflict candidate) unless a later write
/// replaced it: a write replaces the value its replica showed when it was made and every
/// value that same replica wrote to the cell before (DESIGN.md §2.6). So the values still
/// standing at the end are the ones written minus the ones replaced, whatever order the
/// changes travelled in.
#[derive(Default)]
struct Written {
    /// Row → `n`, as inserted.
    rows: BTreeMap<String, i64>,
    /// Row → every value written to its note (each value is unique).
    notes: BTreeMap<String, BTreeSet<String>>,
    /// Row → the values of its note some write replaced.
    replaced: BTreeMap<String, BTreeSet<String>>,
    /// (device, row) → the values that device wrote to the row's note.
    by: BTreeMap<(String, String), BTreeSet<String>>,
    /// Writes so far (numbers the values and keys).
    next: i64,
}

impl Written {
    fn inserted(&mut self, dev: &str, id: &str, n: i64, note: &str) {
        self.rows.insert(id.to_string(), n);
        self.notes
            .entry(id.to_string())
            .or_default()
            .insert(note.to_string());
        self.by
            .entry((dev.to_string(), id.to_string()))
            .or_default()
            .insert(note.to_string());
    }

    /// One write by `dev` on its own database, as an application makes it: a new row of
    /// its own, or a new note on a row it shows (mostly one another device made).
    fn write(&mut self, net: &Net, dev: &str, rng: &mut Rng) {
        self.next += 1;
        let k = self.next;
        let db = format!("{dev}.db");
        let value = format!("{dev}#{k}");
        let shown: Vec<(String, String)> = {
            let conn = rusqlite::Connection::open(net.site.path(&db)).unwrap();
            let mut stmt = conn.prepare("SELECT id, note FROM t ORDER BY id").unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        // The seed alone fixes what kind of write follows, whatever rows the device
        // shows (which depend on where kills cut exchanges).
        let (insert, other, hot, single, pick) = (
            rng.chance(40),
            rng.chance(75),
            rng.chance(50),
            rng.chance(70),
            rng.next() as usize,
        );
        if shown.is_empty() || insert {
            let id = format!("{dev}-{k}");
            net.site.sql(
                &db,
                &format!("INSERT INTO t VALUES ('{id}', {k}, '{value}')"),
            );
            self.inserted(dev, &id, k, &value);
            net.note(&format!("# {dev} inserts {id}"));
            return;
        }
        // Rows written one at a time, and most of all the three lowest keys among them,
        // are written by several devices more often than the bulk rows: concurrent
        // writes meet there.
        let singles: Vec<&(String, String)> =
            shown.iter().filter(|(id, _)| !id.contains("-b")).collect();
        let others: Vec<&(String, String)> = singles
            .iter()
            .copied()
            .filter(|(id, _)| !id.starts_with(&format!("{dev}-")))
            .collect();
        let candidates: Vec<&(String, String)> = if !singles.is_empty() && hot {
            singles[..singles.len().min(3)].to_vec()
        } else if !others.is_empty() && other {
            others
        } else if !singles.is_empty() && single {
            singles
        } else {
            shown.iter().collect()
        };
        let (id, shows) = candidates[pick % candidates.len()].clone();
        net.site.sql(
            &db,
            &format!("UPDATE t SET note = '{value}' WHERE id = '{id}'"),
        );
        let mine = self.by.entry((dev.to_string(), id.clone())).or_default();
        let replaced = self.replaced.entry(id.clone()).or_default();
        replaced.insert(shows);
        replaced.extend(mine.iter().cloned());
        mine.insert(value.clone());
        self.notes.entry(id.clone()).or_default().insert(value);
        net.note(&format!("# {dev} updates {id}"));
    }

    /// A large pending write: `batches` changes (each sealed by `tide status`) of 200
    /// rows with a long note, so that sending them takes several 64 KiB pages.
    fn bulk(&mut self, net: &Net, dev: &str, batches: u64) {
        let db = format!("{dev}.db");
        let pad = "x".repeat(240);
        for _ in 0..batches {
            self.next += 1;
            let k = self.next;
            let mut conn = rusqlite::Connection::open(net.site.path(&db)).unwrap();
            let tx = conn.transaction().unwrap();
            for i in 0..200 {
                let id = format!("{dev}-b{k}-{i:03}");
                let note = format!("{dev}#{k}-{i} {pad}");
                tx.execute(
                    "INSERT INTO t VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, k, note],
                )
                .unwrap();
                self.inserted(dev, &id, k, &note);
            }
            tx.commit().unwrap();
            drop(conn);
            net.ok(dev, &["status"]);
        }
        net.note(&format!("# {dev} wrote {batches} changes of 200 rows"));
    }

    /// The values of a row's note still standing: written and not replaced.
    fn standing(&self, id: &str) -> BTreeSet<String> {
        let empty = BTreeSet::new();
        let replaced = self.replaced.get(id).unwrap_or(&empty);
        self.notes[id].difference(replaced).cloned().collect()
    }

    /// Checks `table` (every row of `t`, read through SQLite) and the open `conflicts`
    /// against what was written.
    fn check(&self, table: &BTreeMap<String, (i64, String)>, conflicts: &Value, seed: u64) {
        let expected: BTreeSet<&String> = self.rows.keys().collect();
        let found: BTreeSet<&String> = table.keys().collect();
        assert_eq!(
            found.len(),
            expected.len(),
            "seed {seed:#x}: {} rows were inserted, {} are there (missing: {:?}; extra: {:?})",
            expected.len(),
            found.len(),
            expected.difference(&found).take(10).collect::<Vec<_>>(),
            found.difference(&expected).take(10).collect::<Vec<_>>(),
        );
        assert_eq!(found, expected, "seed {seed:#x}: the rows of t");
        let mut candidates: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in conflicts.as_array().unwrap() {
            assert_eq!(
                (
                    c["kind"].as_str(),
                    c["table"].as_str(),
                    c["column"].as_str()
                ),
                (Some("update"), Some("t"), Some("note")),
                "seed {seed:#x}: only concurrent updates of a note conflict: {c}"
            );
            let id = c["key"][0].as_str().unwrap().to_string();
            let values: BTreeSet<String> = c["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|cand| cand["value"].as_str().unwrap().to_string())
                .collect();
            assert!(
                candidates.insert(id.clone(), values).is_none(),
                "seed {seed:#x}: one open conflict per cell, but {id} has more"
            );
        }
        for (id, n) in &self.rows {
            let (found_n, note) = &table[id];
            assert_eq!(found_n, n, "seed {seed:#x}: row {id}'s n, set once");
            let standing = self.standing(id);
            assert!(
                standing.contains(note),
                "seed {seed:#x}: row {id} shows {note:?}, which a later write replaced or \
                 no one wrote; standing: {standing:?}"
            );
            let visible = candidates
                .get(id)
                .cloned()
                .unwrap_or_else(|| BTreeSet::from([note.clone()]));
            assert_eq!(
                visible, standing,
                "seed {seed:#x}: row {id}: every value written and not replaced must stay \
                 visible (shown or a conflict candidate), and nothing else"
            );
        }
    }
}

/// Table `t` of `name`, by id.
fn t_rows(net: &Net, name: &str) -> BTreeMap<String, (i64, String)> {
    let conn = rusqlite::Connection::open(net.site.path(&format!("{name}.db"))).unwrap();
    let mut stmt = conn.prepare("SELECT id, n, note FROM t").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// What happened in one run, so the test can show it exercised what it claims to.
#[derive(Debug, Default)]
struct Tally {
    writes: i64,
    syncs: u64,
    hub_kills: u64,
    hub_kills_mid_sync: u64,
    syncs_cut_by_hub_kill: u64,
    new_ports: u64,
    syncs_cut: u64,
    /// Cut syncs after which the hub held some, not all, of the large write.
    syncs_cut_between_pages: u64,
    syncs_finished_before_cut: u64,
    duplicates: u64,
    conflicts: usize,
    rounds: u64,
}

/// Starts `tide --db DEV.db sync URL --page-size 64K`, in the background.
fn spawn_sync(net: &Net, dev: &str, url: &str) -> Killed {
    let db = format!("{dev}.db");
    let child = tide_command(
        &net.site,
        &["--db", &db, "--json", "sync", url, "--page-size", "64K"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    Killed(child)
}

/// Waits for a background sync to end on its own; its exit code and what it said.
fn finish(mut sync: Killed) -> (i32, String) {
    let child = &mut sync.0;
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).unwrap();
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut out).unwrap();
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, out)
}

fn three_devices_and_a_killed_hub(seed: u64) -> Tally {
    let net = Net::new(&THREE, true);
    let mut hub = Some(HubProcess::must_start(&net.site, "127.0.0.1:0"));
    let mut addr = hub.as_ref().unwrap().addr.clone();
    let mut rng = Rng::new(seed);
    let mut written = Written::default();
    let mut t = Tally::default();
    let url = |addr: &str| format!("http://{addr}");
    // A restarted hub on the same database; the address may change.
    let restart = |addr: &mut String, t: &mut Tally, net: &Net| -> HubProcess {
        let (h, moved) = HubProcess::restart(&net.site, addr);
        if moved {
            t.new_ports += 1;
        }
        net.note(&format!("# hub restarted on {}", h.addr));
        *addr = h.addr.clone();
        h
    };

    for _ in 0..STEPS {
        let dev = *rng.pick(&THREE);
        match rng.below(20) {
            0..=7 => {
                for _ in 0..=rng.below(3) {
                    written.write(&net, dev, &mut rng);
                }
            }
            8..=13 => {
                let v = net.sync(dev, &url(&addr), &[]);
                assert_eq!(num(&v, "quarantined"), 0, "seed {seed:#x}: {v}");
                t.duplicates += num(&v, "duplicates");
                t.syncs += 1;
            }
            14 | 15 => {
                // SIGKILL between exchanges, then a restart on the same database.
                hub.take().unwrap().kill();
                t.hub_kills += 1;
                net.note("# hub killed");
                if rng.chance(30) {
                    std::thread::sleep(Duration::from_millis(rng.below(500)));
                }
                hub = Some(restart(&mut addr, &mut t, &net));
            }
            16..=18 => {
                // A large pending write, and its sync killed after a short delay.
                let batches = 4 + rng.below(4);
                written.bulk(&net, dev, batches);
                let held = num(&health(&addr), "changes");
                let mut sync = spawn_sync(&net, dev, &url(&addr));
                let delay = 50 + rng.below(400);
                std::thread::sleep(Duration::from_millis(delay));
                match sync.kill() {
                    None => {
                        t.syncs_cut += 1;
                        let got = num(&health(&addr), "changes") - held;
                        if got > 0 && got < batches {
                            t.syncs_cut_between_pages += 1;
                        }
                        net.note(&format!(
                            "# {dev}'s sync killed after {delay} ms; the hub got {got} of its {batches} new changes"
                        ));
                    }
                    Some(_) => {
                        let (code, said) = finish(sync);
                        net.note(&format!(
                            "# {dev}'s sync ended before its kill ({delay} ms):\n{said}[exit {code}]"
                        ));
                        assert_eq!(
                            code,
                            0,
                            "seed {seed:#x}: a sync that ended on its own:\n{said}\nearlier:\n{}",
                            net.recent()
                        );
                        t.syncs_finished_before_cut += 1;
                    }
                }
            }
            _ => {
                // The hub killed while a device sends a large write.
                written.bulk(&net, dev, 3);
                let sync = spawn_sync(&net, dev, &url(&addr));
                let delay = 30 + rng.below(300);
                std::thread::sleep(Duration::from_millis(delay));
                hub.take().unwrap().kill();
                t.hub_kills += 1;
                t.hub_kills_mid_sync += 1;
                let (code, said) = finish(sync);
                net.note(&format!(
                    "# hub killed {delay} ms into {dev}'s sync, which said:\n{said}[exit {code}]"
                ));
                // The device sees the hub go away: an unreachable hub, never a panic.
                assert!(
                    code == 0 || (code == 1 && said.contains("cannot reach")),
                    "seed {seed:#x}: a sync whose hub was killed exited {code}:\n{said}\nearlier:\n{}",
                    net.recent()
                );
                if code == 1 {
                    t.syncs_cut_by_hub_kill += 1;
                }
                hub = Some(restart(&mut addr, &mut t, &net));
            }
        }
    }

    // Everyone syncs in turn until a whole round moves nothing.
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(
            rounds <= 8,
            "seed {seed:#x}: still moving after 8 rounds of syncs:\n{}",
            net.recent()
        );
        let mut moved = 0;
        for dev in THREE {
            let v = net.sync(dev, &url(&addr), &[]);
            assert_eq!(num(&v, "quarantined"), 0, "seed {seed:#x}: {v}");
            t.duplicates += num(&v, "duplicates");
            moved += num(&v, "pages_received") + num(&v, "pages_sent");
        }
        if moved == 0 {
            break;
        }
    }
    t.rounds = rounds;

    let table = net.rows("a");
    let conflicts = net.conflicts("a");
    for dev in &THREE[1..] {
        assert_eq!(net.rows(dev), table, "seed {seed:#x}: {dev} and a differ");
        assert_eq!(
            net.conflicts(dev),
            conflicts,
            "seed {seed:#x}: {dev} and a list different conflicts"
        );
    }
    written.check(&t_rows(&net, "a"), &conflicts, seed);

    // Every change is held once everywhere, each origin's seqs without a gap, and every
    // device applied all of them.
    let mut logs = BTreeMap::new();
    for name in ["a", "b", "c", "hub"] {
        let log = net.log(name);
        let mut held: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (origin, seq, state) in &log {
            assert!(
                held.entry(origin.clone()).or_default().insert(*seq),
                "seed {seed:#x}: {name} holds change {origin}:{seq} twice"
            );
            assert_eq!(
                state, "applied",
                "seed {seed:#x}: {name}'s change {origin}:{seq}"
            );
        }
        for (origin, seqs) in &held {
            let max = *seqs.iter().next_back().unwrap();
            assert_eq!(
                seqs.len() as u64,
                max,
                "seed {seed:#x}: {name} holds seqs of {origin} with gaps up to {max}"
            );
        }
        let status = net.status(name);
        assert_eq!(
            (num(&status, "quarantined"), num(&status, "waiting")),
            (0, 0),
            "seed {seed:#x}: {name}: {status}"
        );
        logs.insert(name, (held, log.len()));
    }
    for name in ["b", "c", "hub"] {
        assert_eq!(
            logs[name].0, logs["a"].0,
            "seed {seed:#x}: {name} and a hold different changes"
        );
    }
    let writers: BTreeSet<&str> = written
        .rows
        .keys()
        .map(|id| id.split('-').next().unwrap())
        .collect();
    assert_eq!(
        logs["a"].0.len(),
        writers.len(),
        "seed {seed:#x}: changes come from the devices that wrote ({writers:?}), never the hub"
    );
    let h = health(&addr);
    assert_eq!(h["ok"], Value::Bool(true), "{h}");
    assert_eq!(
        num(&h, "changes"),
        logs["hub"].1 as u64,
        "seed {seed:#x}: health counts the changes the hub holds"
    );
    drop(hub);

    t.writes = written.next;
    t.conflicts = conflicts.as_array().unwrap().len();
    t
}

/// Three devices (that hold each other's cards: a change from an origin a device does not
/// know is held in quarantine, even when the hub relays it) sync with one hub, each at
/// its own times, in a seeded random order of: writes (new rows, notes on rows from
/// others), syncs, the hub killed with SIGKILL and restarted on the same database, a
/// large write's sync killed mid-page, and the hub killed while a device sends a large
/// write. Then each syncs in turn until nothing moves. No `tide` call exits 1 or 101
/// except those whose process or hub was killed (and those only say the hub went away);
/// all three show the same table and the same conflicts; every write is there (see
/// [`Written`]); every device and the hub hold every change exactly once, each origin's
/// seqs without gaps, all applied; health counts the hub's changes.
#[test]
fn three_devices_and_a_killed_hub_converge_and_lose_nothing() {
    let mut total = Tally::default();
    let started = Instant::now();
    for seed in SEEDS {
        let t = three_devices_and_a_killed_hub(seed);
        eprintln!("seed {seed:#x}: {t:?} ({:?} so far)", started.elapsed());
        total.hub_kills += t.hub_kills;
        total.hub_kills_mid_sync += t.hub_kills_mid_sync;
        total.syncs_cut += t.syncs_cut;
        total.syncs_cut_between_pages += t.syncs_cut_between_pages;
        total.syncs_cut_by_hub_kill += t.syncs_cut_by_hub_kill;
        total.conflicts += t.conflicts;
    }
    // The runs cover what the test is about.
    assert!(total.hub_kills > 0, "the hub was never killed: {total:?}");
    assert!(
        total.syncs_cut_between_pages > 0,
        "no sync was killed between the pages of a large write: {total:?}"
    );
    assert!(
        total.hub_kills_mid_sync > 0,
        "the hub was never killed during a sync: {total:?}"
    );
    assert!(total.conflicts > 0, "no concurrent updates met: {total:?}");
}

/// A device needs the card of a change's origin, not only the hub's: with the hub's card
/// alone, c holds a's change in quarantine (`unknown_origin`), and applies it on the next
/// sync once it holds a's card.
#[test]
fn a_relayed_change_needs_its_origins_card_on_the_device() {
    let net = Net::new(&["a", "c"], false);
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    net.site.sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'x')");
    net.sync("a", &hub.url(), &[]);
    let v = net.sync("c", &hub.url(), &[]);
    assert_eq!(num(&v, "quarantined"), 1, "{v}");
    assert_eq!(net.site.count("c.db", "SELECT count(*) FROM t"), 0);
    net.ok("c", &["peers", "add", "a.card"]);
    let v = net.sync("c", &hub.url(), &[]);
    assert_eq!(num(&v, "changes_applied"), 1, "{v}");
    assert_eq!(net.rows("c"), net.rows("a"));
    assert_eq!(num(&net.status("c"), "quarantined"), 0);
}

/// Waits up to `secs` for `sql` on `db` to count at least one row.
fn eventually(net: &Net, db: &str, sql: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if net.site.count(db, sql) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A device that keeps syncing (`--watch`) gets a change soon after another device sends
/// it to the hub, and keeps going when the hub is killed and comes back on the same
/// address: it says the hub cannot be reached, and the next change arrives all the same.
#[test]
fn a_watching_device_follows_changes_across_a_hub_restart() {
    let net = Net::new(&["a", "c"], true);
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let addr = hub.addr.clone();
    let mut watch = Killed(
        tide_command(
            &net.site,
            &[
                "--db",
                "c.db",
                "sync",
                &hub.url(),
                "--watch",
                "--interval",
                "200",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    net.site
        .sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'first')");
    net.sync("a", &hub.url(), &[]);
    assert!(
        eventually(&net, "c.db", "SELECT count(*) FROM t WHERE id = 'a1'", 15),
        "the watching device got a's change"
    );

    hub.kill();
    std::thread::sleep(Duration::from_millis(500));
    let (hub, moved) = HubProcess::restart(&net.site, &addr);
    net.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a2', 2, 'after the restart')",
    );
    net.sync("a", &hub.url(), &[]);
    if !moved {
        assert!(
            eventually(&net, "c.db", "SELECT count(*) FROM t WHERE id = 'a2'", 20),
            "the watching device got a's change from the restarted hub"
        );
    }
    assert_eq!(watch.kill(), None, "--watch runs until it is stopped");
    let (_, said) = finish(watch);
    assert!(!said.contains("panicked"), "{said}");
    if !moved {
        assert!(said.contains("cannot reach"), "{said}");
        assert_eq!(net.rows("c"), net.rows("a"));
    }
    drop(hub);
}

// ---------------------------------------------------------------------------------------
// 2. An unknown device.
// ---------------------------------------------------------------------------------------

/// A device the hub does not know is refused (exit 3) with the command to run on the hub,
/// and nothing it sent is taken; `peers pending` lists it once, however often it tries;
/// `peers accept PREFIX` admits it, after which it syncs both ways and is no longer
/// pending.
#[test]
fn an_unknown_device_is_refused_listed_accepted_and_then_syncs() {
    let net = Net::new(&["a", "b"], true);
    // d holds the hub's and the others' cards, and they hold d's; only the hub lacks it.
    net.site.replica_with("d", SCHEMA, &["t"]);
    net.ok("d", &["peers", "add", "hub.card"]);
    for other in ["a", "b"] {
        net.ok("d", &["peers", "add", &format!("{other}.card")]);
        net.ok(other, &["peers", "add", "d.card"]);
    }
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let url = hub.url();
    net.site
        .sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'from a')");
    net.site
        .sql("b.db", "INSERT INTO t VALUES ('b1', 1, 'from b')");
    net.sync("a", &url, &[]);
    net.sync("b", &url, &[]);
    let held = num(&health(&hub.addr), "changes");
    assert_eq!(held, 2);

    net.site
        .sql("d.db", "INSERT INTO t VALUES ('d1', 1, 'from d')");
    net.ok("d", &["status"]);
    let d_id = net.id("d");
    let d_before = dump(&net.site.path("d.db"));
    for attempt in 0..2 {
        let r = net.tide("d", &["sync", &url]);
        assert_eq!(r.code, 3, "attempt {attempt}:\n{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("peers accept") && r.stderr.contains(&d_id[..8]),
            "the refusal names what to run on the hub, with d's id:\n{}",
            r.stderr
        );
        assert_eq!(
            num(&health(&hub.addr), "changes"),
            held,
            "the hub took nothing from a replica it does not know"
        );
    }
    assert_eq!(net.site.count("d.db", "SELECT count(*) FROM t"), 1);
    let d_after = dump(&net.site.path("d.db"));
    assert_eq!(
        d_after, d_before,
        "a refused sync leaves the device's database as it was"
    );

    let pending: Value =
        serde_json::from_str(&net.ok("hub", &["--json", "peers", "pending"]).stdout).unwrap();
    let list = pending.as_array().unwrap();
    assert_eq!(list.len(), 1, "d is listed once: {pending}");
    assert_eq!(list[0]["id"].as_str(), Some(d_id.as_str()), "{pending}");
    assert_eq!(list[0]["name"].as_str(), Some("d"), "{pending}");
    assert!(
        list[0]["last_seen"].as_u64() >= list[0]["first_seen"].as_u64(),
        "{pending}"
    );
    let text = net.ok("hub", &["peers", "pending"]);
    assert!(
        text.stdout.contains(&d_id[..8]) && text.stdout.contains('d'),
        "{}",
        text.stdout
    );

    let accepted = net.ok("hub", &["peers", "accept", &d_id[..6]]);
    assert!(
        accepted.stderr.contains("Accepted d") || accepted.stdout.contains("Accepted d"),
        "{}{}",
        accepted.stdout,
        accepted.stderr
    );
    let v = net.sync("d", &url, &[]);
    assert_eq!(
        num(&v, "changes_applied"),
        2,
        "d gets a's and b's rows: {v}"
    );
    assert_eq!(num(&v, "changes_sent"), 1, "{v}");
    net.sync("a", &url, &[]);
    net.sync("b", &url, &[]);
    assert_eq!(net.rows("d"), net.rows("a"));
    assert_eq!(net.rows("b"), net.rows("a"));
    assert_eq!(net.site.count("a.db", "SELECT count(*) FROM t"), 3);
    let pending: Value =
        serde_json::from_str(&net.ok("hub", &["--json", "peers", "pending"]).stdout).unwrap();
    assert_eq!(pending, Value::Array(vec![]), "nothing is pending any more");
    let text = net.ok("hub", &["peers", "pending"]);
    assert!(
        text.stdout.trim().is_empty(),
        "no pending replica is listed: {}",
        text.stdout
    );
    drop(hub);
}

/// An operator may admit a refused device with its card (`peers add d.card`) instead of
/// `peers accept`: it is then a peer and syncs, and is no longer waiting to be accepted,
/// so `peers pending` no longer lists it.
#[test]
fn a_device_admitted_with_peers_add_is_no_longer_pending() {
    let net = Net::new(&["a"], true);
    net.site.replica_with("d", SCHEMA, &["t"]);
    net.ok("d", &["peers", "add", "hub.card"]);
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let r = net.tide("d", &["sync", &hub.url()]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    let pending: Value =
        serde_json::from_str(&net.ok("hub", &["--json", "peers", "pending"]).stdout).unwrap();
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");

    net.ok("hub", &["peers", "add", "d.card"]);
    net.sync("d", &hub.url(), &[]);
    let pending: Value =
        serde_json::from_str(&net.ok("hub", &["--json", "peers", "pending"]).stdout).unwrap();
    assert_eq!(
        pending,
        Value::Array(vec![]),
        "d is a peer of the hub and has synced, yet is listed as waiting to be accepted"
    );
    drop(hub);
}

// ---------------------------------------------------------------------------------------
// 3. Requests the command line never sends.
// ---------------------------------------------------------------------------------------

/// Plausible exchange headers for replica `id` with `challenge`: a counter, a body hash
/// and a signature that are well formed but made up.
fn made_up_headers(id: &str, challenge: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/vnd.tide.bundle".into()),
        ("Tide-Replica", id.to_string()),
        ("Tide-Challenge", challenge.to_string()),
        ("Tide-Counter", "1".into()),
        ("Tide-Body-Hash", blake3::hash(body).to_hex().to_string()),
        ("Tide-Signature", "ab".repeat(64)),
    ]
}

/// Strangers and forgers cost the hub a look at the headers and change nothing: a
/// made-up replica id gets `403 unknown-replica` (and is not listed as pending without a
/// card); a known replica's request with a made-up challenge gets `401
/// challenge-expired` with a fresh challenge, and with a fresh challenge but a made-up
/// signature `401 bad-signature`; each of these is answered before a byte of a body
/// larger than `max_request` is sent. The hub's database is the same after all of them.
#[test]
fn strangers_and_forged_signatures_are_refused_before_the_body() {
    let net = Net::new(&["a"], false);
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let addr = hub.addr.clone();
    net.site.sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'x')");
    net.sync("a", &hub.url(), &[]);
    let a_id = net.id("a");
    let hub_db = net.site.path("hub.db");
    let before = dump(&hub_db);

    let hi = hello(&addr);
    assert_eq!(hi["protocol"], 1, "{hi}");
    let challenge = hi["challenge"].as_str().unwrap().to_string();
    let max_request = hi["limits"]["max_request"].as_u64().unwrap();
    let body = b"not a bundle".to_vec();

    // (a) A replica id no one knows.
    let stranger = "0123456789abcdef0123456789abcdef";
    let r = request(
        &addr,
        "POST",
        "/v1/exchange",
        &made_up_headers(stranger, &challenge, &body),
        &body,
    );
    assert_eq!(
        (r.status(), r.problem()),
        (403, "unknown-replica".into()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("tide-signature").is_none(),
        "an unauthenticated refusal is not signed"
    );

    // (b) A known replica, a challenge that is not the hub's: the challenge is checked
    // before the signature, and the answer gives a fresh one.
    let forged_challenge = "00".repeat(40);
    let r = request(
        &addr,
        "POST",
        "/v1/exchange",
        &made_up_headers(&a_id, &forged_challenge, &body),
        &body,
    );
    assert_eq!((r.status(), r.problem()), (401, "challenge-expired".into()));
    let fresh = r.json()["challenge"].as_str().unwrap_or("").to_string();
    assert_eq!(
        fresh.len(),
        80,
        "a fresh challenge (40 bytes): {}",
        r.json()
    );
    // With a fresh challenge the signature is checked, and refused.
    for c in [&challenge, &fresh] {
        let r = request(
            &addr,
            "POST",
            "/v1/exchange",
            &made_up_headers(&a_id, c, &body),
            &body,
        );
        assert_eq!(
            (r.status(), r.problem()),
            (401, "bad-signature".into()),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // (c) The same, declaring a body larger than the hub takes: answered on the headers,
    // before a byte of the body is sent.
    let big = max_request + 1;
    for (who, c, expect) in [
        (stranger, &challenge, (403, "unknown-replica")),
        (a_id.as_str(), &forged_challenge, (401, "challenge-expired")),
        (a_id.as_str(), &challenge, (401, "bad-signature")),
    ] {
        let r = head_only(&addr, &made_up_headers(who, c, &body), big);
        assert_eq!(
            (r.status(), r.problem().as_str()),
            expect,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }

    assert_eq!(
        dump(&hub_db),
        before,
        "refused requests change nothing in the hub's database"
    );
    assert_eq!(
        net.ok("hub", &["--json", "peers", "pending"]).stdout.trim(),
        "[]",
        "a stranger without a card is not listed"
    );

    // A stranger that presents a card of another id is not listed either; one whose card
    // matches is.
    let other = Site::new();
    other.replica_with("x", SCHEMA, &["t"]);
    let x_card = std::fs::read_to_string(other.path("x.card")).unwrap();
    let x_id = other.ok(&["--db", "x.db", "id"]).stdout.trim().to_string();
    let mut headers = made_up_headers(stranger, &challenge, &body);
    headers.push(("Tide-Card", x_card.trim().to_string()));
    let r = request(&addr, "POST", "/v1/exchange", &headers, &body);
    assert_eq!((r.status(), r.problem()), (403, "unknown-replica".into()));
    assert_eq!(
        net.ok("hub", &["--json", "peers", "pending"]).stdout.trim(),
        "[]",
        "a card whose id is not Tide-Replica is not listed"
    );
    let mut headers = made_up_headers(&x_id, &challenge, &body);
    headers.push(("Tide-Card", x_card.trim().to_string()));
    let r = head_only(&addr, &headers, big);
    assert_eq!((r.status(), r.problem()), (403, "unknown-replica".into()));
    let pending: Value =
        serde_json::from_str(&net.ok("hub", &["--json", "peers", "pending"]).stdout).unwrap();
    assert_eq!(
        pending.as_array().unwrap().len(),
        1,
        "x is listed: {pending}"
    );
    assert_eq!(pending[0]["id"].as_str(), Some(x_id.as_str()));
    drop(hub);
}

/// A request recorded on its way to the hub and sent again byte for byte is refused as
/// `401 replayed`, by the same hub process and by a restarted one (the counters are kept
/// with the database), and changes nothing; the same request with a higher counter or
/// another path is `401 bad-signature`. Of requests held back on their way (never seen by
/// the hub): one whose body is replaced by one over `max_request` is `413 too-large`, one
/// whose body is altered is `400 bad-request`, and each has its counter used up (sent
/// again as signed, it is `replayed`); one delivered late as signed is taken, once. Every
/// answer to an authenticated exchange carries the hub's signature.
#[test]
fn replayed_and_altered_requests_are_refused_and_change_nothing() {
    let net = Net::new(&["a", "b"], true);
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let hub_db = net.site.path("hub.db");
    let proxy = Proxy::start(&hub.addr);
    net.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a1', 1, 'x'); INSERT INTO t VALUES ('a2', 2, 'y');",
    );
    let v = net.sync("a", &proxy.url(), &[]);
    assert_eq!(num(&v, "changes_sent"), 1, "{v}");
    let seen = proxy.take();
    assert!(
        seen.len() >= 2,
        "a page, then an acknowledgement: {} exchanges",
        seen.len()
    );
    for (req, answer) in &seen {
        let answer = answer.as_ref().unwrap();
        assert_eq!(answer.status(), 200, "{}", answer.start_line());
        let sig = answer.header("tide-signature").unwrap_or_else(|| {
            panic!(
                "the hub signs its answer to {}:\n{}",
                req.start_line(),
                answer.head
            )
        });
        assert!(
            sig.len() == 128 && sig.chars().all(|c| c.is_ascii_hexdigit()),
            "{sig}"
        );
    }
    let (page, _) = seen[0].clone();
    assert_eq!(page.header("tide-counter").as_deref(), Some("1"));
    let before = dump(&hub_db);
    let held = num(&health(&hub.addr), "changes");

    let replay = send_raw(&hub.addr, &page.raw());
    assert_eq!(
        (replay.status(), replay.problem()),
        (401, "replayed".into()),
        "{}",
        String::from_utf8_lossy(&replay.body)
    );
    let (last, _) = seen.last().unwrap().clone();
    let replay = send_raw(&hub.addr, &last.raw());
    assert_eq!(
        (replay.status(), replay.problem()),
        (401, "replayed".into())
    );
    for forged in [
        page.with_header("tide-counter", "1000"),
        page.with_target("/v1/exchange?wait=1"),
    ] {
        let r = send_raw(&hub.addr, &forged.raw());
        assert_eq!(
            (r.status(), r.problem()),
            (401, "bad-signature".into()),
            "{}",
            forged.start_line()
        );
    }
    assert_eq!(
        dump(&hub_db),
        before,
        "a replayed or altered request changes nothing in the hub's database"
    );
    assert_eq!(num(&health(&hub.addr), "changes"), held);

    // A restarted hub (another process, same database) refuses the replay too.
    hub.kill();
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let replay = send_raw(&hub.addr, &page.raw());
    assert_eq!(
        (replay.status(), replay.problem()),
        (401, "replayed".into())
    );
    assert_eq!(dump(&hub_db), before);
    drop(proxy);

    // Held back on the way: the client gives up, the request arrives later.
    net.site
        .sql("b.db", "INSERT INTO t VALUES ('b1', 1, 'late')");
    let held_back = held_back(&net, &hub.addr, "b", 3);
    assert_eq!(num(&health(&hub.addr), "changes"), held);

    // The first, with a body over max_request under its signed headers: 413 after the
    // headers pass, and its counter is used up.
    let max_request = hello(&hub.addr)["limits"]["max_request"].as_u64().unwrap();
    let first = &held_back[0];
    let mut big = first.clone();
    big.body = vec![0u8; max_request as usize + 1];
    let big = big.with_header("content-length", &big.body.len().to_string());
    let r = send_raw(&hub.addr, &big.raw());
    assert_eq!((r.status(), r.problem()), (413, "too-large".into()));
    assert_eq!(
        r.json()["limit"].as_str(),
        Some(max_request.to_string().as_str()),
        "{}",
        r.json()
    );
    let r = send_raw(&hub.addr, &first.raw());
    assert_eq!((r.status(), r.problem()), (401, "replayed".into()));
    assert_eq!(num(&health(&hub.addr), "changes"), held);

    // The second, its body altered (same length): its headers pass, its body does not
    // hash to what was signed, and its counter is used up.
    let second = &held_back[1];
    let mut altered = second.clone();
    let last = altered.body.len() - 1;
    altered.body[last] ^= 0x55;
    let r = send_raw(&hub.addr, &altered.raw());
    assert_eq!((r.status(), r.problem()), (400, "bad-request".into()));
    let r = send_raw(&hub.addr, &second.raw());
    assert_eq!((r.status(), r.problem()), (401, "replayed".into()));
    assert_eq!(num(&health(&hub.addr), "changes"), held);

    // The third, delivered late as it was signed: taken, once.
    let third = &held_back[2];
    let r = send_raw(&hub.addr, &third.raw());
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("tide-signature").is_some(), "{}", r.head);
    assert_eq!(num(&health(&hub.addr), "changes"), held + 1);
    let r = send_raw(&hub.addr, &third.raw());
    assert_eq!((r.status(), r.problem()), (401, "replayed".into()));

    // And everyone still syncs.
    let v = net.sync("b", &hub.url(), &[]);
    assert_eq!(num(&v, "changes_applied"), 1, "b gets a's change: {v}");
    net.sync("a", &hub.url(), &[]);
    assert_eq!(net.rows("a"), net.rows("b"));
    assert_eq!(net.site.count("a.db", "SELECT count(*) FROM t"), 3);
    drop(hub);
}

/// `attempts` syncs of `dev` through a proxy that holds every exchange request back (and
/// answers 503): each fails, and the requests, validly signed and never seen by the hub,
/// are returned.
fn held_back(net: &Net, hub: &str, dev: &str, attempts: usize) -> Vec<Message> {
    let proxy = Proxy::start(hub);
    proxy.hold.store(true, Ordering::SeqCst);
    for _ in 0..attempts {
        let r = net.tide_any(dev, &["sync", &proxy.url()]);
        assert!(
            r.code != 0 && r.code != 101,
            "a sync whose request never reached the hub (exit {}):\n{}{}",
            r.code,
            r.stdout,
            r.stderr
        );
    }
    let seen = proxy.take();
    assert_eq!(seen.len(), attempts, "one exchange per attempt");
    seen.into_iter().map(|(req, _)| req).collect()
}

/// A signed request whose body stops short of its `Content-Length` (the sender closes
/// its side) is a bad request (400: the body is not the one signed), not `413
/// too-large`: the body is smaller than `max_request`, and a client that reads 413
/// shrinks its pages for nothing.
#[test]
fn a_body_cut_short_is_a_bad_request_not_too_large() {
    let net = Net::new(&["a"], false);
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    net.site.sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'x')");
    let request = held_back(&net, &hub.addr, "a", 1).remove(0);
    let half = request.body.len() / 2;
    let mut s = connect(&hub.addr);
    s.write_all(request.head.as_bytes()).unwrap();
    s.write_all(&request.body[..half]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let r = read_message(&mut s)
        .expect("the hub answers a body cut short")
        .expect("an answer");
    assert_eq!(
        (r.status(), r.problem()),
        (400, "bad-request".into()),
        "a body of {half} of {} bytes: {}",
        request.body.len(),
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(num(&health(&hub.addr), "changes"), 0);
    drop(hub);
}

// ---------------------------------------------------------------------------------------
// 4. Health.
// ---------------------------------------------------------------------------------------

/// `GET /v1/health` answers 200 with `ok: true` and `changes`, the number of changes the
/// hub holds: none at first (with no last change), then each one devices sent, also after
/// a restart.
#[test]
fn health_counts_the_changes_the_hub_holds() {
    let net = Net::new(&["a", "b"], true);
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let h = health(&hub.addr);
    assert_eq!(h["ok"], Value::Bool(true), "{h}");
    assert_eq!(num(&h, "changes"), 0, "{h}");
    assert_eq!(h["last_change_age_s"], Value::Null, "{h}");

    net.site.sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'x')");
    net.ok("a", &["status"]);
    net.site.sql("a.db", "INSERT INTO t VALUES ('a2', 2, 'y')");
    net.sync("a", &hub.url(), &[]);
    net.site.sql("b.db", "INSERT INTO t VALUES ('b1', 1, 'z')");
    net.sync("b", &hub.url(), &[]);
    let sent: BTreeSet<(String, u64)> = ["a", "b"]
        .iter()
        .flat_map(|d| net.log(d))
        .map(|(origin, seq, _)| (origin, seq))
        .collect();
    assert_eq!(sent.len(), 3, "a sealed two changes, b one");
    let h = health(&hub.addr);
    assert_eq!(h["ok"], Value::Bool(true), "{h}");
    assert_eq!(num(&h, "changes"), 3, "{h}");
    assert_eq!(num(&h, "changes"), net.log("hub").len() as u64);
    assert!(
        h["last_change_age_s"].as_u64().is_some_and(|s| s < 60),
        "a change arrived just now: {h}"
    );
    // Syncing again adds nothing.
    net.sync("a", &hub.url(), &[]);
    assert_eq!(num(&health(&hub.addr), "changes"), 3);

    hub.kill();
    let hub = HubProcess::must_start(&net.site, "127.0.0.1:0");
    let h = health(&hub.addr);
    assert_eq!(h["ok"], Value::Bool(true), "{h}");
    assert_eq!(num(&h, "changes"), 3, "{h}");
    drop(hub);
}
