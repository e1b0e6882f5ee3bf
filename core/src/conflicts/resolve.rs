//! Resolving a conflict: one new change written over all its candidates.
//!
//! [`Replica::resolve`] is the frame every kind shares: find the conflict, seal pending
//! writes, build the row ops, append them as this replica's next change and apply it, all
//! in one transaction. One builder per kind writes the ops: `cell_op` for `update` and
//! `insert`, `delete_op` for `delete`, `Replica::constraint_writes` for a held row.

use super::*;
use crate::error::{CannotResolveReason, Error, ResolveError, Result, TrackError};
use crate::format::change::{CellWrite, Change, Lineage, OpKind, RowOp, TableOps};
use crate::format::ids::ChangeId;
use crate::format::value::{Value, decode_key, encode_key};
use crate::identity::SecretIdentity;
use crate::merge::Merger;
use crate::replica::Replica;
use crate::store::meta::origins_map;
use crate::store::rowmeta::{Origins, ROW, RowMeta, Version};
use crate::store::tables::{self as tables, TableInfo};
use rusqlite::Connection;

/// The row a conflict is on, as the op builders read it.
struct Target<'a> {
    conflict: &'a Conflict,
    t: &'a TableInfo,
    key_bytes: &'a [u8],
    m: &'a RowMeta,
    origins: &'a Origins,
}

impl Target<'_> {
    /// The changes that wrote the heads of `cell` that `keep` selects.
    fn heads(&self, cell: usize, keep: impl Fn(&Version) -> bool) -> Vec<ChangeId> {
        self.m.cells[cell]
            .iter()
            .filter(|h| keep(h))
            .map(|h| change_id(self.origins, h))
            .collect()
    }

    /// An op on the conflict's row. An update carries the row's lineage (the earliest
    /// birth of its live heads), so the row keeps its identity.
    fn row_op(&self, kind: OpKind, row_preds: Vec<ChangeId>, cells: Vec<CellWrite>) -> RowOp {
        let lineage = if kind == OpKind::Update {
            self.m.birth(self.origins).map(|b| Lineage {
                change: ChangeId {
                    origin: self.origins[&b.origin],
                    seq: b.seq,
                },
                hlc: b.hlc,
            })
        } else {
            None
        };
        RowOp {
            kind,
            key: self.conflict.key.clone(),
            row_preds,
            lineage,
            cells,
        }
    }
}

/// What a resolution writes: ops on the conflict's table, and rows of other tables it
/// brings back (a held row's parents).
struct Writes<'t> {
    rows: Vec<RowOp>,
    parents: Vec<(&'t TableInfo, RowOp)>,
}

impl Writes<'_> {
    fn row(op: RowOp) -> Self {
        Writes {
            rows: vec![op],
            parents: Vec::new(),
        }
    }
}

impl Replica {
    /// Resolves conflict `id` (or a unique prefix of it) with a new change, applied here
    /// at once and synced like any write. Returns the change's id.
    pub fn resolve(&mut self, id: &str, resolution: Resolution) -> Result<ChangeId> {
        let secret = self.secret_for_sealing()?;
        // One IMMEDIATE transaction from sealing pending writes to applying the
        // resolution: nothing read here can change underneath.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let sealed = crate::seal::seal_pending(&tx, &secret)?;
        let conflict = self.conflict(id)?;
        let tables = tables::tracked_tables(&self.conn)?;
        let t = tables
            .iter()
            .find(|t| t.name == conflict.table)
            .ok_or_else(|| Error::Track(TrackError::NotTracked(conflict.table.clone())))?;
        let merger = Merger::new(&self.conn, origins_map(&self.conn)?);
        let key_bytes = encode_key(&conflict.key);
        let m = merger
            .load_meta(t, &key_bytes)?
            .unwrap_or_else(|| RowMeta::new(t.columns.len()));
        let chosen = chosen_candidate(&conflict, &resolution)?;
        let target = Target {
            conflict: &conflict,
            t,
            key_bytes: &key_bytes,
            m: &m,
            origins: &merger.origins,
        };
        let writes = match conflict.kind {
            ConflictKind::Update | ConflictKind::Insert => {
                Writes::row(cell_op(&target, &resolution, chosen, id)?)
            }
            ConflictKind::Delete => Writes::row(delete_op(&target, chosen)?),
            ConflictKind::Unique
            | ConflictKind::ForeignKey
            | ConflictKind::Check
            | ConflictKind::NotNull => {
                self.constraint_writes(&target, &resolution, chosen, &merger, &tables)?
            }
        };
        if writes.rows.is_empty() && writes.parents.is_empty() {
            return Err(Error::Resolve(ResolveError::CannotResolve {
                conflict: conflict.id.clone(),
                reason: CannotResolveReason::NothingToWrite,
            }));
        }
        let change = append_resolution(&tx, &secret, t, writes)?;
        let mut report = crate::ingest::ImportReport::default();
        crate::apply::apply_ready(
            &tx,
            Default::default(),
            &mut report,
            Default::default(),
            None,
        )?;
        tx.commit()?;
        debug_assert!(sealed.is_none_or(|s| s.seq < change.head.seq));
        self.record_sealed(change.head.seq)?;
        Ok(change.id())
    }

    /// A constraint conflict: keep one row, delete the other. Without a row holding the
    /// slot (foreign key, CHECK, NOT NULL) the choice is to discard the held row, or to
    /// fix what it breaks (then it comes back by itself).
    fn constraint_writes<'t>(
        &self,
        target: &Target<'_>,
        resolution: &Resolution,
        chosen: Option<&Candidate>,
        merger: &Merger<'_>,
        tables: &'t [TableInfo],
    ) -> Result<Writes<'t>> {
        let conflict = target.conflict;
        let held_wins = keeps_held(conflict, resolution, chosen)?;
        let has_blocker = conflict.candidates.len() > 1;
        match (held_wins, has_blocker) {
            (false, _) => Ok(Writes::row(target.row_op(
                OpKind::Delete,
                target.heads(ROW, |_| true),
                vec![],
            ))),
            (true, true) => Ok(Writes {
                rows: self.blocker_delete(target, merger)?.into_iter().collect(),
                parents: Vec::new(),
            }),
            (true, false) if conflict.kind == ConflictKind::ForeignKey => {
                // Keeping a row held for a missing parent brings the parent back;
                // settling after the apply then releases the row.
                let parents = self.parents_to_restore(
                    conflict,
                    target.t,
                    target.key_bytes,
                    target.m,
                    merger,
                    tables,
                )?;
                Ok(Writes {
                    rows: Vec::new(),
                    parents,
                })
            }
            (true, false) => Err(Error::Resolve(ResolveError::CannotResolve {
                conflict: conflict.id.clone(),
                reason: CannotResolveReason::BreaksConstraint {
                    constraint: conflict.kind.to_string(),
                },
            })),
        }
    }

    /// Keeping a held row over the row in its way: the op that deletes that row, over
    /// every live head of its existence. `None` when that row is gone.
    fn blocker_delete(&self, target: &Target<'_>, merger: &Merger<'_>) -> Result<Option<RowOp>> {
        let Some(b) = self.held_blocker(target.t, target.key_bytes)? else {
            return Ok(None);
        };
        let Some(mb) = merger.load_meta(target.t, &b)? else {
            return Ok(None);
        };
        let row_preds = mb.cells[ROW]
            .iter()
            .filter(|h| h.alive)
            .map(|h| change_id(target.origins, h))
            .collect();
        Ok(Some(RowOp {
            kind: OpKind::Delete,
            key: decode_key(&b)?,
            row_preds,
            lineage: None,
            cells: vec![],
        }))
    }
}

/// The candidate a resolution keeps: the one it names, the provisional winner, or none
/// when it writes a new value.
fn chosen_candidate<'c>(
    conflict: &'c Conflict,
    resolution: &Resolution,
) -> Result<Option<&'c Candidate>> {
    let named = match resolution {
        Resolution::Keep(c) => c.trim().to_ascii_lowercase(),
        Resolution::KeepWinner => return Ok(conflict.candidates.iter().find(|c| c.winner)),
        Resolution::Value(_) => return Ok(None),
    };
    // `ORIGIN:SEQ` abbreviates the origin only: `…:1` never names `…:12`, so a
    // candidate that is gone is not mistaken for a later one.
    let matching: Vec<&Candidate> = conflict
        .candidates
        .iter()
        .filter(|x| match (named.split_once(':'), x.id.split_once(':')) {
            (Some((origin, seq)), Some((xo, xs))) => {
                !origin.is_empty() && xo.starts_with(origin) && xs == seq
            }
            _ => !named.is_empty() && x.id.starts_with(&named),
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(Some(*one)),
        [] => Err(Error::Resolve(ResolveError::UnknownCandidate {
            conflict: conflict.id.clone(),
            candidate: named,
        })),
        _ => Err(Error::Resolve(ResolveError::AmbiguousCandidate {
            conflict: conflict.id.clone(),
            candidate: named,
        })),
    }
}

/// A cell conflict (`update`, `insert`): the kept or given value, written over every
/// head of the cell. When the row is not in its table the op keeps it out (a delete
/// over its deletions) and still settles the cell.
fn cell_op(
    target: &Target<'_>,
    resolution: &Resolution,
    chosen: Option<&Candidate>,
    requested: &str,
) -> Result<RowOp> {
    let col = target
        .conflict
        .column
        .as_ref()
        .expect("a cell conflict names its column");
    let c = target
        .t
        .columns
        .iter()
        .position(|x| x == col)
        .expect("conflict columns are tracked columns");
    let value = match (resolution, chosen) {
        (Resolution::Value(v), _) => v.clone(),
        (_, Some(cand)) => cand.value.clone().unwrap_or(Value::Null),
        _ => {
            return Err(Error::Resolve(ResolveError::UnknownConflict(
                requested.into(),
            )));
        }
    };
    let (kind, row_preds) = if target.m.materialized(target.origins) {
        (OpKind::Update, target.heads(ROW, |h| h.alive))
    } else {
        (OpKind::Delete, target.heads(ROW, |h| !h.alive))
    };
    let cell = CellWrite {
        column: c,
        value,
        preds: target.heads(c + 1, |_| true),
    };
    Ok(target.row_op(kind, row_preds, vec![cell]))
}

/// A delete/update conflict: keep the row (an update) or its deletion (a delete), over
/// every head of the row's existence.
fn delete_op(target: &Target<'_>, chosen: Option<&Candidate>) -> Result<RowOp> {
    let Some(cand) = chosen else {
        return Err(Error::Resolve(ResolveError::UnknownCandidate {
            conflict: target.conflict.id.clone(),
            candidate: String::new(),
        }));
    };
    let kind = if cand.value.is_some() {
        OpKind::Update
    } else {
        OpKind::Delete
    };
    Ok(target.row_op(kind, target.heads(ROW, |_| true), vec![]))
}

/// Whether a constraint conflict's resolution keeps the held row over the winner.
fn keeps_held(
    conflict: &Conflict,
    resolution: &Resolution,
    chosen: Option<&Candidate>,
) -> Result<bool> {
    match (resolution, chosen) {
        (Resolution::Value(_), _) => Err(Error::Resolve(ResolveError::CannotResolve {
            conflict: conflict.id.clone(),
            reason: CannotResolveReason::WholeRowHeld,
        })),
        (Resolution::KeepWinner, _) => Ok(false),
        (Resolution::Keep(_), Some(cand)) => Ok(!cand.winner),
        (Resolution::Keep(_), None) => unreachable!("Keep found its candidate above"),
    }
}

/// Appends the resolution as this replica's next change: the parents it brings back
/// first (the held row returns once they are back), then the conflict's table.
fn append_resolution(
    conn: &Connection,
    secret: &SecretIdentity,
    t: &TableInfo,
    writes: Writes<'_>,
) -> Result<Change> {
    let Writes { rows, parents } = writes;
    crate::store::append::append_own(
        conn,
        secret,
        |change| {
            for (pt, op) in parents {
                match change.tables.iter_mut().find(|x| x.name == pt.name) {
                    Some(ops) => ops.rows.push(op),
                    None => change.tables.push(TableOps {
                        name: pt.name.clone(),
                        key_columns: pt.key_columns.clone(),
                        columns: pt.columns.clone(),
                        rows: vec![op],
                    }),
                }
            }
            if !rows.is_empty() {
                change.tables.push(TableOps {
                    name: t.name.clone(),
                    key_columns: t.key_columns.clone(),
                    columns: t.columns.clone(),
                    rows,
                });
            }
        },
        false,
    )
}
