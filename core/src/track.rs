//! Tracking a table: capture triggers installed, existing rows captured, untracking.

use crate::error::{Error, Result};
use crate::replica::{Replica, bump_epoch};
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
        let fresh_tid = |tx: &rusqlite::Transaction<'_>| -> Result<i64> {
            Ok(tx.query_row(
                "SELECT coalesce(max(tid), 0) + 1 FROM _tide_tables",
                [],
                |r| r.get(0),
            )?)
        };
        let tid = match existing {
            Some((tid, _)) => tid,
            None => fresh_tid(&tx)?,
        };
        let (mut info, warnings) = tables::table_info(&tx, tid, table)?;
        // Tracked before with other columns or another key: the row metadata kept from
        // then names cells by their old positions, so the table starts afresh under a new
        // number (its rows are captured as inserts below, as on first tracking).
        let existing = match existing {
            Some((old, _)) if !same_shape(&tx, old, &info)? => {
                let tid = fresh_tid(&tx)?;
                // The old record stays (its conflicts and history with it), under a name
                // no table has.
                tx.execute(
                    "UPDATE _tide_tables SET name = name || ' (retired ' || tid || ')' WHERE tid=?1",
                    [old],
                )?;
                info.tid = tid;
                None
            }
            other => other,
        };
        register(&tx, &info)?;
        crate::capture::triggers::install_capture(&tx, &info)?;
        bump_epoch(&tx)?;
        capture_rows(&tx, &info)?;
        if existing.is_some() {
            crate::capture::follow::capture_missing_rows(&tx, &info)?;
        }
        crate::capture::follow::seen(&tx)?;
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
        crate::capture::follow::seen(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Tracked tables whose capture stopped at a schema change tide could not follow,
    /// each with why (DESIGN.md §2.12); untracking and tracking again resumes them.
    pub fn stopped_tables(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, stopped FROM _tide_tables WHERE tracked=1 AND stopped IS NOT NULL ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Each tracked table's schema epoch: how many changes of its schema tide followed
    /// since it was first tracked, counting from 1.
    pub fn table_epochs(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, epoch FROM _tide_tables WHERE tracked=1 ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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
         ON CONFLICT(tid) DO UPDATE SET key_columns=excluded.key_columns, columns=excluded.columns,
           tracked=1, stopped=NULL, epoch=epoch+1",
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
        crate::capture::follow::key_slots(t),
        CaptureOp::Insert.stored(),
        tables::q(&t.name)
    ))?;
    Ok(())
}

/// Whether table number `tid` was recorded with the key and columns `info` has now.
fn same_shape(conn: &Connection, tid: i64, info: &TableInfo) -> Result<bool> {
    let (keys, columns): (String, String) = conn.query_row(
        "SELECT key_columns, columns FROM _tide_tables WHERE tid=?1",
        [tid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(tables::split_names(&keys) == info.key_columns
        && tables::split_names(&columns) == info.columns)
}
