//! Sealing: pending captures become one signed change (DESIGN.md §2.4).
//!
//! The capture log says which rows changed and which columns; sealing reads the rows'
//! current values, names the heads each write overwrote, and records the change in the
//! log and in the row metadata, all in one transaction.

use foldhash::HashMap;

use rusqlite::{Connection, params};

use crate::change::{Encoder, OpKind};
use crate::error::Result;
use crate::identity::SecretIdentity;
use crate::ids::ChangeId;
use crate::merge::{BATCH, Merger, RowRef, Visible};
use crate::replica::{Replica, origins_map};
use crate::rowmeta::{ROW, RowMeta, VRef, Version};
use crate::schema::{self, TableInfo, q};
use crate::value::{Value, encode_key};

const OP_INSERT: i64 = 1;
const OP_DELETE: i64 = 3;
/// Mask bit 62 stands for every column from 62 on.
const WIDE_BIT: u64 = 1 << 62;

impl Replica {
    /// Seals pending captured writes into one signed change. Returns its id, or `None`
    /// when nothing was pending. Refuses on a copied database (invariant 11).
    pub fn seal(&mut self) -> Result<Option<ChangeId>> {
        if !has_pending(&self.conn)? {
            return Ok(None);
        }
        let secret = self.secret_for_sealing()?;
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let id = seal_pending(&tx, &secret)?;
        tx.commit()?;
        if let Some(id) = id {
            self.record_sealed(id.seq)?;
        }
        Ok(id)
    }
}

/// True when any tracked table has captured writes waiting.
pub(crate) fn has_pending(conn: &Connection) -> Result<bool> {
    for t in schema::tracked_tables(conn)? {
        let any: bool = conn.query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM {})", t.cap_table()),
            [],
            |r| r.get(0),
        )?;
        if any {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What the capture log says about one row since the last seal, with the row as the
/// table shows it now.
struct Pending {
    key: Vec<Value>,
    /// Columns written (bit i = column i; bit 62 = columns 62 and up).
    mask: u64,
    /// Values the row had when last deleted (from the delete trigger).
    last_delete: Option<Vec<Value>>,
    /// The row's values now, `None` when it is not in the table.
    current: Option<Vec<Value>>,
    /// Untyped columns that held a REAL zero before and after an update, with the zero
    /// they held before the first such update: written or not depends on the sign, which
    /// only a bit-for-bit comparison with the row can tell (see `schema::create_triggers`).
    zeros: Vec<(usize, Value)>,
}

impl Pending {
    /// Folds the zeros into the mask: a column whose bit no capture set was written only
    /// if its zero is no longer the one it held before.
    fn settle_zeros(&mut self) {
        for (i, before) in std::mem::take(&mut self.zeros) {
            let bit = 1u64 << i;
            if self.mask & bit != 0 {
                continue;
            }
            let same = self.current.as_ref().is_some_and(|row| row[i] == before);
            if !same {
                self.mask |= bit;
            }
        }
    }
}

/// Streams a table's captures, one [`Pending`] per row, joined with the row's current
/// values in one pass. Captures are read sorted by key (SQLite's sorter bounds the
/// memory this needs), so captures whose keys SQLite calls equal are adjacent; among
/// them, keys tide tells apart (7 and 7.0, 0.0 and -0.0) can interleave, so a short run
/// of such keys is gathered and each exact key merged within it. A row's captures keep
/// their write order (rowid).
fn each_pending(
    conn: &Connection,
    t: &TableInfo,
    mut each: impl FnMut(Pending) -> Result<()>,
) -> Result<()> {
    let nk = t.key_columns.len();
    let nc = t.columns.len();
    let sql = pending_sql(conn, t)?;
    // Columns whose update captures may carry the zero they held (see `Pending::zeros`).
    let zero_cols: Vec<usize> = (0..nc.min(62)).filter(|&i| t.untyped[i]).collect();
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    // Rows whose keys SQLite calls equal to the first one's, each exact key once.
    let mut run: Vec<Pending> = Vec::new();
    let values = |r: &rusqlite::Row<'_>, from: usize, n: usize| {
        (from..from + n)
            .map(|i| r.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()
    };
    while let Some(r) = rows.next()? {
        let op: i64 = r.get(0)?;
        let mask: Option<i64> = r.get(1)?;
        let key = values(r, 2, nk)?;
        if run.first().is_some_and(|p| !sql_equal_keys(&p.key, &key)) {
            for mut p in run.drain(..) {
                p.settle_zeros();
                each(p)?;
            }
        }
        let at = match run.iter().position(|p| p.key == key) {
            Some(i) => i,
            None => {
                // The row as the table shows it: found under this exact key, or absent.
                let mut same = true;
                for (i, k) in key.iter().enumerate() {
                    same &= k.same_as(r.get_ref(2 + nk + nc + i)?);
                }
                let current = if same {
                    Some(values(r, 2 + nk + nc + nk, nc)?)
                } else {
                    None
                };
                run.push(Pending {
                    key,
                    mask: 0,
                    last_delete: None,
                    current,
                    zeros: Vec::new(),
                });
                run.len() - 1
            }
        };
        let p = &mut run[at];
        match op {
            OP_INSERT => p.mask = u64::MAX,
            OP_DELETE => p.last_delete = Some(values(r, 2 + nk, nc)?),
            _ => {
                p.mask |= mask.unwrap_or(-1) as u64;
                for &i in &zero_cols {
                    if p.zeros.iter().any(|(c, _)| *c == i) {
                        continue;
                    }
                    let before: Value = r.get(2 + nk + i)?;
                    if before != Value::Null {
                        p.zeros.push((i, before));
                    }
                }
            }
        }
    }
    for mut p in run {
        p.settle_zeros();
        each(p)?;
    }
    Ok(())
}

/// Whether SQLite's BINARY comparison calls two keys equal: integers and reals by exact
/// numeric value (so 7 = 7.0 and 0.0 = -0.0), text and blobs byte for byte.
fn sql_equal_keys(a: &[Value], b: &[Value]) -> bool {
    a.iter().zip(b).all(|(x, y)| sql_equal(x, y))
}

fn sql_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(i), Value::Real(r)) | (Value::Real(r), Value::Integer(i)) => {
            int_equals_real(*i, f64::from_bits(*r))
        }
        (Value::Real(x), Value::Real(y)) => f64::from_bits(*x) == f64::from_bits(*y),
        _ => a == b,
    }
}

/// Exact comparison, as SQLite makes it: no rounding of large integers to reals.
fn int_equals_real(i: i64, r: f64) -> bool {
    // -2^63 is exactly representable; 2^63 is past every i64.
    if r.fract() != 0.0 || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r)
    {
        return false;
    }
    r as i64 == i
}

/// The capture query of [`each_pending`].
fn pending_sql(conn: &Connection, t: &TableInfo) -> Result<String> {
    let nk = t.key_columns.len();
    let nc = t.columns.len();
    let mut cols: Vec<String> = (0..nk).map(|i| format!("c.k{i}")).collect();
    cols.extend((0..nc).map(|i| format!("c.v{i}")));
    cols.extend(t.quoted_columns().iter().map(|c| format!("t.{c}")));
    let on = t
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, k)| format!("t.{} = c.k{i}", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    // Sorting by every key column makes keys SQLite calls equal adjacent
    // (`each_pending` tells them apart), then keeps each row's captures in write order.
    let order = |p: &str| {
        let mut terms: Vec<String> = (0..nk).map(|i| format!("{p}k{i}")).collect();
        terms.push(format!("{p}rowid"));
        terms.join(", ")
    };
    // Only the narrow capture rows are sorted, in a subquery that LIMIT keeps from being
    // flattened; the join then runs in that order (the left side of a LEFT JOIN is
    // always SQLite's outer loop), instead of sorting the joined, wide rows.
    let narrow = format!(
        "SELECT c.op, c.mask, {} FROM (SELECT * FROM {} ORDER BY {} LIMIT -1) c
         LEFT JOIN {} t ON {on}",
        cols.join(", "),
        t.cap_table(),
        order(""),
        q(&t.name),
    );
    // Checked, not assumed: should the plan not scan the sorted captures as the outer
    // loop, sort the joined rows instead (slower, same result).
    let sql = if sorted_outer(conn, &narrow)? {
        narrow
    } else {
        format!(
            "SELECT c.op, c.mask, {} FROM {} c LEFT JOIN {} t ON {on} ORDER BY {}",
            cols.join(", "),
            t.cap_table(),
            q(&t.name),
            order("c.")
        )
    };
    Ok(sql)
}

/// True when SQLite runs `sql` with the sorted subquery `c` as a co-routine that is the
/// outermost loop, so rows come out in the subquery's order.
fn sorted_outer(conn: &Connection, sql: &str) -> Result<bool> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    // (parent, detail); top-level steps have parent 0.
    let plan: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(1)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let first_loop = plan
        .iter()
        .find(|(parent, d)| *parent == 0 && (d.starts_with("SCAN ") || d.starts_with("SEARCH ")));
    Ok(plan.iter().any(|(_, d)| d == "CO-ROUTINE c")
        && first_loop.is_some_and(|(_, d)| d == "SCAN c"))
}

fn written(mask: u64, col: usize) -> bool {
    mask & (1 << col.min(62)) != 0 || (col >= 62 && mask & WIDE_BIT != 0)
}

/// Seals inside the caller's transaction. Returns the new change's id, if any.
///
/// One pass: the change's head (seq, HLC, deps) is fixed first, then captured rows are
/// decided against their metadata in batches, written into the change's chunks and into
/// their metadata, so no part of a large change is held twice.
pub(crate) fn seal_pending(conn: &Connection, secret: &SecretIdentity) -> Result<Option<ChangeId>> {
    let tables = schema::tracked_tables(conn)?;
    if !has_pending(conn)? {
        return Ok(None);
    }
    let self_idx: i64 =
        conn.query_row("SELECT v FROM _tide_meta WHERE k='self'", [], |r| r.get(0))?;
    let head = crate::log::next_head(conn, secret)?;
    // Chunks go to the log's chunk store as they fill, so a change of any size is
    // sealed in bounded memory.
    let sink = |hash: &[u8; 32], chunk: &[u8]| crate::log::store_chunk(conn, hash, chunk);
    let mut sealer = Sealer {
        conn,
        merger: Merger::new(conn, origins_map(conn)?),
        enc: Encoder::new(head.clone(), crate::log::chunk_target(conn)?, sink),
        v: Version {
            origin: self_idx,
            seq: head.seq,
            hlc: head.hlc,
            alive: true,
            created: false,
            lineage: None,
        },
        started: false,
        no_meta: false,
    };
    for t in &tables {
        sealer.started = false;
        // A table sealed for the first time (an initial load) has no metadata yet.
        sealer.no_meta = !conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM _tide_rows WHERE tid=?1)")?
            .query_row([t.tid], |r| r.get::<_, bool>(0))?;
        let mut chunk = Vec::with_capacity(BATCH);
        each_pending(conn, t, |p| {
            chunk.push(p);
            if chunk.len() == BATCH {
                sealer.rows(t, &mut chunk)?;
            }
            Ok(())
        })?;
        sealer.rows(t, &mut chunk)?;
        conn.execute_batch(&format!("DELETE FROM {}", t.cap_table()))?;
    }
    let Sealer {
        mut merger, enc, ..
    } = sealer;
    if enc.ops() == 0 {
        return Ok(None);
    }
    crate::log::store_own(conn, secret, &enc.finish()?, true)?;
    // A local delete may free a slot a held row waits for, or orphan a child: settle
    // here exactly as a replica applying this change will.
    let _off = schema::TriggersOff::new(conn)?;
    crate::log::settle(&mut merger, &tables)?;
    Ok(Some(ChangeId {
        origin: head.origin,
        seq: head.seq,
    }))
}

/// The change being sealed, and what writes its rows' metadata.
struct Sealer<'c, S> {
    conn: &'c Connection,
    merger: Merger<'c>,
    enc: Encoder<S>,
    /// The version every op of this change writes (kind flags set per op).
    v: Version,
    /// Whether the current table's section was started in the change.
    started: bool,
    /// The current table had no row metadata when its sealing began, so no captured row
    /// has any (a seal takes each exact key once): nothing to look up.
    no_meta: bool,
}

impl<S: FnMut(&[u8; 32], &[u8]) -> Result<()>> Sealer<'_, S> {
    fn to_id(&self, p: &VRef) -> ChangeId {
        ChangeId {
            origin: self.merger.origins[&p.0],
            seq: p.1,
        }
    }

    fn start_table(&mut self, t: &TableInfo) {
        if !self.started {
            self.enc.table(&t.name, &t.key_columns, &t.columns);
            self.started = true;
        }
    }

    /// Seals a batch of captured rows of `t` (and empties it).
    fn rows(&mut self, t: &TableInfo, chunk: &mut Vec<Pending>) -> Result<()> {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|p| encode_key(&p.key)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let metas = if self.no_meta {
            (0..refs.len()).map(|_| None).collect()
        } else {
            self.merger.load_metas(t, &refs)?
        };
        let mut fresh = Vec::new();
        for ((p, key_bytes), m0) in chunk.drain(..).zip(&refs).zip(metas) {
            if self.row(t, p, key_bytes, m0)? {
                fresh.push(*key_bytes);
            }
        }
        let v = Version {
            alive: true,
            created: true,
            ..self.v
        };
        // With `no_meta` this is what catches a key sealed twice (the guard in `row`
        // needs the metadata it did not read).
        self.merger.write_fresh(t, &fresh, v).map_err(|e| match e {
            crate::error::Error::ApplyAborted(why) => crate::error::Error::SealAborted(why),
            e => e,
        })
    }

    /// Seals one captured row. True when the row is new here and written whole: its
    /// metadata is then written with the batch's.
    fn row(
        &mut self,
        t: &TableInfo,
        p: Pending,
        key_bytes: &[u8],
        m0: Option<RowMeta>,
    ) -> Result<bool> {
        let origins = std::rc::Rc::clone(&self.merger.origins);
        let was_live = m0.as_ref().is_some_and(|m| m.materialized(&origins));
        let (kind, mask) = match (&p.current, was_live) {
            (Some(_), false) => (OpKind::Insert, u64::MAX),
            (Some(_), true) => (OpKind::Update, p.mask),
            (None, true) => (OpKind::Delete, p.mask),
            // Created and deleted since the last seal, or never visible here: nothing to say.
            (None, false) => return Ok(false),
        };
        let values = p.current.as_ref().or(p.last_delete.as_ref());
        // A row already written by this very change would name the change as its own
        // predecessor: a change no replica could accept. Never seal that.
        let own = self.v.vref();
        if let Some(m) = &m0
            && m.cells.iter().flatten().any(|h| h.vref() == own)
        {
            return Err(crate::error::Error::SealAborted(format!(
                "the capture log names the row {:?} of {} twice",
                p.key, t.name
            )));
        }
        let Some(m0) = m0 else {
            // A row this replica never had: every column is new, nothing overwritten.
            let values = values.expect("the row exists: it was just inserted");
            self.start_table(t);
            self.enc
                .row(kind, &p.key, std::iter::empty(), None, t.columns.len())?;
            for (c, value) in values.iter().enumerate() {
                self.enc.cell(c, value, std::iter::empty());
            }
            return Ok(true);
        };
        // A row created where it was deleted overwrites what the deletion saw: the
        // cell heads the deleting changes causally covered, not values written
        // concurrently with the deletion (those stay as candidates).
        let deleted_over = if was_live {
            Vec::new()
        } else {
            deletion_contexts(self.conn, &m0)?
        };
        // The app saw the visible state: it overwrote the heads showing it, and this
        // replica's own earlier writes (a replica's later write supersedes its earlier
        // ones, shown or kept), no others.
        let me = self.v.origin;
        let row_preds: Vec<VRef> = m0.cells[ROW]
            .iter()
            .filter(|h| h.alive == was_live || h.origin == me)
            .map(|h| h.vref())
            .collect();
        let mut cells: Vec<(usize, Vec<VRef>)> = Vec::new();
        if values.is_some() {
            for c in 0..t.columns.len() {
                if !written(mask, c) {
                    continue;
                }
                let heads = &m0.cells[c + 1];
                let preds: Vec<VRef> = if !was_live {
                    heads
                        .iter()
                        .filter(|h| {
                            h.origin == me || deleted_over.iter().any(|d| d.covers(h, &origins))
                        })
                        .map(|h| h.vref())
                        .collect()
                } else if heads.len() > 1 && in_conflict(self.conn, t, key_bytes, c)? {
                    // Only the value the app saw is overwritten, with this replica's own
                    // earlier candidates; the others' candidates stay.
                    let shown = m0.winner(c + 1, &origins).map(|w| w.vref());
                    heads
                        .iter()
                        .map(|h| h.vref())
                        .filter(|h| Some(*h) == shown || h.0 == me)
                        .collect()
                } else {
                    heads.iter().map(|h| h.vref()).collect()
                };
                cells.push((c, preds));
            }
        }
        if kind == OpKind::Update && cells.is_empty() {
            // Nothing changed (an UPDATE that set columns to what they were, or a row
            // noted as a possible REPLACE victim that survived).
            return Ok(false);
        }
        let lineage = if kind == OpKind::Update {
            m0.birth(&origins)
        } else {
            None
        };
        self.start_table(t);
        let row_ids: Vec<ChangeId> = row_preds.iter().map(|p| self.to_id(p)).collect();
        let lineage_id = lineage.map(|l| crate::change::Lineage {
            change: self.to_id(&(l.origin, l.seq)),
            hlc: l.hlc,
        });
        self.enc
            .row(kind, &p.key, row_ids.into_iter(), lineage_id, cells.len())?;
        // Cells are only planned when there are values to write.
        let values = values.map(Vec::as_slice).unwrap_or_default();
        for (c, preds) in &cells {
            let ids: Vec<ChangeId> = preds.iter().map(|p| self.to_id(p)).collect();
            self.enc.cell(*c, &values[*c], ids.into_iter());
        }
        let v = Version {
            alive: kind != OpKind::Delete,
            created: kind == OpKind::Insert,
            lineage,
            ..self.v
        };
        let mut m1 = m0.successor();
        m1.write(ROW, v, &row_preds);
        let mut new_values = Vec::with_capacity(cells.len());
        for (c, preds) in cells {
            m1.write(c + 1, v, &preds);
            new_values.push((c, v, values[c].clone()));
        }
        if kind != OpKind::Delete {
            // The app wrote the row into its table: whatever held it is settled by this write.
            m1.held = false;
        }
        let visible = match (kind, p.last_delete) {
            (OpKind::Delete, Some(old)) => Visible::LocalDelete(old),
            _ => Visible::LocalWrite,
        };
        self.merger.transition(
            &RowRef {
                t,
                key: &p.key,
                key_bytes,
            },
            Some(&m0),
            m1,
            &new_values,
            visible,
        )?;
        Ok(false)
    }
}

/// A deleting change and the version vector it was made against.
struct DeletionContext {
    version: VRef,
    deps: HashMap<crate::ids::ReplicaId, u64>,
}

impl DeletionContext {
    fn covers(&self, h: &Version, origins: &crate::rowmeta::Origins) -> bool {
        h.vref() == self.version
            || self
                .deps
                .get(&origins[&h.origin])
                .is_some_and(|s| *s >= h.seq)
    }
}

/// The contexts of the row's deleting heads (read from the log; this path is rare).
fn deletion_contexts(conn: &Connection, m: &RowMeta) -> Result<Vec<DeletionContext>> {
    let mut out = Vec::new();
    for h in m.cells[ROW].iter().filter(|h| !h.alive) {
        let (body, packing): (Vec<u8>, i64) = conn.query_row(
            "SELECT body, packing FROM _tide_log WHERE origin=?1 AND seq=?2",
            params![h.origin, h.seq as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let head = crate::log::unpack(body, packing)?;
        out.push(DeletionContext {
            version: h.vref(),
            deps: crate::change::Manifest::decode(&head)?
                .head
                .deps
                .into_iter()
                .collect(),
        });
    }
    Ok(out)
}

fn in_conflict(conn: &Connection, t: &TableInfo, key_bytes: &[u8], col: usize) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM _tide_conflicts WHERE tid=?1 AND key=?2 AND col=?3)",
    )?;
    Ok(stmt.query_row(params![t.tid, key_bytes, (col + 1) as i64], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sql_equal` must say what SQLite's own `=` says of key values.
    #[test]
    fn key_equality_agrees_with_sqlite() {
        let conn = Connection::open_in_memory().unwrap();
        let values = [
            Value::Integer(0),
            Value::real(0.0),
            Value::real(-0.0),
            Value::Integer(7),
            Value::real(7.0),
            Value::real(7.5),
            Value::Integer(i64::MIN),
            Value::real(-9_223_372_036_854_775_808.0),
            Value::Integer(i64::MAX),
            Value::real(9_223_372_036_854_775_807.0),
            Value::text("7"),
            Value::Blob(b"7".to_vec()),
        ];
        for a in &values {
            for b in &values {
                let sqlite: bool = conn
                    .query_row("SELECT ?1 = ?2", params![a, b], |r| r.get(0))
                    .unwrap();
                assert_eq!(sql_equal(a, b), sqlite, "{a:?} = {b:?}");
            }
        }
    }

    /// The fast capture query relies on SQLite running the sorted captures as the outer
    /// loop; this bundled SQLite must plan it that way for every key shape.
    #[test]
    fn the_sorted_captures_are_the_outer_loop() {
        let conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&conn).unwrap();
        conn.execute_batch(
            "CREATE TABLE a(id TEXT PRIMARY KEY, x);
             CREATE TABLE b(k1 INTEGER, k2 BLOB, y, PRIMARY KEY(k1, k2)) WITHOUT ROWID;
             CREATE TABLE c(k, z, PRIMARY KEY(k));",
        )
        .unwrap();
        for (tid, name, keys, cols) in [
            (1, "a", "id", "x"),
            (2, "b", "k1,k2", "y"),
            (3, "c", "k", "z"),
        ] {
            let t = TableInfo {
                tid,
                name: name.into(),
                key_columns: keys.split(',').map(String::from).collect(),
                columns: vec![cols.into()],
                untyped: vec![true],
                key_untyped: keys.split(',').map(|k| k == "k" || k == "k2").collect(),
            };
            crate::schema::install_capture(&conn, &t).unwrap();
            let sql = pending_sql(&conn, &t).unwrap();
            assert!(
                sql.contains("LIMIT -1"),
                "{name} falls back to the wide sort"
            );
        }
    }
}
