//! Settings and counters in `_tide_meta`, and the origins table's local numbering.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::format::ids::ReplicaId;
use crate::store::rowmeta::Origins;

/// A counter or setting from `_tide_meta` (0 when unset).
pub(crate) fn get_u64(conn: &Connection, key: &str) -> Result<u64> {
    Ok(conn
        .query_row("SELECT v FROM _tide_meta WHERE k=?1", [key], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0) as u64)
}

/// This replica's own origin number (`_tide_meta.self`), set by `init`.
pub(crate) fn self_idx(conn: &Connection) -> Result<i64> {
    conn.prepare_cached("SELECT v FROM _tide_meta WHERE k='self'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .ok_or(crate::error::Error::Open(
            crate::error::OpenError::NotInitialized,
        ))
}

/// Sets a counter or setting in `_tide_meta`.
pub(crate) fn set_u64(conn: &Connection, key: &str, v: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO _tide_meta(k, v) VALUES(?1, ?2) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
        params![key, v as i64],
    )?;
    Ok(())
}

/// Every known origin: local number → replica id.
pub(crate) fn origins_map(conn: &Connection) -> Result<Origins> {
    let mut stmt = conn.prepare_cached("SELECT idx, id FROM _tide_origins")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    let mut out = Origins::default();
    for row in rows {
        let (idx, id) = row?;
        out.insert(
            idx,
            ReplicaId(id.try_into().expect("ids are stored as 16 bytes")),
        );
    }
    Ok(out)
}

/// The local number of `id`, adding a key-less origin when unknown.
pub(crate) fn origin_idx(conn: &Connection, id: ReplicaId) -> Result<i64> {
    let mut stmt = conn.prepare_cached("SELECT idx FROM _tide_origins WHERE id=?1")?;
    if let Some(idx) = stmt.query_row([&id.0[..]], |r| r.get(0)).optional()? {
        return Ok(idx);
    }
    conn.execute("INSERT INTO _tide_origins(id) VALUES(?1)", [&id.0[..]])?;
    Ok(conn.last_insert_rowid())
}
