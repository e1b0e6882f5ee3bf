//! Writes the bundle test vectors in `fixtures/bundles/` (see fixtures/README.md).
//!
//! `cargo run -p tide-bundle --example make_vectors -- fixtures/bundles`
//!
//! The identities are fixed, published test keys (never use them for anything real).
//! Encryption draws fresh file keys and nonces, so the bytes of a vector depend on the
//! run that made it. A published vector is never made again: the maker writes only the
//! vectors missing from the folder (vectors derived from another are derived from the
//! bytes already there), so re-running it changes no published file; delete a vector
//! first to make it anew. `expected.txt` records what every reader must conclude, and
//! `tests/tests/engine/compatibility.rs` lists every vector ever published.

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

/// The vector `name`: the bytes already in `dir` when it was published before, else
/// what `make` gives, written there.
fn publish(dir: &Path, name: &str, make: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    let path = dir.join(name);
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes;
    }
    let bytes = make();
    std::fs::write(&path, &bytes).expect("write file");
    bytes
}

/// A bundle from `sender` holding one change by alice (`changes: false`: none, an
/// acknowledgement).
fn bundle(
    sender: &Sender<'_>,
    options: &WriteOptions,
    alice: &SecretIdentity,
    large: bool,
    changes: bool,
) -> Vec<u8> {
    let change = if large {
        sample_change(alice, 100, 4000)
    } else {
        sample_change(alice, 20, 40)
    };
    let mut out = Vec::new();
    write_bundle(
        sender,
        |each| {
            if changes {
                each(change.head(), &mut &change)?;
            }
            Ok(())
        },
        options,
        &mut out,
    )
    .expect("write bundle");
    out
}

/// A bundle of `header` (its `body_size` set to the length of `body`) and `body`, signed
/// by `signer`.
fn resigned(header: &Header, body: &[u8], signer: &SecretIdentity) -> Vec<u8> {
    let mut h = header.clone();
    h.body_size = body.len() as u64;
    signed(&h.encode(), body, signer)
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

    let plain = publish(&dir, "plain.tide", || {
        bundle(&sender, &WriteOptions::default(), &alice, false, true)
    });
    expected.push("plain.tide bob - ok");
    publish(&dir, "passphrase.tide", || {
        let options = WriteOptions {
            passphrase: Some(passphrase.clone()),
            argon: fast,
            ..Default::default()
        };
        bundle(&sender, &options, &alice, false, true)
    });
    expected.push("passphrase.tide - passphrase ok");
    expected.push("passphrase.tide - wrong-passphrase NoMatchingKey");
    // A reader holding an X25519 secret but no passphrase (as every importing replica
    // does), and one holding nothing.
    expected.push("passphrase.tide bob - NoMatchingKey");
    expected.push("passphrase.tide - - NeedKey");
    let two = WriteOptions {
        encrypt_to: vec![bob.card("bob").box_key, carol.card("carol").box_key],
        ..Default::default()
    };
    let encrypted = publish(&dir, "two-recipients.tide", || {
        bundle(&sender, &two, &alice, true, true)
    });
    expected.push("two-recipients.tide bob - ok");
    expected.push("two-recipients.tide carol - ok");
    expected.push("two-recipients.tide mallory - NoMatchingKey");
    expected.push("two-recipients.tide - - NeedKey");

    // Three parts of the plain bundle.
    if !(1..=3).all(|i| dir.join(format!("three.{i}-of-3.tidepart")).exists()) {
        let whole = dir.join("parts-source.tide");
        std::fs::write(&whole, &plain).expect("write");
        let per = (plain.len() as u64).div_ceil(3) + 66;
        let parts = split(&whole, per, &dir.join("three")).expect("split");
        assert_eq!(parts.len(), 3);
        std::fs::remove_file(&whole).expect("remove");
    }
    expected.push("three.*.tidepart bob - ok");

    // Failures.
    let (header, head, body) = split_file(&plain);
    publish(&dir, "flipped-header-byte.tide", || {
        let mut flipped_header = plain.clone();
        // Byte 33 starts the `created` varint (after preamble, flags, critical count,
        // sender and recipient tag); its low bit keeps the header well-formed.
        flipped_header[33] ^= 1;
        flipped_header
    });
    expected.push("flipped-header-byte.tide bob - BadSignature");
    publish(&dir, "flipped-body-byte.tide", || {
        let mut flipped_body = plain.clone();
        flipped_body[head.len() + body.len() / 2] ^= 0x40;
        flipped_body
    });
    expected.push("flipped-body-byte.tide bob - BadSignature");
    publish(&dir, "signed-by-another-key.tide", || {
        signed(&head, &body, &mallory)
    });
    expected.push("signed-by-another-key.tide bob - BadSignature");
    publish(&dir, "truncated-signature.tide", || {
        plain[..plain.len() - 10].to_vec()
    });
    expected.push("truncated-signature.tide bob - Truncated signature");

    publish(&dir, "unknown-critical.tide", || {
        let mut critical = header.clone();
        critical.critical = vec!["from-the-future".into()];
        signed(&critical.encode(), &body, &alice)
    });
    expected.push("unknown-critical.tide bob - UnknownCritical");

    publish(&dir, "image-over-limit.tide", || {
        let mut huge = header.clone();
        huge.image_size = 1 << 40;
        signed(&huge.encode(), &body, &alice)
    });
    expected.push("image-over-limit.tide bob - LimitExceeded image size");
    publish(&dir, "argon-over-limit.tide", || {
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
        signed(&argon.encode(), &body, &alice)
    });
    expected.push("argon-over-limit.tide - passphrase LimitExceeded argon2 memory (KiB)");

    // A decompression bomb: 64 MiB of zeros declared as a 4 KiB image, validly signed.
    publish(&dir, "decompression-bomb.tide", || {
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
        resigned(&bomb, &bomb_body, &alice)
    });
    expected.push("decompression-bomb.tide bob - BadSize more bytes: a decompression bomb");

    // The encrypted bundle with its final chunk removed, re-signed so only the
    // decryption can notice.
    let (eheader, _, ebody) = split_file(&encrypted);
    let chunk = 65536 + 16;
    assert!(ebody.len() > chunk, "the sample spans several chunks");
    let full = (ebody.len() - 1) / chunk * chunk;
    publish(&dir, "missing-final-chunk.tide", || {
        resigned(&eheader, &ebody[..full], &alice)
    });
    expected.push("missing-final-chunk.tide bob - Truncated encrypted body (final chunk missing)");

    // Refused at the preamble: the bytes after it do not matter.
    publish(&dir, "not-a-bundle.tide", || {
        let mut seven_bit = plain.clone();
        seven_bit[0] &= 0x7f;
        seven_bit
    });
    expected.push("not-a-bundle.tide bob - NotABundle");
    for (name, version) in [("version-1.tide", 1u16), ("version-3.tide", 3)] {
        publish(&dir, name, || {
            let mut other = plain.clone();
            other[8..10].copy_from_slice(&version.to_be_bytes());
            other
        });
    }
    expected.push("version-1.tide bob - UnsupportedVersion 1");
    expected.push("version-3.tide bob - UnsupportedVersion 3");
    publish(&dir, "header-over-limit.tide", || {
        let mut long = plain.clone();
        long[10..14].copy_from_slice(&65537u32.to_be_bytes());
        long
    });
    expected.push("header-over-limit.tide bob - LimitExceeded header length");

    // Cut short, or with a byte too many.
    publish(&dir, "truncated-header.tide", || {
        plain[..14 + (head.len() - 14) / 2].to_vec()
    });
    expected.push("truncated-header.tide bob - Truncated header");
    publish(&dir, "truncated-body.tide", || {
        plain[..head.len() + body.len() / 2].to_vec()
    });
    expected.push("truncated-body.tide bob - Truncated body");
    publish(&dir, "trailing-bytes.tide", || {
        let mut more = plain.clone();
        more.push(0);
        more
    });
    expected.push("trailing-bytes.tide bob - TrailingBytes");

    // Headers a reader refuses although they are validly signed.
    publish(&dir, "unknown-flags.tide", || {
        let mut flags = header.clone();
        flags.flags = 2;
        resigned(&flags, &body, &alice)
    });
    expected.push("unknown-flags.tide bob - UnknownFlags");
    publish(&dir, "unknown-stanza-kind.tide", || {
        // The first of the two X25519 stanzas (81 bytes each, before the 16-byte
        // nonce) given kind 3.
        let mut h = eheader.encode();
        let at = h.len() - 16 - 2 * 81;
        assert_eq!(h[at], 1, "the first stanza's kind");
        h[at] = 3;
        signed(&h, &ebody, &alice)
    });
    expected.push("unknown-stanza-kind.tide bob - Malformed stanza kind");
    publish(&dir, "unknown-sender.tide", || {
        // Sent and signed by dave, whom no reader knows.
        let dave = identity("dave");
        let mut from = header.clone();
        from.sender = dave.id();
        resigned(&from, &body, &dave)
    });
    expected.push("unknown-sender.tide bob - UnknownSender");
    publish(&dir, "wrong-change-count.tide", || {
        let mut count = header.clone();
        count.changes = 2;
        resigned(&count, &body, &alice)
    });
    expected.push("wrong-change-count.tide bob - BadImage");

    // The body's zstd stream: what a reader accepts besides the one frame writers
    // write, and what it refuses.
    let image = zstd::decode_all(&body[..]).expect("own body decompresses");
    publish(&dir, "two-frames.tide", || {
        let half = image.len() / 2;
        let mut frames = zstd::encode_all(&image[..half], 3).expect("zstd");
        frames.extend(zstd::encode_all(&image[half..], 3).expect("zstd"));
        resigned(&header, &frames, &alice)
    });
    expected.push("two-frames.tide bob - ok");
    publish(&dir, "skippable-frames.tide", || {
        // Skippable frames (magic 0x184D2A50 and 0x184D2A5F, then a u32le length)
        // before and after the image's frame.
        let mut frames = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0];
        frames.extend_from_slice(b"tide");
        frames.extend_from_slice(&body);
        frames.extend_from_slice(&[0x5f, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]);
        resigned(&header, &frames, &alice)
    });
    expected.push("skippable-frames.tide bob - ok");
    publish(&dir, "garbage-after-frame.tide", || {
        let mut garbage = body.clone();
        garbage.extend_from_slice(&[0, 0, 0, 0]);
        resigned(&header, &garbage, &alice)
    });
    expected.push("garbage-after-frame.tide bob - BadCompression");
    publish(&dir, "image-size-too-large.tide", || {
        let mut larger = header.clone();
        larger.image_size += 1;
        resigned(&larger, &body, &alice)
    });
    expected.push("image-size-too-large.tide bob - BadSize fewer bytes");

    // The encrypted body's final chunk shortened by one byte (it no longer opens), and
    // cut to 15 bytes (no room for a tag: no final chunk at all).
    let last = ebody.len() - full;
    assert!(
        last >= 17,
        "the final chunk holds at least one byte and its tag"
    );
    publish(&dir, "short-final-chunk.tide", || {
        resigned(&eheader, &ebody[..ebody.len() - 1], &alice)
    });
    expected.push("short-final-chunk.tide bob - BadCiphertext");
    publish(&dir, "final-chunk-under-tag.tide", || {
        resigned(&eheader, &ebody[..full + 15], &alice)
    });
    expected.push("final-chunk-under-tag.tide bob - Truncated encrypted body (no final chunk)");

    // An acknowledgement: no changes, the sender's vector in its header.
    publish(&dir, "acknowledgement.tide", || {
        bundle(&sender, &WriteOptions::default(), &alice, false, false)
    });
    expected.push("acknowledgement.tide bob - ok");

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
        "# file reader-identity passphrase(- none, passphrase, wrong-passphrase) expected-outcome [field or version]\n",
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
