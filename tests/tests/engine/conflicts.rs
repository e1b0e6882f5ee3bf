//! Conflicts between concurrent writes to the same row: which edits merge and which are
//! recorded, that every replica lists a conflict alike and shows the same provisional
//! winner, how an app's later write or a resolution on one replica closes it everywhere,
//! what an import counts as opened, and large kept values stored beside the row.

use tide_core::{Replica, Resolution, Value};
use tide_tests::{Cluster, notes, query_one, series};

#[test]
fn same_cell_edits_give_one_conflict_named_alike_on_both_sides() {
    let mut c = notes(2);
    c.diverge_from(
        "INSERT INTO notes VALUES ('a', 'title', 'body', 1)",
        "UPDATE notes SET title = 'from r0' WHERE id = 'a'",
        "UPDATE notes SET title = 'from r1' WHERE id = 'a'",
    );

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
    c.assert_converged();
}

#[test]
fn edits_of_different_columns_merge_without_conflict() {
    let mut c = notes(2);
    c.diverge_from(
        "INSERT INTO notes VALUES ('a', 'title', 'body', 1)",
        "UPDATE notes SET title = 'new title' WHERE id = 'a'",
        "UPDATE notes SET body = 'new body' WHERE id = 'a'",
    );
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
    c.diverge_from(
        "INSERT INTO notes VALUES ('a', 'title', 'body', 1)",
        "DELETE FROM notes WHERE id = 'a'",
        "UPDATE notes SET n = 42 WHERE id = 'a'",
    );
    c.assert_converged();
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
    c.exchange(0, 1);
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
    c.exchange(0, 1);
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
    c.exchange(0, 1);
    assert_eq!(c.replicas[0].conflicts().unwrap().len(), 1);
    c.write(0, "UPDATE notes SET n = 3 WHERE id='a'");
    c.exchange(0, 1);
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
        c.exchange(0, 1);
        c.write(0, "INSERT INTO t VALUES ('k', 'a2', 'b2')");
        c.exchange(0, 1);
        c.assert_converged();
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
    c.assert_converged();
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
    c.exchange(0, 1);

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
    c.exchange(0, 1);
    c.assert_converged();
    for i in 0..2 {
        let rows: i64 = query_one(&c.path(i), "SELECT count(*) FROM notes");
        assert_eq!(rows, 300, "every row of the bulk insert is there");
        let mut found: Vec<(Value, String, Option<String>)> = c.replicas[i]
            .conflicts()
            .unwrap()
            .into_iter()
            .map(|k| (k.key[0].clone(), k.kind.to_string(), k.column))
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
