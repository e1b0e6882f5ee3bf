//! Changes: the unit of the log and of exchange, and their canonical, signed encoding.
//!
//! The encoding is written by hand, so that no serializer upgrade can change what was
//! signed, and specified here, byte by byte. A change is a small signed **head** and one
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

use crate::codec::{Reader, put_bytes, put_varint};
use crate::error::DecodeError;
use crate::identity::{SecretIdentity, verify_signature};
use crate::ids::{ChangeId, ReplicaId};
use crate::value::Value;

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

const KIND_INSERT: u8 = 1;
const KIND_UPDATE: u8 = 2;
const KIND_DELETE: u8 = 3;

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

/// Writes a change op by op into chunks, handing each finished chunk to a sink, so a
/// change of any size is encoded in bounded memory. Tables come one after another; a
/// table's rows follow it. A table with no rows is left out.
pub(crate) struct Encoder<S> {
    head: ChangeHead,
    target: usize,
    sink: S,
    chunks: Vec<ChunkRef>,
    ops: u64,
    /// The current chunk's finished table sections, and how many.
    out: Vec<u8>,
    ntables: u64,
    /// The current table's header (named again when its rows go on in the next chunk)
    /// and its rows in this chunk.
    table: Vec<u8>,
    rows: Vec<u8>,
    nrows: u64,
}

impl<S: FnMut(&[u8; 32], &[u8]) -> crate::error::Result<()>> Encoder<S> {
    /// An encoder closing chunks past `target` bytes (see [`CHUNK_TARGET`]).
    pub(crate) fn new(head: ChangeHead, target: usize, sink: S) -> Encoder<S> {
        Encoder {
            head,
            target: target.max(1),
            sink,
            chunks: Vec::new(),
            ops: 0,
            out: Vec::new(),
            ntables: 0,
            table: Vec::new(),
            rows: Vec::new(),
            nrows: 0,
        }
    }

    /// Row ops written so far.
    pub(crate) fn ops(&self) -> u64 {
        self.ops
    }

    /// Starts the next table's section.
    pub(crate) fn table(&mut self, name: &str, key_columns: &[String], columns: &[String]) {
        self.end_table();
        self.table.clear();
        put_bytes(&mut self.table, name.as_bytes());
        put_varint(&mut self.table, key_columns.len() as u64);
        for c in key_columns {
            put_bytes(&mut self.table, c.as_bytes());
        }
        put_varint(&mut self.table, columns.len() as u64);
        for c in columns {
            put_bytes(&mut self.table, c.as_bytes());
        }
    }

    /// Starts a row op; exactly `ncells` calls to [`Encoder::cell`] follow, in column
    /// order. Closes the current chunk first when it has reached the target size.
    pub(crate) fn row(
        &mut self,
        kind: OpKind,
        key: &[Value],
        row_preds: impl ExactSizeIterator<Item = ChangeId>,
        lineage: Option<Lineage>,
        ncells: usize,
    ) -> crate::error::Result<()> {
        if self.out.len() + self.rows.len() >= self.target {
            self.flush()?;
        }
        self.nrows += 1;
        self.ops += 1;
        self.rows.push(match kind {
            OpKind::Insert => KIND_INSERT,
            OpKind::Update => KIND_UPDATE,
            OpKind::Delete => KIND_DELETE,
        });
        for v in key {
            v.encode(&mut self.rows);
        }
        self.preds(row_preds);
        if kind == OpKind::Update {
            let l = lineage.expect("updates carry their lineage (set when sealing)");
            self.preds(std::iter::once(l.change));
            put_varint(&mut self.rows, l.hlc);
        }
        put_varint(&mut self.rows, ncells as u64);
        Ok(())
    }

    /// One written cell of the current row.
    pub(crate) fn cell(
        &mut self,
        column: usize,
        value: &Value,
        preds: impl ExactSizeIterator<Item = ChangeId>,
    ) {
        put_varint(&mut self.rows, column as u64);
        value.encode(&mut self.rows);
        self.preds(preds);
    }

    fn preds(&mut self, preds: impl ExactSizeIterator<Item = ChangeId>) {
        put_varint(&mut self.rows, preds.len() as u64);
        for p in preds {
            let dep = self
                .head
                .deps
                .binary_search_by(|(r, _)| r.cmp(&p.origin))
                .expect("a predecessor's origin is always among the deps (checked when sealing)");
            put_varint(&mut self.rows, dep as u64);
            put_varint(&mut self.rows, p.seq);
        }
    }

    /// Moves the current table's rows into the chunk (its header stays current).
    fn end_table(&mut self) {
        if self.nrows == 0 {
            return;
        }
        self.out.extend_from_slice(&self.table);
        put_varint(&mut self.out, self.nrows);
        self.out.append(&mut self.rows);
        self.nrows = 0;
        self.ntables += 1;
    }

    /// Closes the current chunk and hands it to the sink.
    fn flush(&mut self) -> crate::error::Result<()> {
        self.end_table();
        if self.ntables == 0 {
            return Ok(());
        }
        let mut chunk = Vec::with_capacity(self.out.len() + 10);
        put_varint(&mut chunk, self.ntables);
        chunk.extend_from_slice(&self.out);
        self.out.clear();
        self.ntables = 0;
        self.chunks.push(ChunkRef {
            len: chunk.len(),
            hash: *blake3::hash(&chunk).as_bytes(),
        });
        let hash = self.chunks.last().expect("just pushed").hash;
        (self.sink)(&hash, &chunk)
    }

    /// Closes the last chunk; returns the head that names every chunk.
    pub(crate) fn finish(mut self) -> crate::error::Result<Manifest> {
        self.flush()?;
        Ok(Manifest {
            head: self.head,
            ops: self.ops,
            chunks: self.chunks,
        })
    }
}

/// One item of a chunk, in order.
pub(crate) enum Step {
    /// A table's section starts (its `rows` are empty; they follow as [`Step::Row`]).
    Table(TableOps),
    /// The next row op of the current table.
    Row(RowOp),
    /// Every byte of the chunk was read and was valid.
    End,
}

/// Reads a chunk op by op, validating strictly, so a change of any size can be applied
/// without holding all its ops.
pub(crate) struct ChunkDecoder<'a> {
    r: Reader<'a>,
    /// Build the ops (else only check them).
    keep: bool,
    deps: &'a [(ReplicaId, u64)],
    tables_left: usize,
    rows_left: usize,
    nkey: usize,
    ncols: usize,
}

impl<'a> ChunkDecoder<'a> {
    pub(crate) fn new(
        deps: &'a [(ReplicaId, u64)],
        chunk: &'a [u8],
    ) -> Result<ChunkDecoder<'a>, DecodeError> {
        let mut r = Reader::new(chunk);
        let tables_left = r.count("table count")?;
        Ok(ChunkDecoder {
            r,
            keep: true,
            deps,
            tables_left,
            rows_left: 0,
            nkey: 0,
            ncols: 0,
        })
    }

    /// A decoder that checks every op as strictly but keeps none (they come back empty).
    pub(crate) fn checking(
        deps: &'a [(ReplicaId, u64)],
        chunk: &'a [u8],
    ) -> Result<ChunkDecoder<'a>, DecodeError> {
        let mut dec = ChunkDecoder::new(deps, chunk)?;
        dec.keep = false;
        Ok(dec)
    }

    /// Walks the chunk to its end; the number of row ops.
    pub(crate) fn count_rows(mut self) -> Result<u64, DecodeError> {
        let mut n = 0;
        loop {
            match self.next()? {
                Step::Table(_) => {}
                Step::Row(_) => n += 1,
                Step::End => return Ok(n),
            }
        }
    }

    pub(crate) fn next(&mut self) -> Result<Step, DecodeError> {
        if self.rows_left > 0 {
            self.rows_left -= 1;
            return self.row().map(Step::Row);
        }
        if self.tables_left > 0 {
            self.tables_left -= 1;
            return self.table().map(Step::Table);
        }
        if !self.r.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes after chunk"));
        }
        Ok(Step::End)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        String::from_utf8(self.r.bytes(what)?.to_vec()).map_err(|_| DecodeError::Malformed(what))
    }

    fn table(&mut self) -> Result<TableOps, DecodeError> {
        let name = self.string("table name")?;
        let nkey = self.r.count("key column count")?;
        if nkey == 0 {
            return Err(DecodeError::Malformed("key columns"));
        }
        let key_columns = (0..nkey)
            .map(|_| self.string("key column"))
            .collect::<Result<Vec<_>, _>>()?;
        let ncols = self.r.count("column count")?;
        let columns = (0..ncols)
            .map(|_| self.string("column"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&str> = key_columns.iter().chain(&columns).map(|c| &c[..]).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(DecodeError::Malformed("column names (one named twice)"));
        }
        self.rows_left = self.r.count("row count")?;
        self.nkey = nkey;
        self.ncols = ncols;
        Ok(TableOps {
            name,
            key_columns,
            columns,
            rows: Vec::new(),
        })
    }

    fn preds(&mut self) -> Result<Vec<ChangeId>, DecodeError> {
        let n = self.r.count("predecessor count")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let dep = self.r.varint("predecessor")? as usize;
            let s = self.r.varint("predecessor seq")?;
            let (origin, max) = *self
                .deps
                .get(dep)
                .ok_or(DecodeError::Malformed("predecessor"))?;
            if s == 0 || s > max {
                return Err(DecodeError::Malformed("predecessor seq"));
            }
            out.push(ChangeId { origin, seq: s });
        }
        Ok(out)
    }

    /// The next row op. When only checking (`keep` false) every byte is validated the
    /// same way but nothing is kept: the op comes back empty, and nothing is allocated
    /// for its values.
    fn row(&mut self) -> Result<RowOp, DecodeError> {
        let kind = match self.r.byte("op kind")? {
            KIND_INSERT => OpKind::Insert,
            KIND_UPDATE => OpKind::Update,
            KIND_DELETE => OpKind::Delete,
            _ => return Err(DecodeError::Malformed("op kind")),
        };
        let mut key = Vec::with_capacity(if self.keep { self.nkey } else { 0 });
        for _ in 0..self.nkey {
            key.extend(self.value()?);
        }
        let row_preds = self.preds()?;
        let lineage = if kind == OpKind::Update {
            let l = self.preds()?;
            let [change] = l[..] else {
                return Err(DecodeError::Malformed("lineage"));
            };
            Some(Lineage {
                change,
                hlc: self.r.varint("lineage hlc")?,
            })
        } else {
            None
        };
        let ncells = self.r.count("cell count")?;
        let mut cells: Vec<CellWrite> = Vec::with_capacity(if self.keep { ncells } else { 0 });
        let mut last: Option<usize> = None;
        for _ in 0..ncells {
            let column = self.r.varint("cell column")? as usize;
            if column >= self.ncols || last.is_some_and(|c| c >= column) {
                return Err(DecodeError::Malformed("cell column"));
            }
            last = Some(column);
            let value = self.value()?;
            let preds = self.preds()?;
            if let Some(value) = value {
                cells.push(CellWrite {
                    column,
                    value,
                    preds,
                });
            }
        }
        Ok(RowOp {
            kind,
            key,
            row_preds,
            lineage,
            cells,
        })
    }

    /// Reads one value: `Some` when keeping ops, else only checked.
    fn value(&mut self) -> Result<Option<Value>, DecodeError> {
        if self.keep {
            return Value::decode(&mut self.r).map(Some);
        }
        Value::skip(&mut self.r)?;
        Ok(None)
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
            Ok(())
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
    pub fn seal(&self, secret: &SecretIdentity) -> SignedChange {
        self.seal_with(secret, CHUNK_TARGET)
    }

    /// Encodes with chunks closed past `target` bytes, and signs.
    pub fn seal_with(&self, secret: &SecretIdentity, target: usize) -> SignedChange {
        debug_assert_eq!(secret.id(), self.head.origin);
        let (manifest, chunks) = self.encode_with(target);
        SignedChange {
            head: SignedHead::sign(manifest.encode(), secret),
            chunks,
        }
    }
}

/// The Ed25519 message of a change: the context string, then the BLAKE3 content hash of
/// its head (which names every chunk by its hash), so the signature costs the same for
/// any size of change.
pub(crate) fn signing_message(hash: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + hash.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(hash);
    msg
}

/// A change's head as bytes with its signature, not yet checked against any key. Its
/// chunks travel beside it (see [`Chunks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHead {
    bytes: Vec<u8>,
    signature: [u8; 64],
    hash: [u8; 32],
}

impl SignedHead {
    /// Wraps head bytes and a signature (nothing is verified yet).
    pub fn from_parts(bytes: Vec<u8>, signature: [u8; 64]) -> SignedHead {
        let hash = *blake3::hash(&bytes).as_bytes();
        SignedHead {
            bytes,
            signature,
            hash,
        }
    }

    /// Signs encoded head bytes (the caller's own change).
    pub(crate) fn sign(bytes: Vec<u8>, secret: &SecretIdentity) -> SignedHead {
        let hash = *blake3::hash(&bytes).as_bytes();
        SignedHead {
            signature: secret.sign(&signing_message(&hash)),
            bytes,
            hash,
        }
    }

    /// The canonical head bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The Ed25519 signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// BLAKE3 of the head: the content hash used for dedup, forks and the hash chain.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// Reads the origin and seq without full decoding (for routing and dedup).
    pub fn peek_id(&self) -> Result<ChangeId, DecodeError> {
        let mut r = Reader::new(&self.bytes);
        let version = r.varint("change version")?;
        if version != CHANGE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let origin = ReplicaId(r.array("origin")?);
        let seq = r.varint("seq")?;
        Ok(ChangeId { origin, seq })
    }

    /// The head, decoded without checking the signature (for what is already trusted,
    /// like this replica's own log).
    pub fn manifest(&self) -> Result<Manifest, DecodeError> {
        Manifest::decode(&self.bytes)
    }

    /// Checks the signature with the origin's public key and the head's structure. The
    /// chunks are checked against the returned head as they are read
    /// ([`Manifest::check_chunk`]).
    pub fn verify(&self, sign_key: &[u8; 32]) -> Result<Manifest, VerifyError> {
        if !verify_signature(sign_key, &signing_message(&self.hash), &self.signature) {
            return Err(VerifyError::BadSignature);
        }
        let manifest = Manifest::decode(&self.bytes).map_err(VerifyError::Decode)?;
        if ReplicaId::for_signing_key(sign_key) != manifest.head.origin {
            return Err(VerifyError::WrongKey);
        }
        Ok(manifest)
    }
}

/// Where a change's chunks come from while it is read: a bundle image, the log, memory.
pub trait Chunks {
    /// The bytes of chunk `index`, which the change's head names as `want`. The caller
    /// checks them against the head.
    fn chunk(&mut self, index: usize, want: &ChunkRef) -> crate::error::Result<Vec<u8>>;

    /// Chunk `index` as it is kept at rest, with its packing ([`PACKING_RAW`] or
    /// [`PACKING_ZSTD`]), so that stores which both pack the same way (the log, a bundle
    /// image) pass it on without unpacking and packing it again. By default, as signed.
    fn stored(&mut self, index: usize, want: &ChunkRef) -> crate::error::Result<(Vec<u8>, i64)> {
        Ok((self.chunk(index, want)?, PACKING_RAW))
    }
}

/// A chunk kept as signed.
pub const PACKING_RAW: i64 = 0;
/// A chunk kept as one zstd frame of it.
pub const PACKING_ZSTD: i64 = 1;

/// A chunk as signed, from its form at rest. A packed chunk must be exactly one zstd
/// frame (no skippable frames or trailing bytes riding along unsigned), and its output
/// may not pass `len` bytes (the length the head gives), growing only with what it
/// produces, so a packed chunk cannot be a decompression bomb; a short result is caught
/// by [`Manifest::check_chunk`].
pub fn unpack_chunk(stored: Vec<u8>, packing: i64, len: usize) -> Result<Vec<u8>, DecodeError> {
    match packing {
        PACKING_RAW => Ok(stored),
        PACKING_ZSTD => unzstd_chunk(&stored, len),
        _ => Err(DecodeError::Malformed("chunk packing")),
    }
}

/// A chunk kept with [`PACKING_ZSTD`], unpacked as [`unpack_chunk`] says.
pub(crate) fn unzstd_chunk(stored: &[u8], len: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    const BAD: DecodeError =
        DecodeError::Malformed("chunk (its packed form is not one zstd frame of its length)");
    if zstd::zstd_safe::find_frame_compressed_size(stored) != Ok(stored.len()) {
        return Err(BAD);
    }
    let mut out = Vec::with_capacity(len.min(stored.len().saturating_mul(8)));
    zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|_| BAD)?
        .single_frame()
        .take(len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| BAD)?;
    if out.len() > len {
        return Err(BAD);
    }
    Ok(out)
}

/// A whole change in memory: its signed head and its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    head: SignedHead,
    chunks: Vec<Vec<u8>>,
}

impl Chunks for &SignedChange {
    fn chunk(&mut self, index: usize, _want: &ChunkRef) -> crate::error::Result<Vec<u8>> {
        self.chunks
            .get(index)
            .cloned()
            .ok_or(crate::error::Error::Decode(DecodeError::Malformed(
                "chunk count",
            )))
    }
}

impl SignedChange {
    /// A signed head and its chunks (nothing is verified yet).
    pub fn new(head: SignedHead, chunks: Vec<Vec<u8>>) -> SignedChange {
        SignedChange { head, chunks }
    }

    /// The signed head.
    pub fn head(&self) -> &SignedHead {
        &self.head
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Vec<u8>] {
        &self.chunks
    }

    /// The content hash (of the head).
    pub fn hash(&self) -> &[u8; 32] {
        self.head.hash()
    }

    /// The origin and seq, read from the head without full decoding.
    pub fn peek_id(&self) -> Result<ChangeId, DecodeError> {
        self.head.peek_id()
    }

    /// The envelope: head, signature, chunks.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.head.bytes.len() + 70 + self.chunks.iter().map(|c| c.len() + 5).sum::<usize>(),
        );
        put_bytes(&mut out, &self.head.bytes);
        out.extend_from_slice(&self.head.signature);
        for c in &self.chunks {
            put_bytes(&mut out, c);
        }
        out
    }

    /// Parses one envelope from the front of `bytes`, returning it and the bytes used.
    pub fn from_bytes(bytes: &[u8]) -> Result<(SignedChange, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        let head = r.bytes("change head")?.to_vec();
        let signature = r.array("change signature")?;
        let n = Manifest::decode(&head)?.chunks.len();
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(r.bytes("change chunk")?.to_vec());
        }
        let used = bytes.len() - r.remaining();
        Ok((
            SignedChange::new(SignedHead::from_parts(head, signature), chunks),
            used,
        ))
    }

    /// Checks the signature with the origin's public key, then decodes every chunk.
    pub fn verify(&self, sign_key: &[u8; 32]) -> Result<VerifiedChange, VerifyError> {
        self.head.verify(sign_key)?;
        let change = Change::decode(&self.head.bytes, &self.chunks).map_err(VerifyError::Decode)?;
        Ok(VerifiedChange {
            change,
            signed: self.clone(),
        })
    }
}

/// Why a change failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The signature does not match the head under the origin's key.
    #[error("signature does not verify")]
    BadSignature,
    /// The key given is not the origin's.
    #[error("signed by a key that is not the origin's")]
    WrongKey,
    /// Signed, but not a valid change (a chunk that does not match its head included).
    #[error("signed but malformed: {0}")]
    Decode(DecodeError),
}

/// A change whose signature checked out against its origin's key. Only this type is
/// stored or applied: being verified is a type, not a flag a caller could forget.
#[derive(Clone, Debug)]
pub struct VerifiedChange {
    change: Change,
    signed: SignedChange,
}

impl VerifiedChange {
    /// The decoded change.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// The signed bytes.
    pub fn signed(&self) -> &SignedChange {
        &self.signed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secret: &SecretIdentity) -> Change {
        let other = ReplicaId([1; 16]);
        let mut deps = vec![(other, 4), (secret.id(), 1)];
        deps.sort();
        Change {
            head: ChangeHead {
                origin: secret.id(),
                seq: 2,
                hlc: 77 << 16,
                schema: 1,
                prev: [9; 32],
                deps,
            },
            tables: vec![TableOps {
                name: "t".into(),
                key_columns: vec!["id".into()],
                columns: vec!["a".into(), "b".into()],
                rows: vec![
                    RowOp {
                        kind: OpKind::Update,
                        key: vec![Value::Blob(vec![])],
                        row_preds: vec![ChangeId {
                            origin: other,
                            seq: 3,
                        }],
                        lineage: Some(Lineage {
                            change: ChangeId {
                                origin: other,
                                seq: 1,
                            },
                            hlc: 5,
                        }),
                        cells: vec![
                            CellWrite {
                                column: 0,
                                value: Value::real(-0.0),
                                preds: vec![],
                            },
                            CellWrite {
                                column: 1,
                                value: Value::Integer(i64::MIN),
                                preds: vec![ChangeId {
                                    origin: secret.id(),
                                    seq: 1,
                                }],
                            },
                        ],
                    },
                    RowOp {
                        kind: OpKind::Delete,
                        key: vec![Value::Null],
                        row_preds: vec![],
                        lineage: None,
                        cells: vec![],
                    },
                ],
            }],
        }
    }

    /// Two columns of one name would map two cells onto one local column, and which
    /// value lands there would depend on the path the apply takes.
    #[test]
    fn a_table_naming_a_column_twice_is_refused() {
        let secret = SecretIdentity::generate();
        for (keys, columns) in [
            (vec!["id"], vec!["a", "a"]),
            (vec!["id"], vec!["a", "id"]),
            (vec!["id", "id"], vec!["a"]),
        ] {
            let mut change = sample(&secret);
            change.tables[0].key_columns = keys.iter().map(|c| c.to_string()).collect();
            change.tables[0].columns = columns.iter().map(|c| c.to_string()).collect();
            // Only the delete, with a key of the right width: it writes no cells.
            change.tables[0].rows.remove(0);
            change.tables[0].rows[0].key = vec![Value::Null; keys.len()];
            let (manifest, chunks) = change.encode_with(CHUNK_TARGET);
            let err = Change::decode(&manifest.encode(), &chunks).unwrap_err();
            assert!(
                matches!(err, DecodeError::Malformed(m) if m.contains("twice")),
                "{err:?}"
            );
        }
        let change = sample(&secret);
        let (manifest, chunks) = change.encode_with(CHUNK_TARGET);
        assert_eq!(Change::decode(&manifest.encode(), &chunks).unwrap(), change);
    }

    #[test]
    fn change_round_trips_and_verifies() {
        let secret = SecretIdentity::generate();
        let change = sample(&secret);
        let signed = change.seal(&secret);
        let (parsed, used) = SignedChange::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(used, signed.to_bytes().len());
        let verified = parsed.verify(&secret.card("a").sign_key).unwrap();
        assert_eq!(verified.change(), &change);
    }

    #[test]
    fn any_flipped_bit_of_head_or_chunk_fails_verification() {
        let secret = SecretIdentity::generate();
        let signed = sample(&secret).seal(&secret);
        let key = secret.card("a").sign_key;
        for i in 0..signed.head().bytes().len() * 8 {
            let mut head = signed.head().bytes().to_vec();
            head[i / 8] ^= 1 << (i % 8);
            let tampered = SignedChange::new(
                SignedHead::from_parts(head, *signed.head().signature()),
                signed.chunks().to_vec(),
            );
            assert!(tampered.verify(&key).is_err(), "head bit {i}");
        }
        for i in 0..signed.chunks()[0].len() * 8 {
            let mut chunk = signed.chunks()[0].clone();
            chunk[i / 8] ^= 1 << (i % 8);
            let tampered = SignedChange::new(signed.head().clone(), vec![chunk]);
            assert!(tampered.verify(&key).is_err(), "chunk bit {i}");
        }
    }

    #[test]
    fn checking_a_chunk_accepts_and_refuses_exactly_what_decoding_does() {
        let secret = SecretIdentity::generate();
        let change = sample(&secret);
        let (manifest, chunks) = change.encode_with(CHUNK_TARGET);
        let deps = &manifest.head.deps;
        let chunk = &chunks[0];
        assert_eq!(manifest.check_chunk(0, chunk).unwrap(), 2);
        let mut variants: Vec<Vec<u8>> = (0..chunk.len()).map(|n| chunk[..n].to_vec()).collect();
        for i in 0..chunk.len() * 8 {
            let mut b = chunk.clone();
            b[i / 8] ^= 1 << (i % 8);
            variants.push(b);
        }
        for (n, b) in variants.iter().enumerate() {
            let decoded = ChunkDecoder::new(deps, b).and_then(ChunkDecoder::count_rows);
            let checked = ChunkDecoder::checking(deps, b).and_then(ChunkDecoder::count_rows);
            assert_eq!(decoded, checked, "variant {n}");
        }
    }

    /// A change of many rows over two tables, in chunks of about `target` bytes.
    fn large(secret: &SecretIdentity, rows: i64) -> Change {
        let mut change = sample(secret);
        let other = change.tables[0].clone();
        change.tables[0].rows = (0..rows)
            .map(|i| RowOp {
                kind: OpKind::Insert,
                key: vec![Value::Integer(i)],
                row_preds: vec![],
                lineage: None,
                cells: vec![CellWrite {
                    column: 1,
                    value: Value::text(format!("row {i}")),
                    preds: vec![],
                }],
            })
            .collect();
        change.tables.push(TableOps {
            name: "u".into(),
            ..other
        });
        change
    }

    #[test]
    fn a_large_change_goes_in_chunks_that_decode_to_the_same_change() {
        let secret = SecretIdentity::generate();
        let change = large(&secret, 500);
        let signed = change.seal_with(&secret, 256);
        assert!(signed.chunks().len() > 10, "{}", signed.chunks().len());
        assert!(signed.chunks().iter().all(|c| c.len() < 256 + 64));
        let manifest = signed.head().manifest().unwrap();
        assert_eq!(manifest.ops, 502);
        let total: u64 = (0..signed.chunks().len())
            .map(|i| manifest.check_chunk(i, &signed.chunks()[i]).unwrap())
            .sum();
        assert_eq!(total, 502);
        let verified = signed.verify(&secret.card("a").sign_key).unwrap();
        assert_eq!(verified.change(), &change);
        let (parsed, used) = SignedChange::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!((used, &parsed), (signed.to_bytes().len(), &signed));
    }

    #[test]
    fn chunks_missing_reordered_or_from_another_change_are_refused() {
        let secret = SecretIdentity::generate();
        let key = secret.card("a").sign_key;
        let signed = large(&secret, 200).seal_with(&secret, 256);
        let chunks = signed.chunks().to_vec();
        let head = signed.head().clone();
        let mut fewer = chunks.clone();
        fewer.pop();
        let mut swapped = chunks.clone();
        swapped.swap(1, 2);
        let mut foreign = chunks.clone();
        let mut other = large(&secret, 200);
        for row in &mut other.tables[0].rows {
            row.cells[0].value = Value::text("other");
        }
        foreign[1] = other.seal_with(&secret, 256).chunks()[1].clone();
        for (what, chunks) in [("fewer", fewer), ("swapped", swapped), ("foreign", foreign)] {
            let tampered = SignedChange::new(head.clone(), chunks);
            assert!(tampered.verify(&key).is_err(), "{what}");
        }
    }

    /// A packed chunk may not unpack past the length its head gives: a small frame of
    /// many zeros is refused without producing them.
    #[test]
    fn a_packed_chunk_unpacks_to_at_most_its_length() {
        let chunk = vec![7u8; 4096];
        let packed = zstd::bulk::compress(&chunk, 1).unwrap();
        assert!(packed.len() < 100);
        assert_eq!(
            unpack_chunk(packed.clone(), PACKING_ZSTD, 4096).unwrap(),
            chunk
        );
        assert!(unpack_chunk(packed.clone(), PACKING_ZSTD, 4095).is_err());
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
        assert!(unpack_chunk(bomb, PACKING_ZSTD, 1 << 20).is_err());
        assert!(unpack_chunk(packed.clone(), 2, 4096).is_err());
        // Nothing unsigned rides along: no trailing bytes, no second or skippable frame.
        let mut trailing = packed.clone();
        trailing.extend_from_slice(b"unsigned");
        assert!(unpack_chunk(trailing, PACKING_ZSTD, 4096).is_err());
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skippable.extend_from_slice(&packed);
        assert!(unpack_chunk(skippable, PACKING_ZSTD, 4096).is_err());
        let mut two = packed.clone();
        two.extend_from_slice(&packed);
        assert!(unpack_chunk(two, PACKING_ZSTD, 8192).is_err());
    }

    #[test]
    fn another_key_is_refused() {
        let secret = SecretIdentity::generate();
        let other = SecretIdentity::generate();
        let signed = sample(&secret).seal(&secret);
        assert_eq!(
            signed.verify(&other.card("b").sign_key).unwrap_err(),
            VerifyError::BadSignature
        );
    }
}
