//! Tracking a table: capture triggers installed, existing rows captured, untracking.

use crate::error::{Error, Result};
use crate::format::ids::ReplicaId;
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

    /// Where the columns each origin's last change on a tracked table named differ from
    /// the table's columns here: what this replica knows of its peers' schemas
    /// (DESIGN.md §2.12). Tables whose columns match are left out.
    pub fn schema_differences(&self) -> Result<Vec<SchemaDifference>> {
        let tables: std::collections::HashMap<String, TableInfo> =
            tables::tracked_tables(&self.conn)?
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect();
        let mut stmt = self
            .conn
            .prepare("SELECT idx, id, name FROM _tide_origins")?;
        let origins: std::collections::HashMap<i64, (ReplicaId, String)> = stmt
            .query_map([], |r| {
                let id: Vec<u8> = r.get(1)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    (ReplicaId(id.try_into().unwrap_or([0; 16])), r.get(2)?),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for (origin, table, seq, columns) in crate::store::peer_columns::all(&self.conn)? {
            let (Some(t), Some((id, name))) = (tables.get(&table), origins.get(&origin)) else {
                continue;
            };
            let d = SchemaDifference::between(t, &columns, *id, name.clone(), seq);
            if !d.is_empty() {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Names of tracked tables.
    pub fn tracked_tables(&self) -> Result<Vec<String>> {
        Ok(tables::tracked_tables(&self.conn)?
            .into_iter()
            .map(|t| t.name)
            .collect())
    }
}

/// How a peer's schema of a table differs from this replica's, as its last change on
/// the table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaDifference {
    /// The table.
    pub table: String,
    /// The peer (any origin whose changes reached this replica).
    pub origin: ReplicaId,
    /// Its name, as known here.
    pub origin_name: String,
    /// Its change that last wrote the table: what follows is as of that change.
    pub seq: u64,
    /// Columns this replica has that the peer's change did not name: the peer has not
    /// added them yet, or has dropped them.
    pub lacks: Vec<String>,
    /// Columns the peer named that this replica does not have yet: its changes wait
    /// with reason `newer_schema` until this replica's application adds them.
    pub ahead: Vec<String>,
    /// Names the peer still uses for columns renamed here: (its name, the name here).
    pub renamed: Vec<(String, String)>,
    /// Columns the peer still has that were dropped here.
    pub dropped: Vec<String>,
}

impl SchemaDifference {
    fn between(
        t: &TableInfo,
        named: &[String],
        origin: ReplicaId,
        origin_name: String,
        seq: u64,
    ) -> Self {
        let mut d = SchemaDifference {
            table: t.name.clone(),
            origin,
            origin_name,
            seq,
            lacks: Vec::new(),
            ahead: Vec::new(),
            renamed: Vec::new(),
            dropped: Vec::new(),
        };
        let mut covered = vec![false; t.columns.len()];
        for c in named {
            match t.column_index(c) {
                Some(i) => {
                    covered[i] = true;
                    if t.columns[i] != *c {
                        d.renamed.push((c.clone(), t.columns[i].clone()));
                    }
                }
                None if t.dropped.contains(c) => d.dropped.push(c.clone()),
                None => d.ahead.push(c.clone()),
            }
        }
        d.lacks = t
            .columns
            .iter()
            .zip(covered)
            .filter(|(_, seen)| !seen)
            .map(|(c, _)| c.clone())
            .collect();
        d
    }

    /// The peer's columns match this replica's.
    pub fn is_empty(&self) -> bool {
        self.lacks.is_empty()
            && self.ahead.is_empty()
            && self.renamed.is_empty()
            && self.dropped.is_empty()
    }
}

/// `table: peer b (as of its change 12) lacks email; still names age (years here)`.
impl std::fmt::Display for SchemaDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.lacks.is_empty() {
            parts.push(format!("lacks {}", self.lacks.join(", ")));
        }
        if !self.ahead.is_empty() {
            parts.push(format!("has {} (not here yet)", self.ahead.join(", ")));
        }
        for (theirs, here) in &self.renamed {
            parts.push(format!("still names {theirs} ({here} here)"));
        }
        if !self.dropped.is_empty() {
            parts.push(format!(
                "still has {} (dropped here)",
                self.dropped.join(", ")
            ));
        }
        write!(
            f,
            "{}: {} (as of its change {}) {}",
            self.table,
            self.origin_name,
            self.seq,
            parts.join("; ")
        )
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
