//! The row merge: how one version changes a row's heads, what the user table must show
//! afterwards, where every head's value is kept, and which conflicts the row now has.
//!
//! Everything that writes row state goes through [`Merger::transition`]: sealing local
//! writes, applying remote changes, resolving conflicts, holding and releasing rows in
//! constraint conflicts. One path, so the rules cannot drift apart.
//!
//! One shortcut, for speed: a row this replica has no metadata for, written whole by
//! one version with nothing overwritten, has a single head per cell, no stored values
//! and no conflicts, so [`Merger::write_fresh`] writes its metadata (and
//! [`Merger::insert_rows`] its row) directly. Whatever a constraint refuses goes back
//! to the transition. The property test compares replicas that took the shortcut with
//! replicas that merged the same rows.

use foldhash::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

use rusqlite::{Connection, ErrorCode, OptionalExtension, Statement, ToSql, params_from_iter};

use crate::error::Result;
use crate::ids::{ChangeId, ReplicaId};
use crate::rowmeta::{CellValues, Origins, ROW, RowMeta, Version, decode_kept, encode_kept};
use crate::schema::{TableInfo, q};
use crate::value::{Value, encode_key};

/// Why a row is held out of its table.
pub(crate) const HELD_UNIQUE: &str = "unique";
pub(crate) const HELD_FOREIGN_KEY: &str = "foreign_key";
pub(crate) const HELD_CHECK: &str = "check";
pub(crate) const HELD_NOT_NULL: &str = "not_null";

/// The column number of a row-level constraint conflict in `_tide_conflicts`.
pub(crate) const CONSTRAINT_CELL: i64 = -1;

/// Where the values of the previously visible row come from.
pub(crate) enum Visible {
    /// Read the user table before changing it (remote applies, holds, resolutions).
    Table,
    /// The user table already shows the new state (local seal of an insert or update):
    /// do not write it; unwritten columns still show their old winners.
    LocalWrite,
    /// The row was deleted locally; these were its last values (from the capture log).
    LocalDelete(Vec<Value>),
}

pub(crate) struct Merger<'c> {
    pub(crate) conn: &'c Connection,
    /// Shared so a transition can hold it while calling back into the merger.
    pub(crate) origins: Rc<Origins>,
    /// Per-table SQL text, built once per merger instead of once per row.
    sql: std::cell::RefCell<HashMap<(i64, SqlKind), Rc<str>>>,
    /// Conflict records this import opened (ids not there when it began) and still holds.
    pub(crate) conflicts_written: i64,
    /// The import writing through this merger (0 for a seal): stamped on the conflict
    /// records it writes, so closing one tells whether this import opened it.
    pub(crate) epoch: i64,
    /// Whether `temp._tide_closed` (ids there before this import and closed by it) has
    /// been set up for this merger.
    pub(crate) closed_any: bool,
    /// Transitions run through this merger: one that runs others (holding the rows that
    /// block a UNIQUE slot) changed rows besides its own.
    pub(crate) transitions: u64,
    /// Statements the merge runs for every row it merges, prepared once per merger (see
    /// [`Merger::hot`]).
    hot: std::cell::RefCell<HashMap<Box<str>, Statement<'c>>>,
}

/// The per-table statements the merger runs for every row.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum SqlKind {
    Read,
    Insert,
    Delete,
    /// [`Merger::batch_rows`] rows at once.
    InsertMany,
    /// An update of the columns in this mask (tables of at most 64 columns).
    Update(u64),
}

/// A row's identity.
pub(crate) struct RowRef<'a> {
    pub(crate) t: &'a TableInfo,
    pub(crate) key: &'a [Value],
    pub(crate) key_bytes: &'a [u8],
}

impl<'c> Merger<'c> {
    pub(crate) fn new(conn: &'c Connection, origins: Origins) -> Self {
        Merger {
            conn,
            origins: Rc::new(origins),
            sql: Default::default(),
            conflicts_written: 0,
            epoch: 0,
            closed_any: false,
            transitions: 0,
            hot: Default::default(),
        }
    }

    /// Runs `run` on the statement for `sql`, prepared the first time this merger runs
    /// it. For the statements run once per merged row: going through the connection's
    /// statement cache costs about 1.4 K instructions a use (moving the entry in its LRU
    /// list, clearing bindings), as much as some of these statements themselves. Only for
    /// a fixed few per table: nothing here is ever evicted.
    fn hot<T>(
        &self,
        sql: &str,
        run: impl FnOnce(&mut Statement<'c>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut hot = self.hot.borrow_mut();
        if let Some(stmt) = hot.get_mut(sql) {
            return run(stmt);
        }
        let stmt = hot.entry(Box::from(sql)).or_insert(self.conn.prepare(sql)?);
        run(stmt)
    }

    pub(crate) fn load_meta(&self, t: &TableInfo, key_bytes: &[u8]) -> Result<Option<RowMeta>> {
        let blob: Option<Vec<u8>> =
            self.hot("SELECT meta FROM _tide_rows WHERE tid=?1 AND key=?2", |s| {
                s.query_row(rusqlite::params![t.tid, key_bytes], |r| r.get(0))
                    .optional()
            })?;
        Ok(match blob {
            Some(b) => {
                let mut m = RowMeta::decode(&b)?;
                m.ensure_cells(t.columns.len());
                Some(m)
            }
            None => None,
        })
    }

    /// Rows per multi-row statement for `t`: [`BATCH`], fewer for very wide tables so a
    /// statement stays under SQLite's limit on parameters.
    pub(crate) fn batch_rows(t: &TableInfo) -> usize {
        let per_row = t.key_columns.len() + t.columns.len();
        BATCH.min(30_000 / per_row.max(1)).max(1)
    }

    /// The metadata of many rows of one table, in `keys` order, with one statement per
    /// [`BATCH`] keys.
    pub(crate) fn load_metas(&self, t: &TableInfo, keys: &[&[u8]]) -> Result<Vec<Option<RowMeta>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            if chunk.len() < BATCH / 4 {
                for k in chunk {
                    out.push(self.load_meta(t, k)?);
                }
                continue;
            }
            // Always BATCH placeholders (padded with the first key) so one prepared
            // statement serves every chunk.
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                format!(
                    "SELECT key, meta FROM _tide_rows WHERE tid=?1 AND key IN ({})",
                    marks(2, BATCH)
                )
            });
            let mut stmt = self.conn.prepare_cached(sql)?;
            let params = std::iter::once(&t.tid as &dyn ToSql)
                .chain((0..BATCH).map(|i| chunk.get(i).unwrap_or(&chunk[0]) as &dyn ToSql));
            let mut found: HashMap<Vec<u8>, Vec<u8>> = HashMap::default();
            let mut rows = stmt.query(params_from_iter(params))?;
            while let Some(r) = rows.next()? {
                found.insert(r.get(0)?, r.get(1)?);
            }
            for k in chunk {
                out.push(match found.get(*k) {
                    Some(b) => {
                        let mut m = RowMeta::decode(b)?;
                        m.ensure_cells(t.columns.len());
                        Some(m)
                    }
                    None => None,
                });
            }
        }
        Ok(out)
    }

    /// Records rows this replica never had, each written whole by `v`. A row that has
    /// metadata after all is left alone and the call fails: its caller's premise (looked
    /// up, or sealed once per key) did not hold, and going on would lose what it knew.
    pub(crate) fn write_fresh(&self, t: &TableInfo, keys: &[&[u8]], v: Version) -> Result<()> {
        let written = self.write_fresh_where_new(t, keys, v)?;
        if written != keys.len() {
            return Err(crate::error::Error::ApplyAborted(format!(
                "{} of {} rows of {} written as new already had metadata",
                keys.len() - written,
                keys.len(),
                t.name
            )));
        }
        Ok(())
    }

    /// Records rows written whole by `v` for the keys that have no metadata, leaves the
    /// others alone, and says how many it wrote.
    pub(crate) fn write_fresh_where_new(
        &self,
        t: &TableInfo,
        keys: &[&[u8]],
        v: Version,
    ) -> Result<usize> {
        let meta = RowMeta::fresh(t.columns.len(), v).encode();
        let mut written = 0;
        for chunk in keys.chunks(BATCH) {
            if chunk.len() < BATCH / 4 {
                for k in chunk {
                    written += self
                        .conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO _tide_rows(tid, key, meta) VALUES(?1, ?3, ?2)",
                        )?
                        .execute(rusqlite::params![t.tid, &meta, k])?;
                }
                continue;
            }
            // Padding repeats the first key, and is ignored as a row already there.
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                let rows = (0..BATCH)
                    .map(|i| format!("(?1, ?{}, ?2)", i + 3))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("INSERT OR IGNORE INTO _tide_rows(tid, key, meta) VALUES {rows}")
            });
            let params = [&t.tid as &dyn ToSql, &meta]
                .into_iter()
                .chain((0..BATCH).map(|i| chunk.get(i).unwrap_or(&chunk[0]) as &dyn ToSql));
            written += self
                .conn
                .prepare_cached(sql)?
                .execute(params_from_iter(params))?;
        }
        Ok(written)
    }

    /// Inserts exactly [`Merger::batch_rows`] new rows into their table in one statement.
    /// A constraint error means none went in.
    pub(crate) fn insert_rows(
        &self,
        t: &TableInfo,
        rows: &[(&[Value], &[Value])],
    ) -> rusqlite::Result<()> {
        debug_assert_eq!(rows.len(), Self::batch_rows(t));
        let sql = self.table_sql(t, SqlKind::InsertMany);
        self.conn.prepare_cached(&sql)?.execute(params_from_iter(
            rows.iter().flat_map(|(k, v)| k.iter().chain(v.iter())),
        ))?;
        Ok(())
    }

    /// Inserts a new row into its table. False when a constraint refuses it (nothing
    /// was written; the full transition then decides what is held).
    pub(crate) fn insert_fresh_row(
        &self,
        t: &TableInfo,
        key: &[Value],
        values: &[Value],
    ) -> Result<bool> {
        match self.insert_row(t, key, values) {
            Ok(()) => Ok(true),
            Err(e) if constraint_reason(&e).is_some() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The values a row keeps for its heads that are not visible (`_tide_rows.vals`, and
    /// `_tide_values` for those that spilled), and which had spilled.
    pub(crate) fn stored_values(
        &self,
        t: &TableInfo,
        key_bytes: &[u8],
    ) -> Result<(CellValues, Spilled)> {
        let blob: Option<Option<Vec<u8>>> = self
            .conn
            .prepare_cached("SELECT vals FROM _tide_rows WHERE tid=?1 AND key=?2")?
            .query_row(rusqlite::params![t.tid, key_bytes], |r| r.get(0))
            .optional()?;
        match blob.flatten() {
            Some(b) => read_kept(self.conn, t.tid, key_bytes, &b),
            None => Ok((CellValues::new(), Spilled::new())),
        }
    }

    /// The row named exactly by `key`: SQLite calls 7 and 7.0, or 0.0 and -0.0, the same
    /// key, tide does not (values are bit-exact), so a row found under an equal but
    /// differently typed key is not this row.
    pub(crate) fn read_row(&self, t: &TableInfo, key: &[Value]) -> Result<Option<Vec<Value>>> {
        let sql = self.table_sql(t, SqlKind::Read);
        let (nk, n) = (t.key_columns.len(), t.key_columns.len() + t.columns.len());
        let row = self.hot(&sql, |s| {
            s.query_row(params_from_iter(key.iter()), |r| {
                (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .optional()
        })?;
        Ok(row.filter(|r| r[..nk] == *key).map(|mut r| r.split_off(nk)))
    }

    /// SQL text built once per merger: `key` names it (a table id, 0 for none).
    fn sql_for(&self, key: i64, kind: SqlKind, build: impl FnOnce() -> String) -> Rc<str> {
        let mut cache = self.sql.borrow_mut();
        Rc::clone(
            cache
                .entry((key, kind))
                .or_insert_with(|| Rc::from(build())),
        )
    }

    fn table_sql(&self, t: &TableInfo, kind: SqlKind) -> Rc<str> {
        self.sql_for(t.tid, kind, || {
            let cols = t.quoted_columns();
            match kind {
                SqlKind::Read => format!(
                    "SELECT {} FROM {} WHERE {}",
                    cols.join(", "),
                    q(&t.name),
                    key_where(t)
                ),
                // OR ABORT overrides a table's own ON CONFLICT clause (REPLACE would delete
                // rows unseen, IGNORE would drop the write, ROLLBACK would end our transaction).
                SqlKind::Insert => {
                    let marks = (1..=cols.len())
                        .map(|i| format!("?{i}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!(
                        "INSERT OR ABORT INTO {}({}) VALUES({marks})",
                        q(&t.name),
                        cols.join(", ")
                    )
                }
                SqlKind::Delete => format!("DELETE FROM {} WHERE {}", q(&t.name), key_where(t)),
                SqlKind::InsertMany => {
                    let width = cols.len();
                    format!(
                        "INSERT OR ABORT INTO {}({}) VALUES {}",
                        q(&t.name),
                        cols.join(", "),
                        (0..Self::batch_rows(t))
                            .map(|r| format!("({})", marks(1 + r * width, width)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
                SqlKind::Update(_) => {
                    unreachable!("built where used")
                }
            }
        })
    }

    /// Moves a row from `m0` (None: never seen) to `m1`. `new_values` are the cells the
    /// new version wrote, as (column index, version, value).
    pub(crate) fn transition(
        &mut self,
        row: &RowRef<'_>,
        m0: Option<&RowMeta>,
        mut m1: RowMeta,
        new_values: &[(usize, Version, Value)],
        visible: Visible,
    ) -> Result<()> {
        self.transitions += 1;
        let t = row.t;
        let ncols = t.columns.len();
        let empty;
        let m0 = match m0 {
            Some(m) => m,
            None => {
                empty = RowMeta::new(ncols);
                &empty
            }
        };
        let origins = Rc::clone(&self.origins);
        let origins = &*origins;
        let old_mat = m0.materialized(origins);
        let old_winners: Vec<Option<Version>> =
            (0..=ncols).map(|c| m0.winner(c, origins)).collect();

        // Values of heads that are neither new nor visible are kept with the metadata.
        let has_stored = m0.cells.iter().skip(1).any(|h| !h.is_empty())
            && (!old_mat || m0.cells.iter().skip(1).any(|h| h.len() > 1));
        let (stored, spilled_before) = if has_stored {
            self.stored_values(t, row.key_bytes)?
        } else {
            (CellValues::new(), Spilled::new())
        };

        // The previously visible row, loaded only when some old winner's value must move
        // or be compared.
        let mut old_visible: Option<Vec<Value>> = match &visible {
            Visible::LocalDelete(vals) => Some(vals.clone()),
            _ => None,
        };
        let mut new_mat = m1.materialized(origins);
        let needs_old_visible = |m1: &RowMeta, new_mat: bool| {
            old_mat
                && (1..=ncols).any(|c| {
                    let Some(w0) = old_winners[c] else {
                        return false;
                    };
                    let still_head = m1.cells[c].iter().any(|h| h.vref() == w0.vref());
                    still_head
                        && (!new_mat
                            || m1.winner(c, origins).map(|w| w.vref()) != Some(w0.vref())
                            || m1.cells[c].len() > 1)
                })
        };
        if old_visible.is_none() && needs_old_visible(&m1, new_mat) {
            old_visible = self.read_row(t, row.key)?;
        }

        // Write the user table (unless the app already did).
        if !matches!(visible, Visible::LocalWrite | Visible::LocalDelete(_)) {
            if new_mat {
                let values =
                    |this: &Self, m1: &RowMeta, old_visible: &Option<Vec<Value>>| -> Vec<Value> {
                        (0..ncols)
                            .map(|i| {
                                let Some(w) = m1.winner(i + 1, &this.origins) else {
                                    return Value::Null;
                                };
                                value_of(
                                    i + 1,
                                    &w,
                                    new_values,
                                    &stored,
                                    old_mat,
                                    &old_winners,
                                    old_visible,
                                )
                                .cloned()
                                .unwrap_or(Value::Null)
                            })
                            .collect()
                    };
                // A shown row is updated in the columns whose winner changed; the values
                // of the others may not be loaded (they are in the table already).
                let mut row_values = values(self, &m1, &old_visible);
                let changed: Vec<usize> = if old_mat {
                    (0..ncols)
                        .filter(|&i| {
                            m1.winner(i + 1, origins).map(|w| w.vref())
                                != old_winners[i + 1].map(|w| w.vref())
                        })
                        .collect()
                } else {
                    Vec::new() // an insert writes every column
                };
                let write = |this: &Self, row_values: &[Value]| {
                    if old_mat {
                        this.update_row(t, row.key, &changed, row_values)
                    } else {
                        this.insert_row(t, row.key, row_values)
                    }
                };
                match write(self, &row_values) {
                    Ok(()) => {}
                    Err(failure) => {
                        let Some(reason) = constraint_reason(&failure) else {
                            return Err(failure.into());
                        };
                        // Finding the rows in the way, holding this one and showing its
                        // conflict all need the whole row: load the unchanged columns.
                        if old_mat && old_visible.is_none() {
                            old_visible = self.read_row(t, row.key)?;
                            row_values = values(self, &m1, &old_visible);
                        }
                        let won = reason == HELD_UNIQUE
                            && self.try_evict_blockers(row, &m1, &row_values)?;
                        let retried = if won {
                            write(self, &row_values)
                        } else {
                            Err(failure)
                        };
                        if retried.is_err() {
                            m1.held = true;
                            new_mat = false;
                            if old_mat {
                                self.delete_row(t, row.key)?;
                            }
                            let blocker = if reason == HELD_UNIQUE {
                                self.find_unique_blockers(t, row.key, &row_values)?
                                    .into_iter()
                                    .next()
                            } else {
                                None
                            };
                            self.conn.prepare_cached("INSERT INTO _tide_held(tid, key, reason, blocker) VALUES(?1, ?2, ?3, ?4)
                                 ON CONFLICT(tid, key) DO UPDATE SET reason=excluded.reason, blocker=excluded.blocker")?.execute(rusqlite::params![t.tid, row.key_bytes, reason, blocker])?;
                        }
                    }
                }
            } else if old_mat {
                if old_visible.is_none() {
                    old_visible = self.read_row(t, row.key)?;
                }
                self.delete_row(t, row.key)?;
            }
        }
        if m0.held && !m1.held {
            self.conn
                .prepare_cached("DELETE FROM _tide_held WHERE tid=?1 AND key=?2")?
                .execute(rusqlite::params![t.tid, row.key_bytes])?;
        }
        let new_winners: Vec<Option<Version>> =
            (0..=ncols).map(|c| m1.winner(c, origins)).collect();

        // Keep the value of every head that is not visible, wherever it was (written now,
        // kept before, or shown until now); what is now visible or overwritten goes.
        let lookup = |c: usize, h: &Version| {
            value_of(
                c,
                h,
                new_values,
                &stored,
                old_mat,
                &old_winners,
                &old_visible,
            )
        };
        let mut kept = CellValues::new();
        for (c, (heads, winner)) in m1.cells.iter().zip(&new_winners).enumerate().skip(1) {
            for h in heads {
                if !(new_mat && winner.map(|w| w.vref()) == Some(h.vref())) {
                    let value = lookup(c, h).cloned().unwrap_or(Value::Null);
                    kept.push(((c, h.origin, h.seq), value));
                }
            }
        }

        // Conflicts: any cell that has or had several heads is re-examined.
        for c in 0..=ncols {
            if m1.cells[c].len() < 2 && m0.cells[c].len() < 2 {
                continue;
            }
            let kind = if c == ROW {
                let alive = m1.cells[c].iter().any(|h| h.alive);
                let dead = m1.cells[c].iter().any(|h| !h.alive);
                (alive && dead).then_some("delete")
            } else {
                // Several heads whose values are not all one value (a missing one is NULL).
                let mut values = m1.cells[c].iter().map(|h| lookup(c, h).unwrap_or(&NULL));
                let first = values.next();
                let differ = first.is_some_and(|first| values.any(|v| v != first));
                differ.then(|| {
                    if m1.cells[c].iter().all(|h| h.created) {
                        "insert"
                    } else {
                        "update"
                    }
                })
            };
            // A cell has a conflict record only while it has several heads.
            let may_exist = m0.cells[c].len() >= 2;
            if kind.is_none() && !may_exist {
                continue;
            }
            let col = if c == ROW {
                ""
            } else {
                t.columns[c - 1].as_str()
            };
            let candidates: Vec<ChangeId> = m1.cells[c].iter().map(|h| self.change_id(h)).collect();
            self.set_conflict(row, c as i64, col, kind, &candidates, may_exist)?;
        }
        // A held row is a constraint conflict between it and the row that keeps its slot.
        if m1.held || m0.held {
            let reason: Option<String> = if m1.held {
                self.conn
                    .query_row(
                        "SELECT reason FROM _tide_held WHERE tid=?1 AND key=?2",
                        rusqlite::params![t.tid, row.key_bytes],
                        |r| r.get(0),
                    )
                    .optional()?
            } else {
                None
            };
            let candidates: Vec<ChangeId> =
                m1.cells[ROW].iter().map(|h| self.change_id(h)).collect();
            // A row has a constraint conflict record only while it is held.
            self.set_conflict(
                row,
                CONSTRAINT_CELL,
                "",
                reason.as_deref(),
                &candidates,
                m0.held,
            )?;
        }

        let meta = m1.encode();
        let vals = write_kept(self.conn, t.tid, row.key_bytes, &mut kept, &spilled_before)?;
        self.hot(
            "INSERT OR REPLACE INTO _tide_rows(tid, key, meta, vals) VALUES(?1, ?2, ?3, ?4)",
            |s| s.execute(rusqlite::params![t.tid, row.key_bytes, meta, vals]),
        )?;
        Ok(())
    }

    fn change_id(&self, h: &Version) -> ChangeId {
        ChangeId {
            origin: self.origins[&h.origin],
            seq: h.seq,
        }
    }

    fn set_conflict(
        &mut self,
        row: &RowRef<'_>,
        col: i64,
        col_name: &str,
        kind: Option<&str>,
        candidates: &[ChangeId],
        may_exist: bool,
    ) -> Result<()> {
        let existing: Option<(Vec<u8>, i64)> = if may_exist {
            self.conn
                .prepare_cached(
                    "SELECT id, epoch FROM _tide_conflicts WHERE tid=?1 AND key=?2 AND col=?3",
                )?
                .query_row(rusqlite::params![row.t.tid, row.key_bytes, col], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?
        } else {
            None
        };
        let id =
            kind.map(|kind| conflict_id(&row.t.name, row.key_bytes, col_name, kind, candidates));
        if let Some((old, _)) = &existing
            && id.as_ref().is_some_and(|id| id[..] == old[..])
        {
            return Ok(());
        }
        if let Some((old, epoch)) = &existing {
            self.note_closed(old, *epoch)?;
        }
        let (Some(kind), Some(id)) = (kind, id) else {
            if existing.is_some() {
                self.conn
                    .prepare_cached(
                        "DELETE FROM _tide_conflicts WHERE tid=?1 AND key=?2 AND col=?3",
                    )?
                    .execute(rusqlite::params![row.t.tid, row.key_bytes, col])?;
            }
            return Ok(());
        };
        self.note_opened(&id)?;
        let epoch = self.epoch;
        self.hot(
            "INSERT OR REPLACE INTO _tide_conflicts(id, tid, key, col, kind, epoch) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
            |s| s.execute(rusqlite::params![&id[..], row.t.tid, row.key_bytes, col, kind, epoch]),
        )?;
        Ok(())
    }

    /// A conflict record goes (closed, or replaced by one with other candidates). One this
    /// import opened is no longer counted; one that was there before is remembered, so
    /// that opening it again (a held row released and held again) does not count.
    fn note_closed(&mut self, id: &[u8], epoch: i64) -> Result<()> {
        if self.epoch != 0 && epoch == self.epoch {
            self.conflicts_written -= 1;
            return Ok(());
        }
        if !self.closed_any {
            self.conn.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS _tide_closed(id BLOB PRIMARY KEY);
                 DELETE FROM temp._tide_closed;",
            )?;
            self.closed_any = true;
        }
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO temp._tide_closed(id) VALUES(?1)")?
            .execute([id])?;
        Ok(())
    }

    /// A conflict record is written with `id`: opened by this import unless it was there
    /// before and closed earlier in it.
    fn note_opened(&mut self, id: &[u8]) -> Result<()> {
        if self.closed_any
            && self
                .conn
                .prepare_cached("DELETE FROM temp._tide_closed WHERE id=?1")?
                .execute([id])?
                > 0
        {
            return Ok(());
        }
        self.conflicts_written += 1;
        Ok(())
    }

    fn insert_row(&self, t: &TableInfo, key: &[Value], values: &[Value]) -> rusqlite::Result<()> {
        let sql = self.table_sql(t, SqlKind::Insert);
        self.hot(&sql, |s| {
            s.execute(params_from_iter(key.iter().chain(values)))
        })?;
        Ok(())
    }

    fn update_row(
        &self,
        t: &TableInfo,
        key: &[Value],
        changed: &[usize],
        values: &[Value],
    ) -> rusqlite::Result<()> {
        if changed.is_empty() {
            return Ok(());
        }
        let nkey = key.len();
        let build = || {
            let sets = changed
                .iter()
                .enumerate()
                .map(|(j, &i)| format!("{} = ?{}", q(&t.columns[i]), nkey + j + 1))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "UPDATE OR ABORT {} SET {sets} WHERE {}",
                q(&t.name),
                key_where(t)
            )
        };
        // One statement per set of changed columns: up to 2^ncols of them, so their text
        // is kept for a bounded number of sets, and the statements stay in the
        // connection's LRU cache rather than with the merger.
        let sql: Rc<str> = if t.columns.len() <= 64 && self.sql.borrow().len() < SQL_TEXTS {
            let mask = changed.iter().fold(0u64, |m, &i| m | 1 << i);
            self.sql_for(t.tid, SqlKind::Update(mask), build)
        } else {
            Rc::from(build())
        };
        self.conn.prepare_cached(&sql)?.execute(params_from_iter(
            key.iter().chain(changed.iter().map(|&i| &values[i])),
        ))?;
        Ok(())
    }

    pub(crate) fn delete_row(&self, t: &TableInfo, key: &[Value]) -> Result<()> {
        let sql = self.table_sql(t, SqlKind::Delete);
        self.conn
            .prepare_cached(&sql)?
            .execute(params_from_iter(key.iter()))?;
        Ok(())
    }

    /// Rows that hold, in some UNIQUE index (the primary key included: keys that differ
    /// byte-wise can still collide, like 1 and 1.0), the values `values` would take.
    pub(crate) fn find_unique_blockers(
        &self,
        t: &TableInfo,
        key: &[Value],
        values: &[Value],
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for index in crate::schema::unique_indexes(self.conn, &t.name)? {
            let mut conds = Vec::new();
            let mut args: Vec<Value> = Vec::new();
            let mut usable = true;
            for (c, coll) in &index.columns {
                let v = if let Some(i) = t.columns.iter().position(|x| x == c) {
                    values[i].clone()
                } else if let Some(i) = t.key_columns.iter().position(|x| x == c) {
                    key[i].clone()
                } else {
                    usable = false;
                    break;
                };
                if v == Value::Null {
                    usable = false; // NULLs never collide in a UNIQUE index
                    break;
                }
                args.push(v);
                conds.push(format!("{} = ?{} COLLATE {}", q(c), args.len(), q(coll)));
            }
            if !usable {
                continue;
            }
            let keys = t
                .key_columns
                .iter()
                .map(|k| q(k))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {keys} FROM {} WHERE {}",
                q(&t.name),
                conds.join(" AND ")
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let n = t.key_columns.len();
            let found = stmt
                .query_map(params_from_iter(args.iter()), |r| {
                    (0..n)
                        .map(|i| r.get::<_, Value>(i))
                        .collect::<rusqlite::Result<Vec<_>>>()
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for k in found {
                if k != key {
                    let kb = encode_key(&k);
                    if !out.contains(&kb) {
                        out.push(kb);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The row's priority in a constraint conflict: the older birth keeps the slot.
    pub(crate) fn priority(
        &self,
        m: &RowMeta,
        key_bytes: &[u8],
    ) -> (u64, Option<ReplicaId>, u64, Vec<u8>) {
        match m.birth(&self.origins) {
            Some(b) => (
                b.hlc,
                Some(self.origins[&b.origin]),
                b.seq,
                key_bytes.to_vec(),
            ),
            None => (u64::MAX, None, u64::MAX, key_bytes.to_vec()),
        }
    }

    /// When the incoming row outranks every row blocking it in a UNIQUE index, holds
    /// those rows instead. Returns whether the way is now clear.
    fn try_evict_blockers(
        &mut self,
        row: &RowRef<'_>,
        m1: &RowMeta,
        values: &[Value],
    ) -> Result<bool> {
        let t = row.t;
        let blockers = self.find_unique_blockers(t, row.key, values)?;
        if blockers.is_empty() {
            return Ok(false);
        }
        let mine = self.priority(m1, row.key_bytes);
        let mut metas = Vec::new();
        for b in &blockers {
            let Some(mb) = self.load_meta(t, b)? else {
                return Ok(false);
            };
            if self.priority(&mb, b) <= mine {
                return Ok(false);
            }
            metas.push(mb);
        }
        for (b, mb) in blockers.iter().zip(metas) {
            let key = crate::value::decode_key(b)?;
            let mut held = mb.clone();
            held.held = true;
            self.conn.prepare_cached("INSERT INTO _tide_held(tid, key, reason, blocker) VALUES(?1, ?2, ?3, ?4)
                 ON CONFLICT(tid, key) DO UPDATE SET reason=excluded.reason, blocker=excluded.blocker")?.execute(rusqlite::params![t.tid, b, HELD_UNIQUE, row.key_bytes])?;
            self.transition(
                &RowRef {
                    t,
                    key: &key,
                    key_bytes: b,
                },
                Some(&mb),
                held,
                &[],
                Visible::Table,
            )?;
        }
        Ok(true)
    }

    /// Puts `key` on hold with `reason` (used for foreign key violations found at commit).
    pub(crate) fn hold(&mut self, t: &TableInfo, key: &[Value], reason: &str) -> Result<()> {
        let key_bytes = encode_key(key);
        let Some(m0) = self.load_meta(t, &key_bytes)? else {
            return Ok(());
        };
        if m0.held {
            return Ok(());
        }
        let mut m1 = m0.clone();
        m1.held = true;
        self.conn
            .prepare_cached(
                "INSERT INTO _tide_held(tid, key, reason, blocker) VALUES(?1, ?2, ?3, NULL)
             ON CONFLICT(tid, key) DO UPDATE SET reason=excluded.reason, blocker=NULL",
            )?
            .execute(rusqlite::params![t.tid, key_bytes, reason])?;
        self.transition(
            &RowRef {
                t,
                key,
                key_bytes: &key_bytes,
            },
            Some(&m0),
            m1,
            &[],
            Visible::Table,
        )
    }

    /// Tries to put a held row back into its table; it stays held if it still cannot go in.
    pub(crate) fn release(&mut self, t: &TableInfo, key_bytes: &[u8]) -> Result<()> {
        let Some(m0) = self.load_meta(t, key_bytes)? else {
            return Ok(());
        };
        if !m0.held {
            return Ok(());
        }
        let key = crate::value::decode_key(key_bytes)?;
        let mut m1 = m0.clone();
        m1.held = false;
        self.transition(
            &RowRef {
                t,
                key: &key,
                key_bytes,
            },
            Some(&m0),
            m1,
            &[],
            Visible::Table,
        )
    }
}

/// Classifies a failed write: a constraint we hold rows for, or `None` for a real error.
pub(crate) fn constraint_reason(e: &rusqlite::Error) -> Option<&'static str> {
    if let rusqlite::Error::SqliteFailure(f, _) = e
        && f.code == ErrorCode::ConstraintViolation
    {
        return Some(match f.extended_code {
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => HELD_UNIQUE,
            rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => HELD_FOREIGN_KEY,
            rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL => HELD_NOT_NULL,
            _ => HELD_CHECK,
        });
    }
    None
}

/// Where a spilled value is: (cell, local origin number, seq).
pub(crate) type Spilled = Vec<(usize, i64, u64)>;

/// A row's kept values from its `vals` blob, with those that spilled read back from
/// `_tide_values`; and which had spilled. A spilled value that is not there is damage,
/// reported as such.
pub(crate) fn read_kept(
    conn: &Connection,
    tid: i64,
    key_bytes: &[u8],
    blob: &[u8],
) -> Result<(CellValues, Spilled)> {
    let mut spilled = Spilled::new();
    let mut out = CellValues::new();
    for (at, value) in decode_kept(blob)? {
        let value = match value {
            Some(v) => v,
            None => {
                spilled.push(at);
                conn.prepare_cached(
                    "SELECT value FROM _tide_values WHERE tid=?1 AND key=?2 AND col=?3 AND origin=?4 AND seq=?5",
                )?
                .query_row(
                    rusqlite::params![tid, key_bytes, at.0 as i64, at.1, at.2 as i64],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(crate::error::DecodeError::Malformed("kept value missing from _tide_values"))?
            }
        };
        out.push((at, value));
    }
    Ok((out, spilled))
}

/// The `vals` blob that keeps `kept` for a row, after putting the values that do not fit
/// in it in `_tide_values`. `before` are the row's values there until now: a version's
/// value never changes, so one still spilled stays as it is, and only those no longer
/// spilled go.
pub(crate) fn write_kept(
    conn: &Connection,
    tid: i64,
    key_bytes: &[u8],
    kept: &mut CellValues,
    before: &[(usize, i64, u64)],
) -> Result<Option<Vec<u8>>> {
    let (blob, spilled) = encode_kept(kept);
    let now: Spilled = spilled.iter().map(|&i| kept[i].0).collect();
    for (cell, origin, seq) in before.iter().filter(|at| !now.contains(at)) {
        conn.prepare_cached(
            "DELETE FROM _tide_values WHERE tid=?1 AND key=?2 AND col=?3 AND origin=?4 AND seq=?5",
        )?
        .execute(rusqlite::params![
            tid,
            key_bytes,
            *cell as i64,
            origin,
            *seq as i64
        ])?;
    }
    for i in spilled
        .into_iter()
        .filter(|&i| !before.contains(&kept[i].0))
    {
        let ((cell, origin, seq), value) = &kept[i];
        conn.prepare_cached(
            "INSERT OR REPLACE INTO _tide_values(tid, key, col, origin, seq, value) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(rusqlite::params![tid, key_bytes, *cell as i64, origin, *seq as i64, value])?;
    }
    Ok(blob)
}

/// A head's value: written now, kept with the row's metadata, or visible in the old row.
fn value_of<'a>(
    c: usize,
    h: &Version,
    new_values: &'a [(usize, Version, Value)],
    stored: &'a CellValues,
    old_mat: bool,
    old_winners: &[Option<Version>],
    old_visible: &'a Option<Vec<Value>>,
) -> Option<&'a Value> {
    let at = (c, h.origin, h.seq);
    if let Some((_, _, v)) = new_values
        .iter()
        .find(|(col, v, _)| (col + 1, v.origin, v.seq) == at)
    {
        return Some(v);
    }
    if let Some((_, v)) = stored.iter().find(|(k, _)| *k == at) {
        return Some(v);
    }
    if old_mat && old_winners[c].map(|w| w.vref()) == Some(h.vref()) {
        return old_visible.as_ref().map(|row| &row[c - 1]);
    }
    None
}

/// What a head with no value found reads as.
static NULL: Value = Value::Null;

/// `?from, ?from+1, …` (`n` of them).
fn marks(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// SQL texts a merger keeps before it builds update statements afresh each time.
const SQL_TEXTS: usize = 256;

/// Rows handled by one multi-row statement when sealing and applying.
pub(crate) const BATCH: usize = 128;

/// `k1 = ?1 AND k2 = ?2 …`
pub(crate) fn key_where(t: &TableInfo) -> String {
    t.key_columns
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ?{}", q(k), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The id every replica gives the same conflict: a hash of where it is and who the
/// candidates are.
pub(crate) fn conflict_id(
    table: &str,
    key_bytes: &[u8],
    col: &str,
    kind: &str,
    candidates: &[ChangeId],
) -> [u8; 16] {
    let mut sorted = candidates.to_vec();
    sorted.sort();
    // The hashed input is gathered first: one update instead of a dozen small ones, and
    // the derived-key hasher is set up once per process.
    let mut input = Vec::with_capacity(64 + key_bytes.len() + 24 * sorted.len());
    for part in [table.as_bytes(), key_bytes, col.as_bytes(), kind.as_bytes()] {
        input.extend_from_slice(&(part.len() as u64).to_le_bytes());
        input.extend_from_slice(part);
    }
    for c in &sorted {
        input.extend_from_slice(&c.origin.0);
        input.extend_from_slice(&c.seq.to_le_bytes());
    }
    static HASHER: OnceLock<blake3::Hasher> = OnceLock::new();
    let mut h = HASHER
        .get_or_init(|| blake3::Hasher::new_derive_key("tide 2026-11 conflict id v1"))
        .clone();
    h.update(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Updates of many different column sets (a statement each) once kept every
    /// statement with the merger for the whole import: memory grew with the number of
    /// sets, up to 2^ncols.
    #[test]
    fn update_statements_for_many_column_sets_stay_bounded() {
        let conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&conn).unwrap();
        let columns: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        conn.execute_batch(&format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, {}); INSERT INTO t(id) VALUES(1);",
            columns.join(", ")
        ))
        .unwrap();
        let t = TableInfo {
            tid: 1,
            name: "t".into(),
            key_columns: vec!["id".into()],
            untyped: vec![true; columns.len()],
            columns,
            key_untyped: vec![false],
        };
        let merger = Merger::new(&conn, Origins::default());
        let key = [Value::Integer(1)];
        let values: Vec<Value> = (0..12).map(Value::Integer).collect();
        for mask in 1..4096u32 {
            let changed: Vec<usize> = (0..12).filter(|i| mask & (1 << i) != 0).collect();
            merger.update_row(&t, &key, &changed, &values).unwrap();
        }
        let last: i64 = conn
            .query_row("SELECT c11 FROM t WHERE id=1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(last, 11, "the updates ran");
        assert!(merger.sql.borrow().len() <= SQL_TEXTS);
        assert!(merger.hot.borrow().len() <= 4);
    }

    /// Replicas of different builds must name a conflict alike: the id is BLAKE3 in
    /// derive-key mode over each part's length and bytes, then the sorted candidates,
    /// however the input is fed to the hasher.
    #[test]
    fn a_conflict_id_is_the_documented_hash_whatever_the_candidate_order() {
        let a = ChangeId {
            origin: ReplicaId([7; 16]),
            seq: 3,
        };
        let b = ChangeId {
            origin: ReplicaId([2; 16]),
            seq: 300,
        };
        let mut h = blake3::Hasher::new_derive_key("tide 2026-11 conflict id v1");
        for part in [&b"notes"[..], b"\x01\x02", b"title", b"update"] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for c in [b, a] {
            h.update(&c.origin.0);
            h.update(&c.seq.to_le_bytes());
        }
        let hash = h.finalize();
        let want = &hash.as_bytes()[..16];
        assert_eq!(
            conflict_id("notes", b"\x01\x02", "title", "update", &[a, b]),
            want
        );
        assert_eq!(
            conflict_id("notes", b"\x01\x02", "title", "update", &[b, a]),
            want
        );
        assert_ne!(
            conflict_id("notes", b"\x01\x02", "title", "insert", &[a, b]),
            want
        );
    }
}
