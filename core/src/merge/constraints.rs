//! Constraint conflicts: rows a UNIQUE index, a foreign key, a CHECK or NOT NULL refuses are held out of the table, alike on every replica.

use super::values::HeadValues;
use super::*;
use crate::error::Result;
use crate::format::ids::ReplicaId;
use crate::format::value::{Value, encode_key};
use crate::store::held::{self, HeldReason};
use crate::store::rowmeta::RowMeta;
use crate::store::tables::{TableInfo, q};
use rusqlite::{ErrorCode, params_from_iter};

impl<'c> Merger<'c> {
    /// A write of the shown row that `failure` refused. A constraint conflict needs the
    /// whole row (to find the rows in the way, to hold it, to show its conflict), so the
    /// unchanged columns are loaded first. A row that outranks every row blocking its
    /// UNIQUE slot takes it; otherwise it is held, out of the table. Returns whether the
    /// table shows the row after all.
    pub(crate) fn refused(
        &mut self,
        row: &RowRef<'_>,
        m1: &mut RowMeta,
        vals: &mut HeadValues<'_>,
        changed: &[usize],
        mut row_values: Vec<Value>,
        failure: rusqlite::Error,
    ) -> Result<bool> {
        let Some(reason) = constraint_reason(&failure) else {
            return Err(failure.into());
        };
        let t = row.t;
        if vals.old_mat && vals.old_visible.is_none() {
            vals.old_visible = self.read_row(t, row.key)?;
            row_values = vals.shown_row(m1, &row.t.defaults);
        }
        let won = reason == HeldReason::Unique && self.try_evict_blockers(row, m1, &row_values)?;
        if won
            && self
                .write_shown(row, vals.old_mat, changed, &row_values)
                .is_ok()
        {
            return Ok(true);
        }
        m1.held = true;
        if vals.old_mat {
            self.delete_row(t, row.key)?;
        }
        let blocker = if reason == HeldReason::Unique {
            self.find_unique_blockers(t, row.key, &row_values)?
                .into_iter()
                .next()
        } else {
            None
        };
        held::hold(self.conn, t.tid, row.key_bytes, reason, blocker.as_deref())?;
        Ok(false)
    }

    /// Rows that hold, in some UNIQUE index (the primary key included: keys that differ
    /// byte-wise can still collide, like 1 and 1.0), the values `values` would take.
    pub(crate) fn find_unique_blockers(
        &self,
        t: &TableInfo,
        key: &[Value],
        values: &[Value],
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for index in crate::store::tables::unique_indexes(self.conn, &t.name)? {
            let mut conds = Vec::new();
            let mut args: Vec<Value> = Vec::new();
            let mut usable = true;
            for (c, coll) in &index.columns {
                let v = if let Some(i) = t.columns.iter().position(|x| x == c) {
                    values[i].clone()
                } else if let Some(i) = t.key_columns.iter().position(|x| x == c) {
                    key[i].clone()
                } else {
                    usable = false;
                    break;
                };
                if v == Value::Null {
                    usable = false; // NULLs never collide in a UNIQUE index
                    break;
                }
                args.push(v);
                conds.push(format!("{} = ?{} COLLATE {}", q(c), args.len(), q(coll)));
            }
            if !usable {
                continue;
            }
            let keys = t
                .key_columns
                .iter()
                .map(|k| q(k))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {keys} FROM {} WHERE {}",
                q(&t.name),
                conds.join(" AND ")
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let n = t.key_columns.len();
            let found = stmt
                .query_map(params_from_iter(args.iter()), |r| {
                    (0..n)
                        .map(|i| r.get::<_, Value>(i))
                        .collect::<rusqlite::Result<Vec<_>>>()
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for k in found {
                if k != key {
                    let kb = encode_key(&k);
                    if !out.contains(&kb) {
                        out.push(kb);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The row's priority in a constraint conflict: the older birth keeps the slot.
    pub(crate) fn priority(
        &self,
        m: &RowMeta,
        key_bytes: &[u8],
    ) -> (u64, Option<ReplicaId>, u64, Vec<u8>) {
        match m.birth(&self.origins) {
            Some(b) => (
                b.hlc,
                Some(self.origins[&b.origin]),
                b.seq,
                key_bytes.to_vec(),
            ),
            None => (u64::MAX, None, u64::MAX, key_bytes.to_vec()),
        }
    }

    /// When the incoming row outranks every row blocking it in a UNIQUE index, holds
    /// those rows instead. Returns whether the way is now clear.
    pub(crate) fn try_evict_blockers(
        &mut self,
        row: &RowRef<'_>,
        m1: &RowMeta,
        values: &[Value],
    ) -> Result<bool> {
        let t = row.t;
        let blockers = self.find_unique_blockers(t, row.key, values)?;
        if blockers.is_empty() {
            return Ok(false);
        }
        let mine = self.priority(m1, row.key_bytes);
        let mut metas = Vec::new();
        for b in &blockers {
            let Some(mb) = self.load_meta(t, b)? else {
                return Ok(false);
            };
            if self.priority(&mb, b) <= mine {
                return Ok(false);
            }
            metas.push(mb);
        }
        for (b, mb) in blockers.iter().zip(metas) {
            let key = crate::format::value::decode_key(b)?;
            let mut held = mb.clone();
            held.held = true;
            held::hold(self.conn, t.tid, b, HeldReason::Unique, Some(row.key_bytes))?;
            self.transition(
                &RowRef {
                    t,
                    key: &key,
                    key_bytes: b,
                },
                Some(&mb),
                held,
                &[],
                Visible::Table,
            )?;
        }
        Ok(true)
    }

    /// Puts `key` on hold with `reason` (used for foreign key violations found at commit).
    pub(crate) fn hold(&mut self, t: &TableInfo, key: &[Value], reason: HeldReason) -> Result<()> {
        let key_bytes = encode_key(key);
        let Some(m0) = self.load_meta(t, &key_bytes)? else {
            return Ok(());
        };
        if m0.held {
            return Ok(());
        }
        let mut m1 = m0.clone();
        m1.held = true;
        held::hold(self.conn, t.tid, &key_bytes, reason, None)?;
        self.transition(
            &RowRef {
                t,
                key,
                key_bytes: &key_bytes,
            },
            Some(&m0),
            m1,
            &[],
            Visible::Table,
        )
    }

    /// Tries to put a held row back into its table; it stays held if it still cannot go in.
    pub(crate) fn release(&mut self, t: &TableInfo, key_bytes: &[u8]) -> Result<()> {
        let Some(m0) = self.load_meta(t, key_bytes)? else {
            return Ok(());
        };
        if !m0.held {
            return Ok(());
        }
        let key = crate::format::value::decode_key(key_bytes)?;
        let mut m1 = m0.clone();
        m1.held = false;
        self.transition(
            &RowRef {
                t,
                key: &key,
                key_bytes,
            },
            Some(&m0),
            m1,
            &[],
            Visible::Table,
        )
    }
}

/// Classifies a failed write: a constraint we hold rows for, or `None` for a real error.
pub(crate) fn constraint_reason(e: &rusqlite::Error) -> Option<HeldReason> {
    if let rusqlite::Error::SqliteFailure(f, _) = e
        && f.code == ErrorCode::ConstraintViolation
    {
        return Some(match f.extended_code {
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => HeldReason::Unique,
            rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => HeldReason::ForeignKey,
            rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL => HeldReason::NotNull,
            _ => HeldReason::Check,
        });
    }
    None
}
