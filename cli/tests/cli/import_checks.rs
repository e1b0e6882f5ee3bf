//! What `tide bundle import` and `tide bundle import --dry-run` refuse, through the real
//! binary: bundles validly signed by a known peer whose contents are wrong (a forged
//! change, a chunk that is not the one named, a header that lies about what it carries,
//! an image column of the wrong type), and parts given wrongly. A dry run refuses
//! exactly what the import refuses, with the same exit code, and neither changes a byte
//! of the database.

use std::path::Path;

use rusqlite::Connection;
use tide_bundle::Header;
use tide_core::{KeyStore, Replica, SecretIdentity};

use crate::common::{Run, Site};

impl Site {
    /// Replicas `a`, `b` and `c` in one folder, trusting each other, with `sites` tracked.
    fn trio() -> Site {
        let s = Site::new();
        let names = ["a", "b", "c"];
        for n in names {
            let schema = "CREATE TABLE sites(id TEXT PRIMARY KEY, status TEXT, n INTEGER)";
            s.replica_with(n, schema, &["sites"]);
        }
        s.trust_each_other(&names);
        s
    }

    fn bundle(&self, rows: usize, file: &str) -> Vec<u8> {
        let mut app = Connection::open(self.path("a.db")).unwrap();
        let tx = app.transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO sites VALUES (?1, 'planned', ?2)",
                rusqlite::params![format!("site-{i}"), i as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        self.ok(&[
            "--db", "a.db", "bundle", "export", "--peer", "b", "-o", file,
        ]);
        std::fs::read(self.path(file)).unwrap()
    }

    /// `a`'s signing identity, to sign bundles whose contents were altered: the
    /// signature over the bundle is valid, only what is inside is wrong.
    fn signer(&self) -> SecretIdentity {
        Replica::open(self.path("a.db"), KeyStore::at(self.path("keys")))
            .unwrap()
            .signing_identity()
            .unwrap()
    }

    /// Imports `file` into `b` with and without `--dry-run`: both must refuse it, with
    /// the same exit code, and leave `b.db` byte-identical. Returns the dry run.
    fn both_refuse(&self, file: &str) -> Run {
        let before = std::fs::read(self.path("b.db")).unwrap();
        let dry = self.tide(&["--db", "b.db", "bundle", "import", "--dry-run", file]);
        assert_eq!(
            std::fs::read(self.path("b.db")).unwrap(),
            before,
            "the dry run changed b.db"
        );
        assert!(
            !dry.stdout.contains("Verified") && !dry.stderr.contains("Verified"),
            "the dry run verified {file}:\n{}{}",
            dry.stdout,
            dry.stderr
        );
        let real = self.tide(&["--db", "b.db", "bundle", "import", file]);
        assert_eq!(
            std::fs::read(self.path("b.db")).unwrap(),
            before,
            "the import changed b.db"
        );
        assert_ne!(real.code, 0, "the import took {file}:\n{}", real.stdout);
        assert_eq!(
            dry.code, real.code,
            "the dry run and the import disagree on {file}:\ndry run: {}\nimport: {}",
            dry.stderr, real.stderr
        );
        dry
    }
}

/// Rebuilds `bundle` with its image edited by `edit` and its header by `header`, signed
/// by `signer` (the same sender, so the bundle's own signature verifies).
fn altered(
    bundle: &[u8],
    signer: &SecretIdentity,
    edit: impl FnOnce(&Connection),
    header: impl FnOnce(&mut Header),
) -> Vec<u8> {
    let (mut h, head) = tide_bundle::read_header(&mut &bundle[..], 0).unwrap();
    assert!(!h.encrypted(), "the sample bundle is plain");
    let body = &bundle[head.len()..bundle.len() - 64];
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.db");
    std::fs::write(&image, zstd::decode_all(body).unwrap()).unwrap();
    {
        let conn = Connection::open(&image).unwrap();
        edit(&conn);
    }
    let image = std::fs::read(&image).unwrap();
    let body = zstd::encode_all(&image[..], 1).unwrap();
    h.image_size = image.len() as u64;
    h.body_size = body.len() as u64;
    header(&mut h);
    let head = h.encode();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&head);
    hasher.update(&body);
    let mut message = tide_bundle::SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(hasher.finalize().as_bytes());
    let mut out = head;
    out.extend_from_slice(&body);
    out.extend_from_slice(&signer.sign(&message));
    out
}

/// A bundle from `a` to `b` of `rows` new rows, with its image edited by `sql`.
fn with_image_edit(s: &Site, rows: usize, sql: &str, file: &str) {
    let bundle = s.bundle(rows, "sample.tide");
    let bytes = altered(
        &bundle,
        &s.signer(),
        |c| c.execute_batch(sql).unwrap(),
        |_| {},
    );
    std::fs::write(s.path(file), bytes).unwrap();
}

/// A bundle from `a` to `b` with its header edited by `header`.
fn with_header_edit(s: &Site, rows: usize, header: impl FnOnce(&mut Header), file: &str) {
    let bundle = s.bundle(rows, "sample.tide");
    let bytes = altered(&bundle, &s.signer(), |_| {}, header);
    std::fs::write(s.path(file), bytes).unwrap();
}

#[test]
fn a_dry_run_of_a_sound_bundle_says_what_the_import_would_do_and_writes_nothing() {
    // Rebuilt without alteration, so what the other tests refuse is the alteration,
    // not the rebuilding.
    let s = Site::trio();
    with_image_edit(&s, 5, "SELECT 1", "same.tide");
    let dry_run = |says: &str| {
        let before = std::fs::read(s.path("b.db")).unwrap();
        let dry = s.ok(&["--db", "b.db", "bundle", "import", "--dry-run", "same.tide"]);
        assert!(dry.stderr.contains(says), "{}", dry.stderr);
        assert_eq!(
            std::fs::read(s.path("b.db")).unwrap(),
            before,
            "the dry run changed b.db"
        );
    };
    dry_run(
        "Verified: 1 change(s), 5 row op(s) from a: 1 new, 0 already here; every prerequisite is here. Nothing was imported (--dry-run).",
    );
    s.ok(&["--db", "b.db", "bundle", "import", "same.tide"]);
    let n: i64 = Connection::open(s.path("b.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM sites", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
    dry_run("Verified: 1 change(s), 5 row op(s) from a: 0 new, 1 already here;");
}

#[test]
fn dry_run_refuses_a_forged_change_signature() {
    let s = Site::trio();
    // The change's signature with one bit flipped; the bundle around it is validly signed.
    let bundle = s.bundle(5, "sample.tide");
    let bytes = altered(
        &bundle,
        &s.signer(),
        |c| {
            let mut sig: Vec<u8> = c
                .query_row("SELECT sig FROM changes", [], |r| r.get(0))
                .unwrap();
            sig[10] ^= 1;
            c.execute("UPDATE changes SET sig = ?1", [sig]).unwrap();
        },
        |_| {},
    );
    std::fs::write(s.path("forged.tide"), bytes).unwrap();
    let dry = s.both_refuse("forged.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(
        dry.stderr.contains("signature does not verify"),
        "{}",
        dry.stderr
    );
}

#[test]
fn dry_run_refuses_a_chunk_whose_hash_does_not_match() {
    let s = Site::trio();
    with_image_edit(
        &s,
        5,
        "UPDATE chunks SET data = zeroblob(length(data)), packing = 0",
        "chunk.tide",
    );
    let dry = s.both_refuse("chunk.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(
        dry.stderr
            .contains("its length or hash is not the one its head gives"),
        "{}",
        dry.stderr
    );
}

#[test]
fn dry_run_refuses_an_unknown_chunk_packing() {
    let s = Site::trio();
    with_image_edit(&s, 5, "UPDATE chunks SET packing = 7", "packing.tide");
    let dry = s.both_refuse("packing.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(dry.stderr.contains("chunk packing"), "{}", dry.stderr);
}

#[test]
fn dry_run_refuses_a_packed_chunk_over_its_bound() {
    let s = Site::trio();
    // Far longer than any chunk of a five-row change could be, packed or not.
    with_image_edit(
        &s,
        5,
        "UPDATE chunks SET data = zeroblob(4 << 20), packing = 1",
        "bound.tide",
    );
    let dry = s.both_refuse("bound.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(
        dry.stderr.contains("longer than the chunk"),
        "{}",
        dry.stderr
    );
}

#[test]
fn an_image_column_of_the_wrong_storage_type_is_rejected_input_not_an_internal_error() {
    let s = Site::trio();
    let bundle = s.bundle(5, "sample.tide");
    let signer = s.signer();
    for (name, sql) in [
        ("head-text", "UPDATE changes SET head = CAST(head AS TEXT)"),
        ("head-integer", "UPDATE changes SET head = 7"),
        ("sig-text", "UPDATE changes SET sig = CAST(sig AS TEXT)"),
        ("data-text", "UPDATE chunks SET data = CAST(data AS TEXT)"),
        ("data-real", "UPDATE chunks SET data = 1.5"),
        ("packing-real", "UPDATE chunks SET packing = 0.5"),
    ] {
        let file = format!("{name}.tide");
        let bytes = altered(&bundle, &signer, |c| c.execute_batch(sql).unwrap(), |_| {});
        std::fs::write(s.path(&file), bytes).unwrap();
        let dry = s.both_refuse(&file);
        assert_eq!(dry.code, 3, "{name}: {}", dry.stderr);
    }
}

#[test]
fn dry_run_refuses_a_header_that_lies_about_its_row_ops() {
    let s = Site::trio();
    with_header_edit(&s, 5, |h| h.ops = 99, "ops.tide");
    let dry = s.both_refuse("ops.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(
        dry.stderr
            .contains("`ops` is not the number of row ops the changes carry"),
        "{}",
        dry.stderr
    );
}

#[test]
fn dry_run_refuses_a_header_that_lies_about_its_prerequisites() {
    let s = Site::trio();
    let a = s.signer().id();
    with_header_edit(
        &s,
        5,
        |h| {
            h.requires.insert(a, 4);
        },
        "requires.tide",
    );
    let dry = s.both_refuse("requires.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(
        dry.stderr
            .contains("`requires` is not what the changes build on"),
        "{}",
        dry.stderr
    );
}

#[test]
fn dry_run_refuses_a_header_that_lies_about_what_it_provides() {
    let s = Site::trio();
    let a = s.signer().id();
    with_header_edit(
        &s,
        5,
        |h| {
            h.provides.insert(a, 40);
        },
        "provides.tide",
    );
    let dry = s.both_refuse("provides.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(
        dry.stderr
            .contains("`provides` is not where the changes end"),
        "{}",
        dry.stderr
    );
}

#[test]
fn dry_run_refuses_a_bundle_addressed_to_another_replica() {
    let s = Site::trio();
    s.bundle(5, "sample.tide");
    s.ok(&[
        "--db",
        "a.db",
        "bundle",
        "export",
        "--peer",
        "c",
        "-o",
        "for-c.tide",
    ]);
    let dry = s.both_refuse("for-c.tide");
    assert_eq!(dry.code, 3, "{}", dry.stderr);
    assert!(
        dry.stderr.contains("addressed to replica"),
        "{}",
        dry.stderr
    );
}

/// A bundle of `a`'s rows for `b`, split into parts of 16 KiB; their paths, in order.
fn parts(s: &Site) -> Vec<String> {
    let mut app = Connection::open(s.path("a.db")).unwrap();
    let tx = app.transaction().unwrap();
    for i in 0..300 {
        // Incompressible, so the bundle needs several parts.
        let mut body = [0u8; 256];
        blake3::Hasher::new()
            .update(format!("{i}").as_bytes())
            .finalize_xof()
            .fill(&mut body);
        tx.execute(
            "INSERT INTO sites VALUES (?1, ?2, ?3)",
            rusqlite::params![format!("site-{i}"), hex(&body), i],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let out = s.ok(&[
        "--db", "a.db", "bundle", "export", "--peer", "b", "--split", "16K", "-o", "big.tide",
    ]);
    let parts: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            Path::new(l)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(parts.len() >= 3, "{parts:?}");
    parts
}

#[test]
fn a_part_given_twice_is_refused() {
    let s = Site::trio();
    let parts = parts(&s);
    let before = std::fs::read(s.path("b.db")).unwrap();
    // The same file named twice: a usage mistake, exit 2. A copy of a part under another
    // name: two files claim one part, exit 3.
    std::fs::copy(s.path(&parts[1]), s.path("copy.tidepart")).unwrap();
    for (again, code, says) in [
        (parts[1].as_str(), 2, format!("{} is given twice", parts[1])),
        (
            "copy.tidepart",
            3,
            format!("part 2 of {} is given twice", parts.len()),
        ),
    ] {
        for dry in [true, false] {
            let mut args = vec!["--db", "b.db", "bundle", "import"];
            args.extend(parts.iter().map(String::as_str));
            args.push(again);
            if dry {
                args.push("--dry-run");
            }
            let r = s.tide(&args);
            assert_eq!(r.code, code, "{args:?}: {}{}", r.stdout, r.stderr);
            assert!(r.stderr.contains(&says), "{}", r.stderr);
            assert_eq!(std::fs::read(s.path("b.db")).unwrap(), before);
        }
    }
    // Each part once imports.
    let mut args = vec!["--db", "b.db", "bundle", "import"];
    args.extend(parts.iter().map(String::as_str));
    s.ok(&args);
}

#[test]
fn a_part_with_bytes_after_its_data_is_refused() {
    let s = Site::trio();
    let parts = parts(&s);
    let before = std::fs::read(s.path("b.db")).unwrap();
    let mut last = std::fs::read(s.path(&parts[0])).unwrap();
    last.extend_from_slice(b"riding along");
    std::fs::write(s.path(&parts[0]), last).unwrap();
    let mut args = vec!["--db", "b.db", "bundle", "import"];
    args.extend(parts.iter().map(String::as_str));
    for dry in [true, false] {
        let mut args = args.clone();
        if dry {
            args.push("--dry-run");
        }
        let r = s.tide(&args);
        assert_eq!(r.code, 3, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&format!("part 1 of {}", parts.len()))
                && r.stderr.contains("12 byte(s) after its data"),
            "{}",
            r.stderr
        );
        assert_eq!(std::fs::read(s.path("b.db")).unwrap(), before);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
