//! Schema evolution: each replica's application migrates its own tracked table with the
//! real `sqlite-utils` command or Python's `sqlite3`, at its own time, and tide follows at
//! its next command. Three replicas (a, b, c) migrate one after the other, exchanging
//! bundles in both directions in between; the applications write before the migration,
//! between it and tide's next command, and after. At the end every replica shows the
//! same table with every write made anywhere, the same conflicts, and a clean doctor.
//!
//! Where a replica's application refuses a peer's row (a new UNIQUE index meeting a
//! duplicate), tide may hold it as a conflict, but never with an internal error, never
//! by making the application's own statements fail, and never by losing a write
//! silently.

use std::cell::{Cell, RefCell};

use crate::common::{Run, Site, require_sqlite_utils};

/// The table every replica starts with: a text key, so rows inserted on different
/// replicas never collide.
const SCHEMA: &str = "CREATE TABLE t(id TEXT PRIMARY KEY, name TEXT, age INTEGER, note TEXT)";

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Three replicas of `t` that trust each other, and every `tide` run's output so far.
struct Fleet {
    site: Site,
    bundles: Cell<u32>,
    said: RefCell<String>,
}

impl Fleet {
    fn new() -> Fleet {
        require_sqlite_utils();
        let site = Site::new();
        for n in NAMES {
            site.replica_with(n, SCHEMA, &["t"]);
        }
        site.trust_each_other(&NAMES);
        Fleet {
            site,
            bundles: Cell::new(0),
            said: RefCell::new(String::new()),
        }
    }

    /// Runs `tide --db NAME.db args`, keeping what it said; never an internal error.
    fn tide(&self, name: &str, args: &[&str]) -> Run {
        let db = format!("{name}.db");
        let mut all = vec!["--db", db.as_str()];
        all.extend(args);
        let r = self.site.tide(&all);
        self.said.borrow_mut().push_str(&format!(
            "$ tide {}\n{}{}",
            all.join(" "),
            r.stdout,
            r.stderr
        ));
        assert!(
            r.code != 1 && r.code != 101,
            "tide {all:?} failed with an internal error (exit {}):\n{}{}",
            r.code,
            r.stdout,
            r.stderr
        );
        r
    }

    /// [`Fleet::tide`], insisting on success.
    fn ok(&self, name: &str, args: &[&str]) -> Run {
        let r = self.tide(name, args);
        assert_eq!(
            r.code, 0,
            "tide --db {name}.db {args:?} failed:\n{}{}",
            r.stdout, r.stderr
        );
        r
    }

    /// Exports from `from` for `to` and imports it there, both succeeding.
    fn carry(&self, from: &str, to: &str) {
        let file = self.next_bundle();
        self.ok(from, &["bundle", "export", "--peer", to, "-o", &file]);
        self.ok(to, &["bundle", "import", &file]);
    }

    /// Exports from `from` for `to` and imports it there; either may refuse, but
    /// neither fails with an internal error.
    fn carry_loose(&self, from: &str, to: &str) {
        let file = self.next_bundle();
        let export = self.tide(from, &["bundle", "export", "--peer", to, "-o", &file]);
        if export.code == 0 {
            self.tide(to, &["bundle", "import", &file]);
        }
    }

    fn next_bundle(&self) -> String {
        let n = self.bundles.get() + 1;
        self.bundles.set(n);
        format!("{n}.tide")
    }

    /// `name` and every other replica exchange both ways.
    fn exchange(&self, name: &str, strict: bool) {
        for other in NAMES.iter().filter(|o| **o != name) {
            if strict {
                self.carry(name, other);
                self.carry(other, name);
            } else {
                self.carry_loose(name, other);
                self.carry_loose(other, name);
            }
        }
    }

    /// Every pair exchanges both ways, twice over.
    fn full_rounds(&self, strict: bool) {
        for _ in 0..2 {
            for from in NAMES {
                for to in NAMES.iter().filter(|t| **t != from) {
                    if strict {
                        self.carry(from, to);
                    } else {
                        self.carry_loose(from, to);
                    }
                }
            }
        }
    }

    /// The application on `name` runs `sqlite-utils args`; `DB` in `args` stands for
    /// its database file.
    fn utils(&self, name: &str, args: &[&str]) {
        self.utils_with(name, args, None);
    }

    fn utils_with(&self, name: &str, args: &[&str], stdin: Option<&str>) {
        let db = format!("{name}.db");
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "DB" { db.as_str() } else { a })
            .collect();
        self.site.sqlite_utils(&args, stdin);
    }

    /// The application on `name` runs `sql` through Python's `sqlite3`.
    fn py(&self, name: &str, sql: &str) {
        self.site.python_sql(&format!("{name}.db"), sql);
    }

    /// The application on `name` inserts `json` (one object or a list) with
    /// `sqlite-utils insert`.
    fn insert_json(&self, name: &str, json: &str) {
        self.utils_with(name, &["insert", "DB", "t", "-", "--pk", "id"], Some(json));
    }

    fn one(&self, name: &str, sql: &str) -> String {
        self.site.one(&format!("{name}.db"), sql)
    }

    fn rows(&self, name: &str) -> String {
        self.site
            .table(&format!("{name}.db"), "SELECT * FROM t ORDER BY id")
    }

    /// Each replica, imported everything it was sent: rows A0, B0, C0 written before any
    /// migration, one by each replica.
    fn with_rows_written_before() -> Fleet {
        let f = Fleet::new();
        f.py("a", "INSERT INTO t VALUES ('a0', 'ann', 30, 'note a0')");
        f.utils_with(
            "b",
            &["insert", "DB", "t", "-", "--pk", "id"],
            Some(r#"{"id": "b0", "name": "bob", "age": 40, "note": "note b0"}"#),
        );
        f.py("c", "INSERT INTO t VALUES ('c0', 'cat', 50, 'note c0')");
        f.full_rounds(true);
        for n in NAMES {
            assert_eq!(
                f.one(n, "SELECT count(*) FROM t"),
                "Integer(3)",
                "{n} before any migration:\n{}",
                f.rows(n)
            );
        }
        f
    }

    /// `sql` shows `expected` on every replica.
    fn expect_everywhere(&self, sql: &str, expected: &str) {
        for n in NAMES {
            assert_eq!(
                self.one(n, sql),
                expected,
                "{n}: {sql}\n{n}'s table:\n{}",
                self.rows(n)
            );
        }
    }

    /// Every replica shows the same table, the same conflicts (none: no scenario here
    /// writes one cell on two replicas concurrently), and a clean doctor. Returns the
    /// table.
    fn assert_converged(&self) -> String {
        let rows = self.rows("a");
        for n in ["b", "c"] {
            assert_eq!(self.rows(n), rows, "{n}'s table differs from a's");
        }
        let conflicts: Vec<serde_json::Value> = NAMES
            .iter()
            .map(|n| {
                serde_json::from_str(&self.ok(n, &["conflicts", "list", "--json"]).stdout).unwrap()
            })
            .collect();
        assert_eq!(
            conflicts[0], conflicts[1],
            "a and b list different conflicts"
        );
        assert_eq!(
            conflicts[0], conflicts[2],
            "a and c list different conflicts"
        );
        assert_eq!(
            conflicts[0],
            serde_json::json!([]),
            "a migration alone made conflicts"
        );
        for n in NAMES {
            self.ok(n, &["doctor"]);
            let quarantine = self.ok(n, &["--json", "quarantine", "list"]).stdout;
            assert_eq!(quarantine.trim(), "[]", "{n} still holds changes aside");
        }
        rows
    }

    /// Whether anything tide said so far tells the person what to do about a schema
    /// change it does not follow.
    fn gave_advice(&self) -> bool {
        let said = self.said.borrow().to_lowercase();
        [
            "untrack",
            "not supported",
            "unsupported",
            "not followed",
            "cannot follow",
            "refuse",
        ]
        .iter()
        .any(|w| said.contains(w))
    }

    /// For a schema change tide may refuse: each row `(id, name)` is on every replica,
    /// or tide said what to do.
    fn each_write_present_or_advice(&self, rows: &[(&str, &str)]) {
        let mut missing = Vec::new();
        for (id, name) in rows {
            for n in NAMES {
                let sql = format!("SELECT count(*) FROM t WHERE id = '{id}' AND name = '{name}'");
                if self.one(n, &sql) != "Integer(1)" {
                    missing.push(format!("{id} on {n}"));
                }
            }
        }
        assert!(
            missing.is_empty() || self.gave_advice(),
            "writes missing without a word on what to do: {missing:?}\ntide said:\n{}",
            self.said.borrow()
        );
    }
}

/// Rows read on every replica: `(sql, expected)`.
type Expect<'a> = &'a [(&'a str, &'a str)];

/// Adds column `score` by `migrate` on a, then b, then c, with writes before, during
/// (between the migration and tide's next command) and after on each; exchanges in
/// between and at the end; checks convergence and `extra` on top of the common rows.
fn add_column_scenario(migrate: &dyn Fn(&Fleet, &str), extra: Expect) {
    let f = Fleet::with_rows_written_before();

    // a migrates first; b and c keep writing the old schema.
    migrate(&f, "a");
    f.utils("a", &["DB", "UPDATE t SET score = 1 WHERE id = 'a0'"]);
    f.py(
        "a",
        "INSERT INTO t(id, name, age, score) VALUES ('a1', 'al', 31, 11);
         UPDATE t SET score = 2 WHERE id = 'b0';",
    );
    f.py("b", "INSERT INTO t VALUES ('b1', 'bea', 41, 'note b1')");
    f.py("c", "UPDATE t SET age = 51 WHERE id = 'c0'");
    f.exchange("a", true);
    f.insert_json(
        "a",
        r#"{"id": "a2", "name": "ava", "age": 32, "score": 12}"#,
    );

    // b migrates next; c is still on the old schema.
    migrate(&f, "b");
    f.py(
        "b",
        "INSERT INTO t(id, name, age, note, score) VALUES ('b2', 'ben', 42, 'note b2', 22);
         UPDATE t SET name = 'catherine' WHERE id = 'c0';",
    );
    f.py("c", "INSERT INTO t VALUES ('c1', 'cy', 51, 'note c1')");
    f.exchange("b", true);
    f.insert_json("b", r#"{"id": "b3", "name": "bo", "age": 43, "score": 23}"#);

    // c migrates last.
    migrate(&f, "c");
    f.utils(
        "c",
        &[
            "DB",
            "INSERT INTO t(id, name, age, score) VALUES ('c2', 'cleo', 52, 32)",
        ],
    );
    f.py("c", "UPDATE t SET age = 44 WHERE id = 'b0'");
    f.exchange("c", true);
    f.insert_json(
        "c",
        r#"{"id": "c3", "name": "col", "age": 53, "score": 33}"#,
    );

    f.full_rounds(true);
    f.assert_converged();
    let common: Expect = &[
        ("SELECT score FROM t WHERE id = 'a0'", "Integer(1)"),
        ("SELECT score FROM t WHERE id = 'a1'", "Integer(11)"),
        ("SELECT name FROM t WHERE id = 'a1'", "Text(\"al\")"),
        ("SELECT score FROM t WHERE id = 'a2'", "Integer(12)"),
        (
            "SELECT score || '/' || age FROM t WHERE id = 'b0'",
            "Text(\"2/44\")",
        ),
        ("SELECT note FROM t WHERE id = 'b1'", "Text(\"note b1\")"),
        ("SELECT score FROM t WHERE id = 'b2'", "Integer(22)"),
        ("SELECT score FROM t WHERE id = 'b3'", "Integer(23)"),
        (
            "SELECT name || '/' || age FROM t WHERE id = 'c0'",
            "Text(\"catherine/51\")",
        ),
        ("SELECT name FROM t WHERE id = 'c1'", "Text(\"cy\")"),
        ("SELECT score FROM t WHERE id = 'c2'", "Integer(32)"),
        ("SELECT score FROM t WHERE id = 'c3'", "Integer(33)"),
    ];
    for (sql, expected) in common.iter().chain(extra) {
        f.expect_everywhere(sql, expected);
    }
}

#[test]
fn add_column_values_written_before_tide_noticed_reach_every_replica() {
    add_column_scenario(
        &|f, n| f.utils(n, &["add-column", "DB", "t", "score", "integer"]),
        &[],
    );
}

#[test]
fn insert_alter_adds_a_column_whose_values_reach_every_replica() {
    add_column_scenario(
        &|f, n| {
            let json = format!(r#"{{"id": "{n}-alter", "name": "new {n}", "score": 100}}"#);
            f.utils_with(
                n,
                &["insert", "DB", "t", "-", "--pk", "id", "--alter"],
                Some(&json),
            );
        },
        &[
            ("SELECT score FROM t WHERE id = 'a-alter'", "Integer(100)"),
            ("SELECT name FROM t WHERE id = 'b-alter'", "Text(\"new b\")"),
            (
                "SELECT count(*) FROM t WHERE id = 'c-alter' AND score = 100",
                "Integer(1)",
            ),
        ],
    );
}

#[test]
fn a_change_from_a_peer_with_a_newer_schema_waits_then_applies_after_the_local_migration() {
    let f = Fleet::with_rows_written_before();
    f.utils("a", &["add-column", "DB", "t", "score", "integer"]);
    f.py(
        "a",
        "INSERT INTO t(id, name, age, score) VALUES ('a-new', 'nia', 33, 7)",
    );
    f.carry("a", "b");
    let held: serde_json::Value =
        serde_json::from_str(&f.ok("b", &["--json", "quarantine", "list"]).stdout).unwrap();
    let reasons: Vec<&str> = held
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"newer_schema"),
        "b's quarantine after a's newer change: {held}"
    );
    assert_eq!(
        f.one("b", "SELECT count(*) FROM t WHERE id = 'a-new'"),
        "Integer(0)",
        "a change held aside was partly applied"
    );

    f.utils("b", &["add-column", "DB", "t", "score", "integer"]);
    f.ok("b", &["status"]);
    assert_eq!(
        f.one("b", "SELECT score FROM t WHERE id = 'a-new'"),
        "Integer(7)",
        "b's table after migrating and `tide status`:\n{}",
        f.rows("b")
    );
    let quarantine = f.ok("b", &["--json", "quarantine", "list"]).stdout;
    assert_eq!(
        quarantine.trim(),
        "[]",
        "still held aside after the migration"
    );
}

#[test]
fn a_rebuilt_table_has_its_triggers_back_and_writes_made_meanwhile_reach_every_replica() {
    let f = Fleet::with_rows_written_before();
    f.py(
        "a",
        "INSERT INTO t VALUES ('a-del', 'gone a', 1, NULL);
         INSERT INTO t VALUES ('b-del', 'gone b', 1, NULL);
         INSERT INTO t VALUES ('c-del', 'gone c', 1, NULL);",
    );
    f.full_rounds(true);

    // a rebuilds the table; its writes until tide's next command are not captured.
    f.utils("a", &["transform", "DB", "t", "--type", "age", "float"]);
    f.py(
        "a",
        "INSERT INTO t VALUES ('a1', 'al', 31.5, NULL);
         UPDATE t SET note = 'seen by a' WHERE id = 'b0';
         DELETE FROM t WHERE id = 'a-del';",
    );
    f.utils("a", &["DB", "UPDATE t SET name = 'anna' WHERE id = 'a0'"]);
    f.py("b", "INSERT INTO t VALUES ('b1', 'bea', 41, 'note b1')");
    f.py("c", "UPDATE t SET name = 'cath' WHERE id = 'c0'");
    f.exchange("a", true);
    f.insert_json("a", r#"{"id": "a2", "name": "ava", "age": 32.5}"#);
    f.py("a", "UPDATE t SET note = 'after a' WHERE id = 'a1'");

    f.utils("b", &["transform", "DB", "t", "--type", "age", "float"]);
    f.py(
        "b",
        "INSERT INTO t VALUES ('b2', 'ben', 42.5, NULL);
         UPDATE t SET note = 'seen by b' WHERE id = 'c0';
         DELETE FROM t WHERE id = 'b-del';",
    );
    f.py("c", "INSERT INTO t VALUES ('c1', 'cy', 51, NULL)");
    f.exchange("b", true);
    f.insert_json("b", r#"{"id": "b3", "name": "bo", "age": 43.25}"#);

    f.utils("c", &["transform", "DB", "t", "--type", "age", "float"]);
    f.py(
        "c",
        "INSERT INTO t VALUES ('c2', 'cleo', 52.5, NULL);
         UPDATE t SET note = 'seen by c' WHERE id = 'a2';
         DELETE FROM t WHERE id = 'c-del';",
    );
    f.exchange("c", true);
    f.py("c", "INSERT INTO t VALUES ('c3', 'col', 53.5, NULL)");

    f.full_rounds(true);
    let rows = f.assert_converged();
    for (sql, expected) in [
        ("SELECT count(*) FROM t WHERE id LIKE '%-del'", "Integer(0)"),
        ("SELECT name FROM t WHERE id = 'a0'", "Text(\"anna\")"),
        ("SELECT age FROM t WHERE id = 'a1'", "Real(31.5)"),
        ("SELECT note FROM t WHERE id = 'a1'", "Text(\"after a\")"),
        ("SELECT note FROM t WHERE id = 'a2'", "Text(\"seen by c\")"),
        ("SELECT note FROM t WHERE id = 'b0'", "Text(\"seen by a\")"),
        ("SELECT age FROM t WHERE id = 'b1'", "Real(41.0)"),
        ("SELECT age FROM t WHERE id = 'b2'", "Real(42.5)"),
        ("SELECT age FROM t WHERE id = 'b3'", "Real(43.25)"),
        (
            "SELECT name || '/' || note FROM t WHERE id = 'c0'",
            "Text(\"cath/seen by b\")",
        ),
        ("SELECT name FROM t WHERE id = 'c1'", "Text(\"cy\")"),
        ("SELECT age FROM t WHERE id = 'c2'", "Real(52.5)"),
        ("SELECT age FROM t WHERE id = 'c3'", "Real(53.5)"),
        ("SELECT count(*) FROM t", "Integer(11)"),
    ] {
        f.expect_everywhere(sql, expected);
    }
    assert!(rows.contains("Real(30.0)"), "a0's age is a float:\n{rows}");
}

#[test]
fn writes_made_while_a_rebuild_left_the_table_uncaptured_are_sent_as_ordinary_changes() {
    let f = Fleet::with_rows_written_before();
    f.utils("a", &["transform", "DB", "t", "--type", "age", "float"]);
    f.py(
        "a",
        "INSERT INTO t VALUES ('a1', 'al', 31.5, NULL);
         UPDATE t SET note = 'seen by a' WHERE id = 'b0';
         DELETE FROM t WHERE id = 'c0';",
    );
    f.carry("a", "b");
    assert_eq!(
        f.one("b", "SELECT count(*) FROM t WHERE id = 'a1'"),
        "Integer(1)",
        "a's insert while uncaptured:\n{}",
        f.rows("b")
    );
    assert_eq!(
        f.one("b", "SELECT note FROM t WHERE id = 'b0'"),
        "Text(\"seen by a\")"
    );
    assert_eq!(
        f.one("b", "SELECT count(*) FROM t WHERE id = 'c0'"),
        "Integer(0)",
        "a's delete while uncaptured"
    );
    // Capture is back: a write after tide's command is sent like any other.
    f.py("a", "UPDATE t SET name = 'alf' WHERE id = 'a1'");
    f.carry("a", "b");
    assert_eq!(
        f.one("b", "SELECT name FROM t WHERE id = 'a1'"),
        "Text(\"alf\")"
    );
    f.ok("a", &["doctor"]);
}

#[test]
fn a_renamed_column_keeps_its_identity_and_changes_under_the_old_name_apply_to_it() {
    let f = Fleet::with_rows_written_before();

    // a renames with a rebuild.
    f.utils("a", &["transform", "DB", "t", "--rename", "age", "years"]);
    f.py(
        "a",
        "INSERT INTO t(id, name, years) VALUES ('a1', 'al', 31);
         UPDATE t SET years = 35 WHERE id = 'c0';",
    );
    f.py("b", "UPDATE t SET age = 44 WHERE id = 'b0'");
    f.py("c", "INSERT INTO t VALUES ('c1', 'cy', 51, NULL)");
    f.exchange("a", true);
    f.insert_json("a", r#"{"id": "a2", "name": "ava", "years": 32}"#);
    assert_eq!(
        f.one("a", "SELECT years FROM t WHERE id = 'b0'"),
        "Integer(44)",
        "b's change to `age` lands in a's `years`"
    );

    // b renames in SQL; SQLite rewrites the triggers in place.
    f.py("b", "ALTER TABLE t RENAME COLUMN age TO years");
    f.py(
        "b",
        "INSERT INTO t(id, name, years) VALUES ('b1', 'bea', 41);
         UPDATE t SET years = 33 WHERE id = 'a0';",
    );
    f.py("c", "UPDATE t SET age = 55 WHERE id = 'c1'");
    f.exchange("b", true);
    f.utils("b", &["DB", "UPDATE t SET years = 42 WHERE id = 'b1'"]);

    // c renames last, with a rebuild.
    f.utils("c", &["transform", "DB", "t", "--rename", "age", "years"]);
    f.py(
        "c",
        "INSERT INTO t(id, name, years) VALUES ('c2', 'cleo', 52)",
    );
    f.exchange("c", true);
    f.insert_json("c", r#"{"id": "c3", "name": "col", "years": 53}"#);

    f.full_rounds(true);
    let rows = f.assert_converged();
    assert!(
        rows.starts_with("id | name | years | note\n"),
        "columns after the rename:\n{rows}"
    );
    for (sql, expected) in [
        ("SELECT years FROM t WHERE id = 'a0'", "Integer(33)"),
        ("SELECT years FROM t WHERE id = 'a1'", "Integer(31)"),
        ("SELECT years FROM t WHERE id = 'a2'", "Integer(32)"),
        ("SELECT years FROM t WHERE id = 'b0'", "Integer(44)"),
        ("SELECT years FROM t WHERE id = 'b1'", "Integer(42)"),
        ("SELECT years FROM t WHERE id = 'c0'", "Integer(35)"),
        ("SELECT years FROM t WHERE id = 'c1'", "Integer(55)"),
        ("SELECT years FROM t WHERE id = 'c2'", "Integer(52)"),
        ("SELECT years FROM t WHERE id = 'c3'", "Integer(53)"),
    ] {
        f.expect_everywhere(sql, expected);
    }
}

/// Every row written, by id and name, in the scenarios that migrate one replica after
/// another (a0…c0 before, the others during and after).
const EVERY_WRITE: &[(&str, &str)] = &[
    ("a0", "ann"),
    ("b0", "bob"),
    ("c0", "cat"),
    ("a1", "al"),
    ("a2", "ava"),
    ("b1", "bea"),
    ("b2", "ben"),
    ("b3", "bo"),
    ("c1", "cy"),
    ("c2", "cleo"),
    ("c3", "col"),
];

/// `sqlite-utils transform --drop` rebuilds the table without the column. Replicas that
/// have not dropped it yet keep writing it; their other columns still arrive on those
/// that have, and `status` says where the schemas differ until all have migrated.
#[test]
fn a_dropped_column_is_followed_and_every_other_write_reaches_every_replica() {
    let f = Fleet::with_rows_written_before();

    f.utils("a", &["transform", "DB", "t", "--drop", "note"]);
    // Between the migration and tide's next command: the rebuilt table has no triggers.
    f.py(
        "a",
        "INSERT INTO t VALUES ('a1', 'al', 31); UPDATE t SET age = 33 WHERE id = 'b0'",
    );
    f.py("b", "INSERT INTO t VALUES ('b1', 'bea', 41, 'note b1')");
    f.py(
        "c",
        "UPDATE t SET note = 'changed', age = 55 WHERE id = 'a0'",
    );
    f.exchange("a", true);
    f.insert_json("a", r#"{"id": "a2", "name": "ava", "age": 32}"#);
    let status = f.ok("a", &["status"]).stdout;
    assert!(
        status.contains("still has note (dropped here)"),
        "a's status names the peers that still write the dropped column:\n{status}"
    );
    let status = f.ok("b", &["status"]).stdout;
    assert!(
        status.contains("lacks note"),
        "b's status names the peer that dropped the column:\n{status}"
    );

    f.utils("b", &["transform", "DB", "t", "--drop", "note"]);
    f.py("b", "INSERT INTO t VALUES ('b2', 'ben', 42)");
    f.py("c", "INSERT INTO t VALUES ('c1', 'cy', 51, 'note c1')");
    f.exchange("b", true);
    f.insert_json("b", r#"{"id": "b3", "name": "bo", "age": 43}"#);

    f.utils("c", &["transform", "DB", "t", "--drop", "note"]);
    f.py("c", "INSERT INTO t VALUES ('c2', 'cleo', 52)");
    f.exchange("c", true);
    f.py("c", "INSERT INTO t VALUES ('c3', 'col', 53)");

    f.full_rounds(true);
    for (id, name) in EVERY_WRITE {
        f.expect_everywhere(
            &format!("SELECT count(*) FROM t WHERE id = '{id}' AND name = '{name}'"),
            "Integer(1)",
        );
    }
    f.expect_everywhere("SELECT age FROM t WHERE id = 'a0'", "Integer(55)");
    f.expect_everywhere("SELECT age FROM t WHERE id = 'b0'", "Integer(33)");
    f.expect_everywhere(
        "SELECT group_concat(name) FROM pragma_table_info('t')",
        "Text(\"id,name,age\")",
    );
    f.assert_converged();
    for n in NAMES {
        let status = f.ok(n, &["status"]).stdout;
        assert!(
            !status.contains("schema    "),
            "{n}: once every replica dropped it, no schema differs:\n{status}"
        );
    }
}

/// SQLite refuses `ALTER TABLE … DROP COLUMN` while a trigger names the column, and
/// tide's capture triggers name every column: the way the README gives is to untrack the
/// table, drop the column, and track it again. Writes on every side still arrive.
#[test]
fn sql_drop_column_of_a_tracked_column_works_once_the_table_is_untracked() {
    let f = Fleet::with_rows_written_before();
    f.ok("a", &["untrack", "t"]);
    f.py("a", "ALTER TABLE t DROP COLUMN age");
    f.ok("a", &["track", "t"]);
    f.py("a", "INSERT INTO t VALUES ('a1', 'al', NULL)");
    f.py("b", "INSERT INTO t VALUES ('b1', 'bea', 41, NULL)");
    f.exchange("a", false);
    f.full_rounds(false);
    f.each_write_present_or_advice(&[("a1", "al"), ("b1", "bea")]);
}

/// `ALTER TABLE … DROP COLUMN` run through `tide migrate`: capture pauses, the
/// statement runs, and tide follows. A migration that fails changes nothing, capture
/// included; one that opens its own transaction is refused with what to do.
#[test]
fn sql_drop_column_runs_through_tide_migrate_and_a_failing_migration_changes_nothing() {
    let f = Fleet::with_rows_written_before();
    let before = f.rows("a");
    for bad in [
        "ALTER TABLE t DROP COLUMN nosuch",
        "BEGIN; ALTER TABLE t DROP COLUMN age; COMMIT;",
    ] {
        let r = f.tide("a", &["migrate", bad]);
        assert_eq!(r.code, 3, "{bad}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("Nothing was changed"), "{}", r.stderr);
        assert!(r.stderr.contains("BEGIN and COMMIT"), "{}", r.stderr);
    }
    assert_eq!(f.rows("a"), before);
    // Capture still works after the failed migrations.
    f.py("a", "UPDATE t SET age = 36 WHERE id = 'a0'");

    // A backfill in the same migration travels as ordinary changes.
    f.ok(
        "a",
        &[
            "migrate",
            "ALTER TABLE t DROP COLUMN note; ALTER TABLE t ADD COLUMN score INTEGER; UPDATE t SET score = age * 2;",
        ],
    );
    f.py("a", "INSERT INTO t VALUES ('a1', 'al', 31, 62)");
    f.py("b", "INSERT INTO t VALUES ('b1', 'bea', 41, 'note b1')");
    f.exchange("a", true);
    // b and c run the schema change alone, one as text and one from a file.
    let sql = "ALTER TABLE t DROP COLUMN note; ALTER TABLE t ADD COLUMN score INTEGER;";
    f.ok("b", &["migrate", sql]);
    std::fs::write(f.site.path("0002.sql"), sql).unwrap();
    f.ok("c", &["migrate", "--file", "0002.sql"]);
    f.full_rounds(true);
    f.expect_everywhere("SELECT age FROM t WHERE id = 'a0'", "Integer(36)");
    f.expect_everywhere(
        "SELECT group_concat(id || ':' || coalesce(score, '-')) FROM (SELECT * FROM t ORDER BY id)",
        "Text(\"a0:72,a1:62,b0:80,b1:-,c0:100\")",
    );
    f.assert_converged();
}

#[test]
fn a_unique_index_is_followed_or_refused_clearly_never_an_internal_error() {
    let f = Fleet::with_rows_written_before();

    f.utils("a", &["create-index", "DB", "t", "name", "--unique"]);
    f.py(
        "a",
        "INSERT INTO t VALUES ('a1', 'al', 31, NULL);
         UPDATE t SET age = 35 WHERE id = 'c0';",
    );
    f.py("b", "INSERT INTO t VALUES ('b1', 'bea', 41, NULL)");
    f.exchange("a", false);
    f.insert_json("a", r#"{"id": "a2", "name": "ava", "age": 32}"#);

    f.utils("b", &["create-index", "DB", "t", "name", "--unique"]);
    f.py(
        "b",
        "INSERT OR REPLACE INTO t VALUES ('b2', 'ben', 42, NULL)",
    );
    f.py("c", "INSERT INTO t VALUES ('c1', 'cy', 51, NULL)");
    f.exchange("b", false);
    f.insert_json("b", r#"{"id": "b3", "name": "bo", "age": 43}"#);

    f.utils("c", &["create-index", "DB", "t", "name", "--unique"]);
    f.py("c", "INSERT INTO t VALUES ('c2', 'cleo', 52, NULL)");
    f.exchange("c", false);
    f.py("c", "INSERT INTO t VALUES ('c3', 'col', 53, NULL)");

    f.full_rounds(false);
    f.each_write_present_or_advice(EVERY_WRITE);
    if !f.gave_advice() {
        f.expect_everywhere("SELECT age FROM t WHERE id = 'c0'", "Integer(35)");
    }
}

#[test]
fn a_unique_index_on_one_replica_meeting_a_duplicate_from_a_peer_is_never_an_internal_error() {
    let f = Fleet::with_rows_written_before();
    f.utils("a", &["create-index", "DB", "t", "name", "--unique"]);
    // b has no such index: a second 'bob' is legal there.
    f.py("b", "INSERT INTO t VALUES ('b1', 'bob', 41, NULL)");
    f.exchange("b", false);
    f.full_rounds(false);
    let said = f.said.borrow().to_lowercase();
    let here = f.one("a", "SELECT count(*) FROM t WHERE id = 'b1'") == "Integer(1)";
    assert!(
        here || said.contains("conflict") || f.gave_advice(),
        "b1 is missing on a without a word on what to do:\n{said}"
    );
}
