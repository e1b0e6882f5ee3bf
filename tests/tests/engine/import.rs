//! Importing changes: an import applies whole or not at all (an apply failing midway, a
//! tampered change or chunk, a source that swallows a refusal leave the file byte for
//! byte as it was), and changes that cannot apply yet (a table not tracked here, an
//! unknown origin) wait in quarantine, open no conflicts, and apply once retried.

use tide_core::{Error, KeyStore, Replica, VersionVector};
use tide_tests::{Cluster, NOTES, notes, query_one, series};

#[test]
fn an_apply_that_fails_midway_leaves_the_file_byte_identical() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0); INSERT INTO notes VALUES ('b', 't', 'b', 0); INSERT INTO notes VALUES ('c', 't', 'b', 0);");
    c.write(1, "INSERT INTO notes VALUES ('z', 'local', 'b', 0)");
    c.replicas[1].seal().unwrap();
    let vv = c.replicas[1].version_vector().unwrap();
    let changes = c.replicas[0].changes_for(&vv).unwrap();
    let before = std::fs::read(c.path(1)).unwrap();
    c.replicas[1].inject_apply_failure(Some(2));
    let err = c.replicas[1].import(&changes).unwrap_err();
    assert!(matches!(err, Error::Apply(_)), "{err}");
    assert_eq!(
        std::fs::read(c.path(1)).unwrap(),
        before,
        "nothing of the failed import is left"
    );
    // And the same import then succeeds.
    let report = c.replicas[1].import(&changes).unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
        4
    );
}

#[test]
fn a_tampered_change_is_rejected_before_any_write() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    let changes = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    let mut bytes = changes[0].to_bytes();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let (tampered, _) = tide_core::SignedChange::from_bytes(&bytes).unwrap();
    let before = std::fs::read(c.path(1)).unwrap();
    let err = c.replicas[1].import(&[tampered]).unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert_eq!(std::fs::read(c.path(1)).unwrap(), before);
}

/// A change sealed in many chunks travels whole; one chunk altered (by a relay that
/// holds no key) rejects the whole import, and the receiver's file stays as it was.
#[test]
fn a_change_in_many_chunks_applies_whole_and_a_tampered_chunk_rejects_it() {
    let mut c = notes(2);
    c.replicas[0].set_chunk_target(1024).unwrap();
    c.write(
        0,
        &series("notes", 1, 300, "'n' || x, 'title ' || x, 'body', x"),
    );
    let changes = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    assert_eq!(changes.len(), 1);
    let chunks = changes[0].chunks().to_vec();
    assert!(chunks.len() > 5, "{} chunks", chunks.len());
    let before = std::fs::read(c.path(1)).unwrap();
    for (what, tampered) in [
        ("a flipped byte", {
            let mut t = chunks.clone();
            t[2][10] ^= 0x01;
            t
        }),
        ("a dropped chunk", chunks[1..].to_vec()),
        ("two chunks swapped", {
            let mut t = chunks.clone();
            t.swap(0, 1);
            t
        }),
    ] {
        let change = tide_core::SignedChange::new(changes[0].head().clone(), tampered);
        let err = c.replicas[1].import(&[change]).unwrap_err();
        assert!(matches!(err, Error::Rejected { .. }), "{what}: {err}");
        assert_eq!(std::fs::read(c.path(1)).unwrap(), before, "{what}");
    }
    let report = c.replicas[1].import(&changes).unwrap();
    assert_eq!(report.ops_applied, 300);
    c.assert_converged();
}

/// A caller whose source ignores a refused change and offers more still gets a failed
/// import, with nothing kept.
#[test]
fn an_import_whose_source_swallows_a_refusal_keeps_nothing() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    let good = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    let mut chunks = good[0].chunks().to_vec();
    chunks[0][3] ^= 0x01;
    let bad = tide_core::SignedChange::new(good[0].head().clone(), chunks);
    let before = std::fs::read(c.path(1)).unwrap();
    let err = c.replicas[1]
        .import_each(|offer| {
            let refused = offer(bad.head(), &mut &bad);
            assert!(
                matches!(refused, Err(Error::Rejected { .. })),
                "{refused:?}"
            );
            let _ = offer(good[0].head(), &mut &good[0]);
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, Error::Apply(_)), "{err}");
    assert_eq!(std::fs::read(c.path(1)).unwrap(), before);
}

/// Tables `a` and `b` on both replicas; r0 tracks both, r1 only `a`.
fn b_tracked_on_r0_only() -> Cluster {
    let schema = "CREATE TABLE a(id TEXT PRIMARY KEY, v); CREATE TABLE b(id TEXT PRIMARY KEY, v);";
    let mut c = Cluster::new(2, schema, &["a"]);
    c.replicas[0].track("b").unwrap();
    c
}

/// A change's first table applies, its second is not tracked here: the change goes to
/// quarantine whole, and the first table's ops are rolled back with it.
#[test]
fn a_change_whose_later_table_is_unknown_applies_none_of_its_tables() {
    let mut c = b_tracked_on_r0_only();
    c.write(
        0,
        "BEGIN; INSERT INTO a VALUES ('x', 1); INSERT INTO b VALUES ('y', 2); COMMIT;",
    );
    let report = c.send(0, 1);
    assert_eq!(report.applied, 0);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].1, "unknown_table");
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM a"),
        0,
        "the first table's op was rolled back with the change"
    );
    c.replicas[1].track("b").unwrap();
    c.replicas[1].retry_quarantine().unwrap();
    assert_eq!(query_one::<i64>(&c.path(1), "SELECT count(*) FROM a"), 1);
    assert_eq!(query_one::<i64>(&c.path(1), "SELECT count(*) FROM b"), 1);
    assert!(c.replicas[1].quarantine().unwrap().is_empty());
}

/// A change that goes to quarantine takes back the conflicts it had opened: the report
/// counts none, and none exist.
#[test]
fn a_quarantined_change_opens_no_conflicts_in_the_report() {
    let mut c = b_tracked_on_r0_only();
    c.write(0, "INSERT INTO a VALUES ('x', 0)");
    c.send(0, 1);
    c.write(1, "UPDATE a SET v = 1 WHERE id = 'x'");
    c.replicas[1].seal().unwrap();
    // One change: a conflicting write to `a`, then a table r1 does not track.
    c.write(
        0,
        "BEGIN; UPDATE a SET v = 2 WHERE id = 'x'; INSERT INTO b VALUES ('y', 2); COMMIT;",
    );
    let report = c.send(0, 1);
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(c.replicas[1].conflicts().unwrap().len(), 0);
    assert_eq!(report.conflicts_opened, 0, "{report:?}");
}

#[test]
fn a_change_from_an_unknown_replica_waits_in_quarantine_until_its_card_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let mut a =
        Replica::open(dir.path().join("a.db"), KeyStore::at(dir.path().join("ka"))).unwrap();
    let mut b =
        Replica::open(dir.path().join("b.db"), KeyStore::at(dir.path().join("kb"))).unwrap();
    a.init("a").unwrap();
    b.init("b").unwrap();
    for r in [&a, &b] {
        r.connection().execute_batch(NOTES).unwrap();
    }
    a.track("notes").unwrap();
    b.track("notes").unwrap();
    a.connection()
        .execute("INSERT INTO notes VALUES ('a', 't', 'b', 0)", [])
        .unwrap();
    let changes = a.changes_for(&VersionVector::new()).unwrap();
    let report = b.import(&changes).unwrap();
    assert_eq!(report.quarantined[0].1, "unknown_origin");
    assert_eq!(
        query_one::<i64>(&dir.path().join("b.db"), "SELECT count(*) FROM notes"),
        0
    );
    b.add_peer(&a.card().unwrap()).unwrap();
    let report = b.retry_quarantine().unwrap();
    assert_eq!(report.applied, 1);
    assert!(b.quarantine().unwrap().is_empty());
}
