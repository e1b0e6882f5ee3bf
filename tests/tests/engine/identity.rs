//! A replica's identity: a database copied to another place or machine, or restored
//! from a backup, refuses to seal until it takes a new identity, and a change forked
//! from one identity's history is quarantined, not applied.

use rusqlite::Connection;
use tide_core::{Error, KeyStore, Replica, VersionVector};
use tide_tests::{notes, query_one};

#[test]
fn a_copied_database_refuses_to_seal() {
    let c = notes(1);
    let mut r = Replica::open(c.path(0), KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    r.seal().unwrap();

    // Same file on another machine: the key store does not have its secret key.
    let copy = c.dir.path().join("copy.db");
    std::fs::copy(c.path(0), &copy).unwrap();
    let mut on_other_machine =
        Replica::open(&copy, KeyStore::at(c.dir.path().join("elsewhere"))).unwrap();
    Connection::open(&copy)
        .unwrap()
        .execute("INSERT INTO notes VALUES ('b', 't', 'b', 0)", [])
        .unwrap();
    let err = on_other_machine.seal().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Open(tide_core::OpenError::IdentityMissing { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("looks like a copy"));

    // Same key store, other path: a copy on the same machine.
    let mut same_machine = Replica::open(&copy, KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    let err = same_machine.seal().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Open(tide_core::OpenError::IdentityConflict { .. })
        ),
        "{err}"
    );

    // A new identity makes it a replica of its own.
    let old = same_machine.id().unwrap();
    let new = same_machine.new_identity("copy").unwrap();
    assert_ne!(old, new);
    assert!(same_machine.seal().unwrap().is_some());
}

#[test]
fn a_restored_backup_refuses_to_seal() {
    let c = notes(1);
    let backup = c.dir.path().join("backup.db");
    std::fs::copy(c.path(0), &backup).unwrap();
    let mut r = Replica::open(c.path(0), KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    r.seal().unwrap();
    drop(r);
    std::fs::copy(&backup, c.path(0)).unwrap();
    let mut restored = Replica::open(c.path(0), KeyStore::at(c.dir.path().join("keys0"))).unwrap();
    c.write(0, "INSERT INTO notes VALUES ('b', 't', 'b', 0)");
    let err = restored.seal().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Open(tide_core::OpenError::IdentityConflict { .. })
        ),
        "{err}"
    );
}

#[test]
fn a_forked_change_is_quarantined_not_applied() {
    let mut c = notes(2);
    c.write(0, "INSERT INTO notes VALUES ('a', 't', 'b', 0)");
    c.send(0, 1);
    // Clone r0's file and keys (a restored backup on a second machine), then write on both.
    let fork_dir = c.dir.path().join("fork");
    std::fs::create_dir(&fork_dir).unwrap();
    let fork_db = fork_dir.join("fork.db");
    std::fs::copy(c.path(0), &fork_db).unwrap();
    let keys = c.dir.path().join("keys0");
    let fork_keys = fork_dir.join("keys");
    std::fs::create_dir(&fork_keys).unwrap();
    for entry in std::fs::read_dir(&keys).unwrap() {
        let e = entry.unwrap();
        if e.file_name().to_string_lossy().ends_with(".key") {
            std::fs::copy(e.path(), fork_keys.join(e.file_name())).unwrap();
        }
    }
    let mut fork = Replica::open(&fork_db, KeyStore::at(&fork_keys)).unwrap();
    Connection::open(&fork_db)
        .unwrap()
        .execute("UPDATE notes SET title='fork' WHERE id='a'", [])
        .unwrap();
    fork.seal().unwrap();
    c.write(0, "UPDATE notes SET title='original' WHERE id='a'");
    c.send(0, 1);
    let forked = fork.changes_for(&VersionVector::new()).unwrap();
    let forked: Vec<_> = forked
        .into_iter()
        .filter(|ch| ch.peek_id().unwrap().seq == 2)
        .collect();
    assert_eq!(forked.len(), 1);
    let before = c.replicas[1].state_hash().unwrap();
    let report = c.replicas[1].import(&forked).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].1, "fork");
    assert_eq!(c.replicas[1].state_hash().unwrap(), before);
    let q = c.replicas[1].quarantine().unwrap();
    assert_eq!(q[0].reason, "fork");
    let title: String = query_one(&c.path(1), "SELECT title FROM notes");
    assert_eq!(title, "original");
}
