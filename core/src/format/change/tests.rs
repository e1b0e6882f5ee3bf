//! Round trips, verification and strict decoding of changes.

use super::*;
use crate::format::codec::DecodeError;
use crate::format::ids::{ChangeId, ReplicaId};
use crate::format::value::Value;
use crate::identity::SecretIdentity;

fn sample(secret: &SecretIdentity) -> Change {
    let other = ReplicaId([1; 16]);
    let mut deps = vec![(other, 4), (secret.id(), 1)];
    deps.sort();
    Change {
        head: ChangeHead {
            origin: secret.id(),
            seq: 2,
            hlc: 77 << 16,
            schema: 1,
            prev: [9; 32],
            deps,
        },
        tables: vec![TableOps {
            name: "t".into(),
            key_columns: vec!["id".into()],
            columns: vec!["a".into(), "b".into()],
            rows: vec![
                RowOp {
                    kind: OpKind::Update,
                    key: vec![Value::Blob(vec![])],
                    row_preds: vec![ChangeId {
                        origin: other,
                        seq: 3,
                    }],
                    lineage: Some(Lineage {
                        change: ChangeId {
                            origin: other,
                            seq: 1,
                        },
                        hlc: 5,
                    }),
                    cells: vec![
                        CellWrite {
                            column: 0,
                            value: Value::real(-0.0),
                            preds: vec![],
                        },
                        CellWrite {
                            column: 1,
                            value: Value::Integer(i64::MIN),
                            preds: vec![ChangeId {
                                origin: secret.id(),
                                seq: 1,
                            }],
                        },
                    ],
                },
                RowOp {
                    kind: OpKind::Delete,
                    key: vec![Value::Null],
                    row_preds: vec![],
                    lineage: None,
                    cells: vec![],
                },
            ],
        }],
    }
}

/// Two columns of one name would map two cells onto one local column, and which
/// value lands there would depend on the path the apply takes.
#[test]
fn a_table_naming_a_column_twice_is_refused() {
    let secret = SecretIdentity::generate();
    for (keys, columns) in [
        (vec!["id"], vec!["a", "a"]),
        (vec!["id"], vec!["a", "id"]),
        (vec!["id", "id"], vec!["a"]),
    ] {
        let mut change = sample(&secret);
        change.tables[0].key_columns = keys.iter().map(|c| c.to_string()).collect();
        change.tables[0].columns = columns.iter().map(|c| c.to_string()).collect();
        // Only the delete, with a key of the right width: it writes no cells.
        change.tables[0].rows.remove(0);
        change.tables[0].rows[0].key = vec![Value::Null; keys.len()];
        let (manifest, chunks) = change.encode_with(CHUNK_TARGET);
        let err = Change::decode(&manifest.encode(), &chunks).unwrap_err();
        assert!(
            matches!(err, DecodeError::Malformed(m) if m.contains("twice")),
            "{err:?}"
        );
    }
    let change = sample(&secret);
    let (manifest, chunks) = change.encode_with(CHUNK_TARGET);
    assert_eq!(Change::decode(&manifest.encode(), &chunks).unwrap(), change);
}

#[test]
fn change_round_trips_and_verifies() {
    let secret = SecretIdentity::generate();
    let change = sample(&secret);
    let signed = change.seal(&secret);
    let (parsed, used) = SignedChange::from_bytes(&signed.to_bytes()).unwrap();
    assert_eq!(used, signed.to_bytes().len());
    let verified = parsed.verify(&secret.card("a").sign_key).unwrap();
    assert_eq!(verified.change(), &change);
}

#[test]
fn any_flipped_bit_of_head_or_chunk_fails_verification() {
    let secret = SecretIdentity::generate();
    let signed = sample(&secret).seal(&secret);
    let key = secret.card("a").sign_key;
    for i in 0..signed.head().bytes().len() * 8 {
        let mut head = signed.head().bytes().to_vec();
        head[i / 8] ^= 1 << (i % 8);
        let tampered = SignedChange::new(
            SignedHead::from_parts(head, *signed.head().signature()),
            signed.chunks().to_vec(),
        );
        assert!(tampered.verify(&key).is_err(), "head bit {i}");
    }
    for i in 0..signed.chunks()[0].len() * 8 {
        let mut chunk = signed.chunks()[0].clone();
        chunk[i / 8] ^= 1 << (i % 8);
        let tampered = SignedChange::new(signed.head().clone(), vec![chunk]);
        assert!(tampered.verify(&key).is_err(), "chunk bit {i}");
    }
}

#[test]
fn checking_a_chunk_accepts_and_refuses_exactly_what_decoding_does() {
    let secret = SecretIdentity::generate();
    let change = sample(&secret);
    let (manifest, chunks) = change.encode_with(CHUNK_TARGET);
    let deps = &manifest.head.deps;
    let chunk = &chunks[0];
    assert_eq!(manifest.check_chunk(0, chunk).unwrap(), 2);
    let mut variants: Vec<Vec<u8>> = (0..chunk.len()).map(|n| chunk[..n].to_vec()).collect();
    for i in 0..chunk.len() * 8 {
        let mut b = chunk.clone();
        b[i / 8] ^= 1 << (i % 8);
        variants.push(b);
    }
    for (n, b) in variants.iter().enumerate() {
        let decoded = ChunkDecoder::new(deps, b).and_then(ChunkDecoder::count_rows);
        let checked = ChunkDecoder::checking(deps, b).and_then(ChunkDecoder::count_rows);
        assert_eq!(decoded, checked, "variant {n}");
    }
}

/// A change of many rows over two tables, in chunks of about `target` bytes.
fn large(secret: &SecretIdentity, rows: i64) -> Change {
    let mut change = sample(secret);
    let other = change.tables[0].clone();
    change.tables[0].rows = (0..rows)
        .map(|i| RowOp {
            kind: OpKind::Insert,
            key: vec![Value::Integer(i)],
            row_preds: vec![],
            lineage: None,
            cells: vec![CellWrite {
                column: 1,
                value: Value::text(format!("row {i}")),
                preds: vec![],
            }],
        })
        .collect();
    change.tables.push(TableOps {
        name: "u".into(),
        ..other
    });
    change
}

#[test]
fn a_large_change_goes_in_chunks_that_decode_to_the_same_change() {
    let secret = SecretIdentity::generate();
    let change = large(&secret, 500);
    let signed = change.seal_with(&secret, 256);
    assert!(signed.chunks().len() > 10, "{}", signed.chunks().len());
    assert!(signed.chunks().iter().all(|c| c.len() < 256 + 64));
    let manifest = signed.head().manifest().unwrap();
    assert_eq!(manifest.ops, 502);
    let total: u64 = (0..signed.chunks().len())
        .map(|i| manifest.check_chunk(i, &signed.chunks()[i]).unwrap())
        .sum();
    assert_eq!(total, 502);
    let verified = signed.verify(&secret.card("a").sign_key).unwrap();
    assert_eq!(verified.change(), &change);
    let (parsed, used) = SignedChange::from_bytes(&signed.to_bytes()).unwrap();
    assert_eq!((used, &parsed), (signed.to_bytes().len(), &signed));
}

#[test]
fn chunks_missing_reordered_or_from_another_change_are_refused() {
    let secret = SecretIdentity::generate();
    let key = secret.card("a").sign_key;
    let signed = large(&secret, 200).seal_with(&secret, 256);
    let chunks = signed.chunks().to_vec();
    let head = signed.head().clone();
    let mut fewer = chunks.clone();
    fewer.pop();
    let mut swapped = chunks.clone();
    swapped.swap(1, 2);
    let mut foreign = chunks.clone();
    let mut other = large(&secret, 200);
    for row in &mut other.tables[0].rows {
        row.cells[0].value = Value::text("other");
    }
    foreign[1] = other.seal_with(&secret, 256).chunks()[1].clone();
    for (what, chunks) in [("fewer", fewer), ("swapped", swapped), ("foreign", foreign)] {
        let tampered = SignedChange::new(head.clone(), chunks);
        assert!(tampered.verify(&key).is_err(), "{what}");
    }
}

/// A packed chunk may not unpack past the length its head gives: a small frame of
/// many zeros is refused without producing them.
#[test]
fn a_packed_chunk_unpacks_to_at_most_its_length() {
    let chunk = vec![7u8; 4096];
    let packed = zstd::bulk::compress(&chunk, 1).unwrap();
    assert!(packed.len() < 100);
    assert_eq!(
        unpack_chunk(packed.clone(), PACKING_ZSTD, 4096).unwrap(),
        chunk
    );
    assert!(unpack_chunk(packed.clone(), PACKING_ZSTD, 4095).is_err());
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
    assert!(unpack_chunk(bomb, PACKING_ZSTD, 1 << 20).is_err());
    assert!(unpack_chunk(packed.clone(), 2, 4096).is_err());
    // Nothing unsigned rides along: no trailing bytes, no second or skippable frame.
    let mut trailing = packed.clone();
    trailing.extend_from_slice(b"unsigned");
    assert!(unpack_chunk(trailing, PACKING_ZSTD, 4096).is_err());
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend_from_slice(&packed);
    assert!(unpack_chunk(skippable, PACKING_ZSTD, 4096).is_err());
    let mut two = packed.clone();
    two.extend_from_slice(&packed);
    assert!(unpack_chunk(two, PACKING_ZSTD, 8192).is_err());
}

#[test]
fn another_key_is_refused() {
    let secret = SecretIdentity::generate();
    let other = SecretIdentity::generate();
    let signed = sample(&secret).seal(&secret);
    assert_eq!(
        signed.verify(&other.card("b").sign_key).unwrap_err(),
        VerifyError::BadSignature
    );
}
