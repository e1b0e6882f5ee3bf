//! Bundles between real replicas: plain, encrypted to a peer, under a passphrase, split
//! into parts, and a tamper campaign in which no altered bundle changes anything.

use std::io::Cursor;

use tide_bundle::{
    ArgonParams, BundleError, WriteOptions, assemble, export, import, prerequisites_missing, split,
};
use tide_core::VersionVector;
use tide_tests::{Cluster, query_one};

const SCHEMA: &str = "CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT, n INTEGER);";

fn fast() -> ArgonParams {
    ArgonParams {
        m_kib: 64,
        t: 1,
        p: 1,
    }
}

fn bundle(c: &mut Cluster, from: usize, to: usize, options: &WriteOptions) -> Vec<u8> {
    let since = c.replicas[to].version_vector().unwrap();
    let mut out = Vec::new();
    export(&mut c.replicas[from], &since, options, &mut out).unwrap();
    out
}

#[test]
fn a_plain_bundle_carries_changes_and_the_senders_acknowledgement() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    c.write(0, "INSERT INTO notes VALUES ('a', 'hello', 1)");
    let b = bundle(&mut c, 0, 1, &WriteOptions::default());
    let imported = import(&mut c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    assert_eq!(imported.report.applied, 1);
    assert_eq!(imported.header.changes, 1);
    assert_eq!(
        query_one::<String>(&c.path(1), "SELECT body FROM notes"),
        "hello"
    );
    let r0 = c.replicas[0].id().unwrap();
    assert_eq!(
        c.replicas[1].peer_ack(r0).unwrap(),
        c.replicas[0].version_vector().unwrap()
    );
    // Importing the same bundle again changes nothing.
    let before = c.replicas[1].state_hash().unwrap();
    let again = import(&mut c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    assert_eq!(again.report.duplicates, 1);
    assert_eq!(c.replicas[1].state_hash().unwrap(), before);
}

#[test]
fn an_encrypted_bundle_opens_only_for_its_recipient_or_with_the_passphrase() {
    let mut c = Cluster::new(3, SCHEMA, &["notes"]);
    c.write(0, "INSERT INTO notes VALUES ('secret', 'for r1', 1)");
    let r1 = c.replicas[1].card().unwrap();
    let options = WriteOptions {
        encrypt_to: vec![r1.box_key],
        passphrase: Some(b"pass phrase".to_vec()),
        argon: fast(),
        ..Default::default()
    };
    let b = bundle(&mut c, 0, 1, &options);
    assert!(
        !b.windows(6).any(|w| w == b"for r1"),
        "the plaintext does not appear in the file"
    );
    // r2 is known to r0's key but is not a recipient and has no passphrase.
    let err = import(&mut c.replicas[2], &mut Cursor::new(&b), None).unwrap_err();
    assert!(matches!(err, BundleError::NoMatchingKey), "{err}");
    let err = import(&mut c.replicas[2], &mut Cursor::new(&b), Some(b"wrong")).unwrap_err();
    assert!(matches!(err, BundleError::NoMatchingKey), "{err}");
    assert_eq!(
        query_one::<i64>(&c.path(2), "SELECT count(*) FROM notes"),
        0
    );
    import(
        &mut c.replicas[2],
        &mut Cursor::new(&b),
        Some(b"pass phrase"),
    )
    .unwrap();
    import(&mut c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    for i in 1..3 {
        assert_eq!(
            query_one::<String>(&c.path(i), "SELECT body FROM notes"),
            "for r1"
        );
    }
}

#[test]
fn a_bundle_addressed_to_another_replica_is_refused() {
    let mut c = Cluster::new(3, SCHEMA, &["notes"]);
    c.write(0, "INSERT INTO notes VALUES ('a', 'x', 1)");
    let options = WriteOptions {
        recipient: Some(c.replicas[1].id().unwrap()),
        ..Default::default()
    };
    let b = bundle(&mut c, 0, 1, &options);
    let err = import(&mut c.replicas[2], &mut Cursor::new(&b), None).unwrap_err();
    assert!(
        matches!(err, BundleError::NotForThisReplica { .. }),
        "{err}"
    );
}

#[test]
fn an_unknown_sender_is_named_in_the_refusal() {
    let mut c = Cluster::new(1, SCHEMA, &["notes"]);
    let mut stranger = Cluster::new(1, SCHEMA, &["notes"]);
    stranger.write(0, "INSERT INTO notes VALUES ('a', 'x', 1)");
    let mut b = Vec::new();
    export(
        &mut stranger.replicas[0],
        &VersionVector::new(),
        &WriteOptions::default(),
        &mut b,
    )
    .unwrap();
    let err = import(&mut c.replicas[0], &mut Cursor::new(&b), None).unwrap_err();
    let id = stranger.replicas[0].id().unwrap();
    assert!(matches!(err, BundleError::UnknownSender(s) if s == id));
    assert!(err.to_string().contains(&id.to_hex()));
}

#[test]
fn a_bundle_split_into_parts_imports_in_any_order_and_names_missing_parts() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    for i in 0..200 {
        c.write(
            0,
            &format!(
                "INSERT INTO notes VALUES ('n{i}', '{}', {i})",
                "x".repeat(i)
            ),
        );
    }
    let b = bundle(&mut c, 0, 1, &WriteOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("b.tide");
    std::fs::write(&whole, &b).unwrap();
    let size = (b.len() / 3 + 100) as u64;
    let mut parts = split(&whole, size, &dir.path().join("out")).unwrap();
    assert_eq!(parts.len(), 3);
    for p in &parts {
        assert!(std::fs::metadata(p).unwrap().len() <= size);
    }
    let err = assemble(&parts[1..], dir.path()).unwrap_err();
    assert!(
        matches!(&err, BundleError::MissingParts { missing, .. } if missing == &vec![1]),
        "{err}"
    );
    parts.reverse();
    let out = tempfile::tempdir().unwrap();
    let joined = assemble(&parts, out.path()).unwrap();
    let imported = import(
        &mut c.replicas[1],
        &mut std::fs::File::open(joined).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(imported.report.ops_applied, 200);
}

#[test]
fn prerequisites_are_reported_before_import() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    c.write(0, "INSERT INTO notes VALUES ('a', 'x', 1)");
    c.replicas[0].seal().unwrap();
    let first = c.replicas[0].version_vector().unwrap();
    c.write(0, "UPDATE notes SET n = 2");
    let mut b = Vec::new();
    export(&mut c.replicas[0], &first, &WriteOptions::default(), &mut b).unwrap();
    let header = tide_bundle::read_header(&mut Cursor::new(&b), 0).unwrap().0;
    let missing = prerequisites_missing(&c.replicas[1], &header).unwrap();
    assert_eq!(missing, first);
    // The change waits; the earlier one arriving later completes it (a lost bundle).
    let r = import(&mut c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    assert_eq!((r.report.applied, r.report.waiting), (0, 1));
    let all = bundle(&mut c, 0, 1, &WriteOptions::default());
    let r = import(&mut c.replicas[1], &mut Cursor::new(&all), None).unwrap();
    assert_eq!(r.report.applied, 2);
    assert_eq!(query_one::<i64>(&c.path(1), "SELECT n FROM notes"), 2);
}

#[test]
fn temporary_files_are_removed_on_success_and_on_every_error() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    c.write(0, "INSERT INTO notes VALUES ('a', 'x', 1)");
    let r1 = c.replicas[1].card().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let since = c.replicas[1].version_vector().unwrap();
    let mut good = Vec::new();
    let write = WriteOptions {
        encrypt_to: vec![r1.box_key],
        temp_dir: Some(scratch.path().to_path_buf()),
        ..Default::default()
    };
    export(&mut c.replicas[0], &since, &write, &mut good).unwrap();
    let empty = |what: &str| {
        assert_eq!(
            std::fs::read_dir(scratch.path()).unwrap().count(),
            0,
            "left behind after {what}"
        )
    };
    empty("writing");
    let known = c.replicas[1].known_cards().unwrap();
    let read = |bytes: &[u8], secret: Option<[u8; 32]>| {
        let options = tide_bundle::ReadOptions {
            known: known.clone(),
            box_secret: secret,
            passphrase: None,
            image_cap: 0,
            temp_dir: Some(scratch.path().to_path_buf()),
        };
        tide_bundle::read_bundle(&mut Cursor::new(bytes), &options)
            .map(|b| b.changes().unwrap().len())
    };
    let secret = c.replicas[1].reading_identity().unwrap().box_secret();
    assert_eq!(read(&good, Some(secret)).unwrap(), 1);
    empty("a successful read");
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 1;
    assert!(read(&flipped, Some(secret)).is_err());
    empty("a bad signature");
    assert!(read(&good[..n - 1], Some(secret)).is_err());
    empty("a truncated file");
    assert!(read(&good, Some([9; 32])).is_err());
    empty("a wrong key");
}

#[test]
fn inspect_and_verify_need_no_database() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    c.write(
        0,
        "INSERT INTO notes VALUES ('a', 'x', 1); INSERT INTO notes VALUES ('b', 'y', 2);",
    );
    let b = bundle(&mut c, 0, 1, &WriteOptions::default());
    // Inspect: the header alone, nothing verified.
    let (header, _) = tide_bundle::read_header(&mut Cursor::new(&b), 0).unwrap();
    assert_eq!(header.sender, c.replicas[0].id().unwrap());
    assert_eq!((header.changes, header.ops), (1, 2));
    assert!(!header.encrypted());
    // Verify: the signature, against the cards the caller trusts.
    let cards = vec![c.replicas[0].card().unwrap()];
    assert_eq!(
        tide_bundle::verify_bundle(&mut Cursor::new(&b), &cards).unwrap(),
        header
    );
    let mut flipped = b.clone();
    let n = flipped.len();
    flipped[n / 2] ^= 4;
    assert!(matches!(
        tide_bundle::verify_bundle(&mut Cursor::new(&flipped), &cards),
        Err(BundleError::BadSignature)
    ));
    assert!(matches!(
        tide_bundle::verify_bundle(&mut Cursor::new(&b), &[]),
        Err(BundleError::UnknownSender(_))
    ));
}

#[test]
fn a_checked_import_reports_what_the_import_then_does_and_writes_nothing() {
    let mut c = Cluster::new(3, SCHEMA, &["notes"]);
    // Several changes of one origin in one bundle (each judged against the one before it,
    // as the import judges them), from two origins, one of them already held.
    for i in 0..3 {
        c.write(0, &format!("INSERT INTO notes VALUES ('a{i}', 'x', {i})"));
        c.replicas[0].seal().unwrap();
    }
    c.write(2, "INSERT INTO notes VALUES ('c', 'y', 9)");
    c.send(2, 1);
    c.send(2, 0);
    // Everything r0 holds, r2's change included.
    let mut b = Vec::new();
    export(
        &mut c.replicas[0],
        &VersionVector::new(),
        &WriteOptions::default(),
        &mut b,
    )
    .unwrap();
    let before = std::fs::read(c.path(1)).unwrap();
    let checked = tide_bundle::check_import(&c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    assert_eq!(std::fs::read(c.path(1)).unwrap(), before, "the check wrote");
    let imported = import(&mut c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    let (want, got) = (&imported.report, &checked.report);
    assert_eq!(
        (got.received, got.stored, got.duplicates, &got.quarantined),
        (
            want.received,
            want.stored,
            want.duplicates,
            &want.quarantined
        )
    );
    assert_eq!((got.stored, got.duplicates), (3, 1));
}

/// Change 1 of `secret`'s replica, writing note `id` with `body`.
fn first_change(
    secret: &tide_core::SecretIdentity,
    schema: u64,
    id: &str,
    body: &str,
) -> tide_core::SignedChange {
    use tide_core::{CellWrite, Change, ChangeHead, OpKind, RowOp, TableOps, Value};
    Change {
        head: ChangeHead {
            origin: secret.id(),
            seq: 1,
            hlc: 1_763_769_600_000 << 16,
            schema,
            prev: [0; 32],
            deps: vec![],
        },
        tables: vec![TableOps {
            name: "notes".into(),
            key_columns: vec!["id".into()],
            columns: vec!["body".into(), "n".into()],
            rows: vec![RowOp {
                kind: OpKind::Insert,
                key: vec![Value::text(id)],
                row_preds: vec![],
                lineage: None,
                cells: vec![
                    CellWrite {
                        column: 0,
                        value: Value::text(body),
                        preds: vec![],
                    },
                    CellWrite {
                        column: 1,
                        value: Value::Integer(1),
                        preds: vec![],
                    },
                ],
            }],
        }],
    }
    .seal(secret)
}

#[test]
fn a_checked_import_judges_a_fork_inside_the_bundle_as_the_import_does() {
    // Two changes with one origin and seq in one bundle, the second with a chunk that is
    // not the one its head names. The import stores the first, then quarantines the
    // second as a fork without reading its chunk; a check must come to the same, not
    // refuse the bundle over a chunk the import never looks at.
    let c = Cluster::new(2, SCHEMA, &["notes"]);
    let secret = c.replicas[0].signing_identity().unwrap();
    let schema = c.replicas[0].schema_epoch().unwrap();
    let one = first_change(&secret, schema, "a", "first");
    let other = first_change(&secret, schema, "a", "forked");
    let garbage = vec![0u8; other.chunks()[0].len()];
    let other = tide_core::SignedChange::new(other.head().clone(), vec![garbage]);
    let mut b = Vec::new();
    tide_bundle::write_bundle(
        &tide_bundle::Sender {
            identity: &secret,
            ack: [(secret.id(), 1)].into(),
            schema,
        },
        |each| {
            each(one.head(), &mut &one)?;
            each(other.head(), &mut &other)
        },
        &WriteOptions::default(),
        &mut b,
    )
    .unwrap();
    let mut c = c;
    let checked = tide_bundle::check_import(&c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    let imported = import(&mut c.replicas[1], &mut Cursor::new(&b), None).unwrap();
    assert_eq!(imported.report.stored, 1);
    assert_eq!(imported.report.quarantined.len(), 1);
    assert_eq!(
        imported.report.quarantined[0].1,
        tide_core::QuarantineReason::Fork
    );
    let (want, got) = (&imported.report, &checked.report);
    assert_eq!(
        (got.received, got.stored, got.duplicates, &got.quarantined),
        (
            want.received,
            want.stored,
            want.duplicates,
            &want.quarantined
        )
    );
}
