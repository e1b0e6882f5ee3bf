//! Reading a change's chunks back into row ops, strictly.

use super::*;
use crate::format::codec::DecodeError;
use crate::format::codec::Reader;
use crate::format::ids::{ChangeId, ReplicaId};
use crate::format::value::Value;

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
