//! One version's effect on one row: heads, shown values, kept values, conflicts.

use super::values::HeadValues;
use super::*;
use crate::error::Result;
use crate::format::value::Value;
use crate::store::held;
use crate::store::kept::{Spilled, write_kept};
use crate::store::rowmeta::{CellValues, RowMeta, Version};
use std::rc::Rc;

impl<'c> Merger<'c> {
    /// Moves a row from `m0` (None: never seen) to `m1`. `new_values` are the cells the
    /// new version wrote, as (column index, version, value).
    ///
    /// In this order: load the values the move needs, make the table show the new state
    /// (or hold the row), keep the values of the heads it does not show, re-examine the
    /// conflicts, write the metadata.
    pub(crate) fn transition(
        &mut self,
        row: &RowRef<'_>,
        m0: Option<&RowMeta>,
        mut m1: RowMeta,
        new_values: &[(usize, Version, Value)],
        visible: Visible,
    ) -> Result<()> {
        self.transitions += 1;
        let ncols = row.t.columns.len();
        let empty;
        let m0 = match m0 {
            Some(m) => m,
            None => {
                empty = RowMeta::new(ncols);
                &empty
            }
        };
        let origins = Rc::clone(&self.origins);
        // Unless the app already wrote the table.
        let writes_table = matches!(visible, Visible::Table);
        let mut vals = HeadValues::before(m0, ncols, new_values, visible, &origins);
        let mut new_mat = m1.materialized(&origins);
        self.load_head_values(row, m0, &m1, new_mat, &mut vals)?;
        if writes_table {
            new_mat = self.show(row, &mut m1, &mut vals, new_mat)?;
        }
        if m0.held && !m1.held {
            held::unhold(self.conn, row.t.tid, row.key_bytes)?;
        }
        let mut kept = vals.kept(&m1, new_mat);
        self.cell_conflicts(row, m0, &m1, &vals)?;
        if m1.held || m0.held {
            self.held_conflict(row, m0, &m1)?;
        }
        self.persist(row, &m1, &mut kept, &vals.spilled)
    }

    /// Writes the row's metadata with its kept values (those too large for the blob go
    /// to `_tide_values`, and those no longer spilled leave it).
    fn persist(
        &self,
        row: &RowRef<'_>,
        m1: &RowMeta,
        kept: &mut CellValues,
        spilled_before: &Spilled,
    ) -> Result<()> {
        let t = row.t;
        let meta = m1.encode();
        let vals = write_kept(self.conn, t.tid, row.key_bytes, kept, spilled_before)?;
        self.hot(
            "INSERT OR REPLACE INTO _tide_rows(tid, key, meta, vals) VALUES(?1, ?2, ?3, ?4)",
            |s| s.execute(rusqlite::params![t.tid, row.key_bytes, meta, vals]),
        )?;
        Ok(())
    }
}
