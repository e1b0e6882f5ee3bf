//! Migration 6's data step, with the `_tide_rows.vals` encoding of layout 6 frozen in it.
//!
//! Nothing here may follow later changes to `rowmeta.rs`, `kept.rs` or `value.rs`: a
//! database at layout 5 is upgraded to exactly the bytes layout 6 defined. The blob: a
//! varint count, then per value, in (cell, origin, seq) order, the cell, the head's local
//! origin number and seq as varints (LEB128), and the value as a tag byte (0 NULL,
//! 1 INTEGER as a zig-zag varint, 2 REAL as its 8 bits big-endian, 3 TEXT and 4 BLOB as a
//! varint length and the bytes), or the tag [`SPILLED`] alone for a value left in
//! `_tide_values` because inlining it would take the blob past [`INLINE_MAX`] bytes.

use crate::error::Result;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, params};

/// The tag of a value left in `_tide_values`.
const SPILLED: u8 = 0xff;

/// A blob grows past this only by one entry's header and a spilled tag.
const INLINE_MAX: usize = 1 << 20;

/// A kept value as `_tide_values` held it at layout 5, bit for bit.
enum Stored {
    Null,
    Integer(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Stored {
    fn from_ref(v: ValueRef<'_>) -> Stored {
        match v {
            ValueRef::Null => Stored::Null,
            ValueRef::Integer(i) => Stored::Integer(i),
            ValueRef::Real(f) => Stored::Real(f.to_bits()),
            ValueRef::Text(t) => Stored::Text(t.to_vec()),
            ValueRef::Blob(b) => Stored::Blob(b.to_vec()),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Stored::Null => out.push(0),
            Stored::Integer(i) => {
                out.push(1);
                put_varint(out, ((i << 1) ^ (i >> 63)) as u64);
            }
            Stored::Real(bits) => {
                out.push(2);
                out.extend_from_slice(&bits.to_be_bytes());
            }
            Stored::Text(t) => {
                out.push(3);
                put_varint(out, t.len() as u64);
                out.extend_from_slice(t);
            }
            Stored::Blob(b) => {
                out.push(4);
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
}

impl rusqlite::ToSql for Stored {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Stored::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Stored::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Stored::Real(bits) => ToSqlOutput::Owned(f64::from_bits(*bits).into()),
            Stored::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t)),
            Stored::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One row's kept values: (cell, local origin number, seq) and the value.
type Kept = Vec<((usize, i64, u64), Stored)>;

/// Each row's values from `_tide_values` (one SQL row per value) into its
/// `_tide_rows.vals`, a row at a time in key order; values too large for the blob go back
/// to `_tide_values`. Values of a row with no metadata name no head, so they are dropped.
pub(crate) fn pack_kept_values(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE _tide_values_5 AS SELECT * FROM _tide_values;
         DELETE FROM _tide_values;",
    )?;
    let mut read = conn.prepare(
        "SELECT tid, key, col, origin, seq, value FROM temp._tide_values_5 ORDER BY tid, key",
    )?;
    let (mut row, mut kept): (Option<(i64, Vec<u8>)>, Kept) = (None, Vec::new());
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let (tid, key): (i64, Vec<u8>) = (r.get(0)?, r.get(1)?);
        if row
            .as_ref()
            .is_none_or(|(t, k)| (*t, &k[..]) != (tid, &key[..]))
        {
            if let Some((tid, key)) = row.take() {
                pack_row(conn, tid, &key, &mut kept)?;
            }
            row = Some((tid, key));
        }
        let at = (
            r.get::<_, i64>(2)? as usize,
            r.get(3)?,
            r.get::<_, i64>(4)? as u64,
        );
        kept.push((at, Stored::from_ref(r.get_ref(5)?)));
    }
    if let Some((tid, key)) = row.take() {
        pack_row(conn, tid, &key, &mut kept)?;
    }
    drop(rows);
    drop(read);
    conn.execute_batch("DROP TABLE temp._tide_values_5")?;
    Ok(())
}

/// Writes one row's `vals` (if the row has metadata) and its spilled values, and empties
/// `kept` for the next row.
fn pack_row(conn: &Connection, tid: i64, key: &[u8], kept: &mut Kept) -> Result<()> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM _tide_rows WHERE tid=?1 AND key=?2)",
        params![tid, key],
        |r| r.get(0),
    )?;
    if has_meta {
        let (blob, spilled) = encode(kept);
        for i in spilled {
            let ((cell, origin, seq), value) = &kept[i];
            conn.execute(
                "INSERT OR REPLACE INTO _tide_values(tid, key, col, origin, seq, value) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                params![tid, key, *cell as i64, origin, *seq as i64, value],
            )?;
        }
        conn.execute(
            "UPDATE _tide_rows SET vals=?3 WHERE tid=?1 AND key=?2",
            params![tid, key, blob],
        )?;
    }
    kept.clear();
    Ok(())
}

/// The blob for `kept` (sorted first), `None` when it is empty, and the indexes into
/// `kept` of the values that spilled.
fn encode(kept: &mut Kept) -> (Option<Vec<u8>>, Vec<usize>) {
    let mut spilled = Vec::new();
    if kept.is_empty() {
        return (None, spilled);
    }
    kept.sort_by_key(|(at, _)| *at);
    let mut out = Vec::with_capacity(8 + 12 * kept.len());
    put_varint(&mut out, kept.len() as u64);
    for (i, ((cell, origin, seq), value)) in kept.iter().enumerate() {
        put_varint(&mut out, *cell as u64);
        put_varint(&mut out, *origin as u64);
        put_varint(&mut out, *seq);
        let at = out.len();
        value.encode(&mut out);
        if out.len() > INLINE_MAX {
            out.truncate(at);
            out.push(SPILLED);
            spilled.push(i);
        }
    }
    (Some(out), spilled)
}
