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
fn a_dropped_column_is_followed_and_the_other_columns_keep_syncing() {
    let mut c = table(2);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1), ('b', 'y', 2)");
    c.send(0, 1);
    // An open conflict on `age`, the column after the one dropped: its cells move.
    c.diverge(
        "UPDATE t SET age = 10 WHERE id = 'a'",
        "UPDATE t SET age = 20 WHERE id = 'a'",
    );
    let before = c.replicas[0].conflicts().unwrap();
    assert_eq!(before.len(), 1, "{before:?}");
    rebuild_without(&c, 0, "name");
    // Written before any tide call: the rebuilt table has no triggers.
    c.write(
        0,
        "UPDATE t SET age = 3 WHERE id = 'b'; INSERT INTO t VALUES ('c', 4)",
    );
    // Replica 1 has not migrated: it still writes `name`.
    c.write(
        1,
        "UPDATE t SET name = 'z', age = 5 WHERE id = 'a'; INSERT INTO t VALUES ('d', 'w', 6)",
    );
    c.exchange(0, 1);
    for r in &c.replicas {
        assert!(r.quarantine().unwrap().is_empty());
        assert!(r.stopped_tables().unwrap().is_empty());
    }
    assert_eq!(
        query_one::<String>(
            &c.path(1),
            "SELECT group_concat(id || '=' || age, ',') FROM (SELECT * FROM t ORDER BY id)"
        ),
        "a=5,b=3,c=4,d=6"
    );
    assert_eq!(
        query_one::<String>(&c.path(1), "SELECT name FROM t WHERE id = 'a'"),
        "z"
    );
    assert_eq!(
        query_one::<i64>(
            &c.path(0),
            "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'name'"
        ),
        0
    );
    // Once replica 1 migrates too, the two are the same again.
    rebuild_without(&c, 1, "name");
    c.exchange(0, 1);
    assert_eq!(rows(&c, 0), rows(&c, 1));
    c.assert_converged();
    // The conflict on `age` was closed by the later write on replica 1; its record was
    // kept in step across the renumbering.
    let open: Vec<_> = c.replicas[0].conflicts().unwrap();
    assert_eq!(open.len(), c.replicas[1].conflicts().unwrap().len());
}

#[test]
fn an_open_conflict_on_a_column_after_a_dropped_one_stays_resolvable() {
    let mut c = table(2);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1)");
    c.send(0, 1);
    c.diverge(
        "UPDATE t SET age = 10 WHERE id = 'a'",
        "UPDATE t SET age = 20 WHERE id = 'a'",
    );
    let id = c.replicas[0].conflicts().unwrap()[0].id.clone();
    for i in 0..2 {
        rebuild_without(&c, i, "name");
    }
    let after = c.replicas[0].conflicts().unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0].id, id,
        "the conflict keeps its id: it names the column, not its place"
    );
    assert_eq!(after[0].column.as_deref(), Some("age"));
    c.replicas[0]
        .resolve(
            &id,
            tide_core::Resolution::Value(tide_core::Value::Integer(15)),
        )
        .unwrap();
    c.exchange(0, 1);
    assert!(c.replicas[1].conflicts().unwrap().is_empty());
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT age FROM t WHERE id = 'a'"),
        15
    );
    c.assert_converged();
}

/// A table rebuilt without column `gone` (what `sqlite-utils transform --drop` does).
fn rebuild_without(c: &Cluster, i: usize, gone: &str) {
    let kept: Vec<String> = ["id", "name", "age"]
        .iter()
        .filter(|n| **n != gone)
        .map(|n| n.to_string())
        .collect();
    let decl: Vec<String> = kept
        .iter()
        .map(|n| match n.as_str() {
            "id" => "id TEXT PRIMARY KEY".to_string(),
            "name" => "name TEXT".to_string(),
            _ => "age INTEGER".to_string(),
        })
        .collect();
    c.write(
        i,
        &format!(
            "CREATE TABLE t_new({});
             INSERT INTO t_new SELECT {} FROM t;
             DROP TABLE t;
             ALTER TABLE t_new RENAME TO t;",
            decl.join(", "),
            kept.join(", ")
        ),
    );
}

/// Regression: comparing only the first and last shapes takes a column dropped and
/// another added in its place for a rename, and gives the new column the old one's
/// history. Run through `Replica::migrate`, each statement is followed on its own.
#[test]
fn a_column_dropped_and_another_added_in_one_migration_is_not_taken_for_a_rename() {
    let mut c = table(2);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1)");
    c.send(0, 1);
    let sql = "ALTER TABLE t DROP COLUMN age; ALTER TABLE t ADD COLUMN email TEXT;";
    c.replicas[0].migrate(sql).unwrap();
    // Replica 1 has not migrated: it still writes `age`.
    c.write(1, "UPDATE t SET age = 2 WHERE id = 'a'");
    c.exchange(0, 1);
    assert!(c.replicas[0].quarantine().unwrap().is_empty());
    assert_eq!(
        query_one::<Option<String>>(&c.path(0), "SELECT email FROM t WHERE id = 'a'"),
        None,
        "age's value must not land in email"
    );
    c.replicas[1].migrate(sql).unwrap();
    c.write(1, "UPDATE t SET email = 'a@x' WHERE id = 'a'");
    c.exchange(1, 0);
    assert_eq!(rows(&c, 0), rows(&c, 1));
    c.assert_converged();
}

/// A migration that fails is undone whole: capture goes on as before.
#[test]
fn a_failing_migration_changes_nothing_and_capture_goes_on() {
    let mut c = table(2);
    c.write(0, "INSERT INTO t VALUES ('a', 'x', 1)");
    let err = c.replicas[0]
        .migrate("ALTER TABLE t ADD COLUMN email TEXT; ALTER TABLE t DROP COLUMN nosuch;")
        .unwrap_err();
    assert!(matches!(err, tide_core::Error::Migration(_)), "{err:?}");
    assert_eq!(
        query_one::<i64>(
            &c.path(0),
            "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'email'"
        ),
        0
    );
    c.write(0, "UPDATE t SET age = 5 WHERE id = 'a'");
    c.send(0, 1);
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT age FROM t WHERE id = 'a'"),
        5
    );
}
