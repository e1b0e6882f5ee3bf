//! `tide bundle export | import | inspect | verify`.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use tide_bundle::{BundleError, Header, PART_MAGIC, WriteOptions};
use tide_core::{Card, VersionVector};

use super::{Out, find_peer, input_file, open_path, open_read_path, passphrase, peer_name};
use crate::cli::{BundleCommand, ExportArgs, ImportArgs};
use crate::failure::{Prerequisites, rejected, usage};
use crate::progress::Progress;
use crate::render::{parse_size, time};

pub fn run(out: &Out, db: Option<&Path>, cmd: BundleCommand) -> Result<u8> {
    let need_db = || {
        db.map(Path::to_path_buf).ok_or_else(|| {
            usage(
                "no database given",
                Some("pass --db FILE or set TIDE_DB=FILE"),
            )
        })
    };
    match cmd {
        BundleCommand::Export(args) => export(out, &need_db()?, args),
        BundleCommand::Import(args) => import(out, &need_db()?, args),
        BundleCommand::Inspect { file } => inspect(out, db, &file),
        BundleCommand::Verify { file, card } => verify(out, db, &file, card.as_deref()),
    }
}

/// The smallest `--split` part: a part carries a 66-byte header, and 65535 parts at most.
const MIN_PART: u64 = 1 << 10;

fn split_size(s: &str) -> Result<u64> {
    match parse_size(s) {
        Some(n) if n >= MIN_PART => Ok(n),
        _ => Err(usage(
            format!("--split {s:?} is not a part size tide can cut to"),
            Some(
                "give at least 1K (1024 bytes), like 512K, 10M or 1G: suffixes K, M and G (powers of 1024); a bare number counts bytes",
            ),
        )),
    }
}

/// Where `-o` writes: a file in a folder that exists.
fn output_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(usage(
            format!("-o {}: that is a folder", path.display()),
            Some("give a file name, like -o to-hq.tide"),
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(usage(
            format!("-o {}: no folder {}", path.display(), dir.display()),
            Some("check the path, or create the folder first"),
        ));
    }
    Ok(())
}

fn vector_json(v: &VersionVector) -> serde_json::Value {
    json!(
        v.iter()
            .map(|(o, s)| (o.to_hex(), *s))
            .collect::<std::collections::BTreeMap<_, _>>()
    )
}

fn export(out: &Out, db: &Path, args: ExportArgs) -> Result<u8> {
    if let Some(f) = &args.passphrase_file {
        input_file(f, "passphrase file")?;
    }
    if let Some(path) = &args.output {
        output_file(path)?;
    }
    let split = args.split.as_deref().map(split_size).transpose()?;
    let mut r = open_path(out, db)?;
    crate::progress::attach(&mut r, !out.json && !out.quiet);
    let peer = args.peer.as_deref().map(|p| find_peer(&r, p)).transpose()?;
    if let Some(p) = &peer
        && r.id().ok() == Some(p.id)
    {
        return Err(usage(
            format!(
                "--peer {}: that is this replica itself; a bundle is for another replica",
                args.peer.as_deref().unwrap_or_default()
            ),
            Some("name a peer (tide peers list), or use --all for a bundle any peer can import"),
        ));
    }
    if args.encrypt && peer.is_none() {
        return Err(usage(
            "--encrypt needs --peer (the bundle is encrypted to the peer's key)",
            None,
        ));
    }
    let pass = passphrase(args.passphrase_file.as_deref(), args.passphrase)?;
    if args.passphrase && pass.is_none() {
        return Err(usage(
            "--passphrase: no passphrase given",
            Some(
                "set TIDE_PASSPHRASE, use --passphrase-file FILE, or run on a terminal to be asked",
            ),
        ));
    }
    let since = match (&peer, args.all) {
        (Some(p), false) => r.peer_ack(p.id)?,
        _ => VersionVector::new(),
    };
    let options = WriteOptions {
        recipient: peer.as_ref().map(|p| p.id),
        encrypt_to: if args.encrypt {
            peer.iter().map(|p| p.box_key).collect()
        } else {
            vec![]
        },
        passphrase: pass,
        ..Default::default()
    };
    let to = args.output.clone();
    let bar = !out.json && !out.quiet;
    if to.is_none() && std::io::stdout().is_terminal() {
        return Err(usage(
            "refusing to write a binary bundle to the terminal",
            Some("add -o FILE, or redirect: tide bundle export --peer N > FILE"),
        ));
    }
    let written = match &to {
        Some(path) => {
            // Write next to the target and rename: a failed export leaves no half file.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("creating a file in {}", dir.display()))?;
            let w = tide_bundle::export(
                &mut r,
                &since,
                &options,
                &mut BufWriter::new(tmp.as_file_mut()),
            )?;
            tmp.as_file().sync_all()?;
            if let Some(size) = split {
                let parts = tide_bundle::split(tmp.path(), size, path).map_err(|e| match e {
                    BundleError::Parts(why) => usage(
                        format!(
                            "--split {}: {why}",
                            args.split.as_deref().unwrap_or_default()
                        ),
                        Some("give a larger --split size"),
                    ),
                    other => other.into(),
                })?;
                for p in &parts {
                    out.data(p.display().to_string());
                }
            } else {
                tmp.persist(path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            w
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = Progress::new(BufWriter::new(stdout.lock()), "exporting", None, bar);
            let w = tide_bundle::export(&mut r, &since, &options, &mut lock)?;
            lock.finish().flush()?;
            w
        }
    };
    r.set_progress(None); // clears the bar before the summary
    let h = &written.header;
    if out.verbose {
        eprintln!(
            "{}",
            serde_json::to_string_pretty(&header_json(h)).expect("JSON values always serialize")
        );
    }
    out.say(format!(
        "Wrote {} change(s), {} row op(s), {} bytes{}{}{}.",
        h.changes,
        h.ops,
        written.bytes,
        peer.as_ref()
            .map(|p| format!(" for {}", p.name))
            .unwrap_or_default(),
        if h.encrypted() { ", encrypted" } else { "" },
        to.as_ref()
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default()
    ));
    if h.changes == 0 {
        out.say("(Nothing new for this peer as far as we know; --all sends everything.)");
    }
    Ok(0)
}

/// Reads all inputs: whole bundles are imported one by one; parts are grouped and
/// reassembled first.
fn import(out: &Out, db: &Path, args: ImportArgs) -> Result<u8> {
    if let Some(f) = &args.passphrase_file {
        input_file(f, "passphrase file")?;
    }
    for f in args.files.iter().filter(|f| *f != "-") {
        input_file(Path::new(f), "bundle file")?;
    }
    let mut r = open_path(out, db)?;
    crate::progress::attach(&mut r, !out.json && !out.quiet);
    let scratch = tempfile::tempdir()?;
    let mut bundles: Vec<PathBuf> = Vec::new();
    let mut parts: Vec<PathBuf> = Vec::new();
    for f in &args.files {
        let path = if f == "-" {
            let p = scratch.path().join(format!("stdin-{}.tide", bundles.len()));
            let mut file = File::create(&p)?;
            std::io::copy(&mut std::io::stdin().lock(), &mut file)
                .context("reading the bundle from stdin")?;
            p
        } else {
            PathBuf::from(f)
        };
        let mut magic = [0u8; 8];
        let n = File::open(&path)?.read(&mut magic)?;
        if n == 8 && magic == PART_MAGIC {
            // The same file named twice is the command line's mistake, not the file's
            // (two files claiming one part number are refused when reassembled).
            let same = |p: &PathBuf| {
                p == &path || std::fs::canonicalize(p).ok() == std::fs::canonicalize(&path).ok()
            };
            if parts.iter().any(same) {
                return Err(usage(
                    format!("{f} is given twice"),
                    Some("name each part once"),
                ));
            }
            parts.push(path)
        } else {
            bundles.push(path)
        }
    }
    if !parts.is_empty() {
        bundles.push(tide_bundle::assemble(&parts, scratch.path())?);
    }
    let pass = passphrase(args.passphrase_file.as_deref(), false)?;
    let mut total_conflicts = 0;
    for path in bundles {
        let size = std::fs::metadata(&path).map(|m| m.len()).ok();
        let mut input = Progress::new(
            BufReader::new(File::open(&path)?),
            "importing",
            size,
            !out.json && !out.quiet,
        );
        let result = if args.dry_run {
            dry_run(out, &r, &mut input, pass.as_deref())
        } else {
            let attempt = tide_bundle::import(&mut r, &mut input, pass.as_deref());
            // Encrypted under a passphrase nobody gave: ask on a terminal, once.
            let attempt = match attempt {
                Err(BundleError::NeedKey | BundleError::NoMatchingKey)
                    if pass.is_none() && std::io::stdin().is_terminal() =>
                {
                    let asked = passphrase(None, true)?;
                    tide_bundle::import(
                        &mut r,
                        &mut BufReader::new(File::open(&path)?),
                        asked.as_deref(),
                    )
                }
                other => other,
            };
            input.finish();
            r.set_progress(None);
            attempt.map(|imported| {
                let rep = &imported.report;
                total_conflicts += rep.conflicts_opened;
                let from = peer_name(&r, imported.header.sender);
                if out.verbose {
                    eprintln!("{rep:#?}");
                }
                if out.json {
                    out.json(&json!({
                        "file": path.display().to_string(), "sender": imported.header.sender.to_hex(), "sender_name": from,
                        "received": rep.received, "stored": rep.stored, "duplicates": rep.duplicates, "applied": rep.applied,
                        "ops_applied": rep.ops_applied, "waiting": rep.waiting, "conflicts_opened": rep.conflicts_opened,
                        "quarantined": rep.quarantined.iter().map(|(c, why)| json!({"origin": c.origin.to_hex(), "seq": c.seq, "reason": why.code()})).collect::<Vec<_>>(),
                    }));
                }
                out.say(format!(
                    "Imported from {from}: {} new change(s), {} applied ({} row op(s)), {} already here{}{}.",
                    rep.stored,
                    rep.applied,
                    rep.ops_applied,
                    rep.duplicates,
                    if rep.waiting > 0 { format!(", {} waiting for earlier changes", rep.waiting) } else { String::new() },
                    if rep.quarantined.is_empty() { String::new() } else { format!(", {} quarantined (tide quarantine list)", rep.quarantined.len()) },
                ));
            })
        };
        result.with_context(|| format!("{}", path.display()))?;
    }
    if total_conflicts > 0 {
        out.say(format!(
            "{total_conflicts} new conflict(s): both values are kept. See them: tide conflicts list"
        ));
    }
    Ok(0)
}

/// Every check the import makes, by the same code, short of writing: what the import
/// would refuse, this refuses with the same error and exit code.
fn dry_run(
    out: &Out,
    r: &tide_core::Replica,
    input: &mut dyn Read,
    pass: Option<&[u8]>,
) -> Result<(), BundleError> {
    let checked = tide_bundle::check_import(r, input, pass)?;
    let (h, rep) = (&checked.header, &checked.report);
    let missing = tide_bundle::prerequisites_missing(r, h)?;
    out.say(format!(
        "Verified: {} change(s), {} row op(s) from {}: {} new, {} already here{}; {}. Nothing was imported (--dry-run).",
        h.changes,
        h.ops,
        peer_name(r, h.sender),
        rep.stored,
        rep.duplicates,
        if rep.quarantined.is_empty() {
            String::new()
        } else {
            format!(", {} would be quarantined", rep.quarantined.len())
        },
        if missing.is_empty() {
            "every prerequisite is here".to_string()
        } else {
            format!("{} origin(s) need earlier changes first", missing.len())
        }
    ));
    Ok(())
}

fn header_json(h: &Header) -> serde_json::Value {
    json!({
        "version": tide_bundle::VERSION,
        "sender": h.sender.to_hex(),
        "recipient": h.recipient.map(|r| r.to_hex()),
        "encrypted": h.encrypted(),
        "created_ms": h.created_ms,
        "created": time(h.created_ms << 16),
        "schema": h.schema,
        "changes": h.changes,
        "ops": h.ops,
        "image_size": h.image_size,
        "body_size": h.body_size,
        "ack": vector_json(&h.ack),
        "requires": vector_json(&h.requires),
        "provides": vector_json(&h.provides),
        "stanzas": h.stanzas.iter().map(|s| match s { tide_bundle::Stanza::X25519 { .. } => "x25519", tide_bundle::Stanza::Passphrase { .. } => "passphrase" }).collect::<Vec<_>>(),
    })
}

fn inspect(out: &Out, db: Option<&Path>, file: &Path) -> Result<u8> {
    input_file(file, "bundle file")?;
    let mut input =
        BufReader::new(File::open(file).with_context(|| format!("opening {}", file.display()))?);
    let (h, _) =
        tide_bundle::read_header(&mut input, 0).with_context(|| format!("{}", file.display()))?;
    let replica = db.map(open_read_path).transpose()?;
    let missing = replica
        .as_ref()
        .map(|r| tide_bundle::prerequisites_missing(r, &h))
        .transpose()?;
    let name = |id| {
        replica
            .as_ref()
            .map(|r| peer_name(r, id))
            .unwrap_or_else(|| tide_core::ReplicaId::short(&id))
    };
    if out.json {
        let mut j = header_json(&h);
        if let Some(m) = &missing {
            j["prerequisites_missing"] = vector_json(m);
        }
        out.json(&j);
        return Ok(0);
    }
    let mut s = format!(
        "bundle     version {}, {}\n",
        tide_bundle::VERSION,
        if h.encrypted() {
            "encrypted"
        } else {
            "not encrypted"
        }
    );
    s.push_str(&format!(
        "sender     {} ({})\n",
        name(h.sender),
        h.sender.to_hex()
    ));
    if let Some(rcp) = h.recipient {
        s.push_str(&format!("recipient  {} ({})\n", name(rcp), rcp.to_hex()));
    }
    s.push_str(&format!("created    {}\n", time(h.created_ms << 16)));
    s.push_str(&format!(
        "carries    {} change(s), {} row op(s); image {} bytes, body {} bytes\n",
        h.changes, h.ops, h.image_size, h.body_size
    ));
    for (o, seq) in &h.provides {
        let from = h.requires.get(o).map(|x| x + 1).unwrap_or(1);
        s.push_str(&format!("changes    {} #{from}..#{seq}\n", name(*o)));
    }
    for (o, seq) in &h.requires {
        s.push_str(&format!("requires   {} up to #{seq}\n", name(*o)));
    }
    if let Some(m) = missing {
        s.push_str(&if m.is_empty() {
            "this replica has every prerequisite\n".to_string()
        } else {
            format!(
                "this replica lacks prerequisites from {} origin(s)\n",
                m.len()
            )
        });
    }
    s.push_str("(not verified: `tide bundle verify FILE` checks the signature)\n");
    print!("{s}");
    Ok(0)
}

fn verify(out: &Out, db: Option<&Path>, file: &Path, card: Option<&Path>) -> Result<u8> {
    input_file(file, "bundle file")?;
    if let Some(c) = card {
        input_file(c, "card file")?;
    }
    let replica = db.map(open_read_path).transpose()?;
    let mut known: Vec<Card> = replica
        .as_ref()
        .map(|r| r.known_cards())
        .transpose()?
        .unwrap_or_default();
    if let Some(c) = card {
        let bytes = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let line = text
            .lines()
            .find(|l| l.starts_with("tide-card-v1"))
            .ok_or_else(|| rejected(format!("{} holds no tide card", c.display()), None))?;
        known.push(
            Card::parse(line).map_err(|e| {
                rejected(format!("the card in {} is damaged: {e}", c.display()), None)
            })?,
        );
    }
    if known.is_empty() {
        return Err(usage(
            "no keys to verify against",
            Some("pass --db FILE (its peers), or --card SENDER.card"),
        ));
    }
    let h = tide_bundle::verify_bundle(
        &mut BufReader::new(
            File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ),
        &known,
    )?;
    let sender = known
        .iter()
        .find(|c| c.id == h.sender)
        .map(|c| c.name.clone())
        .unwrap_or_default();
    out.say(format!(
        "{}: signature OK, signed by {sender} ({}); {} change(s), {} row op(s).",
        file.display(),
        h.sender.short(),
        h.changes,
        h.ops
    ));
    if let Some(r) = &replica {
        let missing = tide_bundle::prerequisites_missing(r, &h)?;
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|(o, s)| format!("{} up to #{s}", peer_name(r, *o)))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Prerequisites(format!(
                "{} needs changes this replica does not have yet: {list}",
                file.display()
            ))
            .into());
        }
        out.say("This replica has every prerequisite: the bundle can be applied in full.");
    }
    if out.json {
        out.json(&header_json(&h));
    }
    Ok(0)
}
