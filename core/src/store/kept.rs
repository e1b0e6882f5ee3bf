//! Kept values: the values of a row's heads that its table does not show.

use crate::error::Result;
use crate::format::value::Value;
use crate::store::rowmeta::{CellValues, Version, decode_kept, encode_kept};
use rusqlite::{Connection, OptionalExtension};

/// Where a spilled value is: (cell, local origin number, seq).
pub(crate) type Spilled = Vec<(usize, i64, u64)>;

/// A row's kept values from its `vals` blob, with those that spilled read back from
/// `_tide_values`; and which had spilled. A spilled value that is not there is damage,
/// reported as such.
pub(crate) fn read_kept(
    conn: &Connection,
    tid: i64,
    key_bytes: &[u8],
    blob: &[u8],
) -> Result<(CellValues, Spilled)> {
    let mut spilled = Spilled::new();
    let mut out = CellValues::new();
    for (at, value) in decode_kept(blob)? {
        let value = match value {
            Some(v) => v,
            None => {
                spilled.push(at);
                conn.prepare_cached(
                    "SELECT value FROM _tide_values WHERE tid=?1 AND key=?2 AND col=?3 AND origin=?4 AND seq=?5",
                )?
                .query_row(
                    rusqlite::params![tid, key_bytes, at.0 as i64, at.1, at.2 as i64],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(crate::error::DecodeError::Malformed("kept value missing from _tide_values"))?
            }
        };
        out.push((at, value));
    }
    Ok((out, spilled))
}

/// The `vals` blob that keeps `kept` for a row, after putting the values that do not fit
/// in it in `_tide_values`. `before` are the row's values there until now: a version's
/// value never changes, so one still spilled stays as it is, and only those no longer
/// spilled go.
pub(crate) fn write_kept(
    conn: &Connection,
    tid: i64,
    key_bytes: &[u8],
    kept: &mut CellValues,
    before: &[(usize, i64, u64)],
) -> Result<Option<Vec<u8>>> {
    let (blob, spilled) = encode_kept(kept);
    let now: Spilled = spilled.iter().map(|&i| kept[i].0).collect();
    for (cell, origin, seq) in before.iter().filter(|at| !now.contains(at)) {
        conn.prepare_cached(
            "DELETE FROM _tide_values WHERE tid=?1 AND key=?2 AND col=?3 AND origin=?4 AND seq=?5",
        )?
        .execute(rusqlite::params![
            tid,
            key_bytes,
            *cell as i64,
            origin,
            *seq as i64
        ])?;
    }
    for i in spilled
        .into_iter()
        .filter(|&i| !before.contains(&kept[i].0))
    {
        let ((cell, origin, seq), value) = &kept[i];
        conn.prepare_cached(
            "INSERT OR REPLACE INTO _tide_values(tid, key, col, origin, seq, value) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(rusqlite::params![tid, key_bytes, *cell as i64, origin, *seq as i64, value])?;
    }
    Ok(blob)
}

/// A head's value: written now, kept with the row's metadata, or visible in the old row.
pub(crate) fn value_of<'a>(
    c: usize,
    h: &Version,
    new_values: &'a [(usize, Version, Value)],
    stored: &'a CellValues,
    old_mat: bool,
    old_winners: &[Option<Version>],
    old_visible: &'a Option<Vec<Value>>,
) -> Option<&'a Value> {
    let at = (c, h.origin, h.seq);
    if let Some((_, _, v)) = new_values
        .iter()
        .find(|(col, v, _)| (col + 1, v.origin, v.seq) == at)
    {
        return Some(v);
    }
    if let Some((_, v)) = stored.iter().find(|(k, _)| *k == at) {
        return Some(v);
    }
    if old_mat && old_winners[c].map(|w| w.vref()) == Some(h.vref()) {
        return old_visible.as_ref().map(|row| &row[c - 1]);
    }
    None
}

/// What a head with no value found reads as.
pub(crate) static NULL: Value = Value::Null;
