//! One change's row ops applied to the tables: new rows in batches, the rest through the merge.

use crate::error::Result;
use crate::format::change::{OpKind, RowOp, TableOps};
use crate::format::ids::{ChangeId, ReplicaId};
use crate::format::value::Value;
use crate::merge::{Merger, RowRef, Visible};
use crate::store::quarantine::QuarantineReason;
use crate::store::rowmeta::{ROW, RowMeta, Version};
use crate::store::savepoint::Savepoint;
use crate::store::tables::TableInfo;
use foldhash::HashMap;

/// How a change's table maps onto a local tracked table.
pub(crate) struct TableMap<'a> {
    pub(crate) t: &'a TableInfo,
    /// Per column of the change: the local column, or [`DROPPED`].
    pub(crate) columns: Vec<usize>,
    /// Some column of the change was dropped here: its cells go ([`TableMap::strip`]).
    pub(crate) drops: bool,
}

/// A column of the change that this replica's application dropped.
const DROPPED: usize = usize::MAX;

impl TableMap<'_> {
    /// Leaves out the cells of columns dropped here: a peer that has not dropped them yet
    /// still writes them, and its other cells apply (DESIGN.md §2.12).
    pub(crate) fn strip(&self, op: &mut RowOp) {
        if self.drops {
            op.cells.retain(|c| self.columns[c.column] != DROPPED);
        }
    }

    /// An insert that writes every column of the local table and names no predecessor:
    /// on a row this replica never had, there is nothing to merge.
    pub(crate) fn whole(&self, op: &RowOp) -> bool {
        let ncols = self.t.columns.len();
        op.kind == OpKind::Insert
            && op.row_preds.is_empty()
            && op.cells.len() == ncols
            && self.columns.len() == ncols
            && op.cells.iter().all(|c| c.preds.is_empty())
    }

    /// A [`TableMap::whole`] insert as a new row: values in the local column order.
    pub(crate) fn fresh_row(&self, op: RowOp, key_bytes: Vec<u8>) -> FreshRow {
        let mut values = vec![Value::Null; self.t.columns.len()];
        for cell in op.cells {
            values[self.columns[cell.column]] = cell.value;
        }
        (op.key, key_bytes, values)
    }
}

pub(crate) fn map_table<'a>(
    tables: &'a HashMap<String, TableInfo>,
    ops: &TableOps,
) -> std::result::Result<TableMap<'a>, (QuarantineReason, String)> {
    let t = tables.get(&ops.name).ok_or_else(|| {
        (
            QuarantineReason::UnknownTable,
            format!("table {:?} is not tracked here", ops.name),
        )
    })?;
    if t.key_columns != ops.key_columns {
        return Err((
            QuarantineReason::SchemaMismatch,
            format!(
                "table {:?} has key {:?} here, {:?} in the change",
                ops.name, t.key_columns, ops.key_columns
            ),
        ));
    }
    let columns = ops
        .columns
        .iter()
        .map(|c| {
            if t.dropped.iter().any(|d| d == c) && t.column_index(c).is_none() {
                return Ok(DROPPED);
            }
            t.column_index(c).ok_or_else(|| {
                (
                    QuarantineReason::NewerSchema,
                    format!(
                        "table {:?} has no column {c:?} here yet; it applies once this replica's schema has it",
                        ops.name
                    ),
                )
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let drops = columns.contains(&DROPPED);
    Ok(TableMap { t, columns, drops })
}

/// Applies the ops of one change.
pub(crate) struct Applier<'m, 'c> {
    pub(crate) merger: &'m mut Merger<'c>,
    pub(crate) ids: HashMap<ReplicaId, i64>,
    pub(crate) origin: i64,
    pub(crate) seq: u64,
    pub(crate) hlc: u64,
    /// Whether a batch that looks like rows new here is written without reading its
    /// metadata first ([`Applier::new_rows_at_once`]); off for the rest of the change once
    /// a batch turns out not to be.
    pub(crate) optimistic: bool,
}

/// A new row written whole: its key and its values in the local table's column order.
pub(crate) type FreshRow = (Vec<Value>, Vec<u8>, Vec<Value>);

impl Applier<'_, '_> {
    pub(crate) fn to_idx(&self, p: &ChangeId) -> (i64, u64) {
        (self.ids[&p.origin], p.seq)
    }

    pub(crate) fn version(&self, op: &RowOp) -> Version {
        Version {
            origin: self.origin,
            seq: self.seq,
            hlc: self.hlc,
            alive: op.kind != OpKind::Delete,
            created: op.kind == OpKind::Insert,
            lineage: op.lineage.map(|l| crate::store::rowmeta::Stamp {
                origin: self.ids[&l.change.origin],
                seq: l.change.seq,
                hlc: l.hlc,
            }),
        }
    }

    /// The version of a whole insert of this change: every row written by
    /// [`Applier::fresh`] and [`Applier::new_rows_at_once`] has it.
    pub(crate) fn insert_version(&self) -> Version {
        Version {
            origin: self.origin,
            seq: self.seq,
            hlc: self.hlc,
            alive: true,
            created: true,
            lineage: None,
        }
    }

    /// A full batch of inserts written whole, with nothing to merge, is most likely rows
    /// this replica never had (an initial sync, a bulk load elsewhere). Written as such in
    /// a savepoint, without reading any metadata: the rows in one statement, their
    /// metadata with `INSERT OR IGNORE`. If the table refuses a row (it has one with that
    /// key, or a constraint says no) or some key had metadata after all, the savepoint is
    /// rolled back, the batch is put back as it was, and false sends it down the general
    /// path, which reads what is there.
    pub(crate) fn new_rows_at_once(
        &mut self,
        map: &TableMap<'_>,
        batch: &mut Vec<(RowOp, Vec<u8>)>,
    ) -> Result<bool> {
        let t = map.t;
        if batch.len() != Merger::batch_rows(t) || !batch.iter().all(|(op, _)| map.whole(op)) {
            return Ok(false);
        }
        let rows: Vec<FreshRow> = batch
            .drain(..)
            .map(|(op, key_bytes)| map.fresh_row(op, key_bytes))
            .collect();
        let conn = self.merger.conn;
        let savepoint = Savepoint::begin(conn, "tide_new_rows")?;
        let all_new = (|| -> Result<bool> {
            let refs: Vec<(&[Value], &[Value])> = rows
                .iter()
                .map(|(k, _, v)| (k.as_slice(), v.as_slice()))
                .collect();
            match self.merger.insert_rows(t, &refs) {
                Ok(()) => {}
                Err(e) if crate::merge::constraint_reason(&e).is_some() => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            let keys: Vec<&[u8]> = rows.iter().map(|(_, kb, _)| kb.as_slice()).collect();
            let written = self
                .merger
                .write_fresh_where_new(t, &keys, self.insert_version())?;
            Ok(written == keys.len())
        })();
        // On an error the guard undoes the batch, so nothing of it outlives the error.
        if all_new? {
            savepoint.release()?;
            return Ok(true);
        }
        savepoint.rollback()?;
        self.optimistic = false;
        // The ops as they came: `map.columns` is a permutation here (every column written).
        batch.extend(rows.into_iter().map(|(key, key_bytes, mut values)| {
            let cells = map
                .columns
                .iter()
                .enumerate()
                .map(|(column, &local)| crate::format::change::CellWrite {
                    column,
                    value: std::mem::replace(&mut values[local], Value::Null),
                    preds: Vec::new(),
                })
                .collect();
            let op = RowOp {
                kind: OpKind::Insert,
                key,
                row_preds: Vec::new(),
                lineage: None,
                cells,
            };
            (op, key_bytes)
        }));
        Ok(false)
    }

    /// Applies a batch of ops of one table, in order, and empties it.
    pub(crate) fn ops(
        &mut self,
        map: &TableMap<'_>,
        batch: &mut Vec<(RowOp, Vec<u8>)>,
    ) -> Result<()> {
        if self.optimistic && self.new_rows_at_once(map, batch)? {
            return Ok(());
        }
        let t = map.t;
        let ncols = t.columns.len();
        let keys: Vec<&[u8]> = batch.iter().map(|(_, k)| k.as_slice()).collect();
        let metas = self.merger.load_metas(t, &keys)?;
        let mut fresh: Vec<FreshRow> = Vec::new();
        // A batch names each key once (`apply_change`), so a row's metadata read ahead is
        // only out of date if a merge changed other rows than its own (it can hold the
        // rows blocking a UNIQUE slot): from then on, the batch's rows are read again.
        let mut stale = false;
        for ((op, key_bytes), m0) in batch.drain(..).zip(metas) {
            let m0 = if stale {
                self.merger.load_meta(t, &key_bytes)?
            } else {
                m0
            };
            // The common case: a row new here, written whole, with nothing to merge.
            if m0.is_none() && map.whole(&op) {
                fresh.push(map.fresh_row(op, key_bytes));
                continue;
            }
            let m0 = if self.fresh(t, &mut fresh)? {
                stale = true;
                self.merger.load_meta(t, &key_bytes)?
            } else {
                m0
            };
            let v = self.version(&op);
            let mut m1 = m0
                .as_ref()
                .map_or_else(|| RowMeta::new(ncols), RowMeta::successor);
            let row_preds: Vec<_> = op.row_preds.iter().map(|p| self.to_idx(p)).collect();
            m1.write(ROW, v, &row_preds);
            let mut new_values = Vec::with_capacity(op.cells.len());
            for cell in op.cells {
                let col = map.columns[cell.column];
                let preds: Vec<_> = cell.preds.iter().map(|p| self.to_idx(p)).collect();
                m1.write(col + 1, v, &preds);
                new_values.push((col, v, cell.value));
            }
            let before = self.merger.transitions;
            self.merger.transition(
                &RowRef {
                    t,
                    key: &op.key,
                    key_bytes: &key_bytes,
                },
                m0.as_ref(),
                m1,
                &new_values,
                Visible::Table,
            )?;
            stale |= self.merger.transitions - before > 1;
        }
        self.fresh(t, &mut fresh)?;
        Ok(())
    }

    /// Inserts new rows written whole, many per statement when a full batch is waiting;
    /// a row a constraint refuses takes the full merge (which holds it). Empties `fresh`;
    /// true when some row took the full merge.
    pub(crate) fn fresh(&mut self, t: &TableInfo, fresh: &mut Vec<FreshRow>) -> Result<bool> {
        if fresh.is_empty() {
            return Ok(false);
        }
        let v = self.insert_version();
        let per_statement = Merger::batch_rows(t);
        let mut merged = false;
        let mut done: Vec<&[u8]> = Vec::with_capacity(fresh.len());
        for chunk in fresh.chunks(per_statement) {
            if chunk.len() == per_statement {
                let rows: Vec<(&[Value], &[Value])> = chunk
                    .iter()
                    .map(|(k, _, v)| (k.as_slice(), v.as_slice()))
                    .collect();
                match self.merger.insert_rows(t, &rows) {
                    Ok(()) => {
                        done.extend(chunk.iter().map(|(_, kb, _)| kb.as_slice()));
                        continue;
                    }
                    Err(e) if crate::merge::constraint_reason(&e).is_some() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            for (key, key_bytes, values) in chunk {
                if self.merger.insert_fresh_row(t, key, values)? {
                    done.push(key_bytes);
                    continue;
                }
                // Refused by a constraint: the full merge decides what is held.
                self.merger.write_fresh(t, &done, v)?;
                done.clear();
                let mut m1 = RowMeta::new(t.columns.len());
                m1.write(ROW, v, &[]);
                let new_values: Vec<_> = values
                    .iter()
                    .enumerate()
                    .map(|(c, value)| {
                        m1.write(c + 1, v, &[]);
                        (c, v, value.clone())
                    })
                    .collect();
                self.merger.transition(
                    &RowRef { t, key, key_bytes },
                    None,
                    m1,
                    &new_values,
                    Visible::Table,
                )?;
                merged = true;
            }
        }
        self.merger.write_fresh(t, &done, v)?;
        fresh.clear();
        Ok(merged)
    }
}
