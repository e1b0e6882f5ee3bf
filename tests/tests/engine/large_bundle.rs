//! A bundle of at least 200 MB written, read and imported into a replica in bounded
//! memory, with the peak resident memory reported. Ignored by default (it takes a while
//! and about five times the bundle's size in disk):
//!
//! `cargo test --release -p tide-tests --test engine large_bundle:: -- --ignored --nocapture`
//!
//! `TIDE_LARGE_MB=1000` makes it a 1 GB bundle (DESIGN.md §7's memory target).

use std::io::{BufReader, BufWriter, Write};

use tide_bundle::{ReadOptions, Sender, WriteOptions, read_bundle, write_bundle};
use tide_core::{
    CellWrite, Change, ChangeHead, KeyStore, OpKind, Replica, RowOp, SecretIdentity, TableOps,
    Value,
};

/// Peak resident set size of this process so far, from /proc (Linux).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

#[test]
#[ignore = "writes and reads a 200 MB bundle; run on request"]
fn a_200_mb_bundle_streams_in_bounded_memory() {
    let alice = SecretIdentity::from_secrets([7; 32], [8; 32]);
    let dir = tempfile::tempdir().unwrap();
    // The receiving replica: the bundle is encrypted to it.
    let mut bob = Replica::open(
        dir.path().join("bob.db"),
        KeyStore::at(dir.path().join("keys")),
    )
    .unwrap();
    bob.init("bob").unwrap();
    bob.connection()
        .execute_batch("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
        .unwrap();
    bob.track("blobs").unwrap();
    bob.add_peer(&alice.card("alice")).unwrap();
    let path = dir.path().join("large.tide");
    let megabytes: u64 = std::env::var("TIDE_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(200);
    let blob = 64 * 1024;
    let changes = megabytes * 1_000_000 / blob as u64 + 150;
    let start = std::time::Instant::now();
    let before = peak_rss_mib();
    {
        let mut out = BufWriter::new(std::fs::File::create(&path).unwrap());
        let sender = Sender {
            identity: &alice,
            ack: [(alice.id(), changes)].into(),
            schema: 1,
        };
        let options = WriteOptions {
            encrypt_to: vec![bob.card().unwrap().box_key],
            ..Default::default()
        };
        write_bundle(
            &sender,
            |each| {
                let mut prev = [0u8; 32];
                for seq in 1..=changes {
                    // Incompressible content: a BLAKE3 output stream per change.
                    let mut data = vec![0u8; blob];
                    blake3::Hasher::new()
                        .update(&seq.to_le_bytes())
                        .finalize_xof()
                        .fill(&mut data);
                    let change = Change {
                        head: ChangeHead {
                            origin: alice.id(),
                            seq,
                            hlc: seq << 16,
                            schema: 1,
                            prev,
                            deps: if seq > 1 {
                                vec![(alice.id(), seq - 1)]
                            } else {
                                vec![]
                            },
                        },
                        tables: vec![TableOps {
                            name: "blobs".into(),
                            key_columns: vec!["id".into()],
                            columns: vec!["data".into()],
                            rows: vec![RowOp {
                                kind: OpKind::Insert,
                                key: vec![Value::Integer(seq as i64)],
                                row_preds: vec![],
                                lineage: None,
                                cells: vec![CellWrite {
                                    column: 0,
                                    value: Value::Blob(data),
                                    preds: vec![],
                                }],
                            }],
                        }],
                    };
                    let signed = change.seal(&alice);
                    prev = *signed.hash();
                    each(signed.head(), &mut &signed)?;
                }
                Ok(())
            },
            &options,
            &mut out,
        )
        .unwrap();
        out.flush().unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    let wrote = start.elapsed();
    let after_write = peak_rss_mib();
    let options = ReadOptions {
        known: vec![alice.card("alice")],
        box_secret: Some(bob.reading_identity().unwrap().box_secret()),
        passphrase: None,
        image_cap: 0,
        temp_dir: None,
    };
    let start = std::time::Instant::now();
    let bundle = read_bundle(
        &mut BufReader::new(std::fs::File::open(&path).unwrap()),
        &options,
    )
    .unwrap();
    let mut n = 0u64;
    bundle
        .for_each_change(|head, chunks| {
            let manifest = head.verify(&alice.card("alice").sign_key).unwrap();
            for (i, want) in manifest.chunks.iter().enumerate() {
                manifest
                    .check_chunk(i, &chunks.chunk(i, want).unwrap())
                    .unwrap();
            }
            assert_eq!(manifest.head.seq, n + 1);
            n += 1;
            Ok(())
        })
        .unwrap();
    let read = start.elapsed();
    let after_read = peak_rss_mib();
    println!(
        "bundle {:.1} MB ({} changes): write {:.1} s, read+verify {:.1} s; peak RSS {:.1} MiB before, {:.1} MiB after writing, {:.1} MiB after reading",
        size as f64 / 1e6,
        n,
        wrote.as_secs_f64(),
        read.as_secs_f64(),
        before,
        after_write,
        after_read
    );
    assert!(size >= megabytes * 1_000_000, "the bundle is {size} bytes");
    assert_eq!(n, changes);
    drop(bundle);

    // Imported into the replica: verified, stored and applied, a chunk at a time.
    let start = std::time::Instant::now();
    let imported = tide_bundle::import(
        &mut bob,
        &mut BufReader::new(std::fs::File::open(&path).unwrap()),
        None,
    )
    .unwrap();
    let after_import = peak_rss_mib();
    println!(
        "import: {} changes, {} row ops in {:.1} s; peak RSS {:.1} MiB after importing",
        imported.report.applied,
        imported.report.ops_applied,
        start.elapsed().as_secs_f64(),
        after_import
    );
    assert_eq!(imported.report.applied as u64, changes);
    let rows: i64 = bob
        .connection()
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as u64, changes);
}
