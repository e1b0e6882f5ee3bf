//! Tracking a table: capture triggers installed, existing rows captured, untracking.

use crate::error::{Error, Result};
use crate::replica::{Replica, bump_epoch};
use crate::store::meta::origins_map;
use crate::store::states::CaptureOp;
use crate::store::tables::{self as tables, TableInfo};
use rusqlite::{Connection, OptionalExtension, params};

/// What `track` found worth saying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackReport {
    /// Warnings for a person (for example an INTEGER rowid-alias key).
    pub warnings: Vec<String>,
    /// False when the table was already tracked (nothing changed).
    pub newly_tracked: bool,
}

impl Replica {
    /// Starts tracking `table`: captures every later write to it, from any connection.
    pub fn track(&mut self, table: &str) -> Result<TrackReport> {
        self.seal()?;
        let tx = self.conn.transaction()?;
        let existing: Option<(i64, bool)> = tx
            .query_row(
                "SELECT tid, tracked FROM _tide_tables WHERE name=?1",
                [table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((_, true)) = existing {
            let (_, warnings) = tables::inspect(&tx, table)?;
            return Ok(TrackReport {
                warnings,
                newly_tracked: false,
            });
        }
        let tid = match existing {
            Some((tid, _)) => tid,
            None => tx.query_row(
                "SELECT coalesce(max(tid), 0) + 1 FROM _tide_tables",
                [],
                |r| r.get(0),
            )?,
        };
        let (info, warnings) = tables::table_info(&tx, tid, table)?;
        register(&tx, &info)?;
        crate::capture::triggers::install_capture(&tx, &info)?;
        bump_epoch(&tx)?;
        capture_rows(&tx, &info)?;
        if existing.is_some() {
            capture_deletes_while_untracked(&tx, &info)?;
        }
        tx.commit()?;
        Ok(TrackReport {
            warnings,
            newly_tracked: true,
        })
    }

    /// Stops tracking `table` (pending writes are sealed first). Metadata stays, so
    /// tracking it again resumes where it was.
    pub fn untrack(&mut self, table: &str) -> Result<()> {
        self.seal()?;
        let tx = self.conn.transaction()?;
        let tid: Option<i64> = tx
            .query_row(
                "SELECT tid FROM _tide_tables WHERE name=?1 AND tracked=1",
                [table],
                |r| r.get(0),
            )
            .optional()?;
        let Some(tid) = tid else {
            return Err(Error::Track(crate::error::TrackError::NotTracked(
                table.into(),
            )));
        };
        crate::capture::triggers::drop_triggers(&tx, tid)?;
        tx.execute_batch(&format!("DROP TABLE IF EXISTS _tide_cap_{tid}"))?;
        tx.execute("UPDATE _tide_tables SET tracked=0 WHERE tid=?1", [tid])?;
        bump_epoch(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Names of tracked tables.
    pub fn tracked_tables(&self) -> Result<Vec<String>> {
        Ok(tables::tracked_tables(&self.conn)?
            .into_iter()
            .map(|t| t.name)
            .collect())
    }
}

/// Records `t` as tracked, with its columns as they are now.
fn register(conn: &Connection, t: &TableInfo) -> Result<()> {
    conn.execute(
        "INSERT INTO _tide_tables(tid, name, key_columns, columns, tracked) VALUES(?1, ?2, ?3, ?4, 1)
         ON CONFLICT(tid) DO UPDATE SET key_columns=excluded.key_columns, columns=excluded.columns, tracked=1",
        params![t.tid, t.name, tables::join_names(&t.key_columns), tables::join_names(&t.columns)],
    )?;
    Ok(())
}

/// Rows already in the table are captured as inserts, so peers receive them.
fn capture_rows(conn: &Connection, t: &TableInfo) -> Result<()> {
    let keys = t
        .key_columns
        .iter()
        .map(|k| tables::q(k))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute_batch(&format!(
        "INSERT INTO {}(op, mask, {}) SELECT {}, NULL, {keys} FROM {}",
        t.cap_table(),
        key_slots(t),
        CaptureOp::Insert.stored(),
        tables::q(&t.name)
    ))?;
    Ok(())
}

/// For a table tracked before: rows deleted while untracked are captured as deletes.
/// Their last values are unknown (NULL), so a concurrent update that wins over such a
/// delete brings back only the columns it wrote.
fn capture_deletes_while_untracked(conn: &Connection, t: &TableInfo) -> Result<()> {
    let merger = crate::merge::Merger::new(conn, origins_map(conn)?);
    let mut gone = Vec::new();
    let mut stmt = conn.prepare("SELECT key FROM _tide_rows WHERE tid=?1")?;
    let keys = stmt
        .query_map([t.tid], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(stmt);
    for key_bytes in keys {
        let live = merger
            .load_meta(t, &key_bytes)?
            .is_some_and(|m| m.materialized(&merger.origins));
        let key = crate::format::value::decode_key(&key_bytes)?;
        if live && merger.read_row(t, &key)?.is_none() {
            gone.push(key);
        }
    }
    let marks = (1..=t.key_columns.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {}(op, mask, {}) VALUES ({}, NULL, {marks})",
        t.cap_table(),
        key_slots(t),
        CaptureOp::Delete.stored()
    );
    for key in gone {
        conn.execute(&sql, rusqlite::params_from_iter(key.iter()))?;
    }
    Ok(())
}

/// The capture log's key columns: `k0, k1, …`.
fn key_slots(t: &TableInfo) -> String {
    (0..t.key_columns.len())
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
