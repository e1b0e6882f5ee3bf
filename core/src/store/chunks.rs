//! The log's chunk store: chunks kept once, packed when that is smaller, swept when no head names them.

use crate::error::DecodeError;
use crate::error::{Error, Result};
use crate::format::change::PACKING_RAW;
use crate::format::change::{ChunkRef, Manifest, SignedChange};
use foldhash::HashMap;
use rusqlite::{Connection, OptionalExtension, params};

/// Chunks just received, by hash, kept up to a memory budget so that applying them
/// right after storing need not read them back from the log and unpack them.
#[derive(Default)]
pub(crate) struct ChunkCache {
    chunks: HashMap<[u8; 32], Vec<u8>>,
    bytes: usize,
}

impl ChunkCache {
    /// What the cache may hold: applying a large change reads the rest from the log.
    const BUDGET: usize = 16 << 20;

    pub(crate) fn offer(&mut self, hash: [u8; 32], chunk: Vec<u8>) {
        if !self.chunks.contains_key(&hash) && self.bytes + chunk.len() <= Self::BUDGET {
            self.bytes += chunk.len();
            self.chunks.insert(hash, chunk);
        }
    }

    /// Chunk `want`, from the cache when it is there (and then dropped from it, as each
    /// chunk is applied once), else from the log.
    pub(crate) fn take(
        &mut self,
        conn: &Connection,
        index: usize,
        want: &ChunkRef,
    ) -> Result<Vec<u8>> {
        match self.chunks.remove(&want.hash) {
            Some(c) => {
                self.bytes -= c.len();
                Ok(c)
            }
            None => LogChunks { conn }.chunk(index, want),
        }
    }
}

/// The log's chunk store, read as a change's chunks.
pub(crate) struct LogChunks<'c> {
    pub(crate) conn: &'c Connection,
}

impl Chunks for LogChunks<'_> {
    fn chunk(&mut self, index: usize, want: &ChunkRef) -> Result<Vec<u8>> {
        let (data, packing) = self.stored(index, want)?;
        crate::format::change::unpack_chunk(data, packing, want.len)
            .map_err(|e| Error::LogBody(crate::error::LogBodyError::Unpack(e)))
    }

    fn stored(&mut self, _index: usize, want: &ChunkRef) -> Result<(Vec<u8>, i64)> {
        self.conn
            .prepare_cached("SELECT data, packing FROM _tide_chunks WHERE hash=?1")?
            .query_row([&want.hash[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or(Error::LogBody(crate::error::LogBodyError::Missing))
    }
}

/// Deletes the chunks no head in the log or the quarantine names any more.
pub(crate) fn sweep_chunks(conn: &Connection) -> Result<()> {
    let mut named = std::collections::HashSet::new();
    {
        let mut stmt = conn.prepare(
            "SELECT body, packing FROM _tide_log UNION ALL SELECT body, 0 FROM _tide_quarantine",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            // A head that does not decode names nothing this build can read.
            if let Ok(m) = Manifest::decode(&unpack(r.get(0)?, r.get(1)?)?) {
                named.extend(m.chunks.iter().map(|c| c.hash));
            }
        }
    }
    let unnamed: Vec<i64> =
        conn.prepare("SELECT rowid, hash FROM _tide_chunks")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .filter_map(|row| match row {
                Ok((id, hash)) => (!<[u8; 32]>::try_from(hash).is_ok_and(|h| named.contains(&h)))
                    .then_some(Ok(id)),
                Err(e) => Some(Err(e)),
            })
            .collect::<rusqlite::Result<_>>()?;
    let mut delete = conn.prepare("DELETE FROM _tide_chunks WHERE rowid = ?1")?;
    for id in unnamed {
        delete.execute([id])?;
    }
    Ok(())
}

/// Stores a chunk in the log's chunk store (once, whichever changes name it).
pub(crate) fn store_chunk(conn: &Connection, hash: &[u8; 32], chunk: &[u8]) -> Result<()> {
    let (stored, packing) = pack(chunk)?;
    store_packed(conn, hash, &stored, packing)
}

/// Stores a chunk already in its form at rest (checked against its hash by the caller).
pub(crate) fn store_packed(
    conn: &Connection,
    hash: &[u8; 32],
    stored: &[u8],
    packing: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO _tide_chunks(hash, data, packing) VALUES(?1, ?2, ?3)",
    )?
    .execute(params![&hash[..], stored, packing])?;
    Ok(())
}

/// Chunks up to this size are stored as they are; compressing them gains little.
pub(crate) const PACK_FROM: usize = 512;

/// How a chunk is kept in `_tide_chunks`: a zstd frame (packing 1) when that is
/// smaller, else as signed (packing 0). Hashes always cover the chunk as signed.
pub(crate) fn pack(chunk: &[u8]) -> Result<(std::borrow::Cow<'_, [u8]>, i64)> {
    if chunk.len() < PACK_FROM {
        return Ok((chunk.into(), crate::format::change::PACKING_RAW));
    }
    let packed = zstd::bulk::compress(chunk, 1)
        .map_err(|e| Error::LogBody(crate::error::LogBodyError::Compress(e)))?;
    Ok(if packed.len() < chunk.len() {
        (packed.into(), crate::format::change::PACKING_ZSTD)
    } else {
        (chunk.into(), crate::format::change::PACKING_RAW)
    })
}

/// The bytes as signed, from their stored form.
pub(crate) fn unpack(stored: Vec<u8>, packing: i64) -> Result<Vec<u8>> {
    match packing {
        0 => Ok(stored),
        1 => zstd::stream::decode_all(&stored[..])
            .map_err(|e| Error::LogBody(crate::error::LogBodyError::Decompress(e))),
        other => Err(Error::LogBody(crate::error::LogBodyError::UnknownPacking(
            other,
        ))),
    }
}

/// Where a change's chunks come from while it is read: a bundle image, the log, memory.
pub trait Chunks {
    /// The bytes of chunk `index`, which the change's head names as `want`. The caller
    /// checks them against the head.
    fn chunk(&mut self, index: usize, want: &ChunkRef) -> crate::error::Result<Vec<u8>>;

    /// Chunk `index` as it is kept at rest, with its packing ([`PACKING_RAW`] or
    /// [`PACKING_ZSTD`](crate::change::PACKING_ZSTD)), so that stores which both pack the same way (the log, a bundle
    /// image) pass it on without unpacking and packing it again. By default, as signed.
    fn stored(&mut self, index: usize, want: &ChunkRef) -> crate::error::Result<(Vec<u8>, i64)> {
        Ok((self.chunk(index, want)?, PACKING_RAW))
    }
}

impl Chunks for &SignedChange {
    fn chunk(&mut self, index: usize, _want: &ChunkRef) -> crate::error::Result<Vec<u8>> {
        self.chunks()
            .get(index)
            .cloned()
            .ok_or(crate::error::Error::Decode(DecodeError::Malformed(
                "chunk count",
            )))
    }
}
