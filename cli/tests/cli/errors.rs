//! The real `tide` binary given wrong arguments: a missing, empty, garbage or folder path
//! for the database and for every file a command reads, unknown names, a database that
//! was never initialised or was left by an earlier tide, cards whose keys are not keys,
//! sizes that are not sizes. Each case must exit with the code the README documents
//! (never 1, which means an internal error) and leave the database byte for byte as it
//! was (or absent, when it was absent).

use std::path::Path;

use crate::common::{Run, Site};

impl Site {
    /// Replica `name` with the `sites` table tracked, its card in `NAME.card`.
    fn replica(&self, name: &str) {
        let schema = "CREATE TABLE sites(id TEXT PRIMARY KEY, status TEXT)";
        self.replica_with(name, schema, &["sites"]);
    }

    /// Replicas a and b trusting each other; b has written a row and exported it for a,
    /// as `b-to-a.tide` and, under the passphrase in `pass.txt`, as `locked.tide`.
    fn pair() -> Site {
        let s = Site::new();
        s.replica("a");
        s.replica("b");
        s.ok(&["--db", "a.db", "peers", "add", "b.card"]);
        s.ok(&["--db", "b.db", "peers", "add", "a.card"]);
        s.sql("b.db", "INSERT INTO sites VALUES ('well-7', 'repaired')");
        s.ok(&[
            "--db",
            "b.db",
            "bundle",
            "export",
            "--peer",
            "a",
            "-o",
            "b-to-a.tide",
        ]);
        std::fs::write(s.path("pass.txt"), "correct horse\n").unwrap();
        s.ok(&[
            "--db",
            "b.db",
            "bundle",
            "export",
            "--all",
            "--passphrase-file",
            "pass.txt",
            "-o",
            "locked.tide",
        ]);
        s
    }

    /// A plain SQLite database with one table, never given to `tide init`.
    fn plain(&self, name: &str) {
        self.sql(name, "CREATE TABLE sites(id TEXT PRIMARY KEY, status TEXT)");
    }
}

/// How a path argument is wrong.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    Missing,
    Empty,
    Garbage,
    Folder,
}

const BAD: [Bad; 4] = [Bad::Missing, Bad::Empty, Bad::Garbage, Bad::Folder];

/// Bytes that are no SQLite file, card, bundle or even UTF-8 text.
const GARBAGE: &[u8] = b"\xff\xfe\x00\x01garbage \x80\x81\xc3\x28 not a tide file\n";

fn make(path: &Path, bad: Bad) {
    match bad {
        Bad::Missing => {}
        Bad::Empty => std::fs::write(path, b"").unwrap(),
        Bad::Garbage => std::fs::write(path, GARBAGE).unwrap(),
        Bad::Folder => std::fs::create_dir(path).unwrap(),
    }
}

/// What a path holds: nothing, a folder (its entries), or a file's bytes.
#[derive(PartialEq)]
enum Held {
    Absent,
    Folder(Vec<String>),
    File(Vec<u8>),
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Absent => f.write_str("absent"),
            Held::Folder(names) => write!(f, "a folder holding {names:?}"),
            Held::File(b) => write!(f, "a file of {} bytes", b.len()),
        }
    }
}

fn held(path: &Path) -> Held {
    if path.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Held::Folder(names)
    } else if path.exists() {
        Held::File(std::fs::read(path).unwrap())
    } else {
        Held::Absent
    }
}

/// Runs `args` and checks the exit code and that `db` (and its journal) is as before.
fn expect(s: &Site, args: &[&str], code: i32, db: &str) -> Run {
    expect_env(s, args, &[], code, db)
}

fn expect_env(s: &Site, args: &[&str], env: &[(&str, &str)], code: i32, db: &str) -> Run {
    let before = held(&s.path(db));
    let r = s.tide_env(args, env);
    assert_eq!(
        r.code, code,
        "tide {args:?} exited {} instead of {code}:\n{}{}",
        r.code, r.stdout, r.stderr
    );
    let after = held(&s.path(db));
    assert!(
        before == after,
        "tide {args:?} (exit {}) changed {db}: it was {before:?}, it is {after:?}\n{}",
        r.code,
        r.stderr
    );
    assert!(
        !s.path(&format!("{db}-journal")).exists(),
        "tide {args:?} left a journal beside {db}"
    );
    r
}

/// Every command that opens the database, with its other arguments valid (as in
/// `Site::pair`).
const DB_COMMANDS: &[&[&str]] = &[
    &["track", "sites"],
    &["untrack", "sites"],
    &["status"],
    &["status", "--check"],
    &["id"],
    &["id", "--card"],
    &["peers", "add", "b.card"],
    &["peers", "list"],
    &["peers", "show", "b"],
    &["peers", "remove", "b"],
    &["bundle", "export", "--peer", "b", "-o", "out.tide"],
    &["bundle", "export", "--all", "-o", "out.tide"],
    &["bundle", "import", "b-to-a.tide"],
    &["bundle", "import", "--dry-run", "b-to-a.tide"],
    &["bundle", "inspect", "b-to-a.tide"],
    &["bundle", "verify", "b-to-a.tide", "--card", "b.card"],
    &["conflicts", "list"],
    &["conflicts", "show", "abcd"],
    &["conflicts", "resolve", "abcd", "--keep", "remote"],
    &["conflicts", "resolve", "--all", "--keep", "winner"],
    &["log"],
    &["log", "--origin", "b"],
    &["watch", "--count", "1", "--interval", "10"],
    &["quarantine", "list"],
    &["quarantine", "retry"],
    &["quarantine", "discard", "1"],
    &["doctor"],
    &["doctor", "--repair"],
];

fn with_db<'a>(db: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--db", db];
    args.extend_from_slice(rest);
    args
}

#[test]
fn every_command_with_a_missing_empty_garbage_or_folder_database_is_a_usage_error() {
    let s = Site::pair();
    for (i, cmd) in DB_COMMANDS.iter().enumerate() {
        for bad in BAD {
            let db = format!("db-{i}-{bad:?}.db");
            make(&s.path(&db), bad);
            let r = expect(&s, &with_db(&db, cmd), 2, &db);
            assert!(
                r.stderr.contains(&db),
                "tide --db {db} {cmd:?} does not name the database:\n{}",
                r.stderr
            );
            assert!(!s.path("out.tide").exists(), "{cmd:?} wrote a bundle");
        }
    }
}

#[test]
fn init_creates_a_missing_or_empty_database_and_refuses_garbage_or_a_folder() {
    let s = Site::new();
    for bad in BAD {
        let db = format!("{bad:?}.db");
        make(&s.path(&db), bad);
        let args = ["--db", &db, "init", "--name", "x"];
        match bad {
            Bad::Missing | Bad::Empty => {
                s.ok(&args);
                assert_eq!(
                    s.count(&db, "SELECT count(*) FROM _tide_meta WHERE k='self'"),
                    1
                );
            }
            Bad::Garbage | Bad::Folder => {
                let r = expect(&s, &args, 2, &db);
                assert!(r.stderr.contains("not a SQLite database"), "{}", r.stderr);
            }
        }
    }
    let r = expect(
        &s,
        &["--db", "no-such-folder/x.db", "init", "--name", "x"],
        2,
        "no-such-folder",
    );
    assert!(r.stderr.contains("no-such-folder"), "{}", r.stderr);
}

#[test]
fn every_command_on_a_plain_sqlite_file_says_run_init_and_leaves_it_byte_identical() {
    let s = Site::pair();
    for (i, cmd) in DB_COMMANDS.iter().enumerate() {
        let db = format!("plain-{i}.db");
        s.plain(&db);
        let r = expect(&s, &with_db(&db, cmd), 2, &db);
        let init = format!("tide --db {db} init --name NAME");
        assert!(
            r.stderr.contains(&init),
            "tide --db {db} {cmd:?} does not say `{init}`:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("peers add"), "{cmd:?}: {}", r.stderr);
    }
}

#[test]
fn status_on_a_plain_sqlite_file_leaves_it_byte_identical() {
    let s = Site::new();
    s.plain("app.db");
    let r = expect(&s, &["--db", "app.db", "status"], 2, "app.db");
    assert!(
        r.stderr.contains("tide --db app.db init --name NAME"),
        "{}",
        r.stderr
    );
    assert_eq!(
        s.count(
            "app.db",
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_tide\\_%' ESCAPE '\\'"
        ),
        0,
        "no tide table was created"
    );
}

#[test]
fn log_on_an_empty_file_fails_and_leaves_it_empty() {
    let s = Site::new();
    std::fs::write(s.path("empty.db"), b"").unwrap();
    let r = expect(&s, &["--db", "empty.db", "log"], 2, "empty.db");
    assert!(
        r.stderr.contains("tide --db empty.db init --name NAME"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::metadata(s.path("empty.db")).unwrap().len(), 0);
}

#[test]
fn importing_into_an_uninitialised_database_says_to_run_init() {
    let s = Site::pair();
    s.plain("new.db");
    let r = expect(
        &s,
        &["--db", "new.db", "bundle", "import", "b-to-a.tide"],
        2,
        "new.db",
    );
    assert!(
        r.stderr.contains("tide --db new.db init --name NAME"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("card"), "{}", r.stderr);
}

/// Turns a current replica's metadata back into layout 5 (before kept values moved into
/// `_tide_rows.vals` and conflict records were keyed by cell, and before schema changes
/// and peers' columns were followed), as an earlier tide left it.
fn make_layout_5(s: &Site, db: &str) {
    s.sql(
        db,
        "ALTER TABLE _tide_tables DROP COLUMN epoch;
         ALTER TABLE _tide_tables DROP COLUMN stopped;
         DROP TABLE _tide_renamed;
         DROP TABLE _tide_dropped;
         DROP TABLE _tide_peer_columns;
         ALTER TABLE _tide_rows DROP COLUMN vals;
         DROP TABLE _tide_conflicts;
         CREATE TABLE _tide_conflicts(id BLOB PRIMARY KEY, tid INTEGER NOT NULL, key BLOB NOT NULL,
            col INTEGER NOT NULL, kind TEXT NOT NULL, epoch INTEGER NOT NULL DEFAULT 0,
            UNIQUE(tid, key, col)) WITHOUT ROWID;
         UPDATE _tide_meta SET v = 5 WHERE k = 'migration';",
    );
}

#[test]
fn every_command_refuses_a_database_of_a_newer_tide_and_leaves_it_byte_identical() {
    let s = Site::pair();
    s.ok(&["--db", "a.db", "bundle", "import", "b-to-a.tide"]);
    // A later build has run migrations this one does not know.
    s.sql("a.db", "UPDATE _tide_meta SET v = 99 WHERE k = 'migration'");
    for cmd in DB_COMMANDS {
        if cmd[0] == "bundle" && matches!(cmd[1], "inspect" | "verify") {
            continue; // they read the bundle; the database is not needed
        }
        let r = expect(&s, &with_db("a.db", cmd), 2, "a.db");
        assert!(
            r.stderr.contains("newer version of tide") && r.stderr.contains("layout 99"),
            "{cmd:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("tide --version"), "{cmd:?}: {}", r.stderr);
    }
}

#[test]
fn read_only_commands_leave_an_earlier_tides_database_as_it_is_and_say_how_to_upgrade() {
    let s = Site::pair();
    s.ok(&["--db", "a.db", "bundle", "import", "b-to-a.tide"]);
    make_layout_5(&s, "a.db");
    let read_only: &[&[&str]] = &[
        &["id"],
        &["id", "--card"],
        &["log"],
        &["peers", "list"],
        &["peers", "show", "b"],
        &["conflicts", "list"],
        &["conflicts", "show", "abcd"],
        &["quarantine", "list"],
        &["doctor"],
        &["bundle", "inspect", "b-to-a.tide"],
        &["bundle", "verify", "b-to-a.tide"],
    ];
    for cmd in read_only {
        let r = expect(&s, &with_db("a.db", cmd), 2, "a.db");
        assert!(
            r.stderr.contains("earlier version of tide"),
            "{cmd:?}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("tide --db a.db status"),
            "{cmd:?} does not say how to upgrade: {}",
            r.stderr
        );
    }
    let r = s.ok(&["--db", "a.db", "status"]);
    assert!(
        r.stderr.contains("Upgraded") && r.stderr.contains("a.db"),
        "a write command says it upgraded the file: {}",
        r.stderr
    );
    // The layout b, made by this build, has.
    assert_eq!(
        s.count("a.db", "SELECT v FROM _tide_meta WHERE k='migration'"),
        s.count("b.db", "SELECT v FROM _tide_meta WHERE k='migration'")
    );
    let log = s.ok(&["--db", "a.db", "log"]);
    assert!(log.stdout.contains("b "), "{}", log.stdout);
}

#[test]
fn every_file_argument_missing_empty_garbage_or_a_folder_gets_its_documented_code() {
    let s = Site::pair();
    // (arguments with ARG where the wrong path goes, exit code for missing, empty,
    // garbage, folder). A garbage passphrase file is a passphrase: the wrong one for
    // locked.tide, and a valid one to export under.
    let cases: &[(&[&str], [i32; 4])] = &[
        (&["--db", "a.db", "peers", "add", "ARG"], [2, 3, 3, 2]),
        (&["--db", "a.db", "bundle", "import", "ARG"], [2, 3, 3, 2]),
        (
            &["--db", "a.db", "bundle", "import", "--dry-run", "ARG"],
            [2, 3, 3, 2],
        ),
        (
            &[
                "--db",
                "a.db",
                "bundle",
                "import",
                "--passphrase-file",
                "ARG",
                "locked.tide",
            ],
            [2, 2, 3, 2],
        ),
        (
            &[
                "--db",
                "a.db",
                "bundle",
                "export",
                "--peer",
                "b",
                "--passphrase-file",
                "ARG",
                "-o",
                "out.tide",
            ],
            [2, 2, 0, 2],
        ),
        (
            &[
                "--db", "a.db", "bundle", "export", "--peer", "b", "-o", "ARG",
            ],
            [0, 0, 0, 2],
        ),
        (&["bundle", "inspect", "ARG"], [2, 3, 3, 2]),
        (&["--db", "a.db", "bundle", "inspect", "ARG"], [2, 3, 3, 2]),
        (
            &["bundle", "verify", "ARG", "--card", "b.card"],
            [2, 3, 3, 2],
        ),
        (&["--db", "a.db", "bundle", "verify", "ARG"], [2, 3, 3, 2]),
        (
            &["bundle", "verify", "b-to-a.tide", "--card", "ARG"],
            [2, 3, 3, 2],
        ),
    ];
    for (n, (template, codes)) in cases.iter().enumerate() {
        for (bad, code) in BAD.iter().zip(codes) {
            let arg = format!("arg-{n}-{bad:?}");
            make(&s.path(&arg), *bad);
            let args: Vec<&str> = template
                .iter()
                .map(|a| if *a == "ARG" { arg.as_str() } else { a })
                .collect();
            let r = expect(&s, &args, *code, "a.db");
            if *code == 2 {
                assert!(
                    r.stderr.contains(&arg),
                    "tide {args:?} does not name {arg}:\n{}",
                    r.stderr
                );
            }
            let _ = std::fs::remove_file(s.path("out.tide"));
        }
    }
}

#[test]
fn unknown_or_empty_names_are_usage_errors_that_change_nothing() {
    let s = Site::pair();
    let cases: &[&[&str]] = &[
        &["track", "no_such_table"],
        &["track", ""],
        &["untrack", "no_such_table"],
        &["peers", "show", "nobody"],
        &["peers", "show", ""],
        &["peers", "remove", "nobody"],
        &["peers", "remove", ""],
        &["peers", "remove", "a"],
        &["conflicts", "show", "ffff"],
        &["conflicts", "resolve", "ffff", "--keep", "remote"],
        &["quarantine", "discard", "99"],
        &["log", "--origin", "nobody"],
        &["log", "--origin", ""],
        &["bundle", "export", "--peer", "nobody", "-o", "out.tide"],
        &["bundle", "export", "--peer", "", "-o", "out.tide"],
    ];
    for cmd in cases {
        expect(&s, &with_db("a.db", cmd), 2, "a.db");
        assert!(!s.path("out.tide").exists());
    }
}

#[test]
fn peers_add_of_a_missing_empty_garbage_or_folder_card_is_not_an_internal_error() {
    let s = Site::pair();
    for (bad, code) in BAD.iter().zip([2, 3, 3, 2]) {
        let card = format!("{bad:?}.card");
        make(&s.path(&card), *bad);
        let r = expect(&s, &["--db", "a.db", "peers", "add", &card], code, "a.db");
        assert!(r.stderr.contains(&card), "{}", r.stderr);
    }
}

#[test]
fn a_missing_passphrase_file_is_a_usage_error() {
    let s = Site::pair();
    for args in [
        &[
            "--db",
            "a.db",
            "bundle",
            "import",
            "--passphrase-file",
            "nope.txt",
            "locked.tide",
        ][..],
        &[
            "--db",
            "b.db",
            "bundle",
            "export",
            "--all",
            "--passphrase-file",
            "nope.txt",
            "-o",
            "out.tide",
        ][..],
    ] {
        let r = expect(&s, args, 2, args[1]);
        assert!(r.stderr.contains("nope.txt"), "{}", r.stderr);
    }
}

#[test]
fn bundle_import_and_inspect_of_a_folder_are_usage_errors() {
    let s = Site::pair();
    std::fs::create_dir(s.path("inbox")).unwrap();
    for args in [
        &["--db", "a.db", "bundle", "import", "inbox"][..],
        &["--db", "a.db", "bundle", "inspect", "inbox"][..],
        &["bundle", "inspect", "inbox"][..],
    ] {
        let r = expect(&s, args, 2, "a.db");
        assert!(r.stderr.contains("inbox"), "{}", r.stderr);
    }
}

#[test]
fn bundle_verify_with_a_garbage_card_is_rejected_not_an_internal_error() {
    let s = Site::pair();
    std::fs::write(s.path("garbage.card"), GARBAGE).unwrap();
    let r = s.tide(&["bundle", "verify", "b-to-a.tide", "--card", "garbage.card"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("garbage.card"), "{}", r.stderr);
}

#[test]
fn export_split_below_the_minimum_is_a_usage_error_with_a_size_hint() {
    let s = Site::pair();
    for size in ["1", "0", "100", "ten", "5X"] {
        let r = expect(
            &s,
            &[
                "--db", "b.db", "bundle", "export", "--all", "--split", size, "-o", "out.tide",
            ],
            2,
            "b.db",
        );
        assert!(
            r.stderr.contains("1K") && r.stderr.contains("M"),
            "--split {size}: the hint names the minimum and the suffixes: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("import"), "{}", r.stderr);
        assert_eq!(held(&s.path("out.tide")), Held::Absent);
        assert_eq!(held(&s.path("out.tide.1-of-1.tidepart")), Held::Absent);
    }
}

#[test]
fn export_for_this_replica_itself_is_refused() {
    let s = Site::pair();
    let id = s.ok(&["--db", "a.db", "id"]).stdout;
    for me in ["a", &id.trim()[..8]] {
        let r = expect(
            &s,
            &[
                "--db", "a.db", "bundle", "export", "--peer", me, "-o", "out.tide",
            ],
            2,
            "a.db",
        );
        assert!(r.stderr.contains("this replica"), "{}", r.stderr);
        assert!(!s.path("out.tide").exists());
    }
}

#[test]
fn peers_add_refuses_a_card_whose_keys_are_not_curve_points() {
    let s = Site::pair();
    let good_box = std::fs::read_to_string(s.path("b.card"))
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .to_string();
    let good_sign = std::fs::read_to_string(s.path("b.card"))
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    let ff = "ff".repeat(32);
    let zero = "00".repeat(32);
    // Encoded as 01 00…00: the Ed25519 identity point (y = 1), and the X25519 point u = 1
    // (of order 4).
    let identity = format!("01{}", "00".repeat(31));
    let cards = [
        ("ff-sign", format!("tide-card-v1 {ff} {good_box} evil")),
        ("zero-sign", format!("tide-card-v1 {zero} {good_box} evil")),
        (
            "identity-sign",
            format!("tide-card-v1 {identity} {good_box} evil"),
        ),
        ("zero-box", format!("tide-card-v1 {good_sign} {zero} evil")),
        (
            "low-order-box",
            format!("tide-card-v1 {good_sign} {identity} evil"),
        ),
    ];
    let db = "c.db";
    s.replica("c");
    for (what, line) in cards {
        let file = format!("{what}.card");
        std::fs::write(s.path(&file), format!("{line}\n")).unwrap();
        let r = expect(&s, &["--db", db, "peers", "add", &file], 3, db);
        assert!(r.stderr.contains("key"), "{what}: {}", r.stderr);
        assert!(!r.stderr.contains("bundle"), "{what}: {}", r.stderr);
    }
    assert_eq!(
        s.ok(&["--db", db, "peers", "list"]).stdout,
        "",
        "no peer was added"
    );
}

#[test]
fn readding_a_known_card_under_a_new_name_says_it_renamed_the_peer() {
    let s = Site::pair();
    let r = s.ok(&["--db", "a.db", "peers", "add", "b.card", "--name", "hq"]);
    assert!(r.stderr.contains("b → hq"), "{}", r.stderr);
    assert!(r.stderr.contains("Renamed"), "{}", r.stderr);
    let again = s.ok(&["--db", "a.db", "peers", "add", "b.card", "--name", "hq"]);
    assert!(
        again.stderr.contains("already") && !again.stderr.contains("Added"),
        "{}",
        again.stderr
    );
    assert!(
        s.ok(&["--db", "a.db", "peers", "list"])
            .stdout
            .contains("hq"),
    );
}
