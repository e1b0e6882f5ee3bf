//! Pending captures read back with the rows' values: one entry per written row, in key order.

use super::*;
use crate::error::Result;
use crate::format::value::Value;
use crate::store::states::CaptureOp;
use crate::store::tables::{TableInfo, q};
use rusqlite::Connection;

/// What the capture log says about one row since the last seal, with the row as the
/// table shows it now.
pub(crate) struct Pending {
    pub(crate) key: Vec<Value>,
    /// Columns written (bit i = column i; bit 62 = columns 62 and up).
    pub(crate) mask: u64,
    /// Values the row had when last deleted (from the delete trigger).
    pub(crate) last_delete: Option<Vec<Value>>,
    /// The row's values now, `None` when it is not in the table.
    pub(crate) current: Option<Vec<Value>>,
    /// Untyped columns that held a REAL zero before and after an update, with the zero
    /// they held before the first such update: written or not depends on the sign, which
    /// only a bit-for-bit comparison with the row can tell (see `crate::capture::triggers::create_triggers`).
    pub(crate) zeros: Vec<(usize, Value)>,
}

impl Pending {
    /// Folds the zeros into the mask: a column whose bit no capture set was written only
    /// if its zero is no longer the one it held before.
    pub(crate) fn settle_zeros(&mut self) {
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
pub(crate) fn each_pending(
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
        let op: CaptureOp = r.get(0)?;
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
            CaptureOp::Insert => p.mask = u64::MAX,
            CaptureOp::Delete => p.last_delete = Some(values(r, 2 + nk, nc)?),
            CaptureOp::Update => {
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
pub(crate) fn sql_equal_keys(a: &[Value], b: &[Value]) -> bool {
    a.iter().zip(b).all(|(x, y)| sql_equal(x, y))
}

pub(crate) fn sql_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(i), Value::Real(r)) | (Value::Real(r), Value::Integer(i)) => {
            int_equals_real(*i, f64::from_bits(*r))
        }
        (Value::Real(x), Value::Real(y)) => f64::from_bits(*x) == f64::from_bits(*y),
        _ => a == b,
    }
}

/// Exact comparison, as SQLite makes it: no rounding of large integers to reals.
pub(crate) fn int_equals_real(i: i64, r: f64) -> bool {
    // -2^63 is exactly representable; 2^63 is past every i64.
    if r.fract() != 0.0 || !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&r)
    {
        return false;
    }
    r as i64 == i
}

/// The capture query of [`each_pending`].
pub(crate) fn pending_sql(conn: &Connection, t: &TableInfo) -> Result<String> {
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
pub(crate) fn sorted_outer(conn: &Connection, sql: &str) -> Result<bool> {
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

pub(crate) fn written(mask: u64, col: usize) -> bool {
    mask & (1 << col.min(62)) != 0 || (col >= 62 && mask & WIDE_BIT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    /// `sql_equal` must say what SQLite's own `=` says of key values.
    #[test]
    pub(crate) fn key_equality_agrees_with_sqlite() {
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
    pub(crate) fn the_sorted_captures_are_the_outer_loop() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::migrations::migrate(&conn).unwrap();
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
                former: Vec::new(),
                defaults: Vec::new(),
                dropped: Vec::new(),
                tid,
                name: name.into(),
                key_columns: keys.split(',').map(String::from).collect(),
                columns: vec![cols.into()],
                untyped: vec![true],
                key_untyped: keys.split(',').map(|k| k == "k" || k == "k2").collect(),
            };
            crate::capture::triggers::install_capture(&conn, &t).unwrap();
            let sql = pending_sql(&conn, &t).unwrap();
            assert!(
                sql.contains("LIMIT -1"),
                "{name} falls back to the wide sort"
            );
        }
    }
}
