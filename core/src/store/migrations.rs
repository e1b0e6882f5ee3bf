//! tide's metadata tables, created and upgraded by numbered migrations.
//!
//! Migrations are append-only and frozen. Migration `n` is the function `migration_n`;
//! `_tide_meta.migration` records how many ran, and [`LAYOUT`], the layout this build
//! writes, is their number. A database is upgraded by running, in order, each migration
//! it has not had, in one transaction: every step or none. Each step runs in a savepoint
//! of its own together with the bump of the recorded number. A database of a later
//! layout than [`LAYOUT`] (written by a newer tide) is refused, never written.
//!
//! Once released, a migration never changes: a database of any earlier layout must be
//! upgraded exactly as it was by the build that introduced each step. So a migration
//! names the tables and columns of its own layout in SQL and calls no live code: where it
//! transforms data it carries its own copy of the encodings of that layout (migration 6:
//! [`pack_kept_values`]), and a later change to `rowmeta.rs` or `kept.rs` is a new
//! migration, never an edit of an old one.

mod kept_values_6;

use crate::error::{Error, Result};
use crate::store::savepoint::Savepoint;
use rusqlite::{Connection, OptionalExtension, params};

use kept_values_6::pack_kept_values;

/// One step of the layout, run inside the savepoint that records it.
type Migration = fn(&Connection) -> Result<()>;

/// Every migration, in order: the `i`th entry takes a database from layout `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[
    migration_1,
    migration_2,
    migration_3,
    migration_4,
    migration_5,
    migration_6,
    migration_7,
    migration_8,
];

/// The metadata layout this build writes: the number of migrations.
pub(crate) const LAYOUT: u64 = MIGRATIONS.len() as u64;

/// The first migration after which the log holds change format 3.
pub(crate) const FORMAT_3: usize = 4;

/// Creates or upgrades tide's metadata tables. Idempotent.
pub(crate) fn migrate(conn: &Connection) -> Result<()> {
    let done = layout_found(conn)?;
    if let Some(found) = done.filter(|n| *n > MIGRATIONS.len()) {
        return Err(Error::Open(crate::error::OpenError::NewerLayout {
            found: found as u64,
            current: LAYOUT,
        }));
    }
    if done.is_some_and(|n| n < FORMAT_3) {
        let changes: i64 = conn.query_row(
            "SELECT (SELECT count(*) FROM _tide_log) + (SELECT count(*) FROM _tide_quarantine)",
            [],
            |r| r.get(0),
        )?;
        if changes > 0 {
            return Err(Error::Open(crate::error::OpenError::OldLogFormat));
        }
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(done.unwrap_or(0)) {
        let step = Savepoint::begin(conn, "tide_migration")?;
        migration(conn)?;
        conn.execute(
            "INSERT INTO _tide_meta(k, v) VALUES('migration', ?1) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            params![(i + 1) as i64],
        )?;
        step.release()?;
    }
    Ok(())
}

/// How many migrations the database has had; `None` before the first created
/// `_tide_meta`.
fn layout_found(conn: &Connection) -> Result<Option<usize>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_tide_meta'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !exists {
        return Ok(None);
    }
    let done = conn
        .query_row("SELECT v FROM _tide_meta WHERE k='migration'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?;
    Ok(Some(done.unwrap_or(0) as usize))
}

/// 1: the initial layout.
fn migration_1(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE _tide_meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE TABLE _tide_origins(
            idx INTEGER PRIMARY KEY,
            id BLOB NOT NULL UNIQUE,
            sign_key BLOB,
            box_key BLOB,
            name TEXT NOT NULL DEFAULT '',
            stored INTEGER NOT NULL DEFAULT 0,
            applied INTEGER NOT NULL DEFAULT 0,
            peer INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE _tide_tables(
            tid INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            key_columns TEXT NOT NULL,
            columns TEXT NOT NULL,
            tracked INTEGER NOT NULL);
         CREATE TABLE _tide_log(
            origin INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            hlc INTEGER NOT NULL,
            body BLOB NOT NULL,
            sig BLOB NOT NULL,
            applied INTEGER NOT NULL,
            PRIMARY KEY(origin, seq)) WITHOUT ROWID;
         CREATE TABLE _tide_quarantine(
            qid INTEGER PRIMARY KEY,
            origin BLOB NOT NULL,
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            body BLOB NOT NULL,
            sig BLOB NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            UNIQUE(hash, reason));
         CREATE TABLE _tide_rows(tid INTEGER NOT NULL, key BLOB NOT NULL, meta BLOB NOT NULL,
            PRIMARY KEY(tid, key)) WITHOUT ROWID;
         CREATE TABLE _tide_values(tid INTEGER NOT NULL, key BLOB NOT NULL, col INTEGER NOT NULL,
            origin INTEGER NOT NULL, seq INTEGER NOT NULL, value,
            PRIMARY KEY(tid, key, col, origin, seq)) WITHOUT ROWID;
         CREATE TABLE _tide_conflicts(id BLOB PRIMARY KEY, tid INTEGER NOT NULL, key BLOB NOT NULL,
            col INTEGER NOT NULL, kind TEXT NOT NULL, UNIQUE(tid, key, col)) WITHOUT ROWID;
         CREATE TABLE _tide_held(tid INTEGER NOT NULL, key BLOB NOT NULL, reason TEXT NOT NULL,
            blocker BLOB, PRIMARY KEY(tid, key)) WITHOUT ROWID;",
    )?;
    Ok(())
}

/// 2: what each peer said it holds (acknowledgements from bundles and sync messages).
fn migration_2(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE _tide_acks(peer BLOB NOT NULL, origin BLOB NOT NULL, seq INTEGER NOT NULL,
            PRIMARY KEY(peer, origin)) WITHOUT ROWID;",
    )?;
    Ok(())
}

/// 3: how a body is kept in the log: 0 as signed, 1 a zstd frame of it (`chunks::pack`).
fn migration_3(conn: &Connection) -> Result<()> {
    conn.execute_batch("ALTER TABLE _tide_log ADD COLUMN packing INTEGER NOT NULL DEFAULT 0;")?;
    Ok(())
}

/// 4: change format 3. `_tide_log.body` and `_tide_quarantine.body` hold a change's
/// signed head; its chunks live here once, by BLAKE3 hash, packed like bodies were.
fn migration_4(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE _tide_chunks(hash BLOB PRIMARY KEY, data BLOB NOT NULL,
            packing INTEGER NOT NULL);",
    )?;
    Ok(())
}

/// 5: which import last wrote each conflict record, so an import can say how many it
/// opened without reading every record before and after (`Merger::set_conflict`); and
/// the changes waiting to apply in causal (HLC) order, read a page at a time
/// (`apply_ready`) instead of all at once.
fn migration_5(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "ALTER TABLE _tide_conflicts ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
         CREATE INDEX _tide_log_pending ON _tide_log(applied, hlc, origin, seq);",
    )?;
    Ok(())
}

/// 6: a row's kept values live with its metadata, in `_tide_rows.vals` (the layout is in
/// `rowmeta.rs`, and frozen as of this migration in [`pack_kept_values`]), written by the
/// statement that writes `meta`: one write for a conflicting row instead of one per
/// value. `_tide_values` now holds only the values too large for that blob.
/// [`pack_kept_values`] moves the others. Conflict records are keyed by their cell: their
/// ids are random, so a primary key on the id put every record in a random place of a
/// second B-tree, and nothing looks one up by id (ids are matched by prefix, after
/// listing). The table is rebuilt under its own name, not renamed into place: a rename
/// makes SQLite re-check every view and trigger of the app's schema, and one left
/// pointing at a dropped table would fail it.
fn migration_6(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "ALTER TABLE _tide_rows ADD COLUMN vals BLOB;
         CREATE TEMP TABLE _tide_conflicts_5 AS SELECT tid, key, col, id, kind, epoch FROM _tide_conflicts;
         DROP TABLE _tide_conflicts;
         CREATE TABLE _tide_conflicts(tid INTEGER NOT NULL, key BLOB NOT NULL, col INTEGER NOT NULL,
            id BLOB NOT NULL, kind TEXT NOT NULL, epoch INTEGER NOT NULL,
            PRIMARY KEY(tid, key, col)) WITHOUT ROWID;
         INSERT INTO _tide_conflicts(tid, key, col, id, kind, epoch)
            SELECT tid, key, col, id, kind, epoch FROM temp._tide_conflicts_5;
         DROP TABLE temp._tide_conflicts_5;",
    )?;
    pack_kept_values(conn)
}

/// Schema changes followed (DESIGN.md §2.12): each tracked table counts the changes of
/// its schema tide followed (`epoch`) and says why capture stopped when tide could not
/// follow one (`stopped`); a renamed column's former names map to its current name, so
/// changes that still use them apply.
fn migration_7(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "ALTER TABLE _tide_tables ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
         ALTER TABLE _tide_tables ADD COLUMN stopped TEXT;
         CREATE TABLE _tide_renamed(tid INTEGER NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL,
            PRIMARY KEY(tid, old)) WITHOUT ROWID;",
    )?;
    Ok(())
}

/// 8: dropped columns (DESIGN.md §2.12): the names of a table's columns the application
/// dropped, so changes from peers that still have them apply their other columns; and
/// the columns each origin's last change on a table named, so `status` can say where a
/// peer's schema differs from this replica's.
fn migration_8(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE _tide_dropped(tid INTEGER NOT NULL, name TEXT NOT NULL,
            PRIMARY KEY(tid, name)) WITHOUT ROWID;
         CREATE TABLE _tide_peer_columns(origin INTEGER NOT NULL, tname TEXT NOT NULL,
            seq INTEGER NOT NULL, columns TEXT NOT NULL,
            PRIMARY KEY(origin, tname)) WITHOUT ROWID;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::value::Value;
    use crate::store::rowmeta::CellValues;

    /// A database migrated to 3 by an earlier build: with changes in its log it is refused
    /// and left as it was; with none it moves on to format 3.
    #[test]
    fn a_log_of_change_format_2_is_refused_and_an_empty_one_migrates() {
        let old = |with_change: bool| {
            let c = at_migration(3);
            if with_change {
                c.execute(
                    "INSERT INTO _tide_log VALUES(1, 1, x'00', 1, x'02', x'00', 1, 0)",
                    [],
                )
                .unwrap();
            }
            c
        };
        let c = old(true);
        assert!(matches!(
            migrate(&c),
            Err(Error::Open(crate::error::OpenError::OldLogFormat))
        ));
        let tables: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name='_tide_chunks'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "nothing was changed");
        let c = old(false);
        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
    }

    /// A database at migration 5 keeps a row per value in `_tide_values` and conflict
    /// records under their id: migration 6 moves both, losing nothing. (Long: one fixture
    /// of every kind of kept value, then each of them checked.)
    #[test]
    fn migration_6_packs_each_rows_kept_values_and_keeps_its_conflict_records() {
        let c = at_migration(5);
        for (tid, key) in [(1, b"a"), (1, b"b"), (2, b"a")] {
            c.execute(
                "INSERT INTO _tide_rows(tid, key, meta) VALUES(?1, ?2, x'00')",
                params![tid, &key[..]],
            )
            .unwrap();
        }
        let values = [
            (1, &b"a"[..], 2, 3, 9, Value::text("x")),
            (1, b"a", 1, 2, 4, Value::Integer(-5)),
            (1, b"a", 1, 3, 1, Value::Null),
            (2, b"a", 1, 1, 1, Value::Blob(vec![1, 2])),
            // Too large for the blob: stays in `_tide_values`.
            (
                2,
                b"a",
                1,
                2,
                1,
                Value::Blob(vec![9; crate::store::rowmeta::KEPT_INLINE_MAX]),
            ),
            // No metadata: names no head.
            (3, b"z", 1, 1, 1, Value::Integer(1)),
        ];
        for (tid, key, col, origin, seq, v) in &values {
            c.execute(
                "INSERT INTO _tide_values VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                params![tid, key, col, origin, seq, v],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO _tide_conflicts(id, tid, key, col, kind, epoch) VALUES(x'0102', 1, x'61', 2, 'update', 7)",
            [],
        )
        .unwrap();

        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
        let vals = |tid: i64, key: &[u8]| -> Option<CellValues> {
            let blob: Option<Vec<u8>> = c
                .query_row(
                    "SELECT vals FROM _tide_rows WHERE tid=?1 AND key=?2",
                    params![tid, key],
                    |r| r.get(0),
                )
                .unwrap();
            blob.map(|b| crate::store::kept::read_kept(&c, tid, key, &b).unwrap().0)
        };
        assert_eq!(
            vals(1, b"a"),
            Some(vec![
                ((1, 2, 4), Value::Integer(-5)),
                ((1, 3, 1), Value::Null),
                ((2, 3, 9), Value::text("x")),
            ])
        );
        assert_eq!(vals(1, b"b"), None, "a row with no kept values stays NULL");
        assert_eq!(
            vals(2, b"a"),
            Some(vec![
                ((1, 1, 1), Value::Blob(vec![1, 2])),
                (
                    (1, 2, 1),
                    Value::Blob(vec![9; crate::store::rowmeta::KEPT_INLINE_MAX])
                ),
            ])
        );
        let left: Vec<(i64, i64)> = c
            .prepare("SELECT tid, origin FROM _tide_values")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            left,
            vec![(2, 2)],
            "only the value too large for the blob stays"
        );
        let conflict: (Vec<u8>, i64, Vec<u8>, i64, String, i64) = c
            .query_row(
                "SELECT id, tid, key, col, kind, epoch FROM _tide_conflicts",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!(
            conflict,
            (vec![1, 2], 1, b"a".to_vec(), 2, "update".into(), 7)
        );
    }

    /// SQLite keeps views and triggers whose table was dropped; migrations must not
    /// trip over the app's (a rename re-checks every one of them).
    #[test]
    fn migration_6_runs_beside_a_view_and_a_trigger_whose_table_is_gone() {
        let c = at_migration(5);
        c.execute_batch(
            "CREATE TABLE app(x); CREATE TABLE log(y);
             CREATE VIEW v AS SELECT x FROM gone;
             CREATE TRIGGER tr AFTER INSERT ON app BEGIN INSERT INTO log VALUES(NEW.x); END;
             DROP TABLE log;",
        )
        .unwrap();
        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
    }

    /// A database as an earlier build left it: the first `n` migrations run.
    fn at_migration(n: usize) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for migration in &MIGRATIONS[..n] {
            migration(&c).unwrap();
        }
        c.execute("INSERT INTO _tide_meta VALUES('migration', ?1)", [n as i64])
            .unwrap();
        c
    }

    fn migrations_done(c: &Connection) -> usize {
        c.query_row("SELECT v FROM _tide_meta WHERE k='migration'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as usize
    }

    #[test]
    fn migrations_are_idempotent() {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
    }
}
