//! The visible row: making the user table show what a row's new state says.

use super::values::HeadValues;
use super::*;
use crate::error::Result;
use crate::format::value::Value;
use crate::store::rowmeta::RowMeta;

impl<'c> Merger<'c> {
    /// Makes the table show `m1` (shown when `new_mat`): inserts the row, updates the
    /// columns whose winner changed, or deletes it. A write a constraint refuses holds the
    /// row instead (setting `m1.held`). Returns whether the table shows the row.
    pub(crate) fn show(
        &mut self,
        row: &RowRef<'_>,
        m1: &mut RowMeta,
        vals: &mut HeadValues<'_>,
        new_mat: bool,
    ) -> Result<bool> {
        let t = row.t;
        if !new_mat {
            if vals.old_mat {
                if vals.old_visible.is_none() {
                    vals.old_visible = self.read_row(t, row.key)?;
                }
                self.delete_row(t, row.key)?;
            }
            return Ok(false);
        }
        // A shown row is updated in the columns whose winner changed; the values of the
        // others may not be loaded (they are in the table already).
        let row_values = vals.shown_row(m1, &t.defaults);
        let changed = vals.changed_columns(m1);
        match self.write_shown(row, vals.old_mat, &changed, &row_values) {
            Ok(()) => Ok(true),
            Err(failure) => self.refused(row, m1, vals, &changed, row_values, failure),
        }
    }

    /// Writes the shown row: an update of the `changed` columns when the table showed it
    /// before, else an insert of every column.
    pub(crate) fn write_shown(
        &self,
        row: &RowRef<'_>,
        old_mat: bool,
        changed: &[usize],
        row_values: &[Value],
    ) -> rusqlite::Result<()> {
        if old_mat {
            self.update_row(row.t, row.key, changed, row_values)
        } else {
            self.insert_row(row.t, row.key, row_values)
        }
    }
}
