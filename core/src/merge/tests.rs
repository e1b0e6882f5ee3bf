//! Statement bounds and the conflict id definition.

use super::conflict_records::conflict_id;
use super::*;
use crate::format::ids::{ChangeId, ReplicaId};
use crate::format::value::Value;
use crate::store::conflict_kind::ConflictKind;
use crate::store::rowmeta::Origins;
use crate::store::tables::TableInfo;
use rusqlite::Connection;

/// Updates of many different column sets (a statement each) once kept every
/// statement with the merger for the whole import: memory grew with the number of
/// sets, up to 2^ncols.
#[test]
pub(crate) fn update_statements_for_many_column_sets_stay_bounded() {
    let conn = Connection::open_in_memory().unwrap();
    crate::store::migrations::migrate(&conn).unwrap();
    let columns: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, {}); INSERT INTO t(id) VALUES(1);",
        columns.join(", ")
    ))
    .unwrap();
    let t = TableInfo {
        former: Vec::new(),
        defaults: Vec::new(),
        dropped: Vec::new(),
        tid: 1,
        name: "t".into(),
        key_columns: vec!["id".into()],
        untyped: vec![true; columns.len()],
        columns,
        key_untyped: vec![false],
    };
    let merger = Merger::new(&conn, Origins::default());
    let key = [Value::Integer(1)];
    let values: Vec<Value> = (0..12).map(Value::Integer).collect();
    for mask in 1..4096u32 {
        let changed: Vec<usize> = (0..12).filter(|i| mask & (1 << i) != 0).collect();
        merger.update_row(&t, &key, &changed, &values).unwrap();
    }
    let last: i64 = conn
        .query_row("SELECT c11 FROM t WHERE id=1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(last, 11, "the updates ran");
    assert!(merger.sql.borrow().len() <= SQL_TEXTS);
    assert!(merger.hot.borrow().len() <= 4);
}

/// Replicas of different builds must name a conflict alike: the id is BLAKE3 in
/// derive-key mode over each part's length and bytes, then the sorted candidates,
/// however the input is fed to the hasher.
#[test]
pub(crate) fn a_conflict_id_is_the_documented_hash_whatever_the_candidate_order() {
    let a = ChangeId {
        origin: ReplicaId([7; 16]),
        seq: 3,
    };
    let b = ChangeId {
        origin: ReplicaId([2; 16]),
        seq: 300,
    };
    let mut h = blake3::Hasher::new_derive_key("tide 2026-11 conflict id v1");
    for part in [&b"notes"[..], b"\x01\x02", b"title", b"update"] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for c in [b, a] {
        h.update(&c.origin.0);
        h.update(&c.seq.to_le_bytes());
    }
    let hash = h.finalize();
    let want = &hash.as_bytes()[..16];
    assert_eq!(
        conflict_id("notes", b"\x01\x02", "title", ConflictKind::Update, &[a, b]),
        want
    );
    assert_eq!(
        conflict_id("notes", b"\x01\x02", "title", ConflictKind::Update, &[b, a]),
        want
    );
    assert_ne!(
        conflict_id("notes", b"\x01\x02", "title", ConflictKind::Insert, &[a, b]),
        want
    );
}
