//! bundle/SPEC.md §10 against the code: every `BundleError` variant the source declares
//! is listed in the specification's table of errors and nothing else is, and every
//! field name an error can carry is listed with the variants it comes in, so the
//! specification and the reader cannot drift apart. Then the rules of the specification
//! that no vector in `fixtures/bundles/` shows, checked on bundles made here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use tide_bundle::{BundleError, Header, WriteOptions, assemble, export, import, split};
use tide_tests::{Cluster, query_one};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of bundle/SPEC.md between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
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

/// A table cell's code span: `` `x` `` or ``` `` `x` y `` ```, without its backticks.
fn code(cell: &str) -> Option<String> {
    let cell = cell.trim();
    if let Some(inner) = cell.strip_prefix("`` ").and_then(|c| c.strip_suffix(" ``")) {
        return Some(inner.to_string());
    }
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then(|| inner.to_string())
}

/// The body rows of a Markdown table: its cells, trimmed (the header row and the rule
/// under it are left out).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// `source` without comments and with every string literal emptied (`""`), then
/// without attributes (`#[…]`): what is left of an enum is its variants and their
/// fields.
fn code_only(source: &str) -> String {
    let mut out = String::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    let mut plain = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '#' && chars.peek() == Some(&'[') {
            let mut depth = 0;
            for c in chars.by_ref() {
                match c {
                    '[' => depth += 1,
                    ']' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The variants of `pub enum NAME` in a source file, unit, tuple and struct variants
/// alike (the enum may be `#[non_exhaustive]`, so a match in another crate cannot
/// stand for this).
fn enum_variants(source: &str, name: &str) -> Vec<String> {
    let code = code_only(source);
    let start = code
        .find(&format!("pub enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name}"));
    let body = &code[start + code[start..].find('{').unwrap() + 1..];
    let mut variants = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in body.chars() {
        match c {
            '{' | '(' => depth += 1,
            ')' => depth -= 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                variants.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    variants.push(item);
    variants
        .iter()
        .map(|v| {
            v.trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|v| !v.is_empty())
        .collect()
}

#[test]
fn the_spec_lists_every_error_variant_the_code_has() {
    let spec = read("bundle/SPEC.md");
    let mut documented = BTreeSet::new();
    for row in rows(&section(&spec, "bundle-errors")) {
        let variant = code(&row[0]).unwrap_or_else(|| panic!("{row:?}: no variant"));
        assert!(
            row.len() == 2 && row[1].len() > 20,
            "{variant}: the row says when a reader returns it"
        );
        assert!(documented.insert(variant.clone()), "{variant} listed twice");
    }
    let declared = enum_variants(&read("bundle/src/error.rs"), "BundleError");
    let in_code: BTreeSet<String> = declared.iter().cloned().collect();
    assert_eq!(in_code.len(), declared.len(), "a variant declared twice");
    assert!(in_code.len() >= 20, "the source scan found {in_code:?}");
    let missing: Vec<_> = in_code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "bundle/SPEC.md §10.1 against bundle/src/error.rs: not in the spec {missing:?}, not in the code {extra:?}"
    );
}

/// Which variants a call naming a field can give: the header's reader turns running
/// out of header bytes and a bad varint into `Malformed`, and a bounded count or a
/// vector can also be over its limit.
fn call_variants(call: &str) -> &'static [&'static str] {
    match call {
        ".varint(" | ".byte(" | ".array(" | ".take(" | "BundleError::Malformed(" => &["Malformed"],
        ".bounded(" | ".vector(" => &["Malformed", "LimitExceeded"],
        "read_exact_or(" | "BundleError::Truncated(" => &["Truncated"],
        "field: " => &["LimitExceeded"],
        "what: " => &["BadSize"],
        _ => unreachable!(),
    }
}

/// The arguments of the call whose `(` ends at `rest`'s start, split at its top-level
/// commas.
fn arguments(rest: &str) -> Vec<String> {
    let mut args = vec![String::new()];
    let mut depth = 0;
    let mut in_string = false;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if in_string {
            args.last_mut().unwrap().push(c);
            match c {
                '\\' => args.last_mut().unwrap().extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                args.push(String::new());
                continue;
            }
            _ => {}
        }
        args.last_mut().unwrap().push(c);
    }
    args.into_iter().map(|a| a.trim().to_string()).collect()
}

/// A string literal's content, when `arg` is one.
fn literal(arg: &str) -> Option<String> {
    let inner = arg.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('"') && !inner.contains('\\')).then(|| inner.to_string())
}

/// Every field name the bundle code can put in a `Truncated`, `Malformed`,
/// `LimitExceeded` or `BadSize`, with the variants it can come in: each literal passed
/// to a header reader call, to `read_exact_or`, as the first argument of
/// `BundleError::Truncated` or `BundleError::Malformed`, or as a `field` or `what`.
fn fields_in_code() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let dir = root().join("bundle/src");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        // Unit tests are not the reader.
        let source = match source.find("\n#[cfg(test)]\nmod ") {
            Some(at) => &source[..at],
            None => &source[..],
        };
        for call in [
            ".varint(",
            ".byte(",
            ".array(",
            ".take(",
            ".bounded(",
            ".vector(",
            "read_exact_or(",
            "BundleError::Truncated(",
            "BundleError::Malformed(",
            "field: ",
            "what: ",
        ] {
            for (at, _) in source.match_indices(call) {
                let rest = &source[at + call.len()..];
                let name = if call.ends_with('(') {
                    let args = arguments(rest);
                    if call.starts_with("BundleError::") {
                        // A literal first argument (not a field passed on).
                        literal(&args[0])
                    } else {
                        args.iter().find_map(|a| literal(a))
                    }
                } else {
                    rest.strip_prefix('"')
                        .and_then(|r| r.find('"').map(|end| r[..end].to_string()))
                };
                let Some(name) = name else { continue };
                let entry = out.entry(name).or_default();
                for v in call_variants(call) {
                    entry.insert(v.to_string());
                }
            }
        }
    }
    out
}

fn documented_fields() -> BTreeMap<String, BTreeSet<String>> {
    let spec = read("bundle/SPEC.md");
    let mut documented = BTreeMap::new();
    for row in rows(&section(&spec, "bundle-fields")) {
        let field = code(&row[0]).unwrap_or_else(|| panic!("{row:?}: no field"));
        let variants: BTreeSet<String> = row[1]
            .split(',')
            .map(|v| code(v).unwrap_or_else(|| panic!("{field}: {v:?} is not a variant")))
            .collect();
        assert!(
            documented.insert(field.clone(), variants).is_none(),
            "{field} listed twice"
        );
    }
    documented
}

#[test]
fn the_spec_lists_every_field_an_error_can_name() {
    let documented = documented_fields();
    let in_code = fields_in_code();
    assert!(in_code.len() >= 40, "the source scan found {in_code:?}");
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
        "bundle/SPEC.md §10.2 and the code disagree:\n{}",
        differ.join("\n")
    );
}

#[test]
fn every_outcome_a_vector_records_is_a_documented_error() {
    let spec = read("bundle/SPEC.md");
    let variants: BTreeSet<String> = rows(&section(&spec, "bundle-errors"))
        .iter()
        .filter_map(|r| code(&r[0]))
        .collect();
    let fields = documented_fields();
    for line in read("fixtures/bundles/expected.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let outcome = line.splitn(4, ' ').nth(3).unwrap();
        let (variant, detail) = outcome.split_once(' ').unwrap_or((outcome, ""));
        if variant == "ok" {
            continue;
        }
        assert!(variants.contains(variant), "{line}: not in §10.1");
        match variant {
            "Truncated" | "Malformed" | "LimitExceeded" | "BadSize" => assert!(
                fields.get(detail).is_some_and(|v| v.contains(variant)),
                "{line}: not in §10.2"
            ),
            "UnsupportedVersion" => assert!(detail.parse::<u16>().is_ok(), "{line}"),
            _ => assert!(detail.is_empty(), "{line}"),
        }
    }
}

/// §2.2's body cap, as the specification writes it.
fn body_cap(c: u64) -> u64 {
    c.saturating_add(c / 100)
        .saturating_add(65536)
        .saturating_add(16 * (c / 65536))
        .saturating_add(16)
}

/// A header's bytes (after the preamble) with the given sizes.
fn header_bytes(image_size: u64, body_size: u64) -> Vec<u8> {
    let header = Header {
        flags: 0,
        critical: vec![],
        sender: tide_core::ReplicaId([1; 16]),
        recipient: None,
        created_ms: 0,
        schema: 0,
        ack: Default::default(),
        requires: Default::default(),
        provides: Default::default(),
        changes: 0,
        ops: 0,
        image_size,
        body_size,
        stanzas: vec![],
        nonce: None,
    };
    header.encode()[14..].to_vec()
}

#[test]
fn the_body_cap_is_the_formula_of_the_spec() {
    let default = tide_bundle::DEFAULT_IMAGE_CAP;
    assert_eq!(default, 1 << 33);
    // The figure the specification gives for the default cap.
    let figure = body_cap(default).to_string();
    let spaced: String = figure
        .chars()
        .rev()
        .collect::<Vec<_>>()
        .chunks(3)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .rev()
        .collect();
    assert!(read("bundle/SPEC.md").contains(&spaced), "{spaced}");
    for cap in [
        1,
        99,
        100,
        65535,
        65536,
        1 << 20,
        123_456_789,
        default,
        u64::MAX,
    ] {
        let limit = body_cap(cap);
        // The image cap itself is accepted, one more byte is not.
        assert!(
            Header::parse(&header_bytes(cap, limit), cap).is_ok(),
            "{cap}"
        );
        let err = Header::parse(&header_bytes(cap.saturating_add(1), 0), cap);
        if cap < u64::MAX {
            assert!(
                matches!(err, Err(BundleError::LimitExceeded { field: "image size", value, limit }) if value == cap + 1 && limit == cap),
                "{cap}: {err:?}"
            );
        }
        if limit < u64::MAX {
            let err = Header::parse(&header_bytes(cap, limit + 1), cap);
            assert!(
                matches!(err, Err(BundleError::LimitExceeded { field: "body size", value, limit: l }) if value == limit + 1 && l == limit),
                "{cap}: {err:?}"
            );
        }
    }
}

const SCHEMA: &str = "CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT, n INTEGER);";

fn a_bundle(c: &mut Cluster, from: usize, to: usize, options: &WriteOptions) -> Vec<u8> {
    let since = c.replicas[to].version_vector().unwrap();
    let mut out = Vec::new();
    export(&mut c.replicas[from], &since, options, &mut out).unwrap();
    out
}

/// Splits `bundle` into three parts in `dir`; returns their paths.
fn three_parts(bundle: &[u8], dir: &Path) -> Vec<PathBuf> {
    let whole = dir.join("b.tide");
    std::fs::write(&whole, bundle).unwrap();
    let size = (bundle.len() as u64).div_ceil(3) + 66;
    let parts = split(&whole, size, &dir.join("to-hq.tide")).unwrap();
    assert_eq!(parts.len(), 3);
    parts
}

#[test]
fn parts_are_named_from_one_and_refused_as_the_spec_says() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    for i in 0..50 {
        c.write(
            0,
            &format!("INSERT INTO notes VALUES ('n{i}', 'body {i}', {i})"),
        );
    }
    let b = a_bundle(&mut c, 0, 1, &WriteOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let parts = three_parts(&b, dir.path());
    let names: Vec<String> = parts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "to-hq.tide.1-of-3.tidepart",
            "to-hq.tide.2-of-3.tidepart",
            "to-hq.tide.3-of-3.tidepart"
        ]
    );
    // The head: the bundle's version, index from 0, count.
    for (i, p) in parts.iter().enumerate() {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(&bytes[..8], &tide_bundle::PART_MAGIC);
        assert_eq!(
            u16::from_be_bytes([bytes[8], bytes[9]]),
            tide_bundle::VERSION
        );
        assert_eq!(u16::from_be_bytes([bytes[50], bytes[51]]) as usize, i);
        assert_eq!(u16::from_be_bytes([bytes[52], bytes[53]]), 3);
    }
    let out = tempfile::tempdir().unwrap();
    let refused = |parts: &[PathBuf]| assemble(parts, out.path()).unwrap_err();

    // A part given twice, as the same file or as a copy.
    let copy = dir.path().join("copy.tidepart");
    std::fs::copy(&parts[1], &copy).unwrap();
    for twice in [&parts[1], &copy] {
        let err = refused(&[parts[0].clone(), parts[1].clone(), twice.clone()]);
        assert!(
            matches!(&err, BundleError::Parts(why) if why.contains("part 2 of 3 is given twice")),
            "{err}"
        );
    }
    // Another version: refused like a bundle of another version.
    let mut bytes = std::fs::read(&parts[2]).unwrap();
    bytes[8..10].copy_from_slice(&3u16.to_be_bytes());
    let other = dir.path().join("other.tidepart");
    std::fs::write(&other, &bytes).unwrap();
    let err = refused(&[parts[0].clone(), parts[1].clone(), other.clone()]);
    assert!(matches!(err, BundleError::UnsupportedVersion(3)), "{err}");
    // A head cut short; data cut short; a byte after the data.
    std::fs::write(&other, &std::fs::read(&parts[2]).unwrap()[..65]).unwrap();
    let err = refused(std::slice::from_ref(&other));
    assert!(
        matches!(err, BundleError::Truncated("part header")),
        "{err}"
    );
    let whole = std::fs::read(&parts[2]).unwrap();
    std::fs::write(&other, &whole[..whole.len() - 1]).unwrap();
    let err = refused(&[parts[0].clone(), parts[1].clone(), other.clone()]);
    assert!(
        matches!(err, BundleError::Truncated("bundle part")),
        "{err}"
    );
    let mut longer = whole.clone();
    longer.push(0);
    std::fs::write(&other, &longer).unwrap();
    let err = refused(&[parts[0].clone(), other.clone()]);
    assert!(
        matches!(&err, BundleError::Parts(why) if why.contains("after its data")),
        "{err}"
    );
    // Missing parts are numbered from 1; none at all is `Parts`.
    let err = refused(&[parts[1].clone()]);
    assert!(
        matches!(&err, BundleError::MissingParts { have: 1, count: 3, missing } if missing == &vec![1, 3]),
        "{err}"
    );
    assert!(matches!(refused(&[]), BundleError::Parts(_)));
    // Parts of two bundles.
    c.write(0, "INSERT INTO notes VALUES ('later', 'x', 0)");
    let b2 = a_bundle(&mut c, 0, 1, &WriteOptions::default());
    let dir2 = tempfile::tempdir().unwrap();
    let parts2 = three_parts(&b2, dir2.path());
    let err = refused(&[parts[0].clone(), parts2[1].clone()]);
    assert!(
        matches!(&err, BundleError::Parts(why) if why.contains("different bundles")),
        "{err}"
    );
    // In any order, the whole is the bundle.
    let joined = assemble(
        &[parts[2].clone(), parts[0].clone(), parts[1].clone()],
        out.path(),
    );
    assert_eq!(std::fs::read(joined.unwrap()).unwrap(), b);
}

#[test]
fn the_recipient_is_checked_after_decryption_and_before_any_change() {
    let mut c = Cluster::new(3, SCHEMA, &["notes"]);
    c.write(0, "INSERT INTO notes VALUES ('a', 'x', 1)");
    let r1 = c.replicas[1].card().unwrap();
    // Addressed to r1, not encrypted: r2 reads it whole, then refuses it.
    let addressed = WriteOptions {
        recipient: Some(r1.id),
        ..Default::default()
    };
    let b = a_bundle(&mut c, 0, 1, &addressed);
    for dry in [true, false] {
        let err = if dry {
            tide_bundle::check_import(&c.replicas[2], &mut Cursor::new(&b), None).unwrap_err()
        } else {
            import(&mut c.replicas[2], &mut Cursor::new(&b), None).unwrap_err()
        };
        assert!(
            matches!(err, BundleError::NotForThisReplica { recipient, this } if recipient == r1.id && this == c.replicas[2].id().unwrap()),
            "{err}"
        );
    }
    // Addressed and encrypted to r1: r2's key opens no stanza first.
    let sealed = WriteOptions {
        recipient: Some(r1.id),
        encrypt_to: vec![r1.box_key],
        ..Default::default()
    };
    let b = a_bundle(&mut c, 0, 1, &sealed);
    let err = import(&mut c.replicas[2], &mut Cursor::new(&b), None).unwrap_err();
    assert!(matches!(err, BundleError::NoMatchingKey), "{err}");
    assert_eq!(
        query_one::<i64>(&c.path(2), "SELECT count(*) FROM notes"),
        0
    );
    // Read without a replica, the recipient is not looked at.
    let options = tide_bundle::ReadOptions {
        known: c.replicas[2].known_cards().unwrap(),
        box_secret: Some(c.replicas[1].reading_identity().unwrap().box_secret()),
        ..Default::default()
    };
    let read = tide_bundle::read_bundle(&mut Cursor::new(&b), &options).unwrap();
    assert_eq!(read.changes().unwrap().len(), 1);
    import(&mut c.replicas[1], &mut Cursor::new(&b), None).unwrap();
}

/// Re-signs `bundle` (written by replica `from` of `c`) with its header changed by
/// `edit`.
fn with_header(c: &Cluster, from: usize, bundle: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
    let (mut header, head) = tide_bundle::read_header(&mut Cursor::new(bundle), 0).unwrap();
    let body = &bundle[head.len()..bundle.len() - 64];
    edit(&mut header);
    let mut out = header.encode();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&out);
    hasher.update(body);
    let mut message = tide_bundle::SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(hasher.finalize().as_bytes());
    let identity = c.replicas[from].signing_identity().unwrap();
    out.extend_from_slice(body);
    out.extend_from_slice(&identity.sign(&message));
    out
}

#[test]
fn a_header_that_does_not_match_its_changes_is_refused_whole() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    c.write(0, "INSERT INTO notes VALUES ('a', 'x', 1)");
    c.replicas[0].seal().unwrap();
    c.write(0, "INSERT INTO notes VALUES ('b', 'y', 2)");
    let b = a_bundle(&mut c, 0, 1, &WriteOptions::default());
    let me = c.replicas[0].id().unwrap();
    let header = tide_bundle::read_header(&mut Cursor::new(&b), 0).unwrap().0;
    assert_eq!((header.changes, header.ops), (2, 2));
    assert!(header.requires.is_empty());
    assert_eq!(header.provides.get(&me), Some(&2));

    type Edit = Box<dyn FnOnce(&mut Header)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|h| h.ops = 3),
            "`ops` is not the number of row ops the changes carry",
        ),
        (
            Box::new(move |h| {
                h.requires.insert(me, 1);
            }),
            "`requires` is not what the changes build on",
        ),
        (
            Box::new(move |h| {
                h.provides.insert(me, 3);
            }),
            "`provides` is not where the changes end",
        ),
    ];
    for (edit, why) in cases {
        let lying = with_header(&c, 0, &b, edit);
        let dry = tide_bundle::check_import(&c.replicas[1], &mut Cursor::new(&lying), None);
        assert!(
            matches!(dry, Err(BundleError::Malformed(w)) if w == why),
            "{why}: {dry:?}"
        );
        let err = import(&mut c.replicas[1], &mut Cursor::new(&lying), None).unwrap_err();
        assert!(
            matches!(err, BundleError::Malformed(w) if w == why),
            "{why}: {err}"
        );
        assert_eq!(
            query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
            0,
            "{why}: nothing is kept"
        );
    }
    // `changes` is checked when the image opens.
    let lying = with_header(&c, 0, &b, |h| h.changes = 1);
    let err = import(&mut c.replicas[1], &mut Cursor::new(&lying), None).unwrap_err();
    assert!(
        matches!(&err, BundleError::BadImage(why) if why.contains("2 changes inside, the header says 1")),
        "{err}"
    );
    // `ack` is the sender's own: not checked against the changes.
    let other = with_header(&c, 0, &b, |h| h.ack.clear());
    import(&mut c.replicas[1], &mut Cursor::new(&other), None).unwrap();
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
        2
    );
}
