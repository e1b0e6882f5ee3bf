//! The row merge: how one version changes a row's heads, what the user table must show
//! afterwards, where every head's value is kept, and which conflicts the row now has.
//!
//! Everything that writes row state goes through [`Merger::transition`]: sealing local
//! writes, applying remote changes, resolving conflicts, holding and releasing rows in
//! constraint conflicts. One path, so the rules cannot drift apart. Its steps, in
//! order: find the values of the row's heads ([`values`]), make the table show the new
//! state ([`visible`]) or hold a row a constraint refuses ([`constraints`]), keep the
//! values of the heads it does not show, re-examine the row's conflict records
//! ([`conflict_records`]), write the metadata ([`transition`]).
//!
//! One shortcut, for speed: a row this replica has no metadata for, written whole by
//! one version with nothing overwritten, has a single head per cell, no stored values
//! and no conflicts, so [`Merger::write_fresh`] writes its metadata (and
//! [`Merger::insert_rows`] its row) directly. Whatever a constraint refuses goes back
//! to the transition. The property test compares replicas that took the shortcut with
//! replicas that merged the same rows.

pub(crate) mod conflict_records;
mod constraints;
mod rows;
#[cfg(test)]
mod tests;
mod transition;
mod values;
mod visible;
pub(crate) mod winners;

pub(crate) use constraints::constraint_reason;

use crate::format::value::Value;
use crate::store::rowmeta::Origins;
use crate::store::tables::{TableInfo, q};
use foldhash::HashMap;
use rusqlite::{Connection, Statement};
use std::rc::Rc;

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
    pub(crate) sql: std::cell::RefCell<HashMap<(i64, SqlKind), Rc<str>>>,
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
    pub(crate) hot: std::cell::RefCell<HashMap<Box<str>, Statement<'c>>>,
}

/// The per-table statements the merger runs for every row.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SqlKind {
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
    pub(crate) fn hot<T>(
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

    /// SQL text built once per merger: `key` names it (a table id, 0 for none).
    pub(crate) fn sql_for(
        &self,
        key: i64,
        kind: SqlKind,
        build: impl FnOnce() -> String,
    ) -> Rc<str> {
        let mut cache = self.sql.borrow_mut();
        Rc::clone(
            cache
                .entry((key, kind))
                .or_insert_with(|| Rc::from(build())),
        )
    }

    pub(crate) fn table_sql(&self, t: &TableInfo, kind: SqlKind) -> Rc<str> {
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
}

/// `?from, ?from+1, …` (`n` of them).
pub(crate) fn marks(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// SQL texts a merger keeps before it builds update statements afresh each time.
pub(crate) const SQL_TEXTS: usize = 256;

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
