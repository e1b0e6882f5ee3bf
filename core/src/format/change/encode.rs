//! Writing a change: rows in, signed head and bounded chunks out.

use super::*;
use crate::format::codec::{put_bytes, put_varint};
use crate::format::ids::ChangeId;
use crate::format::value::Value;

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

impl<E, S: FnMut(&[u8; 32], &[u8]) -> Result<(), E>> Encoder<S> {
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
    ) -> Result<(), E> {
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
    fn flush(&mut self) -> Result<(), E> {
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
    pub(crate) fn finish(mut self) -> Result<Manifest, E> {
        self.flush()?;
        Ok(Manifest {
            head: self.head,
            ops: self.ops,
            chunks: self.chunks,
        })
    }
}
