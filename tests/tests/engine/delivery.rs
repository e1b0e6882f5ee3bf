//! Delivery of changes between replicas: changes relay through a middle replica, a
//! change whose dependencies are missing waits (hundreds of them, across pages) until
//! they arrive and then applies in causal order, and changes delivered again change
//! nothing.

use tide_core::VersionVector;
use tide_tests::{notes, query_one};

#[test]
fn changes_relay_through_a_middle_replica() {
    let mut c = notes(3);
    c.write(0, "INSERT INTO notes VALUES ('from0', 't', 'b', 0)");
    c.send(0, 1);
    c.send(1, 2);
    let n: i64 = query_one(&c.path(2), "SELECT count(*) FROM notes WHERE id='from0'");
    assert_eq!(n, 1);
}

#[test]
fn a_change_with_missing_dependencies_waits_then_applies() {
    let mut c = notes(3);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.send(0, 1);
    c.write(1, "UPDATE notes SET n = 5 WHERE id='a'");
    // r2 gets r1's change first: it depends on r0's, which r2 lacks.
    let from1: Vec<_> = c.replicas[1]
        .changes_for(&VersionVector::new())
        .unwrap()
        .into_iter()
        .filter(|ch| ch.peek_id().unwrap().origin == c.replicas[1].id().unwrap())
        .collect();
    let report = c.replicas[2].import(&from1).unwrap();
    assert_eq!((report.applied, report.waiting), (0, 1));
    let report = c.send(0, 2);
    assert_eq!(
        report.applied, 2,
        "the waiting change applies once its dependency arrives"
    );
    let n: i64 = query_one(&c.path(2), "SELECT n FROM notes WHERE id='a'");
    assert_eq!(n, 5);
}

/// Waiting changes are read a page (256) at a time: 300 changes whose first is missing
/// all wait, then all apply, in causal order, once it arrives.
#[test]
fn hundreds_of_waiting_changes_apply_across_pages_once_the_gap_is_filled() {
    let mut c = notes(2);
    for i in 0..300 {
        c.write(
            0,
            &format!("INSERT INTO notes VALUES ('n{i}', 't', 'b', {i})"),
        );
        c.replicas[0].seal().unwrap();
    }
    c.write(0, "UPDATE notes SET n = -1 WHERE id = 'n0'");
    let mut changes = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    assert_eq!(changes.len(), 301);
    let first = changes.remove(0);
    changes.reverse();
    let report = c.replicas[1].import(&changes).unwrap();
    assert_eq!((report.applied, report.waiting), (0, 300), "{report:?}");
    let report = c.replicas[1].import(&[first]).unwrap();
    assert_eq!((report.applied, report.waiting), (301, 0), "{report:?}");
    c.assert_converged();
}

#[test]
fn reapplying_the_same_changes_changes_nothing() {
    let mut c = notes(2);
    c.diverge(
        "INSERT INTO notes VALUES ('a', 't', 'b', 0); INSERT INTO notes VALUES ('b', 't', 'b', 0)",
        "INSERT INTO notes VALUES ('a', 'T', 'B', 1)",
    );
    let before = c.hashes();
    let all = c.replicas[0].changes_for(&VersionVector::new()).unwrap();
    for _ in 0..2 {
        let report = c.replicas[1].import(&all).unwrap();
        assert_eq!(report.stored, 0);
        assert_eq!(report.duplicates, all.len());
    }
    assert_eq!(c.hashes(), before);
}
