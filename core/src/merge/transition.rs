//! One version's effect on one row: heads, shown values, kept values, conflicts.

use super::*;
use crate::error::Result;
use crate::format::ids::ChangeId;
use crate::format::value::Value;
use crate::store::kept::{NULL, Spilled, value_of, write_kept};
use crate::store::rowmeta::{CellValues, ROW, RowMeta, Version};
use rusqlite::OptionalExtension;
use std::rc::Rc;

impl<'c> Merger<'c> {
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

    pub(crate) fn change_id(&self, h: &Version) -> ChangeId {
        ChangeId {
            origin: self.origins[&h.origin],
            seq: h.seq,
        }
    }
}
