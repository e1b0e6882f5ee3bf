//! Writes the change-format test vectors in `fixtures/changes/` (core/CHANGES.md says
//! what they mean, fixtures/README.md how each was made).
//!
//! `cargo run -p tide-core --example make_change_vectors -- fixtures/changes`
//!
//! Everything is fixed: the published test identities (`fixtures/bundles/keys.txt`),
//! the clocks, the values. Ed25519 signatures are deterministic, so re-running the maker
//! writes the same bytes (the one packed chunk also depends on the zstd library's
//! version). Before writing, the maker checks every vector with the real decoder and
//! verifier and stops if any outcome is not the one recorded.

use std::path::PathBuf;

use tide_core::change::{PACKING_RAW, PACKING_ZSTD, SIGNING_CONTEXT, unpack_chunk};
use tide_core::codec::{put_bytes, put_varint};
use tide_core::{
    CellWrite, Change, ChangeHead, ChangeId, ChunkRef, DecodeError, Lineage, Manifest, OpKind,
    ReplicaId, RowOp, SecretIdentity, SignedChange, SignedHead, TableOps, Value, VerifyError,
};

/// Milliseconds of 2026-11-22T00:00:00Z, the clock every vector starts from.
const MS: u64 = 1_795_305_600_000;

fn hlc(ms_after: u64, counter: u64) -> u64 {
    ((MS + ms_after) << 16) | counter
}

/// The HLC of bob's seq 2, the change that created the rows `update` edits: an hour
/// before alice's first change.
const BOB_2_HLC: u64 = (MS - 3_600_000) << 16;

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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic, incompressible bytes.
fn noise(label: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new_derive_key("tide change vector filler")
        .update(label.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn id(origin: ReplicaId, seq: u64) -> ChangeId {
    ChangeId { origin, seq }
}

fn cell(column: usize, value: Value, preds: Vec<ChangeId>) -> CellWrite {
    CellWrite {
        column,
        value,
        preds,
    }
}

fn insert(key: Vec<Value>, values: Vec<Value>) -> RowOp {
    RowOp {
        kind: OpKind::Insert,
        key,
        row_preds: vec![],
        lineage: None,
        cells: values
            .into_iter()
            .enumerate()
            .map(|(c, v)| cell(c, v, vec![]))
            .collect(),
    }
}

fn table(name: &str, keys: &[&str], columns: &[&str], rows: Vec<RowOp>) -> TableOps {
    TableOps {
        name: name.into(),
        key_columns: keys.iter().map(|c| c.to_string()).collect(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
    }
}

/// How a chunk file is stored: as signed, or packed as the image and the log may keep it.
#[derive(Clone)]
enum Stored {
    Raw(Vec<u8>),
    Packed(i64, Vec<u8>),
}

impl Stored {
    fn suffix(&self) -> String {
        match self {
            Stored::Raw(_) => String::new(),
            Stored::Packed(PACKING_ZSTD, _) => ".zst".into(),
            Stored::Packed(p, _) => format!(".packing{p}"),
        }
    }
}

struct Vector {
    name: String,
    /// How it was made (fixtures/README.md).
    how: String,
    head: Vec<u8>,
    sig: [u8; 64],
    chunks: Vec<Stored>,
    /// (verifying identity, outcome) pairs as `expected.txt` writes them.
    expected: Vec<(&'static str, String)>,
}

struct Maker {
    dir: PathBuf,
    ids: Vec<(&'static str, SecretIdentity)>,
    vectors: Vec<Vector>,
}

fn sign(head: &[u8], signer: &SecretIdentity) -> [u8; 64] {
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(blake3::hash(head).as_bytes());
    signer.sign(&msg)
}

fn raw(chunks: &[Vec<u8>]) -> Vec<Stored> {
    chunks.iter().cloned().map(Stored::Raw).collect()
}

impl Maker {
    fn key(&self, name: &str) -> [u8; 32] {
        let (n, s) = self
            .ids
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a known identity");
        s.card(n).sign_key
    }

    fn add(
        &mut self,
        name: &str,
        how: &str,
        head: Vec<u8>,
        sig: [u8; 64],
        chunks: Vec<Stored>,
        expected: &[(&'static str, &str)],
    ) {
        assert!(
            self.vectors.iter().all(|v| v.name != name),
            "{name} named twice"
        );
        self.vectors.push(Vector {
            name: name.into(),
            how: how.into(),
            head,
            sig,
            chunks,
            expected: expected.iter().map(|(k, o)| (*k, o.to_string())).collect(),
        });
    }

    /// A vector whose head is signed by alice, checked with alice's key.
    fn bad(&mut self, name: &str, how: &str, head: Vec<u8>, chunks: Vec<Stored>, outcome: &str) {
        let sig = sign(&head, &self.ids[0].1);
        self.add(name, how, head, sig, chunks, &[("alice", outcome)]);
    }

    /// A vector with one crafted chunk, named correctly by a head like `base`'s (its
    /// op count is `ops`), signed by alice.
    fn bad_chunk(
        &mut self,
        name: &str,
        how: &str,
        base: &ChangeHead,
        chunk: Vec<u8>,
        outcome: &str,
    ) {
        let manifest = Manifest {
            head: base.clone(),
            ops: 1,
            chunks: vec![ChunkRef {
                len: chunk.len(),
                hash: *blake3::hash(&chunk).as_bytes(),
            }],
        };
        self.bad(
            name,
            how,
            manifest.encode(),
            vec![Stored::Raw(chunk)],
            outcome,
        );
    }

    /// What the reference reader concludes (the procedure of fixtures/README.md).
    fn outcome(&self, v: &Vector, key: &[u8; 32]) -> (String, Option<Change>) {
        let signed = SignedHead::from_parts(v.head.clone(), v.sig);
        let head = match signed.verify(key) {
            Ok(h) => h,
            Err(e) => return (describe(&e), None),
        };
        let mut chunks = Vec::new();
        for (i, c) in v.chunks.iter().enumerate() {
            let len = head.chunks.get(i).map_or(0, |c| c.len);
            let (data, packing) = match c {
                Stored::Raw(d) => (d.clone(), PACKING_RAW),
                Stored::Packed(p, d) => (d.clone(), *p),
            };
            match unpack_chunk(data, packing, len) {
                Ok(c) => chunks.push(c),
                Err(e) => return (describe(&VerifyError::Decode(e)), None),
            }
        }
        match SignedChange::new(signed, chunks).verify(key) {
            Ok(c) => ("ok".into(), Some(c.change().clone())),
            Err(e) => (describe(&e), None),
        }
    }

    fn write(&self) {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).expect("output folder");
        // Stale vectors from an earlier run go first.
        for entry in std::fs::read_dir(dir).expect("read folder") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if [".head", ".sig", ".json", ".envelope"]
                .iter()
                .any(|s| name.ends_with(s))
                || name.contains(".chunk")
                || name == "expected.txt"
                || name == "identities.txt"
            {
                std::fs::remove_file(&path).expect("remove stale vector");
            }
        }
        let mut expected = String::from(
            "# vector verifying-identity outcome [field or version]\n\
             # outcome: ok, BadSignature, WrongKey, or the DecodeError variant inside\n\
             # VerifyError::Decode (Truncated, Malformed, UnknownVersion); the rest of the\n\
             # line is that variant's field name, or the version number.\n",
        );
        for v in &self.vectors {
            let path = |ext: &str| dir.join(format!("{}.{ext}", v.name));
            std::fs::write(path("head"), &v.head).expect("write");
            std::fs::write(path("sig"), v.sig).expect("write");
            for (i, c) in v.chunks.iter().enumerate() {
                let data = match c {
                    Stored::Raw(d) | Stored::Packed(_, d) => d,
                };
                std::fs::write(path(&format!("chunk{i}{}", c.suffix())), data).expect("write");
            }
            expected.push_str(&format!("# {}\n", v.how));
            let mut good = None;
            for (who, want) in &v.expected {
                let (got, change) = self.outcome(v, &self.key(who));
                assert_eq!(&got, want, "{}: checked with {who}", v.name);
                expected.push_str(&format!("{} {who} {want}\n", v.name));
                if change.is_some() {
                    good = change;
                }
            }
            if let Some(change) = good {
                let head = SignedHead::from_parts(v.head.clone(), v.sig);
                let manifest = head.manifest().expect("a good head");
                std::fs::write(path("json"), render(&change, &manifest, &head)).expect("write");
                let chunks = v
                    .chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match c {
                        Stored::Raw(d) => d.clone(),
                        Stored::Packed(p, d) => {
                            unpack_chunk(d.clone(), *p, manifest.chunks[i].len).expect("unpacks")
                        }
                    })
                    .collect();
                std::fs::write(path("envelope"), SignedChange::new(head, chunks).to_bytes())
                    .expect("write");
            }
        }
        std::fs::write(dir.join("expected.txt"), expected).expect("write");
        let mut ids = String::from(
            "# The published test identities of fixtures/bundles/keys.txt, public halves:\n\
             # name, Ed25519 public key, replica id (first 16 bytes of\n\
             # BLAKE3-KDF(\"tide 2026-11 replica id v1\", public key)), all hex.\n",
        );
        for (n, s) in &self.ids {
            let card = s.card(n);
            ids.push_str(&format!(
                "{n} {} {}\n",
                hex(&card.sign_key),
                card.id.to_hex()
            ));
        }
        std::fs::write(dir.join("identities.txt"), ids).expect("write");
    }
}

/// The outcome as `expected.txt` writes it.
fn describe(e: &VerifyError) -> String {
    match e {
        VerifyError::BadSignature => "BadSignature".into(),
        VerifyError::WrongKey => "WrongKey".into(),
        VerifyError::Decode(DecodeError::Truncated(f)) => format!("Truncated {f}"),
        VerifyError::Decode(DecodeError::Malformed(f)) => format!("Malformed {f}"),
        VerifyError::Decode(DecodeError::UnknownVersion(v)) => format!("UnknownVersion {v}"),
        other => panic!("an error the vectors do not know: {other:?}"),
    }
}

// The decoded form (`NAME.json`). tests/tests/engine/change_vectors.rs renders the same
// way and compares; fixtures/README.md describes the form.

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_bytes(kind: &str, b: &[u8], text: bool) -> String {
    if b.len() > 1024 {
        return format!(
            "{{\"type\": \"{kind}\", \"len\": {}, \"blake3\": \"{}\"}}",
            b.len(),
            hex(blake3::hash(b).as_bytes())
        );
    }
    let utf8 = match std::str::from_utf8(b) {
        Ok(s) if text => format!(", \"utf8\": {}", json_str(s)),
        _ => String::new(),
    };
    format!("{{\"type\": \"{kind}\", \"hex\": \"{}\"{utf8}}}", hex(b))
}

fn json_value(v: &Value) -> String {
    match v {
        Value::Null => "{\"type\": \"null\"}".into(),
        Value::Integer(i) => format!("{{\"type\": \"integer\", \"value\": \"{i}\"}}"),
        Value::Real(bits) => format!(
            "{{\"type\": \"real\", \"bits\": \"{bits:016x}\", \"approx\": \"{:?}\"}}",
            f64::from_bits(*bits)
        ),
        Value::Text(t) => json_bytes("text", t, true),
        Value::Blob(b) => json_bytes("blob", b, false),
    }
}

fn json_id(c: &ChangeId) -> String {
    format!(
        "{{\"origin\": \"{}\", \"seq\": \"{}\"}}",
        c.origin.to_hex(),
        c.seq
    )
}

fn json_list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(", "))
}

fn json_lines(items: Vec<String>, indent: &str) -> String {
    if items.is_empty() {
        return "[]".into();
    }
    let inner = format!(",\n{indent}  ");
    format!("[\n{indent}  {}\n{indent}]", items.join(&inner))
}

fn render(change: &Change, manifest: &Manifest, signed: &SignedHead) -> String {
    let h = &change.head;
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(signed.hash());
    let deps = h
        .deps
        .iter()
        .map(|(r, s)| format!("{{\"replica\": \"{}\", \"seq\": \"{s}\"}}", r.to_hex()))
        .collect();
    let chunks = manifest
        .chunks
        .iter()
        .map(|c| format!("{{\"len\": {}, \"hash\": \"{}\"}}", c.len, hex(&c.hash)))
        .collect();
    let tables = change
        .tables
        .iter()
        .map(|t| {
            let rows = t
                .rows
                .iter()
                .map(|r| {
                    let kind = match r.kind {
                        OpKind::Insert => "insert",
                        OpKind::Update => "update",
                        OpKind::Delete => "delete",
                    };
                    let lineage = match &r.lineage {
                        None => "null".into(),
                        Some(l) => format!(
                            "{{\"origin\": \"{}\", \"seq\": \"{}\", \"hlc\": \"{}\"}}",
                            l.change.origin.to_hex(),
                            l.change.seq,
                            l.hlc
                        ),
                    };
                    let cells = json_list(&r.cells, |c| {
                        format!(
                            "{{\"column\": {}, \"value\": {}, \"preds\": {}}}",
                            c.column,
                            json_value(&c.value),
                            json_list(&c.preds, json_id)
                        )
                    });
                    format!(
                        "{{\"kind\": \"{kind}\", \"key\": {}, \"row_preds\": {}, \"lineage\": {lineage}, \"cells\": {cells}}}",
                        json_list(&r.key, json_value),
                        json_list(&r.row_preds, json_id)
                    )
                })
                .collect();
            format!(
                "{{\n      \"name\": {},\n      \"key_columns\": {},\n      \"columns\": {},\n      \"rows\": {}\n    }}",
                json_str(&t.name),
                json_list(&t.key_columns, |c| json_str(c)),
                json_list(&t.columns, |c| json_str(c)),
                json_lines(rows, "      ")
            )
        })
        .collect();
    format!(
        "{{\n  \"version\": 3,\n  \"origin\": \"{}\",\n  \"seq\": \"{}\",\n  \"hlc\": \"{}\",\n  \"schema\": \"{}\",\n  \"prev\": \"{}\",\n  \"deps\": {},\n  \"ops\": \"{}\",\n  \"chunks\": {},\n  \"content_hash\": \"{}\",\n  \"signed_message\": \"{}\",\n  \"tables\": {}\n}}\n",
        h.origin.to_hex(),
        h.seq,
        h.hlc,
        h.schema,
        hex(&h.prev),
        json_lines(deps, "  "),
        manifest.ops,
        json_lines(chunks, "  "),
        hex(signed.hash()),
        hex(&msg),
        json_lines(tables, "  ")
    )
}

// Crafted chunks for the failure vectors: one table, one row, each part replaceable.

/// A cell as (column, encoded value, predecessors as (dep index, seq)).
type RawCell = (u64, Vec<u8>, Vec<(u64, u64)>);

#[derive(Clone)]
struct Raw {
    ntables: Option<Vec<u8>>,
    name: Vec<u8>,
    keys: Vec<Vec<u8>>,
    columns: Vec<Vec<u8>>,
    nrows: Option<Vec<u8>>,
    kind: u8,
    key: Vec<u8>,
    row_preds: Vec<(u64, u64)>,
    /// Replaces the row predecessors' encoding when set.
    row_preds_raw: Option<Vec<u8>>,
    lineage: Option<Vec<(u64, u64)>>,
    lineage_hlc: Option<Vec<u8>>,
    ncells: Option<Vec<u8>>,
    cells: Vec<RawCell>,
    trailing: Vec<u8>,
    cut: Option<usize>,
}

fn varint(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, v);
    out
}

fn value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode(&mut out);
    out
}

fn put_preds(out: &mut Vec<u8>, preds: &[(u64, u64)]) {
    put_varint(out, preds.len() as u64);
    for (dep, seq) in preds {
        put_varint(out, *dep);
        put_varint(out, *seq);
    }
}

impl Raw {
    /// One update of `notes` row 'n1'; `bob` and `carol` are their indexes in the
    /// head's deps.
    fn update(bob: u64, carol: u64) -> Raw {
        Raw {
            ntables: None,
            name: b"notes".to_vec(),
            keys: vec![b"id".to_vec()],
            columns: vec![b"title".to_vec(), b"body".to_vec(), b"stars".to_vec()],
            nrows: None,
            kind: 2,
            key: value(&Value::text("n1")),
            row_preds: vec![(bob, 2)],
            row_preds_raw: None,
            lineage: Some(vec![(bob, 2)]),
            lineage_hlc: None,
            ncells: None,
            cells: vec![
                (0, value(&Value::text("Title")), vec![(bob, 5), (carol, 3)]),
                (2, value(&Value::real(4.5)), vec![]),
            ],
            trailing: vec![],
            cut: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.ntables.clone().unwrap_or_else(|| varint(1));
        put_bytes(&mut out, &self.name);
        put_varint(&mut out, self.keys.len() as u64);
        for k in &self.keys {
            put_bytes(&mut out, k);
        }
        put_varint(&mut out, self.columns.len() as u64);
        for c in &self.columns {
            put_bytes(&mut out, c);
        }
        out.extend(self.nrows.clone().unwrap_or_else(|| varint(1)));
        out.push(self.kind);
        out.extend_from_slice(&self.key);
        match &self.row_preds_raw {
            Some(r) => out.extend_from_slice(r),
            None => put_preds(&mut out, &self.row_preds),
        }
        if let Some(l) = &self.lineage {
            put_preds(&mut out, l);
            out.extend(
                self.lineage_hlc
                    .clone()
                    .unwrap_or_else(|| varint(hlc(0, 0))),
            );
        }
        out.extend(
            self.ncells
                .clone()
                .unwrap_or_else(|| varint(self.cells.len() as u64)),
        );
        for (col, v, preds) in &self.cells {
            put_varint(&mut out, *col);
            out.extend_from_slice(v);
            put_preds(&mut out, preds);
        }
        out.extend_from_slice(&self.trailing);
        if let Some(n) = self.cut {
            out.truncate(n);
        }
        out
    }
}

/// Head bytes in pieces, for heads no valid encoder writes.
fn head_bytes(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fixtures/changes".into()),
    );
    let ids = vec![
        ("alice", identity("alice")),
        ("bob", identity("bob")),
        ("carol", identity("carol")),
        ("mallory", identity("mallory")),
    ];
    let alice = ids[0].1.id();
    let bob = ids[1].1.id();
    let carol = ids[2].1.id();
    let mut m = Maker {
        dir: dir.clone(),
        ids,
        vectors: Vec::new(),
    };
    let alice_secret = identity("alice");
    let mallory_secret = identity("mallory");

    // ---- Good vectors: alice's log, seq 1 to 6, each `prev` the hash of the one before.

    // 1. Every value type, one per row.
    let values = vec![
        Value::Null,
        Value::Integer(0),
        Value::Integer(1),
        Value::Integer(-1),
        Value::Integer(63),
        Value::Integer(-64),
        Value::Integer(64),
        Value::Integer(-65),
        Value::Integer(1_000_000_000_000),
        Value::Integer(i64::MAX),
        Value::Integer(i64::MIN),
        Value::real(0.0),
        Value::real(-0.0),
        Value::real(1.5),
        Value::real(0.1 + 0.2),
        Value::real(-1e300),
        Value::real(f64::from_bits(1)),
        Value::real(f64::INFINITY),
        Value::real(f64::NEG_INFINITY),
        Value::Real(0x7ff8_0000_0000_0000),
        Value::Real(0xfff8_0000_0000_0001),
        Value::text(""),
        Value::text("hello"),
        Value::text("h\u{e9}llo \u{2014} \u{65e5}\u{672c}\u{8a9e} \u{1f30a}"),
        Value::Text(vec![0xff, 0xfe, b'a', 0x00]),
        Value::Blob(vec![]),
        Value::Blob(vec![0x00, 0xff, 0x10]),
    ];
    let n_values = values.len() as i64;
    let values_change = Change {
        head: ChangeHead {
            origin: alice,
            seq: 1,
            hlc: hlc(0, 0),
            schema: 1,
            prev: [0; 32],
            deps: vec![],
        },
        tables: vec![table(
            "kinds",
            &["id"],
            &["v"],
            values
                .into_iter()
                .enumerate()
                .map(|(i, v)| insert(vec![Value::Integer(i as i64 + 1)], vec![v]))
                .collect(),
        )],
    };
    assert_eq!(values_change.tables[0].rows.len() as i64, n_values);
    let good = |m: &mut Maker, name: &str, how: &str, change: &Change, target: usize| {
        let signed = change.seal_with(&alice_secret, target);
        m.add(
            name,
            how,
            signed.head().bytes().to_vec(),
            *signed.head().signature(),
            raw(signed.chunks()),
            &[("alice", "ok")],
        );
        signed
    };
    let values_signed = good(
        &mut m,
        "values",
        "alice's seq 1: one insert per value type (NULL; integers 0, ±1, 63, -64, 64, -65, 10^12, i64 max and min; reals 0.0, -0.0, 1.5, 0.1+0.2, -1e300, the smallest subnormal, ±infinity, a quiet NaN, a negative NaN with payload 1; text empty, ASCII, non-ASCII, not UTF-8; blobs empty and 3 bytes)",
        &values_change,
        tide_core::change::CHUNK_TARGET,
    );

    // 2. Composite keys.
    let seq2 = Change {
        head: ChangeHead {
            origin: alice,
            seq: 2,
            hlc: hlc(1000, 0),
            schema: 1,
            prev: *values_signed.hash(),
            deps: vec![(alice, 1)],
        },
        tables: vec![
            table(
                "readings",
                &["station", "day", "probe"],
                &["celsius", "note"],
                vec![
                    insert(
                        vec![
                            Value::text("Z\u{fc}rich"),
                            Value::Integer(20_414),
                            Value::Blob(vec![0xa1, 0x07]),
                        ],
                        vec![Value::real(-3.25), Value::Null],
                    ),
                    insert(
                        vec![Value::text("Oslo"), Value::Integer(-1), Value::Blob(vec![])],
                        vec![Value::real(12.0), Value::text("calibrated")],
                    ),
                ],
            ),
            table(
                "tags",
                &["tag"],
                &[],
                vec![insert(vec![Value::text("\u{e9}t\u{e9}")], vec![])],
            ),
        ],
    };
    let s2 = good(
        &mut m,
        "composite-key",
        "alice's seq 2: inserts into a table with a three-column key (text, integer, blob) and into a table with no column besides its key",
        &seq2,
        tide_core::change::CHUNK_TARGET,
    );

    // 3. Updates with predecessors and lineage, and a re-created row.
    let mut deps3 = vec![(alice, 2), (bob, 7), (carol, 3)];
    deps3.sort();
    let seq3 = Change {
        head: ChangeHead {
            origin: alice,
            seq: 3,
            hlc: hlc(2000, 3),
            schema: 2,
            prev: *s2.hash(),
            deps: deps3.clone(),
        },
        tables: vec![table(
            "notes",
            &["id"],
            &["title", "body", "stars"],
            vec![
                RowOp {
                    kind: OpKind::Update,
                    key: vec![Value::text("n1")],
                    row_preds: vec![],
                    lineage: Some(Lineage {
                        change: id(bob, 2),
                        hlc: BOB_2_HLC,
                    }),
                    cells: vec![
                        cell(
                            0,
                            Value::text("Title, edited"),
                            vec![id(bob, 5), id(carol, 3)],
                        ),
                        cell(2, Value::Integer(5), vec![id(alice, 1)]),
                    ],
                },
                RowOp {
                    kind: OpKind::Update,
                    key: vec![Value::text("n2")],
                    row_preds: vec![id(bob, 2)],
                    lineage: Some(Lineage {
                        change: id(bob, 2),
                        hlc: BOB_2_HLC,
                    }),
                    cells: vec![cell(1, Value::Null, vec![id(bob, 2), id(carol, 1)])],
                },
                RowOp {
                    kind: OpKind::Insert,
                    key: vec![Value::text("n3")],
                    row_preds: vec![id(carol, 2)],
                    lineage: None,
                    cells: vec![
                        cell(0, Value::text("Back"), vec![id(carol, 1)]),
                        cell(1, Value::text("again"), vec![]),
                        cell(2, Value::Integer(0), vec![id(carol, 1)]),
                    ],
                },
            ],
        )],
    };
    let s3 = good(
        &mut m,
        "update",
        "alice's seq 3, deps alice:2 bob:7 carol:3: two updates (row and cell predecessors from bob, carol and alice; lineage bob:2) writing some columns, and an insert re-creating a row over carol's delete (row predecessor carol:2)",
        &seq3,
        tide_core::change::CHUNK_TARGET,
    );

    // 4. Deletes, with and without final values, in two tables.
    let mut deps4 = vec![(alice, 3), (bob, 7), (carol, 3)];
    deps4.sort();
    let seq4 = Change {
        head: ChangeHead {
            origin: alice,
            seq: 4,
            hlc: hlc(3000, 0),
            schema: 2,
            prev: *s3.hash(),
            deps: deps4.clone(),
        },
        tables: vec![
            table(
                "notes",
                &["id"],
                &["title", "body", "stars"],
                vec![
                    RowOp {
                        kind: OpKind::Delete,
                        key: vec![Value::text("n1")],
                        row_preds: vec![id(bob, 2), id(alice, 3)],
                        lineage: None,
                        cells: vec![cell(
                            1,
                            Value::text("last words before the delete"),
                            vec![id(bob, 6)],
                        )],
                    },
                    RowOp {
                        kind: OpKind::Delete,
                        key: vec![Value::text("n2")],
                        row_preds: vec![id(alice, 3)],
                        lineage: None,
                        cells: vec![],
                    },
                ],
            ),
            table(
                "tags",
                &["tag"],
                &[],
                vec![RowOp {
                    kind: OpKind::Delete,
                    key: vec![Value::text("\u{e9}t\u{e9}")],
                    row_preds: vec![id(alice, 2)],
                    lineage: None,
                    cells: vec![],
                }],
            ),
        ],
    };
    let s4 = good(
        &mut m,
        "delete",
        "alice's seq 4: a delete carrying the final value of the column written just before it, a plain delete, and a delete in a second table",
        &seq4,
        tide_core::change::CHUNK_TARGET,
    );

    // 5. Several chunks: a 256-byte chunk target.
    let seq5 = Change {
        head: ChangeHead {
            origin: alice,
            seq: 5,
            hlc: hlc(4000, 0),
            schema: 2,
            prev: *s4.hash(),
            deps: {
                let mut d = vec![(alice, 4), (bob, 7), (carol, 3)];
                d.sort();
                d
            },
        },
        tables: vec![
            table(
                "log",
                &["n"],
                &["line"],
                (0..24)
                    .map(|i| {
                        insert(
                            vec![Value::Integer(i)],
                            vec![Value::text(format!(
                                "line {i} of the log, some words to fill"
                            ))],
                        )
                    })
                    .collect(),
            ),
            table(
                "notes",
                &["id"],
                &["title", "body", "stars"],
                (0..3)
                    .map(|i| {
                        insert(
                            vec![Value::text(format!("m{i}"))],
                            // The middle row's blob is larger than the chunk target:
                            // its row makes a chunk of its own.
                            vec![
                                Value::text("t"),
                                Value::Blob(noise(
                                    &format!("m{i}"),
                                    if i == 1 { 20_000 } else { 100 },
                                )),
                                Value::Integer(i),
                            ],
                        )
                    })
                    .collect(),
            ),
        ],
    };
    let s5 = good(
        &mut m,
        "multi-chunk",
        "alice's seq 5, sealed with a 256-byte chunk target: 27 inserts in two tables over several chunks; table `log` goes on across chunk boundaries (named again at each chunk's start); one row holds a 20000-byte blob (a three-byte length), so its chunk ends far past the target (the target is checked only between rows)",
        &seq5,
        256,
    );
    assert!(s5.chunks().len() >= 4, "{} chunks", s5.chunks().len());

    // 6. No ops at all.
    let seq6 = Change {
        head: ChangeHead {
            origin: alice,
            seq: 6,
            hlc: hlc(5000, 0),
            schema: 2,
            prev: *s5.hash(),
            deps: {
                let mut d = vec![(alice, 5), (bob, 7), (carol, 3)];
                d.sort();
                d
            },
        },
        tables: vec![],
    };
    good(
        &mut m,
        "no-ops",
        "alice's seq 6: a head with no ops and no chunks (valid; tide's own writers never seal one)",
        &seq6,
        tide_core::change::CHUNK_TARGET,
    );

    // The values change with its chunk packed as the image and the log may keep it.
    let v_head = values_signed.head().bytes().to_vec();
    let v_sig = *values_signed.head().signature();
    let v_chunk = values_signed.chunks()[0].clone();
    let packed = zstd::bulk::compress(&v_chunk, 3).expect("zstd");
    m.add(
        "values-packed",
        "`values` with its chunk stored packed (packing 1: one zstd frame, level 3)",
        v_head.clone(),
        v_sig,
        vec![Stored::Packed(PACKING_ZSTD, packed.clone())],
        &[("alice", "ok")],
    );

    // ---- Signatures.
    let mut sig = v_sig;
    sig[0] ^= 0x01;
    m.add(
        "flipped-signature",
        "`values` with bit 0 of the signature's first byte flipped",
        v_head.clone(),
        sig,
        raw(std::slice::from_ref(&v_chunk)),
        &[("alice", "BadSignature")],
    );
    let mut head = v_head.clone();
    // The hlc varint starts after version (1 byte), origin (16) and seq (1).
    head[18] ^= 0x01;
    m.add(
        "flipped-head-byte",
        "`values` with bit 0 of head byte 18 (the first byte of `hlc`) flipped, signature unchanged",
        head,
        v_sig,
        raw(std::slice::from_ref(&v_chunk)),
        &[("alice", "BadSignature")],
    );
    m.add(
        "signed-by-mallory",
        "`values`' head (origin alice) signed by mallory",
        v_head.clone(),
        sign(&v_head, &mallory_secret),
        raw(std::slice::from_ref(&v_chunk)),
        &[("alice", "BadSignature"), ("mallory", "WrongKey")],
    );

    // ---- Heads (each validly signed by alice, so only the structure fails).
    let base1 = values_change.head.clone();
    let m1 = values_signed.head().manifest().expect("good");
    let enc = |h: &ChangeHead, ops: u64, chunks: &[ChunkRef]| {
        Manifest {
            head: h.clone(),
            ops,
            chunks: chunks.to_vec(),
        }
        .encode()
    };
    let chunks1 = m1.chunks.clone();
    let good1 = enc(&base1, m1.ops, &chunks1);
    assert_eq!(good1, v_head);
    let vc = || raw(std::slice::from_ref(&v_chunk));
    m.bad(
        "empty-head",
        "an empty head",
        vec![],
        vc(),
        "Truncated change version",
    );
    m.bad(
        "version-2",
        "`values`' head with version 2",
        head_bytes(&[&varint(2), &good1[1..]]),
        vc(),
        "UnknownVersion 2",
    );
    m.bad(
        "version-overlong",
        "`values`' head with version 3 written in two bytes (83 00)",
        head_bytes(&[&[0x83, 0x00], &good1[1..]]),
        vc(),
        "Malformed change version",
    );
    m.bad(
        "truncated-head",
        "`values`' head cut 10 bytes into `prev`",
        good1[..18 + varint(base1.hlc).len() + 1 + 10].to_vec(),
        vc(),
        "Truncated previous hash",
    );
    m.bad(
        "truncated-in-varint",
        "`values`' head cut after the first byte of `hlc`",
        good1[..19].to_vec(),
        vc(),
        "Truncated hlc",
    );
    let after_seq = 18;
    m.bad(
        "seq-zero",
        "`values`' head with seq 0",
        head_bytes(&[&good1[..17], &[0], &good1[after_seq..]]),
        vc(),
        "Malformed seq (must start at 1)",
    );
    m.bad(
        "seq-overlong",
        "`values`' head with seq 1 written in two bytes (81 00)",
        head_bytes(&[&good1[..17], &[0x81, 0x00], &good1[after_seq..]]),
        vc(),
        "Malformed seq",
    );
    let hlc_len = varint(base1.hlc).len();
    let after_hlc = after_seq + hlc_len;
    m.bad(
        "hlc-overflow",
        "`values`' head with an hlc of ten bytes whose last is 02 (2^64 and more)",
        head_bytes(&[
            &good1[..after_seq],
            &[0xff; 9],
            &[0x02],
            &good1[after_hlc..],
        ]),
        vc(),
        "Malformed hlc",
    );
    m.bad(
        "schema-eleven-bytes",
        "`values`' head with a schema epoch of eleven bytes (ff ×9, 81, 00): a tenth byte that is not the last",
        head_bytes(&[
            &good1[..after_hlc],
            &[0xff; 9],
            &[0x81, 0x00],
            &good1[after_hlc + 1..],
        ]),
        vc(),
        "Malformed schema epoch",
    );
    let mut h = base1.clone();
    h.prev = [7; 32];
    m.bad(
        "prev-at-seq-1",
        "`values`' head (seq 1) with `prev` 07 ×32 instead of zeros",
        enc(&h, m1.ops, &chunks1),
        vc(),
        "Malformed previous hash",
    );
    let s2m = s2.head().manifest().expect("good");
    let mut h = s2m.head.clone();
    h.prev = [0; 32];
    let c2 = raw(s2.chunks());
    m.bad(
        "prev-zero-at-seq-2",
        "`composite-key`'s head (seq 2) with `prev` all zeros",
        enc(&h, s2m.ops, &s2m.chunks),
        c2.clone(),
        "Malformed previous hash",
    );
    let after_prev = after_hlc + 1 + 32;
    m.bad(
        "dependency-count-beyond-head",
        "`values`' head with a dependency count of 1000, more than the bytes left",
        head_bytes(&[
            &good1[..after_prev],
            &varint(1000),
            &good1[after_prev + 1..],
        ]),
        vc(),
        "Malformed dependency count",
    );
    m.bad(
        "dependency-truncated",
        "`values`' head cut 5 bytes into its first dependency (count 1)",
        head_bytes(&[&good1[..after_prev], &varint(1), &[0x11; 5]]),
        vc(),
        "Truncated dependency",
    );
    let s3m = s3.head().manifest().expect("good");
    let c3 = raw(s3.chunks());
    let mut h = s3m.head.clone();
    h.deps.swap(0, 1);
    m.bad(
        "dependencies-unsorted",
        "`update`'s head with its first two dependencies swapped",
        enc(&h, s3m.ops, &s3m.chunks),
        c3.clone(),
        "Malformed dependencies (sorted, non-zero)",
    );
    let mut h = s3m.head.clone();
    h.deps.iter_mut().find(|(r, _)| *r == carol).unwrap().1 = 0;
    m.bad(
        "dependency-seq-zero",
        "`update`'s head with carol's dependency seq 0",
        enc(&h, s3m.ops, &s3m.chunks),
        c3.clone(),
        "Malformed dependencies (sorted, non-zero)",
    );
    let mut h = s3m.head.clone();
    let dup = h.deps[1];
    h.deps.insert(1, dup);
    m.bad(
        "dependency-twice",
        "`update`'s head with its second dependency listed twice",
        enc(&h, s3m.ops, &s3m.chunks),
        c3.clone(),
        "Malformed dependencies (sorted, non-zero)",
    );
    let mut h = s2m.head.clone();
    h.deps = vec![(bob, 1)];
    m.bad(
        "own-dependency-missing",
        "`composite-key`'s head (seq 2) with deps bob:1 instead of alice:1",
        enc(&h, s2m.ops, &s2m.chunks),
        c2.clone(),
        "Malformed dependencies (must include the origin's seq - 1)",
    );
    let mut h = base1.clone();
    h.deps = vec![(alice, 1)];
    m.bad(
        "own-dependency-at-seq-1",
        "`values`' head (seq 1) with deps alice:1",
        enc(&h, m1.ops, &chunks1),
        vc(),
        "Malformed dependencies (must include the origin's seq - 1)",
    );
    let after_deps = after_prev + 1;
    let ops_len = varint(m1.ops).len();
    let after_ops = after_deps + ops_len;
    m.bad(
        "chunk-count-beyond-head",
        "`values`' head with a chunk count of 100, more than the bytes left",
        head_bytes(&[&good1[..after_ops], &varint(100), &good1[after_ops + 1..]]),
        vc(),
        "Malformed chunk count",
    );
    let mut bad_ref = chunks1.clone();
    bad_ref[0].len = 0;
    m.bad(
        "chunk-length-zero",
        "`values`' head naming its chunk with length 0",
        enc(&base1, m1.ops, &bad_ref),
        vc(),
        "Malformed chunk length",
    );
    let mut over = good1[..after_ops + 1].to_vec();
    put_varint(&mut over, 1 << 32);
    over.extend_from_slice(&chunks1[0].hash);
    m.bad(
        "chunk-length-over-4gib",
        "`values`' head naming its chunk with length 2^32",
        over,
        vc(),
        "Malformed chunk length",
    );
    m.bad(
        "chunk-hash-truncated",
        "`values`' head without the last byte of its chunk hash",
        good1[..good1.len() - 1].to_vec(),
        vc(),
        "Truncated chunk hash",
    );
    m.bad(
        "head-trailing-bytes",
        "`values`' head with one byte (00) after it",
        head_bytes(&[&good1, &[0]]),
        vc(),
        "Malformed trailing bytes after change head",
    );

    // ---- Chunks against their head.
    let chunk_mismatch = "Malformed chunk (its length or hash is not the one its head gives)";
    let mut flipped = v_chunk.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    m.add(
        "flipped-chunk-byte",
        "`values` with bit 6 of its chunk's middle byte flipped",
        v_head.clone(),
        v_sig,
        raw(&[flipped]),
        &[("alice", chunk_mismatch)],
    );
    let h5 = s5.head().bytes().to_vec();
    let sig5 = *s5.head().signature();
    let mut fewer = s5.chunks().to_vec();
    fewer.pop();
    m.add(
        "chunk-missing",
        "`multi-chunk` without its last chunk",
        h5.clone(),
        sig5,
        raw(&fewer),
        &[("alice", "Malformed chunk count")],
    );
    let mut more = vec![v_chunk.clone()];
    more.push(v_chunk.clone());
    m.add(
        "chunk-extra",
        "`values` with its chunk given twice",
        v_head.clone(),
        v_sig,
        raw(&more),
        &[("alice", "Malformed chunk count")],
    );
    let mut swapped = s5.chunks().to_vec();
    swapped.swap(1, 2);
    m.add(
        "chunks-swapped",
        "`multi-chunk` with its second and third chunks swapped",
        h5.clone(),
        sig5,
        raw(&swapped),
        &[("alice", chunk_mismatch)],
    );
    m.bad(
        "op-count-wrong",
        "`values`' head claiming one op more than its chunk holds",
        enc(&base1, m1.ops + 1, &chunks1),
        vc(),
        "Malformed op count",
    );

    // ---- Inside a chunk: crafted chunks, each named by a head like `update`'s.
    let base3 = s3m.head.clone();
    let di = |r: ReplicaId| base3.deps.iter().position(|(x, _)| *x == r).unwrap() as u64;
    let (bi, ci) = (di(bob), di(carol));
    let row = Raw::update(bi, ci);
    // The crafted base itself must be valid.
    m.bad_chunk(
        "crafted",
        "the crafted chunk every chunk vector below alters: one table `notes` (key `id`; columns title, body, stars), one update of 'n1' with row predecessor bob:2, lineage bob:2, cells 0 and 2; named by a head like `update`'s with op count 1",
        &base3,
        row.bytes(),
        "ok",
    );
    let cases: Vec<(&str, &str, Raw, &str)> = vec![
        (
            "table-count-truncated",
            "a chunk that is one byte, 80 (a varint cut short)",
            Raw {
                cut: Some(1),
                ntables: Some(vec![0x80]),
                ..row.clone()
            },
            "Truncated table count",
        ),
        (
            "table-count-beyond-chunk",
            "a table count of 1000",
            Raw {
                ntables: Some(varint(1000)),
                ..row.clone()
            },
            "Malformed table count",
        ),
        (
            "table-name-not-utf8",
            "the table name is the bytes ff fe",
            Raw {
                name: vec![0xff, 0xfe],
                ..row.clone()
            },
            "Malformed table name",
        ),
        (
            "no-key-columns",
            "a table with no key column (and no key value in its row)",
            Raw {
                keys: vec![],
                key: vec![],
                ..row.clone()
            },
            "Malformed key columns",
        ),
        (
            "column-name-not-utf8",
            "the second column's name is the byte c3 (a cut UTF-8 sequence)",
            Raw {
                columns: vec![b"title".to_vec(), vec![0xc3], b"stars".to_vec()],
                ..row.clone()
            },
            "Malformed column",
        ),
        (
            "column-named-twice",
            "a column named `id`, like the key column",
            Raw {
                columns: vec![b"title".to_vec(), b"id".to_vec(), b"stars".to_vec()],
                ..row.clone()
            },
            "Malformed column names (one named twice)",
        ),
        (
            "row-count-beyond-chunk",
            "a row count of 1000",
            Raw {
                nrows: Some(varint(1000)),
                ..row.clone()
            },
            "Malformed row count",
        ),
        (
            "op-kind-zero",
            "op kind 0",
            Raw {
                kind: 0,
                ..row.clone()
            },
            "Malformed op kind",
        ),
        (
            "op-kind-four",
            "op kind 4",
            Raw {
                kind: 4,
                ..row.clone()
            },
            "Malformed op kind",
        ),
        (
            "unknown-value-tag",
            "the key value has tag 5",
            Raw {
                key: vec![5, 1],
                ..row.clone()
            },
            "Malformed value tag",
        ),
        (
            "integer-overlong",
            "the key is INTEGER 1 written 01 81 00 (its varint in two bytes)",
            Raw {
                key: vec![1, 0x81, 0x00],
                ..row.clone()
            },
            "Malformed integer",
        ),
        (
            "real-truncated",
            "the chunk ends 3 bytes into the REAL of cell 2",
            {
                let full = row.bytes();
                let real = value(&Value::real(4.5));
                let at = full
                    .windows(real.len())
                    .rposition(|w| w == real)
                    .expect("the real is there");
                Raw {
                    cut: Some(at + 1 + 3),
                    ..row.clone()
                }
            },
            "Truncated real",
        ),
        (
            "text-length-beyond-chunk",
            "the key is TEXT whose length (200) passes the chunk's end",
            Raw {
                key: [vec![3], varint(200), b"n1".to_vec()].concat(),
                ..row.clone()
            },
            "Malformed text",
        ),
        (
            "blob-length-beyond-chunk",
            "the key is BLOB whose length (200) passes the chunk's end",
            Raw {
                key: [vec![4], varint(200), b"n1".to_vec()].concat(),
                ..row.clone()
            },
            "Malformed blob",
        ),
        (
            "predecessor-count-beyond-chunk",
            "a row predecessor count of 1000",
            Raw {
                row_preds_raw: Some(varint(1000)),
                ..row.clone()
            },
            "Malformed predecessor count",
        ),
        (
            "predecessor-unknown-dependency",
            "a row predecessor naming dependency 3 of 3",
            Raw {
                row_preds: vec![(3, 1)],
                ..row.clone()
            },
            "Malformed predecessor",
        ),
        (
            "predecessor-seq-zero",
            "a row predecessor bob:0",
            Raw {
                row_preds: vec![(bi, 0)],
                ..row.clone()
            },
            "Malformed predecessor seq",
        ),
        (
            "predecessor-seq-beyond-dependency",
            "a cell predecessor carol:4 (the head's deps hold carol:3)",
            {
                let mut r = row.clone();
                r.cells[0].2 = vec![(ci, 4)];
                r
            },
            "Malformed predecessor seq",
        ),
        (
            "update-without-lineage",
            "the update's lineage is an empty predecessor list",
            Raw {
                lineage: Some(vec![]),
                ..row.clone()
            },
            "Malformed lineage",
        ),
        (
            "update-with-two-lineages",
            "the update's lineage lists two changes",
            Raw {
                lineage: Some(vec![(bi, 2), (ci, 1)]),
                ..row.clone()
            },
            "Malformed lineage",
        ),
        (
            "lineage-hlc-truncated",
            "the chunk ends inside the lineage's hlc varint",
            Raw {
                cells: vec![],
                ncells: Some(vec![]),
                lineage_hlc: Some(vec![0x80]),
                ..row.clone()
            },
            "Truncated lineage hlc",
        ),
        (
            "cell-count-beyond-chunk",
            "a cell count of 1000",
            Raw {
                ncells: Some(varint(1000)),
                ..row.clone()
            },
            "Malformed cell count",
        ),
        (
            "cell-column-out-of-range",
            "a cell for column 3 of a table with three columns",
            {
                let mut r = row.clone();
                r.cells[1].0 = 3;
                r
            },
            "Malformed cell column",
        ),
        (
            "cell-columns-out-of-order",
            "cells for columns 2 then 0",
            {
                let mut r = row.clone();
                r.cells.swap(0, 1);
                r
            },
            "Malformed cell column",
        ),
        (
            "cell-column-twice",
            "two cells for column 0",
            {
                let mut r = row.clone();
                r.cells[1].0 = 0;
                r
            },
            "Malformed cell column",
        ),
        (
            "chunk-trailing-bytes",
            "one byte (00) after the chunk's last table",
            Raw {
                trailing: vec![0],
                ..row.clone()
            },
            "Malformed trailing bytes after chunk",
        ),
    ];
    for (name, how, raw_chunk, outcome) in cases {
        let how = format!("the crafted chunk altered: {how}");
        m.bad_chunk(name, &how, &base3, raw_chunk.bytes(), outcome);
    }

    // ---- Packed chunks.
    let bad_pack = "Malformed chunk (its packed form is not one zstd frame of its length)";
    let mut trailing = packed.clone();
    trailing.extend_from_slice(b"unsigned");
    m.add(
        "packed-trailing-bytes",
        "`values-packed` with 8 bytes after its zstd frame",
        v_head.clone(),
        v_sig,
        vec![Stored::Packed(PACKING_ZSTD, trailing)],
        &[("alice", bad_pack)],
    );
    let mut longer = v_chunk.clone();
    longer.push(0);
    m.add(
        "packed-longer-than-chunk",
        "`values` with its chunk packed from the chunk's bytes and one more (00): one byte past the length its head gives",
        v_head.clone(),
        v_sig,
        vec![Stored::Packed(
            PACKING_ZSTD,
            zstd::bulk::compress(&longer, 3).expect("zstd"),
        )],
        &[("alice", bad_pack)],
    );
    m.add(
        "unknown-packing",
        "`values` with its chunk stored as signed but marked packing 2",
        v_head.clone(),
        v_sig,
        vec![Stored::Packed(2, v_chunk.clone())],
        &[("alice", "Malformed chunk packing")],
    );

    m.write();
    println!("wrote {} vectors to {}", m.vectors.len(), dir.display());
    // The table of fixtures/README.md.
    for v in &m.vectors {
        let outcomes: Vec<String> = v
            .expected
            .iter()
            .map(|(who, outcome)| {
                let shown = match outcome.split_once(' ') {
                    Some((variant, field)) => format!("`{variant}` `{field}`"),
                    None => format!("`{outcome}`"),
                };
                if v.expected.len() > 1 {
                    format!("{who}: {shown}")
                } else {
                    shown
                }
            })
            .collect();
        println!("| `{}` | {} | {} |", v.name, v.how, outcomes.join("; "));
    }
}
