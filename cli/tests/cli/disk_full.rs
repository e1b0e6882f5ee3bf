//! An import onto a nearly full disk, through the real `tide` binary: the replica lives
//! on a small tmpfs filled up to a few MiB. The import must say the disk is full (not a
//! follow-on SQLite error), exit 1 with "nothing was changed", and leave the database
//! as it was, byte for byte; with space freed, the same bundle imports.
//!
//! Mounting needs root, which CI has. Without it these tests fail and say so: they do
//! not pass without having run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;

use crate::common::{ok_in as ok, tide_in};

fn tide(dir: &Path, args: &[&str]) -> crate::common::Run {
    tide_in(dir, args, &[])
}

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount ({e}); this test needs it, as root"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} ({}): this test needs root (CI runs it as \
             root); it fills a small disk to check what an import says when space runs out",
            at.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(at.to_path_buf())
    }

    /// Fills the tmpfs until about `left` bytes remain free; returns the filler's path.
    fn fill(&self, left: u64) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0x5a_u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        f.set_len(written.saturating_sub(left)).unwrap();
        f.sync_all().unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let done = Command::new("umount").arg(&self.0).status();
        if !done.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Every table's schema and rows, sorted: what the database holds, logically.
fn dump(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut out = Vec::new();
    for (name, sql) in tables {
        out.push(sql);
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{}\"", name.replace('"', "\"\"")))
            .unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap()
            .map(|row| format!("{name}: {}", row.unwrap().join(", ")))
            .collect();
        rows.sort();
        out.extend(rows);
    }
    out
}

/// Replica `a` in an ordinary folder with `rows` rows of `body(i)` for `b`, and `b` on a
/// 48 MiB tmpfs filled until `left` bytes are free; imports the bundle into `b`, checks
/// the refusal and that `b.db` is unchanged, then frees the space and imports again.
fn import_onto_a_nearly_full_disk(rows: usize, body: impl Fn(usize) -> String, left: u64) {
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    let small = Tmpfs::mount(&dir.join("small"), "48m");
    let (a, b) = ("a.db", "small/b.db");
    for (db, name) in [(a, "a"), (b, "b")] {
        ok(dir, &["--db", db, "init", "--name", name]);
        Connection::open(dir.join(db))
            .unwrap()
            .execute_batch("CREATE TABLE sites(id TEXT PRIMARY KEY, body TEXT, n INTEGER)")
            .unwrap();
        ok(dir, &["--db", db, "track", "sites"]);
        let card = ok(dir, &["--db", db, "id", "--card"]).stdout;
        std::fs::write(dir.join(format!("{name}.card")), card).unwrap();
    }
    ok(dir, &["--db", a, "peers", "add", "b.card"]);
    ok(dir, &["--db", b, "peers", "add", "a.card"]);
    {
        let mut app = Connection::open(dir.join(a)).unwrap();
        let tx = app.transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO sites VALUES (?1, ?2, ?3)",
                rusqlite::params![format!("site-{i:06}"), body(i), i as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    ok(
        dir,
        &[
            "--db", a, "bundle", "export", "--peer", "b", "-o", "big.tide",
        ],
    );

    let filler = small.fill(left);
    let bytes_before = std::fs::read(dir.join(b)).unwrap();
    let dump_before = dump(&dir.join(b));
    let r = tide(dir, &["--db", b, "bundle", "import", "big.tide"]);
    assert_eq!(
        r.code, 1,
        "the import should fail for want of space:\n{}{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr
            .contains("the disk is full: free some space and import again; nothing was imported")
            && r.stderr.contains("Nothing was changed.")
            && !r.stderr.contains("savepoint"),
        "{}",
        r.stderr
    );
    assert_eq!(dump(&dir.join(b)), dump_before, "b.db's contents changed");
    assert!(
        std::fs::read(dir.join(b)).unwrap() == bytes_before,
        "b.db is not byte-identical after the failed import"
    );
    assert!(
        !dir.join("small/b.db-journal").exists(),
        "a hot journal was left behind"
    );

    // With the space back, the same bundle imports whole.
    std::fs::remove_file(filler).unwrap();
    ok(dir, &["--db", b, "bundle", "import", "big.tide"]);
    let n: i64 = Connection::open(dir.join(b))
        .unwrap()
        .query_row("SELECT count(*) FROM sites", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, rows as i64);
    drop(small);
}

#[test]
fn an_import_that_fills_the_disk_while_applying_says_the_disk_is_full() {
    // Compressible rows: the log keeps their chunks packed and small, so storing the
    // change fits and the disk fills while the rows are written (a batch of new rows
    // at once, in a savepoint that SQLite's rollback on a full disk takes with it).
    import_onto_a_nearly_full_disk(20_000, |i| format!("{i:06}").repeat(150), 4 << 20);
}

#[test]
fn an_import_that_fills_the_disk_while_storing_says_the_disk_is_full() {
    // Incompressible rows: the disk fills while the change's chunks are stored.
    import_onto_a_nearly_full_disk(
        20_000,
        |i| {
            let mut out = [0u8; 400];
            let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for byte in &mut out {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                *byte = b'a' + (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 60) as u8;
            }
            String::from_utf8(out.to_vec()).unwrap()
        },
        2 << 20,
    );
}

/// Sealing writes the captured rows into a change: on a full disk, `tide status` (which
/// seals first, and still shows the replica when it cannot) says the disk is full and
/// what to do, and the captures stay to be sealed once there is room.
#[test]
fn a_seal_that_fills_the_disk_says_the_disk_is_full() {
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    let small = Tmpfs::mount(&dir.join("small"), "48m");
    let db = "small/a.db";
    ok(dir, &["--db", db, "init", "--name", "a"]);
    Connection::open(dir.join(db))
        .unwrap()
        .execute_batch("CREATE TABLE sites(id TEXT PRIMARY KEY, body TEXT)")
        .unwrap();
    ok(dir, &["--db", db, "track", "sites"]);
    {
        let mut app = Connection::open(dir.join(db)).unwrap();
        let tx = app.transaction().unwrap();
        for i in 0..20_000 {
            tx.execute(
                "INSERT INTO sites VALUES (?1, ?2)",
                rusqlite::params![format!("site-{i:06}"), format!("{i:06}").repeat(150)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    // The metadata of 20,000 rows alone needs more than this.
    let filler = small.fill(128 << 10);
    let bytes_before = std::fs::read(dir.join(db)).unwrap();
    let r = tide(dir, &["--db", db, "status"]);
    assert!(
        r.stderr.contains("were not sealed")
            && r.stderr.contains("full")
            && r.stderr.contains("Next: free space on the disk"),
        "{}",
        r.stderr
    );
    assert!(
        std::fs::read(dir.join(db)).unwrap() == bytes_before,
        "a.db is not byte-identical after the failed seal"
    );
    std::fs::remove_file(filler).unwrap();
    ok(dir, &["--db", db, "status"]);
    let sealed: i64 = Connection::open(dir.join(db))
        .unwrap()
        .query_row("SELECT count(*) FROM _tide_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sealed, 1, "the captures are sealed once there is room");
    drop(small);
}

/// A stick too small for what a replica has to write: `tide sync` says the folder is
/// full and what to do, leaves no half-written file where a reader would take it (only
/// `tmp/`, which it cleans), and changes nothing in the database; once the stick has
/// room, the same command writes everything and the other replica gets it.
#[test]
fn a_sync_onto_a_full_stick_says_so_and_leaves_nothing_half_written() {
    let site = tempfile::tempdir().unwrap();
    let dir = site.path();
    let stick = Tmpfs::mount(&dir.join("stick"), "8m");
    for name in ["a", "b"] {
        let db = format!("{name}.db");
        ok(dir, &["--db", &db, "init", "--name", name]);
        Connection::open(dir.join(&db))
            .unwrap()
            .execute_batch("CREATE TABLE notes(id TEXT PRIMARY KEY, body BLOB)")
            .unwrap();
        ok(dir, &["--db", &db, "track", "notes"]);
        let card = ok(dir, &["--db", &db, "id", "--card"]).stdout;
        std::fs::write(dir.join(format!("{name}.card")), card).unwrap();
    }
    ok(dir, &["--db", "a.db", "peers", "add", "b.card"]);
    ok(dir, &["--db", "b.db", "peers", "add", "a.card"]);
    // About 12 MiB that does not compress: more than the stick holds.
    Connection::open(dir.join("a.db"))
        .unwrap()
        .execute_batch(
            "WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < 2999)
             INSERT INTO notes SELECT 'n' || x, randomblob(4096) FROM s",
        )
        .unwrap();
    ok(dir, &["--db", "a.db", "status"]);
    let before = dump(&dir.join("a.db"));
    let r = tide(dir, &["--db", "a.db", "sync", "stick", "--page-size", "2M"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("is full") && r.stderr.contains("free space"),
        "says the stick is full and what to do: {}",
        r.stderr
    );
    assert_eq!(dump(&dir.join("a.db")), before, "a.db changed");
    let tmp: Vec<_> = std::fs::read_dir(dir.join("stick/tide-mailbox/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "a partial file was left: {tmp:?}");
    // Every page that made it is whole: b takes them, and nothing it takes is broken.
    let r = tide(dir, &["--db", "b.db", "sync", "stick", "--receive-only"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("incomplete"), "{}", r.stderr);
    drop(stick);

    // A larger stick: everything goes through.
    std::fs::create_dir_all(dir.join("big")).unwrap();
    ok(dir, &["--db", "a.db", "sync", "big"]);
    ok(dir, &["--db", "b.db", "sync", "big"]);
    let n: i64 = Connection::open(dir.join("b.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3000);
}
