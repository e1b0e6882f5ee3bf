//! After an apply: held rows get another chance, and rows a foreign key now refuses are held.

use crate::error::Result;
use crate::merge::Merger;
use crate::store::tables::TableInfo;
use rusqlite::Connection;

/// Brings held rows and foreign keys to a fixpoint: every held row gets another chance,
/// oldest first, and rows whose foreign key points nowhere are held, until nothing
/// moves. Runs with triggers off, after applies and after local seals alike, so every
/// replica reaches the same state from the same changes.
pub(crate) fn settle(merger: &mut Merger<'_>, tracked: &[TableInfo]) -> Result<()> {
    for _round in 0..64 {
        let before = held_rows(merger.conn)?;
        let mut order = Vec::with_capacity(before.len());
        for (tid, key) in &before {
            let Some(t) = tracked.iter().find(|t| t.tid == *tid) else {
                continue;
            };
            let Some(m) = merger.load_meta(t, key)? else {
                continue;
            };
            order.push((merger.priority(&m, key), t, key.clone()));
        }
        order.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, t, key) in order {
            merger.release(t, &key)?;
        }
        hold_foreign_key_violators(merger, tracked)?;
        if held_rows(merger.conn)? == before {
            return Ok(());
        }
    }
    Ok(())
}

pub(crate) fn held_rows(conn: &Connection) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached("SELECT tid, key FROM _tide_held ORDER BY tid, key")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Rows of tracked tables whose foreign key points at no row (the parent was deleted
/// concurrently, or is itself held) are held until the parent is back. Found through
/// the declared keys, so WITHOUT ROWID tables are covered too.
pub(crate) fn hold_foreign_key_violators(
    merger: &mut Merger<'_>,
    tracked: &[TableInfo],
) -> Result<()> {
    use crate::store::tables::q;
    for t in tracked {
        let fks: Vec<(i64, String, String, Option<String>)> = merger
            .conn
            .prepare_cached("SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq")?
            .query_map([&t.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut i = 0;
        while i < fks.len() {
            let id = fks[i].0;
            let group: Vec<_> = fks[i..].iter().take_while(|f| f.0 == id).cloned().collect();
            i += group.len();
            let parent = &group[0].1;
            let parent_cols: Vec<String> = if group.iter().all(|f| f.3.is_some()) {
                group
                    .iter()
                    .map(|f| f.3.clone().expect("checked above"))
                    .collect()
            } else {
                // No parent columns named: the parent's primary key, in order.
                merger
                    .conn
                    .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
                    .query_map([parent], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            if parent_cols.len() != group.len() {
                continue;
            }
            let not_null = group
                .iter()
                .map(|f| format!("c.{} IS NOT NULL", q(&f.2)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let matches = group
                .iter()
                .zip(&parent_cols)
                .map(|(f, p)| format!("p.{} = c.{}", q(p), q(&f.2)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let keys = t
                .key_columns
                .iter()
                .map(|k| format!("c.{}", q(k)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {keys} FROM {} c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {matches})",
                q(&t.name),
                q(parent)
            );
            let n = t.key_columns.len();
            let orphans: Vec<Vec<crate::format::value::Value>> = merger
                .conn
                .prepare(&sql)?
                .query_map([], |r| (0..n).map(|i| r.get(i)).collect())?
                .collect::<rusqlite::Result<_>>()?;
            for key in orphans {
                merger.hold(t, &key, crate::store::held::HeldReason::ForeignKey)?;
            }
        }
    }
    Ok(())
}
