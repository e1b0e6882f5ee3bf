//! The change-format vectors in `fixtures/changes/` (core/CHANGES.md says what they
//! mean, fixtures/README.md how each was made), read with the real decoder and
//! verifier; and core/CHANGES.md's lists of errors checked against the code, so the
//! specification and the decoder cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tide_core::change::{PACKING_RAW, PACKING_ZSTD, SIGNING_CONTEXT, unpack_chunk};
use tide_core::{
    Change, ChangeId, DecodeError, Manifest, OpKind, ReplicaId, SecretIdentity, SignedChange,
    SignedHead, Value, VerifyError,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn vectors() -> PathBuf {
    root().join("fixtures/changes")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_hex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).unwrap(), 16).unwrap();
    }
    out
}

/// Every variant of the two error enums, as core/CHANGES.md names them. Adding a
/// variant to either enum fails `the_spec_lists_every_error_variant_the_code_has` until
/// it is added here, to [`outcome`] and to the specification.
const VARIANTS: &[&str] = &[
    "VerifyError::BadSignature",
    "VerifyError::WrongKey",
    "VerifyError::Decode",
    "DecodeError::Truncated",
    "DecodeError::Malformed",
    "DecodeError::UnknownVersion",
];

/// An outcome as `expected.txt` writes it. Both enums are `#[non_exhaustive]`, so a
/// match outside tide-core needs a catch-all arm; [`VARIANTS`] and the source check
/// stand in for exhaustiveness.
fn outcome(e: &VerifyError) -> String {
    match e {
        VerifyError::BadSignature => "BadSignature".into(),
        VerifyError::WrongKey => "WrongKey".into(),
        VerifyError::Decode(d) => match d {
            DecodeError::Truncated(f) => format!("Truncated {f}"),
            DecodeError::Malformed(f) => format!("Malformed {f}"),
            DecodeError::UnknownVersion(v) => format!("UnknownVersion {v}"),
            other => panic!("a DecodeError variant the specification does not list: {other:?}"),
        },
        other => panic!("a VerifyError variant the specification does not list: {other:?}"),
    }
}

// The decoded form of fixtures/README.md, rendered as the maker
// (core/examples/make_change_vectors.rs) renders it.

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
    format!(
        "[\n{indent}  {}\n{indent}]",
        items.join(&format!(",\n{indent}  "))
    )
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

/// The published test identities (fixtures/bundles/keys.txt): name → Ed25519 public key.
fn identities() -> BTreeMap<String, [u8; 32]> {
    let keys = std::fs::read_to_string(root().join("fixtures/bundles/keys.txt")).unwrap();
    let mut out = BTreeMap::new();
    for line in keys.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] == "passphrase" {
            continue;
        }
        let secret = SecretIdentity::from_secrets(parse_hex(f[1]), parse_hex(f[2]));
        out.insert(f[0].to_string(), secret.card(f[0]).sign_key);
    }
    out
}

/// One vector's files: head, signature, and chunks with their packing.
struct Files {
    head: Vec<u8>,
    sig: [u8; 64],
    chunks: Vec<(Vec<u8>, i64)>,
    names: Vec<String>,
}

fn files(dir: &Path, name: &str) -> Files {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let sig: [u8; 64] = read(&format!("{name}.sig"))
        .try_into()
        .unwrap_or_else(|_| panic!("{name}.sig is not 64 bytes"));
    let mut names = vec![format!("{name}.head"), format!("{name}.sig")];
    let mut chunks = BTreeMap::new();
    let prefix = format!("{name}.chunk");
    for entry in std::fs::read_dir(dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().to_string();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let index: usize = digits.parse().unwrap();
        let packing = match &rest[digits.len()..] {
            "" => PACKING_RAW,
            ".zst" => PACKING_ZSTD,
            other => other
                .strip_prefix(".packing")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{file}: an unknown chunk file suffix")),
        };
        assert!(
            chunks.insert(index, (read(&file), packing)).is_none(),
            "{file}: chunk {index} given twice"
        );
        names.push(file);
    }
    assert!(
        chunks.keys().copied().eq(0..chunks.len()),
        "{name}: chunk files are not numbered 0, 1, 2 …"
    );
    Files {
        head: read(&format!("{name}.head")),
        sig,
        chunks: chunks.into_values().collect(),
        names,
    }
}

/// Reads a vector as fixtures/README.md says: the head against the key, each chunk
/// unpacked with the length its head gives, then the whole change.
fn read(f: &Files, key: &[u8; 32]) -> Result<(Change, SignedChange), VerifyError> {
    let signed = SignedHead::from_parts(f.head.clone(), f.sig);
    let head = signed.verify(key)?;
    let mut chunks = Vec::new();
    for (i, (data, packing)) in f.chunks.iter().enumerate() {
        let len = head.chunks.get(i).map_or(0, |c| c.len);
        chunks.push(unpack_chunk(data.clone(), *packing, len).map_err(VerifyError::Decode)?);
    }
    let whole = SignedChange::new(signed, chunks);
    let verified = whole.verify(key)?;
    Ok((verified.change().clone(), whole))
}

/// How a reader that takes a change a chunk at a time (an import) concludes, when it is
/// given exactly the chunks the head names.
fn read_streaming(f: &Files, key: &[u8; 32]) -> Option<Result<(), VerifyError>> {
    let head = match SignedHead::from_parts(f.head.clone(), f.sig).verify(key) {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    if f.chunks.len() != head.chunks.len() {
        return None;
    }
    let mut ops = 0;
    for (i, (data, packing)) in f.chunks.iter().enumerate() {
        let chunk = match unpack_chunk(data.clone(), *packing, head.chunks[i].len) {
            Ok(c) => c,
            Err(e) => return Some(Err(VerifyError::Decode(e))),
        };
        match head.check_chunk(i, &chunk) {
            Ok(n) => ops += n,
            Err(e) => return Some(Err(VerifyError::Decode(e))),
        }
    }
    if ops != head.ops {
        return Some(Err(VerifyError::Decode(DecodeError::Malformed("op count"))));
    }
    Some(Ok(()))
}

#[test]
fn every_change_vector_gives_its_recorded_outcome() {
    let dir = vectors();
    let keys = identities();

    // The public halves and replica ids the vectors list match the published seeds.
    for line in std::fs::read_to_string(dir.join("identities.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split(' ').collect();
        let key = keys[f[0]];
        assert_eq!(hex(&key), f[1], "{line}");
        assert_eq!(ReplicaId::for_signing_key(&key).to_hex(), f[2], "{line}");
    }

    let mut used: BTreeSet<String> = ["expected.txt", "identities.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // (origin, seq) → content hashes of the good vectors, for the hash chain.
    let mut good: Vec<(ChangeId, [u8; 32], [u8; 32])> = Vec::new();
    let mut checked = 0;
    let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    for line in expected.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.splitn(3, ' ');
        let (name, who, want) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let key = keys
            .get(who)
            .unwrap_or_else(|| panic!("{line}: unknown identity"));
        let files = files(&dir, name);
        used.extend(files.names.iter().cloned());
        let result = read(&files, key);
        let got = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => outcome(e),
        };
        assert_eq!(got, want, "{line}");

        // A reader taking one chunk at a time concludes the same.
        if let Some(streaming) = read_streaming(&files, key) {
            let streamed = match &streaming {
                Ok(()) => "ok".to_string(),
                Err(e) => outcome(e),
            };
            assert_eq!(streamed, want, "{line}: read a chunk at a time");
        }

        if let Ok((change, whole)) = result {
            let manifest = whole.head().manifest().unwrap();
            let json = format!("{name}.json");
            let recorded =
                std::fs::read_to_string(dir.join(&json)).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(
                render(&change, &manifest, whole.head()),
                recorded,
                "{json}: the decoded change differs from its recorded form"
            );
            let envelope = format!("{name}.envelope");
            let bytes = std::fs::read(dir.join(&envelope)).unwrap();
            assert_eq!(whole.to_bytes(), bytes, "{envelope}");
            let (parsed, used_bytes) = SignedChange::from_bytes(&bytes).unwrap();
            assert_eq!((&parsed, used_bytes), (&whole, bytes.len()), "{envelope}");
            used.insert(json);
            used.insert(envelope);
            good.push((change.id(), change.head.prev, *whole.hash()));
        }
        checked += 1;
    }
    assert!(
        checked >= 60,
        "expected.txt lists every vector ({checked} checked)"
    );

    // Every file belongs to a vector.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            used.contains(&file),
            "{file} belongs to no vector in expected.txt"
        );
    }

    // The good vectors are one origin's hash chain: each `prev` is the content hash of
    // a good vector one seq before it.
    for (id, prev, _) in &good {
        if id.seq == 1 {
            assert_eq!(prev, &[0; 32]);
            continue;
        }
        assert!(
            good.iter()
                .any(|(before, _, hash)| before.origin == id.origin
                    && before.seq == id.seq - 1
                    && hash == prev),
            "{id}: no good vector is its previous change"
        );
    }
}

/// The text of core/CHANGES.md between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn section(spec: &str, name: &str) -> String {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let from = spec.find(&begin).unwrap_or_else(|| panic!("no {begin}")) + begin.len();
    let to = spec[from..]
        .find(&end)
        .unwrap_or_else(|| panic!("no {end}"))
        + from;
    spec[from..to].to_string()
}

/// Table rows of a section: the first cell's text between backticks, and the second
/// cell.
fn rows(section: &str) -> Vec<(String, String)> {
    section
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("| `")?;
            let (first, rest) = l.split_once("` |")?;
            let second = rest.split(" |").next().unwrap_or("").trim().to_string();
            Some((first.to_string(), second))
        })
        .collect()
}

/// The variants of `pub enum NAME` in a source file.
fn enum_variants(source: &str, name: &str) -> BTreeSet<String> {
    let start = source
        .find(&format!("pub enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name}"));
    let body = &source[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'))
        .map(|l| {
            let ident: String = l
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            format!("{name}::{ident}")
        })
        .collect()
}

#[test]
fn the_spec_lists_every_error_variant_the_code_has() {
    let spec = std::fs::read_to_string(root().join("core/CHANGES.md")).unwrap();
    let documented: BTreeSet<String> = rows(&section(&spec, "errors"))
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    let format = root().join("core/src/format");
    let mut in_code = enum_variants(
        &std::fs::read_to_string(format.join("codec.rs")).unwrap(),
        "DecodeError",
    );
    in_code.extend(enum_variants(
        &std::fs::read_to_string(format.join("change/signed.rs")).unwrap(),
        "VerifyError",
    ));
    let handled: BTreeSet<String> = VARIANTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(documented, in_code, "core/CHANGES.md against the code");
    assert_eq!(handled, in_code, "this test's VARIANTS against the code");
}

/// Which `DecodeError` variants a `Reader` call can give for the field it names.
fn reader_call_variants(method: &str) -> &'static [&'static str] {
    match method {
        // Fixed-size reads only run out.
        "byte" | "array" => &["Truncated"],
        // A varint, a count or a length-prefixed string: cut short, or not minimal, too
        // long, or (counts and lengths) larger than the bytes left.
        "varint" | "count" | "bytes" | "string" => &["Truncated", "Malformed"],
        "Malformed" => &["Malformed"],
        "Truncated" => &["Truncated"],
        _ => unreachable!(),
    }
}

/// Every field name the change decoder can report, with the variants it can come in:
/// every literal passed to a `Reader` call or to `Malformed`/`Truncated` in the source
/// that decodes values, heads, chunks, envelopes and packed chunks.
fn fields_in_code() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in [
        "value.rs",
        "change/mod.rs",
        "change/decode.rs",
        "change/encode.rs",
        "change/signed.rs",
    ] {
        let source = std::fs::read_to_string(root().join("core/src/format").join(file)).unwrap();
        // Unit tests are not the decoder.
        let source = match source.find("#[cfg(test)]\nmod tests {") {
            Some(at) => &source[..at],
            None => &source[..],
        };
        for method in [
            ".byte",
            ".array",
            ".varint",
            ".count",
            ".bytes",
            ".string",
            "Malformed",
            "Truncated",
        ] {
            for (at, _) in source.match_indices(method) {
                let mut rest = &source[at + method.len()..];
                if let Some(r) = rest.strip_prefix("::<") {
                    rest = &r[r.find('>').unwrap() + 1..];
                }
                // A call whose first argument is a string literal (the field names
                // hold no quotes).
                let Some(lit) = rest
                    .strip_prefix('(')
                    .and_then(|a| a.trim_start().strip_prefix('"'))
                else {
                    continue;
                };
                let close = lit.find('"').unwrap();
                let entry = out.entry(lit[..close].to_string()).or_default();
                for v in reader_call_variants(method.trim_start_matches('.')) {
                    entry.insert(v.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn the_spec_lists_every_field_an_error_can_name() {
    let spec = std::fs::read_to_string(root().join("core/CHANGES.md")).unwrap();
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (field, variants) in rows(&section(&spec, "fields")) {
        let set = variants
            .split(',')
            .map(|v| v.trim().trim_matches('`').to_string())
            .collect();
        assert!(
            documented.insert(field.clone(), set).is_none(),
            "{field} listed twice"
        );
    }
    let in_code = fields_in_code();
    assert!(in_code.len() >= 30, "the source scan found {in_code:?}");
    let differ: Vec<String> = documented
        .keys()
        .chain(in_code.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|f| documented.get(*f) != in_code.get(*f))
        .map(|f| {
            format!(
                "`{f}`: documented {:?}, in the code {:?}",
                documented.get(f),
                in_code.get(f)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "core/CHANGES.md §11.2 and the decoder disagree:\n{}",
        differ.join("\n")
    );

    // And every failure vector names a documented field in a documented variant.
    let expected = std::fs::read_to_string(vectors().join("expected.txt")).unwrap();
    for line in expected.lines().filter(|l| !l.starts_with('#')) {
        let outcome = line.splitn(3, ' ').nth(2).unwrap();
        let (variant, field) = outcome.split_once(' ').unwrap_or((outcome, ""));
        if variant == "Truncated" || variant == "Malformed" {
            assert!(
                documented.get(field).is_some_and(|v| v.contains(variant)),
                "{line}: not in core/CHANGES.md's list of fields"
            );
        }
    }
}
