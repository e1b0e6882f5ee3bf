//! Foreign-key conflicts resolved by keeping the held row: the deleted parents it needs
//! come back with it.

use super::*;
use crate::error::{CannotResolveReason, Error, ResolveError, Result};
use crate::format::change::{CellWrite, OpKind, RowOp};
use crate::format::value::{Value, encode_key};
use crate::merge::Merger;
use crate::replica::Replica;
use crate::store::rowmeta::{ROW, RowMeta};
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
        let mut out = Vec::new();
        for (_, parent, from, to) in self.foreign_keys(&t.name)? {
            let values: Vec<Value> = from
                .iter()
                .map(|c| value_of(c).cloned().unwrap_or(Value::Null))
                .collect();
            if values.contains(&Value::Null) {
                continue; // a NULL reference needs no parent
            }
            let Some(pt) = tables.iter().find(|x| x.name.eq_ignore_ascii_case(&parent)) else {
                return Err(refuse(
                    conflict,
                    CannotResolveReason::ParentUntracked { parent },
                ));
            };
            let Some(pkey) = parent_key(pt, &to, &values) else {
                return Err(refuse(
                    conflict,
                    CannotResolveReason::ParentNotByKey { parent },
                ));
            };
            if let Some(op) = self.restore_op(conflict, &parent, pt, pkey, merger)? {
                out.push((pt, op));
            }
        }
        if out.is_empty() {
            return Err(refuse(conflict, CannotResolveReason::ParentsPresent));
        }
        Ok(out)
    }

    /// The foreign keys of `table`, in the order SQLite lists them.
    fn foreign_keys(&self, table: &str) -> Result<Vec<ForeignKey>> {
        let mut keys: Vec<ForeignKey> = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )?;
        let mut rows = stmt.query([table])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            if keys.last().is_none_or(|k| k.0 != id) {
                keys.push((id, r.get(1)?, Vec::new(), Vec::new()));
            }
            let k = keys.last_mut().expect("pushed above");
            k.2.push(r.get(2)?);
            k.3.push(r.get(3)?);
        }
        Ok(keys)
    }

    /// The op that inserts the parent row `pkey` of `pt` again with the values it had,
    /// or `None` when the row is there. Refused when it never was here or is held.
    fn restore_op(
        &self,
        conflict: &Conflict,
        parent: &str,
        pt: &TableInfo,
        pkey: Vec<Value>,
        merger: &Merger<'_>,
    ) -> Result<Option<RowOp>> {
        if merger.read_row(pt, &pkey)?.is_some() {
            return Ok(None);
        }
        let pkey_bytes = encode_key(&pkey);
        let Some(pm) = merger.load_meta(pt, &pkey_bytes)? else {
            return Err(refuse(
                conflict,
                CannotResolveReason::ParentNeverHere {
                    parent: parent.into(),
                    key: pkey,
                },
            ));
        };
        if pm.held {
            return Err(refuse(
                conflict,
                CannotResolveReason::ParentHeld {
                    parent: parent.into(),
                    key: pkey,
                },
            ));
        }
        let origins = &*merger.origins;
        let (pkept, _) = merger.stored_values(pt, &pkey_bytes)?;
        let pvalues = self.row_values(&RowView {
            t: pt,
            key_bytes: &pkey_bytes,
            m: &pm,
            origins,
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
                preds: pm
                    .winner(c + 1, origins)
                    .iter()
                    .map(|h| change_id(origins, h))
                    .collect(),
            })
            .collect();
        Ok(Some(RowOp {
            kind: OpKind::Insert,
            key: pkey,
            row_preds: pm.cells[ROW]
                .iter()
                .map(|h| change_id(origins, h))
                .collect(),
            lineage: None,
            cells,
        }))
    }
}

/// The parent's key, in its key's column order, from the values a foreign key refers to
/// it by (`to` lists the parent's columns, `None` for its primary key). `None` when the
/// key refers to columns other than the parent's primary key.
fn parent_key(pt: &TableInfo, to: &[Option<String>], values: &[Value]) -> Option<Vec<Value>> {
    let mut pkey = Vec::with_capacity(pt.key_columns.len());
    for kc in &pt.key_columns {
        let at = to.iter().enumerate().position(|(i, c)| {
            c.as_deref()
                .unwrap_or_else(|| pt.key_columns.get(i).map_or("", |s| s.as_str()))
                .eq_ignore_ascii_case(kc)
        });
        match at {
            Some(i) if to.len() == pt.key_columns.len() => pkey.push(values[i].clone()),
            _ => return None,
        }
    }
    Some(pkey)
}

/// Refuses to resolve `conflict`, saying why.
fn refuse(conflict: &Conflict, reason: CannotResolveReason) -> Error {
    Error::Resolve(ResolveError::CannotResolve {
        conflict: conflict.id.clone(),
        reason,
    })
}
