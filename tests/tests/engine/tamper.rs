//! The tamper campaign: well over a thousand mutations of valid bundles (bit flips
//! anywhere, truncation at and around every chunk boundary, insertions, swapped parts),
//! every one refused before any write. The receiving database is byte-identical after.

use std::io::Cursor;

use tide_bundle::{WriteOptions, assemble, export, import, read_header, split};
use tide_tests::Cluster;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn no_mutation_of_a_valid_bundle_gets_in() {
    let schema = "CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT);";
    let mut c = Cluster::new(2, schema, &["notes"]);
    // Incompressible rows so the encrypted body spans several 64 KiB chunks.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let app = c.app(0);
    for i in 0..120 {
        let body: String = (0..3000)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect();
        app.execute(
            "INSERT INTO notes VALUES (?1, ?2)",
            rusqlite::params![format!("n{i}"), body],
        )
        .unwrap();
    }
    let since = c.replicas[1].version_vector().unwrap();
    let r1 = c.replicas[1].card().unwrap();
    let mut plain = Vec::new();
    export(
        &mut c.replicas[0],
        &since,
        &WriteOptions::default(),
        &mut plain,
    )
    .unwrap();
    let mut encrypted = Vec::new();
    let options = WriteOptions {
        encrypt_to: vec![r1.box_key],
        ..Default::default()
    };
    export(&mut c.replicas[0], &since, &options, &mut encrypted).unwrap();
    let head_len = read_header(&mut Cursor::new(&encrypted), 0)
        .unwrap()
        .1
        .len();
    let chunks = (encrypted.len() - head_len - 64).div_ceil(65552);
    assert!(chunks >= 3, "the encrypted body spans {chunks} chunks");

    let db_before = std::fs::read(c.path(1)).unwrap();
    let hash_before = c.replicas[1].state_hash().unwrap();
    let tried = std::cell::Cell::new(0usize);
    let refuse = |c: &mut Cluster, bytes: &[u8], what: &str| {
        let result = import(&mut c.replicas[1], &mut Cursor::new(bytes), None);
        assert!(result.is_err(), "{what} was accepted");
        tried.set(tried.get() + 1);
    };

    // Bit flips anywhere: header, body, signature.
    for (bundle, flips) in [(&encrypted, 700), (&plain, 200)] {
        for _ in 0..flips {
            let mut m = bundle.clone();
            let at = rng.below(m.len());
            m[at] ^= 1 << rng.below(8);
            refuse(&mut c, &m, &format!("a bit flip at byte {at}"));
        }
    }
    // Truncation everywhere in the header, and at and around every chunk boundary.
    for cut in 0..head_len + 2 {
        refuse(&mut c, &encrypted[..cut], &format!("truncation at {cut}"));
    }
    for k in 0..=chunks {
        for d in -3i64..=3 {
            let cut = (head_len as i64 + (k * 65552) as i64 + d)
                .clamp(0, encrypted.len() as i64 - 1) as usize;
            refuse(
                &mut c,
                &encrypted[..cut],
                &format!("truncation at {cut} (chunk {k})"),
            );
        }
    }
    for cut in encrypted.len() - 66..encrypted.len() {
        refuse(
            &mut c,
            &encrypted[..cut],
            &format!("truncation at {cut} (signature)"),
        );
    }
    // Insertions and an extra byte at the end.
    for _ in 0..100 {
        let mut m = encrypted.clone();
        let at = rng.below(m.len() + 1);
        m.insert(at, rng.next() as u8);
        refuse(&mut c, &m, &format!("an inserted byte at {at}"));
    }
    // Swapped parts: two parts' data exchanged, parts of two bundles mixed, a part altered.
    let dir = tempfile::tempdir().unwrap();
    for (name, bundle) in [("p", &plain), ("e", &encrypted)] {
        std::fs::write(dir.path().join(name), bundle).unwrap();
    }
    let p = split(
        &dir.path().join("p"),
        (plain.len() / 3 + 200) as u64,
        &dir.path().join("p"),
    )
    .unwrap();
    let e = split(
        &dir.path().join("e"),
        (encrypted.len() / 3 + 200) as u64,
        &dir.path().join("e"),
    )
    .unwrap();
    let data_at = 66;
    let swap = |a: &std::path::Path, b: &std::path::Path| {
        let (mut x, mut y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        let n = x.len().min(y.len());
        x[data_at..n].swap_with_slice(&mut y[data_at..n]);
        std::fs::write(a, x).unwrap();
        std::fs::write(b, y).unwrap();
    };
    let sets: Vec<Vec<std::path::PathBuf>> = vec![
        vec![p[0].clone(), e[1].clone(), p[2].clone()],
        vec![e[0].clone(), e[1].clone()],
    ];
    for set in &sets {
        let out = tempfile::tempdir().unwrap();
        assert!(
            assemble(set, out.path()).is_err(),
            "mixed or missing parts were assembled"
        );
        tried.set(tried.get() + 1);
    }
    swap(&p[0], &p[1]);
    let out = tempfile::tempdir().unwrap();
    match assemble(&p, out.path()) {
        Err(_) => tried.set(tried.get() + 1),
        Ok(joined) => refuse(&mut c, &std::fs::read(joined).unwrap(), "swapped part data"),
    }

    let tried = tried.get();
    assert!(tried >= 1000, "only {tried} mutations tried");
    assert_eq!(c.replicas[1].state_hash().unwrap(), hash_before);
    assert_eq!(
        std::fs::read(c.path(1)).unwrap(),
        db_before,
        "not one byte of the database changed"
    );
    // And the untouched bundle still imports.
    import(&mut c.replicas[1], &mut Cursor::new(&encrypted), None).unwrap();
}
