//! Following the application's schema changes (DESIGN.md §2.12). Each replica's
//! application migrates its own tables; before tide seals or applies anything it checks
//! whether SQLite's schema version moved since it last looked, and if so compares every
//! tracked table with what it recorded:
//!
//! - the same columns, or more at the end (`ADD COLUMN`), or some renamed in place: the
//!   record follows, the capture log gains value slots, the triggers are made anew, and
//!   the values of added columns that differ from their default are captured;
//! - the triggers gone (the table was rebuilt under its name, which drops them): the
//!   writes made while capture was off are found by comparing the table with tide's own
//!   record and captured as inserts, deletes and updates;
//! - anything else (the table gone, another primary key, a column dropped or moved, an
//!   index tide cannot sync): capture of that table stops, its triggers are dropped so the
//!   application's statements keep working, and the reason is recorded for every command
//!   to show.
//!
//! Captures written here are sealed by the seal that follows, as ordinary changes.
//!
//! `Replica::migrate` runs a migration with every table's triggers removed (for what
//! SQLite refuses while they name a column), one statement at a time ([`Steps`]), and
//! follows in the same transaction.

use crate::error::{Error, Result};
use crate::format::value::{Value, decode_key, encode_key};
use crate::merge::Merger;
use crate::merge::winners::each_difference;
use crate::store::meta::{self, origins_map};
use crate::store::states::CaptureOp;
use crate::store::tables::{self, Column, TableInfo, q};
use rusqlite::{Connection, OptionalExtension, params};

use super::triggers::{create_triggers, drop_triggers};

/// What following the schema did.
#[derive(Debug, Default)]
pub(crate) struct Followed {
    /// Some table gained or renamed columns: changes waiting for this replica's schema
    /// may apply now.
    pub(crate) columns_changed: bool,
    /// Tables whose capture stopped here, with why.
    pub(crate) stopped: Vec<(String, String)>,
}

/// Follows every schema change since the last look (cheap when there was none: one
/// read of SQLite's schema version).
pub(crate) fn follow(conn: &Connection) -> Result<Followed> {
    if !moved(conn)? {
        return Ok(Followed::default());
    }
    follow_with(conn, &Hints::default(), false)
}

/// Per tracked table (by number): which recorded column each live one continues, as a
/// migration run statement by statement saw it ([`Steps`]).
pub(crate) type Hints = std::collections::HashMap<i64, Vec<Option<usize>>>;

/// Follows the live schema of every tracked table. `hints` say how columns moved where
/// they are known exactly; `paused` says tide removed every table's triggers itself (a
/// table without them was not rebuilt).
pub(crate) fn follow_with(conn: &Connection, hints: &Hints, paused: bool) -> Result<Followed> {
    let mut out = Followed::default();
    for t in tables::tracked_tables(conn)? {
        follow_table(conn, &t, hints.get(&t.tid), paused, &mut out)?;
    }
    if out.columns_changed {
        // Changes that waited for columns this replica has now: the next apply takes them.
        crate::store::quarantine::requeue(conn)?;
    }
    // Tide's own DDL above moved the version too.
    meta::set_u64(conn, "schema_seen", schema_version(conn)?)?;
    Ok(out)
}

/// A migration run statement by statement ([`Replica::migrate`](crate::Replica::migrate)):
/// after each statement, each tracked table's columns are compared with those before
/// it. One `ALTER TABLE` adds, renames or drops one column, so each step is told apart
/// exactly, where comparing only the first and last shapes could take a column dropped
/// and another added for a rename.
pub(crate) struct Steps {
    tables: Vec<Stepped>,
}

/// One tracked table as a migration moves it.
struct Stepped {
    tid: i64,
    name: String,
    /// Its columns (key columns left out) after the last statement.
    columns: Vec<String>,
    /// Per column of `columns`: the recorded column it continues.
    from: Vec<Option<usize>>,
}

impl Steps {
    pub(crate) fn start(conn: &Connection) -> Result<Steps> {
        Ok(Steps {
            tables: tables::tracked_tables(conn)?
                .into_iter()
                .map(|t| Stepped {
                    tid: t.tid,
                    from: (0..t.columns.len()).map(Some).collect(),
                    name: t.name,
                    columns: t.columns,
                })
                .collect(),
        })
    }

    /// Notes how the statement just run moved each table's columns. A table that is
    /// gone for now (in the middle of a rebuild) is compared when it is back.
    pub(crate) fn after_statement(&mut self, conn: &Connection) -> Result<()> {
        for Stepped {
            name,
            columns,
            from,
            ..
        } in &mut self.tables
        {
            let live = tables::read_columns(conn, name)?;
            if live.is_empty() {
                continue;
            }
            let now: Vec<String> = live
                .into_iter()
                .filter(|c| c.pk == 0)
                .map(|c| c.name)
                .collect();
            if now != *columns {
                *from = continues(columns, &now)
                    .into_iter()
                    .map(|p| p.and_then(|p| from[p]))
                    .collect();
                *columns = now;
            }
        }
        Ok(())
    }

    pub(crate) fn hints(self) -> Hints {
        self.tables.into_iter().map(|s| (s.tid, s.from)).collect()
    }
}

/// Records the schema as seen: tide's own DDL (tracking a table) is not an application's
/// schema change.
pub(crate) fn seen(conn: &Connection) -> Result<()> {
    meta::set_u64(conn, "schema_seen", schema_version(conn)?)
}

/// Whether the schema moved since tide last looked: then [`follow`] has work to do.
pub(crate) fn moved(conn: &Connection) -> Result<bool> {
    Ok(schema_version(conn)? != meta::get_u64(conn, "schema_seen")?)
}

fn schema_version(conn: &Connection) -> Result<u64> {
    Ok(conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))? as u64)
}

/// How the live columns relate to the recorded ones.
struct Shape {
    live: Vec<Column>,
    /// Per live column (key columns left out): the recorded column it continues (by name,
    /// or renamed in place), or `None` when it was added.
    from: Vec<Option<usize>>,
    /// (recorded name, live name) of columns renamed in place.
    renamed: Vec<(String, String)>,
    /// Recorded columns that are gone.
    dropped: Vec<String>,
    /// How many columns were recorded.
    recorded: usize,
}

impl Shape {
    /// The columns' positions changed: cells must be renumbered.
    fn moved(&self) -> bool {
        !self.dropped.is_empty()
            || self
                .from
                .iter()
                .enumerate()
                .any(|(j, from)| from.is_some_and(|i| i != j))
    }

    /// Anything to record: a column added, renamed, dropped or moved.
    fn changed(&self) -> bool {
        self.moved() || !self.renamed.is_empty() || self.from.iter().any(Option::is_none)
    }

    /// Per recorded column: its position now, or `None` when it was dropped.
    fn new_of_old(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; self.recorded];
        for (j, from) in self.from.iter().enumerate() {
            if let Some(i) = from {
                out[*i] = Some(j);
            }
        }
        out
    }

    /// Positions of the added columns.
    fn added(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.from.len()).filter(|&j| self.from[j].is_none())
    }
}

fn follow_table(
    conn: &Connection,
    t: &TableInfo,
    hint: Option<&Vec<Option<usize>>>,
    paused: bool,
    out: &mut Followed,
) -> Result<()> {
    let shape = match shape(conn, t, hint)? {
        Ok(shape) => shape,
        Err(why) => return stop(conn, t, why, out),
    };
    let (live, _) = match tables::table_info(conn, t.tid, &t.name) {
        Ok(info) => info,
        Err(Error::Track(e)) => return stop(conn, t, e.to_string(), out),
        Err(e) => return Err(e),
    };
    let had_triggers = has_triggers(conn, t.tid)?;
    let changed = shape.changed();
    // A rebuilt table counts as a schema change followed, even with the same columns.
    if changed || (!had_triggers && !paused) {
        record(conn, t, &live, &shape)?;
    }
    out.columns_changed |= changed;
    let info = tables::tracked_table(conn, t.tid)?.expect("a table being followed stays tracked");
    for (_, new) in &shape.renamed {
        if let Some(at) = info.columns.iter().position(|c| c == new) {
            rename_conflicts(conn, &info, at)?;
        }
    }
    if shape.moved() {
        let new_of_old = shape.new_of_old();
        crate::store::renumber::renumber(conn, t.tid, &new_of_old, info.columns.len())?;
        renumber_captures(conn, &info, &new_of_old)?;
    } else {
        add_value_slots(conn, &info)?;
    }
    drop_triggers(conn, t.tid)?;
    create_triggers(conn, &info)?;
    if !had_triggers {
        recover_gap(conn, &info)?;
    }
    capture_added_values(conn, &info, shape.added(), &shape.live)
}

/// The live shape of `t`, or why tide cannot follow it. `hint`, when given and of the
/// live width, says which recorded column each live one continues.
fn shape(
    conn: &Connection,
    t: &TableInfo,
    hint: Option<&Vec<Option<usize>>>,
) -> Result<std::result::Result<Shape, String>> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?1",
            [&t.name],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(Err(format!("table {:?} is gone or was renamed", t.name)));
    }
    let live = tables::read_columns(conn, &t.name)?;
    let mut keys: Vec<&Column> = live.iter().filter(|c| c.pk > 0).collect();
    keys.sort_by_key(|c| c.pk);
    if keys.iter().map(|c| &c.name).ne(t.key_columns.iter()) {
        return Ok(Err(format!("the primary key of {:?} changed", t.name)));
    }
    let others: Vec<String> = live
        .iter()
        .filter(|c| c.pk == 0)
        .map(|c| c.name.clone())
        .collect();
    let from = match hint {
        Some(from) if from.len() == others.len() => from.clone(),
        _ => continues(&t.columns, &others),
    };
    let renamed = from
        .iter()
        .zip(&others)
        .filter_map(|(i, now)| {
            let was = &t.columns[(*i)?];
            (was != now).then(|| (was.clone(), now.clone()))
        })
        .collect();
    let dropped = (0..t.columns.len())
        .filter(|i| !from.contains(&Some(*i)))
        .map(|i| t.columns[i].clone())
        .collect();
    Ok(Ok(Shape {
        live,
        from,
        renamed,
        dropped,
        recorded: t.columns.len(),
    }))
}

/// Which of the columns `before` each of `now` continues, or `None` for one added.
///
/// Columns are matched by name. A column of `before` whose name is gone was renamed
/// when a new name stands in its place (every column before it in place too), else
/// dropped. A column dropped and another added in its place at once cannot be told
/// from a rename, and is taken for one; one `ALTER TABLE` at a time is never ambiguous.
fn continues(before: &[String], now: &[String]) -> Vec<Option<usize>> {
    let mut from: Vec<Option<usize>> = now
        .iter()
        .map(|name| before.iter().position(|c| c == name))
        .collect();
    for i in 0..before.len() {
        if from.contains(&Some(i)) {
            continue;
        }
        if i < now.len() && from[i].is_none() && (0..i).all(|p| from[p] == Some(p)) {
            from[i] = Some(i);
        }
    }
    from
}

/// Records the table's columns as they are now, its renames and dropped columns, and
/// one more epoch.
fn record(conn: &Connection, t: &TableInfo, live: &TableInfo, shape: &Shape) -> Result<()> {
    for (old, new) in &shape.renamed {
        // Names that pointed at `old` point at `new` now.
        conn.execute(
            "UPDATE _tide_renamed SET new=?3 WHERE tid=?1 AND new=?2",
            params![t.tid, old, new],
        )?;
        conn.execute(
            "INSERT OR REPLACE INTO _tide_renamed(tid, old, new) VALUES(?1, ?2, ?3)",
            params![t.tid, old, new],
        )?;
    }
    for gone in &shape.dropped {
        // The column's former names are dropped with it.
        conn.execute(
            "INSERT OR IGNORE INTO _tide_dropped(tid, name)
             SELECT ?1, old FROM _tide_renamed WHERE tid=?1 AND new=?2 UNION SELECT ?1, ?2",
            params![t.tid, gone],
        )?;
        conn.execute(
            "DELETE FROM _tide_renamed WHERE tid=?1 AND new=?2",
            params![t.tid, gone],
        )?;
    }
    for j in shape.added() {
        // A name in use again names the new column.
        let name = &live.columns[j];
        conn.execute(
            "DELETE FROM _tide_dropped WHERE tid=?1 AND name=?2",
            params![t.tid, name],
        )?;
        conn.execute(
            "DELETE FROM _tide_renamed WHERE tid=?1 AND old=?2",
            params![t.tid, name],
        )?;
    }
    conn.execute(
        "UPDATE _tide_tables SET columns=?2, epoch=epoch+1 WHERE tid=?1",
        params![t.tid, tables::join_names(&live.columns)],
    )?;
    Ok(())
}

/// Gives the capture log a value slot per column of `t`.
fn add_value_slots(conn: &Connection, t: &TableInfo) -> Result<()> {
    let slots: usize = conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name GLOB 'v[0-9]*'",
        [t.cap_table()],
        |r| r.get::<_, i64>(0),
    )? as usize;
    for i in slots..t.columns.len() {
        conn.execute_batch(&format!("ALTER TABLE {} ADD COLUMN v{i}", t.cap_table()))?;
    }
    Ok(())
}

/// Moves the values of captures waiting to be sealed to their columns' new slots, and
/// marks their updates as writing every column (the sealer compares each with its
/// head, so saying too much is safe; the bit of a column may have moved).
fn renumber_captures(conn: &Connection, t: &TableInfo, new_of_old: &[Option<usize>]) -> Result<()> {
    add_value_slots(conn, t)?;
    let mut sets =
        vec!["mask = CASE WHEN mask IS NULL THEN NULL ELSE 9223372036854775807 END".to_string()];
    let slots = new_of_old.len().max(t.columns.len());
    for j in 0..slots {
        let source = new_of_old
            .iter()
            .position(|to| *to == Some(j))
            .map_or("NULL".to_string(), |i| format!("v{i}"));
        sets.push(format!("v{j} = {source}"));
    }
    conn.execute_batch(&format!("UPDATE {} SET {}", t.cap_table(), sets.join(", ")))?;
    Ok(())
}

/// Conflict ids are derived from the column's name (DESIGN.md §2.9): the open conflicts
/// of a renamed column take the ids every replica derives under the new name.
fn rename_conflicts(conn: &Connection, t: &TableInfo, at: usize) -> Result<()> {
    let merger = Merger::new(conn, origins_map(conn)?);
    let cell = at + 1;
    let mut stmt = conn.prepare("SELECT key, kind FROM _tide_conflicts WHERE tid=?1 AND col=?2")?;
    let open = stmt
        .query_map(params![t.tid, cell as i64], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, crate::store::conflict_kind::ConflictKind>(1)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(stmt);
    for (key_bytes, kind) in open {
        let Some(m) = merger.load_meta(t, &key_bytes)? else {
            continue;
        };
        let candidates: Vec<_> = m.cells[cell].iter().map(|h| merger.change_id(h)).collect();
        let id = crate::merge::conflict_records::conflict_id(
            &t.name,
            &key_bytes,
            &t.columns[at],
            kind,
            &candidates,
        );
        conn.execute(
            "UPDATE _tide_conflicts SET id=?4 WHERE tid=?1 AND key=?2 AND col=?3",
            params![t.tid, key_bytes, cell as i64, &id[..]],
        )?;
    }
    Ok(())
}

/// Stops capture of `t`: its triggers go, so the application's statements keep working,
/// and `why` is recorded for every command to show.
fn stop(conn: &Connection, t: &TableInfo, why: String, out: &mut Followed) -> Result<()> {
    drop_triggers(conn, t.tid)?;
    conn.execute(
        "UPDATE _tide_tables SET stopped=?2 WHERE tid=?1",
        params![t.tid, why],
    )?;
    out.stopped.push((t.name.clone(), why));
    Ok(())
}

fn has_triggers(conn: &Connection, tid: i64) -> Result<bool> {
    let names = ["ins", "upd", "rekey", "del"].map(|k| format!("_tide_{k}_{tid}"));
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='trigger' AND name IN (?1, ?2, ?3, ?4)",
        params![names[0], names[1], names[2], names[3]],
        |r| r.get(0),
    )?;
    Ok(n == 4)
}

/// The capture log's key columns: `k0, k1, …`.
pub(crate) fn key_slots(t: &TableInfo) -> String {
    (0..t.key_columns.len())
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends one capture of `op` on row `key` with `mask` to `t`'s capture log.
fn capture(
    conn: &Connection,
    t: &TableInfo,
    op: CaptureOp,
    mask: Option<i64>,
    key: &[Value],
) -> Result<()> {
    let marks = (3..3 + key.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO {}(op, mask, {}) VALUES (?1, ?2, {marks})",
        t.cap_table(),
        key_slots(t)
    ))?;
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&op, &mask];
    args.extend(key.iter().map(|v| v as &dyn rusqlite::ToSql));
    stmt.execute(&*args)?;
    Ok(())
}

/// Rows whose metadata says they are live but that the table does not hold are captured
/// as deletes. Their last values are unknown (NULL), so a concurrent update that wins
/// over such a delete brings back only the columns it wrote.
pub(crate) fn capture_missing_rows(conn: &Connection, t: &TableInfo) -> Result<()> {
    capture_missing_rows_but(conn, t, &Keys::default())
}

/// Encoded keys of rows.
type Keys = std::collections::HashSet<Vec<u8>>;

/// [`capture_missing_rows`], leaving out the rows in `pending`.
fn capture_missing_rows_but(conn: &Connection, t: &TableInfo, pending: &Keys) -> Result<()> {
    let merger = Merger::new(conn, origins_map(conn)?);
    let mut stmt = conn.prepare("SELECT key FROM _tide_rows WHERE tid=?1")?;
    let keys = stmt
        .query_map([t.tid], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(stmt);
    for key_bytes in keys {
        if pending.contains(&key_bytes) {
            continue;
        }
        let live = merger
            .load_meta(t, &key_bytes)?
            .is_some_and(|m| m.materialized(&merger.origins));
        let key = decode_key(&key_bytes)?;
        if live && merger.read_row(t, &key)?.is_none() {
            capture(conn, t, CaptureOp::Delete, None, &key)?;
        }
    }
    Ok(())
}

/// The writes made while `t` had no triggers, found by comparing the table with tide's
/// record: rows with no live metadata are inserts, live metadata with no row are
/// deletes, cells that differ from their winning head's value are updates.
///
/// Rows with captures still waiting to be sealed are left to those captures: they were
/// made while the triggers still worked and know the row better (a delete's last values).
fn recover_gap(conn: &Connection, t: &TableInfo) -> Result<()> {
    let merger = Merger::new(conn, origins_map(conn)?);
    let pending = pending_keys(conn, t)?;
    let settled: Keys = pending.keys().cloned().collect();
    let keys = t.key_columns.iter().map(|k| q(k)).collect::<Vec<_>>();
    let mut stmt = conn.prepare(&format!("SELECT {} FROM {}", keys.join(", "), q(&t.name)))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let key = (0..keys.len())
            .map(|i| r.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let key_bytes = encode_key(&key);
        if let Some(&exists) = pending.get(&key_bytes) {
            // A row deleted, then written again while capture was off.
            if !exists {
                capture(conn, t, CaptureOp::Insert, None, &key)?;
            }
            continue;
        }
        let live = merger
            .load_meta(t, &key_bytes)?
            .is_some_and(|m| m.materialized(&merger.origins));
        if !live {
            capture(conn, t, CaptureOp::Insert, None, &key)?;
        }
    }
    drop(rows);
    drop(stmt);
    capture_missing_rows_but(conn, t, &settled)?;
    // A row written before the gap and deleted during it.
    for (key_bytes, exists) in &pending {
        let key = decode_key(key_bytes)?;
        if *exists && merger.read_row(t, &key)?.is_none() {
            capture(conn, t, CaptureOp::Delete, None, &key)?;
        }
    }
    let tables = std::slice::from_ref(t);
    each_difference(conn, tables, &merger, true, &mut |d| {
        if d.shown.is_some() {
            capture(
                conn,
                t,
                CaptureOp::Update,
                Some(1 << d.column.min(62)),
                &d.key,
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

/// The rows of `t` with captures waiting to be sealed, each with whether its last
/// capture says the row exists (an insert or update) or not (a delete).
fn pending_keys(
    conn: &Connection,
    t: &TableInfo,
) -> Result<std::collections::HashMap<Vec<u8>, bool>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT op, {} FROM {} ORDER BY rowid",
        key_slots(t),
        t.cap_table()
    ))?;
    let mut rows = stmt.query([])?;
    let mut out = std::collections::HashMap::new();
    while let Some(r) = rows.next()? {
        let op: CaptureOp = r.get(0)?;
        let key = (1..=t.key_columns.len())
            .map(|i| r.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        out.insert(encode_key(&key), op != CaptureOp::Delete);
    }
    Ok(out)
}

/// Values of the added columns that differ from the column's default: written before
/// tide followed the change, they are captured as updates. A row holding the default
/// needs nothing: a peer that adds the column gets the same default.
fn capture_added_values(
    conn: &Connection,
    t: &TableInfo,
    added: impl Iterator<Item = usize>,
    live: &[Column],
) -> Result<()> {
    for i in added {
        let c = q(&t.columns[i]);
        let default = live
            .iter()
            .find(|l| l.name == t.columns[i])
            .and_then(|l| l.default.as_deref())
            .unwrap_or("NULL");
        let keys = t.key_columns.iter().map(|k| q(k)).collect::<Vec<_>>();
        let sql = format!(
            "SELECT {} FROM {} WHERE {c} IS NOT ({default})",
            keys.join(", "),
            q(&t.name)
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = (0..keys.len())
                .map(|k| r.get::<_, Value>(k))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            capture(conn, t, CaptureOp::Update, Some(1 << i.min(62)), &key)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::continues;

    fn names(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn columns_continue_by_name_then_in_place() {
        let cases = [
            ("a b c", "a b c", vec![Some(0), Some(1), Some(2)]),
            ("a b c", "a b c d", vec![Some(0), Some(1), Some(2), None]),
            ("a b c", "a c", vec![Some(0), Some(2)]),
            ("a b c", "a x c", vec![Some(0), Some(1), Some(2)]),
            ("a b c", "c a b", vec![Some(2), Some(0), Some(1)]),
            ("a b c", "a c x", vec![Some(0), Some(2), None]),
            // Ambiguous at once: taken for a rename of `b`.
            ("a b", "a x", vec![Some(0), Some(1)]),
            ("a b c", "x c", vec![Some(0), Some(2)]),
        ];
        for (before, now, want) in cases {
            assert_eq!(
                continues(&names(before), &names(now)),
                want,
                "{before} -> {now}"
            );
        }
    }
}
