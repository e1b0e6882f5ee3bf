//! A canonical hash of everything replicas must agree on (invariant 1): the tracked
//! tables' rows, bit-exact, and the open conflicts. Used by tests and `doctor`.

use crate::error::Result;
use crate::format::value::Value;
use crate::replica::Replica;
use crate::store::tables::{self as tables, q};

impl Replica {
    /// BLAKE3 over the tracked tables (by name, rows by key) and the conflict set (ids,
    /// kinds and held rows). Two replicas that applied the same changes give equal hashes.
    pub fn state_hash(&self) -> Result<[u8; 32]> {
        let mut h = blake3::Hasher::new_derive_key("tide 2026-11 state hash v1");
        let mut tables = tables::tracked_tables(&self.conn)?;
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let mut buf = Vec::new();
        for t in &tables {
            buf.clear();
            crate::format::codec::put_bytes(&mut buf, t.name.as_bytes());
            h.update(&buf);
            let cols = t.quoted_columns();
            let keys: Vec<String> = t.key_columns.iter().map(|c| q(c)).collect();
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}",
                cols.join(", "),
                q(&t.name),
                keys.join(", ")
            );
            let mut stmt = self.conn.prepare(&sql)?;
            let n = cols.len();
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                buf.clear();
                buf.push(b'r');
                for i in 0..n {
                    r.get::<_, Value>(i)?.encode(&mut buf);
                }
                h.update(&buf);
            }
        }
        let mut stmt = self
            .conn
            .prepare("SELECT id, kind FROM _tide_conflicts ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            h.update(b"c");
            h.update(&r.get::<_, Vec<u8>>(0)?);
            h.update(r.get::<_, String>(1)?.as_bytes());
        }
        // Table numbers are local; names are what replicas share.
        let mut stmt = self.conn.prepare(
            "SELECT t.name, h.key, h.reason FROM _tide_held h JOIN _tide_tables t USING(tid) ORDER BY t.name, h.key",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            h.update(b"h");
            buf.clear();
            crate::format::codec::put_bytes(&mut buf, r.get::<_, String>(0)?.as_bytes());
            h.update(&buf);
            h.update(&r.get::<_, Vec<u8>>(1)?);
            h.update(r.get::<_, String>(2)?.as_bytes());
        }
        Ok(*h.finalize().as_bytes())
    }
}
