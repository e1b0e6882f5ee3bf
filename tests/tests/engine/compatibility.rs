//! The README's compatibility promise, held to the code: every test vector ever
//! published under `fixtures/` is still there and this release reads each with the
//! outcome recorded for it; the set of vector files is exactly what the two
//! `expected.txt` files list; and the format versions the README's table gives are the
//! ones the code reads and writes, with the refusals it describes for other versions.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use tide_bundle::{BundleError, ReadOptions, assemble, read_bundle};
use tide_core::change::{CHANGE_VERSION, PACKING_RAW, PACKING_ZSTD, unpack_chunk};
use tide_core::{Card, DecodeError, SecretIdentity, SignedChange, SignedHead, VerifyError};
use tide_transports::mailbox::{DIR_NAME, Mailbox, MailboxOptions};
use tide_transports::{Carrier, TransportError};

/// Every bundle vector ever published, as `fixtures/bundles/expected.txt` names them. A
/// vector is published once it is here; it is never removed or made again.
const PUBLISHED_BUNDLES: &[&str] = &[
    "plain.tide",
    "passphrase.tide",
    "two-recipients.tide",
    "three.*.tidepart",
    "flipped-header-byte.tide",
    "flipped-body-byte.tide",
    "signed-by-another-key.tide",
    "truncated-signature.tide",
    "unknown-critical.tide",
    "image-over-limit.tide",
    "argon-over-limit.tide",
    "decompression-bomb.tide",
    "missing-final-chunk.tide",
    "not-a-bundle.tide",
    "version-1.tide",
    "version-3.tide",
    "header-over-limit.tide",
    "truncated-header.tide",
    "truncated-body.tide",
    "trailing-bytes.tide",
    "unknown-flags.tide",
    "unknown-stanza-kind.tide",
    "unknown-sender.tide",
    "wrong-change-count.tide",
    "two-frames.tide",
    "skippable-frames.tide",
    "garbage-after-frame.tide",
    "image-size-too-large.tide",
    "short-final-chunk.tide",
    "final-chunk-under-tag.tide",
    "acknowledgement.tide",
];

/// Every change vector ever published, as `fixtures/changes/expected.txt` names them.
const PUBLISHED_CHANGES: &[&str] = &[
    "values",
    "composite-key",
    "update",
    "delete",
    "multi-chunk",
    "no-ops",
    "values-packed",
    "flipped-signature",
    "flipped-head-byte",
    "signed-by-mallory",
    "empty-head",
    "version-2",
    "version-overlong",
    "truncated-head",
    "truncated-in-varint",
    "seq-zero",
    "seq-overlong",
    "hlc-overflow",
    "schema-eleven-bytes",
    "prev-at-seq-1",
    "prev-zero-at-seq-2",
    "dependency-count-beyond-head",
    "dependency-truncated",
    "dependencies-unsorted",
    "dependency-seq-zero",
    "dependency-twice",
    "own-dependency-missing",
    "own-dependency-at-seq-1",
    "chunk-count-beyond-head",
    "chunk-length-zero",
    "chunk-length-over-4gib",
    "chunk-hash-truncated",
    "head-trailing-bytes",
    "flipped-chunk-byte",
    "chunk-missing",
    "chunk-extra",
    "chunks-swapped",
    "op-count-wrong",
    "crafted",
    "table-count-truncated",
    "table-count-beyond-chunk",
    "table-name-not-utf8",
    "no-key-columns",
    "column-name-not-utf8",
    "column-named-twice",
    "row-count-beyond-chunk",
    "op-kind-zero",
    "op-kind-four",
    "unknown-value-tag",
    "integer-overlong",
    "real-truncated",
    "text-length-beyond-chunk",
    "blob-length-beyond-chunk",
    "predecessor-count-beyond-chunk",
    "predecessor-unknown-dependency",
    "predecessor-seq-zero",
    "predecessor-seq-beyond-dependency",
    "update-without-lineage",
    "update-with-two-lineages",
    "lineage-hlc-truncated",
    "cell-count-beyond-chunk",
    "cell-column-out-of-range",
    "cell-columns-out-of-order",
    "cell-column-twice",
    "chunk-trailing-bytes",
    "packed-trailing-bytes",
    "packed-longer-than-chunk",
    "unknown-packing",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The lines of an `expected.txt` that are not comments.
fn expected(dir: &str) -> Vec<String> {
    read(&format!("fixtures/{dir}/expected.txt"))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The files in a fixtures folder.
fn files_in(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(root().join("fixtures").join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect()
}

/// The names of the vectors an `expected.txt` lists, once each, in order.
fn names(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        let name = l.split(' ').next().unwrap().to_string();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn parse_hex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).unwrap(), 16).unwrap();
    }
    out
}

/// The published test identities and passphrase (fixtures/bundles/keys.txt).
fn keys() -> (Vec<(String, SecretIdentity)>, Vec<u8>) {
    let mut identities = Vec::new();
    let mut passphrase = Vec::new();
    for line in read("fixtures/bundles/keys.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] == "passphrase" {
            passphrase = line.as_bytes()["passphrase ".len()..].to_vec();
        } else {
            identities.push((
                f[0].to_string(),
                SecretIdentity::from_secrets(parse_hex(f[1]), parse_hex(f[2])),
            ));
        }
    }
    (identities, passphrase)
}

/// A bundle vector's files: `three.*.tidepart` stands for `three.1-of-N.tidepart` …
/// `three.N-of-N.tidepart`, all of them present and no other.
fn bundle_files(name: &str, present: &BTreeSet<String>) -> Vec<String> {
    let Some(prefix) = name.strip_suffix(".*.tidepart") else {
        return vec![name.to_string()];
    };
    let parts: Vec<&String> = present
        .iter()
        .filter(|f| f.starts_with(&format!("{prefix}.")) && f.ends_with(".tidepart"))
        .collect();
    let n = parts.len();
    assert!(n > 0, "{name}: no parts");
    let want: Vec<String> = (1..=n)
        .map(|i| format!("{prefix}.{i}-of-{n}.tidepart"))
        .collect();
    let found: Vec<String> = parts.into_iter().cloned().collect();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(found, sorted, "{name}: parts named 1-of-{n} … {n}-of-{n}");
    want
}

/// A bundle error as `expected.txt` writes it: the variant, then the field or version
/// it carries, if any.
fn bundle_outcome(e: &BundleError) -> String {
    let variant: String = format!("{e:?}")
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    let detail = match e {
        BundleError::Truncated(f) | BundleError::Malformed(f) => f.to_string(),
        BundleError::LimitExceeded { field, .. } => field.to_string(),
        BundleError::BadSize { what, .. } => what.to_string(),
        BundleError::UnsupportedVersion(v) => v.to_string(),
        _ => return variant,
    };
    format!("{variant} {detail}")
}

#[test]
fn every_published_bundle_vector_is_there_and_reads_as_recorded() {
    let lines = expected("bundles");
    let listed = names(&lines);
    assert_eq!(
        listed, PUBLISHED_BUNDLES,
        "fixtures/bundles/expected.txt lists exactly the published vectors"
    );

    // The folder holds exactly the files of the listed vectors.
    let present = files_in("bundles");
    let mut named: BTreeSet<String> = ["expected.txt", "keys.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in &listed {
        named.extend(bundle_files(name, &present));
    }
    assert_eq!(present, named, "fixtures/bundles/ against expected.txt");

    let (identities, passphrase) = keys();
    let known: Vec<Card> = identities.iter().map(|(n, s)| s.card(n)).collect();
    let alice = known.iter().find(|c| c.name == "alice").unwrap().sign_key;
    let dir = root().join("fixtures/bundles");
    for line in &lines {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let (name, reader, pass, want) = (f[0], f[1], f[2], f[3]);
        let options = ReadOptions {
            known: known.clone(),
            box_secret: identities
                .iter()
                .find(|(n, _)| n == reader)
                .map(|(_, s)| s.box_secret()),
            passphrase: match pass {
                "passphrase" => Some(passphrase.clone()),
                "wrong-passphrase" => Some(b"not it".to_vec()),
                "-" => None,
                other => panic!("{line}: passphrase {other:?}"),
            },
            ..Default::default()
        };
        let out = tempfile::tempdir().unwrap();
        let files = bundle_files(name, &present);
        let path = if files.len() > 1 || files[0].ends_with(".tidepart") {
            // Parts carry the bundle format version.
            for p in &files {
                let bytes = std::fs::read(dir.join(p)).unwrap();
                assert_eq!(&bytes[..8], &tide_bundle::PART_MAGIC, "{p}");
                assert_eq!(
                    u16::from_be_bytes([bytes[8], bytes[9]]),
                    tide_bundle::VERSION,
                    "{p}"
                );
            }
            let mut parts: Vec<PathBuf> = files.iter().map(|p| dir.join(p)).collect();
            parts.reverse();
            assemble(&parts, out.path()).unwrap()
        } else {
            dir.join(name)
        };
        let bytes = std::fs::read(&path).unwrap();
        let got = match read_bundle(&mut Cursor::new(&bytes), &options) {
            Ok(bundle) => {
                assert_eq!(&bytes[..8], &tide_bundle::MAGIC, "{line}");
                assert_eq!(
                    u16::from_be_bytes([bytes[8], bytes[9]]),
                    tide_bundle::VERSION,
                    "{line}: a bundle this release reads is of the version it promises"
                );
                let changes = bundle.changes().unwrap();
                assert_eq!(changes.len() as u64, bundle.header().changes, "{line}");
                for c in &changes {
                    c.verify(&alice)
                        .unwrap_or_else(|e| panic!("{line}: inner change: {e}"));
                }
                "ok".to_string()
            }
            Err(e) => bundle_outcome(&e),
        };
        assert_eq!(got, want, "{line}");
    }
}

/// A change vector's files (fixtures/README.md): head, signature, chunks in order with
/// their packing, and for good vectors an envelope and a decoded form.
fn change_files(name: &str, present: &BTreeSet<String>) -> (Vec<String>, Vec<(String, i64)>) {
    let mut files = vec![format!("{name}.head"), format!("{name}.sig")];
    let mut chunks = BTreeMap::new();
    for file in present {
        let Some(rest) = file.strip_prefix(&format!("{name}.")) else {
            continue;
        };
        if ["envelope", "json"].contains(&rest) {
            files.push(file.clone());
            continue;
        }
        let Some(rest) = rest.strip_prefix("chunk") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(index) = digits.parse::<usize>() else {
            continue;
        };
        let packing = match &rest[digits.len()..] {
            "" => PACKING_RAW,
            ".zst" => PACKING_ZSTD,
            other => match other.strip_prefix(".packing").and_then(|p| p.parse().ok()) {
                Some(p) => p,
                None => continue,
            },
        };
        assert!(
            chunks.insert(index, (file.clone(), packing)).is_none(),
            "{file}: chunk {index} twice"
        );
        files.push(file.clone());
    }
    assert!(
        chunks.keys().copied().eq(0..chunks.len()),
        "{name}: chunk files numbered 0, 1, 2 …"
    );
    (files, chunks.into_values().collect())
}

/// A change error as `fixtures/changes/expected.txt` writes it.
fn change_outcome(e: &VerifyError) -> String {
    match e {
        VerifyError::BadSignature => "BadSignature".into(),
        VerifyError::WrongKey => "WrongKey".into(),
        VerifyError::Decode(DecodeError::Truncated(f)) => format!("Truncated {f}"),
        VerifyError::Decode(DecodeError::Malformed(f)) => format!("Malformed {f}"),
        VerifyError::Decode(DecodeError::UnknownVersion(v)) => format!("UnknownVersion {v}"),
        other => format!("{other:?}"),
    }
}

#[test]
fn every_published_change_vector_is_there_and_reads_as_recorded() {
    let lines = expected("changes");
    let listed = names(&lines);
    assert_eq!(
        listed, PUBLISHED_CHANGES,
        "fixtures/changes/expected.txt lists exactly the published vectors"
    );

    let present = files_in("changes");
    let mut named: BTreeSet<String> = ["expected.txt", "identities.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in &listed {
        named.extend(change_files(name, &present).0);
    }
    assert_eq!(present, named, "fixtures/changes/ against expected.txt");

    let (identities, _) = keys();
    let dir = root().join("fixtures/changes");
    for line in &lines {
        let f: Vec<&str> = line.splitn(3, ' ').collect();
        let (name, who, want) = (f[0], f[1], f[2]);
        let key = identities
            .iter()
            .find(|(n, _)| n == who)
            .map(|(n, s)| s.card(n).sign_key)
            .unwrap_or_else(|| panic!("{line}: unknown identity"));
        let head = std::fs::read(dir.join(format!("{name}.head"))).unwrap();
        let sig: [u8; 64] = std::fs::read(dir.join(format!("{name}.sig")))
            .unwrap()
            .try_into()
            .unwrap();
        let signed = SignedHead::from_parts(head.clone(), sig);
        let got = (|| {
            let verified = signed.verify(&key)?;
            let mut chunks = Vec::new();
            for (i, (file, packing)) in change_files(name, &present).1.iter().enumerate() {
                let len = verified.chunks.get(i).map_or(0, |c| c.len);
                let data = std::fs::read(dir.join(file)).unwrap();
                chunks.push(unpack_chunk(data, *packing, len).map_err(VerifyError::Decode)?);
            }
            SignedChange::new(signed.clone(), chunks).verify(&key)?;
            Ok::<(), VerifyError>(())
        })();
        let got = match got {
            Ok(()) => {
                // A change this release reads is of the version it promises: the head's
                // first varint.
                assert_eq!(u64::from(head[0]), CHANGE_VERSION, "{line}");
                assert!(head[0] < 0x80, "{line}");
                "ok".to_string()
            }
            Err(e) => change_outcome(&e),
        };
        assert_eq!(got, want, "{line}");
    }
}

/// The README's `## Compatibility` section.
fn readme_section() -> String {
    let readme = read("README.md");
    let from = readme
        .find("\n## Compatibility\n")
        .expect("README.md has a Compatibility section");
    let rest = &readme[from + 1..];
    let to = rest[3..].find("\n## ").map_or(rest.len(), |at| at + 3);
    rest[..to].to_string()
}

/// The version the README's compatibility table gives for the format whose row starts
/// with `format`.
fn promised(section: &str, format: &str) -> u64 {
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let row = rows
        .iter()
        .find(|r| r[0].starts_with(&format!("{format}:")))
        .unwrap_or_else(|| panic!("no row for the {format} format in {rows:?}"));
    row[1]
        .parse()
        .unwrap_or_else(|_| panic!("{format}: version {:?}", row[1]))
}

#[test]
fn the_versions_the_readme_promises_are_the_ones_the_code_reads_and_writes() {
    let section = readme_section();
    let bundle = promised(&section, "bundle");
    let change = promised(&section, "change");
    let mailbox = promised(&section, "mailbox");

    // Bundles and parts.
    assert_eq!(bundle, u64::from(tide_bundle::VERSION));
    assert!(
        read("bundle/SPEC.md")
            .starts_with(&format!("# The `.tide` bundle format, version {bundle}\n")),
        "bundle/SPEC.md's title"
    );
    // Changes.
    assert_eq!(change, CHANGE_VERSION);
    assert!(
        read("core/CHANGES.md").starts_with(&format!("# The change format, version {change}\n")),
        "core/CHANGES.md's title"
    );
    // The mailbox: what a visit writes.
    let text = format!("tide mailbox {mailbox}");
    assert!(
        section.contains(&format!("`{text}`")),
        "the README names {text:?}"
    );
    assert!(
        read("transports/SPEC.md").contains(&format!("the text \"{text}\"")),
        "transports/SPEC.md §3.1 names {text:?}"
    );
    let c = tide_tests::Cluster::new(2, "CREATE TABLE t(id TEXT PRIMARY KEY);", &["t"]);
    let mut replicas = c.replicas;
    let folder = tempfile::tempdir().unwrap();
    Mailbox::new(folder.path(), MailboxOptions::default())
        .sync(&mut replicas[0])
        .unwrap();
    let written = std::fs::read_to_string(folder.path().join(DIR_NAME).join("VERSION")).unwrap();
    assert_eq!(written, format!("{text}\n"));
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
                out.insert(path, Vec::new());
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn other_versions_are_refused_with_what_to_do() {
    let dir = root().join("fixtures/bundles");
    let (identities, _) = keys();
    let options = ReadOptions {
        known: identities.iter().map(|(n, s)| s.card(n)).collect(),
        ..Default::default()
    };
    // An older and a newer bundle: refused at the preamble, and the message says what
    // to do.
    for (file, version, advice) in [
        ("version-1.tide", 1, "an older one must be exported again"),
        ("version-3.tide", 3, "a newer bundle needs a newer tide"),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let err = read_bundle(&mut Cursor::new(&bytes), &options).unwrap_err();
        assert!(
            matches!(err, BundleError::UnsupportedVersion(v) if v == version),
            "{file}: {err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("bundle format version {version}")),
            "{message}"
        );
        assert!(message.contains(advice), "{file}: {message}");
    }

    // Over a pipe, the first bundle of another version stops the exchange.
    let c = tide_tests::Cluster::new(1, "CREATE TABLE t(id TEXT PRIMARY KEY);", &["t"]);
    let mut replicas = c.replicas;
    let newer = std::fs::read(dir.join("version-3.tide")).unwrap();
    let mut incoming = (newer.len() as u64).to_be_bytes().to_vec();
    incoming.extend_from_slice(&newer);
    incoming.extend_from_slice(&0u64.to_be_bytes());
    let mut stream = tide_transports::stream::Stream::new(
        Cursor::new(incoming),
        Vec::new(),
        tide_transports::stream::Role::Responder,
    );
    let err = stream.sync(&mut replicas[0]).unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Bundle(BundleError::UnsupportedVersion(3))
        ),
        "{err}"
    );

    // A shared folder of this version holding another version's acknowledgement and
    // page: both stay and are reported.
    let two = tide_tests::Cluster::new(2, "CREATE TABLE t(id TEXT PRIMARY KEY);", &["t"]);
    let peer = two.replicas[1].id().unwrap();
    let mut pair = two.replicas;
    let folder = tempfile::tempdir().unwrap();
    let mut visit = Mailbox::new(folder.path(), MailboxOptions::default());
    visit.sync(&mut pair[0]).unwrap();
    let ack = visit
        .root()
        .join("ack")
        .join(format!("{}.tide", peer.to_hex()));
    std::fs::write(&ack, &newer).unwrap();
    let page = visit
        .root()
        .join("seg")
        .join(format!("{}.tide", blake3::hash(&newer).to_hex()));
    std::fs::write(&page, &newer).unwrap();
    let report = visit.sync(&mut pair[0]).unwrap();
    assert!(ack.exists(), "another version's acknowledgement stays");
    assert!(
        report.left.iter().any(
            |(file, why)| file.ends_with(&format!("{}.tide", peer.to_hex()))
                && why.contains("bundle format version 3")
        ),
        "{report:?}"
    );
    assert!(page.exists(), "another version's page stays");
    assert_eq!(report.garbage, 0, "{report:?}");
    assert!(
        report.left.iter().any(|(file, why)| file
            .ends_with(&format!("{}.tide", blake3::hash(&newer).to_hex()))
            && why.contains("bundle format version 3")),
        "{report:?}"
    );

    // A mailbox of another version: nothing in the folder is read, written or deleted.
    for other in ["tide mailbox 0\n", "tide mailbox 2\n"] {
        let folder = tempfile::tempdir().unwrap();
        let root = folder.path().join(DIR_NAME);
        for sub in ["seg", "ack", "tmp", "to"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("VERSION"), other).unwrap();
        std::fs::write(root.join("seg").join("page.tide"), b"not a page").unwrap();
        let before = snapshot(folder.path());
        for mode in [
            tide_transports::mailbox::Mode::Both,
            tide_transports::mailbox::Mode::ReceiveOnly,
            tide_transports::mailbox::Mode::SEND_ONLY,
        ] {
            let options = MailboxOptions {
                mode,
                ..MailboxOptions::default()
            };
            let err = Mailbox::new(folder.path(), options)
                .sync(&mut replicas[0])
                .unwrap_err();
            assert!(
                matches!(&err, TransportError::MailboxVersion { found, .. } if found == other.trim_end()),
                "{other:?} {mode:?}: {err}"
            );
            assert!(err.to_string().contains("another version"), "{err}");
            assert_eq!(snapshot(folder.path()), before, "{other:?} {mode:?}");
        }
    }
}
