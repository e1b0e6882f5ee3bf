//! Version vectors and acknowledgements as stored.

use crate::error::Result;
use crate::format::ids::ReplicaId;
use crate::format::ids::VersionVector;
use rusqlite::{Connection, params};

/// Records that `peer` holds `vector` (acknowledgements only grow).
pub(crate) fn store_ack(conn: &Connection, peer: ReplicaId, vector: &VersionVector) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO _tide_acks(peer, origin, seq) VALUES(?1, ?2, ?3)
         ON CONFLICT(peer, origin) DO UPDATE SET seq = max(seq, excluded.seq)",
    )?;
    for (origin, seq) in vector {
        stmt.execute(params![&peer.0[..], &origin.0[..], *seq as i64])?;
    }
    Ok(())
}

/// Which of an origin's counters a version vector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VectorOf {
    /// The highest contiguous seq stored (`_tide_origins.stored`).
    Stored,
    /// The highest seq applied (`_tide_origins.applied`).
    Applied,
}

/// This replica's version vector of what it stored or applied.
pub(crate) fn vector(conn: &Connection, of: VectorOf) -> Result<VersionVector> {
    let sql = match of {
        VectorOf::Stored => "SELECT id, stored FROM _tide_origins WHERE stored > 0",
        VectorOf::Applied => "SELECT id, applied FROM _tide_origins WHERE applied > 0",
    };
    read_vector(conn, sql, &[])
}

/// A version vector from a query yielding (replica id, seq) rows.
pub(crate) fn read_vector(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<VersionVector> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = VersionVector::new();
    for row in rows {
        let (id, seq) = row?;
        out.insert(
            ReplicaId(id.try_into().expect("ids are stored as 16 bytes")),
            seq as u64,
        );
    }
    Ok(out)
}
