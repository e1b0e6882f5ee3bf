//! Where the value of each of a row's heads is during a transition (written by the new
//! version, kept with the metadata, or shown in the table until now), which of them the
//! table shows afterwards, and which are kept.

use super::*;
use crate::error::Result;
use crate::format::value::Value;
use crate::store::kept::{Spilled, value_of};
use crate::store::rowmeta::{CellValues, RowMeta, Version};

/// The values a transition moves a row's heads between. Only what the new state needs
/// is loaded: kept values when the row has any, the shown row when an old winner's value
/// must move or be compared.
pub(crate) struct HeadValues<'a> {
    pub(crate) origins: &'a Origins,
    pub(crate) ncols: usize,
    /// The cells the new version wrote, as (column index, version, value).
    pub(crate) new_values: &'a [(usize, Version, Value)],
    /// Whether the table showed the row before.
    pub(crate) old_mat: bool,
    /// Each cell's winner before (index 0 is the row).
    pub(crate) old_winners: Vec<Option<Version>>,
    /// Values kept with the metadata before.
    pub(crate) stored: CellValues,
    /// Which of those had spilled to `_tide_values`.
    pub(crate) spilled: Spilled,
    /// The row the table showed before, once loaded (or given by a local delete).
    pub(crate) old_visible: Option<Vec<Value>>,
}

impl<'a> HeadValues<'a> {
    /// What is known of `m0`'s values before anything is read.
    pub(crate) fn before(
        m0: &RowMeta,
        ncols: usize,
        new_values: &'a [(usize, Version, Value)],
        visible: Visible,
        origins: &'a Origins,
    ) -> Self {
        HeadValues {
            origins,
            ncols,
            new_values,
            old_mat: m0.materialized(origins),
            old_winners: (0..=ncols).map(|c| m0.winner(c, origins)).collect(),
            stored: CellValues::new(),
            spilled: Spilled::new(),
            old_visible: match visible {
                Visible::LocalDelete(vals) => Some(vals),
                _ => None,
            },
        }
    }

    /// The value head `h` of cell `c` has, if any is known.
    pub(crate) fn value(&self, c: usize, h: &Version) -> Option<&Value> {
        value_of(
            c,
            h,
            self.new_values,
            &self.stored,
            self.old_mat,
            &self.old_winners,
            &self.old_visible,
        )
    }

    /// Whether `m0` keeps values for heads it does not show.
    pub(crate) fn has_stored(&self, m0: &RowMeta) -> bool {
        m0.cells.iter().skip(1).any(|h| !h.is_empty())
            && (!self.old_mat || m0.cells.iter().skip(1).any(|h| h.len() > 1))
    }

    /// Whether some old winner's value must move or be compared: it stays a head of
    /// `m1` and is no longer shown alone.
    pub(crate) fn needs_old_visible(&self, m1: &RowMeta, new_mat: bool) -> bool {
        self.old_mat
            && (1..=self.ncols).any(|c| {
                let Some(w0) = self.old_winners[c] else {
                    return false;
                };
                let still_head = m1.cells[c].iter().any(|h| h.vref() == w0.vref());
                still_head
                    && (!new_mat
                        || m1.winner(c, self.origins).map(|w| w.vref()) != Some(w0.vref())
                        || m1.cells[c].len() > 1)
            })
    }

    /// The row `m1` shows: each column's winning value; where no version wrote a column
    /// (added after the row was written elsewhere), its constant default, as SQLite gives
    /// the rows a column is added to.
    pub(crate) fn shown_row(&self, m1: &RowMeta, defaults: &[Value]) -> Vec<Value> {
        (0..self.ncols)
            .map(|i| {
                let Some(w) = m1.winner(i + 1, self.origins) else {
                    return defaults.get(i).cloned().unwrap_or(Value::Null);
                };
                self.value(i + 1, &w).cloned().unwrap_or(Value::Null)
            })
            .collect()
    }

    /// The columns whose winner `m1` changes (an insert writes every column: none).
    pub(crate) fn changed_columns(&self, m1: &RowMeta) -> Vec<usize> {
        if !self.old_mat {
            return Vec::new();
        }
        (0..self.ncols)
            .filter(|&i| {
                m1.winner(i + 1, self.origins).map(|w| w.vref())
                    != self.old_winners[i + 1].map(|w| w.vref())
            })
            .collect()
    }

    /// The value of every head of `m1` the table does not show, wherever it was (written
    /// now, kept before, or shown until now); what is now shown or overwritten goes.
    pub(crate) fn kept(&self, m1: &RowMeta, new_mat: bool) -> CellValues {
        let mut kept = CellValues::new();
        for (c, heads) in m1.cells.iter().enumerate().skip(1).take(self.ncols) {
            let winner = m1.winner(c, self.origins);
            for h in heads {
                if !(new_mat && winner.map(|w| w.vref()) == Some(h.vref())) {
                    let value = self.value(c, h).cloned().unwrap_or(Value::Null);
                    kept.push(((c, h.origin, h.seq), value));
                }
            }
        }
        kept
    }
}

impl Merger<'_> {
    /// Loads the values a transition to `m1` needs: the kept ones, then the shown row.
    pub(crate) fn load_head_values(
        &self,
        row: &RowRef<'_>,
        m0: &RowMeta,
        m1: &RowMeta,
        new_mat: bool,
        vals: &mut HeadValues<'_>,
    ) -> Result<()> {
        if vals.has_stored(m0) {
            (vals.stored, vals.spilled) = self.stored_values(row.t, row.key_bytes)?;
        }
        if vals.old_visible.is_none() && vals.needs_old_visible(m1, new_mat) {
            vals.old_visible = self.read_row(row.t, row.key)?;
        }
        Ok(())
    }
}
