//! Resolving a conflict: one new change written over all its candidates.

use super::*;
use crate::error::{Error, Result};
use crate::format::change::{CellWrite, Lineage, OpKind, RowOp, TableOps};
use crate::format::ids::ChangeId;
use crate::format::value::{Value, decode_key};
use crate::merge::Merger;
use crate::replica::Replica;
use crate::store::held::HeldReason;
use crate::store::meta::origins_map;
use crate::store::rowmeta::{ROW, RowMeta, Version};
use crate::store::tables::{self as tables, TableInfo};
use rusqlite::{OptionalExtension, params};

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
            .ok_or_else(|| Error::NotTracked(conflict.table.clone()))?;
        let origins = origins_map(&self.conn)?;
        let merger = Merger::new(&self.conn, origins.clone());
        let key_bytes = crate::format::value::encode_key(&conflict.key);
        let m = merger
            .load_meta(t, &key_bytes)?
            .unwrap_or_else(|| RowMeta::new(t.columns.len()));
        let chosen = match &resolution {
            Resolution::Keep(c) => {
                let c = c.trim().to_ascii_lowercase();
                // `ORIGIN:SEQ` abbreviates the origin only: `…:1` never names `…:12`, so a
                // candidate that is gone is not mistaken for a later one.
                let matching: Vec<&Candidate> = conflict
                    .candidates
                    .iter()
                    .filter(|x| match (c.split_once(':'), x.id.split_once(':')) {
                        (Some((origin, seq)), Some((xo, xs))) => {
                            !origin.is_empty() && xo.starts_with(origin) && xs == seq
                        }
                        _ => !c.is_empty() && x.id.starts_with(&c),
                    })
                    .collect();
                match matching.as_slice() {
                    [one] => Some((*one).clone()),
                    [] => {
                        return Err(Error::UnknownCandidate {
                            conflict: conflict.id.clone(),
                            candidate: c,
                        });
                    }
                    _ => return Err(Error::AmbiguousConflict(c)),
                }
            }
            Resolution::KeepWinner => conflict.candidates.iter().find(|c| c.winner).cloned(),
            Resolution::Value(_) => None,
        };
        let lineage = m.birth(&origins).map(|b| Lineage {
            change: ChangeId {
                origin: origins[&b.origin],
                seq: b.seq,
            },
            hlc: b.hlc,
        });
        let to_id = |h: &Version| ChangeId {
            origin: origins[&h.origin],
            seq: h.seq,
        };
        let all = |cell: usize| m.cells[cell].iter().map(to_id).collect::<Vec<_>>();
        let alive = m.cells[ROW]
            .iter()
            .filter(|h| h.alive)
            .map(to_id)
            .collect::<Vec<_>>();
        let mut ops: Vec<(Vec<Value>, RowOp)> = Vec::new();
        // Rows of other tables the resolution brings back (a held row's parents).
        let mut parents: Vec<(&TableInfo, RowOp)> = Vec::new();
        match conflict.column.as_ref() {
            Some(col) => {
                let c = t
                    .columns
                    .iter()
                    .position(|x| x == col)
                    .expect("conflict columns are tracked columns");
                let value = match (&resolution, &chosen) {
                    (Resolution::Value(v), _) => v.clone(),
                    (_, Some(cand)) => cand.value.clone().unwrap_or(Value::Null),
                    _ => return Err(Error::UnknownConflict(id.into())),
                };
                let live = m.materialized(&origins);
                let kind = if live { OpKind::Update } else { OpKind::Delete };
                let row_preds = if live {
                    alive
                } else {
                    m.cells[ROW]
                        .iter()
                        .filter(|h| !h.alive)
                        .map(to_id)
                        .collect()
                };
                ops.push((
                    conflict.key.clone(),
                    RowOp {
                        kind,
                        key: conflict.key.clone(),
                        row_preds,
                        lineage: if kind == OpKind::Update {
                            lineage
                        } else {
                            None
                        },
                        cells: vec![CellWrite {
                            column: c,
                            value,
                            preds: all(c + 1),
                        }],
                    },
                ));
            }
            None if conflict.kind == "delete" => {
                let Some(cand) = chosen else {
                    return Err(Error::UnknownCandidate {
                        conflict: conflict.id.clone(),
                        candidate: String::new(),
                    });
                };
                let kind = if cand.value.is_some() {
                    OpKind::Update
                } else {
                    OpKind::Delete
                };
                ops.push((
                    conflict.key.clone(),
                    RowOp {
                        kind,
                        key: conflict.key.clone(),
                        row_preds: all(ROW),
                        lineage: if kind == OpKind::Update {
                            lineage
                        } else {
                            None
                        },
                        cells: vec![],
                    },
                ));
            }
            None => {
                // A constraint conflict: keep one row, delete the other. Without a row
                // holding the slot (foreign key, CHECK, NOT NULL) the choice is to discard
                // the held row, or to fix what it breaks (then it comes back by itself).
                let held_wins = match (&resolution, &chosen) {
                    (Resolution::Value(_), _) => {
                        return Err(Error::CannotResolve {
                            conflict: conflict.id.clone(),
                            reason: "a whole row is held; keep one of the candidates".into(),
                        });
                    }
                    (Resolution::KeepWinner, _) => false,
                    (Resolution::Keep(_), Some(cand)) => !cand.winner,
                    (Resolution::Keep(_), None) => unreachable!("Keep found its candidate above"),
                };
                let has_blocker = conflict.candidates.len() > 1;
                if held_wins && !has_blocker && conflict.kind == HeldReason::ForeignKey.code() {
                    // Keeping a row held for a missing parent brings the parent back;
                    // settling after the apply then releases the row.
                    parents =
                        self.parents_to_restore(&conflict, t, &key_bytes, &m, &merger, &tables)?;
                } else if held_wins && !has_blocker {
                    return Err(Error::CannotResolve {
                        conflict: conflict.id.clone(),
                        reason: format!(
                            "the row breaks a {} constraint on its own; fix what it refers to or its values \
                             and it returns by itself, or discard it by keeping the winner",
                            conflict.kind
                        ),
                    });
                }
                if held_wins && has_blocker {
                    let blocker: Option<Vec<u8>> = self
                        .conn
                        .query_row(
                            "SELECT blocker FROM _tide_held WHERE tid=?1 AND key=?2",
                            params![t.tid, &key_bytes],
                            |r| r.get(0),
                        )
                        .optional()?
                        .flatten();
                    if let Some(b) = blocker
                        && let Some(mb) = merger.load_meta(t, &b)?
                    {
                        let bkey = decode_key(&b)?;
                        let preds = mb.cells[ROW]
                            .iter()
                            .filter(|h| h.alive)
                            .map(to_id)
                            .collect();
                        ops.push((
                            bkey.clone(),
                            RowOp {
                                kind: OpKind::Delete,
                                key: bkey,
                                row_preds: preds,
                                lineage: None,
                                cells: vec![],
                            },
                        ));
                    }
                } else if !held_wins {
                    ops.push((
                        conflict.key.clone(),
                        RowOp {
                            kind: OpKind::Delete,
                            key: conflict.key.clone(),
                            row_preds: all(ROW),
                            lineage: None,
                            cells: vec![],
                        },
                    ));
                }
            }
        }
        if ops.is_empty() && parents.is_empty() {
            return Err(Error::CannotResolve {
                conflict: conflict.id.clone(),
                reason: "nothing to write: the row it names is gone".into(),
            });
        }
        let change = crate::store::append::append_own(
            &tx,
            &secret,
            |change| {
                // Parents first: the held row returns once they are back.
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
                if !ops.is_empty() {
                    change.tables.push(TableOps {
                        name: t.name.clone(),
                        key_columns: t.key_columns.clone(),
                        columns: t.columns.clone(),
                        rows: ops.into_iter().map(|(_, op)| op).collect(),
                    });
                }
            },
            false,
        )?;
        let mut report = crate::ingest::ImportReport::default();
        crate::apply::apply_ready(&tx, Default::default(), &mut report, None, None)?;
        tx.commit()?;
        debug_assert!(sealed.is_none_or(|s| s.seq < change.head.seq));
        self.record_sealed(change.head.seq)?;
        Ok(change.id())
    }
}
