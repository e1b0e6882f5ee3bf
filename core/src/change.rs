//! Changes: the unit of the log and of exchange, and their canonical, signed encoding.
//!
//! The encoding is written by hand (STYLE habit 4) and specified here, byte by byte:
//!
//! ```text
//! body     = version:varint(=2) origin:16 seq:varint hlc:varint schema:varint prev:32
//!            ndeps:varint { replica:16 seq:varint }*        sorted by replica, seq > 0
//!            ntables:varint table*
//! table    = name:bytes nkey:varint { keycol:bytes }* ncols:varint { col:bytes }*
//!            nrows:varint row*
//! row      = kind:u8 (1 insert, 2 update, 3 delete) key:value{nkey} nrowpreds:varint pred*
//!            [lineage: pred hlc:varint]                    updates only
//!            ncells:varint { col:varint value npreds:varint pred* }*
//! pred     = dep:varint seq:varint      an index into deps, and a seq <= that dep's seq
//! value    = 0 | 1 zigzag:varint | 2 bits:u64be | 3 bytes | 4 bytes   (NULL INT REAL TEXT BLOB)
//! bytes    = len:varint octets
//! signed   = "tide change v2" 0x00 BLAKE3(body)   the Ed25519 message (47 bytes)
//! envelope = len:varint body signature:64         how a change travels
//! ```
//!
//! A change's content hash is BLAKE3 of its body; `prev` is the content hash of the
//! origin's change `seq - 1` (all zeros for seq 1), so each origin's log is a hash chain.
//! Deps are the origin's version vector when it sealed, its own `seq - 1` included, so a
//! predecessor always names a dep. Decoding is strict: one byte string per change.
//!
//! Version 1 (until 2026-11-22) had the same body but was signed over the whole body
//! (`"tide change v1" 0x00 body`); version 2 signs the content hash, so the signature
//! costs the same for any size of change. A version 1 change is refused as an unknown
//! version, which is what it is to this build.

use crate::codec::{Reader, put_bytes, put_varint};
use crate::error::DecodeError;
use crate::identity::{SecretIdentity, verify_signature};
use crate::ids::{ChangeId, ReplicaId};
use crate::value::Value;

/// The context string every change signature starts with.
pub const SIGNING_CONTEXT: &[u8] = b"tide change v2\0";
/// The only body version this build writes and reads.
pub const CHANGE_VERSION: u64 = 2;

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

/// Writes a body op by op, so a change of any size is encoded without first being built
/// as a [`Change`]. Tables come one after another; a table's rows follow it.
pub(crate) struct Encoder {
    out: Vec<u8>,
    /// Where the head ends in `out` (the table count goes there).
    head_len: usize,
    deps: Vec<(ReplicaId, u64)>,
    ntables: u64,
    /// The table being written: its header and its rows so far.
    table: Vec<u8>,
    rows: Vec<u8>,
    nrows: u64,
    ops: usize,
}

impl Encoder {
    pub(crate) fn new(head: ChangeHead) -> Encoder {
        let mut out = Vec::with_capacity(256);
        put_varint(&mut out, CHANGE_VERSION);
        out.extend_from_slice(&head.origin.0);
        put_varint(&mut out, head.seq);
        put_varint(&mut out, head.hlc);
        put_varint(&mut out, head.schema);
        out.extend_from_slice(&head.prev);
        put_varint(&mut out, head.deps.len() as u64);
        for (r, s) in &head.deps {
            out.extend_from_slice(&r.0);
            put_varint(&mut out, *s);
        }
        Encoder {
            head_len: out.len(),
            out,
            deps: head.deps,
            ntables: 0,
            table: Vec::new(),
            rows: Vec::new(),
            nrows: 0,
            ops: 0,
        }
    }

    /// Row ops written so far.
    pub(crate) fn ops(&self) -> usize {
        self.ops
    }

    /// Starts the next table's section.
    pub(crate) fn table(&mut self, name: &str, key_columns: &[String], columns: &[String]) {
        self.end_table();
        self.ntables += 1;
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
    /// order.
    pub(crate) fn row(
        &mut self,
        kind: OpKind,
        key: &[Value],
        row_preds: impl ExactSizeIterator<Item = ChangeId>,
        lineage: Option<Lineage>,
        ncells: usize,
    ) {
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
                .deps
                .binary_search_by(|(r, _)| r.cmp(&p.origin))
                .expect("a predecessor's origin is always among the deps (checked when sealing)");
            put_varint(&mut self.rows, dep as u64);
            put_varint(&mut self.rows, p.seq);
        }
    }

    fn end_table(&mut self) {
        if self.table.is_empty() {
            return;
        }
        self.out.append(&mut self.table);
        put_varint(&mut self.out, self.nrows);
        self.out.append(&mut self.rows);
        self.nrows = 0;
    }

    /// The finished body.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.end_table();
        // The table count goes between the head and the tables.
        let mut count = Vec::new();
        put_varint(&mut count, self.ntables);
        self.out.splice(self.head_len..self.head_len, count);
        self.out
    }
}

/// One item of a body, in order.
pub(crate) enum Step {
    /// A table's section starts (its `rows` are empty; they follow as [`Step::Row`]).
    Table(TableOps),
    /// The next row op of the current table.
    Row(RowOp),
    /// Every byte was read and was valid.
    End,
}

/// Reads a body op by op, validating as strictly as [`Change::decode`] (which is built
/// on it), so a change of any size can be applied without holding all its ops.
pub(crate) struct Decoder<'a> {
    r: Reader<'a>,
    /// Build the ops (else only check them).
    keep: bool,
    pub(crate) head: ChangeHead,
    tables_left: usize,
    rows_left: usize,
    nkey: usize,
    ncols: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Result<Decoder<'a>, DecodeError> {
        let mut r = Reader::new(body);
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
        let tables_left = r.count("table count")?;
        Ok(Decoder {
            r,
            keep: true,
            head: ChangeHead {
                origin,
                seq,
                hlc,
                schema,
                prev,
                deps,
            },
            tables_left,
            rows_left: 0,
            nkey: 0,
            ncols: 0,
        })
    }

    /// A decoder that checks every op as strictly but keeps none (they come back empty).
    pub(crate) fn checking(body: &'a [u8]) -> Result<Decoder<'a>, DecodeError> {
        let mut dec = Decoder::new(body)?;
        dec.keep = false;
        Ok(dec)
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
            return Err(DecodeError::Malformed("trailing bytes after change"));
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
                .head
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

    /// The canonical body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut enc = Encoder::new(self.head.clone());
        for t in &self.tables {
            enc.table(&t.name, &t.key_columns, &t.columns);
            for row in &t.rows {
                enc.row(
                    row.kind,
                    &row.key,
                    row.row_preds.iter().copied(),
                    row.lineage,
                    row.cells.len(),
                );
                for cell in &row.cells {
                    enc.cell(cell.column, &cell.value, cell.preds.iter().copied());
                }
            }
        }
        enc.finish()
    }

    /// Decodes and validates a body. Validation covers structure only; authenticity is
    /// [`SignedChange::verify`]'s job.
    pub fn decode(body: &[u8]) -> Result<Change, DecodeError> {
        let mut dec = Decoder::new(body)?;
        let mut tables: Vec<TableOps> = Vec::new();
        loop {
            match dec.next()? {
                Step::Table(t) => tables.push(t),
                Step::Row(row) => tables
                    .last_mut()
                    .expect("the decoder yields a table before its rows")
                    .rows
                    .push(row),
                Step::End => break,
            }
        }
        Ok(Change {
            head: dec.head,
            tables,
        })
    }

    /// Counts the row ops of a body, checking its structure, without keeping them.
    pub fn count_ops(body: &[u8]) -> Result<usize, DecodeError> {
        let mut dec = Decoder::checking(body)?;
        let mut n = 0;
        loop {
            match dec.next()? {
                Step::Table(_) => {}
                Step::Row(_) => n += 1,
                Step::End => return Ok(n),
            }
        }
    }

    /// Encodes and signs.
    pub fn seal(&self, secret: &SecretIdentity) -> SignedChange {
        debug_assert_eq!(secret.id(), self.head.origin);
        SignedChange::sign(self.encode(), secret)
    }
}

/// The Ed25519 message of a change: the context string, then the BLAKE3 content hash of
/// its body. Signing the hash, not the body, keeps the signature's cost independent of
/// the change's size (SHA-512 over a large body cost more than the rest of verifying).
pub(crate) fn signing_message(hash: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + hash.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(hash);
    msg
}

/// A change as bytes with its signature, not yet checked against any key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    body: Vec<u8>,
    signature: [u8; 64],
    hash: [u8; 32],
}

impl SignedChange {
    /// Wraps a body and signature (nothing is verified yet).
    pub fn from_parts(body: Vec<u8>, signature: [u8; 64]) -> SignedChange {
        let hash = *blake3::hash(&body).as_bytes();
        SignedChange {
            body,
            signature,
            hash,
        }
    }

    /// Signs an encoded body (the caller's own change).
    pub(crate) fn sign(body: Vec<u8>, secret: &SecretIdentity) -> SignedChange {
        let hash = *blake3::hash(&body).as_bytes();
        SignedChange {
            signature: secret.sign(&signing_message(&hash)),
            body,
            hash,
        }
    }

    /// The envelope: body length, body, signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 70);
        put_bytes(&mut out, &self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses one envelope from the front of `bytes`, returning it and the bytes used.
    pub fn from_bytes(bytes: &[u8]) -> Result<(SignedChange, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        let body = r.bytes("change body")?.to_vec();
        let signature = r.array("change signature")?;
        let used = bytes.len() - r.remaining();
        Ok((SignedChange::from_parts(body, signature), used))
    }

    /// The canonical body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The Ed25519 signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// BLAKE3 of the body: the content hash used for dedup, forks and the hash chain.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// Reads the origin and seq without full decoding (for routing and dedup).
    pub fn peek_id(&self) -> Result<ChangeId, DecodeError> {
        let mut r = Reader::new(&self.body);
        let version = r.varint("change version")?;
        if version != CHANGE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let origin = ReplicaId(r.array("origin")?);
        let seq = r.varint("seq")?;
        Ok(ChangeId { origin, seq })
    }

    /// Checks the signature with the origin's public key and the body's structure, and
    /// returns the head, without keeping the ops (which may be many).
    pub fn verify_head(&self, sign_key: &[u8; 32]) -> Result<ChangeHead, VerifyError> {
        if !verify_signature(sign_key, &signing_message(&self.hash), &self.signature) {
            return Err(VerifyError::BadSignature);
        }
        let mut dec = Decoder::checking(&self.body).map_err(VerifyError::Decode)?;
        while !matches!(dec.next().map_err(VerifyError::Decode)?, Step::End) {}
        if ReplicaId::for_signing_key(sign_key) != dec.head.origin {
            return Err(VerifyError::WrongKey);
        }
        Ok(dec.head)
    }

    /// Checks the signature with the origin's public key, then decodes.
    pub fn verify(&self, sign_key: &[u8; 32]) -> Result<VerifiedChange, VerifyError> {
        if !verify_signature(sign_key, &signing_message(&self.hash), &self.signature) {
            return Err(VerifyError::BadSignature);
        }
        let change = Change::decode(&self.body).map_err(VerifyError::Decode)?;
        if ReplicaId::for_signing_key(sign_key) != change.head.origin {
            return Err(VerifyError::WrongKey);
        }
        Ok(VerifiedChange {
            change,
            signed: self.clone(),
        })
    }
}

/// Why a change failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The signature does not match the body under the origin's key.
    #[error("signature does not verify")]
    BadSignature,
    /// The key given is not the origin's.
    #[error("signed by a key that is not the origin's")]
    WrongKey,
    /// Signed, but not a valid change.
    #[error("signed but malformed: {0}")]
    Decode(DecodeError),
}

/// A change whose signature checked out against its origin's key. Only this type is
/// stored or applied (STYLE habit 3).
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
    fn any_flipped_body_bit_fails_verification() {
        let secret = SecretIdentity::generate();
        let signed = sample(&secret).seal(&secret);
        let key = secret.card("a").sign_key;
        for i in 0..signed.body().len() * 8 {
            let mut body = signed.body().to_vec();
            body[i / 8] ^= 1 << (i % 8);
            let tampered = SignedChange::from_parts(body, *signed.signature());
            assert!(tampered.verify(&key).is_err(), "bit {i}");
        }
    }

    #[test]
    fn checking_a_body_accepts_and_refuses_exactly_what_decoding_does() {
        let secret = SecretIdentity::generate();
        let body = sample(&secret).encode();
        assert_eq!(Change::count_ops(&body).unwrap(), 2);
        let mut variants: Vec<Vec<u8>> = (0..body.len()).map(|n| body[..n].to_vec()).collect();
        for i in 0..body.len() * 8 {
            let mut b = body.clone();
            b[i / 8] ^= 1 << (i % 8);
            variants.push(b);
        }
        for (n, b) in variants.iter().enumerate() {
            let decoded = Change::decode(b);
            let counted = Change::count_ops(b);
            assert_eq!(decoded.is_ok(), counted.is_ok(), "variant {n}");
            if let Ok(c) = decoded {
                assert_eq!(c.op_count(), counted.unwrap(), "variant {n}");
            }
        }
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
