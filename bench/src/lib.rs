//! tide's benchmark harness (DESIGN.md §7). It builds its data, measures, and reports every
//! figure as a ratio or a rate against plain SQLite (for the folder mailbox, a plain file
//! copy; for the hub, the file bundle path) measured in the same run on the same machine.
//! Nothing here asserts a speed: `BENCHMARKS.md` records the figures.
//!
//! `cargo run --release -p tide-bench -- --rows 1000000`

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tide_bundle::WriteOptions;
use tide_core::{Card, KeyStore, Replica, VersionVector};
use tide_transports::Carrier;
use tide_transports::http::client::HubClient;
use tide_transports::http::hub::{Hub, HubOptions};
use tide_transports::mailbox::{Mailbox, MailboxOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Rows for the bulk measurements.
    pub rows: u64,
    /// Rows for the one-commit-per-row measurement (and, up to 200, for the live hub
    /// figure).
    pub commits: u64,
    /// Measure peak memory in child processes (needs the harness binary).
    pub memory: Option<PathBuf>,
    /// Replicas syncing at once with one hub.
    pub replicas: usize,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The figure, formatted.
    pub value: String,
    /// The target from DESIGN.md §7, formatted ("" when none).
    pub target: String,
    /// Whether the target is met (None when there is no target).
    pub meets: Option<bool>,
}

const SCHEMA: &str =
    "CREATE TABLE items(id TEXT PRIMARY KEY, name TEXT, qty INTEGER, price REAL, note TEXT)";

/// The bulk update measured: one column of every row.
const UPDATE_SQL: &str = "UPDATE items SET qty = qty + 1";

/// The same rows everywhere: one statement, so plain SQLite and tide do identical work.
fn insert_sql(n: u64) -> String {
    format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})
         INSERT INTO items SELECT printf('item-%08d', x), 'name ' || x, x, x * 0.25, 'lorem ipsum dolor ' || (x % 97) FROM c"
    )
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn plain(&self, name: &str) -> Connection {
        let c = Connection::open(self.path(name)).expect("open");
        c.execute_batch(SCHEMA).expect("schema");
        c
    }

    fn replica(&self, name: &str) -> Replica {
        let mut r = Replica::open(
            self.path(name),
            KeyStore::at(self.path(&format!("{name}.keys"))),
        )
        .expect("open");
        r.init(name).expect("init");
        r.connection().execute_batch(SCHEMA).expect("schema");
        r.track("items").expect("track");
        r
    }
}

fn bulk(conn: &Connection, sql: &str) -> Duration {
    timed(|| {
        conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;"))
            .expect("bulk statement")
    })
    .1
}

/// The bulk insert, under a name a profiler can select.
#[inline(never)]
fn profiled_insert(conn: &Connection, n: u64) {
    bulk(conn, &insert_sql(n));
}

/// The bulk update, under a name a profiler can select.
#[inline(never)]
fn profiled_update(conn: &Connection) {
    bulk(conn, UPDATE_SQL);
}

fn file_size(conn: &Connection) -> u64 {
    conn.execute_batch("VACUUM").expect("vacuum");
    conn.query_row(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        [],
        |r| r.get::<_, i64>(0),
    )
    .expect("size") as u64
}

fn ratio(name: &str, tide: Duration, plain: Duration, target: f64) -> Figure {
    let r = tide.as_secs_f64() / plain.as_secs_f64().max(1e-9);
    Figure {
        target: format!("<= {target}x"),
        meets: Some(r <= target),
        ..against(name, tide, plain)
    }
}

/// A ratio of times with no target.
fn against(name: &str, tide: Duration, plain: Duration) -> Figure {
    let r = tide.as_secs_f64() / plain.as_secs_f64().max(1e-9);
    Figure {
        name: name.into(),
        value: format!(
            "{r:.2}x ({:.0} ms vs {:.0} ms)",
            tide.as_secs_f64() * 1e3,
            plain.as_secs_f64() * 1e3
        ),
        target: String::new(),
        meets: None,
    }
}

fn rate(name: &str, ops: u64, took: Duration, target: Option<f64>) -> Figure {
    let per = ops as f64 / took.as_secs_f64().max(1e-9);
    Figure {
        name: name.into(),
        value: format!(
            "{:.0} K ops/s ({ops} ops in {:.2} s)",
            per / 1e3,
            took.as_secs_f64()
        ),
        target: target
            .map(|t| format!(">= {:.0} K ops/s", t / 1e3))
            .unwrap_or_default(),
        meets: target.map(|t| per >= t),
    }
}

/// Runs every measurement and returns the report's lines.
pub fn run(config: &Config) -> Vec<Figure> {
    let n = config.rows;
    let mut out = Vec::new();
    let site = Site::new();

    // Capture: the same statements on a plain table and a tracked one; the best of three
    // fresh runs each, alternating, so file-system warm-up favours neither.
    let mut t_plain = Duration::MAX;
    let mut t_tide = Duration::MAX;
    for round in 0..3 {
        t_plain = t_plain.min(bulk(
            &site.plain(&format!("warm{round}.db")),
            &insert_sql(n),
        ));
        t_tide = t_tide.min(bulk(
            site.replica(&format!("warm{round}")).connection(),
            &insert_sql(n),
        ));
    }
    let plain = site.plain("plain.db");
    let mut a = site.replica("a");
    bulk(&plain, &insert_sql(n));
    bulk(a.connection(), &insert_sql(n));
    out.push(ratio(
        &format!("capture: bulk insert of {n} rows (best of 3)"),
        t_tide,
        t_plain,
        1.5,
    ));
    let (_, t_seal) = timed(|| a.seal().expect("seal"));
    out.push(rate(
        "seal: captured inserts into one signed change",
        n,
        t_seal,
        None,
    ));

    // Export (the writes are sealed; the bundle is signed, compressed, encrypted).
    let b_card = {
        let b = site.replica("b");
        let card = b.card().expect("card");
        a.add_peer(&card).expect("peer");
        card
    };
    let bundle_path = site.path("a-to-b.tide");
    let options = WriteOptions {
        recipient: Some(b_card.id),
        encrypt_to: vec![b_card.box_key],
        ..Default::default()
    };
    let (_, t_export) = timed(|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&bundle_path).expect("create"));
        tide_bundle::export(&mut a, &VersionVector::new(), &options, &mut f).expect("export")
    });
    let t_seal_export = t_seal + t_export;
    out.push(Figure {
        name: format!("export: {n} row ops sealed, signed, compressed, encrypted"),
        value: format!(
            "{:.2} s ({:.0} K ops/s)",
            t_seal_export.as_secs_f64(),
            n as f64 / t_seal_export.as_secs_f64() / 1e3
        ),
        target: if n == 1_000_000 {
            "< 3 s".into()
        } else {
            format!("< {:.2} s (3 s per 1 M)", 3.0 * n as f64 / 1e6)
        },
        meets: Some(t_seal_export.as_secs_f64() < 3.0 * n as f64 / 1e6),
    });

    // Import without conflicts, against a plain insert of the same rows.
    let mut b = Replica::open(site.path("b"), KeyStore::at(site.path("b.keys"))).expect("open b");
    b.add_peer(&a.card().expect("card")).expect("peer");
    let (_, t_import) = timed(|| {
        tide_bundle::import(
            &mut b,
            &mut std::io::BufReader::new(std::fs::File::open(&bundle_path).expect("open")),
            None,
        )
        .expect("import")
    });
    out.push(rate(
        "import: verify, decrypt, apply (no conflicts)",
        n,
        t_import,
        Some(400_000.0),
    ));
    out.push(ratio(
        "import: time against a plain insert of the same rows",
        t_import,
        t_plain,
        2.0,
    ));

    // Import where every op conflicts: c inserted the same keys with other values.
    let mut c = site.replica("c");
    write_conflicting(&mut c, &a, n);
    let c_card = c.card().expect("card");
    a.add_peer(&c_card).expect("peer");
    let for_c = site.path("a-to-c.tide");
    let options = WriteOptions {
        recipient: Some(c_card.id),
        encrypt_to: vec![c_card.box_key],
        ..Default::default()
    };
    tide_bundle::export(
        &mut a,
        &VersionVector::new(),
        &options,
        &mut std::io::BufWriter::new(std::fs::File::create(&for_c).expect("create")),
    )
    .expect("export");
    let (report, t_conflict) = timed(|| {
        tide_bundle::import(
            &mut c,
            &mut std::io::BufReader::new(std::fs::File::open(&for_c).expect("open")),
            None,
        )
        .expect("import")
    });
    out.push(rate(
        &format!(
            "import: every op conflicting ({} conflicts opened)",
            report.report.conflicts_opened
        ),
        n,
        t_conflict,
        Some(100_000.0),
    ));

    // Size: bundle bytes per op against SQLite's own changeset, both at the bundle's zstd
    // level.
    let mut plain_bundle = Vec::new();
    tide_bundle::export(
        &mut a,
        &VersionVector::new(),
        &WriteOptions::default(),
        &mut plain_bundle,
    )
    .expect("export");
    match changeset_size(&site, n) {
        Ok(cs) => {
            let r = plain_bundle.len() as f64 / cs as f64;
            out.push(Figure {
                name: "size: bundle bytes per row op against the zstd changeset".into(),
                value: format!(
                    "{r:.2}x ({:.1} vs {:.1} bytes/op)",
                    plain_bundle.len() as f64 / n as f64,
                    cs as f64 / n as f64
                ),
                target: "<= 1.2x".into(),
                meets: Some(r <= 1.2),
            });
        }
        Err(e) => out.push(Figure {
            name: "size: bundle against the changeset".into(),
            value: format!("not measured: {e}"),
            target: "<= 1.2x".into(),
            meets: None,
        }),
    }
    drop(a);
    let user = file_size(&plain);
    let with_meta = file_size(&Connection::open(site.path("a")).expect("open"));
    let meta = with_meta.saturating_sub(user) as f64 / user as f64;
    out.push(Figure {
        name: "size: tide metadata against the user data".into(),
        value: format!(
            "{meta:.2}x ({:.1} MB of metadata, {:.1} MB of data)",
            (with_meta - user) as f64 / 1e6,
            user as f64 / 1e6
        ),
        target: "<= 1x".into(),
        meets: Some(meta <= 1.0),
    });

    // Capture of updates and deletes (after sealing, so each run starts clean).
    let mut a = Replica::open(site.path("a"), KeyStore::at(site.path("a.keys"))).expect("reopen");
    let t_plain = bulk(&plain, UPDATE_SQL);
    let t_tide = bulk(a.connection(), UPDATE_SQL);
    out.push(ratio(
        &format!("capture: bulk update of {n} rows"),
        t_tide,
        t_plain,
        1.5,
    ));
    a.seal().expect("seal");
    // A DELETE with a WHERE clause first (SQLite cannot truncate, so both delete row by
    // row), then the plain `DELETE FROM items`, which SQLite truncates page by page
    // unless the table has a trigger.
    let half = n / 2;
    let t_plain = bulk(
        &plain,
        &format!("DELETE FROM items WHERE qty <= {half} + 1"),
    );
    let t_tide = bulk(
        a.connection(),
        &format!("DELETE FROM items WHERE qty <= {half} + 1"),
    );
    out.push(ratio(
        &format!("capture: bulk delete of {half} rows (DELETE ... WHERE)"),
        t_tide,
        t_plain,
        1.5,
    ));
    a.seal().expect("seal");
    let t_plain = bulk(&plain, "DELETE FROM items");
    let t_tide = bulk(a.connection(), "DELETE FROM items");
    out.push(ratio(
        &format!(
            "capture: bulk delete of the other {} rows (DELETE FROM items)",
            n - half
        ),
        t_tide,
        t_plain,
        1.5,
    ));
    a.seal().expect("seal");

    // One commit per row.
    let m = config.commits;
    let per_commit = |conn: &Connection| {
        timed(|| {
            let mut stmt = conn
                .prepare("INSERT INTO items VALUES (?1, 'x', 1, 1.5, 'y')")
                .expect("prepare");
            for i in 0..m {
                stmt.execute([format!("commit-{i}")]).expect("insert");
            }
        })
        .1
    };
    let t_plain = per_commit(&plain);
    let t_tide = per_commit(a.connection());
    out.push(ratio(
        &format!("capture: {m} inserts, one commit each"),
        t_tide,
        t_plain,
        1.1,
    ));

    out.extend(mailbox(&site, n));
    out.push(hub(&site, n));
    out.push(live(
        &site,
        config.commits.min(LIVE_COMMITS as u64) as usize,
    ));
    out.extend(fleet(config.replicas, config.memory.as_deref()));

    if let Some(exe) = &config.memory {
        let dir = tempfile::tempdir().expect("temporary folder");
        for phase in ["export", "import"] {
            match peak_memory(exe, phase, n, dir.path()) {
                Ok(mib) => out.push(Figure {
                    name: format!("memory: peak resident during {phase} of {n} row ops"),
                    value: format!("{mib:.1} MiB"),
                    target: "<= 64 MiB (for a 1 GB bundle)".into(),
                    meets: Some(mib <= 64.0),
                }),
                Err(e) => out.push(Figure {
                    name: format!("memory: {phase}"),
                    value: format!("not measured: {e}"),
                    target: String::new(),
                    meets: None,
                }),
            }
        }
    }
    out
}

/// `n` row ops through a folder mailbox (transports/SPEC.md §3, default options: shared
/// pages, unencrypted), against a plain copy of the same bytes on the same file system.
/// Replica `ma` inserts and seals the rows before any clock starts; `send` is its visit to
/// an empty mailbox (writing the pages), `receive` is `mb`'s visit (importing and
/// applying them). The copy is `std::fs::copy` of each page file the send left in
/// `seg/`, each copy flushed to disk, then its folder, as the mailbox does for its files.
fn mailbox(site: &Site, n: u64) -> Vec<Figure> {
    let mut a = site.replica("ma");
    let mut b = site.replica("mb");
    a.add_peer(&b.card().expect("card")).expect("peer");
    b.add_peer(&a.card().expect("card")).expect("peer");
    bulk(a.connection(), &insert_sql(n));
    a.seal().expect("seal");

    let folder = site.path("mailbox");
    std::fs::create_dir(&folder).expect("mailbox folder");
    let mut carrier = Mailbox::new(&folder, MailboxOptions::default());
    let (sent, t_send) = timed(|| carrier.sync(&mut a).expect("send visit"));

    let seg = carrier.root().join("seg");
    let pages: Vec<PathBuf> = std::fs::read_dir(&seg)
        .expect("seg folder")
        .map(|e| e.expect("seg entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tide"))
        .collect();
    let bytes: u64 = pages
        .iter()
        .map(|p| std::fs::metadata(p).expect("page size").len())
        .sum();
    assert!(
        sent.pages_sent > 0 && !pages.is_empty() && bytes > 0,
        "the send visit wrote no pages for {n} row ops ({sent:?})"
    );

    let copies = site.path("mailbox-copy");
    std::fs::create_dir(&copies).expect("copy folder");
    let (copied, t_copy) = timed(|| {
        let mut copied = 0;
        for page in &pages {
            let to = copies.join(page.file_name().expect("page name"));
            copied += std::fs::copy(page, &to).expect("copy");
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .expect("sync copy");
        }
        std::fs::File::open(&copies)
            .and_then(|d| d.sync_all())
            .expect("sync copy folder");
        copied
    });
    assert_eq!(copied, bytes, "the copy must move the mailbox's bytes");

    let mut carrier = Mailbox::new(&folder, MailboxOptions::default());
    let (received, t_receive) = timed(|| carrier.sync(&mut b).expect("receive visit"));
    let rows: i64 = b
        .connection()
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count");
    assert!(
        rows == n as i64,
        "replica mb holds {rows} rows after its mailbox visit, not {n}: the mailbox \
         measurement would time nothing ({received:?})"
    );

    vec![
        against(
            &format!(
                "mailbox: send {n} sealed row ops ({} page(s)) against copying the same bytes",
                pages.len()
            ),
            t_send,
            t_copy,
        ),
        against(
            &format!(
                "mailbox: send and receive (receive {:.0} ms) against copying the same bytes",
                t_receive.as_secs_f64() * 1e3
            ),
            t_send + t_receive,
            t_copy,
        ),
        Figure {
            name: "mailbox: page bytes per row op".into(),
            value: format!(
                "{:.1} bytes/op ({:.1} MB for {n} ops)",
                bytes as f64 / n as f64,
                bytes as f64 / 1e6
            ),
            target: String::new(),
            meets: None,
        },
    ]
}

/// A hub's database in `dir`: an initialised replica `name` (its keys in `name.keys`)
/// that tracks no table (a hub relays the tables it does not track) and knows each of
/// `cards`. Returns its card, for the replicas to add.
fn hub_db(dir: &Path, name: &str, cards: &[Card]) -> Card {
    let mut h = Replica::open(
        dir.join(name),
        KeyStore::at(dir.join(format!("{name}.keys"))),
    )
    .expect("open the hub's database");
    unsynced(&h);
    h.init(name).expect("init the hub");
    for card in cards {
        h.add_peer(card).expect("the hub's peer");
    }
    h.card().expect("the hub's card")
}

/// Setting up only: `r`'s commits skip the flush to disk. The setting is this
/// connection's (`PRAGMA synchronous`), so a replica measured afterwards, opened again,
/// flushes as it would anywhere.
fn unsynced(r: &Replica) {
    r.connection()
        .execute_batch("PRAGMA synchronous = OFF")
        .expect("pragma");
}

/// The hub of [`hub_db`] in this process, on a free loopback port.
fn hub_start(dir: &Path, name: &str) -> (Hub, String) {
    let hub = Hub::start(
        dir.join(name),
        KeyStore::at(dir.join(format!("{name}.keys"))),
        "127.0.0.1:0",
        HubOptions::default(),
    )
    .expect("start the hub");
    let url = format!("http://{}", hub.addr());
    (hub, url)
}

/// `r` knows the hub and every other replica of `cards` (whose changes it applies).
fn know(r: &mut Replica, hub: &Card, cards: &[Card]) {
    let me = r.id().expect("id");
    r.add_peer(hub).expect("peer");
    for card in cards.iter().filter(|c| c.id != me) {
        r.add_peer(card).expect("peer");
    }
}

fn count_rows(r: &Replica) -> i64 {
    r.connection()
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .expect("count")
}

/// `n` row ops through a hub on loopback HTTP (transports/SPEC.md §5,
/// `HubOptions::default()`), against the file path moving the same rows in the same run:
/// the best of three rounds each, alternating, so file-system warm-up favours neither.
/// Replica `ha` inserts and seals the rows once, before any clock starts. Each round
/// makes, in a folder of its own, a fresh hub and fresh replicas `hb` and `hc`, which
/// know `ha`, the hub and each other (`ha` knows them).
/// - Hub path: `ha`'s sync (its page up; the hub verifies and stores it) plus `hb`'s
///   sync (the page down; `hb` verifies, imports and applies it), each one
///   `HubClient::sync` of a client made before the clock starts.
/// - File path, the baseline: what `tide bundle export --peer hc -o FILE` and
///   `tide bundle import FILE` do. `tide_bundle::export` of what `hc` lacks (signed,
///   addressed to `hc`, unencrypted as the hub's pages are) into a file flushed to disk,
///   then `tide_bundle::import` of it into `hc`.
fn hub(site: &Site, n: u64) -> Figure {
    let mut a = site.replica("ha");
    bulk(a.connection(), &insert_sql(n));
    a.seal().expect("seal");
    let a_card = a.card().expect("card");
    let mut by_hub = (Duration::MAX, Duration::ZERO);
    let mut by_file = (Duration::MAX, Duration::ZERO);
    for _ in 0..3 {
        let round = Site::new();
        let mut b = round.replica("hb");
        let mut c = round.replica("hc");
        let cards = [
            a_card.clone(),
            b.card().expect("card"),
            c.card().expect("card"),
        ];
        let hub_card = hub_db(round.dir.path(), "hub", &cards);
        for r in [&mut a, &mut b, &mut c] {
            know(r, &hub_card, &cards);
        }
        let file = file_path(&mut a, &mut c, &round.path("ha-to-hc.tide"), n);
        if file.0 + file.1 < by_file.0 + by_file.1 {
            by_file = file;
        }
        let through = hub_path(&mut a, &mut b, round.dir.path(), n);
        if through.0 + through.1 < by_hub.0 + by_hub.1 {
            by_hub = through;
        }
    }
    ratio(
        &format!(
            "hub: {n} row ops up from A and down to B (up {:.0} ms, down {:.0} ms) against \
             export to a file and import (export {:.0} ms, import {:.0} ms), best of 3",
            ms(by_hub.0),
            ms(by_hub.1),
            ms(by_file.0),
            ms(by_file.1)
        ),
        by_hub.0 + by_hub.1,
        by_file.0 + by_file.1,
        1.5,
    )
}

/// The file path of [`hub`]: `a`'s export of what `c` lacks into `file`, flushed to disk,
/// and `c`'s import of it. Returns the two times.
fn file_path(a: &mut Replica, c: &mut Replica, file: &Path, n: u64) -> (Duration, Duration) {
    let to = c.id().expect("id");
    let since = a.peer_ack(to).expect("what hc holds");
    let options = WriteOptions {
        recipient: Some(to),
        ..Default::default()
    };
    let (_, t_export) = timed(|| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(file).expect("create"));
        tide_bundle::export(a, &since, &options, &mut w).expect("export");
        w.into_inner()
            .expect("flush")
            .sync_all()
            .expect("sync the bundle");
    });
    let (_, t_import) = timed(|| {
        tide_bundle::import(
            c,
            &mut BufReader::new(std::fs::File::open(file).expect("open")),
            None,
        )
        .expect("import")
    });
    let rows = count_rows(c);
    assert!(
        rows == n as i64,
        "replica hc holds {rows} rows after importing the file, not {n}: the file path \
         would time nothing"
    );
    (t_export, t_import)
}

/// The hub path of [`hub`]: the hub of `dir/hub` started, `a`'s sync with it, then `b`'s.
/// Returns the two sync times.
fn hub_path(a: &mut Replica, b: &mut Replica, dir: &Path, n: u64) -> (Duration, Duration) {
    let (server, url) = hub_start(dir, "hub");
    let mut up = HubClient::new(&url);
    let mut down = HubClient::new(&url);
    let (sent, t_up) = timed(|| up.sync(a).expect("ha's sync with the hub"));
    let (received, t_down) = timed(|| down.sync(b).expect("hb's sync with the hub"));
    server.stop().expect("stop the hub");
    let rows = count_rows(b);
    assert!(
        rows == n as i64,
        "replica hb holds {rows} rows after its sync with the hub, not {n}: the hub \
         measurement would time nothing (ha sent {sent:?}; hb received {received:?})"
    );
    (t_up, t_down)
}

/// Most commits replica A makes, one row each, for the live figure (fewer when the
/// per-commit figure makes fewer).
const LIVE_COMMITS: usize = 200;

/// The `p`-quantile of sorted durations (nearest rank).
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Live sync through a hub on loopback HTTP. Replica `la` commits `commits` rows one at
/// a time, each commit followed by its sync with the hub. Replica `lb`, in a thread of
/// its own (opened there from its path), syncs with the hub in a loop, each sync waiting
/// at the hub up to 1 s for a change (`HubClient::wait_s = 1`, a long poll), and after
/// each sync reads which rows it holds. A row's latency is from `la`'s commit returning
/// to `lb`'s sync that brought it returning. Both have synced once before the first
/// commit. No baseline: the figure is a time, with the target.
fn live(site: &Site, commits: usize) -> Figure {
    let mut a = site.replica("la");
    let mut b = site.replica("lb");
    let cards = [a.card().expect("card"), b.card().expect("card")];
    let hub_card = hub_db(site.dir.path(), "live-hub", &cards);
    know(&mut a, &hub_card, &cards);
    know(&mut b, &hub_card, &cards);
    drop(b);
    let (server, url) = hub_start(site.dir.path(), "live-hub");

    let (ready, started) = mpsc::channel();
    let (b_path, b_keys, b_url) = (site.path("lb"), site.path("lb.keys"), url.clone());
    let watcher = std::thread::spawn(move || {
        let mut b = Replica::open(&b_path, KeyStore::at(b_keys)).expect("open lb");
        let mut client = HubClient::new(&b_url);
        client.sync(&mut b).expect("lb's first sync with the hub");
        ready.send(()).expect("main thread");
        client.wait_s = 1;
        let mut seen: Vec<Option<Instant>> = vec![None; commits];
        let mut count = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while count < commits {
            assert!(
                Instant::now() < deadline,
                "replica lb holds {count} of the {commits} rows la committed after 60 s of \
                 syncing with the hub: the live measurement would time nothing"
            );
            client.sync(&mut b).expect("lb's sync with the hub");
            let now = Instant::now();
            let mut stmt = b
                .connection()
                .prepare_cached("SELECT qty FROM items")
                .expect("select");
            for i in stmt.query_map([], |r| r.get::<_, i64>(0)).expect("rows") {
                let i = i.expect("row") as usize;
                if i < commits && seen[i].is_none() {
                    seen[i] = Some(now);
                    count += 1;
                }
            }
        }
        seen
    });
    started.recv().expect("lb's thread started");

    let mut client = HubClient::new(&url);
    client.sync(&mut a).expect("la's first sync with the hub");
    let mut committed = Vec::with_capacity(commits);
    let mut a_syncs = Vec::with_capacity(commits);
    for i in 0..commits {
        a.connection()
            .execute(
                "INSERT INTO items VALUES (printf('live-%06d', ?1), 'x', ?1, 1.5, 'y')",
                [i as i64],
            )
            .expect("insert");
        committed.push(Instant::now());
        a_syncs.push(timed(|| client.sync(&mut a).expect("la's sync with the hub")).1);
    }
    let seen = watcher
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    server.stop().expect("stop the hub");

    let mut latency: Vec<Duration> = seen
        .iter()
        .zip(&committed)
        .map(|(s, c)| s.expect("every row seen").saturating_duration_since(*c))
        .collect();
    latency.sort();
    a_syncs.sort();
    let p99 = quantile(&latency, 0.99);
    Figure {
        name: format!(
            "hub: live, A's commit to the row on B, which waits at the hub (wait 1 s); \
             {commits} commits, each followed by A's sync (median {:.1} ms)",
            ms(quantile(&a_syncs, 0.5))
        ),
        value: format!(
            "p50 {:.1} ms, p99 {:.1} ms (max {:.1} ms)",
            ms(quantile(&latency, 0.5)),
            ms(p99),
            ms(latency[latency.len() - 1])
        ),
        target: "p99 < 200 ms".into(),
        meets: Some(p99 < Duration::from_millis(200)),
    }
}

/// Rows each replica of the fleet writes, before any clock starts.
const FLEET_ROWS: u64 = 3;
/// Syncs each replica of the fleet makes at least.
const FLEET_SYNCS: usize = 4;

/// Where the fleet's hub runs: in this process, or in a child (to read its peak memory).
enum HubRun {
    Here(Hub),
    Child(std::process::Child, BufReader<std::process::ChildStdout>),
}

impl HubRun {
    /// Starts the hub of `dir/hub`; in a child process running `exe --phase hub` when
    /// given the harness binary. Returns it and its URL.
    fn start(dir: &Path, exe: Option<&Path>) -> (HubRun, String) {
        let Some(exe) = exe else {
            let (hub, url) = hub_start(dir, "hub");
            return (HubRun::Here(hub), url);
        };
        let mut child = Command::new(exe)
            .args(["--phase", "hub", "--dir"])
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the hub's process");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the hub's address");
        let addr = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the hub's process printed {line:?}, not its address"))
            .trim()
            .to_string();
        (HubRun::Child(child, out), format!("http://{addr}"))
    }

    /// Peak resident memory so far, in MiB (a child's only).
    fn peak_mib(&self) -> Option<f64> {
        match self {
            HubRun::Here(_) => None,
            HubRun::Child(child, _) => {
                Some(peak_rss_kib_of(&child.id().to_string()) as f64 / 1024.0)
            }
        }
    }

    /// Stops the hub; a child's peak resident memory in MiB, read when it ends.
    fn stop(self) -> Option<f64> {
        match self {
            HubRun::Here(hub) => {
                hub.stop().expect("stop the hub");
                None
            }
            HubRun::Child(mut child, mut out) => {
                drop(child.stdin.take());
                let mut rest = String::new();
                out.read_to_string(&mut rest).expect("the hub's output");
                let status = child.wait().expect("the hub's process");
                assert!(status.success(), "the hub's process ended with {status}");
                let kib = rest
                    .lines()
                    .find_map(|l| l.strip_prefix("peak-rss-kib "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .expect("the hub's process printed its peak memory");
                Some(kib / 1024.0)
            }
        }
    }
}

/// `replicas` replicas syncing with one hub at once, each in a thread of its own. Before
/// any clock starts, each replica writes and seals `FLEET_ROWS` rows of its own, and
/// knows the hub and every other replica; the hub knows each. Then every thread opens its
/// replica and waits at a barrier; from its release, each syncs (`HubClient::sync`, no
/// wait at the hub) until it has made `FLEET_SYNCS` syncs and holds every replica's rows.
/// The figure is those syncs per second, from the release to the last thread's end. An
/// exchange here is one whole sync: hello, then requests until neither side lacks
/// anything. With the harness binary the hub runs in a child process (`--phase hub`),
/// and its `VmHWM` is its peak resident memory; without, in this process.
fn fleet(replicas: usize, exe: Option<&Path>) -> Vec<Figure> {
    let site = Site::new();
    let dir = site.dir.path();
    let name = |i: usize| format!("f{i:03}");
    // Setting up commits about `replicas` squared times (each replica adds every other's
    // card): without flushes to disk, that takes seconds, not minutes.
    let mut opened: Vec<Replica> = (0..replicas)
        .map(|i| {
            let mut r = Replica::open(
                site.path(&name(i)),
                KeyStore::at(site.path(&format!("{}.keys", name(i)))),
            )
            .expect("open");
            unsynced(&r);
            r.init(&name(i)).expect("init");
            r.connection().execute_batch(SCHEMA).expect("schema");
            r.track("items").expect("track");
            r
        })
        .collect();
    let cards: Vec<Card> = opened.iter().map(|r| r.card().expect("card")).collect();
    let hub_card = hub_db(dir, "hub", &cards);
    for (i, r) in opened.iter_mut().enumerate() {
        know(r, &hub_card, &cards);
        let rows: Vec<String> = (0..FLEET_ROWS)
            .map(|x| format!("('{}-{x}', 'name', {x}, 0.25, 'note')", name(i)))
            .collect();
        r.connection()
            .execute_batch(&format!("INSERT INTO items VALUES {}", rows.join(", ")))
            .expect("insert");
        r.seal().expect("seal");
    }
    drop(opened);

    let (run, url) = HubRun::start(dir, exe);
    let at_start = run.peak_mib();
    let total = (replicas as u64 * FLEET_ROWS) as i64;
    let barrier = Arc::new(Barrier::new(replicas + 1));
    let threads: Vec<_> = (0..replicas)
        .map(|i| {
            let (path, keys) = (site.path(&name(i)), site.path(&format!("{}.keys", name(i))));
            let (url, barrier, me) = (url.clone(), barrier.clone(), name(i));
            std::thread::spawn(move || {
                // Opened before the barrier and checked after it: a thread that fails
                // still releases the others.
                let opened = Replica::open(&path, KeyStore::at(keys));
                let mut client = HubClient::new(&url);
                barrier.wait();
                let mut r = opened.unwrap_or_else(|e| panic!("open replica {me}: {e}"));
                let deadline = Instant::now() + Duration::from_secs(300);
                let mut syncs = Vec::new();
                let mut changes = 0;
                loop {
                    let (report, took) = timed(|| {
                        client
                            .sync(&mut r)
                            .unwrap_or_else(|e| panic!("replica {me}'s sync with the hub: {e}"))
                    });
                    syncs.push(took);
                    changes += report.changes_received;
                    let held = count_rows(&r);
                    if syncs.len() >= FLEET_SYNCS && held == total {
                        return (changes, syncs);
                    }
                    assert!(
                        Instant::now() < deadline,
                        "replica {me} holds {held} of the fleet's {total} rows after {} syncs \
                         in 300 s with the hub: the fleet measurement would not end",
                        syncs.len()
                    );
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let ended: Vec<(usize, Vec<Duration>)> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect();
    let took = start.elapsed();
    let peak = run.stop();

    let changes: usize = ended.iter().map(|(c, _)| c).sum();
    let mut each: Vec<Duration> = ended.into_iter().flat_map(|(_, s)| s).collect();
    each.sort();
    let syncs = each.len();
    let mut out = vec![Figure {
        name: format!(
            "hub: {replicas} replicas syncing at once, a thread each ({FLEET_ROWS} rows each; \
             at least {FLEET_SYNCS} syncs each, until each holds all {total} rows)"
        ),
        value: format!(
            "{:.0} exchanges/s ({syncs} in {:.2} s, {changes} changes delivered; an exchange \
             p50 {:.0} ms, p99 {:.0} ms)",
            syncs as f64 / took.as_secs_f64().max(1e-9),
            took.as_secs_f64(),
            ms(quantile(&each, 0.5)),
            ms(quantile(&each, 0.99))
        ),
        target: String::new(),
        meets: None,
    }];
    if let (Some(peak), Some(at_start)) = (peak, at_start) {
        out.push(Figure {
            name: format!("memory: peak resident of the hub while {replicas} replicas sync"),
            value: format!("{peak:.1} MiB ({at_start:.1} MiB when it began serving)"),
            target: String::new(),
            meets: None,
        });
    }
    out
}

/// SQLite's own changeset of the same rows, from the sqlite3 shell's session extension,
/// compressed with zstd at the bundle's level.
fn changeset_size(site: &Site, n: u64) -> Result<u64, String> {
    let db = site.path("session.db");
    Connection::open(&db)
        .and_then(|c| c.execute_batch(SCHEMA))
        .map_err(|e| e.to_string())?;
    let cs = site.path("changeset.bin");
    let script = format!(
        ".session open main s\n.session attach items\n{};\n.session changeset {}\n",
        insert_sql(n),
        cs.display()
    );
    let mut child = Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("sqlite3 shell: {e}"))?;
    std::io::Write::write_all(child.stdin.as_mut().expect("piped"), script.as_bytes())
        .map_err(|e| e.to_string())?;
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let raw = std::fs::read(&cs).map_err(|_| {
        format!(
            "no changeset written ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let z = zstd::encode_all(&raw[..], WriteOptions::default().level).map_err(|e| e.to_string())?;
    Ok(z.len() as u64)
}

/// Runs one phase in a child process and reads its peak resident memory.
fn peak_memory(exe: &Path, phase: &str, n: u64, dir: &Path) -> Result<f64, String> {
    let out = Command::new(exe)
        .args(["--phase", phase, "--rows", &n.to_string(), "--dir"])
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| {
            format!(
                "the child printed no figure: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// `c` trusts `source` and writes the same `n` keys with other names, offline, and seals:
/// importing `source`'s rows then conflicts on every op.
fn write_conflicting(c: &mut Replica, source: &Replica, n: u64) {
    c.add_peer(&source.card().expect("card")).expect("peer");
    c.connection()
        .execute_batch(&format!(
            "BEGIN; {}; COMMIT;",
            insert_sql(n).replace("'name '", "'other '")
        ))
        .expect("insert");
    c.seal().expect("seal");
}

/// The child side of [`peak_memory`], in a folder the parent keeps between phases:
/// `export` builds replicas a and b there, writes a's rows and exports them; `import`
/// (a fresh process) imports that bundle into b; `hub` serves the hub of [`fleet`]. Each
/// prints `peak-rss-kib N`.
pub fn phase(phase: &str, n: u64, dir: &Path) {
    let keys = |name: &str| KeyStore::at(dir.join(format!("{name}.keys")));
    let open = |name: &str| Replica::open(dir.join(name), keys(name)).expect("open");
    // A new replica tracking `items`.
    let site = |name: &str| {
        let mut r = open(name);
        r.init(name).expect("init");
        r.connection().execute_batch(SCHEMA).expect("schema");
        r.track("items").expect("track");
        r
    };
    // Everything `from` holds, exported to `to` (a file in the folder).
    let export_to = |from: &mut Replica, to: &str| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(to)).expect("create"));
        tide_bundle::export(
            from,
            &VersionVector::new(),
            &WriteOptions::default(),
            &mut f,
        )
        .expect("export");
    };
    let bundle = dir.join("x.tide");
    match phase {
        "export" => {
            let mut a = site("a");
            let mut b = site("b");
            a.add_peer(&b.card().expect("card")).expect("peer");
            b.add_peer(&a.card().expect("card")).expect("peer");
            a.connection()
                .execute_batch(&format!("BEGIN; {}; COMMIT;", insert_sql(n)))
                .expect("insert");
            export_to(&mut a, "x.tide");
        }
        // After `export`: replica c inserts the same keys with other values offline, and a
        // exports its rows for c, so that importing them (`import-conflicting`, under
        // callgrind --toggle-collect=tide_bundle::replica::import) conflicts on every op.
        "conflict-setup" => {
            let mut a = open("a");
            let mut c = site("c");
            write_conflicting(&mut c, &a, n);
            a.add_peer(&c.card().expect("card")).expect("peer");
            export_to(&mut a, "xc.tide");
        }
        "import-conflicting" => {
            let mut c = open("c");
            let imported = tide_bundle::import(
                &mut c,
                &mut std::io::BufReader::new(
                    std::fs::File::open(dir.join("xc.tide")).expect("open"),
                ),
                None,
            )
            .expect("import");
            println!("conflicts-opened {}", imported.report.conflicts_opened);
        }
        // For instruction counts (callgrind --toggle-collect=tide_bench::profiled_insert,
        // or ::profiled_update): the bulk insert, then the bulk update, on a plain table
        // or a tracked one.
        "capture-plain" | "capture-tide" => {
            let site = Site {
                dir: tempfile::tempdir_in(dir).expect("temporary folder"),
            };
            let replica;
            let plain;
            let conn = if phase == "capture-tide" {
                replica = site.replica("t");
                replica.connection()
            } else {
                plain = site.plain("p.db");
                &plain
            };
            profiled_insert(conn, n);
            profiled_update(conn);
        }
        // The hub of [`fleet`], whose database the parent made: serves until the parent
        // closes this process's standard input.
        "hub" => {
            let hub = Hub::start(
                dir.join("hub"),
                keys("hub"),
                "127.0.0.1:0",
                HubOptions::default(),
            )
            .expect("start the hub");
            println!("listening {}", hub.addr());
            std::io::stdout().flush().expect("stdout");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            hub.stop().expect("stop the hub");
        }
        _ => {
            let mut b = open("b");
            tide_bundle::import(
                &mut b,
                &mut std::io::BufReader::new(std::fs::File::open(&bundle).expect("open")),
                None,
            )
            .expect("import");
        }
    }
    println!("peak-rss-kib {}", peak_rss_kib());
}

fn peak_rss_kib() -> u64 {
    peak_rss_kib_of("self")
}

/// `VmHWM` of process `pid` ("self" for this one), 0 when it cannot be read.
fn peak_rss_kib_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The report as a Markdown table.
pub fn table(figures: &[Figure]) -> String {
    let mut s = String::from("| measure | figure | target | met |\n|---|---|---|---|\n");
    for f in figures {
        let met = match f.meets {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {met} |\n",
            f.name, f.value, f.target
        ));
    }
    s
}
