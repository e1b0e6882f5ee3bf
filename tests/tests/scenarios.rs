//! Engine scenarios on real SQLite files: two or three replicas, writes through plain
//! app connections, changes exchanged in both directions.

use tide_core::{
    Error, KeyStore, OpenError, Replica, Resolution, TrackError, Value, VersionVector,
};
use tide_tests::{Cluster, query_one};

const NOTES: &str = "CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT, body TEXT, n INTEGER);";

fn notes(n: usize) -> Cluster {
    Cluster::new(n, NOTES, &["notes"])
}

/// SQL inserting one row into `table` for each `x` from `from` to `to`, made of `select`
/// (expressions of `x`).
fn series(table: &str, from: i64, to: i64, select: &str) -> String {
    format!(
        "WITH RECURSIVE s(x) AS (SELECT {from} UNION ALL SELECT x + 1 FROM s WHERE x < {to})
         INSERT INTO {table} SELECT {select} FROM s;"
    )
}

fn exchange(c: &mut Cluster) {
    c.send(0, 1);
    c.send(1, 0);
}

#[test]
fn same_cell_edits_give_one_conflict_named_alike_on_both_sides() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 'title', 'body', 1)");
    c.send(0, 1);
    c.write(0, "UPDATE notes SET title = 'from r0' WHERE id = 'a'");
    c.write(1, "UPDATE notes SET title = 'from r1' WHERE id = 'a'");
    exchange(&mut c);

    let k0 = c.replicas[0].conflicts().unwrap();
    let k1 = c.replicas[1].conflicts().unwrap();
    assert_eq!(k0.len(), 1, "{k0:?}");
    // `local` is relative to who asks; everything else must match, in the same order.
    let without_local = |ks: &[tide_core::Conflict]| {
        ks.iter()
            .map(|k| {
                let mut k = k.clone();
                k.candidates.iter_mut().for_each(|c| c.local = false);
                k
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_local(&k0), without_local(&k1));
    let conflict = &k0[0];
    assert_eq!(conflict.column.as_deref(), Some("title"));
    assert_eq!(conflict.kind, "update");
    let mut values: Vec<Value> = conflict
        .candidates
        .iter()
        .filter_map(|c| c.value.clone())
        .collect();
    values.sort();
    assert_eq!(values, vec![Value::text("from r0"), Value::text("from r1")]);
    assert_eq!(conflict.candidates.iter().filter(|c| c.winner).count(), 1);
    let shown0: String = query_one(&c.path(0), "SELECT title FROM notes WHERE id='a'");
    let shown1: String = query_one(&c.path(1), "SELECT title FROM notes WHERE id='a'");
    assert_eq!(
        shown0, shown1,
        "every replica shows the same provisional winner"
    );
    let winner = conflict.candidates.iter().find(|c| c.winner).unwrap();
    assert_eq!(winner.value, Some(Value::text(shown0)));
    let hashes = c.hashes();
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn edits_of_different_columns_merge_without_conflict() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 'title', 'body', 1)");
    c.send(0, 1);
    c.write(0, "UPDATE notes SET title = 'new title' WHERE id = 'a'");
    c.write(1, "UPDATE notes SET body = 'new body' WHERE id = 'a'");
    exchange(&mut c);
    for i in 0..2 {
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
        let row: (String, String) = c
            .app(i)
            .query_row("SELECT title, body FROM notes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(row, ("new title".into(), "new body".into()));
    }
}

#[test]
fn delete_against_concurrent_update_is_recorded_and_keeps_the_update() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 'title', 'body', 1)");
    c.send(0, 1);
    c.write(0, "DELETE FROM notes WHERE id = 'a'");
    c.write(1, "UPDATE notes SET n = 42 WHERE id = 'a'");
    exchange(&mut c);
    let hashes = c.hashes();
    assert_eq!(hashes[0], hashes[1]);
    for i in 0..2 {
        let k = c.replicas[i].conflicts().unwrap();
        assert_eq!(k.len(), 1, "{k:?}");
        assert_eq!(k[0].kind, "delete");
        assert_eq!(k[0].column, None);
        assert!(
            k[0].candidates.iter().any(|c| c.value.is_none()),
            "the deletion is a candidate"
        );
        assert!(
            k[0].candidates.iter().any(|c| c.value.is_some()),
            "the update is a candidate"
        );
    }
    // Keeping the update brings the whole row back everywhere, with the updated value.
    let id = c.replicas[0].conflicts().unwrap()[0].id.clone();
    let keep = c.replicas[0].conflicts().unwrap()[0]
        .candidates
        .iter()
        .find(|c| c.value.is_some())
        .unwrap()
        .id
        .clone();
    c.replicas[0].resolve(&id, Resolution::Keep(keep)).unwrap();
    exchange(&mut c);
    for i in 0..2 {
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
        let row: (String, String, i64) = c
            .app(i)
            .query_row("SELECT title, body, n FROM notes WHERE id='a'", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, ("title".into(), "body".into(), 42));
    }
}

#[test]
fn two_offline_edits_against_one_lose_nothing() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.send(0, 1);
    c.write(0, "UPDATE notes SET title = 'r0 first' WHERE id='a'");
    c.replicas[0].seal().unwrap();
    c.write(0, "UPDATE notes SET title = 'r0 second' WHERE id='a'");
    c.replicas[0].seal().unwrap();
    c.write(1, "UPDATE notes SET title = 'r1 only' WHERE id='a'");
    exchange(&mut c);
    for i in 0..2 {
        let k = c.replicas[i].conflicts().unwrap();
        assert_eq!(k.len(), 1);
        let mut values: Vec<Value> = k[0]
            .candidates
            .iter()
            .filter_map(|c| c.value.clone())
            .collect();
        values.sort();
        // r0's first edit was overwritten by r0 itself; the two concurrent heads remain.
        assert_eq!(
            values,
            vec![Value::text("r0 second"), Value::text("r1 only")]
        );
    }
}

#[test]
fn a_resolution_on_one_replica_closes_the_conflict_everywhere() {
    let mut c = notes(3);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.sync_all();
    c.write(0, "UPDATE notes SET body = 'zero' WHERE id='a'");
    c.write(1, "UPDATE notes SET body = 'one' WHERE id='a'");
    c.write(2, "UPDATE notes SET body = 'two' WHERE id='a'");
    c.sync_all();
    let k = c.replicas[2].conflicts().unwrap();
    assert_eq!(k.len(), 1);
    assert_eq!(k[0].candidates.len(), 3);
    let loser = k[0].candidates.iter().find(|x| !x.winner).unwrap().clone();
    c.replicas[2]
        .resolve(&k[0].id[..8], Resolution::Keep(loser.id[..12].to_string()))
        .unwrap();
    c.sync_all();
    for i in 0..3 {
        assert!(c.replicas[i].conflicts().unwrap().is_empty(), "replica {i}");
        let body: Value = c
            .app(i)
            .query_row("SELECT body FROM notes WHERE id='a'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(Some(body), loser.value);
    }
    let h = c.hashes();
    assert!(h.iter().all(|x| *x == h[0]));
}

/// r0 and r1 write one cell concurrently (`r1_first`: r1's write is older, so r0's is
/// shown), then r0's app writes it again over what it shows.
fn conflicted_then_written_again_on_r0(r1_first: bool) -> Cluster {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.send(0, 1);
    let (first, second) = if r1_first { (1, 0) } else { (0, 1) };
    c.write(
        first,
        &format!("UPDATE notes SET n = {} WHERE id='a'", first + 1),
    );
    c.replicas[first].seal().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    c.write(
        second,
        &format!("UPDATE notes SET n = {} WHERE id='a'", second + 1),
    );
    exchange(&mut c);
    assert_eq!(c.replicas[0].conflicts().unwrap().len(), 1);
    c.write(0, "UPDATE notes SET n = 3 WHERE id='a'");
    exchange(&mut c);
    c
}

#[test]
fn a_local_app_write_to_a_conflicted_cell_keeps_the_other_replicas_candidate() {
    // r0 shows its own 1 and writes 3 over it: r1's 2, never shown there, stays.
    let c = conflicted_then_written_again_on_r0(true);
    for i in 0..2 {
        let k = c.replicas[i].conflicts().unwrap();
        assert_eq!(k.len(), 1);
        let mut values: Vec<Value> = k[0]
            .candidates
            .iter()
            .filter_map(|c| c.value.clone())
            .collect();
        values.sort_by_key(|v| v.display());
        assert_eq!(values, [Value::Integer(2), Value::Integer(3)]);
    }
}

#[test]
fn a_local_app_write_over_the_shown_candidate_supersedes_its_own_earlier_one() {
    // r0 shows r1's 2 and writes 3 over it: that and r0's own earlier 1 are overwritten,
    // and r0's own two writes are never at odds.
    let c = conflicted_then_written_again_on_r0(false);
    for i in 0..2 {
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
        assert_eq!(query_one::<i64>(&c.path(i), "SELECT n FROM notes"), 3);
    }
}

#[test]
fn same_unique_value_inserted_twice_keeps_one_winner_everywhere_and_records_the_loser() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
    let mut c = Cluster::new(2, schema, &["users"]);
    c.write(
        0,
        "INSERT INTO users VALUES ('u0', 'x@example.org', 'zero')",
    );
    c.write(1, "INSERT INTO users VALUES ('u1', 'x@example.org', 'one')");
    exchange(&mut c);
    c.sync_all();
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
    let kept0: String = query_one(
        &c.path(0),
        "SELECT id FROM users WHERE email='x@example.org'",
    );
    let kept1: String = query_one(
        &c.path(1),
        "SELECT id FROM users WHERE email='x@example.org'",
    );
    assert_eq!(kept0, kept1);
    for i in 0..2 {
        let k = c.replicas[i].conflicts().unwrap();
        assert_eq!(k.len(), 1, "{k:?}");
        assert_eq!(k[0].kind, "unique");
        let held = if kept0 == "u0" { "u1" } else { "u0" };
        assert_eq!(k[0].key, vec![Value::text(held)]);
        let n: i64 = query_one(&c.path(i), "SELECT count(*) FROM users");
        assert_eq!(n, 1, "the loser is held out of the table, not deleted");
    }
    // Keeping the held row swaps them, everywhere.
    let k = c.replicas[0].conflicts().unwrap();
    let held_candidate = k[0]
        .candidates
        .iter()
        .find(|x| !x.winner)
        .unwrap()
        .id
        .clone();
    c.replicas[0]
        .resolve(&k[0].id, Resolution::Keep(held_candidate))
        .unwrap();
    c.sync_all();
    for i in 0..2 {
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
        let now: String = query_one(
            &c.path(i),
            "SELECT id FROM users WHERE email='x@example.org'",
        );
        assert_ne!(now, kept0);
    }
}

/// A change far larger than one apply batch, with UNIQUE collisions in the middle of
/// batches: rows that lose their slot are held, rows that win it evict the local row,
/// and every replica ends alike whatever the order and batching of what it received.
#[test]
fn unique_collisions_inside_a_large_change_are_held_alike_everywhere() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
    let mut c = Cluster::new(3, schema, &["users"]);
    let collide = |from: i64, to: i64| {
        series(
            "users",
            from,
            to,
            "printf('v%04d', x * 37), printf('e%04d', x * 37), 'r1'",
        )
    };
    // r1's first colliding rows are older than r0's (they keep their slots), its later
    // ones younger (r0's rows evict them where r1 applies r0's change).
    c.write(1, &collide(0, 12));
    c.replicas[1].seal().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    c.write(
        0,
        &series(
            "users",
            0,
            999,
            "printf('u%04d', x), printf('e%04d', x), 'r0'",
        ),
    );
    c.replicas[0].seal().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    c.write(1, &collide(13, 26));
    c.replicas[1].seal().unwrap();
    // r2 gets r1's changes first, then r0's; r1 gets r0's on top of its own.
    c.send(1, 2);
    c.send(0, 2);
    exchange(&mut c);
    c.sync_all();
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
    assert_eq!(h[0], h[2]);
    for i in 0..3 {
        let conflicts = c.replicas[i].conflicts().unwrap();
        assert_eq!(conflicts.len(), 27, "one held row per collision on r{i}");
        assert!(conflicts.iter().all(|k| k.kind == "unique"));
        let n: i64 = query_one(&c.path(i), "SELECT count(*) FROM users");
        assert_eq!(n, 1000, "every email once; the losers are held, not lost");
        let r1_kept: i64 = query_one(&c.path(i), "SELECT count(*) FROM users WHERE name = 'r1'");
        assert_eq!(r1_kept, 13, "the older rows keep their slots on r{i}");
    }
}

/// A change's first table applies, its second is not tracked here: the change goes to
/// quarantine whole, and the first table's ops are rolled back with it.
/// Tables `a` and `b` on both replicas; r0 tracks both, r1 only `a`.
fn b_tracked_on_r0_only() -> Cluster {
    let schema = "CREATE TABLE a(id TEXT PRIMARY KEY, v); CREATE TABLE b(id TEXT PRIMARY KEY, v);";
    let mut c = Cluster::new(2, schema, &["a"]);
    c.replicas[0].track("b").unwrap();
    c
}

#[test]
fn a_change_whose_later_table_is_unknown_applies_none_of_its_tables() {
    let mut c = b_tracked_on_r0_only();
    c.write(
        0,
        "BEGIN; INSERT INTO a VALUES ('x', 1); INSERT INTO b VALUES ('y', 2); COMMIT;",
    );
    let report = c.send(0, 1);
    assert_eq!(report.applied, 0);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].1, "unknown_table");
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM a"),
        0,
        "the first table's op was rolled back with the change"
    );
    c.replicas[1].track("b").unwrap();
    c.replicas[1].retry_quarantine().unwrap();
    assert_eq!(query_one::<i64>(&c.path(1), "SELECT count(*) FROM a"), 1);
    assert_eq!(query_one::<i64>(&c.path(1), "SELECT count(*) FROM b"), 1);
    assert!(c.replicas[1].quarantine().unwrap().is_empty());
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
    assert_eq!(c.hashes()[0], c.hashes()[1]);
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
    assert_eq!(c.hashes()[0], c.hashes()[1]);
    assert_eq!(rep.ops_applied, 1, "{rep:?}");
}

/// Chunks are kept compressed in the log; one that no longer unpacks, or is missing, is
/// a finding of the doctor, not an error that stops it.
#[test]
fn the_doctor_lists_a_log_chunk_that_does_not_unpack_or_is_missing() {
    let mut c = notes(1);
    c.replicas[0].set_chunk_target(2048).unwrap();
    c.write(0, &series("notes", 1, 200, "'n' || x, 'title', 'body', x"));
    c.replicas[0].seal().unwrap();
    let chunks: i64 = query_one(&c.path(0), "SELECT count(*) FROM _tide_chunks");
    assert!(chunks > 2, "{chunks} chunks");
    assert_eq!(
        query_one::<i64>(&c.path(0), "SELECT min(packing) FROM _tide_chunks"),
        1,
        "2 KiB chunks are stored compressed"
    );
    assert!(c.replicas[0].doctor(false).unwrap().iter().all(|f| f.ok));
    c.write(
        0,
        "UPDATE _tide_chunks SET data = x'28b52ffd00' WHERE rowid = (SELECT min(rowid) FROM _tide_chunks);
         DELETE FROM _tide_chunks WHERE rowid = (SELECT max(rowid) FROM _tide_chunks);",
    );
    let findings = c.replicas[0].doctor(false).unwrap();
    let chain = findings.iter().find(|f| f.check == "hash chains").unwrap();
    assert!(!chain.ok);
    assert!(
        chain.detail.contains("could not be decompressed") && chain.detail.contains("missing"),
        "{}",
        chain.detail
    );
}

#[test]
fn reapplying_the_same_changes_changes_nothing() {
    let mut c = notes(2);
    c.write(
        0,
        "INSERT INTO notes VALUES ('a', 't', 'b', 0); INSERT INTO notes VALUES ('b', 't', 'b', 0)",
    );
    c.write(1, "INSERT INTO notes VALUES ('a', 'T', 'B', 1)");
    exchange(&mut c);
    let before = c.hashes();
    let all = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    for _ in 0..2 {
        let report = c.replicas[1].import(&all).unwrap();
        assert_eq!(report.stored, 0);
        assert_eq!(report.duplicates, all.len());
    }
    assert_eq!(c.hashes(), before);
}

#[test]
fn an_apply_that_fails_midway_leaves_the_file_byte_identical() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0); INSERT INTO notes VALUES ('b', 't', 'b', 0); INSERT INTO notes VALUES ('c', 't', 'b', 0);");
    c.write(1, "INSERT INTO notes VALUES ('z', 'local', 'b', 0)");
    c.replicas[1].seal().unwrap();
    let vv = c.replicas[1].version_vector().unwrap();
    let changes = c.replicas[0].changes_for(&vv).unwrap();
    let before = std::fs::read(c.path(1)).unwrap();
    c.replicas[1].inject_apply_failure(Some(2));
    let err = c.replicas[1].import(&changes).unwrap_err();
    assert!(matches!(err, Error::Apply(_)), "{err}");
    assert_eq!(
        std::fs::read(c.path(1)).unwrap(),
        before,
        "nothing of the failed import is left"
    );
    // And the same import then succeeds.
    let report = c.replicas[1].import(&changes).unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
        4
    );
}

#[test]
fn a_copied_database_refuses_to_seal() {
    let c = notes(1);
    let mut r = Replica::open(c.path(0), KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    r.seal().unwrap();

    // Same file on another machine: the key store does not have its secret key.
    let copy = c.dir.path().join("copy.db");
    std::fs::copy(c.path(0), &copy).unwrap();
    let mut on_other_machine =
        Replica::open(&copy, KeyStore::at(c.dir.path().join("elsewhere"))).unwrap();
    Connection::open(&copy)
        .unwrap()
        .execute("INSERT INTO notes VALUES ('b', 't', 'b', 0)", [])
        .unwrap();
    let err = on_other_machine.seal().unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::IdentityMissing { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("looks like a copy"));

    // Same key store, other path: a copy on the same machine.
    let mut same_machine = Replica::open(&copy, KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    let err = same_machine.seal().unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::IdentityConflict { .. })),
        "{err}"
    );

    // A new identity makes it a replica of its own.
    let old = same_machine.id().unwrap();
    let new = same_machine.new_identity("copy").unwrap();
    assert_ne!(old, new);
    assert!(same_machine.seal().unwrap().is_some());
}

#[test]
fn a_restored_backup_refuses_to_seal() {
    let c = notes(1);
    let backup = c.dir.path().join("backup.db");
    std::fs::copy(c.path(0), &backup).unwrap();
    let mut r = Replica::open(c.path(0), KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    r.seal().unwrap();
    drop(r);
    std::fs::copy(&backup, c.path(0)).unwrap();
    let mut restored = Replica::open(c.path(0), KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    c.write(0, "INSERT INTO notes VALUES ('b', 't', 'b', 0)");
    let err = restored.seal().unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::IdentityConflict { .. })),
        "{err}"
    );
}

#[test]
fn a_forked_change_is_quarantined_not_applied() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.send(0, 1);
    // Clone r0's file and keys (a restored backup on a second machine), then write on both.
    let fork_dir = c.dir.path().join("fork");
    std::fs::create_dir(&fork_dir).unwrap();
    let fork_db = fork_dir.join("fork.db");
    std::fs::copy(c.path(0), &fork_db).unwrap();
    let keys = c.dir.path().join("keys0");
    let fork_keys = fork_dir.join("keys");
    std::fs::create_dir(&fork_keys).unwrap();
    for entry in std::fs::read_dir(&keys).unwrap() {
        let e = entry.unwrap();
        if e.file_name().to_string_lossy().ends_with(".key") {
            std::fs::copy(e.path(), fork_keys.join(e.file_name())).unwrap();
        }
    }
    let mut fork = Replica::open(&fork_db, KeyStore::at(&fork_keys)).unwrap();
    Connection::open(&fork_db)
        .unwrap()
        .execute("UPDATE notes SET title='fork' WHERE id='a'", [])
        .unwrap();
    fork.seal().unwrap();
    c.write(0, "UPDATE notes SET title='original' WHERE id='a'");
    c.send(0, 1);
    let forked = fork.changes_for(&VersionVector::new()).unwrap();
    let forked: Vec<_> = forked
        .into_iter()
        .filter(|ch| ch.peek_id().unwrap().seq == 2)
        .collect();
    assert_eq!(forked.len(), 1);
    let before = c.replicas[1].state_hash().unwrap();
    let report = c.replicas[1].import(&forked).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].1, "fork");
    assert_eq!(c.replicas[1].state_hash().unwrap(), before);
    let q = c.replicas[1].quarantine().unwrap();
    assert_eq!(q[0].reason, "fork");
    let title: String = query_one(&c.path(1), "SELECT title FROM notes");
    assert_eq!(title, "original");
}

#[test]
fn a_tampered_change_is_rejected_before_any_write() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    let changes = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    let mut bytes = changes[0].to_bytes();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let (tampered, _) = tide_core::SignedChange::from_bytes(&bytes).unwrap();
    let before = std::fs::read(c.path(1)).unwrap();
    let err = c.replicas[1].import(&[tampered]).unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert_eq!(std::fs::read(c.path(1)).unwrap(), before);
}

/// A change sealed in many chunks travels whole; one chunk altered (by a relay that
/// holds no key) rejects the whole import, and the receiver's file stays as it was.
#[test]
fn a_change_in_many_chunks_applies_whole_and_a_tampered_chunk_rejects_it() {
    let mut c = notes(2);
    c.replicas[0].set_chunk_target(1024).unwrap();
    c.write(
        0,
        &series("notes", 1, 300, "'n' || x, 'title ' || x, 'body', x"),
    );
    let changes = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    assert_eq!(changes.len(), 1);
    let chunks = changes[0].chunks().to_vec();
    assert!(chunks.len() > 5, "{} chunks", chunks.len());
    let before = std::fs::read(c.path(1)).unwrap();
    for (what, tampered) in [
        ("a flipped byte", {
            let mut t = chunks.clone();
            t[2][10] ^= 0x01;
            t
        }),
        ("a dropped chunk", chunks[1..].to_vec()),
        ("two chunks swapped", {
            let mut t = chunks.clone();
            t.swap(0, 1);
            t
        }),
    ] {
        let change = tide_core::SignedChange::new(changes[0].head().clone(), tampered);
        let err = c.replicas[1].import(&[change]).unwrap_err();
        assert!(matches!(err, Error::Rejected { .. }), "{what}: {err}");
        assert_eq!(std::fs::read(c.path(1)).unwrap(), before, "{what}");
    }
    let report = c.replicas[1].import(&changes).unwrap();
    assert_eq!(report.ops_applied, 300);
    assert_eq!(c.hashes()[0], c.hashes()[1]);
}

/// A caller whose source ignores a refused change and offers more still gets a failed
/// import, with nothing kept.
#[test]
fn an_import_whose_source_swallows_a_refusal_keeps_nothing() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    let good = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    let mut chunks = good[0].chunks().to_vec();
    chunks[0][3] ^= 0x01;
    let bad = tide_core::SignedChange::new(good[0].head().clone(), chunks);
    let before = std::fs::read(c.path(1)).unwrap();
    let err = c.replicas[1]
        .import_each(|offer| {
            let refused = offer(bad.head(), &mut &bad);
            assert!(
                matches!(refused, Err(Error::Rejected { .. })),
                "{refused:?}"
            );
            let _ = offer(good[0].head(), &mut &good[0]);
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, Error::Apply(_)), "{err}");
    assert_eq!(std::fs::read(c.path(1)).unwrap(), before);
}

#[test]
fn changes_relay_through_a_middle_replica() {
    let mut c = notes(3);
    c.write(0, "INSERT INTO notes VALUES ('from0', 't', 'b', 0)");
    c.send(0, 1);
    c.send(1, 2);
    let n: i64 = query_one(&c.path(2), "SELECT count(*) FROM notes WHERE id='from0'");
    assert_eq!(n, 1);
}

#[test]
fn a_change_with_missing_dependencies_waits_then_applies() {
    let mut c = notes(3);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.send(0, 1);
    c.write(1, "UPDATE notes SET n = 5 WHERE id='a'");
    // r2 gets r1's change first: it depends on r0's, which r2 lacks.
    let from1: Vec<_> = c.replicas[1]
        .changes_for(&VersionVector::new())
        .unwrap()
        .into_iter()
        .filter(|ch| ch.peek_id().unwrap().origin == c.replicas[1].id().unwrap())
        .collect();
    let report = c.replicas[2].import(&from1).unwrap();
    assert_eq!((report.applied, report.waiting), (0, 1));
    let report = c.send(0, 2);
    assert_eq!(
        report.applied, 2,
        "the waiting change applies once its dependency arrives"
    );
    let n: i64 = query_one(&c.path(2), "SELECT n FROM notes WHERE id='a'");
    assert_eq!(n, 5);
}

#[test]
fn a_change_from_an_unknown_replica_waits_in_quarantine_until_its_card_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let mut a =
        Replica::open(dir.path().join("a.db"), KeyStore::at(dir.path().join("ka"))).unwrap();
    let mut b =
        Replica::open(dir.path().join("b.db"), KeyStore::at(dir.path().join("kb"))).unwrap();
    a.init("a").unwrap();
    b.init("b").unwrap();
    for r in [&a, &b] {
        r.connection().execute_batch(NOTES).unwrap();
    }
    a.track("notes").unwrap();
    b.track("notes").unwrap();
    a.connection()
        .execute("INSERT INTO notes VALUES ('a', 't', 'b', 0)", [])
        .unwrap();
    let changes = a.changes_for(&VersionVector::new()).unwrap();
    let report = b.import(&changes).unwrap();
    assert_eq!(report.quarantined[0].1, "unknown_origin");
    assert_eq!(
        query_one::<i64>(&dir.path().join("b.db"), "SELECT count(*) FROM notes"),
        0
    );
    b.add_peer(&a.card().unwrap()).unwrap();
    let report = b.retry_quarantine().unwrap();
    assert_eq!(report.applied, 1);
    assert!(b.quarantine().unwrap().is_empty());
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
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
        2
    );
}

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
        Err(Error::Track(TrackError::NoPrimaryKey(_)))
    ));
    assert!(matches!(
        r.track("auto"),
        Err(Error::Track(TrackError::Autoincrement(_)))
    ));
    assert!(matches!(
        r.track("missing"),
        Err(Error::Track(TrackError::NoSuchTable(_)))
    ));
    let report = r.track("alias").unwrap();
    assert!(report.warnings[0].contains("rowid alias"));
    assert!(r.track("good").unwrap().warnings.is_empty());
    assert!(!r.track("good").unwrap().newly_tracked);
}

/// r0 deletes a parent while r1 adds a child under it; both sides have exchanged. `more`
/// adds tracked tables.
fn orphaned_child(more: &[(&str, &str)]) -> Cluster {
    let mut schema = "CREATE TABLE parent(id TEXT PRIMARY KEY, name TEXT);
         CREATE TABLE child(id TEXT PRIMARY KEY, parent TEXT REFERENCES parent(id), x TEXT);"
        .to_string();
    let mut tables = vec!["parent", "child"];
    for (name, sql) in more {
        schema.push_str(sql);
        tables.push(name);
    }
    let mut c = Cluster::new(2, &schema, &tables);
    c.write(0, "INSERT INTO parent VALUES ('p', 'name')");
    c.send(0, 1);
    c.write(0, "DELETE FROM parent WHERE id='p'");
    c.write(
        1,
        "PRAGMA foreign_keys=ON; INSERT INTO child VALUES ('c', 'p', 'x')",
    );
    exchange(&mut c);
    c.sync_all();
    c
}

#[test]
fn a_child_whose_parent_was_deleted_concurrently_is_held_not_lost() {
    let c = orphaned_child(&[]);
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
    for i in 0..2 {
        let k = c.replicas[i].conflicts().unwrap();
        assert!(
            k.iter()
                .any(|k| k.kind == "foreign_key" && k.table == "child"),
            "{k:?}"
        );
        let orphans: i64 = query_one(
            &c.path(i),
            "SELECT count(*) FROM child WHERE parent NOT IN (SELECT id FROM parent)",
        );
        assert_eq!(orphans, 0);
    }
}

#[test]
fn a_merged_row_that_breaks_a_check_is_held_on_every_replica() {
    let schema =
        "CREATE TABLE range(id TEXT PRIMARY KEY, lo INTEGER, hi INTEGER, CHECK (lo <= hi));";
    let mut c = Cluster::new(2, schema, &["range"]);
    c.write(0, "INSERT INTO range VALUES ('r', 0, 10)");
    c.send(0, 1);
    c.write(0, "UPDATE range SET lo = 8 WHERE id='r'");
    c.write(1, "UPDATE range SET hi = 5 WHERE id='r'");
    exchange(&mut c);
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
    for i in 0..2 {
        let k = c.replicas[i].conflicts().unwrap();
        assert!(k.iter().any(|k| k.kind == "check"), "{k:?}");
    }
}

use rusqlite::Connection;

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
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
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
fn a_unique_index_with_a_collation_decides_alike_everywhere() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT, name TEXT);
                  CREATE UNIQUE INDEX users_email ON users(email COLLATE NOCASE);";
    let mut c = Cluster::new(2, schema, &["users"]);
    c.write(0, "INSERT INTO users VALUES ('u0', 'X@e', 'zero')");
    c.write(1, "INSERT INTO users VALUES ('u1', 'x@e', 'one')");
    exchange(&mut c);
    c.sync_all();
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
    assert_eq!(c.replicas[0].conflicts().unwrap().len(), 1);
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
            matches!(err, Error::Track(TrackError::Untrackable { .. })),
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
fn table_on_conflict_clauses_do_not_change_how_tide_writes() {
    for clause in ["REPLACE", "IGNORE", "ROLLBACK", "FAIL"] {
        let schema = format!(
            "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE ON CONFLICT {clause}, name TEXT);"
        );
        let mut c = Cluster::new(2, &schema, &["users"]);
        c.write(0, "INSERT INTO users VALUES ('u0', 'e', 'zero')");
        c.replicas[0].seal().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        c.write(1, "INSERT INTO users VALUES ('u1', 'e', 'one')");
        c.replicas[1].seal().unwrap();
        exchange(&mut c);
        c.sync_all();
        let h = c.hashes();
        assert_eq!(h[0], h[1], "{clause}");
        for i in 0..2 {
            assert_eq!(
                query_one::<String>(&c.path(i), "SELECT group_concat(id) FROM users"),
                "u0",
                "{clause}"
            );
            assert_eq!(c.replicas[i].conflicts().unwrap().len(), 1, "{clause}");
        }
    }
}

#[test]
fn app_triggers_do_not_run_again_when_changes_are_applied() {
    let schema = "CREATE TABLE items(id TEXT PRIMARY KEY, x INTEGER);
                  CREATE TABLE stats(k TEXT PRIMARY KEY, n INTEGER);
                  CREATE TRIGGER count_items AFTER INSERT ON items BEGIN
                    INSERT INTO stats VALUES ('items', 1) ON CONFLICT(k) DO UPDATE SET n = n + 1; END;";
    let mut c = Cluster::new(2, schema, &["items", "stats"]);
    c.write(0, "INSERT INTO items VALUES ('a', 1)");
    c.write(1, "INSERT INTO items VALUES ('b', 2)");
    exchange(&mut c);
    c.sync_all();
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
}

#[test]
fn reinsert_after_delete_keeps_values_written_concurrently_with_the_delete() {
    let schema = "CREATE TABLE t(id TEXT PRIMARY KEY, a TEXT, b TEXT);";
    for split_seals in [false, true] {
        let mut c = Cluster::new(2, schema, &["t"]);
        c.write(0, "INSERT INTO t VALUES ('k', 'a0', 'b0')");
        c.send(0, 1);
        c.write(1, "UPDATE t SET a = 'a1' WHERE id = 'k'");
        if split_seals {
            c.replicas[1].seal().unwrap();
        }
        c.write(1, "UPDATE t SET b = 'b1' WHERE id = 'k'");
        c.replicas[1].seal().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        c.write(0, "DELETE FROM t WHERE id = 'k'");
        exchange(&mut c);
        c.write(0, "INSERT INTO t VALUES ('k', 'a2', 'b2')");
        exchange(&mut c);
        let h = c.hashes();
        assert_eq!(h[0], h[1]);
        let mut columns: Vec<Option<String>> = c.replicas[0]
            .conflicts()
            .unwrap()
            .into_iter()
            .map(|k| k.column)
            .collect();
        columns.sort();
        assert_eq!(
            columns,
            vec![Some("a".into()), Some("b".into())],
            "split seals: {split_seals}"
        );
    }
}

#[test]
fn a_rows_rank_in_a_unique_conflict_does_not_depend_on_arrival_order() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE);";
    let mut c = Cluster::new(3, schema, &["users"]);
    let tick = || std::thread::sleep(std::time::Duration::from_millis(2));
    c.write(0, "INSERT INTO users VALUES ('k', 'e1')");
    c.replicas[0].seal().unwrap();
    tick();
    c.write(2, "INSERT INTO users VALUES ('z', 'e')");
    c.replicas[2].seal().unwrap();
    tick();
    c.write(0, "DELETE FROM users WHERE id = 'k'");
    c.replicas[0].seal().unwrap();
    tick();
    c.write(1, "INSERT INTO users VALUES ('k', 'e')");
    c.replicas[1].seal().unwrap();
    c.sync_all();
    let h = c.hashes();
    assert!(
        h.iter().all(|x| *x == h[0]),
        "replicas disagree on which row keeps the email"
    );
}

#[test]
fn an_update_keeps_a_rows_unique_slot() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
    let mut c = Cluster::new(2, schema, &["users"]);
    c.write(0, "INSERT INTO users VALUES ('u0', 'e', 'zero')");
    c.replicas[0].seal().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    c.write(1, "INSERT INTO users VALUES ('u1', 'e', 'one')");
    exchange(&mut c);
    c.sync_all();
    // The older row keeps the slot, and an unrelated later edit does not lose it.
    c.write(0, "UPDATE users SET name = 'renamed' WHERE id = 'u0'");
    c.sync_all();
    for i in 0..2 {
        assert_eq!(
            query_one::<String>(&c.path(i), "SELECT id FROM users WHERE email = 'e'"),
            "u0"
        );
    }
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
    let h = c.hashes();
    assert_eq!(h[0], h[1]);
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

/// A change that goes to quarantine takes back the conflicts it had opened: the report
/// counts none, and none exist.
#[test]
fn a_quarantined_change_opens_no_conflicts_in_the_report() {
    let mut c = b_tracked_on_r0_only();
    c.write(0, "INSERT INTO a VALUES ('x', 0)");
    c.send(0, 1);
    c.write(1, "UPDATE a SET v = 1 WHERE id = 'x'");
    c.replicas[1].seal().unwrap();
    // One change: a conflicting write to `a`, then a table r1 does not track.
    c.write(
        0,
        "BEGIN; UPDATE a SET v = 2 WHERE id = 'x'; INSERT INTO b VALUES ('y', 2); COMMIT;",
    );
    let report = c.send(0, 1);
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(c.replicas[1].conflicts().unwrap().len(), 0);
    assert_eq!(report.conflicts_opened, 0, "{report:?}");
}

/// A row held for a missing parent is released and held again by every import's settle;
/// its conflict was there before, so unrelated imports report no new conflict.
#[test]
fn a_row_held_for_its_parent_is_not_counted_again_by_each_import() {
    let mut c = orphaned_child(&[("other", "CREATE TABLE other(id TEXT PRIMARY KEY, v);")]);
    let held = c.replicas[1].conflicts().unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    for i in 0..3 {
        c.write(0, &format!("INSERT INTO other VALUES ('o{i}', {i})"));
        let report = c.send(0, 1);
        assert_eq!(report.applied, 1);
        assert_eq!(report.conflicts_opened, 0, "import {i}: {report:?}");
        assert_eq!(c.replicas[1].conflicts().unwrap(), held);
    }
}

/// One import bringing two concurrent edits of a cell opens one conflict (first two
/// candidates, then three), and one bringing a conflicting edit with its resolution
/// opens none.
#[test]
fn an_import_counts_the_conflicts_it_leaves_open() {
    let mut c = notes(3);
    c.write(0, "INSERT INTO notes VALUES ('n', 't', 'b', 0)");
    c.sync_all();
    for i in 0..3 {
        c.write(
            i,
            &format!("UPDATE notes SET title = 't{i}' WHERE id = 'n'"),
        );
        c.replicas[i].seal().unwrap();
    }
    c.send(1, 2);
    let report = c.send(2, 0);
    assert_eq!(c.replicas[0].conflicts().unwrap().len(), 1);
    assert_eq!(report.conflicts_opened, 1, "{report:?}");

    // r2 resolves what it holds; r1 then carries r2's edit and its resolution to a
    // fresh view of the same cell in one bundle.
    let mut d = notes(3);
    d.write(0, "INSERT INTO notes VALUES ('n', 't', 'b', 0)");
    d.sync_all();
    d.write(0, "UPDATE notes SET title = 'a' WHERE id = 'n'");
    d.write(2, "UPDATE notes SET title = 'b' WHERE id = 'n'");
    d.send(0, 2);
    let id = d.replicas[2].conflicts().unwrap()[0].id.clone();
    d.replicas[2]
        .resolve(&id, tide_core::Resolution::KeepWinner)
        .unwrap();
    d.send(2, 1);
    let report = d.send(1, 0);
    assert!(report.applied >= 2, "{report:?}");
    assert_eq!(d.replicas[0].conflicts().unwrap().len(), 0);
    assert_eq!(report.conflicts_opened, 0, "{report:?}");
}

/// Waiting changes are read a page (256) at a time: 300 changes whose first is missing
/// all wait, then all apply, in causal order, once it arrives.
#[test]
fn hundreds_of_waiting_changes_apply_across_pages_once_the_gap_is_filled() {
    let mut c = notes(2);
    for i in 0..300 {
        c.write(
            0,
            &format!("INSERT INTO notes VALUES ('n{i}', 't', 'b', {i})"),
        );
        c.replicas[0].seal().unwrap();
    }
    c.write(0, "UPDATE notes SET n = -1 WHERE id = 'n0'");
    let mut changes = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    assert_eq!(changes.len(), 301);
    let first = changes.remove(0);
    changes.reverse();
    let report = c.replicas[1].import(&changes).unwrap();
    assert_eq!((report.applied, report.waiting), (0, 300), "{report:?}");
    let report = c.replicas[1].import(&[first]).unwrap();
    assert_eq!((report.applied, report.waiting), (301, 0), "{report:?}");
    assert_eq!(c.hashes()[0], c.hashes()[1]);
}

/// A row's kept values are one blob next to its metadata, and SQLite caps a blob's
/// length: three writers of large values to one cell would have made that blob too long
/// to store, and every import of the changes would have failed. Values that do not fit
/// are kept beside it; they are listed, resolved and cleaned up like any other, and the
/// doctor notices one missing or left behind.
#[test]
fn large_values_kept_for_one_conflict_are_listed_resolved_and_cleaned_up() {
    let mut c = Cluster::new(
        3,
        "CREATE TABLE files(id TEXT PRIMARY KEY, data BLOB);",
        &["files"],
    );
    c.write(0, "INSERT INTO files VALUES ('f', x'00')");
    c.sync_all();
    let big = |i: u8| vec![i; 600 * 1024];
    for i in 0..3u8 {
        c.app(i as usize)
            .execute("UPDATE files SET data=?1 WHERE id='f'", [big(i + 1)])
            .unwrap();
    }
    c.sync_all();
    let hashes = c.hashes();
    assert!(hashes.iter().all(|h| *h == hashes[0]));
    for r in &mut c.replicas {
        let k = r.conflicts().unwrap();
        assert_eq!(k.len(), 1, "{k:?}");
        let mut values: Vec<Value> = k[0]
            .candidates
            .iter()
            .filter_map(|x| x.value.clone())
            .collect();
        values.sort();
        assert_eq!(
            values,
            (1..=3).map(|i| Value::Blob(big(i))).collect::<Vec<_>>()
        );
        assert!(r.doctor(false).unwrap().iter().all(|f| f.ok));
    }
    let spilled: i64 = query_one(&c.path(0), "SELECT count(*) FROM _tide_values");
    assert!(
        spilled >= 1,
        "two 600 KB values do not both fit in the blob"
    );
    // The writer of the shown value writes again: it replaces only what it saw, so the
    // two kept values stay kept, and stay where they were.
    let shown: Vec<u8> = query_one(&c.path(0), "SELECT data FROM files WHERE id='f'");
    let writer = (0..3).find(|&i| big(i as u8 + 1) == shown).unwrap();
    c.app(writer)
        .execute("UPDATE files SET data=?1 WHERE id='f'", [big(9)])
        .unwrap();
    c.sync_all();
    for i in 0..3 {
        let k = c.replicas[i].conflicts().unwrap();
        let mut values: Vec<Value> = k[0]
            .candidates
            .iter()
            .filter_map(|x| x.value.clone())
            .collect();
        values.sort();
        let mut want: Vec<Value> = (1..=3u8)
            .filter(|&v| usize::from(v - 1) != writer)
            .chain([9])
            .map(|v| Value::Blob(big(v)))
            .collect();
        want.sort();
        assert_eq!(values, want);
        assert!(c.replicas[i].doctor(false).unwrap().iter().all(|f| f.ok));
        let now: i64 = query_one(&c.path(i), "SELECT count(*) FROM _tide_values");
        assert_eq!(now, spilled);
    }
    let conflict = c.replicas[0].conflicts().unwrap().remove(0);
    let loser = conflict.candidates.iter().find(|x| !x.winner).unwrap();
    let kept = loser.value.clone().unwrap();
    c.replicas[0]
        .resolve(&conflict.id, Resolution::Keep(loser.id.clone()))
        .unwrap();
    c.send(0, 1);
    c.send(1, 0);

    // r2 still keeps the spilled values: the doctor sees one that no row names, and a
    // spilled one that is gone.
    let doctor_says = |r: &mut Replica| {
        let findings = r.doctor(false).unwrap();
        let rows = findings
            .iter()
            .find(|f| f.check == "rows match metadata")
            .unwrap();
        (rows.ok, rows.detail.clone())
    };
    c.write(
        2,
        "INSERT INTO _tide_values SELECT tid, key, col, origin, seq + 1000, value FROM _tide_values LIMIT 1",
    );
    let (ok, detail) = doctor_says(&mut c.replicas[2]);
    assert!(!ok && detail.contains("no row names"), "{detail}");
    c.write(2, "DELETE FROM _tide_values");
    let (ok, detail) = doctor_says(&mut c.replicas[2]);
    assert!(!ok && detail.contains("unreadable kept values"), "{detail}");
    for i in 0..2 {
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
        let shown: Vec<u8> = query_one(&c.path(i), "SELECT data FROM files WHERE id='f'");
        assert_eq!(Value::Blob(shown), kept);
        let left: i64 = query_one(&c.path(i), "SELECT count(*) FROM _tide_values");
        assert_eq!(left, 0, "nothing is kept once the conflict is resolved");
    }
}

/// A full batch of inserts is written as rows new here without reading their metadata
/// first. Here a key of one such batch was inserted and deleted on the receiver
/// (metadata, no row), and a key of another is in its table: each batch must fall back to
/// the full merge and record the conflicts, as if it had never tried.
#[test]
fn a_batch_of_new_rows_with_keys_known_here_falls_back_to_the_merge() {
    let mut c = notes(2);
    c.write(1, "INSERT INTO notes VALUES ('k0010', 'r1', 'gone', 0)");
    c.replicas[1].seal().unwrap();
    c.write(1, "DELETE FROM notes WHERE id = 'k0010'");
    c.write(1, "INSERT INTO notes VALUES ('k0200', 'r1', 'here', 0)");
    c.replicas[1].seal().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    // Two changes, so each known key is in the first full batch of its own change.
    for (from, to) in [(0, 149), (150, 299)] {
        c.write(
            0,
            &series("notes", from, to, "printf('k%04d', x), 'r0', 'bulk', x"),
        );
        c.replicas[0].seal().unwrap();
    }
    let report = c.send(0, 1);
    // k0010: deleted here, inserted there (1), and both inserts' values (3); k0200: 3.
    assert_eq!(report.conflicts_opened, 7, "{report:?}");
    exchange(&mut c);
    let hashes = c.hashes();
    assert_eq!(hashes[0], hashes[1]);
    for i in 0..2 {
        let rows: i64 = query_one(&c.path(i), "SELECT count(*) FROM notes");
        assert_eq!(rows, 300, "every row of the bulk insert is there");
        let mut found: Vec<(Value, String, Option<String>)> = c.replicas[i]
            .conflicts()
            .unwrap()
            .into_iter()
            .map(|k| (k.key[0].clone(), k.kind, k.column))
            .collect();
        found.sort();
        let mut want = Vec::new();
        for key in ["k0010", "k0200"] {
            if key == "k0010" {
                want.push((Value::text(key), "delete".to_string(), None));
            }
            for column in ["body", "n", "title"] {
                want.push((
                    Value::text(key),
                    "insert".to_string(),
                    Some(column.to_string()),
                ));
            }
        }
        want.sort();
        assert_eq!(found, want);
        assert!(c.replicas[i].doctor(false).unwrap().iter().all(|f| f.ok));
    }
}

/// Two replicas move two rows onto one UNIQUE value at once; the older row keeps the slot.
/// The winner's update carries only the changed column: the other columns must stay as
/// they are on every replica, and the conflict must show the whole winning row.
fn unique_collision_of_partial_updates(index_after_track: bool) -> Cluster {
    let schema = if index_after_track {
        "CREATE TABLE t(id TEXT PRIMARY KEY, name TEXT, x INTEGER);"
    } else {
        "CREATE TABLE t(id TEXT PRIMARY KEY, name TEXT, x INTEGER UNIQUE);"
    };
    let mut c = Cluster::new(2, schema, &["t"]);
    if index_after_track {
        for i in 0..2 {
            c.write(i, "CREATE UNIQUE INDEX t_x ON t(x)");
        }
    }
    c.write(
        0,
        "INSERT INTO t VALUES ('r1', 'Alpha', 1), ('r2', 'Beta', 2)",
    );
    c.send(0, 1);
    c.write(0, "UPDATE t SET x = 5 WHERE id = 'r1'");
    c.write(1, "UPDATE t SET x = 5 WHERE id = 'r2'");
    c.replicas[0].seal().unwrap();
    c.replicas[1].seal().unwrap();
    c.send(0, 1);
    c.send(1, 0);
    c
}

fn rows_of_t(c: &Cluster, i: usize) -> Vec<(String, Option<String>, Option<i64>)> {
    let app = c.app(i);
    let mut stmt = app
        .prepare("SELECT id, name, x FROM t ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn unique_collision_of_partial_updates_keeps_the_winners_other_columns() {
    for index_after_track in [false, true] {
        let mut c = unique_collision_of_partial_updates(index_after_track);
        let want = vec![("r1".to_string(), Some("Alpha".to_string()), Some(5))];
        for i in 0..2 {
            assert_eq!(
                rows_of_t(&c, i),
                want,
                "replica {i} (index after track: {index_after_track})"
            );
            let conflicts = c.replicas[i].conflicts().unwrap();
            assert_eq!(conflicts.len(), 1, "replica {i}: {conflicts:?}");
            // A constraint conflict's candidates are whole rows, shown as text.
            let shown: Vec<Option<tide_core::Value>> = conflicts[0]
                .candidates
                .iter()
                .map(|c| c.value.clone())
                .collect();
            for row in [r#""r1", "Alpha", 5"#, r#""r2", "Beta", 5"#] {
                assert!(
                    shown.contains(&Some(tide_core::Value::text(row))),
                    "replica {i} shows the rows as {shown:?}, not {row}"
                );
            }
        }
        assert_eq!(c.hashes()[0], c.hashes()[1]);
        // Keeping the winner frees nothing, and the replicas still agree afterwards.
        let id = c.replicas[1].conflicts().unwrap()[0].id.clone();
        c.replicas[1]
            .resolve(&id, tide_core::Resolution::KeepWinner)
            .unwrap();
        c.sync_all();
        for i in 0..2 {
            assert_eq!(rows_of_t(&c, i), want, "replica {i} after resolving");
            assert!(c.replicas[i].conflicts().unwrap().is_empty());
        }
        assert_eq!(c.hashes()[0], c.hashes()[1]);
    }
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

#[test]
fn a_replicas_reinsert_after_a_remote_delete_won_supersedes_its_own_earlier_write() {
    let mut c = Cluster::new(2, "CREATE TABLE t(id TEXT PRIMARY KEY, v TEXT);", &["t"]);
    c.write(0, "INSERT INTO t VALUES ('a', 'one')");
    c.sync_all();
    c.write(0, "UPDATE t SET v = 'two' WHERE id = 'a'");
    c.replicas[0].seal().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    c.write(1, "DELETE FROM t WHERE id = 'a'");
    c.replicas[1].seal().unwrap();
    c.sync_all();
    // The delete is later: it wins, and the update is kept as a candidate.
    let open = c.replicas[0].conflicts().unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].kind, "delete");
    // r0 writes the row again: its new write overwrites everything it saw, its own
    // update included, so only the delete and this write can still be at odds.
    c.write(0, "INSERT INTO t VALUES ('a', 'three')");
    c.replicas[0].seal().unwrap();
    let open = c.replicas[0].conflicts().unwrap();
    for conflict in &open {
        let local = conflict.candidates.iter().filter(|x| x.local).count();
        assert!(
            local <= 1,
            "r0's own writes conflict with each other: {conflict:?}"
        );
    }
    c.sync_all();
    for i in 0..2 {
        assert_eq!(query_one::<String>(&c.path(i), "SELECT v FROM t"), "three");
    }
    // The re-insert saw the delete and wrote over r0's own update: nothing is open.
    for i in 0..2 {
        assert_eq!(c.replicas[i].conflicts().unwrap(), []);
    }
    assert_eq!(c.hashes()[0], c.hashes()[1]);
}

#[test]
fn a_foreign_key_conflict_keeps_the_held_row_by_restoring_its_parent() {
    let mut c = orphaned_child(&[]);
    let k = c.replicas[1].conflicts().unwrap();
    let fk = k.iter().find(|k| k.kind == "foreign_key").unwrap().clone();
    assert_eq!(fk.candidates.len(), 1, "{fk:?}");
    assert!(!fk.candidates[0].winner, "the held row is not shown");
    c.replicas[1]
        .resolve(&fk.id, Resolution::Keep(fk.candidates[0].id.clone()))
        .unwrap();
    c.sync_all();
    for i in 0..2 {
        assert_eq!(
            query_one::<String>(&c.path(i), "SELECT name FROM parent"),
            "name"
        );
        assert_eq!(
            query_one::<String>(&c.path(i), "SELECT parent FROM child"),
            "p"
        );
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
    }
    assert_eq!(c.hashes()[0], c.hashes()[1]);
}

#[test]
fn a_foreign_key_conflict_can_drop_the_held_row() {
    let mut c = orphaned_child(&[]);
    let k = c.replicas[0].conflicts().unwrap();
    let fk = k.iter().find(|k| k.kind == "foreign_key").unwrap().clone();
    c.replicas[0]
        .resolve(&fk.id, Resolution::KeepWinner)
        .unwrap();
    c.sync_all();
    for i in 0..2 {
        assert_eq!(
            query_one::<i64>(&c.path(i), "SELECT count(*) FROM parent"),
            0
        );
        assert_eq!(
            query_one::<i64>(&c.path(i), "SELECT count(*) FROM child"),
            0
        );
        assert!(c.replicas[i].conflicts().unwrap().is_empty());
    }
}
