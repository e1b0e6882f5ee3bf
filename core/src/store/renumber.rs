//! Renumbering a table's cells when the application dropped or moved columns: row
//! metadata, kept values and conflict records name a column by its position, so a
//! dropped column's cells go and the others take their new positions (DESIGN.md §2.12).

use crate::error::Result;
use crate::store::kept::{read_kept, write_kept};
use crate::store::rowmeta::{CellValues, ROW, RowMeta};
use rusqlite::{Connection, params};

/// Far below any cell number: cells pass through it so that no two rows ever hold the
/// same (tid, key, col) in the middle of a renumbering.
const PARKED: i64 = -1_000_000;

/// Renumbers table `tid`'s cells: `new_of_old[i]` is the new position of column `i`, or
/// `None` when it was dropped (its heads, kept values and conflicts go). `ncols` is how
/// many columns the table has now.
pub(crate) fn renumber(
    conn: &Connection,
    tid: i64,
    new_of_old: &[Option<usize>],
    ncols: usize,
) -> Result<()> {
    let cell = |old: usize| -> Option<usize> {
        if old == ROW {
            Some(ROW)
        } else {
            new_of_old.get(old - 1).copied().flatten().map(|c| c + 1)
        }
    };
    let mut stmt = conn.prepare("SELECT key, meta, vals FROM _tide_rows WHERE tid=?1")?;
    let rows = stmt
        .query_map([tid], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(stmt);
    for (key, meta, vals) in rows {
        let old = RowMeta::decode(&meta)?;
        let mut new = RowMeta::new(ncols);
        new.held = old.held;
        for (i, heads) in old.cells.into_iter().enumerate() {
            if let Some(at) = cell(i) {
                new.cells[at] = heads;
            }
        }
        let vals = match vals {
            None => None,
            Some(blob) => {
                let (kept, _) = read_kept(conn, tid, &key, &blob)?;
                conn.execute(
                    "DELETE FROM _tide_values WHERE tid=?1 AND key=?2",
                    params![tid, key],
                )?;
                let mut kept: CellValues = kept
                    .into_iter()
                    .filter_map(|((c, o, s), v)| Some(((cell(c)?, o, s), v)))
                    .collect();
                write_kept(conn, tid, &key, &mut kept, &[])?
            }
        };
        conn.execute(
            "UPDATE _tide_rows SET meta=?3, vals=?4 WHERE tid=?1 AND key=?2",
            params![tid, key, new.encode(), vals],
        )?;
    }
    // Conflict records: those of dropped columns go, the others move.
    let case = new_of_old
        .iter()
        .enumerate()
        .filter_map(|(i, to)| to.map(|j| format!("WHEN {} THEN {}", i + 1, j + 1)))
        .collect::<Vec<_>>()
        .join(" ");
    let dropped = new_of_old
        .iter()
        .enumerate()
        .filter(|(_, to)| to.is_none())
        .map(|(i, _)| (i + 1).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute(
        &format!("DELETE FROM _tide_conflicts WHERE tid=?1 AND col IN ({dropped})"),
        [tid],
    )?;
    if !case.is_empty() {
        conn.execute(
            &format!(
                "UPDATE _tide_conflicts SET col = {PARKED} - (CASE col {case} END) WHERE tid=?1 AND col >= 1"
            ),
            [tid],
        )?;
        conn.execute(
            &format!(
                "UPDATE _tide_conflicts SET col = {PARKED} - col WHERE tid=?1 AND col <= {PARKED}"
            ),
            [tid],
        )?;
    }
    Ok(())
}
