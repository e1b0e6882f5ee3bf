//! The values the merge says win, read back from the log: every live cell must show the
//! value its winning head's change wrote. The doctor checks that; following a schema
//! change uses it to find the writes made while capture was off.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::format::change::{ChunkDecoder, Manifest, RowOp, Step};
use crate::format::value::{Value, decode_key, encode_key};
use crate::merge::Merger;
use crate::store::chunks::{Chunks, LogChunks};
use crate::store::rowmeta::RowMeta;
use crate::store::states::ChangeState;
use crate::store::tables::TableInfo;
use rusqlite::{Connection, params};

/// Rows (table number, encoded key) with writes not sealed yet.
type Pending = HashSet<(i64, Vec<u8>)>;

/// The cells of one change that still win, by row, with the value it wrote.
type Wins = HashMap<(i64, Vec<u8>), HashMap<usize, Value>>;

/// A live cell that does not show the value its winning head wrote.
pub(crate) struct Difference<'t> {
    pub(crate) t: &'t TableInfo,
    pub(crate) key: Vec<Value>,
    /// Position in `t.columns`.
    pub(crate) column: usize,
    /// What the table shows (`None`: the row is not in the table).
    pub(crate) shown: Option<Value>,
    pub(crate) winner: Value,
}

/// Compares every value a live row shows with the value its winning head wrote, read
/// from that head's change in the log, and calls `on` for each that differs. Rows with
/// unsealed writes are left out unless `pending_too`: there the table is ahead of the
/// log until the next seal. Returns, by table number, how many shown cells have a
/// winner whose change was not found in the log.
///
/// One pass over the applied log, one metadata lookup per op and one row read per row a
/// change still wins; memory stays within one change's cells that are still winners.
pub(crate) fn each_difference<'t>(
    conn: &Connection,
    tables: &'t [TableInfo],
    merger: &Merger<'_>,
    pending_too: bool,
    on: &mut dyn FnMut(Difference<'t>) -> Result<()>,
) -> Result<HashMap<i64, u64>> {
    let pending = if pending_too {
        Pending::new()
    } else {
        pending_rows(conn, tables)?
    };
    // How many shown cells each table has: every one must be found in the log.
    let mut missing = shown_cells(conn, tables, merger, &pending)?;
    affinity_tables(conn, tables, true)?;
    let compared = compare_log(conn, tables, merger, &pending, &mut missing, on);
    affinity_tables(conn, tables, false)?;
    compared?;
    missing.retain(|_, n| *n > 0);
    Ok(missing)
}

/// The pass over the applied log of [`each_difference`].
fn compare_log<'t>(
    conn: &Connection,
    tables: &'t [TableInfo],
    merger: &Merger<'_>,
    pending: &Pending,
    missing: &mut HashMap<i64, u64>,
    on: &mut dyn FnMut(Difference<'t>) -> Result<()>,
) -> Result<()> {
    let by_name: HashMap<&str, &TableInfo> = tables.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut stmt = conn.prepare(
        "SELECT origin, seq, body, packing FROM _tide_log WHERE applied = ?1 ORDER BY origin, seq",
    )?;
    let mut log = stmt.query([ChangeState::Applied])?;
    while let Some(r) = log.next()? {
        let (origin, seq): (i64, i64) = (r.get(0)?, r.get(1)?);
        let Ok(manifest) = crate::store::chunks::unpack(r.get(2)?, r.get(3)?)
            .and_then(|body| Manifest::decode(&body).map_err(Error::from))
        else {
            continue; // reported by the doctor's hash-chain check
        };
        let change = (origin, seq as u64, &manifest);
        let wins = winning_cells(conn, &by_name, merger, pending, change)?;
        for ((tid, key_bytes), cells) in wins {
            if let Some(n) = missing.get_mut(&tid) {
                *n = n.saturating_sub(cells.len() as u64);
            }
            let t = tables.iter().find(|t| t.tid == tid).expect("tables by tid");
            compare_row(t, merger, &key_bytes, cells, on)?;
        }
    }
    Ok(())
}

/// The doctor's form: each difference (at most 20) and each table with shown values
/// whose winning change is missing, in words.
pub(crate) fn shown_values_differ(
    conn: &Connection,
    tables: &[TableInfo],
    merger: &Merger<'_>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let missing = each_difference(conn, tables, merger, false, &mut |d| {
        if problems.len() < 20 {
            problems.push(format!(
                "{} [{}].{}: shows {}, its winning value is {}",
                d.t.name,
                d.key
                    .iter()
                    .map(Value::display)
                    .collect::<Vec<_>>()
                    .join(", "),
                d.t.columns[d.column],
                d.shown.as_ref().map_or("no row".into(), Value::display),
                d.winner.display()
            ));
        }
        Ok(())
    })?;
    for t in tables {
        if let Some(n) = missing.get(&t.tid) {
            problems.push(format!(
                "{}: {n} shown value(s) whose winning change is not in the log",
                t.name
            ));
        }
    }
    Ok(problems)
}

/// The rows with captured writes not sealed yet.
fn pending_rows(conn: &Connection, tables: &[TableInfo]) -> Result<Pending> {
    let mut pending = Pending::new();
    for t in tables {
        let keys = (0..t.key_columns.len())
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn.prepare(&format!("SELECT {keys} FROM {}", t.cap_table()))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = (0..t.key_columns.len())
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            pending.insert((t.tid, encode_key(&key)));
        }
    }
    Ok(pending)
}

/// By table number: how many cells of live rows with no pending writes have a winner.
fn shown_cells(
    conn: &Connection,
    tables: &[TableInfo],
    merger: &Merger<'_>,
    pending: &Pending,
) -> Result<HashMap<i64, u64>> {
    let mut expected: HashMap<i64, u64> = HashMap::new();
    for t in tables {
        let mut stmt = conn.prepare_cached("SELECT key, meta FROM _tide_rows WHERE tid = ?1")?;
        let mut rows = stmt.query([t.tid])?;
        while let Some(r) = rows.next()? {
            let key_bytes: Vec<u8> = r.get(0)?;
            let Ok(m) = RowMeta::decode(&r.get::<_, Vec<u8>>(1)?) else {
                continue; // reported by the metadata check
            };
            if m.materialized(&merger.origins) && !pending.contains(&(t.tid, key_bytes)) {
                *expected.entry(t.tid).or_default() += (1..=t.columns.len())
                    .filter(|&c| m.winner(c, &merger.origins).is_some())
                    .count() as u64;
            }
        }
    }
    Ok(expected)
}

/// The cells change (origin number, seq, manifest) wrote that still win, with the value
/// written last (a key may come back within one change).
fn winning_cells(
    conn: &Connection,
    by_name: &HashMap<&str, &TableInfo>,
    merger: &Merger<'_>,
    pending: &Pending,
    (origin, seq, manifest): (i64, u64, &Manifest),
) -> Result<Wins> {
    let mut wins = Wins::new();
    let mut chunks = LogChunks { conn };
    'chunks: for (i, want) in manifest.chunks.iter().enumerate() {
        let Ok(chunk) = chunks.chunk(i, want) else {
            break; // reported by the hash-chain check
        };
        let Ok(mut dec) = ChunkDecoder::new(&manifest.head.deps, &chunk) else {
            break;
        };
        // The table of the ops that follow, and where each of its columns is in ours.
        let mut table: Option<(&TableInfo, Vec<Option<usize>>)> = None;
        loop {
            match dec.next() {
                Ok(Step::End) | Err(_) => continue 'chunks,
                Ok(Step::Table(ops)) => {
                    table = by_name.get(ops.name.as_str()).map(|t| {
                        let cols = ops.columns.iter().map(|c| t.column_index(c)).collect();
                        (*t, cols)
                    });
                }
                Ok(Step::Row(op)) => {
                    if let Some((t, cols)) = &table {
                        let written = (origin, seq, op);
                        op_wins(t, cols, merger, pending, written, &mut wins)?;
                    }
                }
            }
        }
    }
    Ok(wins)
}

/// Adds to `wins` the cells of one op of change (origin number, seq) that still win
/// their row, when that row is live and has no pending writes.
fn op_wins(
    t: &TableInfo,
    cols: &[Option<usize>],
    merger: &Merger<'_>,
    pending: &Pending,
    (origin, seq, op): (i64, u64, RowOp),
    wins: &mut Wins,
) -> Result<()> {
    let key_bytes = encode_key(&op.key);
    if pending.contains(&(t.tid, key_bytes.clone())) {
        return Ok(());
    }
    let Some(m) = merger.load_meta(t, &key_bytes)? else {
        return Ok(());
    };
    if !m.materialized(&merger.origins) {
        return Ok(());
    }
    for cell in op.cells {
        let Some(Some(c)) = cols.get(cell.column) else {
            continue;
        };
        let wins_here = m
            .winner(c + 1, &merger.origins)
            .is_some_and(|w| w.origin == origin && w.seq == seq);
        if wins_here {
            wins.entry((t.tid, key_bytes.clone()))
                .or_default()
                .insert(*c, cell.value);
        }
    }
    Ok(())
}

/// Whether `shown` is what storing `winner` in column `column` of `t` gives: a table
/// rebuilt with another type for a column converts the values it copies (2 becomes 2.0
/// in a REAL column), and so does a write under the new type. Only a value that
/// differs after that conversion is a difference.
fn stored_alike(
    merger: &Merger<'_>,
    t: &TableInfo,
    column: usize,
    winner: &Value,
    shown: Option<&Value>,
) -> Result<bool> {
    let Some(shown) = shown else {
        return Ok(false);
    };
    let scratch = affinity_table(t, column);
    let conn = merger.conn;
    conn.prepare_cached(&format!("INSERT INTO temp.{scratch}(v) VALUES (?1)"))?
        .execute([winner])?;
    let stored: Value = conn
        .prepare_cached(&format!("SELECT v FROM temp.{scratch}"))?
        .query_row([], |r| r.get(0))?;
    conn.prepare_cached(&format!("DELETE FROM temp.{scratch}"))?
        .execute([])?;
    Ok(&stored == shown)
}

/// The scratch table that stores values with the type of column `column` of `t`.
fn affinity_table(t: &TableInfo, column: usize) -> String {
    format!("_tide_affinity_{}_{column}", t.tid)
}

/// Creates the scratch tables [`stored_alike`] uses, one per column, each with the
/// column's declared type (so SQLite converts a value stored in it as the column does).
/// They are made before the log is read: no table is created or dropped while a read is
/// under way.
fn affinity_tables(conn: &Connection, tables: &[TableInfo], create: bool) -> Result<()> {
    for t in tables {
        for (i, c) in t.columns.iter().enumerate() {
            let scratch = affinity_table(t, i);
            if create {
                let decl: String = conn
                    .prepare_cached("SELECT type FROM pragma_table_xinfo(?1) WHERE name = ?2")?
                    .query_row(params![t.name, c], |r| r.get(0))?;
                conn.execute_batch(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {scratch}(v {decl})"
                ))?;
            } else {
                conn.execute_batch(&format!("DROP TABLE IF EXISTS temp.{scratch}"))?;
            }
        }
    }
    Ok(())
}

/// Compares what row `key_bytes` of `t` shows with the winning values `cells`.
fn compare_row<'t>(
    t: &'t TableInfo,
    merger: &Merger<'_>,
    key_bytes: &[u8],
    cells: HashMap<usize, Value>,
    on: &mut dyn FnMut(Difference<'t>) -> Result<()>,
) -> Result<()> {
    let key = decode_key(key_bytes)?;
    let row = merger.read_row(t, &key)?;
    for (column, winner) in cells {
        let shown = row.as_ref().map(|row| &row[column]);
        if shown != Some(&winner) && !stored_alike(merger, t, column, &winner, shown)? {
            on(Difference {
                t,
                key: key.clone(),
                column,
                shown: shown.cloned(),
                winner,
            })?;
        }
    }
    Ok(())
}
