//! Reading and writing a row: its metadata, its values in the user table, fresh rows in batches.

use super::*;
use crate::error::Result;
use crate::format::value::Value;
use crate::store::kept::{Spilled, read_kept};
use crate::store::rowmeta::{CellValues, RowMeta, Version};
use crate::store::tables::{TableInfo, q};
use foldhash::HashMap;
use rusqlite::{OptionalExtension, ToSql, params_from_iter};
use std::rc::Rc;
use std::sync::OnceLock;

impl<'c> Merger<'c> {
    pub(crate) fn load_meta(&self, t: &TableInfo, key_bytes: &[u8]) -> Result<Option<RowMeta>> {
        let blob: Option<Vec<u8>> =
            self.hot("SELECT meta FROM _tide_rows WHERE tid=?1 AND key=?2", |s| {
                s.query_row(rusqlite::params![t.tid, key_bytes], |r| r.get(0))
                    .optional()
            })?;
        Ok(match blob {
            Some(b) => {
                let mut m = RowMeta::decode(&b)?;
                m.ensure_cells(t.columns.len());
                Some(m)
            }
            None => None,
        })
    }

    /// Rows per multi-row statement for `t`: [`BATCH`], fewer for very wide tables so a
    /// statement stays under SQLite's limit on parameters.
    pub(crate) fn batch_rows(t: &TableInfo) -> usize {
        let per_row = t.key_columns.len() + t.columns.len();
        BATCH.min(30_000 / per_row.max(1)).max(1)
    }

    /// The metadata of many rows of one table, in `keys` order, with one statement per
    /// [`BATCH`] keys.
    pub(crate) fn load_metas(&self, t: &TableInfo, keys: &[&[u8]]) -> Result<Vec<Option<RowMeta>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            if chunk.len() < BATCH / 4 {
                for k in chunk {
                    out.push(self.load_meta(t, k)?);
                }
                continue;
            }
            // Always BATCH placeholders (padded with the first key) so one prepared
            // statement serves every chunk.
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                format!(
                    "SELECT key, meta FROM _tide_rows WHERE tid=?1 AND key IN ({})",
                    marks(2, BATCH)
                )
            });
            let mut stmt = self.conn.prepare_cached(sql)?;
            let params = std::iter::once(&t.tid as &dyn ToSql)
                .chain((0..BATCH).map(|i| chunk.get(i).unwrap_or(&chunk[0]) as &dyn ToSql));
            let mut found: HashMap<Vec<u8>, Vec<u8>> = HashMap::default();
            let mut rows = stmt.query(params_from_iter(params))?;
            while let Some(r) = rows.next()? {
                found.insert(r.get(0)?, r.get(1)?);
            }
            for k in chunk {
                out.push(match found.get(*k) {
                    Some(b) => {
                        let mut m = RowMeta::decode(b)?;
                        m.ensure_cells(t.columns.len());
                        Some(m)
                    }
                    None => None,
                });
            }
        }
        Ok(out)
    }

    /// Records rows this replica never had, each written whole by `v`. A row that has
    /// metadata after all is left alone and the call fails: its caller's premise (looked
    /// up, or sealed once per key) did not hold, and going on would lose what it knew.
    pub(crate) fn write_fresh(&self, t: &TableInfo, keys: &[&[u8]], v: Version) -> Result<()> {
        let written = self.write_fresh_where_new(t, keys, v)?;
        if written != keys.len() {
            return Err(crate::error::Error::Apply(
                crate::error::ApplyError::RowsAlreadyKnown {
                    table: t.name.clone(),
                    rows: keys.len() - written,
                    of: keys.len(),
                },
            ));
        }
        Ok(())
    }

    /// Records rows written whole by `v` for the keys that have no metadata, leaves the
    /// others alone, and says how many it wrote.
    pub(crate) fn write_fresh_where_new(
        &self,
        t: &TableInfo,
        keys: &[&[u8]],
        v: Version,
    ) -> Result<usize> {
        let meta = RowMeta::fresh(t.columns.len(), v).encode();
        let mut written = 0;
        for chunk in keys.chunks(BATCH) {
            if chunk.len() < BATCH / 4 {
                for k in chunk {
                    written += self
                        .conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO _tide_rows(tid, key, meta) VALUES(?1, ?3, ?2)",
                        )?
                        .execute(rusqlite::params![t.tid, &meta, k])?;
                }
                continue;
            }
            // Padding repeats the first key, and is ignored as a row already there.
            static SQL: OnceLock<String> = OnceLock::new();
            let sql = SQL.get_or_init(|| {
                let rows = (0..BATCH)
                    .map(|i| format!("(?1, ?{}, ?2)", i + 3))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("INSERT OR IGNORE INTO _tide_rows(tid, key, meta) VALUES {rows}")
            });
            let params = [&t.tid as &dyn ToSql, &meta]
                .into_iter()
                .chain((0..BATCH).map(|i| chunk.get(i).unwrap_or(&chunk[0]) as &dyn ToSql));
            written += self
                .conn
                .prepare_cached(sql)?
                .execute(params_from_iter(params))?;
        }
        Ok(written)
    }

    /// Inserts exactly [`Merger::batch_rows`] new rows into their table in one statement.
    /// A constraint error means none went in.
    pub(crate) fn insert_rows(
        &self,
        t: &TableInfo,
        rows: &[(&[Value], &[Value])],
    ) -> rusqlite::Result<()> {
        debug_assert_eq!(rows.len(), Self::batch_rows(t));
        let sql = self.table_sql(t, SqlKind::InsertMany);
        self.conn.prepare_cached(&sql)?.execute(params_from_iter(
            rows.iter().flat_map(|(k, v)| k.iter().chain(v.iter())),
        ))?;
        Ok(())
    }

    /// Inserts a new row into its table. False when a constraint refuses it (nothing
    /// was written; the full transition then decides what is held).
    pub(crate) fn insert_fresh_row(
        &self,
        t: &TableInfo,
        key: &[Value],
        values: &[Value],
    ) -> Result<bool> {
        match self.insert_row(t, key, values) {
            Ok(()) => Ok(true),
            Err(e) if constraint_reason(&e).is_some() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The values a row keeps for its heads that are not visible (`_tide_rows.vals`, and
    /// `_tide_values` for those that spilled), and which had spilled.
    pub(crate) fn stored_values(
        &self,
        t: &TableInfo,
        key_bytes: &[u8],
    ) -> Result<(CellValues, Spilled)> {
        let blob: Option<Option<Vec<u8>>> = self
            .conn
            .prepare_cached("SELECT vals FROM _tide_rows WHERE tid=?1 AND key=?2")?
            .query_row(rusqlite::params![t.tid, key_bytes], |r| r.get(0))
            .optional()?;
        match blob.flatten() {
            Some(b) => read_kept(self.conn, t.tid, key_bytes, &b),
            None => Ok((CellValues::new(), Spilled::new())),
        }
    }

    /// The row named exactly by `key`: SQLite calls 7 and 7.0, or 0.0 and -0.0, the same
    /// key, tide does not (values are bit-exact), so a row found under an equal but
    /// differently typed key is not this row.
    pub(crate) fn read_row(&self, t: &TableInfo, key: &[Value]) -> Result<Option<Vec<Value>>> {
        let sql = self.table_sql(t, SqlKind::Read);
        let (nk, n) = (t.key_columns.len(), t.key_columns.len() + t.columns.len());
        let row = self.hot(&sql, |s| {
            s.query_row(params_from_iter(key.iter()), |r| {
                (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .optional()
        })?;
        Ok(row.filter(|r| r[..nk] == *key).map(|mut r| r.split_off(nk)))
    }

    pub(crate) fn insert_row(
        &self,
        t: &TableInfo,
        key: &[Value],
        values: &[Value],
    ) -> rusqlite::Result<()> {
        let sql = self.table_sql(t, SqlKind::Insert);
        self.hot(&sql, |s| {
            s.execute(params_from_iter(key.iter().chain(values)))
        })?;
        Ok(())
    }

    pub(crate) fn update_row(
        &self,
        t: &TableInfo,
        key: &[Value],
        changed: &[usize],
        values: &[Value],
    ) -> rusqlite::Result<()> {
        if changed.is_empty() {
            return Ok(());
        }
        let nkey = key.len();
        let build = || {
            let sets = changed
                .iter()
                .enumerate()
                .map(|(j, &i)| format!("{} = ?{}", q(&t.columns[i]), nkey + j + 1))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "UPDATE OR ABORT {} SET {sets} WHERE {}",
                q(&t.name),
                key_where(t)
            )
        };
        // One statement per set of changed columns: up to 2^ncols of them, so their text
        // is kept for a bounded number of sets, and the statements stay in the
        // connection's LRU cache rather than with the merger.
        let sql: Rc<str> = if t.columns.len() <= 64 && self.sql.borrow().len() < SQL_TEXTS {
            let mask = changed.iter().fold(0u64, |m, &i| m | 1 << i);
            self.sql_for(t.tid, SqlKind::Update(mask), build)
        } else {
            Rc::from(build())
        };
        self.conn.prepare_cached(&sql)?.execute(params_from_iter(
            key.iter().chain(changed.iter().map(|&i| &values[i])),
        ))?;
        Ok(())
    }

    pub(crate) fn delete_row(&self, t: &TableInfo, key: &[Value]) -> Result<()> {
        let sql = self.table_sql(t, SqlKind::Delete);
        self.conn
            .prepare_cached(&sql)?
            .execute(params_from_iter(key.iter()))?;
        Ok(())
    }
}
