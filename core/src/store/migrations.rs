//! tide's metadata tables, created and upgraded by numbered migrations.

use crate::error::{Error, Result};
use crate::store::kept::write_kept;
use crate::store::rowmeta::CellValues;
use rusqlite::{Connection, OptionalExtension, params};

/// Numbered migrations; `_tide_meta.migration` records how many ran. Append only.
/// The metadata layout this build writes: the number of migrations.
pub(crate) const LAYOUT: u64 = MIGRATIONS.len() as u64;

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the initial layout.
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
    // 2: what each peer said it holds (acknowledgements from bundles and sync messages).
    "CREATE TABLE _tide_acks(peer BLOB NOT NULL, origin BLOB NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY(peer, origin)) WITHOUT ROWID;",
    // 3: how a body is kept in the log: 0 as signed, 1 a zstd frame of it (`log::pack`).
    "ALTER TABLE _tide_log ADD COLUMN packing INTEGER NOT NULL DEFAULT 0;",
    // 4: change format 3. `_tide_log.body` and `_tide_quarantine.body` hold a change's
    // signed head; its chunks live here once, by BLAKE3 hash, packed like bodies were.
    "CREATE TABLE _tide_chunks(hash BLOB PRIMARY KEY, data BLOB NOT NULL,
        packing INTEGER NOT NULL);",
    // 5: which import last wrote each conflict record, so an import can say how many it
    // opened without reading every record before and after (`Merger::set_conflict`); and
    // the changes waiting to apply in causal (HLC) order, read a page at a time
    // (`log::apply_ready`) instead of all at once.
    "ALTER TABLE _tide_conflicts ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX _tide_log_pending ON _tide_log(applied, hlc, origin, seq);",
    // 6: a row's kept values live with its metadata, in `_tide_rows.vals` (the layout is
    // in `rowmeta.rs`), written by the statement that writes `meta`: one write for a
    // conflicting row instead of one per value. `_tide_values` now holds only the values
    // too large for that blob. `pack_kept_values` moves the others. Conflict records are
    // keyed by their cell: their ids are random, so a primary key on the id put every
    // record in a random place of a second B-tree, and nothing looks one up by id (ids
    // are matched by prefix, after listing). The table is rebuilt under its own name, not
    // renamed into place: a rename makes SQLite re-check every view and trigger of the
    // app's schema, and one left pointing at a dropped table would fail it.
    "ALTER TABLE _tide_rows ADD COLUMN vals BLOB;
     CREATE TEMP TABLE _tide_conflicts_5 AS SELECT tid, key, col, id, kind, epoch FROM _tide_conflicts;
     DROP TABLE _tide_conflicts;
     CREATE TABLE _tide_conflicts(tid INTEGER NOT NULL, key BLOB NOT NULL, col INTEGER NOT NULL,
        id BLOB NOT NULL, kind TEXT NOT NULL, epoch INTEGER NOT NULL,
        PRIMARY KEY(tid, key, col)) WITHOUT ROWID;
     INSERT INTO _tide_conflicts(tid, key, col, id, kind, epoch)
        SELECT tid, key, col, id, kind, epoch FROM temp._tide_conflicts_5;
     DROP TABLE temp._tide_conflicts_5;",
];

/// The migration that packs kept values into `_tide_rows.vals`.
pub(crate) const PACKED_VALUES: usize = 6;

/// The first migration after which the log holds change format 3.
pub(crate) const FORMAT_3: usize = 4;

/// Creates or upgrades tide's metadata tables. Idempotent.
pub(crate) fn migrate(conn: &Connection) -> Result<()> {
    let exists: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_tide_meta'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    let done: usize = if exists {
        conn.query_row("SELECT v FROM _tide_meta WHERE k='migration'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0) as usize
    } else {
        0
    };
    if exists && done < FORMAT_3 {
        let changes: i64 = conn.query_row(
            "SELECT (SELECT count(*) FROM _tide_log) + (SELECT count(*) FROM _tide_quarantine)",
            [],
            |r| r.get(0),
        )?;
        if changes > 0 {
            return Err(Error::Open(crate::error::OpenError::OldLogFormat));
        }
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        conn.execute_batch(sql)?;
        if i + 1 == PACKED_VALUES {
            pack_kept_values(conn)?;
        }
        conn.execute(
            "INSERT INTO _tide_meta(k, v) VALUES('migration', ?1) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            params![(i + 1) as i64],
        )?;
    }
    Ok(())
}

/// Migration 6's data step: each row's values from `_tide_values` (one SQL row per
/// value) into its `_tide_rows.vals`, a row at a time in key order; values too large for
/// the blob go back to `_tide_values`. Values of a row with no metadata name no head, so
/// they are dropped.
pub(crate) fn pack_kept_values(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE _tide_values_5 AS SELECT * FROM _tide_values;
         DELETE FROM _tide_values;",
    )?;
    let mut read = conn.prepare(
        "SELECT tid, key, col, origin, seq, value FROM temp._tide_values_5 ORDER BY tid, key",
    )?;
    let flush = |row: &mut Option<(i64, Vec<u8>)>, kept: &mut CellValues| -> Result<()> {
        if let Some((tid, key)) = row.take() {
            let has_meta: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM _tide_rows WHERE tid=?1 AND key=?2)",
                params![tid, key],
                |r| r.get(0),
            )?;
            if has_meta {
                let vals = write_kept(conn, tid, &key, kept, &[])?;
                conn.execute(
                    "UPDATE _tide_rows SET vals=?3 WHERE tid=?1 AND key=?2",
                    params![tid, key, vals],
                )?;
            }
        }
        kept.clear();
        Ok(())
    };
    let (mut row, mut kept): (Option<(i64, Vec<u8>)>, CellValues) = (None, Vec::new());
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let (tid, key): (i64, Vec<u8>) = (r.get(0)?, r.get(1)?);
        if row
            .as_ref()
            .is_none_or(|(t, k)| (*t, &k[..]) != (tid, &key[..]))
        {
            flush(&mut row, &mut kept)?;
            row = Some((tid, key));
        }
        let at = (
            r.get::<_, i64>(2)? as usize,
            r.get(3)?,
            r.get::<_, i64>(4)? as u64,
        );
        kept.push((at, r.get(5)?));
    }
    flush(&mut row, &mut kept)?;
    drop(rows);
    drop(read);
    conn.execute_batch("DROP TABLE temp._tide_values_5")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::value::Value;

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
    /// records under their id: migration 6 moves both, losing nothing.
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
        for sql in &MIGRATIONS[..n] {
            c.execute_batch(sql).unwrap();
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
