//! Reads every bundle test vector in `fixtures/bundles/` and checks the outcome that
//! `expected.txt` records for it (fixtures/README.md says how each vector was made).

use std::path::{Path, PathBuf};

use tide_bundle::{BundleError, ReadOptions, assemble, read_bundle};
use tide_core::{Card, SecretIdentity};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bundles")
}

fn parse_hex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).unwrap(), 16).unwrap();
    }
    out
}

fn outcome(e: &BundleError) -> &'static str {
    match e {
        BundleError::NotABundle => "NotABundle",
        BundleError::UnsupportedVersion(_) => "UnsupportedVersion",
        BundleError::Truncated(_) => "Truncated",
        BundleError::Malformed(_) => "Malformed",
        BundleError::UnknownFlags(_) => "UnknownFlags",
        BundleError::UnknownCritical(_) => "UnknownCritical",
        BundleError::LimitExceeded { .. } => "LimitExceeded",
        BundleError::UnknownSender(_) => "UnknownSender",
        BundleError::BadSignature => "BadSignature",
        BundleError::TrailingBytes => "TrailingBytes",
        BundleError::NoMatchingKey => "NoMatchingKey",
        BundleError::NeedKey => "NeedKey",
        BundleError::BadCiphertext => "BadCiphertext",
        BundleError::BadSize { .. } => "BadSize",
        BundleError::BadCompression(_) => "BadCompression",
        BundleError::BadImage(_) => "BadImage",
        BundleError::NotForThisReplica { .. } => "NotForThisReplica",
        BundleError::Parts(_) => "Parts",
        BundleError::MissingParts { .. } => "MissingParts",
        BundleError::Io(_) => "Io",
        BundleError::Sqlite(_) => "Sqlite",
        BundleError::Core(_) => "Core",
    }
}

#[test]
fn every_bundle_vector_gives_its_recorded_outcome() {
    let dir = fixtures();
    let mut identities = Vec::new();
    let mut passphrase = Vec::new();
    for line in std::fs::read_to_string(dir.join("keys.txt"))
        .unwrap()
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
    let known: Vec<Card> = identities.iter().map(|(n, s)| s.card(n)).collect();
    let alice = known.iter().find(|c| c.name == "alice").unwrap().clone();
    let mut checked = 0;
    for line in std::fs::read_to_string(dir.join("expected.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split(' ').collect();
        let (file, reader, pass, expected) = (f[0], f[1], f[2], f[3]);
        let options = ReadOptions {
            known: known.clone(),
            box_secret: identities
                .iter()
                .find(|(n, _)| n == reader)
                .map(|(_, s)| s.box_secret()),
            passphrase: match pass {
                "passphrase" => Some(passphrase.clone()),
                "wrong-passphrase" => Some(b"not it".to_vec()),
                _ => None,
            },
            image_cap: 0,
            temp_dir: None,
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = if let Some(prefix) = file.strip_suffix(".*.tidepart") {
            let mut parts: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{prefix}."))
                })
                .collect();
            parts.sort();
            parts.reverse(); // any order
            assemble(&parts, tmp.path()).unwrap()
        } else {
            dir.join(file)
        };
        let result = read_bundle(&mut std::fs::File::open(&path).unwrap(), &options);
        match (result, expected) {
            (Ok(bundle), "ok") => {
                let changes = bundle.changes().unwrap();
                assert_eq!(changes.len() as u64, bundle.header().changes, "{line}");
                for c in &changes {
                    c.verify(&alice.sign_key)
                        .unwrap_or_else(|e| panic!("{line}: inner change: {e}"));
                }
            }
            (Ok(_), want) => panic!("{line}: read fine, expected {want}"),
            (Err(e), want) => assert_eq!(outcome(&e), want, "{line}: {e}"),
        }
        checked += 1;
    }
    assert!(
        checked >= 17,
        "expected.txt lists every vector ({checked} checked)"
    );
}

#[test]
fn every_crash_input_is_refused_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/crashes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        // Each must return (an error, or nothing to import), never panic or hang.
        tide_bundle::fuzzing::read_any(&data);
        tide_bundle::fuzzing::open_body(&data);
        n += 1;
    }
    // Also the vectors themselves, through both entry points.
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        tide_bundle::fuzzing::read_any(&data);
        tide_bundle::fuzzing::open_body(&data);
        n += 1;
    }
    assert!(n > 0);
}
