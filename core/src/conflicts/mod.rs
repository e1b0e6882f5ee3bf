//! Listing and resolving conflicts.
//!
//! A conflict is a cell with several heads holding different values (kinds `update` and
//! `insert`), a row both deleted and written concurrently (`delete`), or a row held out
//! of its table by a constraint (`unique`, `foreign_key`, `check`, `not_null`). Resolving
//! is an ordinary new change whose predecessors are all the heads; it syncs like any
//! write and closes the conflict on every replica that applies it.
//!
//! A constraint conflict offers two sides. With a row in the way (`unique`): keep the
//! row that holds the slot (the winner) and discard the held one, or keep the held row
//! and discard the other. With no row in the way, the held row is the only candidate and
//! the table without it is what shows: keeping the winner discards the held row; keeping
//! the held row brings back, for `foreign_key`, every parent it refers to that was
//! deleted here (re-inserted with the values it had), after which the row returns by
//! itself. A row held by `check` or `not_null` returns once someone writes values that
//! satisfy the constraint.

mod parents;
mod resolve;

pub use crate::store::conflict_kind::ConflictKind;

use crate::error::{Error, Result};
use crate::format::ids::{ChangeId, hex};
use crate::format::value::{Value, decode_key};
use crate::merge::{CONSTRAINT_CELL, Merger};
use crate::replica::Replica;
use crate::store::meta::origins_map;
use crate::store::rowmeta::{CellValues, Origins, ROW, RowMeta, Version};
use crate::store::tables::{self as tables, TableInfo};
use rusqlite::{OptionalExtension, params};

/// A conflict, as every replica names and shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// 32 hex characters, derived from where the conflict is and its candidates.
    pub id: String,
    /// Table name.
    pub table: String,
    /// Primary key values of the row.
    pub key: Vec<Value>,
    /// The column, or `None` for a row-level conflict (delete or constraint).
    pub column: Option<String>,
    /// What the conflict is about; shown as `update`, `insert`, `delete`, `unique`,
    /// `foreign_key`, `check` or `not_null`.
    pub kind: ConflictKind,
    /// Every candidate, the provisional winner (the value shown now) first, then in the
    /// total order every replica uses.
    pub candidates: Vec<Candidate>,
}

/// One candidate value of a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The change that wrote it, written `origin-hex:seq`; pass it to `resolve`.
    pub id: String,
    /// The change that wrote it.
    pub change: ChangeId,
    /// The writer's name, as known here.
    pub origin_name: String,
    /// True when this replica wrote it.
    pub local: bool,
    /// The writer's hybrid logical clock (milliseconds since 1970 in the high 48 bits).
    pub hlc: u64,
    /// The value: a cell value, `None` for a deletion.
    pub value: Option<Value>,
    /// True for the candidate shown now (the provisional winner).
    pub winner: bool,
}

/// How to resolve a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Keep the candidate with this id (or unique id prefix).
    Keep(String),
    /// Keep the provisional winner.
    KeepWinner,
    /// Write this value instead (cell conflicts only).
    Value(Value),
}

impl Candidate {
    pub(crate) fn new(
        replica: &Replica,
        change: ChangeId,
        hlc: u64,
        value: Option<Value>,
        winner: bool,
    ) -> Result<Candidate> {
        let name: String = replica
            .conn
            .query_row(
                "SELECT name FROM _tide_origins WHERE id=?1",
                [&change.origin.0[..]],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        Ok(Candidate {
            id: format!("{}:{}", change.origin.to_hex(), change.seq),
            change,
            origin_name: name,
            local: replica.id().ok() == Some(change.origin),
            hlc,
            value,
            winner,
        })
    }
}

impl Replica {
    /// Every open conflict, ordered by table, key and column.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        type Row = (Vec<u8>, i64, Vec<u8>, i64, ConflictKind);
        let rows: Vec<Row> = self
            .conn
            .prepare("SELECT id, tid, key, col, kind FROM _tide_conflicts ORDER BY tid, key, col")?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let tables = tables::tracked_tables(&self.conn)?;
        let mut out = Vec::new();
        for (id, tid, key, col, kind) in rows {
            let Some(t) = tables.iter().find(|t| t.tid == tid) else {
                continue;
            };
            out.push(self.describe(t, &hex(&id), &key, col, kind)?);
        }
        Ok(out)
    }

    /// One conflict by id or unique id prefix.
    pub fn conflict(&self, id: &str) -> Result<Conflict> {
        let id = id.trim().to_ascii_lowercase();
        if id.is_empty() {
            // An empty prefix would name whichever conflict happens to be alone.
            return Err(Error::Resolve(crate::error::ResolveError::UnknownConflict(
                id,
            )));
        }
        let all = self.conflicts()?;
        let mut found: Vec<Conflict> = match all.iter().position(|c| c.id == id) {
            Some(i) => vec![all[i].clone()],
            None => all.into_iter().filter(|c| c.id.starts_with(&id)).collect(),
        };
        match found.len() {
            0 => Err(Error::Resolve(crate::error::ResolveError::UnknownConflict(
                id,
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(Error::Resolve(
                crate::error::ResolveError::AmbiguousConflict(id),
            )),
        }
    }

    /// A conflict as shown: where it is, its kind and its candidates, the provisional
    /// winner first, then down the total order every replica uses.
    pub(crate) fn describe(
        &self,
        t: &TableInfo,
        id: &str,
        key_bytes: &[u8],
        col: i64,
        kind: ConflictKind,
    ) -> Result<Conflict> {
        let merger = Merger::new(&self.conn, origins_map(&self.conn)?);
        let m = merger
            .load_meta(t, key_bytes)?
            .unwrap_or_else(|| RowMeta::new(t.columns.len()));
        let key = decode_key(key_bytes)?;
        let current = merger.read_row(t, &key)?;
        let (kept, _) = merger.stored_values(t, key_bytes)?;
        let view = RowView {
            t,
            key_bytes,
            m: &m,
            origins: &merger.origins,
            current: current.as_deref(),
            kept: &kept,
        };
        let mut candidates = if col == CONSTRAINT_CELL {
            self.held_candidates(&view, &merger)?
        } else {
            self.cell_candidates(&view, col as usize)?
        };
        // The same order everywhere: the provisional winner first, then down the total order.
        candidates.sort_by_key(|c| std::cmp::Reverse((c.winner, c.hlc, c.change)));
        Ok(Conflict {
            id: id.to_string(),
            table: t.name.clone(),
            key,
            column: (col > 0).then(|| t.columns[col as usize - 1].clone()),
            kind,
            candidates,
        })
    }

    /// The candidates of a cell conflict, or of a `delete` conflict (`cell` is [`ROW`]):
    /// every head of the cell, with the value it wrote (`None` for a deletion).
    fn cell_candidates(&self, view: &RowView<'_>, cell: usize) -> Result<Vec<Candidate>> {
        let winner = view.m.winner(cell, view.origins).map(|w| w.vref());
        let mut out = Vec::with_capacity(view.m.cells[cell].len());
        for h in &view.m.cells[cell] {
            let value = if cell == ROW {
                h.alive.then(|| Value::text("(row kept)"))
            } else {
                Some(self.head_value(view, cell, h)?)
            };
            let is_winner = winner == Some(h.vref());
            let change = change_id(view.origins, h);
            out.push(Candidate::new(self, change, h.hlc, value, is_winner)?);
        }
        Ok(out)
    }

    /// The candidates of a constraint conflict: the held row, then the row that keeps its
    /// slot (the shown one), if a row is in its way. Each is shown as one value.
    fn held_candidates(&self, view: &RowView<'_>, merger: &Merger<'_>) -> Result<Vec<Candidate>> {
        let mut out = Vec::new();
        let held_values = self.row_values(&RowView {
            current: None,
            ..*view
        })?;
        if let Some(w) = view.m.winner(ROW, view.origins) {
            let change = change_id(view.origins, &w);
            let value = Some(row_value(&held_values));
            out.push(Candidate::new(self, change, w.hlc, value, false)?);
        }
        if let Some(b) = self.held_blocker(view.t, view.key_bytes)?
            && let Some(mb) = merger.load_meta(view.t, &b)?
            && let Some(wb) = mb.winner(ROW, view.origins)
        {
            let mut full = decode_key(&b)?;
            let values = merger.read_row(view.t, &full)?.unwrap_or_default();
            full.extend(values);
            let change = change_id(view.origins, &wb);
            out.push(Candidate::new(
                self,
                change,
                wb.hlc,
                Some(row_value(&full)),
                true,
            )?);
        }
        Ok(out)
    }

    /// The key of the row that keeps a held row's slot (a `unique` conflict), if any.
    fn held_blocker(&self, t: &TableInfo, key_bytes: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT blocker FROM _tide_held WHERE tid=?1 AND key=?2",
                params![t.tid, key_bytes],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    pub(crate) fn head_value(&self, row: &RowView<'_>, cell: usize, h: &Version) -> Result<Value> {
        let at = (cell, h.origin, h.seq);
        if let Some((_, v)) = row.kept.iter().find(|(k, _)| *k == at) {
            return Ok(v.clone());
        }
        if row.m.materialized(row.origins)
            && row.m.winner(cell, row.origins).map(|w| w.vref()) == Some(h.vref())
        {
            return Ok(row
                .current
                .map(|r| r[cell - 1].clone())
                .unwrap_or(Value::Null));
        }
        Ok(Value::Null)
    }

    /// The whole row (key, then columns) as tide would materialize it.
    pub(crate) fn row_values(&self, row: &RowView<'_>) -> Result<Vec<Value>> {
        let mut out = decode_key(row.key_bytes)?;
        for c in 1..=row.t.columns.len() {
            match row.m.winner(c, row.origins) {
                Some(w) => out.push(self.head_value(row, c, &w)?),
                None => out.push(Value::Null),
            }
        }
        Ok(out)
    }
}

/// A foreign key as SQLite lists it: its id, the parent table, the child's columns and
/// the parent's (`None`: the parent's primary key), in key order.
pub(crate) type ForeignKey = (i64, String, Vec<String>, Vec<Option<String>>);

/// One row's metadata and visible values, for reading candidate values.
#[derive(Clone, Copy)]
pub(crate) struct RowView<'a> {
    pub(crate) t: &'a TableInfo,
    pub(crate) key_bytes: &'a [u8],
    pub(crate) m: &'a RowMeta,
    pub(crate) origins: &'a Origins,
    pub(crate) current: Option<&'a [Value]>,
    /// Values of the heads that are not visible.
    pub(crate) kept: &'a CellValues,
}

/// The change that wrote a head.
pub(crate) fn change_id(origins: &Origins, h: &Version) -> ChangeId {
    ChangeId {
        origin: origins[&h.origin],
        seq: h.seq,
    }
}

/// A whole row shown as one value (for constraint conflicts): its values joined.
pub(crate) fn row_value(values: &[Value]) -> Value {
    Value::text(
        values
            .iter()
            .map(Value::display)
            .collect::<Vec<_>>()
            .join(", "),
    )
}
