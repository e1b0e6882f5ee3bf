//! Foreign-key conflicts kept by `--keep held`: the deleted parents the held row needs.

use super::*;
use crate::error::{Error, Result};
use crate::format::change::{CellWrite, OpKind, RowOp};
use crate::format::ids::ChangeId;
use crate::format::value::Value;
use crate::merge::Merger;
use crate::replica::Replica;
use crate::store::rowmeta::{ROW, RowMeta, Version};
use crate::store::tables::TableInfo;

impl Replica {
    /// For a row held because a foreign key points at no row: the op that brings back
    /// each missing parent, as a person would by inserting it again with the values it
    /// had (an insert over every head of its existence, each cell over the value it
    /// repeats, so other candidates of its cells stay). Refused, with
    /// what to do instead, when a parent cannot be brought back that way: its table is
    /// not tracked, the key refers to columns other than its primary key, it never was
    /// here, or it is held itself.
    pub(crate) fn parents_to_restore<'t>(
        &self,
        conflict: &Conflict,
        t: &TableInfo,
        key_bytes: &[u8],
        m: &RowMeta,
        merger: &Merger<'_>,
        tables: &'t [TableInfo],
    ) -> Result<Vec<(&'t TableInfo, RowOp)>> {
        let refuse = |reason: crate::error::CannotResolveReason| {
            Error::Resolve(crate::error::ResolveError::CannotResolve {
                conflict: conflict.id.clone(),
                reason,
            })
        };
        let (kept, _) = merger.stored_values(t, key_bytes)?;
        let row = self.row_values(&RowView {
            t,
            key_bytes,
            m,
            origins: &merger.origins,
            current: None,
            kept: &kept,
        })?;
        let names: Vec<&String> = t.key_columns.iter().chain(&t.columns).collect();
        let value_of = |col: &str| names.iter().position(|n| *n == col).map(|i| &row[i]);
        let mut keys: Vec<ForeignKey> = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )?;
        let mut rows = stmt.query([&t.name])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            if keys.last().is_none_or(|k| k.0 != id) {
                keys.push((id, r.get(1)?, Vec::new(), Vec::new()));
            }
            let k = keys.last_mut().expect("pushed above");
            k.2.push(r.get(2)?);
            k.3.push(r.get(3)?);
        }
        let mut out = Vec::new();
        for (_, parent, from, to) in keys {
            let values: Vec<Value> = from
                .iter()
                .map(|c| value_of(c).cloned().unwrap_or(Value::Null))
                .collect();
            if values.contains(&Value::Null) {
                continue; // a NULL reference needs no parent
            }
            let Some(pt) = tables.iter().find(|x| x.name.eq_ignore_ascii_case(&parent)) else {
                return Err(refuse(crate::error::CannotResolveReason::ParentUntracked {
                    parent,
                }));
            };
            // The parent's key, in its key's column order.
            let mut pkey = Vec::new();
            for kc in &pt.key_columns {
                let at = to.iter().enumerate().position(|(i, c)| {
                    c.as_deref()
                        .unwrap_or_else(|| pt.key_columns.get(i).map_or("", |s| s.as_str()))
                        .eq_ignore_ascii_case(kc)
                });
                match at {
                    Some(i) if to.len() == pt.key_columns.len() => pkey.push(values[i].clone()),
                    _ => {
                        return Err(refuse(crate::error::CannotResolveReason::ParentNotByKey {
                            parent,
                        }));
                    }
                }
            }
            if merger.read_row(pt, &pkey)?.is_some() {
                continue;
            }
            let pkey_bytes = crate::format::value::encode_key(&pkey);
            let Some(pm) = merger.load_meta(pt, &pkey_bytes)? else {
                return Err(refuse(crate::error::CannotResolveReason::ParentNeverHere {
                    parent,
                    key: pkey,
                }));
            };
            if pm.held {
                return Err(refuse(crate::error::CannotResolveReason::ParentHeld {
                    parent,
                    key: pkey,
                }));
            }
            let id = |h: &Version| ChangeId {
                origin: merger.origins[&h.origin],
                seq: h.seq,
            };
            let (pkept, _) = merger.stored_values(pt, &pkey_bytes)?;
            let pvalues = self.row_values(&RowView {
                t: pt,
                key_bytes: &pkey_bytes,
                m: &pm,
                origins: &merger.origins,
                current: None,
                kept: &pkept,
            })?;
            let nkey = pt.key_columns.len();
            let cells = (0..pt.columns.len())
                .map(|c| CellWrite {
                    column: c,
                    value: pvalues[nkey + c].clone(),
                    // The value brought back overwrites the one it repeats; any other
                    // candidate of that cell stays.
                    preds: pm.winner(c + 1, &merger.origins).iter().map(id).collect(),
                })
                .collect();
            out.push((
                pt,
                RowOp {
                    kind: OpKind::Insert,
                    key: pkey,
                    row_preds: pm.cells[ROW].iter().map(id).collect(),
                    lineage: None,
                    cells,
                },
            ));
        }
        if out.is_empty() {
            return Err(refuse(crate::error::CannotResolveReason::ParentsPresent));
        }
        Ok(out)
    }
}
