//! Tracking tables and capturing what apps write to them: tables and keys tide cannot
//! sync are refused with reasons, untracking and tracking again keeps replicas alike,
//! every kind of app write (key changes, REPLACE, deletes through a unique index) is
//! captured exactly once, tide's own applies and app triggers are not captured again,
//! and keys or values SQLite calls equal but tide tells apart (0.0 and -0.0) seal valid
//! changes.

use tide_core::{Error, KeyStore, Replica};
use tide_tests::{Cluster, notes, query_one};

#[test]
fn tables_tide_cannot_sync_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(dir.path().join("a.db"), KeyStore::at(dir.path().join("k"))).unwrap();
    r.init("a").unwrap();
    r.connection()
        .execute_batch(
            "CREATE TABLE nokey(a, b);
             CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, x);
             CREATE TABLE alias(id INTEGER PRIMARY KEY, x);
             CREATE TABLE good(id BLOB PRIMARY KEY, x) WITHOUT ROWID;",
        )
        .unwrap();
    assert!(matches!(
        r.track("nokey"),
        Err(Error::Track(tide_core::TrackError::NoPrimaryKey(_)))
    ));
    assert!(matches!(
        r.track("auto"),
        Err(Error::Track(tide_core::TrackError::Autoincrement(_)))
    ));
    assert!(matches!(
        r.track("missing"),
        Err(Error::Track(tide_core::TrackError::NoSuchTable(_)))
    ));
    let report = r.track("alias").unwrap();
    assert!(report.warnings[0].contains("rowid alias"));
    assert!(r.track("good").unwrap().warnings.is_empty());
    assert!(!r.track("good").unwrap().newly_tracked);
}

#[test]
fn unsupported_keys_and_indexes_are_refused_at_track_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::open(dir.path().join("a.db"), KeyStore::at(dir.path().join("k"))).unwrap();
    r.init("a").unwrap();
    r.connection()
        .execute_batch(
            "CREATE TABLE nocase(id TEXT PRIMARY KEY COLLATE NOCASE, x);
             CREATE TABLE partial(id TEXT PRIMARY KEY, e TEXT, active INT);
             CREATE UNIQUE INDEX p_e ON partial(e) WHERE active = 1;
             CREATE TABLE expr(id TEXT PRIMARY KEY, e TEXT);
             CREATE UNIQUE INDEX x_e ON expr(lower(e));
             CREATE TABLE nullkey(id TEXT PRIMARY KEY, x);
             INSERT INTO nullkey VALUES (NULL, 1);
             CREATE TABLE later(id TEXT PRIMARY KEY, x);",
        )
        .unwrap();
    for t in ["nocase", "partial", "expr", "nullkey"] {
        let err = r.track(t).unwrap_err();
        assert!(
            matches!(err, Error::Track(tide_core::TrackError::Untrackable { .. })),
            "{t}: {err}"
        );
    }
    r.track("later").unwrap();
    let err = r
        .connection()
        .execute("INSERT INTO later VALUES (NULL, 1)", [])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("primary key column of later is NULL"),
        "{err}"
    );
}

#[test]
fn rows_deleted_while_untracked_are_deleted_everywhere_after_tracking_again() {
    let mut c = notes(2);
    c.write(
        0,
        "INSERT INTO notes VALUES ('a', 't', 'b', 0); INSERT INTO notes VALUES ('b', 't', 'b', 0);",
    );
    c.send(0, 1);
    c.replicas[0].untrack("notes").unwrap();
    c.write(
        0,
        "DELETE FROM notes WHERE id = 'a'; UPDATE notes SET n = 7 WHERE id = 'b';",
    );
    c.replicas[0].track("notes").unwrap();
    c.send(0, 1);
    c.assert_converged();
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
        1
    );
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT n FROM notes WHERE id = 'b'"),
        7
    );
}

#[test]
fn untracking_a_table_with_a_unique_index_leaves_app_writes_working() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE);";
    let mut c = Cluster::new(1, schema, &["users"]);
    c.replicas[0].untrack("users").unwrap();
    c.write(
        0,
        "INSERT INTO users VALUES ('u', 'e'); INSERT OR REPLACE INTO users VALUES ('v', 'e');",
    );
    let left: i64 = query_one(
        &c.path(0),
        "SELECT count(*) FROM sqlite_master WHERE type='trigger'",
    );
    assert_eq!(left, 0, "no capture trigger survives untrack");
    c.replicas[0].track("users").unwrap();
    let report = c.replicas[0].doctor(true).unwrap();
    assert!(report.iter().all(|f| f.ok), "{report:?}");
}

#[test]
fn every_write_kind_is_captured_exactly_once() {
    let mut c = notes(2);
    c.write(
        0,
        "INSERT INTO notes VALUES ('a', 't', 'b', 0); INSERT INTO notes VALUES ('b', 't', 'b', 0);",
    );
    c.write(0, "UPDATE notes SET id = 'c' WHERE id = 'b'"); // a key change: delete + insert
    c.write(
        0,
        "INSERT OR REPLACE INTO notes VALUES ('a', 'replaced', NULL, 9)",
    );
    c.write(
        0,
        "INSERT INTO notes VALUES ('tmp', 't', 'b', 0); DELETE FROM notes WHERE id='tmp';",
    );
    c.write(0, "UPDATE notes SET n = n + 1");
    c.send(0, 1);
    c.assert_converged();
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
        2
    );
}

#[test]
fn a_replace_that_deletes_another_row_through_a_unique_index_is_captured() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT);
                  CREATE TABLE tags(id TEXT PRIMARY KEY, label TEXT UNIQUE ON CONFLICT REPLACE);";
    let mut c = Cluster::new(2, schema, &["users", "tags"]);
    c.write(
        0,
        "INSERT INTO users VALUES ('u1', 'e', 'one'); INSERT INTO tags VALUES ('t1', 'red');",
    );
    c.send(0, 1);
    c.write(0, "INSERT OR REPLACE INTO users VALUES ('u2', 'e', 'two'); INSERT INTO tags VALUES ('t2', 'red');");
    c.write(
        0,
        "INSERT OR IGNORE INTO users VALUES ('u3', 'e', 'ignored')",
    );
    c.send(0, 1);
    c.assert_converged();
    for i in 0..2 {
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
        assert_eq!(
            query_one::<String>(&c.path(i), "SELECT group_concat(id) FROM users"),
            "u2"
        );
        assert_eq!(
            query_one::<String>(&c.path(i), "SELECT group_concat(id) FROM tags"),
            "t2"
        );
    }
}

#[test]
fn tides_own_applies_are_not_captured_again() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.send(0, 1);
    assert_eq!(
        c.replicas[1].seal().unwrap(),
        None,
        "applying r0's change left nothing to seal"
    );
}

#[test]
fn app_triggers_do_not_run_again_when_changes_are_applied() {
    let schema = "CREATE TABLE items(id TEXT PRIMARY KEY, x INTEGER);
                  CREATE TABLE stats(k TEXT PRIMARY KEY, n INTEGER);
                  CREATE TRIGGER count_items AFTER INSERT ON items BEGIN
                    INSERT INTO stats VALUES ('items', 1) ON CONFLICT(k) DO UPDATE SET n = n + 1; END;";
    let mut c = Cluster::new(2, schema, &["items", "stats"]);
    c.diverge(
        "INSERT INTO items VALUES ('a', 1)",
        "INSERT INTO items VALUES ('b', 2)",
    );
    c.sync_all();
    c.assert_converged();
}

/// 0.0 and -0.0 tie in the capture sort, so the captures of key 0.0 can come out in two
/// groups around those of -0.0. Split across a batch boundary, the second group must not
/// read the metadata the first has just written and name the change itself as a
/// predecessor: that would be a change no replica could decode.
#[test]
fn zero_and_negative_zero_keys_across_a_batch_boundary_seal_a_valid_change() {
    let mut c = Cluster::new(2, "CREATE TABLE t(k PRIMARY KEY, v);", &["t"]);
    c.write(0, "INSERT INTO t VALUES('first', 1)");
    c.send(0, 1);
    let app = c.app(0);
    app.execute_batch("BEGIN").unwrap();
    for i in 1..=127 {
        app.execute("INSERT INTO t VALUES(?1, 'x')", [-(i as i64)])
            .unwrap();
    }
    move_key_through_negative_zero(&app);
    app.execute_batch("COMMIT").unwrap();
    drop(app);
    c.replicas[0].seal().unwrap();
    let vv = c.replicas[1].version_vector().unwrap();
    let changes = c.replicas[0].changes_for(&vv).unwrap();
    let r = c.replicas[1].import(&changes);
    assert!(r.is_ok(), "{r:?}");
    c.assert_converged();
}

/// Inserts row 0.0, moves it to -0.0 (a key SQLite calls equal) and back: captures of
/// keys SQLite calls equal but tide tells apart.
fn move_key_through_negative_zero(app: &rusqlite::Connection) {
    app.execute("INSERT INTO t VALUES(?1, 'a')", [0.0f64])
        .unwrap();
    app.execute("UPDATE t SET k = ?1 WHERE k = 0", [-0.0f64])
        .unwrap();
    app.execute("UPDATE t SET k = ?1 WHERE k = 0", [0.0f64])
        .unwrap();
}

/// The same split inside one batch must still seal one op for key 0.0.
#[test]
fn zero_and_negative_zero_keys_in_one_batch_give_one_op() {
    let mut c = Cluster::new(2, "CREATE TABLE t(k PRIMARY KEY, v);", &["t"]);
    let app = c.app(0);
    app.execute_batch("BEGIN").unwrap();
    move_key_through_negative_zero(&app);
    app.execute_batch("COMMIT").unwrap();
    drop(app);
    let rep = c.send(0, 1);
    c.assert_converged();
    assert_eq!(rep.ops_applied, 1, "{rep:?}");
}

/// The cells each of replica `i`'s own changes wrote, oldest first, as column names.
fn own_cells(c: &mut Cluster, i: usize) -> Vec<Vec<String>> {
    let card = c.replicas[i].card().unwrap();
    c.replicas[i]
        .changes_for(&tide_core::VersionVector::new())
        .unwrap()
        .iter()
        .map(|s| {
            let v = s.verify(&card.sign_key).unwrap();
            v.change()
                .tables
                .iter()
                .flat_map(|t| {
                    t.rows.iter().flat_map(move |r| {
                        r.cells
                            .iter()
                            .map(move |cell| t.columns[cell.column].clone())
                    })
                })
                .collect()
        })
        .collect()
}

#[test]
fn negative_zero_in_an_untyped_column_is_not_sent_again_by_later_updates() {
    let mut c = Cluster::new(
        2,
        "CREATE TABLE t(id TEXT PRIMARY KEY, u, n INTEGER);",
        &["t"],
    );
    c.app(0)
        .execute("INSERT INTO t VALUES ('a', ?1, 0)", [-0.0f64])
        .unwrap();
    c.replicas[0].seal().unwrap();
    c.write(0, "UPDATE t SET n = 1 WHERE id = 'a'");
    c.replicas[0].seal().unwrap();
    // The sign flips: that is a change of u, and must travel.
    c.app(0)
        .execute("UPDATE t SET u = ?1, n = 2 WHERE id = 'a'", [0.0f64])
        .unwrap();
    c.replicas[0].seal().unwrap();
    c.app(0)
        .execute("UPDATE t SET u = ?1 WHERE id = 'a'", [-0.0f64])
        .unwrap();
    c.replicas[0].seal().unwrap();
    // Zero written over zero of the same sign, several times: nothing to send.
    c.app(0)
        .execute("UPDATE t SET u = ?1, n = 3 WHERE id = 'a'", [-0.0f64])
        .unwrap();
    c.replicas[0].seal().unwrap();
    let cells = own_cells(&mut c, 0);
    assert_eq!(
        cells[1..],
        [vec!["n"], vec!["u", "n"], vec!["u"], vec!["n"]],
        "cells of each change after the insert"
    );
    c.sync_all();
    let u: f64 = query_one(&c.path(1), "SELECT u FROM t");
    assert!(u == 0.0 && u.is_sign_negative(), "r1 shows {u}");
}
