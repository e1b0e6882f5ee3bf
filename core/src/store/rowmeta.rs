//! Per-row metadata: for every cell of a row, its heads (the values no later write has
//! overwritten), packed in one blob per row so the common path costs one read and one
//! write.
//!
//! Cell 0 is the row's existence (alive or deleted); cell `1 + i` is column `i` of the
//! table's tracked columns. A head is named by the version that wrote it: the change
//! (origin, seq), with that change's HLC for ordering. Origins are stored as this
//! replica's local origin numbers; ordering always uses the global replica id, so every
//! replica picks the same winner.
//!
//! Where a head's value lives: the winner of each column is the value in the user table
//! while the row is materialized (alive winner, not held). Every other head's value is
//! kept with the row's metadata, in `_tide_rows.vals` (NULL when there is none). That
//! rule is the whole of the value bookkeeping.
//!
//! `vals` is written with `meta` by the same statement, so a conflicting row costs one
//! write however many values it keeps. Its layout ([`encode_kept`]): a varint count,
//! then per value, in (cell, origin, seq) order, the cell as a varint, the head's local
//! origin number and seq as varints, and the value in its canonical encoding
//! (`Value::encode`), or the tag [`SPILLED`] alone for a value kept in `_tide_values`
//! under (tid, key, cell, origin, seq) instead. A value spills when inlining it would take
//! the blob past [`KEPT_INLINE_MAX`] bytes, so the blob stays far below SQLite's length
//! limit however many large values a row keeps (each value alone is within the limit,
//! since a table held it). It is local storage, never sent: a replica rebuilds it from
//! changes.

use foldhash::HashMap;
use std::cmp::Ordering;

use crate::error::DecodeError;
use crate::format::codec::{Reader, put_varint};
use crate::format::ids::ReplicaId;
use crate::format::value::Value;

/// The existence cell's index.
pub(crate) const ROW: usize = 0;

/// One version of a row: the change that wrote some of its cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Version {
    pub(crate) origin: i64,
    pub(crate) seq: u64,
    pub(crate) hlc: u64,
    /// The op's kind: an upsert says the row exists, a delete that it does not.
    pub(crate) alive: bool,
    /// The op created the row (an insert where the writer saw no live row).
    pub(crate) created: bool,
    /// For updates: the creation the writer's row descends from (its birth then).
    /// Inserts are their own lineage; deletes have none.
    pub(crate) lineage: Option<Stamp>,
}

/// A change's place in the total order: (origin number, seq, HLC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Stamp {
    pub(crate) origin: i64,
    pub(crate) seq: u64,
    pub(crate) hlc: u64,
}

impl Stamp {
    /// The total order every replica computes alike: HLC, then origin id, then seq.
    pub(crate) fn cmp(&self, other: &Stamp, origins: &Origins) -> Ordering {
        self.hlc
            .cmp(&other.hlc)
            .then_with(|| origins[&self.origin].cmp(&origins[&other.origin]))
            .then(self.seq.cmp(&other.seq))
    }
}

/// A version's name in local terms: (origin number, seq).
pub(crate) type VRef = (i64, u64);

impl Version {
    pub(crate) fn vref(&self) -> VRef {
        (self.origin, self.seq)
    }

    pub(crate) fn stamp(&self) -> Stamp {
        Stamp {
            origin: self.origin,
            seq: self.seq,
            hlc: self.hlc,
        }
    }
}

/// Local origin number → replica id, for the total order.
pub(crate) type Origins = HashMap<i64, ReplicaId>;

/// The total order every replica computes alike: HLC, then origin id, then seq.
pub(crate) fn order(a: &Version, b: &Version, origins: &Origins) -> Ordering {
    a.stamp().cmp(&b.stamp(), origins)
}

/// Flag bit: the compact form (one version heads every cell).
const UNIFORM: u8 = 2;

fn put_version(out: &mut Vec<u8>, v: &Version) {
    put_varint(out, v.origin as u64);
    put_varint(out, v.seq);
    let flags =
        u64::from(v.alive) | (u64::from(v.created) << 1) | (u64::from(v.lineage.is_some()) << 2);
    put_varint(out, (v.hlc << 3) | flags);
    if let Some(l) = &v.lineage {
        put_varint(out, l.origin as u64);
        put_varint(out, l.seq);
        put_varint(out, l.hlc);
    }
}

fn get_version(r: &mut Reader<'_>) -> Result<Version, DecodeError> {
    let origin = r.varint("row meta origin")? as i64;
    let seq = r.varint("row meta seq")?;
    let hlc = r.varint("row meta hlc")?;
    let lineage = if hlc & 4 != 0 {
        Some(Stamp {
            origin: r.varint("row meta lineage")? as i64,
            seq: r.varint("row meta lineage")?,
            hlc: r.varint("row meta lineage")?,
        })
    } else {
        None
    };
    Ok(Version {
        origin,
        seq,
        hlc: hlc >> 3,
        alive: hlc & 1 == 1,
        created: hlc & 2 == 2,
        lineage,
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RowMeta {
    /// `cells[0]` is the existence cell; `cells[1 + i]` column i. Heads are kept sorted
    /// by (origin, seq) so equal states encode equally.
    pub(crate) cells: Vec<Vec<Version>>,
    /// Held back from the user table by a constraint conflict.
    pub(crate) held: bool,
}

impl RowMeta {
    pub(crate) fn new(ncols: usize) -> RowMeta {
        RowMeta {
            cells: vec![Vec::new(); ncols + 1],
            held: false,
        }
    }

    /// A row written whole by one version: every cell has it as its only head.
    pub(crate) fn fresh(ncols: usize, v: Version) -> RowMeta {
        RowMeta {
            cells: vec![vec![v]; ncols + 1],
            held: false,
        }
    }

    pub(crate) fn ensure_cells(&mut self, ncols: usize) {
        if self.cells.len() < ncols + 1 {
            self.cells.resize(ncols + 1, Vec::new());
        }
    }

    pub(crate) fn winner(&self, cell: usize, origins: &Origins) -> Option<Version> {
        self.cells
            .get(cell)?
            .iter()
            .copied()
            .max_by(|a, b| order(a, b, origins))
    }

    /// Alive winner and not held: the row is in the user table.
    pub(crate) fn materialized(&self, origins: &Origins) -> bool {
        !self.held && self.winner(ROW, origins).is_some_and(|v| v.alive)
    }

    /// Replaces the heads named in `preds` by `v`.
    /// A copy to write the next version into: every cell has room for one more head, so
    /// [`RowMeta::write`] does not have to grow it (a clone has no spare room).
    pub(crate) fn successor(&self) -> RowMeta {
        RowMeta {
            cells: self
                .cells
                .iter()
                .map(|heads| {
                    let mut next = Vec::with_capacity(heads.len() + 1);
                    next.extend_from_slice(heads);
                    next
                })
                .collect(),
            held: self.held,
        }
    }

    pub(crate) fn write(&mut self, cell: usize, v: Version, preds: &[VRef]) {
        let heads = &mut self.cells[cell];
        heads.retain(|h| !preds.contains(&h.vref()) && h.vref() != v.vref());
        let at = heads.partition_point(|h| h.vref() < v.vref());
        heads.insert(at, v);
    }

    /// The version every cell has as its only head, if there is one.
    fn uniform(&self) -> Option<Version> {
        let v = *self.cells.first()?.first()?;
        self.cells
            .iter()
            .all(|heads| heads.len() == 1 && heads[0] == v)
            .then_some(v)
    }

    /// The creation the live row descends from: the oldest lineage among its alive
    /// heads. It is the row's priority in constraint conflicts, stable across updates,
    /// and a function of the heads alone, so every replica computes the same.
    pub(crate) fn birth(&self, origins: &Origins) -> Option<Stamp> {
        self.cells[ROW]
            .iter()
            .filter(|h| h.alive)
            .map(|h| h.lineage.unwrap_or(h.stamp()))
            .min_by(|a, b| a.cmp(b, origins))
    }

    /// The stored form: `flags versions cells`, or, for the common row whose every cell
    /// has one head written by the same version, `flags version ncells` (flag bit 1).
    pub(crate) fn encode(&self) -> Vec<u8> {
        if let Some(v) = self.uniform() {
            let mut out = Vec::with_capacity(24);
            out.push(u8::from(self.held) | UNIFORM);
            put_version(&mut out, &v);
            put_varint(&mut out, self.cells.len() as u64);
            return out;
        }
        let mut versions: Vec<Version> = Vec::new();
        for h in self.cells.iter().flatten() {
            if !versions.contains(h) {
                versions.push(*h);
            }
        }
        let mut out = Vec::with_capacity(16 + versions.len() * 12 + self.cells.len() * 2);
        out.push(u8::from(self.held));
        put_varint(&mut out, versions.len() as u64);
        for v in &versions {
            put_version(&mut out, v);
        }
        put_varint(&mut out, self.cells.len() as u64);
        for heads in &self.cells {
            put_varint(&mut out, heads.len() as u64);
            for h in heads {
                let i = versions
                    .iter()
                    .position(|v| v == h)
                    .expect("every head was collected above");
                put_varint(&mut out, i as u64);
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<RowMeta, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = r.byte("row meta flags")?;
        let held = flags & 1 != 0;
        if flags & UNIFORM != 0 {
            let v = get_version(&mut r)?;
            // SQLite tables have at most 32767 columns.
            let ncells = r.varint("row meta cells")? as usize;
            if ncells > 1 << 15 || !r.is_empty() {
                return Err(DecodeError::Malformed("row meta cells"));
            }
            return Ok(RowMeta {
                cells: vec![vec![v]; ncells],
                held,
            });
        }
        let n = r.count("row meta versions")?;
        let versions = (0..n)
            .map(|_| get_version(&mut r))
            .collect::<Result<Vec<_>, _>>()?;
        let ncells = r.count("row meta cells")?;
        let mut cells = Vec::with_capacity(ncells);
        for _ in 0..ncells {
            let nheads = r.count("row meta heads")?;
            let mut heads = Vec::with_capacity(nheads);
            for _ in 0..nheads {
                let i = r.varint("row meta head")? as usize;
                heads.push(
                    *versions
                        .get(i)
                        .ok_or(DecodeError::Malformed("row meta head"))?,
                );
            }
            cells.push(heads);
        }
        Ok(RowMeta { cells, held })
    }
}

/// Values of one row's cells by (cell, local origin number, seq): a few per row, so a
/// list rather than a map.
pub(crate) type CellValues = Vec<((usize, i64, u64), Value)>;

/// The tag of a kept value that is in `_tide_values` rather than in the blob.
pub(crate) const SPILLED: u8 = 0xff;

/// A `vals` blob grows past this only by one entry's header and a spilled tag.
pub(crate) const KEPT_INLINE_MAX: usize = 1 << 20;

/// The `_tide_rows.vals` blob for `kept` (see the module note), or `None` when nothing is
/// kept, and the indexes into `kept` (sorted first, so the same values always make the
/// same bytes) of the values that did not fit and belong in `_tide_values`.
pub(crate) fn encode_kept(kept: &mut CellValues) -> (Option<Vec<u8>>, Vec<usize>) {
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
        if out.len() > KEPT_INLINE_MAX {
            out.truncate(at);
            out.push(SPILLED);
            spilled.push(i);
        }
    }
    (Some(out), spilled)
}

/// Reads a `_tide_rows.vals` blob written by [`encode_kept`]: `None` for a value kept in
/// `_tide_values`.
pub(crate) fn decode_kept(bytes: &[u8]) -> Result<Vec<KeptEntry>, DecodeError> {
    let mut r = Reader::new(bytes);
    let n = r.count("kept values")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let cell = r.varint("kept value cell")?;
        let origin = r.varint("kept value origin")?;
        let seq = r.varint("kept value seq")?;
        if cell > 1 << 15 || origin > i64::MAX as u64 {
            return Err(DecodeError::Malformed("kept value"));
        }
        let at = (cell as usize, origin as i64, seq);
        let mut peek = r.clone();
        if peek.byte("kept value")? == SPILLED {
            r = peek;
            out.push((at, None));
        } else {
            out.push((at, Some(Value::decode(&mut r)?)));
        }
    }
    if !r.is_empty() {
        return Err(DecodeError::Malformed("kept values"));
    }
    Ok(out)
}

/// One entry of a `vals` blob: where, and the value unless it spilled.
pub(crate) type KeptEntry = ((usize, i64, u64), Option<Value>);

#[cfg(test)]
mod tests {
    use super::*;

    fn v(origin: i64, seq: u64, hlc: u64, alive: bool) -> Version {
        Version {
            origin,
            seq,
            hlc,
            alive,
            created: false,
            lineage: None,
        }
    }

    #[test]
    fn meta_round_trips() {
        let mut m = RowMeta::new(2);
        m.write(ROW, v(1, 1, 10, true), &[]);
        m.write(1, v(1, 1, 10, true), &[]);
        m.write(1, v(2, 5, 11, true), &[]);
        m.held = true;
        m.cells[ROW][0].lineage = Some(Stamp {
            origin: 2,
            seq: 1,
            hlc: 3,
        });
        assert_eq!(RowMeta::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn a_row_written_whole_by_one_version_round_trips_in_the_short_form() {
        let mut m = RowMeta::fresh(3, v(2, 7, 99, true));
        let short = m.encode();
        assert_eq!(short[0] & UNIFORM, UNIFORM);
        assert_eq!(RowMeta::decode(&short).unwrap(), m);
        m.held = true;
        assert_eq!(RowMeta::decode(&m.encode()).unwrap(), m);
        // One more head anywhere: the long form, still exact.
        m.write(2, v(3, 1, 100, true), &[]);
        let long = m.encode();
        assert_eq!(long[0] & UNIFORM, 0);
        assert!(long.len() > short.len());
        assert_eq!(RowMeta::decode(&long).unwrap(), m);
    }

    #[test]
    fn kept_values_round_trip_sorted_and_refuse_trailing_bytes() {
        let mut kept: CellValues = vec![
            ((2, 1, 9), Value::text("b")),
            ((1, 3, 1), Value::Null),
            ((1, 2, u64::MAX), Value::Real((-0.0f64).to_bits())),
            ((3, i64::MAX, 0), Value::Blob(vec![0, 255])),
        ];
        assert_eq!(encode_kept(&mut Vec::new()), (None, vec![]));
        let (bytes, spilled) = encode_kept(&mut kept);
        let bytes = bytes.unwrap();
        assert!(spilled.is_empty());
        let back = decode_kept(&bytes).unwrap();
        let inline: Vec<KeptEntry> = kept.iter().map(|(at, v)| (*at, Some(v.clone()))).collect();
        assert_eq!(back, inline);
        let order: Vec<_> = back.iter().map(|(at, _)| *at).collect();
        assert_eq!(
            order,
            vec![(1, 2, u64::MAX), (1, 3, 1), (2, 1, 9), (3, i64::MAX, 0)]
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_kept(&longer).is_err());
        assert!(decode_kept(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Values that would take the blob past its cap are marked, not inlined, however
    /// many there are; small ones after them still fit.
    #[test]
    fn kept_values_past_the_inline_cap_spill_and_the_blob_stays_small() {
        let big = || Value::Blob(vec![7; KEPT_INLINE_MAX / 2 + 1]);
        let mut kept: CellValues = vec![
            ((1, 1, 1), big()),
            ((1, 2, 1), big()),
            ((1, 3, 1), big()),
            ((2, 1, 1), Value::text("small")),
        ];
        let (bytes, spilled) = encode_kept(&mut kept);
        let bytes = bytes.unwrap();
        assert_eq!(
            spilled,
            vec![1, 2],
            "the first big value fits, the next two do not"
        );
        assert!(bytes.len() <= KEPT_INLINE_MAX + 64);
        let back = decode_kept(&bytes).unwrap();
        assert_eq!(back[0], ((1, 1, 1), Some(big())));
        assert_eq!(back[1], ((1, 2, 1), None));
        assert_eq!(back[2], ((1, 3, 1), None));
        assert_eq!(back[3], ((2, 1, 1), Some(Value::text("small"))));
    }

    #[test]
    fn write_replaces_only_predecessors() {
        let mut m = RowMeta::new(1);
        m.write(1, v(1, 1, 10, true), &[]);
        m.write(1, v(2, 1, 11, true), &[]);
        m.write(1, v(1, 2, 12, true), &[(1, 1)]);
        let heads: Vec<_> = m.cells[1].iter().map(|h| h.vref()).collect();
        assert_eq!(heads, vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn winner_follows_hlc_then_replica_id() {
        let origins: Origins = [(1, ReplicaId([9; 16])), (2, ReplicaId([1; 16]))]
            .into_iter()
            .collect();
        let mut m = RowMeta::new(0);
        m.write(ROW, v(1, 1, 10, true), &[]);
        m.write(ROW, v(2, 1, 10, false), &[]);
        assert_eq!(
            m.winner(ROW, &origins).unwrap().origin,
            1,
            "same HLC: larger replica id wins"
        );
        m.write(ROW, v(2, 2, 11, false), &[(2, 1)]);
        assert!(!m.materialized(&origins), "later delete wins");
    }
}
