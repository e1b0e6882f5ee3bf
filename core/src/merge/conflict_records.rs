//! Conflict records: which cells of a row are in conflict, and their records opened,
//! updated and closed as the row's heads change, with ids every replica derives alike.

use super::values::HeadValues;
use super::*;
use crate::error::Result;
use crate::format::ids::ChangeId;
use crate::store::conflict_kind::ConflictKind;
use crate::store::held;
use crate::store::kept::NULL;
use crate::store::rowmeta::{ROW, RowMeta, Version};
use rusqlite::OptionalExtension;
use std::sync::OnceLock;

impl<'c> Merger<'c> {
    /// Re-examines every cell that has or had several heads: a cell whose heads hold
    /// different values (the row's: alive and deleted ones) has a conflict record, any
    /// other none.
    pub(crate) fn cell_conflicts(
        &mut self,
        row: &RowRef<'_>,
        m0: &RowMeta,
        m1: &RowMeta,
        vals: &HeadValues<'_>,
    ) -> Result<()> {
        for c in 0..=vals.ncols {
            if m1.cells[c].len() < 2 && m0.cells[c].len() < 2 {
                continue;
            }
            let kind = if c == ROW {
                let alive = m1.cells[c].iter().any(|h| h.alive);
                let dead = m1.cells[c].iter().any(|h| !h.alive);
                (alive && dead).then_some(ConflictKind::Delete)
            } else {
                // Several heads whose values are not all one value (a missing one is NULL).
                let mut values = m1.cells[c]
                    .iter()
                    .map(|h| vals.value(c, h).unwrap_or(&NULL));
                let first = values.next();
                let differ = first.is_some_and(|first| values.any(|v| v != first));
                differ.then(|| {
                    if m1.cells[c].iter().all(|h| h.created) {
                        ConflictKind::Insert
                    } else {
                        ConflictKind::Update
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
                row.t.columns[c - 1].as_str()
            };
            let candidates: Vec<ChangeId> = m1.cells[c].iter().map(|h| self.change_id(h)).collect();
            self.set_conflict(row, c as i64, col, kind, &candidates, may_exist)?;
        }
        Ok(())
    }

    /// A held row is a constraint conflict between it and the row that keeps its slot,
    /// recorded while it is held (for a row held now or before).
    pub(crate) fn held_conflict(
        &mut self,
        row: &RowRef<'_>,
        m0: &RowMeta,
        m1: &RowMeta,
    ) -> Result<()> {
        let reason = if m1.held {
            held::reason(self.conn, row.t.tid, row.key_bytes)?
        } else {
            None
        };
        let candidates: Vec<ChangeId> = m1.cells[ROW].iter().map(|h| self.change_id(h)).collect();
        // A row has a constraint conflict record only while it is held.
        self.set_conflict(
            row,
            CONSTRAINT_CELL,
            "",
            reason.map(ConflictKind::from),
            &candidates,
            m0.held,
        )
    }

    pub(crate) fn set_conflict(
        &mut self,
        row: &RowRef<'_>,
        col: i64,
        col_name: &str,
        kind: Option<ConflictKind>,
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

    pub(crate) fn change_id(&self, h: &Version) -> ChangeId {
        ChangeId {
            origin: self.origins[&h.origin],
            seq: h.seq,
        }
    }

    /// A conflict record goes (closed, or replaced by one with other candidates). One this
    /// import opened is no longer counted; one that was there before is remembered, so
    /// that opening it again (a held row released and held again) does not count.
    pub(crate) fn note_closed(&mut self, id: &[u8], epoch: i64) -> Result<()> {
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
    pub(crate) fn note_opened(&mut self, id: &[u8]) -> Result<()> {
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
}

/// The id every replica gives the same conflict: a hash of where it is and who the
/// candidates are.
pub(crate) fn conflict_id(
    table: &str,
    key_bytes: &[u8],
    col: &str,
    kind: ConflictKind,
    candidates: &[ChangeId],
) -> [u8; 16] {
    let mut sorted = candidates.to_vec();
    sorted.sort();
    // The hashed input is gathered first: one update instead of a dozen small ones, and
    // the derived-key hasher is set up once per process.
    let mut input = Vec::with_capacity(64 + key_bytes.len() + 24 * sorted.len());
    for part in [
        table.as_bytes(),
        key_bytes,
        col.as_bytes(),
        kind.code().as_bytes(),
    ] {
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
