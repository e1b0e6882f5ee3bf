//! Sealing: pending captures become one signed change (DESIGN §1 "Seal").
//!
//! The capture log says which rows changed and which columns; sealing reads the rows'
//! current values, names the heads each write overwrote, and records the change in the
//! log and in the row metadata, all in one transaction.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use crate::change::{CellWrite, OpKind, RowOp, TableOps};
use crate::error::Result;
use crate::identity::SecretIdentity;
use crate::ids::ChangeId;
use crate::merge::{Merger, RowRef, Visible};
use crate::replica::{Replica, origins_map};
use crate::rowmeta::{ROW, RowMeta, VRef, Version};
use crate::schema::{self, TableInfo};
use crate::value::{Value, encode_key};

const OP_INSERT: i64 = 1;
const OP_DELETE: i64 = 3;
/// Mask bit 62 stands for every column from 62 on.
const WIDE_BIT: u64 = 1 << 62;

impl Replica {
    /// Seals pending captured writes into one signed change. Returns its id, or `None`
    /// when nothing was pending. Refuses on a copied database (invariant 11).
    pub fn seal(&mut self) -> Result<Option<ChangeId>> {
        if !has_pending(&self.conn)? {
            return Ok(None);
        }
        let secret = self.secret_for_sealing()?;
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let id = seal_pending(&tx, &secret)?;
        tx.commit()?;
        if let Some(id) = id {
            self.record_sealed(id.seq)?;
        }
        Ok(id)
    }
}

/// True when any tracked table has captured writes waiting.
pub(crate) fn has_pending(conn: &Connection) -> Result<bool> {
    for t in schema::tracked_tables(conn)? {
        let any: bool = conn.query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM {})", t.cap_table()),
            [],
            |r| r.get(0),
        )?;
        if any {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What the capture log says about one row since the last seal.
struct Pending {
    key: Vec<Value>,
    /// Columns written (bit i = column i; bit 62 = columns 62 and up).
    mask: u64,
    /// Values the row had when last deleted (from the delete trigger).
    last_delete: Option<Vec<Value>>,
}

fn read_captures(conn: &Connection, t: &TableInfo) -> Result<Vec<Pending>> {
    let nk = t.key_columns.len();
    let nc = t.columns.len();
    let mut cols: Vec<String> = (0..nk).map(|i| format!("k{i}")).collect();
    cols.extend((0..nc).map(|i| format!("v{i}")));
    let sql = format!(
        "SELECT op, mask, {} FROM {} ORDER BY rowid",
        cols.join(", "),
        t.cap_table()
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut order: Vec<Pending> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    while let Some(r) = rows.next()? {
        let op: i64 = r.get(0)?;
        let mask: Option<i64> = r.get(1)?;
        let key = (0..nk)
            .map(|i| r.get::<_, Value>(2 + i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let kb = encode_key(&key);
        let i = *index.entry(kb).or_insert_with(|| {
            order.push(Pending {
                key,
                mask: 0,
                last_delete: None,
            });
            order.len() - 1
        });
        let p = &mut order[i];
        match op {
            OP_INSERT => p.mask = u64::MAX,
            OP_DELETE => {
                p.last_delete = Some(
                    (0..nc)
                        .map(|j| r.get::<_, Value>(2 + nk + j))
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                )
            }
            _ => p.mask |= mask.unwrap_or(-1) as u64,
        }
    }
    Ok(order)
}

fn written(mask: u64, col: usize) -> bool {
    mask & (1 << col.min(62)) != 0 || (col >= 62 && mask & WIDE_BIT != 0)
}

type PlannedCell = (usize, Value, Vec<VRef>);

/// Seals inside the caller's transaction. Returns the new change's id, if any.
pub(crate) fn seal_pending(conn: &Connection, secret: &SecretIdentity) -> Result<Option<ChangeId>> {
    let tables = schema::tracked_tables(conn)?;
    let mut captured = Vec::new();
    for t in &tables {
        let pending = read_captures(conn, t)?;
        conn.execute_batch(&format!("DELETE FROM {}", t.cap_table()))?;
        if !pending.is_empty() {
            captured.push((t, pending));
        }
    }
    if captured.is_empty() {
        return Ok(None);
    }
    let mut merger = Merger::new(conn, origins_map(conn)?);
    let self_idx: i64 =
        conn.query_row("SELECT v FROM _tide_meta WHERE k='self'", [], |r| r.get(0))?;

    // First decide every op against the current metadata, then append the change (which
    // fixes seq and HLC), then record the new heads.
    struct Planned<'a> {
        t: &'a TableInfo,
        key: Vec<Value>,
        key_bytes: Vec<u8>,
        m0: Option<RowMeta>,
        kind: OpKind,
        row_preds: Vec<VRef>,
        lineage: Option<crate::rowmeta::Stamp>,
        /// (column, value, predecessors)
        cells: Vec<PlannedCell>,
        old_values: Option<Vec<Value>>,
    }
    let mut planned = Vec::new();
    for (t, pending) in &captured {
        for p in pending {
            let key_bytes = encode_key(&p.key);
            let m0 = merger.load_meta(t, &key_bytes)?;
            let current = merger.read_row(t, &p.key)?;
            let was_live = m0.as_ref().is_some_and(|m| m.materialized(&merger.origins));
            let (kind, mask) = match (&current, was_live) {
                (Some(_), false) => (OpKind::Insert, u64::MAX),
                (Some(_), true) => (OpKind::Update, p.mask),
                (None, true) => (
                    OpKind::Delete,
                    if p.mask == u64::MAX { u64::MAX } else { p.mask },
                ),
                // Created and deleted since the last seal, or never visible here: nothing to say.
                (None, false) => continue,
            };
            let m = m0.clone().unwrap_or_else(|| RowMeta::new(t.columns.len()));
            let row_alive_heads: Vec<VRef> = m.cells[ROW]
                .iter()
                .filter(|h| h.alive)
                .map(|h| h.vref())
                .collect();
            // A row created where it was deleted overwrites what the deletion saw: the
            // cell heads the deleting changes causally covered, not values written
            // concurrently with the deletion (those stay as candidates).
            let deleted_over = if was_live {
                Vec::new()
            } else {
                deletion_contexts(conn, &m)?
            };
            // The app saw the visible state: it overwrote the heads showing it, no others.
            let row_preds = if was_live {
                row_alive_heads.clone()
            } else {
                m.cells[ROW]
                    .iter()
                    .filter(|h| !h.alive)
                    .map(|h| h.vref())
                    .collect()
            };
            let values = match (&current, &p.last_delete) {
                (Some(row), _) => Some(row.clone()),
                (None, Some(old)) => Some(old.clone()),
                (None, None) => None,
            };
            let mut cells = Vec::new();
            for c in 0..t.columns.len() {
                if !written(mask, c) {
                    continue;
                }
                let Some(values) = &values else { break };
                let heads = &m.cells[c + 1];
                let preds: Vec<VRef> = if !was_live {
                    heads
                        .iter()
                        .filter(|h| deleted_over.iter().any(|d| d.covers(h, &merger.origins)))
                        .map(|h| h.vref())
                        .collect()
                } else if heads.len() > 1 && in_conflict(conn, t, &key_bytes, c)? {
                    // Only the value the app saw is overwritten; the other candidates stay.
                    m.winner(c + 1, &merger.origins)
                        .map(|w| vec![w.vref()])
                        .unwrap_or_default()
                } else {
                    heads.iter().map(|h| h.vref()).collect()
                };
                cells.push((c, values[c].clone(), preds));
            }
            if kind == OpKind::Update && cells.is_empty() {
                // Nothing changed (an UPDATE that set columns to what they were, or a row
                // noted as a possible REPLACE victim that survived).
                continue;
            }
            let old_values = if kind == OpKind::Delete {
                p.last_delete.clone()
            } else {
                None
            };
            let lineage = if kind == OpKind::Update {
                m.birth(&merger.origins)
            } else {
                None
            };
            planned.push(Planned {
                t,
                key: p.key.clone(),
                key_bytes,
                m0,
                kind,
                row_preds,
                lineage,
                cells,
                old_values,
            });
        }
    }
    if planned.is_empty() {
        return Ok(None);
    }
    let origins = std::rc::Rc::clone(&merger.origins);
    let to_id = |p: &VRef| ChangeId {
        origin: origins[&p.0],
        seq: p.1,
    };
    let change = crate::log::append_own(
        conn,
        secret,
        |change| {
            for p in &planned {
                if change
                    .tables
                    .last()
                    .is_none_or(|t: &TableOps| t.name != p.t.name)
                {
                    change.tables.push(TableOps {
                        name: p.t.name.clone(),
                        key_columns: p.t.key_columns.clone(),
                        columns: p.t.columns.clone(),
                        rows: Vec::new(),
                    });
                }
                let ops = change.tables.last_mut().expect("pushed above");
                ops.rows.push(RowOp {
                    kind: p.kind,
                    key: p.key.clone(),
                    row_preds: p.row_preds.iter().map(to_id).collect(),
                    lineage: p.lineage.map(|l| crate::change::Lineage {
                        change: to_id(&(l.origin, l.seq)),
                        hlc: l.hlc,
                    }),
                    cells: p
                        .cells
                        .iter()
                        .map(|(c, v, preds)| CellWrite {
                            column: *c,
                            value: v.clone(),
                            preds: preds.iter().map(to_id).collect(),
                        })
                        .collect(),
                });
            }
        },
        true,
    )?;
    for p in planned {
        let v = Version {
            origin: self_idx,
            seq: change.seq,
            hlc: change.hlc,
            alive: p.kind != OpKind::Delete,
            created: p.kind == OpKind::Insert,
            lineage: p.lineage,
        };
        let mut m1 =
            p.m0.clone()
                .unwrap_or_else(|| RowMeta::new(p.t.columns.len()));
        m1.write(ROW, v, &p.row_preds);
        let mut new_values = Vec::new();
        for (c, value, preds) in p.cells {
            m1.write(c + 1, v, &preds);
            new_values.push((c, v, value));
        }
        if p.kind != OpKind::Delete {
            // The app wrote the row into its table: whatever held it is settled by this write.
            m1.held = false;
        }
        let visible = match p.old_values {
            Some(old) => Visible::LocalDelete(old),
            None => Visible::LocalWrite,
        };
        merger.transition(
            &RowRef {
                t: p.t,
                key: &p.key,
                key_bytes: &p.key_bytes,
            },
            p.m0.as_ref(),
            m1,
            &new_values,
            visible,
        )?;
    }
    // A local delete may free a slot a held row waits for, or orphan a child: settle
    // here exactly as a replica applying this change will.
    let _off = schema::TriggersOff::new(conn)?;
    crate::log::settle(&mut merger, &tables)?;
    Ok(Some(change.id()))
}

/// A deleting change and the version vector it was made against.
struct DeletionContext {
    version: VRef,
    deps: HashMap<crate::ids::ReplicaId, u64>,
}

impl DeletionContext {
    fn covers(&self, h: &Version, origins: &crate::rowmeta::Origins) -> bool {
        h.vref() == self.version
            || self
                .deps
                .get(&origins[&h.origin])
                .is_some_and(|s| *s >= h.seq)
    }
}

/// The contexts of the row's deleting heads (read from the log; this path is rare).
fn deletion_contexts(conn: &Connection, m: &RowMeta) -> Result<Vec<DeletionContext>> {
    let mut out = Vec::new();
    for h in m.cells[ROW].iter().filter(|h| !h.alive) {
        let body: Vec<u8> = conn.query_row(
            "SELECT body FROM _tide_log WHERE origin=?1 AND seq=?2",
            params![h.origin, h.seq as i64],
            |r| r.get(0),
        )?;
        let change = crate::change::Change::decode(&body)?;
        out.push(DeletionContext {
            version: h.vref(),
            deps: change.deps.into_iter().collect(),
        });
    }
    Ok(out)
}

fn in_conflict(conn: &Connection, t: &TableInfo, key_bytes: &[u8], col: usize) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM _tide_conflicts WHERE tid=?1 AND key=?2 AND col=?3)",
    )?;
    Ok(stmt.query_row(params![t.tid, key_bytes, (col + 1) as i64], |r| r.get(0))?)
}
