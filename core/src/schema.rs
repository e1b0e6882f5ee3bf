//! tide's metadata tables (numbered migrations) and table tracking (capture triggers).
//!
//! Capture is deliberately small (DESIGN.md §7: bulk inserts at most 1.5x plain SQLite):
//! an AFTER trigger appends the row's key, the kind of write and, for updates, a bitmask of
//! changed columns to an index-free log table. Values are read later, when sealing.
//! Trigger bodies use only SQL that SQLite 3.40 understands, because Debian's `sqlite3`
//! shell and Python's `sqlite3` module (3.40 here) must be captured too.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::rowmeta::CellValues;

/// Numbered migrations; `_tide_meta.migration` records how many ran. Append only.
/// The metadata layout this build writes: the number of migrations.
pub(crate) const LAYOUT: u64 = MIGRATIONS.len() as u64;

const MIGRATIONS: &[&str] = &[
    // 1: the initial layout.
    "CREATE TABLE _tide_meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
     CREATE TABLE _tide_origins(
        idx INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        sign_key BLOB,
        box_key BLOB,
        name TEXT NOT NULL DEFAULT '',
        stored INTEGER NOT NULL DEFAULT 0,
        applied INTEGER NOT NULL DEFAULT 0,
        peer INTEGER NOT NULL DEFAULT 0);
     CREATE TABLE _tide_tables(
        tid INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_columns TEXT NOT NULL,
        columns TEXT NOT NULL,
        tracked INTEGER NOT NULL);
     CREATE TABLE _tide_log(
        origin INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        hlc INTEGER NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL,
        applied INTEGER NOT NULL,
        PRIMARY KEY(origin, seq)) WITHOUT ROWID;
     CREATE TABLE _tide_quarantine(
        qid INTEGER PRIMARY KEY,
        origin BLOB NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        UNIQUE(hash, reason));
     CREATE TABLE _tide_rows(tid INTEGER NOT NULL, key BLOB NOT NULL, meta BLOB NOT NULL,
        PRIMARY KEY(tid, key)) WITHOUT ROWID;
     CREATE TABLE _tide_values(tid INTEGER NOT NULL, key BLOB NOT NULL, col INTEGER NOT NULL,
        origin INTEGER NOT NULL, seq INTEGER NOT NULL, value,
        PRIMARY KEY(tid, key, col, origin, seq)) WITHOUT ROWID;
     CREATE TABLE _tide_conflicts(id BLOB PRIMARY KEY, tid INTEGER NOT NULL, key BLOB NOT NULL,
        col INTEGER NOT NULL, kind TEXT NOT NULL, UNIQUE(tid, key, col)) WITHOUT ROWID;
     CREATE TABLE _tide_held(tid INTEGER NOT NULL, key BLOB NOT NULL, reason TEXT NOT NULL,
        blocker BLOB, PRIMARY KEY(tid, key)) WITHOUT ROWID;",
    // 2: what each peer said it holds (acknowledgements from bundles and sync messages).
    "CREATE TABLE _tide_acks(peer BLOB NOT NULL, origin BLOB NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY(peer, origin)) WITHOUT ROWID;",
    // 3: how a body is kept in the log: 0 as signed, 1 a zstd frame of it (`log::pack`).
    "ALTER TABLE _tide_log ADD COLUMN packing INTEGER NOT NULL DEFAULT 0;",
    // 4: change format 3. `_tide_log.body` and `_tide_quarantine.body` hold a change's
    // signed head; its chunks live here once, by BLAKE3 hash, packed like bodies were.
    "CREATE TABLE _tide_chunks(hash BLOB PRIMARY KEY, data BLOB NOT NULL,
        packing INTEGER NOT NULL);",
    // 5: which import last wrote each conflict record, so an import can say how many it
    // opened without reading every record before and after (`Merger::set_conflict`); and
    // the changes waiting to apply in causal (HLC) order, read a page at a time
    // (`log::apply_ready`) instead of all at once.
    "ALTER TABLE _tide_conflicts ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX _tide_log_pending ON _tide_log(applied, hlc, origin, seq);",
    // 6: a row's kept values live with its metadata, in `_tide_rows.vals` (the layout is
    // in `rowmeta.rs`), written by the statement that writes `meta`: one write for a
    // conflicting row instead of one per value. `_tide_values` now holds only the values
    // too large for that blob. `pack_kept_values` moves the others. Conflict records are
    // keyed by their cell: their ids are random, so a primary key on the id put every
    // record in a random place of a second B-tree, and nothing looks one up by id (ids
    // are matched by prefix, after listing). The table is rebuilt under its own name, not
    // renamed into place: a rename makes SQLite re-check every view and trigger of the
    // app's schema, and one left pointing at a dropped table would fail it.
    "ALTER TABLE _tide_rows ADD COLUMN vals BLOB;
     CREATE TEMP TABLE _tide_conflicts_5 AS SELECT tid, key, col, id, kind, epoch FROM _tide_conflicts;
     DROP TABLE _tide_conflicts;
     CREATE TABLE _tide_conflicts(tid INTEGER NOT NULL, key BLOB NOT NULL, col INTEGER NOT NULL,
        id BLOB NOT NULL, kind TEXT NOT NULL, epoch INTEGER NOT NULL,
        PRIMARY KEY(tid, key, col)) WITHOUT ROWID;
     INSERT INTO _tide_conflicts(tid, key, col, id, kind, epoch)
        SELECT tid, key, col, id, kind, epoch FROM temp._tide_conflicts_5;
     DROP TABLE temp._tide_conflicts_5;",
];

/// The migration that packs kept values into `_tide_rows.vals`.
const PACKED_VALUES: usize = 6;

/// The first migration after which the log holds change format 3.
const FORMAT_3: usize = 4;

/// Creates or upgrades tide's metadata tables. Idempotent.
pub(crate) fn migrate(conn: &Connection) -> Result<()> {
    let exists: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='_tide_meta'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    let done: usize = if exists {
        conn.query_row("SELECT v FROM _tide_meta WHERE k='migration'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0) as usize
    } else {
        0
    };
    if exists && done < FORMAT_3 {
        let changes: i64 = conn.query_row(
            "SELECT (SELECT count(*) FROM _tide_log) + (SELECT count(*) FROM _tide_quarantine)",
            [],
            |r| r.get(0),
        )?;
        if changes > 0 {
            return Err(Error::OldLogFormat);
        }
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        conn.execute_batch(sql)?;
        if i + 1 == PACKED_VALUES {
            pack_kept_values(conn)?;
        }
        conn.execute(
            "INSERT INTO _tide_meta(k, v) VALUES('migration', ?1) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            params![(i + 1) as i64],
        )?;
    }
    Ok(())
}

/// Migration 6's data step: each row's values from `_tide_values` (one SQL row per
/// value) into its `_tide_rows.vals`, a row at a time in key order; values too large for
/// the blob go back to `_tide_values`. Values of a row with no metadata name no head, so
/// they are dropped.
fn pack_kept_values(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE _tide_values_5 AS SELECT * FROM _tide_values;
         DELETE FROM _tide_values;",
    )?;
    let mut read = conn.prepare(
        "SELECT tid, key, col, origin, seq, value FROM temp._tide_values_5 ORDER BY tid, key",
    )?;
    let flush = |row: &mut Option<(i64, Vec<u8>)>, kept: &mut CellValues| -> Result<()> {
        if let Some((tid, key)) = row.take() {
            let has_meta: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM _tide_rows WHERE tid=?1 AND key=?2)",
                params![tid, key],
                |r| r.get(0),
            )?;
            if has_meta {
                let vals = crate::merge::write_kept(conn, tid, &key, kept, &[])?;
                conn.execute(
                    "UPDATE _tide_rows SET vals=?3 WHERE tid=?1 AND key=?2",
                    params![tid, key, vals],
                )?;
            }
        }
        kept.clear();
        Ok(())
    };
    let (mut row, mut kept): (Option<(i64, Vec<u8>)>, CellValues) = (None, Vec::new());
    let mut rows = read.query([])?;
    while let Some(r) = rows.next()? {
        let (tid, key): (i64, Vec<u8>) = (r.get(0)?, r.get(1)?);
        if row
            .as_ref()
            .is_none_or(|(t, k)| (*t, &k[..]) != (tid, &key[..]))
        {
            flush(&mut row, &mut kept)?;
            row = Some((tid, key));
        }
        let at = (
            r.get::<_, i64>(2)? as usize,
            r.get(3)?,
            r.get::<_, i64>(4)? as u64,
        );
        kept.push((at, r.get(5)?));
    }
    flush(&mut row, &mut kept)?;
    drop(rows);
    drop(read);
    conn.execute_batch("DROP TABLE temp._tide_values_5")?;
    Ok(())
}

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
}

impl TableInfo {
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

/// What `track` found worth saying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackReport {
    /// Warnings for a person (for example an INTEGER rowid-alias key).
    pub warnings: Vec<String>,
    /// False when the table was already tracked (nothing changed).
    pub newly_tracked: bool,
}

pub(crate) struct Column {
    name: String,
    decl: String,
    pk: i64,
}

fn untyped(decl: &str) -> bool {
    // SQLite's affinity rules (§3.1 of its datatype page): no INT/CHAR/CLOB/TEXT/REAL/FLOA/DOUB
    // and either empty or containing BLOB means no affinity. "ANY" gets no affinity in STRICT
    // tables; treating it as untyped only makes change detection more careful.
    let d = decl.to_ascii_uppercase();
    let typed = ["INT", "CHAR", "CLOB", "TEXT", "REAL", "FLOA", "DOUB"]
        .iter()
        .any(|t| d.contains(t));
    !typed && (d.is_empty() || d.contains("BLOB") || d.contains("ANY"))
}

fn read_columns(conn: &Connection, table: &str) -> Result<Vec<Column>> {
    let mut stmt = conn.prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1)")?;
    let cols = stmt
        .query_map([table], |r| {
            Ok((
                Column {
                    name: r.get(0)?,
                    decl: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    pk: r.get(2)?,
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
        return Err(Error::Untrackable(
            table.into(),
            "tide's own tables are never tracked".into(),
        ));
    }
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name=?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(sql) = sql else {
        return Err(Error::NoSuchTable(table.into()));
    };
    if sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
        return Err(Error::Autoincrement(table.into()));
    }
    let cols = read_columns(conn, table)?;
    let mut keys: Vec<&Column> = cols.iter().filter(|c| c.pk > 0).collect();
    if keys.is_empty() {
        return Err(Error::NoPrimaryKey(table.into()));
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
    for index in unique_indexes(conn, table)? {
        if index.primary
            && index
                .columns
                .iter()
                .any(|(_, coll)| !coll.eq_ignore_ascii_case("BINARY"))
        {
            return Err(Error::Untrackable(
                table.into(),
                "its PRIMARY KEY compares with a collation other than BINARY, so keys that differ byte-wise \
                 could name one row; declare the key columns COLLATE BINARY"
                    .into(),
            ));
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
        return Err(Error::Untrackable(
            table.into(),
            format!(
                "{nulls} row(s) have a NULL primary key; give them a key (or delete them) first"
            ),
        ));
    }
    for c in &cols {
        if c.name.contains('\0') {
            return Err(Error::Untrackable(
                table.into(),
                "a column name contains NUL".into(),
            ));
        }
    }
    Ok((cols, warnings))
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
        },
        warnings,
    ))
}

/// `NEW.c` differs from `OLD.c` bit for bit (or may: over-reporting is safe, missing is not).
fn differs(col: &str, untyped: bool) -> String {
    differs_between("NEW", "OLD", col, untyped)
}

/// `a.c` differs from `b.c` bit for bit (or may).
fn differs_between(a: &str, b: &str, col: &str, untyped: bool) -> String {
    let c = q(col);
    // COLLATE BINARY: a NOCASE column would otherwise call 'a' and 'A' equal.
    let base = format!("{a}.{c} IS NOT {b}.{c} COLLATE BINARY");
    if untyped {
        format!(
            "({base} OR typeof({a}.{c}) IS NOT typeof({b}.{c}) OR (typeof({a}.{c}) = 'real' AND {a}.{c} = 0))"
        )
    } else {
        format!("({base})")
    }
}

/// Installs the capture log table and the four triggers.
pub(crate) fn install_capture(conn: &Connection, t: &TableInfo) -> Result<()> {
    let cap = t.cap_table();
    let mut cols: Vec<String> = (0..t.key_columns.len()).map(|i| format!("k{i}")).collect();
    cols.extend((0..t.columns.len()).map(|i| format!("v{i}")));
    // No types on purpose: values keep the storage class the user table gave them.
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {cap}(op INTEGER NOT NULL, mask INTEGER, {})",
        cols.join(", ")
    ))?;
    create_triggers(conn, t)
}

/// The trigger DDL; also used to re-create triggers after tide's own apply.
pub(crate) fn create_triggers(conn: &Connection, t: &TableInfo) -> Result<()> {
    let cap = t.cap_table();
    let tname = q(&t.name);
    let tid = t.tid;
    let kcols = (0..t.key_columns.len())
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = |prefix: &str| {
        t.key_columns
            .iter()
            .map(|k| format!("{prefix}.{}", q(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key_same = t
        .key_columns
        .iter()
        .zip(&t.key_untyped)
        .map(|(k, u)| format!("NOT {}", differs(k, *u)))
        .collect::<Vec<_>>()
        .join(" AND ");
    // Bit i marks column i changed; columns past 61 share bit 62 (sealing then rereads them all).
    // SQL cannot tell 0.0 from -0.0, so an untyped column (one that keeps any value as
    // given) holding a REAL zero before and after may or may not have changed: its bit
    // stays clear, and the update's capture keeps the old zero in the column's value slot
    // instead; sealing compares it bit for bit with the row (see `seal::each_pending`).
    let ambiguous = |i: usize, untyped: bool| untyped && i < 62;
    let mask = if t.columns.is_empty() {
        "0".to_string()
    } else {
        t.columns
            .iter()
            .zip(&t.untyped)
            .enumerate()
            .map(|(i, (c, u))| {
                let changed = if ambiguous(i, *u) {
                    format!(
                        "(NEW.{c} IS NOT OLD.{c} COLLATE BINARY OR typeof(NEW.{c}) IS NOT typeof(OLD.{c}))",
                        c = q(c)
                    )
                } else {
                    differs(c, *u)
                };
                format!("({changed} << {})", i.min(62))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let (zero_cols, zero_vals): (String, String) = t
        .columns
        .iter()
        .zip(&t.untyped)
        .enumerate()
        .filter(|(i, (_, u))| ambiguous(*i, **u))
        .map(|(i, (c, _))| {
            (
                format!(", v{i}"),
                format!(
                    ", CASE WHEN typeof(OLD.{c}) = 'real' AND OLD.{c} = 0 AND typeof(NEW.{c}) = 'real' AND NEW.{c} = 0 THEN OLD.{c} END",
                    c = q(c)
                ),
            )
        })
        .unzip();
    let (new_keys, old_keys) = (keys("NEW"), keys("OLD"));
    // A delete keeps the row's last values: should a concurrent update win over the
    // delete, every replica must be able to bring the whole row back.
    let (old_cols, vcols) = if t.columns.is_empty() {
        (String::new(), String::new())
    } else {
        (
            format!(
                ", {}",
                t.columns
                    .iter()
                    .map(|c| format!("OLD.{}", q(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                ", {}",
                (0..t.columns.len())
                    .map(|i| format!("v{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    // A row must have a key to be named across replicas: refuse NULL keys at write time
    // (only where the schema allows them).
    let nullable = nullable_keys(conn, t)?;
    // Folded into the capture insert itself (one statement per row, not two).
    let msg = format!(
        "tide: a primary key column of {} is NULL; tracked rows need a key",
        t.name
    )
    .replace('\'', "''");
    let checked_new_keys = t
        .key_columns
        .iter()
        .map(|k| {
            if nullable.contains(k) {
                format!(
                    "CASE WHEN NEW.{k} IS NULL THEN RAISE(ABORT, '{msg}') ELSE NEW.{k} END",
                    k = q(k)
                )
            } else {
                format!("NEW.{}", q(k))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute_batch(&format!(
        "CREATE TRIGGER _tide_ins_{tid} AFTER INSERT ON {tname} BEGIN
           INSERT INTO {cap}(op, mask, {kcols}) VALUES (1, NULL, {checked_new_keys}); END;
         CREATE TRIGGER _tide_upd_{tid} AFTER UPDATE ON {tname} WHEN {key_same} BEGIN
           INSERT INTO {cap}(op, mask, {kcols}{zero_cols}) VALUES (2, {mask}, {new_keys}{zero_vals}); END;
         CREATE TRIGGER _tide_rekey_{tid} AFTER UPDATE ON {tname} WHEN NOT ({key_same}) BEGIN
           INSERT INTO {cap}(op, mask, {kcols}{vcols}) VALUES (3, NULL, {old_keys}{old_cols});
           INSERT INTO {cap}(op, mask, {kcols}) VALUES (1, NULL, {checked_new_keys}); END;
         CREATE TRIGGER _tide_del_{tid} AFTER DELETE ON {tname} BEGIN
           INSERT INTO {cap}(op, mask, {kcols}{vcols}) VALUES (3, NULL, {old_keys}{old_cols}); END;"
    ))?;
    // INSERT OR REPLACE (or a column declared UNIQUE ON CONFLICT REPLACE) silently deletes
    // the rows it collides with in a UNIQUE index, and fires no delete trigger unless the
    // writer turned recursive_triggers on. Before each write, note every row it may
    // delete, with its values; sealing then checks which ones are really gone.
    let all_cols: Vec<String> = t.columns.iter().map(|c| format!("u.{}", q(c))).collect();
    let all_cols = if all_cols.is_empty() {
        String::new()
    } else {
        format!(", {}", all_cols.join(", "))
    };
    let ukeys = t
        .key_columns
        .iter()
        .map(|k| format!("u.{}", q(k)))
        .collect::<Vec<_>>()
        .join(", ");
    // The same row, bit for bit: SQLite's own equality calls keys 7 and 7.0 one key.
    let not_this = |prefix: &str| {
        t.key_columns
            .iter()
            .zip(&t.key_untyped)
            .map(|(k, u)| format!("NOT {}", differs_between("u", prefix, k, *u)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    // The primary key only matters where an untyped key column lets a REPLACE remove a
    // row whose key is equal to SQLite but not to tide (7 and 7.0, 0.0 and -0.0).
    let any_untyped_key = t.key_untyped.iter().any(|u| *u);
    for (i, index) in unique_indexes(conn, &t.name)?
        .iter()
        .enumerate()
        .filter(|(_, ix)| !ix.primary || any_untyped_key)
    {
        let matches = index
            .columns
            .iter()
            .map(|(c, coll)| format!("u.{c} = NEW.{c} COLLATE {coll}", c = q(c), coll = q(coll)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let of = index
            .columns
            .iter()
            .map(|(c, _)| q(c))
            .collect::<Vec<_>>()
            .join(", ");
        conn.execute_batch(&format!(
            "CREATE TRIGGER _tide_uins_{tid}_{i} BEFORE INSERT ON {tname} BEGIN
               INSERT INTO {cap}(op, mask, {kcols}{vcols}) SELECT 3, NULL, {ukeys}{all_cols} FROM {tname} u
                 WHERE {matches} AND NOT ({new}); END;
             CREATE TRIGGER _tide_uupd_{tid}_{i} BEFORE UPDATE OF {of} ON {tname} BEGIN
               INSERT INTO {cap}(op, mask, {kcols}{vcols}) SELECT 3, NULL, {ukeys}{all_cols} FROM {tname} u
                 WHERE {matches} AND NOT ({old}) AND NOT ({new}); END;",
            new = not_this("NEW"),
            old = not_this("OLD"),
        ))?;
    }
    Ok(())
}

/// Key columns SQLite would let hold NULL: not declared NOT NULL, not an INTEGER
/// PRIMARY KEY (a rowid alias) and not in a WITHOUT ROWID table.
fn nullable_keys(conn: &Connection, t: &TableInfo) -> Result<Vec<String>> {
    let without_rowid = is_without_rowid(conn, &t.name)?;
    if without_rowid {
        return Ok(Vec::new());
    }
    let cols = read_columns(conn, &t.name)?;
    let notnull: Vec<(String, bool)> = conn
        .prepare("SELECT name, \"notnull\" FROM pragma_table_xinfo(?1)")?
        .query_map([&t.name], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?
        .collect::<rusqlite::Result<_>>()?;
    let rowid_alias = t.key_columns.len() == 1
        && cols
            .iter()
            .any(|c| c.name == t.key_columns[0] && c.decl.eq_ignore_ascii_case("INTEGER"));
    if rowid_alias {
        return Ok(Vec::new());
    }
    Ok(t.key_columns
        .iter()
        .filter(|k| !notnull.iter().any(|(n, nn)| n == *k && *nn))
        .cloned()
        .collect())
}

fn is_without_rowid(conn: &Connection, table: &str) -> Result<bool> {
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
            return Err(Error::Untrackable(
                table.into(),
                format!(
                    "UNIQUE index {name:?} is partial (has a WHERE clause); tide cannot yet merge concurrent rows under it"
                ),
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
                return Err(Error::Untrackable(
                    table.into(),
                    format!(
                        "UNIQUE index {name:?} is on an expression; tide cannot yet merge concurrent rows under it"
                    ),
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
    conn: &'c Connection,
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

/// Drops every capture trigger of table number `tid`, the REPLACE-victim ones included
/// (the capture log table stays).
pub(crate) fn drop_triggers(conn: &Connection, tid: i64) -> Result<()> {
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_tide\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let suffix = format!("_{tid}");
    let infix = format!("_{tid}_");
    for name in names {
        let ours = ["_tide_ins", "_tide_upd", "_tide_rekey", "_tide_del"]
            .iter()
            .any(|p| name == format!("{p}{suffix}"))
            || ["_tide_uins", "_tide_uupd"]
                .iter()
                .any(|p| name.starts_with(&format!("{p}{infix}")));
        if ours {
            conn.execute_batch(&format!("DROP TRIGGER {}", q(&name)))?;
        }
    }
    Ok(())
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
    let mut stmt = conn.prepare(
        "SELECT tid, name, key_columns, columns FROM _tide_tables WHERE tracked=1 ORDER BY tid",
    )?;
    let rows = stmt
        .query_map([], |r| {
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
        let decls: std::collections::HashMap<String, String> = read_columns(conn, &name)?
            .into_iter()
            .map(|c| (c.name, c.decl))
            .collect();
        let ty = |c: &String| untyped(decls.get(c).map(String::as_str).unwrap_or(""));
        out.push(TableInfo {
            tid,
            key_untyped: key_columns.iter().map(ty).collect(),
            untyped: columns.iter().map(ty).collect(),
            name,
            key_columns,
            columns,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[test]
    fn affinity_rules() {
        assert!(untyped(""));
        assert!(untyped("BLOB"));
        assert!(untyped("any"));
        assert!(!untyped("INTEGER"));
        assert!(!untyped("VARCHAR(10)"));
        assert!(!untyped("DOUBLE PRECISION"));
    }

    /// A database migrated to 3 by an earlier build: with changes in its log it is refused
    /// and left as it was; with none it moves on to format 3.
    #[test]
    fn a_log_of_change_format_2_is_refused_and_an_empty_one_migrates() {
        let old = |with_change: bool| {
            let c = at_migration(3);
            if with_change {
                c.execute(
                    "INSERT INTO _tide_log VALUES(1, 1, x'00', 1, x'02', x'00', 1, 0)",
                    [],
                )
                .unwrap();
            }
            c
        };
        let c = old(true);
        assert!(matches!(migrate(&c), Err(Error::OldLogFormat)));
        let tables: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name='_tide_chunks'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "nothing was changed");
        let c = old(false);
        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
    }

    /// A database at migration 5 keeps a row per value in `_tide_values` and conflict
    /// records under their id: migration 6 moves both, losing nothing.
    #[test]
    fn migration_6_packs_each_rows_kept_values_and_keeps_its_conflict_records() {
        let c = at_migration(5);
        for (tid, key) in [(1, b"a"), (1, b"b"), (2, b"a")] {
            c.execute(
                "INSERT INTO _tide_rows(tid, key, meta) VALUES(?1, ?2, x'00')",
                params![tid, &key[..]],
            )
            .unwrap();
        }
        let values = [
            (1, &b"a"[..], 2, 3, 9, Value::text("x")),
            (1, b"a", 1, 2, 4, Value::Integer(-5)),
            (1, b"a", 1, 3, 1, Value::Null),
            (2, b"a", 1, 1, 1, Value::Blob(vec![1, 2])),
            // Too large for the blob: stays in `_tide_values`.
            (
                2,
                b"a",
                1,
                2,
                1,
                Value::Blob(vec![9; crate::rowmeta::KEPT_INLINE_MAX]),
            ),
            // No metadata: names no head.
            (3, b"z", 1, 1, 1, Value::Integer(1)),
        ];
        for (tid, key, col, origin, seq, v) in &values {
            c.execute(
                "INSERT INTO _tide_values VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                params![tid, key, col, origin, seq, v],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO _tide_conflicts(id, tid, key, col, kind, epoch) VALUES(x'0102', 1, x'61', 2, 'update', 7)",
            [],
        )
        .unwrap();

        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
        let vals = |tid: i64, key: &[u8]| -> Option<CellValues> {
            let blob: Option<Vec<u8>> = c
                .query_row(
                    "SELECT vals FROM _tide_rows WHERE tid=?1 AND key=?2",
                    params![tid, key],
                    |r| r.get(0),
                )
                .unwrap();
            blob.map(|b| crate::merge::read_kept(&c, tid, key, &b).unwrap().0)
        };
        assert_eq!(
            vals(1, b"a"),
            Some(vec![
                ((1, 2, 4), Value::Integer(-5)),
                ((1, 3, 1), Value::Null),
                ((2, 3, 9), Value::text("x")),
            ])
        );
        assert_eq!(vals(1, b"b"), None, "a row with no kept values stays NULL");
        assert_eq!(
            vals(2, b"a"),
            Some(vec![
                ((1, 1, 1), Value::Blob(vec![1, 2])),
                (
                    (1, 2, 1),
                    Value::Blob(vec![9; crate::rowmeta::KEPT_INLINE_MAX])
                ),
            ])
        );
        let left: Vec<(i64, i64)> = c
            .prepare("SELECT tid, origin FROM _tide_values")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            left,
            vec![(2, 2)],
            "only the value too large for the blob stays"
        );
        let conflict: (Vec<u8>, i64, Vec<u8>, i64, String, i64) = c
            .query_row(
                "SELECT id, tid, key, col, kind, epoch FROM _tide_conflicts",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!(
            conflict,
            (vec![1, 2], 1, b"a".to_vec(), 2, "update".into(), 7)
        );
    }

    /// SQLite keeps views and triggers whose table was dropped; migrations must not
    /// trip over the app's (a rename re-checks every one of them).
    #[test]
    fn migration_6_runs_beside_a_view_and_a_trigger_whose_table_is_gone() {
        let c = at_migration(5);
        c.execute_batch(
            "CREATE TABLE app(x); CREATE TABLE log(y);
             CREATE VIEW v AS SELECT x FROM gone;
             CREATE TRIGGER tr AFTER INSERT ON app BEGIN INSERT INTO log VALUES(NEW.x); END;
             DROP TABLE log;",
        )
        .unwrap();
        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
    }

    /// A database as an earlier build left it: the first `n` migrations run.
    fn at_migration(n: usize) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..n] {
            c.execute_batch(sql).unwrap();
        }
        c.execute("INSERT INTO _tide_meta VALUES('migration', ?1)", [n as i64])
            .unwrap();
        c
    }

    fn migrations_done(c: &Connection) -> usize {
        c.query_row("SELECT v FROM _tide_meta WHERE k='migration'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as usize
    }

    #[test]
    fn migrations_are_idempotent() {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        migrate(&c).unwrap();
        assert_eq!(migrations_done(&c), MIGRATIONS.len());
    }
}
