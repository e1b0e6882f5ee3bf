//! The real `tide` binary on real files in temporary folders: offline exchange end to
//! end, relays, foreign writers, conflicts, encryption, copies, and snapshots of what a
//! person reads.

use std::path::Path;
use std::process::Command;

use crate::common::{Run, Site};

impl Site {
    /// Replicas named `names`, each with the `sites` table, tracking it, trusting each other.
    fn replicas(&self, names: &[&str]) {
        for n in names {
            self.replica_with(
                n,
                "CREATE TABLE sites(id TEXT PRIMARY KEY, status TEXT, visits INTEGER)",
                &["sites"],
            );
        }
        self.trust_each_other(names);
    }

    /// field and hq, each having edited well-7's status offline after one exchange.
    fn conflicted() -> Site {
        let s = Site::new();
        s.replicas(&["field", "hq"]);
        s.sql("hq.db", "INSERT INTO sites VALUES ('well-7', 'planned', 0)");
        s.carry("hq", "field", "1.tide");
        s.sql(
            "field.db",
            "UPDATE sites SET status = 'repaired' WHERE id = 'well-7'",
        );
        s.sql(
            "hq.db",
            "UPDATE sites SET status = 'cancelled' WHERE id = 'well-7'",
        );
        s
    }

    /// Exports from `from` for `to` into a file and imports it there.
    fn carry(&self, from: &str, to: &str, file: &str) -> Run {
        self.ok(&[
            "--db",
            &format!("{from}.db"),
            "bundle",
            "export",
            "--peer",
            to,
            "-o",
            file,
        ]);
        self.ok(&["--db", &format!("{to}.db"), "bundle", "import", file])
    }
}

/// Replaces what differs between runs (ids, times, folders) by placeholders.
fn normalize(s: &str, site: &Site) -> String {
    let s = s.replace(&site.dir.path().display().to_string(), "<DIR>");
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let hexlike = word.len() >= 8
            && word.chars().all(|c| c.is_ascii_hexdigit())
            && word
                .chars()
                .any(|c| c.is_ascii_alphabetic() || c.is_ascii_digit());
        if hexlike && (word.len() == 8 || word.len() == 32) {
            out.push_str(if word.len() == 32 { "<ID>" } else { "<id>" });
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    // Times: 2026-11-22T00:55:26.812Z
    let mut t = String::new();
    let chars: Vec<char> = out.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 24)].iter().collect();
        if rest.len() == 24
            && rest.as_bytes()[4] == b'-'
            && rest.as_bytes()[10] == b'T'
            && rest.ends_with('Z')
        {
            t.push_str("<TIME>");
            i += 24;
        } else {
            t.push(chars[i]);
            i += 1;
        }
    }
    t
}

/// Compares with `tests/snapshots/NAME.txt`; writes it when missing or when
/// UPDATE_SNAPSHOTS=1 (then review the diff before committing).
fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") || !path.exists() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        actual, expected,
        "snapshot {name} differs (UPDATE_SNAPSHOTS=1 rewrites it; review the diff)"
    );
}

#[test]
fn changes_relay_through_a_middle_replica() {
    let s = Site::new();
    s.replicas(&["a", "b", "c"]);
    s.sql("a.db", "INSERT INTO sites VALUES ('from-a', 'planned', 0)");
    s.carry("a", "b", "ab.tide");
    s.carry("b", "c", "bc.tide");
    assert_eq!(
        s.one("c.db", "SELECT status FROM sites WHERE id='from-a'"),
        "Text(\"planned\")"
    );
}

#[test]
fn writes_by_the_sqlite3_shell_are_carried() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    let out = Command::new("sqlite3")
        .arg(s.path("a.db"))
        .arg("INSERT INTO sites VALUES ('shell', 'x', 1); UPDATE sites SET visits = 2;")
        .output()
        .expect("sqlite3 is installed (.ci/run installs it)");
    assert!(out.status.success());
    s.carry("a", "b", "x.tide");
    assert_eq!(
        s.one("b.db", "SELECT visits FROM sites WHERE id='shell'"),
        "Integer(2)"
    );
}

#[test]
fn a_conflict_is_listed_resolved_and_closed_everywhere() {
    let s = Site::conflicted();
    let imported = s.carry("field", "hq", "2.tide");
    assert!(
        imported.stderr.contains("1 new conflict(s)"),
        "{}",
        imported.stderr
    );
    assert!(imported.stderr.contains("tide conflicts list"));
    s.carry("hq", "field", "3.tide");

    let list = s.ok(&["--db", "hq.db", "conflicts", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let c = &v[0];
    for field in ["id", "table", "key", "column", "kind", "candidates"] {
        assert!(
            !c[field].is_null(),
            "conflicts list --json lacks {field}: {c}"
        );
    }
    for field in ["id", "value", "origin", "time"] {
        assert!(
            !c["candidates"][0][field].is_null(),
            "candidate lacks {field}"
        );
    }
    let field_view: serde_json::Value = serde_json::from_str(
        &s.ok(&["--db", "field.db", "conflicts", "list", "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        field_view[0]["id"], c["id"],
        "both replicas name the conflict alike"
    );

    let id = c["id"].as_str().unwrap()[..6].to_string();
    s.ok(&[
        "--db",
        "hq.db",
        "conflicts",
        "resolve",
        &id,
        "--keep",
        "remote",
    ]);
    s.carry("hq", "field", "4.tide");
    for db in ["hq.db", "field.db"] {
        let open = s.ok(&["--db", db, "conflicts", "list", "--json"]).stdout;
        assert_eq!(open.trim(), "[]", "{db} still has conflicts");
        assert_eq!(s.one(db, "SELECT status FROM sites"), "Text(\"repaired\")");
    }
}

#[test]
fn reimporting_a_bundle_changes_nothing_and_a_lost_bundle_is_caught_up() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    s.sql("a.db", "INSERT INTO sites VALUES ('one', 'x', 1)");
    s.ok(&[
        "--db",
        "a.db",
        "bundle",
        "export",
        "--peer",
        "b",
        "-o",
        "first.tide",
    ]);
    // first.tide is lost on the way; the next bundle still carries its changes, because
    // b never acknowledged them.
    s.sql("a.db", "INSERT INTO sites VALUES ('two', 'y', 2)");
    s.carry("a", "b", "second.tide");
    assert_eq!(s.one("b.db", "SELECT count(*) FROM sites"), "Integer(2)");
    let before = std::fs::read(s.path("b.db")).unwrap();
    let again = s.ok(&[
        "--db",
        "b.db",
        "bundle",
        "import",
        "second.tide",
        "first.tide",
    ]);
    assert!(again.stderr.contains("0 new change(s)"), "{}", again.stderr);
    assert_eq!(
        std::fs::read(s.path("b.db")).unwrap(),
        before,
        "re-import changed the file"
    );
}

#[test]
fn encrypted_bundles_open_only_for_their_recipient_or_with_the_passphrase() {
    let s = Site::new();
    s.replicas(&["a", "b", "c"]);
    s.sql("a.db", "INSERT INTO sites VALUES ('secret', 'x', 1)");
    s.ok(&[
        "--db",
        "a.db",
        "bundle",
        "export",
        "--peer",
        "b",
        "--encrypt",
        "-o",
        "for-b.tide",
    ]);
    let bytes = std::fs::read(s.path("for-b.tide")).unwrap();
    assert!(!bytes.windows(6).any(|w| w == b"secret"));
    let wrong = s.tide(&["--db", "c.db", "bundle", "import", "for-b.tide"]);
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    s.ok(&["--db", "b.db", "bundle", "import", "for-b.tide"]);

    std::fs::write(s.path("pass.txt"), "correct horse\n").unwrap();
    s.ok(&[
        "--db",
        "a.db",
        "bundle",
        "export",
        "--all",
        "--passphrase-file",
        "pass.txt",
        "-o",
        "pass.tide",
    ]);
    let none = s.tide(&["--db", "c.db", "bundle", "import", "pass.tide"]);
    assert_eq!(none.code, 3);
    assert!(none.stderr.contains("passphrase"), "{}", none.stderr);
    let bad = s.tide_env(
        &["--db", "c.db", "bundle", "import", "pass.tide"],
        &[("TIDE_PASSPHRASE", "wrong")],
    );
    assert_eq!(bad.code, 3);
    s.ok(&[
        "--db",
        "c.db",
        "bundle",
        "import",
        "--passphrase-file",
        "pass.txt",
        "pass.tide",
    ]);
    assert_eq!(s.one("c.db", "SELECT count(*) FROM sites"), "Integer(1)");
}

#[test]
fn a_copied_database_refuses_to_export() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    std::fs::copy(s.path("a.db"), s.path("copy.db")).unwrap();
    s.sql("copy.db", "INSERT INTO sites VALUES ('x', 'y', 1)");
    let r = s.tide(&[
        "--db", "copy.db", "bundle", "export", "--peer", "b", "-o", "out.tide",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("looks like a copy"), "{}", r.stderr);
    assert!(r.stderr.contains("init --new-identity"));
    assert!(
        !s.path("out.tide").exists(),
        "a failed export leaves no file"
    );
    snapshot("error-copied-database", &normalize(&r.stderr, &s));
}

#[test]
fn split_bundles_import_from_parts_in_any_order() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    for i in 0..300 {
        s.sql(
            "a.db",
            &format!("INSERT INTO sites VALUES ('s{i}', hex(randomblob(100)), {i})"),
        );
    }
    let parts = s
        .ok(&[
            "--db", "a.db", "bundle", "export", "--peer", "b", "--split", "16K", "-o", "big.tide",
        ])
        .stdout;
    let mut files: Vec<&str> = parts.lines().collect();
    assert!(files.len() >= 2, "{parts}");
    files.reverse();
    let missing = s.tide(&[&["--db", "b.db", "bundle", "import"][..], &files[1..]].concat());
    assert_eq!(missing.code, 3);
    assert!(
        missing.stderr.contains("missing part numbers"),
        "{}",
        missing.stderr
    );
    s.ok(&[&["--db", "b.db", "bundle", "import"][..], &files[..]].concat());
    assert_eq!(s.one("b.db", "SELECT count(*) FROM sites"), "Integer(300)");
}

#[test]
fn verify_checks_signatures_and_prerequisites() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    s.sql("a.db", "INSERT INTO sites VALUES ('x', 'y', 1)");
    s.ok(&[
        "--db", "a.db", "bundle", "export", "--peer", "b", "-o", "1.tide",
    ]);
    s.sql("a.db", "UPDATE sites SET visits = 2");
    s.carry("a", "b", "all.tide");
    // b's next bundle tells a what b holds, so a's next export carries only what is new.
    s.carry("b", "a", "ack.tide");
    s.sql("a.db", "UPDATE sites SET visits = 3");
    s.ok(&[
        "--db", "a.db", "bundle", "export", "--peer", "b", "-o", "3.tide",
    ]);
    s.ok(&["--db", "b.db", "bundle", "verify", "3.tide"]);
    let fresh = Site::new();
    std::fs::copy(s.path("3.tide"), fresh.path("3.tide")).unwrap();
    std::fs::copy(s.path("a.card"), fresh.path("a.card")).unwrap();
    fresh.ok(&["bundle", "verify", "3.tide", "--card", "a.card"]);
    fresh.replicas(&["z"]);
    fresh.ok(&["--db", "z.db", "peers", "add", "a.card"]);
    let r = fresh.tide(&["--db", "z.db", "bundle", "verify", "3.tide"]);
    assert_eq!(r.code, 4, "prerequisites missing: {}", r.stderr);
    let mut tampered = std::fs::read(s.path("3.tide")).unwrap();
    let n = tampered.len();
    tampered[n - 80] ^= 1;
    std::fs::write(s.path("bad.tide"), tampered).unwrap();
    let r = s.tide(&["--db", "b.db", "bundle", "verify", "bad.tide"]);
    assert_eq!(r.code, 3);
    snapshot("error-tampered-bundle", &normalize(&r.stderr, &s));
}

#[test]
fn what_people_read() {
    let s = Site::conflicted();
    s.carry("field", "hq", "2.tide");
    snapshot(
        "status",
        &normalize(&s.ok(&["--db", "hq.db", "status"]).stdout, &s),
    );
    let list = s.ok(&["--db", "hq.db", "conflicts", "list"]);
    snapshot(
        "conflicts-list",
        &normalize(&format!("{}{}", list.stdout, list.stderr), &s),
    );
    let errors = [
        s.tide(&["status"]),
        s.tide(&["--db", "nowhere.db", "status"]),
        s.tide(&[
            "--db", "hq.db", "bundle", "export", "--peer", "nobody", "-o", "x.tide",
        ]),
        s.tide(&["--db", "hq.db", "track", "missing_table"]),
        s.tide(&[
            "--db",
            "hq.db",
            "conflicts",
            "resolve",
            "ffff",
            "--keep",
            "remote",
        ]),
    ];
    let mut text = String::new();
    for e in &errors {
        assert_eq!(e.code, 2, "{}", e.stderr);
        text.push_str(&e.stderr);
    }
    snapshot("errors-usage", &normalize(&text, &s));
    let status = s.tide(&["--db", "hq.db", "status", "--check"]);
    assert_eq!(status.code, 5, "conflicts open");
}

#[test]
fn every_help_explains_itself_with_an_example() {
    let s = Site::new();
    let top = s.ok(&["--help"]).stdout;
    assert!(
        top.contains("Example") && top.contains("Exit codes"),
        "{top}"
    );
    let groups: &[&[&str]] = &[
        &["init"],
        &["track"],
        &["untrack"],
        &["migrate"],
        &["sync"],
        &["serve"],
        &["status"],
        &["id"],
        &["log"],
        &["watch"],
        &["doctor"],
        &["demo"],
        &["peers"],
        &["bundle"],
        &["conflicts"],
        &["quarantine"],
        &["peers", "add"],
        &["peers", "list"],
        &["peers", "show"],
        &["peers", "remove"],
        &["peers", "pending"],
        &["peers", "accept"],
        &["bundle", "export"],
        &["bundle", "import"],
        &["bundle", "inspect"],
        &["bundle", "verify"],
        &["conflicts", "list"],
        &["conflicts", "show"],
        &["conflicts", "resolve"],
        &["quarantine", "list"],
        &["quarantine", "retry"],
        &["quarantine", "discard"],
    ];
    for args in groups {
        let help = s.ok(&[&args[..], &["--help"]].concat()).stdout;
        assert!(
            help.contains("Example"),
            "tide {args:?} --help has no example:\n{help}"
        );
    }
}

#[test]
fn the_demo_runs() {
    let s = Site::new();
    let r = s.ok(&["demo"]);
    assert!(
        r.stdout.contains("Identical tables and conflict sets: yes"),
        "{}",
        r.stdout
    );
}

#[test]
fn watch_streams_changes_as_json_lines() {
    let s = Site::new();
    s.replicas(&["a"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tide"))
        .args(["--db", "a.db", "watch", "--interval", "50", "--count", "1"])
        .current_dir(s.dir.path())
        .env("TIDE_HOME", s.path("keys"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.sql("a.db", "INSERT INTO sites VALUES ('new', 'x', 1)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "watch printed nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut line = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["tables"][0], "sites");
    assert_eq!(v["ops"], 1);
    assert_eq!(v["origin_name"], "a");
}

#[test]
fn sync_watch_carries_new_writes_onto_the_stick_until_stopped() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    std::fs::create_dir(s.path("stick")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tide"))
        .args([
            "--db",
            "a.db",
            "sync",
            "stick",
            "--watch",
            "--interval",
            "50",
        ])
        .current_dir(s.dir.path())
        .env("TIDE_HOME", s.path("keys"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    s.sql("a.db", "INSERT INTO sites VALUES ('watched', 'x', 1)");
    let seg = s.path("stick/tide-mailbox/seg");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(&seg).map_or(0, |d| d.count()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "--watch wrote no page for the new row"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "--watch keeps running");
    child.kill().unwrap();
    child.wait().unwrap();
    s.ok(&["--db", "b.db", "sync", "stick"]);
    assert_eq!(
        s.one("b.db", "SELECT status FROM sites WHERE id = 'watched'"),
        "Text(\"x\")"
    );
}

#[test]
fn bundles_flow_through_stdout_and_stdin() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    s.sql("a.db", "INSERT INTO sites VALUES ('piped', 'x', 1)");
    let export = Command::new(env!("CARGO_BIN_EXE_tide"))
        .args(["--db", "a.db", "bundle", "export", "--peer", "b"])
        .current_dir(s.dir.path())
        .env("TIDE_HOME", s.path("keys"))
        .output()
        .unwrap();
    assert!(export.status.success());
    assert!(
        export.stdout.starts_with(&[0x89, b'T', b'I', b'D', b'E']),
        "the bundle is on stdout"
    );
    let mut import = Command::new(env!("CARGO_BIN_EXE_tide"))
        .args(["--db", "b.db", "--json", "bundle", "import", "-"])
        .current_dir(s.dir.path())
        .env("TIDE_HOME", s.path("keys"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &export.stdout).unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["applied"], 1);
    assert_eq!(s.one("b.db", "SELECT id FROM sites"), "Text(\"piped\")");
}

#[test]
fn an_import_killed_at_any_moment_leaves_the_database_before_or_after() {
    let s = Site::new();
    s.replicas(&["a", "b"]);
    s.sql(
        "a.db",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000)
         INSERT INTO sites SELECT 'site-' || x, hex(randomblob(40)), x FROM c",
    );
    s.ok(&[
        "--db", "a.db", "bundle", "export", "--peer", "b", "-o", "big.tide",
    ]);
    let pristine = std::fs::read(s.path("b.db")).unwrap();
    let mut outcomes = std::collections::BTreeSet::new();
    for delay_ms in [5u64, 20, 40, 80, 120, 160, 220, 300] {
        std::fs::write(s.path("b.db"), &pristine).unwrap();
        let _ = std::fs::remove_file(s.path("b.db-journal"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tide"))
            .args(["--db", "b.db", "bundle", "import", "big.tide"])
            .current_dir(s.dir.path())
            .env("TIDE_HOME", s.path("keys"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL: no destructor, no rollback code runs
        let _ = child.wait();
        // Opening the file rolls back a hot journal, as any SQLite reader would.
        let rows = s.one("b.db", "SELECT count(*) FROM sites");
        assert!(
            rows == "Integer(0)" || rows == "Integer(30000)",
            "after a kill at {delay_ms} ms: {rows} rows"
        );
        outcomes.insert(rows);
        let doctor = s.tide(&["--db", "b.db", "doctor"]);
        assert_eq!(
            doctor.code, 0,
            "doctor after a kill at {delay_ms} ms:\n{}",
            doctor.stdout
        );
        // And the import then completes.
        s.ok(&["--db", "b.db", "bundle", "import", "big.tide"]);
        assert_eq!(
            s.one("b.db", "SELECT count(*) FROM sites"),
            "Integer(30000)"
        );
    }
    assert!(!outcomes.is_empty());
}

/// The field report: two replicas move two rows onto one UNIQUE value at once. The
/// replica that receives the winning update (it carries only `x`) kept `name` NULL for
/// good, and `doctor` passed.
#[test]
fn unique_collision_of_partial_updates_keeps_the_winners_other_columns() {
    let s = Site::new();
    for n in ["a", "b"] {
        let schema = "CREATE TABLE t(id TEXT PRIMARY KEY, name TEXT, x INTEGER UNIQUE)";
        s.replica_with(n, schema, &["t"]);
    }
    s.trust_each_other(&["a", "b"]);
    s.sql(
        "a.db",
        "INSERT INTO t VALUES ('r1', 'Alpha', 1), ('r2', 'Beta', 2)",
    );
    s.carry("a", "b", "1.tide");
    s.sql("a.db", "UPDATE t SET x = 5 WHERE id = 'r1'");
    s.sql("b.db", "UPDATE t SET x = 5 WHERE id = 'r2'");
    s.carry("a", "b", "2.tide");
    s.carry("b", "a", "3.tide");
    let rows = |db: &str| {
        let c = rusqlite::Connection::open(s.path(db)).unwrap();
        let mut stmt = c.prepare("SELECT id, name, x FROM t ORDER BY id").unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap()
    };
    let want = vec![("r1".to_string(), Some("Alpha".to_string()), 5)];
    for db in ["a.db", "b.db"] {
        assert_eq!(rows(db), want, "{db}");
        let listed = s.ok(&["--db", db, "conflicts", "list"]).stdout;
        assert!(
            listed.contains("Alpha") && listed.contains("Beta"),
            "{db} lists:\n{listed}"
        );
        s.ok(&["--db", db, "doctor"]);
    }
    s.ok(&[
        "--db",
        "b.db",
        "conflicts",
        "resolve",
        "--all",
        "--keep",
        "winner",
    ]);
    s.carry("b", "a", "4.tide");
    s.carry("a", "b", "5.tide");
    for db in ["a.db", "b.db"] {
        assert_eq!(rows(db), want, "{db} after resolving");
        s.ok(&["--db", db, "doctor"]);
    }
}

/// A value changed behind tide's back (by a connection that turned triggers off, so no
/// capture saw it) is a table that no longer shows what the merge decided: the doctor
/// says so, and its repair does not hide it.
#[test]
fn the_doctor_finds_shown_values_that_are_not_the_winners() {
    let s = Site::new();
    s.replicas(&["field"]);
    s.sql(
        "field.db",
        "INSERT INTO sites VALUES ('well-7', 'planned', 3)",
    );
    s.ok(&["--db", "field.db", "status"]);
    s.ok(&["--db", "field.db", "doctor"]);
    {
        let c = rusqlite::Connection::open(s.path("field.db")).unwrap();
        c.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
            false,
        )
        .unwrap();
        c.execute("UPDATE sites SET visits = 4 WHERE id = 'well-7'", [])
            .unwrap();
    }
    for repair in [false, true] {
        let args: &[&str] = if repair {
            &["--db", "field.db", "doctor", "--repair"]
        } else {
            &["--db", "field.db", "doctor"]
        };
        let r = s.tide(args);
        assert_ne!(r.code, 0, "doctor passed:\n{}{}", r.stdout, r.stderr);
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(
            said.contains("visits: shows 4, its winning value is 3"),
            "doctor said:\n{said}"
        );
    }
}

/// field updates a site while hq deletes it later; the delete wins. field writes the
/// site again: that write supersedes field's own update, so `conflicts list` never
/// shows field's two writes against each other, and nothing is left to resolve.
#[test]
fn a_reinsert_after_a_remote_delete_won_is_not_a_conflict_with_ones_own_update() {
    let s = Site::new();
    s.replicas(&["field", "hq"]);
    s.sql(
        "field.db",
        "INSERT INTO sites VALUES ('well-7', 'planned', 0)",
    );
    s.carry("field", "hq", "1.tide");
    s.sql(
        "field.db",
        "UPDATE sites SET status = 'visited' WHERE id = 'well-7'",
    );
    s.ok(&["--db", "field.db", "status"]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    s.sql("hq.db", "DELETE FROM sites WHERE id = 'well-7'");
    s.carry("hq", "field", "2.tide");
    s.carry("field", "hq", "3.tide");
    let listed = s.ok(&["--db", "field.db", "conflicts", "list"]).stdout;
    assert!(listed.contains("delete"), "field lists:\n{listed}");
    s.sql(
        "field.db",
        "INSERT INTO sites VALUES ('well-7', 'rebuilt', 1)",
    );
    s.carry("field", "hq", "4.tide");
    for db in ["field.db", "hq.db"] {
        let r = s.tide(&["--db", db, "status", "--check"]);
        assert_eq!(r.code, 0, "{db}: {}{}", r.stdout, r.stderr);
        assert_eq!(s.one(db, "SELECT status FROM sites"), "Text(\"rebuilt\")");
    }
}

/// Overwrites the first bytes after the header of the page that holds `table`'s root.
fn damage_page_of(s: &Site, db: &str, table: &str) {
    let (root, page_size): (i64, i64) = {
        let c = rusqlite::Connection::open(s.path(db)).unwrap();
        let root = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        (
            root,
            c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
        )
    };
    let mut bytes = std::fs::read(s.path(db)).unwrap();
    let at = ((root - 1) * page_size + 8) as usize;
    bytes[at..at + 200].fill(7);
    std::fs::write(s.path(db), bytes).unwrap();
}

/// A damaged page is one clear finding with what to do next, not a raw SQLite error
/// repeated by every check; a damage that hides the identity is named as damage, not
/// as a database that was never initialised.
#[test]
fn a_damaged_database_gets_one_clear_finding_with_the_next_step() {
    let s = Site::new();
    s.replicas(&["field"]);
    s.sql(
        "field.db",
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000)
         INSERT INTO sites SELECT 'site-' || x, printf('%080d', x), x FROM n",
    );
    s.ok(&["--db", "field.db", "status"]);
    let whole = std::fs::read(s.path("field.db")).unwrap();
    for table in ["sites", "_tide_rows", "_tide_meta"] {
        std::fs::write(s.path("field.db"), &whole).unwrap();
        damage_page_of(&s, "field.db", table);
        let damaged = std::fs::read(s.path("field.db")).unwrap();
        let r = s.tide(&["--db", "field.db", "doctor"]);
        let said = format!("{}{}", r.stdout, r.stderr);
        assert_eq!(r.code, 1, "{table}: {said}");
        assert_eq!(
            said.matches("damaged").count(),
            1,
            "{table}: one finding about the damage:\n{said}"
        );
        assert!(
            said.matches("malformed").count() <= 1,
            "{table}: a raw error repeated:\n{said}"
        );
        assert!(
            said.contains("from a backup") && !said.contains("init --name"),
            "{table}: no next step, or the wrong one:\n{said}"
        );
        assert_eq!(
            std::fs::read(s.path("field.db")).unwrap(),
            damaged,
            "{table}"
        );
    }
}

/// hq deletes a region while field adds a site under it: the site is held on both. The
/// listing says it is held (not "kept") and what each choice does; `--keep held` brings
/// the region back and the site returns everywhere.
#[test]
fn a_foreign_key_conflict_offers_to_restore_the_parent_or_drop_the_held_row() {
    let s = Site::new();
    for n in ["field", "hq"] {
        let schema = "CREATE TABLE regions(id TEXT PRIMARY KEY, name TEXT);
             CREATE TABLE wells(id TEXT PRIMARY KEY, region TEXT REFERENCES regions(id), depth INTEGER);";
        s.replica_with(n, schema, &["regions", "wells"]);
    }
    s.trust_each_other(&["field", "hq"]);
    s.sql(
        "hq.db",
        "INSERT INTO regions VALUES ('north', 'Northern hills')",
    );
    s.carry("hq", "field", "1.tide");
    s.sql("hq.db", "DELETE FROM regions WHERE id = 'north'");
    s.sql(
        "field.db",
        "PRAGMA foreign_keys = ON; INSERT INTO wells VALUES ('w1', 'north', 40)",
    );
    s.carry("hq", "field", "2.tide");
    s.carry("field", "hq", "3.tide");
    let listed = s.ok(&["--db", "hq.db", "conflicts", "list"]).stdout;
    assert!(
        listed.contains("foreign_key") && listed.contains("held ") && !listed.contains("kept "),
        "hq lists:\n{listed}"
    );
    assert!(
        listed.contains("--keep held brings back"),
        "hq lists:\n{listed}"
    );
    let id = listed.split_whitespace().next().unwrap().to_string();
    s.ok(&[
        "--db",
        "hq.db",
        "conflicts",
        "resolve",
        &id,
        "--keep",
        "held",
    ]);
    s.carry("hq", "field", "4.tide");
    for db in ["field.db", "hq.db"] {
        assert_eq!(
            s.one(db, "SELECT name FROM regions"),
            "Text(\"Northern hills\")"
        );
        assert_eq!(s.one(db, "SELECT depth FROM wells"), "Integer(40)");
        let r = s.tide(&["--db", db, "status", "--check"]);
        assert_eq!(r.code, 0, "{db}: {}{}", r.stdout, r.stderr);
    }
}

/// Commit frames in a WAL file's current generation (frames whose salt is the header's
/// and whose "database size after commit" field is set), and that generation's salt.
fn wal_commits(wal: &Path) -> (u64, [u8; 8]) {
    let bytes = std::fs::read(wal).unwrap_or_default();
    if bytes.len() < 32 {
        return (0, [0; 8]);
    }
    let page_size = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let salt: [u8; 8] = bytes[16..24].try_into().unwrap();
    let mut commits = 0;
    let mut at = 32;
    while at + 24 + page_size <= bytes.len() {
        let frame = &bytes[at..at + 24];
        if frame[8..16] != salt {
            break;
        }
        if frame[4..8] != [0, 0, 0, 0] {
            commits += 1;
        }
        at += 24 + page_size;
    }
    (commits, salt)
}

/// An app in WAL mode whose deferred transaction reads, then writes, fails if anyone
/// committed in between: every commit tide makes is one more chance of that. An import
/// (changes, their apply and the sender's acknowledgement) is one commit.
#[test]
fn an_import_is_one_commit() {
    let s = Site::new();
    s.replicas(&["field", "hq"]);
    s.sql("hq.db", "PRAGMA journal_mode = WAL");
    // Held open so the WAL outlives each tide process.
    let app = rusqlite::Connection::open(s.path("hq.db")).unwrap();
    app.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
        .unwrap();
    s.sql(
        "field.db",
        "INSERT INTO sites VALUES ('well-7', 'planned', 0)",
    );
    s.ok(&[
        "--db", "field.db", "bundle", "export", "--peer", "hq", "-o", "1.tide",
    ]);
    let wal = s.path("hq.db-wal");
    let (before, salt) = wal_commits(&wal);
    s.ok(&["--db", "hq.db", "bundle", "import", "1.tide"]);
    let (after, salt_after) = wal_commits(&wal);
    let made = if salt_after == salt {
        after - before
    } else {
        after
    };
    assert_eq!(made, 1, "commits made by one import");
    assert_eq!(
        s.one("hq.db", "SELECT status FROM sites"),
        "Text(\"planned\")"
    );
    drop(app);
}

/// A reading of -0.0 sits in an untyped column. field later edits another column while
/// hq sets the reading: field's edit must not carry the reading again, or the two
/// would conflict over a value field never touched.
#[test]
fn negative_zero_in_an_untyped_column_does_not_conflict_with_a_later_edit_elsewhere() {
    let s = Site::new();
    for n in ["field", "hq"] {
        let schema = "CREATE TABLE readings(id TEXT PRIMARY KEY, value, note TEXT)";
        s.replica_with(n, schema, &["readings"]);
    }
    s.trust_each_other(&["field", "hq"]);
    rusqlite::Connection::open(s.path("field.db"))
        .unwrap()
        .execute(
            "INSERT INTO readings VALUES ('r1', ?1, 'calibrated')",
            [-0.0f64],
        )
        .unwrap();
    s.carry("field", "hq", "1.tide");
    s.sql(
        "field.db",
        "UPDATE readings SET note = 'checked' WHERE id = 'r1'",
    );
    s.sql("hq.db", "UPDATE readings SET value = 4.5 WHERE id = 'r1'");
    s.carry("field", "hq", "2.tide");
    s.carry("hq", "field", "3.tide");
    for db in ["field.db", "hq.db"] {
        let r = s.tide(&["--db", db, "status", "--check"]);
        assert_eq!(r.code, 0, "{db}: {}{}", r.stdout, r.stderr);
        assert_eq!(s.one(db, "SELECT value FROM readings"), "Real(4.5)");
        assert_eq!(s.one(db, "SELECT note FROM readings"), "Text(\"checked\")");
    }
}
