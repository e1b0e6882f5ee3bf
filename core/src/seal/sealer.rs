//! One pending row turned into a row op with its predecessors, and merged into this replica's state.

use super::*;
use crate::error::Result;
use crate::format::change::{Encoder, OpKind};
use crate::format::ids::ChangeId;
use crate::format::value::encode_key;
use crate::merge::{Merger, RowRef, Visible};
use crate::store::rowmeta::{ROW, RowMeta, Stamp, VRef, Version};
use crate::store::tables::TableInfo;
use foldhash::HashMap;
use rusqlite::{Connection, params};

/// The change being sealed, and what writes its rows' metadata.
pub(crate) struct Sealer<'c, S> {
    pub(crate) conn: &'c Connection,
    pub(crate) merger: Merger<'c>,
    pub(crate) enc: Encoder<S>,
    /// The version every op of this change writes (kind flags set per op).
    pub(crate) v: Version,
    /// Whether the current table's section was started in the change.
    pub(crate) started: bool,
    /// The current table had no row metadata when its sealing began, so no captured row
    /// has any (a seal takes each exact key once): nothing to look up.
    pub(crate) no_meta: bool,
}

impl<S: FnMut(&[u8; 32], &[u8]) -> Result<()>> Sealer<'_, S> {
    pub(crate) fn to_id(&self, p: &VRef) -> ChangeId {
        ChangeId {
            origin: self.merger.origins[&p.0],
            seq: p.1,
        }
    }

    pub(crate) fn start_table(&mut self, t: &TableInfo) {
        if !self.started {
            self.enc.table(&t.name, &t.key_columns, &t.columns);
            self.started = true;
        }
    }

    /// Seals a batch of captured rows of `t` (and empties it).
    pub(crate) fn rows(&mut self, t: &TableInfo, chunk: &mut Vec<Pending>) -> Result<()> {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|p| encode_key(&p.key)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let metas = if self.no_meta {
            (0..refs.len()).map(|_| None).collect()
        } else {
            self.merger.load_metas(t, &refs)?
        };
        let mut fresh = Vec::new();
        for ((p, key_bytes), m0) in chunk.drain(..).zip(&refs).zip(metas) {
            if self.row(t, p, key_bytes, m0)? {
                fresh.push(*key_bytes);
            }
        }
        let v = Version {
            alive: true,
            created: true,
            ..self.v
        };
        // With `no_meta` this is what catches a key sealed twice (the guard in `row`
        // needs the metadata it did not read).
        self.merger.write_fresh(t, &fresh, v).map_err(|e| match e {
            crate::error::Error::Apply(crate::error::ApplyError::RowsAlreadyKnown {
                table,
                rows,
                of,
            }) => crate::error::Error::Seal(crate::error::SealError::RowsAlreadyKnown {
                table,
                rows,
                of,
            }),
            e => e,
        })
    }

    /// Seals one captured row. True when the row is new here and written whole: its
    /// metadata is then written with the batch's.
    pub(crate) fn row(
        &mut self,
        t: &TableInfo,
        p: Pending,
        key_bytes: &[u8],
        m0: Option<RowMeta>,
    ) -> Result<bool> {
        let origins = std::rc::Rc::clone(&self.merger.origins);
        let was_live = m0.as_ref().is_some_and(|m| m.materialized(&origins));
        let (kind, mask) = match (&p.current, was_live) {
            (Some(_), false) => (OpKind::Insert, u64::MAX),
            (Some(_), true) => (OpKind::Update, p.mask),
            (None, true) => (OpKind::Delete, p.mask),
            // Created and deleted since the last seal, or never visible here: nothing to say.
            (None, false) => return Ok(false),
        };
        self.refuse_written_twice(t, &p, m0.as_ref())?;
        let Some(m0) = m0 else {
            self.encode_new_row(t, kind, &p)?;
            return Ok(true);
        };
        let cells = if p.current.is_some() || p.last_delete.is_some() {
            self.cell_predecessors(t, key_bytes, &m0, was_live, mask)?
        } else {
            Vec::new()
        };
        if kind == OpKind::Update && cells.is_empty() {
            // Nothing changed (an UPDATE that set columns to what they were, or a row
            // noted as a possible REPLACE victim that survived).
            return Ok(false);
        }
        let op = Op {
            kind,
            row_preds: self.row_predecessors(&m0, was_live),
            cells,
            lineage: if kind == OpKind::Update {
                m0.birth(&origins)
            } else {
                None
            },
        };
        self.encode_op(t, &p, &op)?;
        self.merge_op(t, p, key_bytes, &m0, op)?;
        Ok(false)
    }

    /// A row already written by this very change would name the change as its own
    /// predecessor: a change no replica could accept. Never seal that.
    fn refuse_written_twice(&self, t: &TableInfo, p: &Pending, m0: Option<&RowMeta>) -> Result<()> {
        let own = self.v.vref();
        if let Some(m) = m0
            && m.cells.iter().flatten().any(|h| h.vref() == own)
        {
            return Err(crate::error::Error::Seal(
                crate::error::SealError::RowTwice {
                    table: t.name.clone(),
                    key: p.key.clone(),
                },
            ));
        }
        Ok(())
    }

    /// A row this replica never had: every column is new, nothing overwritten.
    fn encode_new_row(&mut self, t: &TableInfo, kind: OpKind, p: &Pending) -> Result<()> {
        let values = p
            .current
            .as_ref()
            .or(p.last_delete.as_ref())
            .expect("the row exists: it was just inserted");
        self.start_table(t);
        self.enc
            .row(kind, &p.key, std::iter::empty(), None, t.columns.len())?;
        for (c, value) in values.iter().enumerate() {
            self.enc.cell(c, value, std::iter::empty());
        }
        Ok(())
    }

    /// The row heads the app overwrote: those showing the state it saw, and this
    /// replica's own earlier writes (a replica's later write supersedes its earlier ones,
    /// shown or kept), no others.
    fn row_predecessors(&self, m0: &RowMeta, was_live: bool) -> Vec<VRef> {
        let me = self.v.origin;
        m0.cells[ROW]
            .iter()
            .filter(|h| h.alive == was_live || h.origin == me)
            .map(|h| h.vref())
            .collect()
    }

    /// The heads each column in `mask` overwrites. A row created where it was deleted
    /// overwrites what the deletion saw: the cell heads the deleting changes causally
    /// covered, not values written concurrently with the deletion (those stay as
    /// candidates). A live row overwrites the value the app saw.
    fn cell_predecessors(
        &self,
        t: &TableInfo,
        key_bytes: &[u8],
        m0: &RowMeta,
        was_live: bool,
        mask: u64,
    ) -> Result<Vec<(usize, Vec<VRef>)>> {
        let origins = &*self.merger.origins;
        let deleted_over = if was_live {
            Vec::new()
        } else {
            deletion_contexts(self.conn, m0)?
        };
        let me = self.v.origin;
        let mut cells: Vec<(usize, Vec<VRef>)> = Vec::new();
        for c in 0..t.columns.len() {
            if !written(mask, c) {
                continue;
            }
            let heads = &m0.cells[c + 1];
            let preds: Vec<VRef> = if !was_live {
                heads
                    .iter()
                    .filter(|h| h.origin == me || deleted_over.iter().any(|d| d.covers(h, origins)))
                    .map(|h| h.vref())
                    .collect()
            } else if heads.len() > 1 && in_conflict(self.conn, t, key_bytes, c)? {
                // Only the value the app saw is overwritten, with this replica's own
                // earlier candidates; the others' candidates stay.
                let shown = m0.winner(c + 1, origins).map(|w| w.vref());
                heads
                    .iter()
                    .map(|h| h.vref())
                    .filter(|h| Some(*h) == shown || h.0 == me)
                    .collect()
            } else {
                heads.iter().map(|h| h.vref()).collect()
            };
            cells.push((c, preds));
        }
        Ok(cells)
    }

    /// Writes the op into the change: the row with its predecessors and lineage, then
    /// each written cell with its own.
    fn encode_op(&mut self, t: &TableInfo, p: &Pending, op: &Op) -> Result<()> {
        self.start_table(t);
        let row_ids: Vec<ChangeId> = op.row_preds.iter().map(|p| self.to_id(p)).collect();
        let lineage_id = op.lineage.map(|l| crate::format::change::Lineage {
            change: self.to_id(&(l.origin, l.seq)),
            hlc: l.hlc,
        });
        self.enc.row(
            op.kind,
            &p.key,
            row_ids.into_iter(),
            lineage_id,
            op.cells.len(),
        )?;
        let values = written_values(p);
        for (c, preds) in &op.cells {
            let ids: Vec<ChangeId> = preds.iter().map(|p| self.to_id(p)).collect();
            self.enc.cell(*c, &values[*c], ids.into_iter());
        }
        Ok(())
    }

    /// Merges the op into the row's state. The app already wrote the table (or deleted
    /// the row, whose last values the capture log gave).
    fn merge_op(
        &mut self,
        t: &TableInfo,
        p: Pending,
        key_bytes: &[u8],
        m0: &RowMeta,
        op: Op,
    ) -> Result<()> {
        let v = Version {
            alive: op.kind != OpKind::Delete,
            created: op.kind == OpKind::Insert,
            lineage: op.lineage,
            ..self.v
        };
        let mut m1 = m0.successor();
        m1.write(ROW, v, &op.row_preds);
        let values = written_values(&p);
        let mut new_values = Vec::with_capacity(op.cells.len());
        for (c, preds) in op.cells {
            m1.write(c + 1, v, &preds);
            new_values.push((c, v, values[c].clone()));
        }
        if op.kind != OpKind::Delete {
            // The app wrote the row into its table: whatever held it is settled by this write.
            m1.held = false;
        }
        let visible = match (op.kind, p.last_delete) {
            (OpKind::Delete, Some(old)) => Visible::LocalDelete(old),
            _ => Visible::LocalWrite,
        };
        let row = RowRef {
            t,
            key: &p.key,
            key_bytes,
        };
        self.merger
            .transition(&row, Some(m0), m1, &new_values, visible)
    }
}

/// The values a captured row's op writes: the row's now, or its last before a delete
/// (none for a delete the capture log has no values for).
fn written_values(p: &Pending) -> &[crate::format::value::Value] {
    p.current
        .as_ref()
        .or(p.last_delete.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// One captured row as an op of the change: its kind, the heads it overwrites in the
/// row and in each written cell, and (for an update) the creation its row descends from.
struct Op {
    kind: OpKind,
    row_preds: Vec<VRef>,
    cells: Vec<(usize, Vec<VRef>)>,
    lineage: Option<Stamp>,
}

/// A deleting change and the version vector it was made against.
pub(crate) struct DeletionContext {
    pub(crate) version: VRef,
    pub(crate) deps: HashMap<crate::format::ids::ReplicaId, u64>,
}

impl DeletionContext {
    pub(crate) fn covers(&self, h: &Version, origins: &crate::store::rowmeta::Origins) -> bool {
        h.vref() == self.version
            || self
                .deps
                .get(&origins[&h.origin])
                .is_some_and(|s| *s >= h.seq)
    }
}

/// The contexts of the row's deleting heads (read from the log; this path is rare).
pub(crate) fn deletion_contexts(conn: &Connection, m: &RowMeta) -> Result<Vec<DeletionContext>> {
    let mut out = Vec::new();
    for h in m.cells[ROW].iter().filter(|h| !h.alive) {
        let (body, packing): (Vec<u8>, i64) = conn.query_row(
            "SELECT body, packing FROM _tide_log WHERE origin=?1 AND seq=?2",
            params![h.origin, h.seq as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let head = crate::store::chunks::unpack(body, packing)?;
        out.push(DeletionContext {
            version: h.vref(),
            deps: crate::format::change::Manifest::decode(&head)?
                .head
                .deps
                .into_iter()
                .collect(),
        });
    }
    Ok(out)
}

pub(crate) fn in_conflict(
    conn: &Connection,
    t: &TableInfo,
    key_bytes: &[u8],
    col: usize,
) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM _tide_conflicts WHERE tid=?1 AND key=?2 AND col=?3)",
    )?;
    Ok(stmt.query_row(params![t.tid, key_bytes, (col + 1) as i64], |r| r.get(0))?)
}
