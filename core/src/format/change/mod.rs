//! Changes: the unit of the log and of exchange, and their canonical, signed encoding.
//!
//! The encoding is written by hand, so that no serializer upgrade can change what was
//! signed; `core/CHANGES.md` specifies it byte by byte (this outline follows it). A change is a small signed **head** and one
//! or more **chunks** of row ops, each chunk named in the head by its length and BLAKE3
//! hash. So a change of any size is sealed, stored, exported, verified and applied a
//! chunk at a time, in bounded memory (invariant 12), and every chunk is checked against
//! the signed head before use.
//!
//! ```text
//! head     = version:varint(=3) origin:16 seq:varint hlc:varint schema:varint prev:32
//!            ndeps:varint { replica:16 seq:varint }*        sorted by replica, seq > 0
//!            nops:varint nchunks:varint { len:varint hash:32 }*
//! chunk    = ntables:varint table*
//! table    = name:bytes nkey:varint { keycol:bytes }* ncols:varint { col:bytes }*
//!            nrows:varint row*                    nkey > 0; no column named twice
//! row      = kind:u8 (1 insert, 2 update, 3 delete) key:value{nkey} nrowpreds:varint pred*
//!            [lineage: pred hlc:varint]                    updates only
//!            ncells:varint { col:varint value npreds:varint pred* }*
//! pred     = dep:varint seq:varint      an index into deps, and a seq <= that dep's seq
//! value    = 0 | 1 zigzag:varint | 2 bits:u64be | 3 bytes | 4 bytes   (NULL INT REAL TEXT BLOB)
//! bytes    = len:varint octets
//! signed   = "tide change v3" 0x00 BLAKE3(head)   the Ed25519 message (47 bytes)
//! envelope = head:bytes signature:64 { chunk:bytes }{nchunks}   a whole change as one string
//! ```
//!
//! A change's content hash is BLAKE3 of its head, which commits to every chunk through
//! the chunk hashes; `prev` is the content hash of the origin's change `seq - 1` (all
//! zeros for seq 1), so each origin's log is a hash chain. Deps are the origin's version
//! vector when it sealed, its own `seq - 1` included, so a predecessor always names a
//! dep. `nops` is the number of rows over all chunks. Writers start a new chunk at a row
//! boundary once the current one reaches [`CHUNK_TARGET`] bytes; a table whose rows go
//! on in the next chunk is named again at its start. Decoding is strict: one byte string
//! per head and per chunk, and a chunk must have the length and hash its head gives.
//!
//! This is version 3. Versions 1 and 2 held every op in one body (signed over the body,
//! then over its hash); version 3 puts the ops in chunks so that no reader or writer has
//! to hold a whole change. Other versions are refused as unknown versions.

mod decode;
mod encode;
mod signed;
#[cfg(test)]
mod tests;

pub(crate) use decode::{ChunkDecoder, Step};
pub(crate) use encode::Encoder;
pub use signed::*;

use crate::format::codec::DecodeError;
use crate::format::codec::{Reader, put_varint};
use crate::format::ids::{ChangeId, ReplicaId};
use crate::format::signature::Signer;
use crate::format::value::Value;

/// The context string every change signature starts with.
pub const SIGNING_CONTEXT: &[u8] = b"tide change v3\0";
/// The only head version this build writes and reads.
pub const CHANGE_VERSION: u64 = 3;
/// Writers close a chunk at the first row boundary past this many bytes.
pub const CHUNK_TARGET: usize = 1 << 20;

/// A sealed change, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Who sealed it, where in the log, when, and what it saw.
    pub head: ChangeHead,
    /// Row ops, grouped by table.
    pub tables: Vec<TableOps>,
}

/// The ops of one change on one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableOps {
    /// Table name.
    pub name: String,
    /// Primary key columns, in declared order.
    pub key_columns: Vec<String>,
    /// Other columns that cells refer to by index.
    pub columns: Vec<String>,
    /// The row ops.
    pub rows: Vec<RowOp>,
}

/// What a row op says about the row's existence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// The writer saw no live row and created it; every column is written.
    Insert,
    /// The row exists with (at least) the written cells.
    Update,
    /// The row does not exist. Cells, if any, are the final values of columns the
    /// writer changed just before deleting, so every replica keeps the same tombstone.
    Delete,
}

/// One row's op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowOp {
    /// Insert, update or delete.
    pub kind: OpKind,
    /// Primary key values.
    pub key: Vec<Value>,
    /// Predecessors of the row's existence cell.
    pub row_preds: Vec<ChangeId>,
    /// For updates: the insert the writer's row descends from (its oldest live
    /// creator), which ranks the row in constraint conflicts. `None` otherwise.
    pub lineage: Option<Lineage>,
    /// Written cells.
    pub cells: Vec<CellWrite>,
}

/// The creating change a row descends from, with its HLC for ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The insert that created the row.
    pub change: ChangeId,
    /// Its HLC.
    pub hlc: u64,
}

/// One written cell: a value and the values it overwrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellWrite {
    /// Index into the table's `columns`.
    pub column: usize,
    /// The new value.
    pub value: Value,
    /// Ids of the values it overwrote.
    pub preds: Vec<ChangeId>,
}

pub(crate) const KIND_INSERT: u8 = 1;
pub(crate) const KIND_UPDATE: u8 = 2;
pub(crate) const KIND_DELETE: u8 = 3;

/// A change's fields before its ops: who, where in the log, when, and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeHead {
    /// The replica that sealed it.
    pub origin: ReplicaId,
    /// Its position in the origin's log (1, 2, 3 …).
    pub seq: u64,
    /// Hybrid logical clock: milliseconds << 16 | counter.
    pub hlc: u64,
    /// The origin's schema epoch for the tracked tables.
    pub schema: u64,
    /// Content hash of the origin's previous change (zeros for seq 1).
    pub prev: [u8; 32],
    /// The origin's version vector when it sealed, sorted by replica.
    pub deps: Vec<(ReplicaId, u64)>,
}

/// One chunk as its head names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// Its length in bytes.
    pub len: usize,
    /// BLAKE3 of its bytes.
    pub hash: [u8; 32],
}

/// A decoded head: the change's context, how many row ops it carries, and its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Who, where in the log, when, and what it saw.
    pub head: ChangeHead,
    /// Row ops over all chunks.
    pub ops: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// The change's id.
    pub fn id(&self) -> ChangeId {
        ChangeId {
            origin: self.head.origin,
            seq: self.head.seq,
        }
    }

    /// The canonical head bytes.
    pub fn encode(&self) -> Vec<u8> {
        let h = &self.head;
        let mut out = Vec::with_capacity(128 + 34 * self.chunks.len());
        put_varint(&mut out, CHANGE_VERSION);
        out.extend_from_slice(&h.origin.0);
        put_varint(&mut out, h.seq);
        put_varint(&mut out, h.hlc);
        put_varint(&mut out, h.schema);
        out.extend_from_slice(&h.prev);
        put_varint(&mut out, h.deps.len() as u64);
        for (r, s) in &h.deps {
            out.extend_from_slice(&r.0);
            put_varint(&mut out, *s);
        }
        put_varint(&mut out, self.ops);
        put_varint(&mut out, self.chunks.len() as u64);
        for c in &self.chunks {
            put_varint(&mut out, c.len as u64);
            out.extend_from_slice(&c.hash);
        }
        out
    }

    /// Decodes and validates head bytes (structure only; the signature is
    /// [`SignedHead::verify`]'s job).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.varint("change version")?;
        if version != CHANGE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let origin = ReplicaId(r.array("origin")?);
        let seq = r.varint("seq")?;
        if seq == 0 {
            return Err(DecodeError::Malformed("seq (must start at 1)"));
        }
        let hlc = r.varint("hlc")?;
        let schema = r.varint("schema epoch")?;
        let prev = r.array("previous hash")?;
        if (seq == 1) != (prev == [0; 32]) {
            return Err(DecodeError::Malformed("previous hash"));
        }
        let ndeps = r.count("dependency count")?;
        let mut deps: Vec<(ReplicaId, u64)> = Vec::with_capacity(ndeps);
        for _ in 0..ndeps {
            let id = ReplicaId(r.array("dependency")?);
            let s = r.varint("dependency seq")?;
            if s == 0 || deps.last().is_some_and(|(last, _)| *last >= id) {
                return Err(DecodeError::Malformed("dependencies (sorted, non-zero)"));
            }
            deps.push((id, s));
        }
        let own = deps
            .iter()
            .find(|(r, _)| *r == origin)
            .map(|(_, s)| *s)
            .unwrap_or(0);
        if own != seq - 1 {
            return Err(DecodeError::Malformed(
                "dependencies (must include the origin's seq - 1)",
            ));
        }
        let ops = r.varint("op count")?;
        let nchunks = r.count("chunk count")?;
        let mut chunks = Vec::with_capacity(nchunks);
        for _ in 0..nchunks {
            let len = r.varint("chunk length")?;
            if len == 0 || len > u64::from(u32::MAX) {
                return Err(DecodeError::Malformed("chunk length"));
            }
            chunks.push(ChunkRef {
                len: len as usize,
                hash: r.array("chunk hash")?,
            });
        }
        if !r.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes after change head"));
        }
        Ok(Manifest {
            head: ChangeHead {
                origin,
                seq,
                hlc,
                schema,
                prev,
                deps,
            },
            ops,
            chunks,
        })
    }

    /// Checks chunk `index` against this head: its length, its hash and every op in it.
    /// Returns how many row ops it holds.
    pub fn check_chunk(&self, index: usize, chunk: &[u8]) -> Result<u64, DecodeError> {
        let want = self
            .chunks
            .get(index)
            .ok_or(DecodeError::Malformed("chunk index"))?;
        if chunk.len() != want.len || blake3::hash(chunk).as_bytes() != &want.hash {
            return Err(DecodeError::Malformed(
                "chunk (its length or hash is not the one its head gives)",
            ));
        }
        ChunkDecoder::checking(&self.head.deps, chunk)?.count_rows()
    }
}

impl Change {
    /// This change's id.
    pub fn id(&self) -> ChangeId {
        ChangeId {
            origin: self.head.origin,
            seq: self.head.seq,
        }
    }

    /// Number of row ops.
    pub fn op_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }

    /// The canonical head and chunks, closing chunks past `target` bytes.
    pub fn encode_with(&self, target: usize) -> (Manifest, Vec<Vec<u8>>) {
        let mut chunks = Vec::new();
        let mut enc = Encoder::new(self.head.clone(), target, |_: &[u8; 32], c: &[u8]| {
            chunks.push(c.to_vec());
            Ok::<(), std::convert::Infallible>(())
        });
        for t in &self.tables {
            enc.table(&t.name, &t.key_columns, &t.columns);
            for row in &t.rows {
                enc.row(
                    row.kind,
                    &row.key,
                    row.row_preds.iter().copied(),
                    row.lineage,
                    row.cells.len(),
                )
                .expect("an in-memory sink does not fail");
                for cell in &row.cells {
                    enc.cell(cell.column, &cell.value, cell.preds.iter().copied());
                }
            }
        }
        let manifest = enc.finish().expect("an in-memory sink does not fail");
        (manifest, chunks)
    }

    /// Decodes and validates a head and its chunks. Validation covers structure and the
    /// chunk hashes; authenticity is [`SignedChange::verify`]'s job.
    pub fn decode(head: &[u8], chunks: &[Vec<u8>]) -> Result<Change, DecodeError> {
        let manifest = Manifest::decode(head)?;
        if chunks.len() != manifest.chunks.len() {
            return Err(DecodeError::Malformed("chunk count"));
        }
        let mut tables: Vec<TableOps> = Vec::new();
        let mut ops = 0u64;
        for (i, chunk) in chunks.iter().enumerate() {
            manifest.check_chunk(i, chunk)?;
            let mut dec = ChunkDecoder::new(&manifest.head.deps, chunk)?;
            let mut first = true;
            loop {
                match dec.next()? {
                    // A table named again at a chunk's start goes on where it was.
                    Step::Table(t) => {
                        let goes_on = first
                            && tables.last().is_some_and(|l| {
                                l.name == t.name
                                    && l.key_columns == t.key_columns
                                    && l.columns == t.columns
                            });
                        if !goes_on {
                            tables.push(t);
                        }
                    }
                    Step::Row(row) => {
                        ops += 1;
                        tables
                            .last_mut()
                            .expect("the decoder yields a table before its rows")
                            .rows
                            .push(row);
                    }
                    Step::End => break,
                }
                first = false;
            }
        }
        if ops != manifest.ops {
            return Err(DecodeError::Malformed("op count"));
        }
        Ok(Change {
            head: manifest.head,
            tables,
        })
    }

    /// Encodes and signs.
    pub fn seal(&self, secret: &impl Signer) -> SignedChange {
        self.seal_with(secret, CHUNK_TARGET)
    }

    /// Encodes with chunks closed past `target` bytes, and signs.
    pub fn seal_with(&self, secret: &impl Signer, target: usize) -> SignedChange {
        debug_assert_eq!(secret.id(), self.head.origin);
        let (manifest, chunks) = self.encode_with(target);
        SignedChange::new(SignedHead::sign(manifest.encode(), secret), chunks)
    }
}
