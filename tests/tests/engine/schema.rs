//! Schema changes the application makes to tracked tables (DESIGN.md §2.12): an added
//! column, a rebuilt table, a renamed column are followed, and no write made around
//! them is lost; a change from a newer schema waits and applies by itself; a change tide
//! cannot follow stops capture of that table without breaking the application.

use tide_core::QuarantineReason;
use tide_tests::{Cluster, query_one};

const T: &str = "CREATE TABLE t(id TEXT PRIMARY KEY, name TEXT, age INTEGER);";

fn table(n: usize) -> Cluster {
    Cluster::new(n, T, &["t"])
}

fn rows(c: &Cluster, i: usize) -> String {
    let conn = c.app(i);
    let mut stmt = conn.prepare("SELECT * FROM t ORDER BY id").unwrap();
    let n = stmt.column_count();
    let mut out = String::new();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        for k in 0..n {
            let v: rusqlite::types::Value = r.get(k).unwrap();
            out.push_str(&format!("{v:?}|"));
        }
        out.push('\n');
    }
    out
}

/// A table rebuilt the way migration tools change a column's type: a new table, the
/// rows copied, the old one dropped, the new one renamed. tide's triggers go with the
/// old table.
fn rebuild(c: &Cluster, i: usize, age_type: &str) {
    c.write(
        i,
        &format!(
            "CREATE TABLE t_new(id TEXT PRIMARY KEY, name TEXT, age {age_type});
             INSERT INTO t_new SELECT * FROM t;
             DROP TABLE t;
             ALTER TABLE t_new RENAME TO t;"
        ),
    );
}

#[test]
fn a_column_added_by_the_app_travels_with_the_values_written_before_tide_noticed() {
    let mut c = table(2);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1), ('b', 'y', 2)");
    c.send(0, 1);
    for i in 0..2 {
        c.write(i, "ALTER TABLE t ADD COLUMN email TEXT");
    }
    // Written after the migration and before any tide call: the triggers still had
    // the old columns.
    c.write(0, "UPDATE t SET email = 'a@x' WHERE id = 'a'");
    c.write(0, "INSERT INTO t VALUES ('c', 'z', 3, 'c@x')");
    c.exchange(0, 1);
    assert_eq!(rows(&c, 0), rows(&c, 1));
    assert_eq!(
        query_one::<String>(&c.path(1), "SELECT email FROM t WHERE id = 'a'"),
        "a@x"
    );
    c.write(1, "UPDATE t SET email = 'b@y' WHERE id = 'b'");
    c.exchange(1, 0);
    assert_eq!(
        query_one::<String>(&c.path(0), "SELECT email FROM t WHERE id = 'b'"),
        "b@y"
    );
    c.assert_converged();
}

#[test]
fn writes_made_while_a_rebuilt_table_had_no_triggers_are_recovered() {
    let mut c = table(2);
    c.write(
        0,
        "INSERT INTO t VALUES ('a', 'x', 1), ('b', 'y', 2), ('c', 'z', 3)",
    );
    c.send(0, 1);
    rebuild(&c, 0, "REAL");
    // Capture is off until tide notices: an update, a delete and an insert.
    c.write(
        0,
        "UPDATE t SET name = 'X' WHERE id = 'a';
         DELETE FROM t WHERE id = 'b';
         INSERT INTO t VALUES ('d', 'w', 4.5);",
    );
    rebuild(&c, 1, "REAL");
    c.exchange(0, 1);
    assert_eq!(rows(&c, 0), rows(&c, 1));
    assert_eq!(
        query_one::<String>(&c.path(1), "SELECT name FROM t WHERE id = 'a'"),
        "X"
    );
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM t WHERE id IN ('b', 'd')"),
        1
    );
    // And capture works again afterwards.
    c.write(0, "UPDATE t SET age = 9 WHERE id = 'c'");
    c.exchange(0, 1);
    assert_eq!(rows(&c, 0), rows(&c, 1));
    c.assert_converged();
    for r in &mut c.replicas {
        assert!(r.doctor(false).unwrap().iter().all(|f| f.ok));
    }
}

#[test]
fn a_renamed_column_keeps_receiving_changes_under_its_former_name() {
    let mut c = table(2);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1)");
    c.send(0, 1);
    c.write(0, "ALTER TABLE t RENAME COLUMN age TO years");
    c.write(0, "UPDATE t SET years = 5 WHERE id = 'a'");
    // Replica 1 has not migrated: it writes the old name.
    c.write(1, "UPDATE t SET name = 'y' WHERE id = 'a'");
    c.send(1, 0);
    assert_eq!(
        query_one::<String>(&c.path(0), "SELECT name FROM t WHERE id = 'a'"),
        "y"
    );
    // Replica 0's change names `years`, which replica 1 does not have yet.
    let report = c.send(0, 1);
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(report.quarantined[0].1, QuarantineReason::NewerSchema);
    c.write(1, "ALTER TABLE t RENAME COLUMN age TO years");
    let followed = c.replicas[1].follow_schema().unwrap();
    assert_eq!(followed.applied, 1, "{followed:?}");
    assert!(c.replicas[1].quarantine().unwrap().is_empty());
    c.exchange(0, 1);
    assert_eq!(rows(&c, 0), rows(&c, 1));
    c.assert_converged();
}

#[test]
fn a_change_from_a_newer_schema_waits_then_applies_after_the_local_migration() {
    let mut c = table(2);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1)");
    c.send(0, 1);
    c.write(0, "ALTER TABLE t ADD COLUMN email TEXT");
    c.write(0, "INSERT INTO t VALUES ('b', 'y', 2, 'b@x')");
    c.write(0, "UPDATE t SET name = 'later' WHERE id = 'a'");
    c.replicas[0].seal().unwrap();
    let report = c.send(0, 1);
    let q = c.replicas[1].quarantine().unwrap();
    assert_eq!(q.len(), 1, "{report:?}");
    assert_eq!(q[0].reason, QuarantineReason::NewerSchema);
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM t"),
        1,
        "nothing of the waiting change is applied"
    );
    c.write(1, "ALTER TABLE t ADD COLUMN email TEXT");
    // The next import (here: of nothing new) applies what waited.
    c.send(0, 1);
    assert!(c.replicas[1].quarantine().unwrap().is_empty());
    assert_eq!(
        query_one::<String>(&c.path(1), "SELECT email FROM t WHERE id = 'b'"),
        "b@x"
    );
    assert_eq!(rows(&c, 0), rows(&c, 1));
    c.assert_converged();
}

#[test]
fn a_dropped_column_stops_capture_and_the_apps_statements_still_work() {
    let mut c = table(1);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1)");
    c.replicas[0].seal().unwrap();
    rebuild_without_age(&c);
    c.replicas[0].seal().unwrap();
    let stopped = c.replicas[0].stopped_tables().unwrap();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert!(stopped[0].1.contains("dropped"), "{stopped:?}");
    // No trigger of tide's names a column that is gone.
    c.write(
        0,
        "UPDATE t SET name = 'y' WHERE id = 'a'; INSERT INTO t VALUES ('b', 'z'); DELETE FROM t WHERE id = 'a';",
    );
    // Tracking it again resumes capture.
    c.replicas[0].untrack("t").unwrap();
    c.replicas[0].track("t").unwrap();
    assert!(c.replicas[0].stopped_tables().unwrap().is_empty());
    assert!(c.replicas[0].seal().unwrap().is_some());
}

fn rebuild_without_age(c: &Cluster) {
    c.write(
        0,
        "CREATE TABLE t_new(id TEXT PRIMARY KEY, name TEXT);
         INSERT INTO t_new SELECT id, name FROM t;
         DROP TABLE t;
         ALTER TABLE t_new RENAME TO t;",
    );
}
