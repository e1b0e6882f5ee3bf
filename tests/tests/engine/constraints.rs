//! Merges that break the schema's constraints: UNIQUE collisions (one winner everywhere,
//! the loser held out of the table and listed), foreign keys whose parent was deleted
//! concurrently, and CHECK constraints broken by a merged row. Held rows are decided
//! alike on every replica, whatever the arrival order, and can be kept or dropped.

use tide_core::{Resolution, Value};
use tide_tests::{Cluster, query_one, series};

#[test]
fn same_unique_value_inserted_twice_keeps_one_winner_everywhere_and_records_the_loser() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
    let mut c = Cluster::new(2, schema, &["users"]);
    c.diverge(
        "INSERT INTO users VALUES ('u0', 'x@example.org', 'zero')",
        "INSERT INTO users VALUES ('u1', 'x@example.org', 'one')",
    );
    c.sync_all();
    c.assert_converged();
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
    c.exchange(0, 1);
    c.sync_all();
    c.assert_converged();
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

#[test]
fn a_unique_index_with_a_collation_decides_alike_everywhere() {
    let schema = "CREATE TABLE users(id TEXT PRIMARY KEY, email TEXT, name TEXT);
                  CREATE UNIQUE INDEX users_email ON users(email COLLATE NOCASE);";
    let mut c = Cluster::new(2, schema, &["users"]);
    c.diverge(
        "INSERT INTO users VALUES ('u0', 'X@e', 'zero')",
        "INSERT INTO users VALUES ('u1', 'x@e', 'one')",
    );
    c.sync_all();
    c.assert_converged();
    assert_eq!(c.replicas[0].conflicts().unwrap().len(), 1);
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
        c.exchange(0, 1);
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
    c.exchange(0, 1);
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
    c.exchange(0, 1);
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
        c.assert_converged();
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
        c.assert_converged();
    }
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
    c.diverge_from(
        "INSERT INTO parent VALUES ('p', 'name')",
        "DELETE FROM parent WHERE id='p'",
        "PRAGMA foreign_keys=ON; INSERT INTO child VALUES ('c', 'p', 'x')",
    );
    c.sync_all();
    c
}

#[test]
fn a_child_whose_parent_was_deleted_concurrently_is_held_not_lost() {
    let c = orphaned_child(&[]);
    c.assert_converged();
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
    c.assert_converged();
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

#[test]
fn a_merged_row_that_breaks_a_check_is_held_on_every_replica() {
    let schema =
        "CREATE TABLE range(id TEXT PRIMARY KEY, lo INTEGER, hi INTEGER, CHECK (lo <= hi));";
    let mut c = Cluster::new(2, schema, &["range"]);
    c.diverge_from(
        "INSERT INTO range VALUES ('r', 0, 10)",
        "UPDATE range SET lo = 8 WHERE id='r'",
        "UPDATE range SET hi = 5 WHERE id='r'",
    );
    c.assert_converged();
    for i in 0..2 {
        let k = c.replicas[i].conflicts().unwrap();
        assert!(k.iter().any(|k| k.kind == "check"), "{k:?}");
    }
}
