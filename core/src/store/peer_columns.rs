//! The columns each origin's last change on a table named: what this replica knows of a
//! peer's schema, so `status` and `doctor` can say where it differs (DESIGN.md §2.12).

use crate::error::Result;
use crate::store::tables::{join_names, split_names};
use rusqlite::{Connection, params};

/// Notes that change `seq` of `origin` (a local origin number) names `columns` for
/// table `table`; an older change than the one noted changes nothing.
pub(crate) fn note(
    conn: &Connection,
    origin: i64,
    seq: u64,
    table: &str,
    columns: &[String],
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO _tide_peer_columns(origin, tname, seq, columns) VALUES(?1, ?2, ?3, ?4)
         ON CONFLICT(origin, tname) DO UPDATE SET seq=excluded.seq, columns=excluded.columns
         WHERE excluded.seq > seq",
    )?
    .execute(params![origin, table, seq as i64, join_names(columns)])?;
    Ok(())
}

/// What origin `origin` last named for `table`: the seq of that change and its columns.
pub(crate) type Noted = (i64, String, u64, Vec<String>);

/// Every (origin, table) noted: local origin number, table, seq, columns.
pub(crate) fn all(conn: &Connection) -> Result<Vec<Noted>> {
    let mut stmt = conn.prepare(
        "SELECT origin, tname, seq, columns FROM _tide_peer_columns ORDER BY tname, origin",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
                split_names(&r.get::<_, String>(3)?),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
