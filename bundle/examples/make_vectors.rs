//! Writes the bundle test vectors in `fixtures/bundles/` (see fixtures/README.md).
//!
//! `cargo run -p tide-bundle --example make_vectors -- fixtures/bundles`
//!
//! The identities are fixed, published test keys (never use them for anything real).
//! Encryption draws fresh file keys and nonces, so each run writes different bytes
//! with the same meaning; `expected.txt` records what every reader must conclude.

use std::io::Write;
use std::path::{Path, PathBuf};

use tide_bundle::{ArgonParams, Header, Sender, Stanza, WriteOptions, split, write_bundle};
use tide_core::{Change, ChangeHead, OpKind, RowOp, SecretIdentity, TableOps, Value};

fn identity(name: &str) -> SecretIdentity {
    let seed = blake3::derive_key(
        "tide test vector identity (public, never use)",
        name.as_bytes(),
    );
    let boxk = blake3::derive_key(
        "tide test vector box key (public, never use)",
        name.as_bytes(),
    );
    SecretIdentity::from_secrets(seed, boxk)
}

fn sample_change(alice: &SecretIdentity, rows: usize, filler: usize) -> tide_core::SignedChange {
    let change = Change {
        head: ChangeHead {
            origin: alice.id(),
            seq: 1,
            hlc: 1_763_769_600_000 << 16,
            schema: 1,
            prev: [0; 32],
            deps: vec![],
        },
        tables: vec![TableOps {
            name: "notes".into(),
            key_columns: vec!["id".into()],
            columns: vec!["body".into(), "n".into()],
            rows: (0..rows)
                .map(|i| RowOp {
                    kind: OpKind::Insert,
                    key: vec![Value::text(format!("note-{i}"))],
                    row_preds: vec![],
                    lineage: None,
                    cells: vec![
                        tide_core::CellWrite {
                            column: 0,
                            value: Value::text(format!("body {i} {}", noise(i, filler))),
                            preds: vec![],
                        },
                        tide_core::CellWrite {
                            column: 1,
                            value: Value::Integer(i as i64),
                            preds: vec![],
                        },
                    ],
                })
                .collect(),
        }],
    };
    change.seal(alice)
}

/// Deterministic, incompressible filler (hex of BLAKE3's output stream).
fn noise(i: usize, len: usize) -> String {
    let mut out = vec![0u8; len / 2];
    blake3::Hasher::new()
        .update(&i.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    hex(&out)
}

fn write(
    dir: &Path,
    name: &str,
    sender: &Sender<'_>,
    options: &WriteOptions,
    alice: &SecretIdentity,
    large: bool,
) -> Vec<u8> {
    let change = if large {
        sample_change(alice, 100, 4000)
    } else {
        sample_change(alice, 20, 40)
    };
    let mut out = Vec::new();
    write_bundle(
        sender,
        |each| each(change.head(), &mut &change),
        options,
        &mut out,
    )
    .expect("write bundle");
    std::fs::write(dir.join(name), &out).expect("write file");
    out
}

/// Re-signs preamble + header + body as `signer`: for vectors whose flaw lies past the
/// signature check.
fn signed(head: &[u8], body: &[u8], signer: &SecretIdentity) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(body);
    let mut msg = tide_bundle::SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(h.finalize().as_bytes());
    let mut out = head.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&signer.sign(&msg));
    out
}

fn split_file(bytes: &[u8]) -> (Header, Vec<u8>, Vec<u8>) {
    let (header, head) = tide_bundle::read_header(&mut &bytes[..], 0).expect("own bundle parses");
    let body = bytes[head.len()..bytes.len() - 64].to_vec();
    (header, head, body)
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fixtures/bundles".into()),
    );
    std::fs::create_dir_all(&dir).expect("output folder");
    let alice = identity("alice");
    let bob = identity("bob");
    let carol = identity("carol");
    let mallory = identity("mallory");
    let fast = ArgonParams {
        m_kib: 1024,
        t: 1,
        p: 1,
    };
    let passphrase = b"correct horse battery staple".to_vec();
    let sender = Sender {
        identity: &alice,
        ack: [(alice.id(), 1)].into(),
        schema: 1,
    };
    let mut expected = Vec::new();

    let plain = write(
        &dir,
        "plain.tide",
        &sender,
        &WriteOptions::default(),
        &alice,
        false,
    );
    expected.push("plain.tide bob - ok");
    write(
        &dir,
        "passphrase.tide",
        &sender,
        &WriteOptions {
            passphrase: Some(passphrase.clone()),
            argon: fast,
            ..Default::default()
        },
        &alice,
        false,
    );
    expected.push("passphrase.tide - passphrase ok");
    expected.push("passphrase.tide - wrong-passphrase NoMatchingKey");
    let two = WriteOptions {
        encrypt_to: vec![bob.card("bob").box_key, carol.card("carol").box_key],
        ..Default::default()
    };
    let encrypted = write(&dir, "two-recipients.tide", &sender, &two, &alice, true);
    expected.push("two-recipients.tide bob - ok");
    expected.push("two-recipients.tide carol - ok");
    expected.push("two-recipients.tide mallory - NoMatchingKey");
    expected.push("two-recipients.tide - - NeedKey");

    // Three parts of the plain bundle.
    let whole = dir.join("parts-source.tide");
    std::fs::write(&whole, &plain).expect("write");
    let per = (plain.len() as u64).div_ceil(3) + 66;
    let parts = split(&whole, per, &dir.join("three")).expect("split");
    assert_eq!(parts.len(), 3);
    std::fs::remove_file(&whole).expect("remove");
    expected.push("three.*.tidepart bob - ok");

    // Failures.
    let (header, head, body) = split_file(&plain);
    let mut flipped_header = plain.clone();
    // Byte 33 starts the `created` varint (after preamble, flags, critical count,
    // sender and recipient tag); its low bit keeps the header well-formed.
    flipped_header[33] ^= 1;
    std::fs::write(dir.join("flipped-header-byte.tide"), &flipped_header).expect("write");
    expected.push("flipped-header-byte.tide bob - BadSignature");
    let mut flipped_body = plain.clone();
    flipped_body[head.len() + body.len() / 2] ^= 0x40;
    std::fs::write(dir.join("flipped-body-byte.tide"), &flipped_body).expect("write");
    expected.push("flipped-body-byte.tide bob - BadSignature");
    std::fs::write(
        dir.join("signed-by-another-key.tide"),
        signed(&head, &body, &mallory),
    )
    .expect("write");
    expected.push("signed-by-another-key.tide bob - BadSignature");
    std::fs::write(
        dir.join("truncated-signature.tide"),
        &plain[..plain.len() - 10],
    )
    .expect("write");
    expected.push("truncated-signature.tide bob - Truncated");

    let mut critical = header.clone();
    critical.critical = vec!["from-the-future".into()];
    std::fs::write(
        dir.join("unknown-critical.tide"),
        signed(&critical.encode(), &body, &alice),
    )
    .expect("write");
    expected.push("unknown-critical.tide bob - UnknownCritical");

    let mut huge = header.clone();
    huge.image_size = 1 << 40;
    std::fs::write(
        dir.join("image-over-limit.tide"),
        signed(&huge.encode(), &body, &alice),
    )
    .expect("write");
    expected.push("image-over-limit.tide bob - LimitExceeded");
    let mut argon = header.clone();
    argon.flags = tide_bundle::FLAG_ENCRYPTED;
    argon.nonce = Some([0; 16]);
    argon.stanzas = vec![Stanza::Passphrase {
        salt: [0; 16],
        m_kib: 1 << 30,
        t: 1,
        p: 1,
        wrapped: [0; 48],
    }];
    std::fs::write(
        dir.join("argon-over-limit.tide"),
        signed(&argon.encode(), &body, &alice),
    )
    .expect("write");
    expected.push("argon-over-limit.tide - passphrase LimitExceeded");

    // A decompression bomb: 64 MiB of zeros declared as a 4 KiB image, validly signed.
    let mut bomb_body = Vec::new();
    {
        let mut z = zstd::stream::write::Encoder::new(&mut bomb_body, 19).expect("zstd");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            z.write_all(&zeros).expect("zstd");
        }
        z.finish().expect("zstd");
    }
    let mut bomb = header.clone();
    bomb.image_size = 4096;
    bomb.body_size = bomb_body.len() as u64;
    std::fs::write(
        dir.join("decompression-bomb.tide"),
        signed(&bomb.encode(), &bomb_body, &alice),
    )
    .expect("write");
    expected.push("decompression-bomb.tide bob - BadSize");

    // The encrypted bundle with its final chunk removed, re-signed so only the
    // decryption can notice.
    let (eheader, _, ebody) = split_file(&encrypted);
    let chunk = 65536 + 16;
    assert!(ebody.len() > chunk, "the sample spans several chunks");
    let full = (ebody.len() - 1) / chunk * chunk;
    let mut cut = eheader.clone();
    cut.body_size = full as u64;
    std::fs::write(
        dir.join("missing-final-chunk.tide"),
        signed(&cut.encode(), &ebody[..full], &alice),
    )
    .expect("write");
    expected.push("missing-final-chunk.tide bob - Truncated");

    let mut keys = String::from(
        "# Published test identities: name, Ed25519 seed, X25519 secret (hex). Never use them.\n",
    );
    for (name, id) in [
        ("alice", &alice),
        ("bob", &bob),
        ("carol", &carol),
        ("mallory", &mallory),
    ] {
        let seed = blake3::derive_key(
            "tide test vector identity (public, never use)",
            name.as_bytes(),
        );
        keys.push_str(&format!(
            "{name} {} {}\n",
            hex(&seed),
            hex(&id.box_secret())
        ));
    }
    keys.push_str(&format!(
        "passphrase {}\n",
        String::from_utf8(passphrase).expect("ascii")
    ));
    std::fs::write(dir.join("keys.txt"), keys).expect("write");
    let mut e = String::from(
        "# file reader-identity passphrase(- none, passphrase, wrong-passphrase) expected-outcome\n",
    );
    for line in expected {
        e.push_str(line);
        e.push('\n');
    }
    std::fs::write(dir.join("expected.txt"), e).expect("write");
    println!("wrote vectors to {}", dir.display());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
