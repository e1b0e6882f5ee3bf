//! `tide sync`: a folder as a mailbox, or the exchange over a pipe.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::json;
use tide_core::Replica;
use tide_transports::http::client::HubClient;
use tide_transports::http::hub::{Hub, HubOptions};
use tide_transports::mailbox::{DIR_NAME, Mailbox, MailboxOptions, Mode};
use tide_transports::stream::{Role, Stream};
use tide_transports::{Carrier, SyncReport};

use super::Out;

/// How to sync, from the command line.
pub struct How {
    pub send_only: bool,
    pub receive_only: bool,
    pub encrypt: bool,
    pub watch: bool,
    pub interval: u64,
    pub page_bytes: u64,
}

pub fn run(
    out: &Out,
    r: &mut Replica,
    target: Option<String>,
    command: Option<String>,
    how: How,
) -> Result<u8> {
    if let Some(command) = command {
        crate::progress::attach(r, !out.json && !out.quiet);
        return over_command(out, r, &command, &how);
    }
    let target = target.expect("clap requires a target or --command");
    if target.starts_with("http://") || target.starts_with("https://") {
        crate::progress::attach(r, !out.json && !out.quiet);
        return hub(out, r, &target, &how);
    }
    if target == "-" {
        let mut stream = Stream::new(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
            Role::Responder,
        );
        stream.page_bytes = how.page_bytes;
        let report = stream.sync(r)?;
        // stdout carries the exchange: the summary goes to stderr only.
        out.say(summary(r, &report, None)?);
        return Ok(0);
    }
    // Progress on a terminal while pages are packed and applied (never with --json).
    crate::progress::attach(r, !out.json && !out.quiet);
    folder(out, r, Path::new(&target), &how)
}

fn folder(out: &Out, r: &mut Replica, path: &Path, how: &How) -> Result<u8> {
    let mode = if how.send_only {
        Mode::SEND_ONLY
    } else if how.receive_only {
        Mode::ReceiveOnly
    } else {
        Mode::Both
    };
    let mut mailbox = Mailbox::new(
        path,
        MailboxOptions {
            mode,
            encrypt: how.encrypt,
            page_bytes: how.page_bytes,
        },
    );
    if !how.watch {
        let report = mailbox.sync(r)?;
        show(out, r, &report, Some((path, mode)))?;
        return Ok(0);
    }
    out.say(format!(
        "Watching {} and the database; syncing whenever either changes. Ctrl-C stops.",
        path.display()
    ));
    let mut last = None;
    loop {
        let now = fingerprint(path, r.path());
        if Some(&now) != last.as_ref() {
            match mailbox.sync(r) {
                Ok(report) => {
                    if moved(&report) {
                        show(out, r, &report, Some((path, mode)))?;
                    }
                }
                // The folder may come and go (a stick pulled out): say so and keep watching.
                Err(e) => {
                    let f = crate::failure::describe(&anyhow::Error::new(e));
                    out.say(format!(
                        "warning: {}{}",
                        f.message,
                        f.next.map(|n| format!("\n  Next: {n}")).unwrap_or_default()
                    ));
                }
            }
            last = Some(fingerprint(path, r.path()));
        }
        std::thread::sleep(std::time::Duration::from_millis(how.interval));
    }
}

/// Syncs with a hub; with `--watch`, again and again, each exchange waiting at the hub
/// for a second when nothing moves, so changes arrive as soon as they are there.
fn hub(out: &Out, r: &mut Replica, url: &str, how: &How) -> Result<u8> {
    let mut client = HubClient::new(url);
    client.page_bytes = how.page_bytes;
    if !how.watch {
        let report = client.sync(r)?;
        show(out, r, &report, None)?;
        return Ok(0);
    }
    out.say(format!("Syncing with {url} as changes come; Ctrl-C stops."));
    // Live over a WebSocket; where that fails (a proxy that refuses the upgrade, a
    // dropped connection), exchanges that wait at the hub, then live again.
    client.wait_s = 1;
    loop {
        let live = client.live(r, &|| true, &mut |report| {
            if report.changes_applied > 0 {
                out.say(format!("received {} change(s)", report.changes_applied));
            }
            if report.changes_sent > 0 {
                out.say(format!("sent {} change(s)", report.changes_sent));
            }
        });
        if let Err(e) = live {
            // Nothing to retry while the hub and this replica do not trust each other.
            if matches!(
                e,
                tide_transports::TransportError::UnknownHub { .. }
                    | tide_transports::TransportError::UnknownToHub { .. }
            ) {
                return Err(e.into());
            }
            let f = crate::failure::describe(&anyhow::Error::new(e));
            out.say(format!(
                "note: live sync stopped ({}); syncing by exchange",
                f.message
            ));
        }
        for _ in 0..5 {
            match client.sync(r) {
                Ok(report) => {
                    if moved(&report) {
                        show(out, r, &report, None)?;
                    }
                }
                // The network may come and go: say so and keep trying.
                Err(e) => {
                    let f = crate::failure::describe(&anyhow::Error::new(e));
                    out.say(format!("warning: {}", f.message));
                    std::thread::sleep(std::time::Duration::from_millis(how.interval));
                }
            }
        }
    }
}

/// `tide serve`: a hub on `listen` until interrupted.
pub fn serve(out: &Out, db: &Path, listen: &str) -> Result<u8> {
    let hub = Hub::start(
        db.to_path_buf(),
        tide_core::KeyStore::from_env(),
        listen,
        HubOptions::default(),
    )?;
    out.say(format!(
        "Serving {} on http://{}; replicas sync with `tide sync http://{}`. Ctrl-C stops.",
        db.display(),
        hub.addr(),
        hub.addr()
    ));
    hub.run_until_interrupted()?;
    Ok(0)
}

/// The near end of a pipe: runs `command` (which runs `tide sync -` at the far end) and
/// speaks the exchange on its stdin and stdout. Its stderr is ours.
fn over_command(out: &Out, r: &mut Replica, command: &str, how: &How) -> Result<u8> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let to = child.stdin.take().expect("stdin was piped");
    let from = child.stdout.take().expect("stdout was piped");
    let mut stream = Stream::new(from, to, Role::Initiator);
    stream.page_bytes = how.page_bytes;
    let result = stream.sync(r);
    drop(stream);
    let status = child.wait().context("waiting for the command")?;
    let report = match result {
        Ok(report) => report,
        Err(e) if !status.success() => {
            return Err(anyhow::Error::new(e).context(format!(
                "{command:?} exited with {status} (its messages are above)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    show(out, r, &report, None)?;
    Ok(0)
}

/// Whether a sync did anything worth a line while watching.
fn moved(r: &SyncReport) -> bool {
    r.pages_received > 0
        || r.pages_sent > 0
        || r.pruned > 0
        || r.garbage > 0
        || r.quarantined > 0
        || !r.left.is_empty()
}

fn show(
    out: &Out,
    r: &mut Replica,
    report: &SyncReport,
    folder: Option<(&Path, Mode)>,
) -> Result<()> {
    // The bar is cleared before the summary (and drawn again by the next sync).
    r.set_progress(None);
    crate::progress::attach(r, !out.json && !out.quiet);
    if out.json {
        out.json(&json!({
            "pages_received": report.pages_received,
            "changes_received": report.changes_received,
            "changes_applied": report.changes_applied,
            "duplicates": report.duplicates,
            "quarantined": report.quarantined,
            "conflicts_opened": report.conflicts_opened,
            "pages_sent": report.pages_sent,
            "changes_sent": report.changes_sent,
            "bytes_sent": report.bytes_sent,
            "pruned": report.pruned,
            "garbage": report.garbage,
            "left": report.left.iter().map(|(f, why)| json!({"file": f, "why": why})).collect::<Vec<_>>(),
            "missing": report.missing.iter().map(|(o, runs)| json!({"origin": o.to_hex(), "runs": runs})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    out.say(summary(r, report, folder)?);
    Ok(())
}

/// What a sync did, for a person.
fn summary(r: &Replica, report: &SyncReport, folder: Option<(&Path, Mode)>) -> Result<String> {
    let mut lines = Vec::new();
    if report.pages_received > 0 {
        lines.push(format!(
            "received {} page(s): {} new change(s), {} applied{}",
            report.pages_received,
            report.changes_received,
            report.changes_applied,
            if report.duplicates > 0 {
                format!(", {} already here", report.duplicates)
            } else {
                String::new()
            }
        ));
    }
    if report.pages_sent > 0 {
        lines.push(format!(
            "sent {} page(s): {} change(s), {} bytes",
            report.pages_sent, report.changes_sent, report.bytes_sent
        ));
    }
    if report.pruned > 0 {
        lines.push(format!(
            "deleted {} file(s) every peer has acknowledged",
            report.pruned
        ));
    }
    if report.garbage > 0 {
        lines.push(format!(
            "deleted {} incomplete file(s) (a write cut short)",
            report.garbage
        ));
    }
    for (file, why) in &report.left {
        lines.push(format!("left {file}: {why}"));
    }
    if report.quarantined > 0 {
        lines.push(format!(
            "{} change(s) held in quarantine: tide quarantine list",
            report.quarantined
        ));
    }
    if report.conflicts_opened > 0 {
        lines.push(format!(
            "{} conflict(s) opened: tide conflicts list",
            report.conflicts_opened
        ));
    }
    let names: std::collections::HashMap<_, _> =
        r.peers()?.into_iter().map(|p| (p.id, p.name)).collect();
    for (origin, runs) in &report.missing {
        let runs: Vec<String> = runs
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        lines.push(format!(
            "missing from {}: changes {}",
            names.get(origin).cloned().unwrap_or_else(|| origin.short()),
            runs.join(", ")
        ));
    }
    if lines.is_empty() {
        lines.push("nothing new either way".into());
    }
    match folder {
        Some((path, Mode::ReceiveOnly)) => {
            lines.push(format!("Done; nothing was written to {}.", path.display()))
        }
        Some((path, _)) => lines.push(format!("Done; {} is safe to remove.", path.display())),
        None => {}
    }
    Ok(lines.join("\n"))
}

/// What `--watch` compares: the mailbox's files and the database's (name, size, time).
fn fingerprint(folder: &Path, db: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut note = |p: PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            out.push((p, m.len(), m.modified().ok()));
        }
    };
    let root = folder.join(DIR_NAME);
    for sub in ["seg", "ack", "to"] {
        for entry in std::fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path();
            if p.is_dir() {
                for inner in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    note(inner.path());
                }
            } else {
                note(p);
            }
        }
    }
    note(db.to_path_buf());
    note(PathBuf::from(format!("{}-wal", db.display())));
    out.sort();
    out
}
