//! Capture triggers: how every write to a tracked table is noted, from any connection.
//!
//! Capture is deliberately small (DESIGN.md §7: bulk inserts at most 1.5x plain SQLite):
//! an AFTER trigger appends the row's key, the kind of write and, for updates, a bitmask of
//! changed columns to an index-free log table. Values are read later, when sealing.
//! Trigger bodies use only SQL that SQLite 3.40 understands, because Debian's `sqlite3`
//! shell and Python's `sqlite3` module (3.40 here) must be captured too.

use crate::error::Result;
use crate::store::states::CaptureOp;
use crate::store::tables::{TableInfo, is_without_rowid, q, read_columns, unique_indexes};
use rusqlite::Connection;

/// `NEW.c` differs from `OLD.c` bit for bit (or may: over-reporting is safe, missing is not).
pub(crate) fn differs(col: &str, untyped: bool) -> String {
    differs_between("NEW", "OLD", col, untyped)
}

/// `a.c` differs from `b.c` bit for bit (or may).
pub(crate) fn differs_between(a: &str, b: &str, col: &str, untyped: bool) -> String {
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
    let p = Pieces::of(conn, t)?;
    conn.execute_batch(&format!(
        "{}\n{}\n{}\n{}",
        insert_trigger(&p),
        update_trigger(&p, t),
        rekey_trigger(&p),
        delete_trigger(&p)
    ))?;
    replace_victim_triggers(conn, t, &p)
}

/// The SQL the capture triggers of one table share.
struct Pieces {
    /// The capture log table.
    cap: String,
    /// The tracked table, quoted.
    tname: String,
    tid: i64,
    /// The capture log's key columns: `k0, k1, …`.
    kcols: String,
    /// The key of the row written: `NEW.a, NEW.b, …`.
    new_keys: String,
    /// The key of the row as it was: `OLD.a, OLD.b, …`.
    old_keys: String,
    /// `new_keys`, refusing a NULL in a key column that allows one.
    checked_new_keys: String,
    /// The capture log's value columns, after a comma (empty for a key-only table).
    vcols: String,
    /// The row's values as they were, after a comma (empty for a key-only table).
    old_cols: String,
    /// An update keeps the row's key, bit for bit.
    key_same: String,
}

impl Pieces {
    fn of(conn: &Connection, t: &TableInfo) -> Result<Pieces> {
        let keys = |prefix: &str| {
            t.key_columns
                .iter()
                .map(|k| format!("{prefix}.{}", q(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
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
        Ok(Pieces {
            cap: t.cap_table(),
            tname: q(&t.name),
            tid: t.tid,
            kcols: (0..t.key_columns.len())
                .map(|i| format!("k{i}"))
                .collect::<Vec<_>>()
                .join(", "),
            new_keys: keys("NEW"),
            old_keys: keys("OLD"),
            checked_new_keys: checked_new_keys(conn, t)?,
            vcols,
            old_cols,
            key_same: t
                .key_columns
                .iter()
                .zip(&t.key_untyped)
                .map(|(k, u)| format!("NOT {}", differs(k, *u)))
                .collect::<Vec<_>>()
                .join(" AND "),
        })
    }
}

/// The new row's key for the capture log. A row must have a key to be named across
/// replicas: NULL keys are refused at write time (only where the schema allows them),
/// folded into the capture insert itself (one statement per row, not two).
fn checked_new_keys(conn: &Connection, t: &TableInfo) -> Result<String> {
    let nullable = nullable_keys(conn, t)?;
    let msg = format!(
        "tide: a primary key column of {} is NULL; tracked rows need a key",
        t.name
    )
    .replace('\'', "''");
    Ok(t.key_columns
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
        .join(", "))
}

/// An insert: the new key.
fn insert_trigger(p: &Pieces) -> String {
    let Pieces {
        cap,
        tname,
        tid,
        kcols,
        checked_new_keys,
        ..
    } = p;
    format!(
        "CREATE TRIGGER _tide_ins_{tid} AFTER INSERT ON {tname} BEGIN
           INSERT INTO {cap}(op, mask, {kcols}) VALUES ({insert}, NULL, {checked_new_keys}); END;",
        insert = CaptureOp::Insert.stored(),
    )
}

/// An update that keeps the key: the key and which columns changed.
fn update_trigger(p: &Pieces, t: &TableInfo) -> String {
    let Pieces {
        cap,
        tname,
        tid,
        kcols,
        new_keys,
        key_same,
        ..
    } = p;
    let mask = changed_mask(t);
    let (zero_cols, zero_vals) = zero_slots(t);
    format!(
        "CREATE TRIGGER _tide_upd_{tid} AFTER UPDATE ON {tname} WHEN {key_same} BEGIN
           INSERT INTO {cap}(op, mask, {kcols}{zero_cols}) VALUES ({update}, {mask}, {new_keys}{zero_vals}); END;",
        update = CaptureOp::Update.stored(),
    )
}

/// An update that changes the key: a delete of the old row and an insert of the new.
fn rekey_trigger(p: &Pieces) -> String {
    let Pieces {
        cap,
        tname,
        tid,
        kcols,
        old_keys,
        checked_new_keys,
        vcols,
        old_cols,
        key_same,
        ..
    } = p;
    format!(
        "CREATE TRIGGER _tide_rekey_{tid} AFTER UPDATE ON {tname} WHEN NOT ({key_same}) BEGIN
           INSERT INTO {cap}(op, mask, {kcols}{vcols}) VALUES ({delete}, NULL, {old_keys}{old_cols});
           INSERT INTO {cap}(op, mask, {kcols}) VALUES ({insert}, NULL, {checked_new_keys}); END;",
        delete = CaptureOp::Delete.stored(),
        insert = CaptureOp::Insert.stored(),
    )
}

/// A delete: the old key and the row's last values.
fn delete_trigger(p: &Pieces) -> String {
    let Pieces {
        cap,
        tname,
        tid,
        kcols,
        old_keys,
        vcols,
        old_cols,
        ..
    } = p;
    format!(
        "CREATE TRIGGER _tide_del_{tid} AFTER DELETE ON {tname} BEGIN
           INSERT INTO {cap}(op, mask, {kcols}{vcols}) VALUES ({delete}, NULL, {old_keys}{old_cols}); END;",
        delete = CaptureOp::Delete.stored(),
    )
}

/// SQL cannot tell 0.0 from -0.0, so an untyped column (one that keeps any value as
/// given) holding a REAL zero before and after may or may not have changed: its bit
/// stays clear, and the update's capture keeps the old zero in the column's value slot
/// instead; sealing compares it bit for bit with the row (see `seal::pending::each_pending`).
fn ambiguous(i: usize, untyped: bool) -> bool {
    untyped && i < 62
}

/// The update's mask: bit i marks column i changed; columns past 61 share bit 62
/// (sealing then rereads them all).
fn changed_mask(t: &TableInfo) -> String {
    if t.columns.is_empty() {
        return "0".to_string();
    }
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
}

/// The update's value slots of [`ambiguous`] columns, and what goes in them: the old
/// REAL zero when the column held one before and after.
fn zero_slots(t: &TableInfo) -> (String, String) {
    t.columns
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
        .unzip()
}

/// INSERT OR REPLACE (or a column declared UNIQUE ON CONFLICT REPLACE) silently deletes
/// the rows it collides with in a UNIQUE index, and fires no delete trigger unless the
/// writer turned recursive_triggers on. Before each write, note every row it may
/// delete, with its values; sealing then checks which ones are really gone.
fn replace_victim_triggers(conn: &Connection, t: &TableInfo, p: &Pieces) -> Result<()> {
    let Pieces {
        cap,
        tname,
        tid,
        kcols,
        vcols,
        ..
    } = p;
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
               INSERT INTO {cap}(op, mask, {kcols}{vcols}) SELECT {delete}, NULL, {ukeys}{all_cols} FROM {tname} u
                 WHERE {matches} AND NOT ({new}); END;
             CREATE TRIGGER _tide_uupd_{tid}_{i} BEFORE UPDATE OF {of} ON {tname} BEGIN
               INSERT INTO {cap}(op, mask, {kcols}{vcols}) SELECT {delete}, NULL, {ukeys}{all_cols} FROM {tname} u
                 WHERE {matches} AND NOT ({old}) AND NOT ({new}); END;",
            delete = CaptureOp::Delete.stored(),
            new = not_this("NEW"),
            old = not_this("OLD"),
        ))?;
    }
    Ok(())
}

/// Key columns SQLite would let hold NULL: not declared NOT NULL, not an INTEGER
/// PRIMARY KEY (a rowid alias) and not in a WITHOUT ROWID table.
pub(crate) fn nullable_keys(conn: &Connection, t: &TableInfo) -> Result<Vec<String>> {
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
