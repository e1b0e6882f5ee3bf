//! What tide knows of a tracked table: its key, columns, unique indexes, and the switch that turns capture off.

use crate::error::{Error, Result, TrackError, UntrackableReason};
use crate::format::value::Value;
use rusqlite::{Connection, OptionalExtension};

/// Quotes an SQL identifier.
pub(crate) fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A tracked table's shape as tide sees it.
#[derive(Clone, Debug)]
pub(crate) struct TableInfo {
    pub(crate) tid: i64,
    pub(crate) name: String,
    pub(crate) key_columns: Vec<String>,
    pub(crate) columns: Vec<String>,
    /// Per column of `columns`: true when the column has no type affinity, so 1 and 1.0,
    /// or 0.0 and -0.0, can both be stored and `IS` alone cannot tell them apart.
    pub(crate) untyped: Vec<bool>,
    pub(crate) key_untyped: Vec<bool>,
    /// Former names of renamed columns, with the position of the column they name now:
    /// changes that still use them apply to it (DESIGN.md §2.12).
    pub(crate) former: Vec<(String, usize)>,
    /// Per column of `columns`: the value a row gets where no version wrote the column
    /// (a column added after some replicas wrote the row): its default when that is a
    /// constant, else NULL. Shorter than `columns` means NULL for the rest.
    pub(crate) defaults: Vec<Value>,
    /// Names of columns the application dropped (and their former names): a change that
    /// still writes them applies its other columns (DESIGN.md §2.12).
    pub(crate) dropped: Vec<String>,
}

impl TableInfo {
    /// The position in `columns` of the column a change names `name`: its current name,
    /// or a name it had before a rename.
    pub(crate) fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|x| x == name).or_else(|| {
            self.former
                .iter()
                .find(|(old, _)| old == name)
                .map(|&(_, at)| at)
        })
    }

    pub(crate) fn cap_table(&self) -> String {
        format!("_tide_cap_{}", self.tid)
    }

    /// Key columns then the other columns, quoted for SQL.
    pub(crate) fn quoted_columns(&self) -> Vec<String> {
        self.key_columns
            .iter()
            .chain(&self.columns)
            .map(|c| q(c))
            .collect()
    }
}

pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) decl: String,
    pub(crate) pk: i64,
    /// Its declared default, as SQL text.
    pub(crate) default: Option<String>,
}

pub(crate) fn untyped(decl: &str) -> bool {
    // SQLite's affinity rules (§3.1 of its datatype page): no INT/CHAR/CLOB/TEXT/REAL/FLOA/DOUB
    // and either empty or containing BLOB means no affinity. "ANY" gets no affinity in STRICT
    // tables; treating it as untyped only makes change detection more careful.
    let d = decl.to_ascii_uppercase();
    let typed = ["INT", "CHAR", "CLOB", "TEXT", "REAL", "FLOA", "DOUB"]
        .iter()
        .any(|t| d.contains(t));
    !typed && (d.is_empty() || d.contains("BLOB") || d.contains("ANY"))
}

pub(crate) fn read_columns(conn: &Connection, table: &str) -> Result<Vec<Column>> {
    let mut stmt =
        conn.prepare("SELECT name, type, pk, hidden, dflt_value FROM pragma_table_xinfo(?1)")?;
    let cols = stmt
        .query_map([table], |r| {
            Ok((
                Column {
                    name: r.get(0)?,
                    decl: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    pk: r.get(2)?,
                    default: r.get(4)?,
                },
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Hidden and generated columns cannot be written, so they are not replicated.
    Ok(cols
        .into_iter()
        .filter(|(_, hidden)| *hidden == 0)
        .map(|(c, _)| c)
        .collect())
}

/// Inspects `table` and returns its shape, refusing tables tide cannot sync.
pub(crate) fn inspect(conn: &Connection, table: &str) -> Result<(Vec<Column>, Vec<String>)> {
    if table.starts_with("_tide_") {
        return Err(untrackable(table, UntrackableReason::TideTable));
    }
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name=?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(sql) = sql else {
        return Err(Error::Track(TrackError::NoSuchTable(table.into())));
    };
    if sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
        return Err(Error::Track(TrackError::Autoincrement(table.into())));
    }
    let cols = read_columns(conn, table)?;
    let mut keys: Vec<&Column> = cols.iter().filter(|c| c.pk > 0).collect();
    if keys.is_empty() {
        return Err(Error::Track(TrackError::NoPrimaryKey(table.into())));
    }
    keys.sort_by_key(|c| c.pk);
    let mut warnings = Vec::new();
    if keys.len() == 1
        && keys[0].decl.eq_ignore_ascii_case("INTEGER")
        && !sql.to_ascii_uppercase().contains("WITHOUT ROWID")
    {
        warnings.push(format!(
            "table {table:?} has an INTEGER PRIMARY KEY (a rowid alias): replicas that insert offline will mint \
             the same ids; such collisions show up as conflicts. Prefer random ids (for example a UUID) for new rows."
        ));
    }
    check_keys(conn, table, &keys)?;
    if cols.iter().any(|c| c.name.contains('\0')) {
        return Err(untrackable(table, UntrackableReason::NulInColumnName));
    }
    Ok((cols, warnings))
}

/// Refuses a primary key that compares with a collation other than BINARY (replicas
/// could disagree on which rows are the same) or that holds NULL in some row.
fn check_keys(conn: &Connection, table: &str, keys: &[&Column]) -> Result<()> {
    for index in unique_indexes(conn, table)? {
        if index.primary
            && index
                .columns
                .iter()
                .any(|(_, coll)| !coll.eq_ignore_ascii_case("BINARY"))
        {
            return Err(untrackable(table, UntrackableReason::KeyCollation));
        }
    }
    let null_keys = keys
        .iter()
        .map(|k| format!("{} IS NULL", q(&k.name)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let nulls: i64 = conn.query_row(
        &format!("SELECT count(*) FROM {} WHERE {null_keys}", q(table)),
        [],
        |r| r.get(0),
    )?;
    if nulls > 0 {
        return Err(untrackable(
            table,
            UntrackableReason::NullKeys { rows: nulls as u64 },
        ));
    }
    Ok(())
}

/// The refusal of `table` for `reason`.
fn untrackable(table: &str, reason: UntrackableReason) -> Error {
    Error::Track(TrackError::Untrackable {
        table: table.into(),
        reason,
    })
}

/// Builds the `TableInfo` for a table about to be tracked (tid assigned by the caller).
pub(crate) fn table_info(
    conn: &Connection,
    tid: i64,
    table: &str,
) -> Result<(TableInfo, Vec<String>)> {
    let (cols, warnings) = inspect(conn, table)?;
    let mut keys: Vec<&Column> = cols.iter().filter(|c| c.pk > 0).collect();
    keys.sort_by_key(|c| c.pk);
    let others: Vec<&Column> = cols.iter().filter(|c| c.pk == 0).collect();
    Ok((
        TableInfo {
            tid,
            name: table.into(),
            key_columns: keys.iter().map(|c| c.name.clone()).collect(),
            key_untyped: keys.iter().map(|c| untyped(&c.decl)).collect(),
            columns: others.iter().map(|c| c.name.clone()).collect(),
            untyped: others.iter().map(|c| untyped(&c.decl)).collect(),
            former: Vec::new(),
            defaults: Vec::new(),
            dropped: Vec::new(),
        },
        warnings,
    ))
}

pub(crate) fn is_without_rowid(conn: &Connection, table: &str) -> Result<bool> {
    // A WITHOUT ROWID table has no rowid column to select.
    Ok(conn
        .prepare(&format!("SELECT rowid FROM {} LIMIT 0", q(table)))
        .is_err())
}

/// A UNIQUE index (or the primary key) as tide models it: plain columns, each with the
/// collation the index compares with.
#[derive(Debug, Clone)]
pub(crate) struct UniqueIndex {
    pub(crate) columns: Vec<(String, String)>,
    pub(crate) primary: bool,
}

/// Every UNIQUE index of `table`, refusing the kinds tide cannot decide concurrent rows
/// under yet (partial and expression indexes): every replica must find the same
/// colliding rows.
pub(crate) fn unique_indexes(conn: &Connection, table: &str) -> Result<Vec<UniqueIndex>> {
    let list: Vec<(String, String, bool)> = conn
        .prepare_cached("SELECT name, origin, partial FROM pragma_index_list(?1) WHERE \"unique\" = 1 ORDER BY name")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (name, origin, partial) in list {
        if partial {
            return Err(untrackable(
                table,
                UntrackableReason::PartialIndex { index: name },
            ));
        }
        let cols: Vec<(Option<String>, Option<String>)> = conn
            .prepare_cached(
                "SELECT name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
            )?
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut columns = Vec::new();
        for (c, coll) in cols {
            let Some(c) = c else {
                return Err(untrackable(
                    table,
                    UntrackableReason::ExpressionIndex { index: name },
                ));
            };
            columns.push((c, coll.unwrap_or_else(|| "BINARY".into())));
        }
        out.push(UniqueIndex {
            columns,
            primary: origin == "pk",
        });
    }
    Ok(out)
}

/// Turns every trigger of the connection off while it lives: tide's own writes must not
/// be captured again (invariant 9), and an app's triggers already ran on the replica
/// that made the write; their effects arrive as captured writes of their own.
pub(crate) struct TriggersOff<'c> {
    pub(crate) conn: &'c Connection,
}

impl<'c> TriggersOff<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Result<TriggersOff<'c>> {
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
            false,
        )?;
        Ok(TriggersOff { conn })
    }
}

impl Drop for TriggersOff<'_> {
    fn drop(&mut self) {
        // Failing to turn them back on would silently stop capture on this connection
        // (other connections are unaffected: the setting is per connection).
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
                true,
            )
            .expect("re-enabling triggers is a plain flag change and cannot fail");
    }
}

/// Encodes a list of names for `_tide_tables` (NUL-separated; names cannot contain NUL).
pub(crate) fn join_names(names: &[String]) -> String {
    names.join("\0")
}

pub(crate) fn split_names(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('\0').map(String::from).collect()
    }
}

/// Loads every tracked table.
pub(crate) fn tracked_tables(conn: &Connection) -> Result<Vec<TableInfo>> {
    load_tables(conn, None)
}

/// Loads tracked table `tid` as it is recorded now.
pub(crate) fn tracked_table(conn: &Connection, tid: i64) -> Result<Option<TableInfo>> {
    Ok(load_tables(conn, Some(tid))?.pop())
}

fn load_tables(conn: &Connection, only: Option<i64>) -> Result<Vec<TableInfo>> {
    let mut stmt = conn.prepare(
        "SELECT tid, name, key_columns, columns FROM _tide_tables
         WHERE tracked=1 AND stopped IS NULL AND (?1 IS NULL OR tid=?1) ORDER BY tid",
    )?;
    let rows = stmt
        .query_map([only], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for (tid, name, keys, cols) in rows {
        let key_columns = split_names(&keys);
        let columns = split_names(&cols);
        let live: std::collections::HashMap<String, Column> = read_columns(conn, &name)?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let ty = |c: &String| untyped(live.get(c).map_or("", |c| c.decl.as_str()));
        let former = former_names(conn, tid, &columns)?;
        let defaults = columns
            .iter()
            .map(|c| constant_default(conn, live.get(c).and_then(|c| c.default.as_deref())))
            .collect::<Result<Vec<_>>>()?;
        out.push(TableInfo {
            tid,
            key_untyped: key_columns.iter().map(ty).collect(),
            untyped: columns.iter().map(ty).collect(),
            name,
            key_columns,
            columns,
            former,
            defaults,
            dropped: dropped_names(conn, tid)?,
        });
    }
    Ok(out)
}

/// The value of a column's declared `default` when it is a constant (a number, a string,
/// a blob literal, NULL, TRUE or FALSE), else NULL: a default that SQLite computes on
/// each insert (a time, an expression) would give each replica another value.
fn constant_default(conn: &Connection, default: Option<&str>) -> Result<Value> {
    let Some(mut text) = default.map(|d| d.trim().to_string()) else {
        return Ok(Value::Null);
    };
    while text.starts_with('(') && text.ends_with(')') {
        text = text[1..text.len() - 1].trim().to_string();
    }
    let bare = text.trim_start_matches(['+', '-']);
    let literal = (text.starts_with('\'') && text.ends_with('\'') && text.len() >= 2)
        || ((text.starts_with("X'") || text.starts_with("x'")) && text.ends_with('\''))
        || bare.parse::<f64>().is_ok()
        || ["NULL", "TRUE", "FALSE"]
            .iter()
            .any(|k| text.eq_ignore_ascii_case(k));
    if !literal {
        return Ok(Value::Null);
    }
    Ok(conn.query_row(&format!("SELECT {text}"), [], |r| r.get(0))?)
}

/// The former names of table `tid`'s renamed columns, each with the position of the
/// column it names now (a name whose column is gone maps to nothing).
fn former_names(conn: &Connection, tid: i64, columns: &[String]) -> Result<Vec<(String, usize)>> {
    let mut stmt = conn.prepare_cached("SELECT old, new FROM _tide_renamed WHERE tid=?1")?;
    let pairs = stmt
        .query_map([tid], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(pairs
        .into_iter()
        .filter_map(|(old, new)| Some((old, columns.iter().position(|c| *c == new)?)))
        .collect())
}

/// The names of table `tid`'s dropped columns.
fn dropped_names(conn: &Connection, tid: i64) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached("SELECT name FROM _tide_dropped WHERE tid=?1")?
        .query_map([tid], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_rules() {
        assert!(untyped(""));
        assert!(untyped("BLOB"));
        assert!(untyped("any"));
        assert!(!untyped("INTEGER"));
        assert!(!untyped("VARCHAR(10)"));
        assert!(!untyped("DOUBLE PRECISION"));
    }
}
