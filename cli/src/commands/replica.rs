//! Commands about the replica itself: identity, tables, peers, log, quarantine, doctor.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use tide_core::{Card, KeyStore, Replica, VersionVector};

use super::{Out, find_peer, input_file, peer_name};
use crate::cli::{PeersCommand, QuarantineCommand};
use crate::failure::{CONFLICTS_OPEN, rejected, usage};
use crate::render::time;

pub fn init(out: &Out, db: &Path, name: Option<String>, new_identity: bool) -> Result<u8> {
    let existed = db.exists();
    let folder = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(usage(
            format!(
                "no folder {} to create {} in",
                folder.display(),
                db.display()
            ),
            Some("check the path, or create the folder first"),
        ));
    }
    // A replica already: opened as any command that writes would (an earlier layout is
    // upgraded, and said). Otherwise the file becomes one (created when absent).
    let mut r = match Replica::open_existing(db, KeyStore::from_env()) {
        Ok(r) => {
            if let Some((from, to)) = r.upgraded() {
                out.say(format!(
                    "Upgraded tide's metadata in {} from layout {from} (an earlier version of tide) to layout {to}.",
                    db.display()
                ));
            }
            r
        }
        Err(tide_core::Error::Open(
            tide_core::OpenError::NotInitialized | tide_core::OpenError::NoDatabase(_),
        )) => Replica::open(db, KeyStore::from_env())
            .with_context(|| format!("opening {}", db.display()))?,
        Err(e) => return Err(e).with_context(|| format!("opening {}", db.display())),
    };
    let name = name.unwrap_or_else(|| {
        db.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "replica".into())
    });
    let before = r.id().ok();
    let id = if new_identity {
        r.new_identity(&name)?
    } else {
        r.init(&name)?
    };
    if out.json {
        out.json(&json!({ "id": id.to_hex(), "name": r.card()?.name, "db": db.display().to_string(), "new": before != Some(id) }));
    } else {
        out.data(id.to_hex());
    }
    match before {
        Some(old) if old == id => out.say(format!(
            "{} already has identity {} ({}); nothing changed.",
            db.display(),
            id.short(),
            r.card()?.name
        )),
        Some(old) => out.say(format!(
            "New identity {} for {}; the old one ({}) stays a known origin.",
            id.short(),
            db.display(),
            old.short()
        )),
        None => {
            out.say(format!(
                "{} {} is now replica {} ({name}).",
                if existed { "Database" } else { "New database" },
                db.display(),
                id.short()
            ));
            out.say(format!(
                "Next: tide --db {} track TABLE, and give peers your card: tide --db {} id --card",
                db.display(),
                db.display()
            ));
        }
    }
    Ok(0)
}

pub fn track(out: &Out, r: &mut Replica, tables: &[String]) -> Result<u8> {
    for t in tables {
        let report = r.track(t)?;
        for w in &report.warnings {
            out.say(format!("warning: {w}"));
        }
        out.say(if report.newly_tracked {
            format!("Tracking {t}: every write to it is captured, from any program.")
        } else {
            format!("{t} was already tracked.")
        });
    }
    Ok(0)
}

pub fn untrack(out: &Out, r: &mut Replica, table: &str) -> Result<u8> {
    r.untrack(table)?;
    out.say(format!(
        "{table} is no longer tracked; its history stays. `tide track {table}` resumes."
    ));
    Ok(0)
}

pub fn migrate(out: &Out, r: &mut Replica, sql: &str) -> Result<u8> {
    let before: std::collections::BTreeMap<String, u64> = r.table_epochs()?.into_iter().collect();
    r.migrate(sql)?;
    let mut said = vec!["migrated; capture follows the new schema".to_string()];
    for (t, e) in r.table_epochs()? {
        if before.get(&t) != Some(&e) {
            said.push(format!("  {t}: schema epoch {e}"));
        }
    }
    for (t, why) in r.stopped_tables()? {
        said.push(format!(
            "  {t}: capture stopped: {why}\n  Next: once every replica has migrated, tide untrack {t}, then tide track {t}"
        ));
    }
    out.say(said.join("\n"));
    Ok(0)
}

fn lacks(ours: &VersionVector, theirs: &VersionVector) -> u64 {
    ours.iter()
        .map(|(o, s)| s.saturating_sub(theirs.get(o).copied().unwrap_or(0)))
        .sum()
}

pub fn status(out: &Out, r: &mut Replica, check: bool) -> Result<u8> {
    // Sealing happens before status (DESIGN.md §2.4), so what is shown is what would be sent.
    let sealed = match r.seal() {
        Ok(id) => id.map(|c| c.seq),
        Err(tide_core::Error::Open(tide_core::OpenError::NotInitialized)) => None,
        Err(e) => {
            // Status still shows what is here; the writes wait for the next seal.
            let f = crate::failure::describe(&anyhow::Error::new(e));
            out.say(format!(
                "warning: the writes made since the last seal were not sealed: {}{}",
                f.message,
                f.next.map(|n| format!("\n  Next: {n}")).unwrap_or_default()
            ));
            None
        }
    };
    let card = r.card()?;
    let ours = r.version_vector()?;
    let tracked = r.tracked_tables()?;
    let epochs: std::collections::BTreeMap<String, u64> = r.table_epochs()?.into_iter().collect();
    let stopped = r.stopped_tables()?;
    let differences = r.schema_differences()?;
    let conflicts = r.conflicts()?;
    let quarantined = r.quarantine()?.len();
    let waiting = r.waiting_count()?;
    let mut peers = Vec::new();
    for p in r.peers()? {
        let acked = r.peer_ack(p.id)?;
        let synced = tide_transports::last_synced(r, p.id)?;
        peers.push((p, lacks(&ours, &acked), synced));
    }
    if out.json {
        out.json(&json!({
            "id": card.id.to_hex(),
            "name": card.name,
            "db": r.path().display().to_string(),
            "tracked": tracked,
            "schema_epochs": epochs,
            "stopped": stopped.iter().map(|(t, why)| json!({"table": t, "why": why})).collect::<Vec<_>>(),
            "schema_differences": differences.iter().map(|d| json!({
                "table": d.table,
                "peer": d.origin.to_hex(),
                "name": d.origin_name,
                "seq": d.seq,
                "lacks": d.lacks,
                "ahead": d.ahead,
                "renamed": d.renamed.iter().map(|(theirs, here)| json!({"theirs": theirs, "here": here})).collect::<Vec<_>>(),
                "dropped": d.dropped,
            })).collect::<Vec<_>>(),
            "sealed": sealed,
            "peers": peers.iter().map(|(p, n, synced)| json!({"id": p.id.to_hex(), "name": p.name, "lacks": n, "last_synced": synced})).collect::<Vec<_>>(),
            "conflicts": conflicts.len(),
            "quarantined": quarantined,
            "waiting": waiting,
        }));
    } else {
        let mut s = format!(
            "replica   {} ({})\ndatabase  {}\n",
            card.name,
            card.id.short(),
            r.path().display()
        );
        s.push_str(&format!(
            "tracked   {}\n",
            if tracked.is_empty() {
                "(none: tide track TABLE)".to_string()
            } else {
                // A table's schema epoch shows once tide has followed a change of it.
                tracked
                    .iter()
                    .map(|t| match epochs.get(t) {
                        Some(&e) if e > 1 => format!("{t} (schema epoch {e})"),
                        _ => t.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        for (t, why) in &stopped {
            s.push_str(&format!(
                "stopped   {t}: {why}; its writes are not sent (tide untrack {t}, then tide track {t})\n"
            ));
        }
        for d in &differences {
            s.push_str(&format!("schema    {d}\n"));
        }
        if let Some(seq) = sealed {
            s.push_str(&format!("sealed    new local writes as change {seq}\n"));
        }
        if peers.is_empty() {
            s.push_str("peers     (none: tide peers add CARD)\n");
        }
        for (p, n, synced) in &peers {
            s.push_str(&format!(
                "peer      {} ({})  lacks {n} change(s) as far as we know{}\n",
                p.name,
                p.id.short(),
                match synced {
                    Some(t) => format!("; last synced {}", time((t * 1000) << 16)),
                    None => String::new(),
                }
            ));
        }
        s.push_str(&format!(
            "conflicts {}{}\n",
            conflicts.len(),
            if conflicts.is_empty() {
                ""
            } else {
                "  (tide conflicts list)"
            }
        ));
        if quarantined > 0 {
            s.push_str(&format!(
                "quarantine {quarantined}  (tide quarantine list)\n"
            ));
        }
        if waiting > 0 {
            s.push_str(&format!(
                "waiting   {waiting} change(s) for changes not received yet\n"
            ));
        }
        print!("{s}");
    }
    Ok(if check && !conflicts.is_empty() {
        CONFLICTS_OPEN
    } else {
        0
    })
}

pub fn id(out: &Out, r: &Replica, card: bool) -> Result<u8> {
    let c = r.card()?;
    if out.json {
        out.json(&card_json(&c));
    } else if card {
        out.data(c.to_line());
    } else {
        out.data(c.id.to_hex());
    }
    Ok(0)
}

fn card_json(c: &Card) -> serde_json::Value {
    json!({ "id": c.id.to_hex(), "name": c.name, "sign_key": crate::render::hex(&c.sign_key), "box_key": crate::render::hex(&c.box_key), "card": c.to_line() })
}

pub fn peers(out: &Out, r: &mut Replica, cmd: PeersCommand) -> Result<u8> {
    match cmd {
        PeersCommand::Add { card, name } => {
            let bytes = if card == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .context("reading the card from stdin")?;
                b
            } else {
                input_file(Path::new(&card), "card file")?;
                std::fs::read(&card).with_context(|| format!("reading the card {card}"))?
            };
            let text = String::from_utf8_lossy(&bytes);
            let line = text
                .lines()
                .find(|l| l.starts_with("tide-card-v1"))
                .ok_or_else(|| {
                    rejected(
                        format!("{card} holds no tide card"),
                        Some("on the peer, run `tide --db FILE id --card > peer.card`"),
                    )
                })?;
            let mut c = Card::parse(line).map_err(|e| {
                rejected(
                    format!("the card in {card} is damaged: {e}"),
                    Some("ask the peer for its card again"),
                )
            })?;
            if let Some(n) = name {
                c.name = n;
            }
            if r.id().ok() == Some(c.id) {
                return Err(usage(
                    "that is this replica's own card",
                    Some("add the card of another replica"),
                ));
            }
            let known = r.known_cards()?.into_iter().find(|k| k.id == c.id);
            if known.as_ref() == Some(&c) {
                out.say(format!(
                    "{} ({}) is already a peer with this card; nothing changed.",
                    c.name,
                    c.id.short()
                ));
                return Ok(0);
            }
            r.add_peer(&c)?;
            // A hub that listed it as pending has admitted it now.
            r.remove_transport_state(&format!("pending {}", c.id.to_hex()))?;
            match known {
                Some(old) => {
                    if old.name != c.name {
                        out.say(format!(
                            "Renamed peer {} → {} ({}).",
                            old.name,
                            c.name,
                            c.id.short()
                        ));
                    }
                    if old.box_key != c.box_key {
                        out.say(format!(
                            "Peer {} ({}) has a new encryption key: bundles encrypted to it use the new one.",
                            c.name,
                            c.id.short()
                        ));
                    }
                }
                None => out.say(format!(
                    "Added peer {} ({}); bundles it signs are accepted from now on.",
                    c.name,
                    c.id.short()
                )),
            }
            if !r.quarantine()?.is_empty() {
                out.say("Changes from it may be waiting in quarantine: tide quarantine retry");
            }
        }
        PeersCommand::List => {
            let ours = r.version_vector()?;
            let mut rows = Vec::new();
            for p in r.peers()? {
                let n = lacks(&ours, &r.peer_ack(p.id)?);
                rows.push((p, n));
            }
            if out.json {
                out.json(&json!(
                    rows.iter()
                        .map(|(p, n)| json!({"id": p.id.to_hex(), "name": p.name, "lacks": n}))
                        .collect::<Vec<_>>()
                ));
            } else if rows.is_empty() {
                out.say("No peers yet. Add one: tide peers add CARD");
            } else {
                for (p, n) in rows {
                    out.data(format!("{}  {:<20} lacks {n}", p.id.short(), p.name));
                }
            }
        }
        PeersCommand::Show { peer } => {
            let p = find_peer(r, &peer)?;
            let acked = r.peer_ack(p.id)?;
            if out.json {
                let mut j = card_json(&p);
                j["acknowledged"] = json!(
                    acked
                        .iter()
                        .map(|(o, s)| (o.to_hex(), *s))
                        .collect::<std::collections::BTreeMap<_, _>>()
                );
                out.json(&j);
            } else {
                out.data(format!(
                    "name  {}\nid    {}\ncard  {}",
                    p.name,
                    p.id.to_hex(),
                    p.to_line()
                ));
                for (o, s) in acked {
                    out.data(format!("has   {} up to change {s}", peer_name(r, o)));
                }
            }
        }
        PeersCommand::Remove { peer } => {
            let p = find_peer(r, &peer)?;
            if r.id().ok() == Some(p.id) {
                return Err(usage(
                    format!("{peer:?} is this replica itself, not a peer"),
                    Some("tide --db FILE peers list"),
                ));
            }
            r.remove_peer(p.id)?;
            out.say(format!(
                "Removed {} ({}): changes it signs are refused from now on; what it wrote stays.",
                p.name,
                p.id.short()
            ));
        }
        PeersCommand::Pending => {
            let pending = pending_peers(r)?;
            if out.json {
                out.json(&json!(pending.iter().map(|(c, first, last)| json!({"id": c.id.to_hex(), "name": c.name, "first_seen": first, "last_seen": last})).collect::<Vec<_>>()));
            } else if pending.is_empty() {
                out.say("No replica is waiting to be accepted.");
            } else {
                for (c, first, last) in &pending {
                    out.data(format!(
                        "{}  {:<16} first {}  last {}",
                        c.id.short(),
                        c.name,
                        time((first * 1000) << 16),
                        time((last * 1000) << 16),
                    ));
                }
                out.say(format!(
                    "Accept one with: tide --db {} peers accept ID",
                    r.path().display()
                ));
            }
        }
        PeersCommand::Accept { peer } => {
            let pending = pending_peers(r)?;
            let found: Vec<_> = pending
                .iter()
                .filter(|(c, _, _)| {
                    c.id.to_hex().starts_with(&peer.to_lowercase()) || c.name == peer
                })
                .collect();
            let card = match found.as_slice() {
                [(c, _, _)] => c.clone(),
                [] => {
                    return Err(usage(
                        format!("no pending replica {peer:?}"),
                        Some("tide --db FILE peers pending  # lists them"),
                    ));
                }
                _ => {
                    return Err(usage(
                        format!("{peer:?} names several pending replicas"),
                        Some("give more characters of the id (tide peers pending)"),
                    ));
                }
            };
            r.add_peer(&card)?;
            r.remove_transport_state(&format!("pending {}", card.id.to_hex()))?;
            out.say(format!(
                "Accepted {} ({}): its next sync goes through.",
                card.name,
                card.id.short()
            ));
        }
    }
    Ok(0)
}

/// Replicas a hub refused and listed: card, first and last seen (seconds since 1970).
fn pending_peers(r: &Replica) -> Result<Vec<(Card, u64, u64)>> {
    let known: Vec<_> = r.peers()?.into_iter().map(|p| p.id).collect();
    let mut out = Vec::new();
    for (_, value) in r.transport_states("pending ")? {
        let text = String::from_utf8_lossy(&value).into_owned();
        let mut lines = text.lines();
        let Some(card) = lines.next().and_then(|l| Card::parse(l).ok()) else {
            continue;
        };
        // Admitted since (with `peers add`, or accepted on another day).
        if known.contains(&card.id) {
            continue;
        }
        let first = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let last = lines.next().and_then(|l| l.parse().ok()).unwrap_or(first);
        out.push((card, first, last));
    }
    Ok(out)
}

fn entry_json(e: &tide_core::LogEntry) -> serde_json::Value {
    json!({
        "origin": e.change.origin.to_hex(),
        "origin_name": e.origin_name,
        "seq": e.change.seq,
        "hlc": e.hlc,
        "time": time(e.hlc),
        "tables": e.tables,
        "ops": e.ops,
        "state": e.state.as_str(),
    })
}

pub fn log(
    out: &Out,
    r: &Replica,
    origin: Option<String>,
    table: Option<String>,
    limit: usize,
) -> Result<u8> {
    let origin = origin.map(|o| find_peer(r, &o).map(|c| c.id)).transpose()?;
    let entries = r.log(origin, table.as_deref(), limit)?;
    if out.json {
        out.json(&json!(entries.iter().map(entry_json).collect::<Vec<_>>()));
    } else if entries.is_empty() {
        out.say("The log is empty.");
    } else {
        for e in entries {
            out.data(format!(
                "{}  {:<14} #{:<5} {:>6} op(s)  {}  {}",
                time(e.hlc),
                e.origin_name,
                e.change.seq,
                e.ops,
                e.tables.join(","),
                e.state
            ));
        }
    }
    Ok(0)
}

pub fn watch(out: &Out, r: &mut Replica, interval: u64, count: Option<usize>) -> Result<u8> {
    // Only what is applied after this point is new; nothing older is read again.
    let mut seen = r.applied_vector()?;
    out.say("Watching; one JSON line per change sealed here or applied from a peer. Ctrl-C stops.");
    let mut printed = 0usize;
    loop {
        if let Err(e) = r.seal() {
            out.say(format!("warning: {e}"));
        }
        for e in r.applied_since(&seen)? {
            let s = seen.entry(e.change.origin).or_insert(0);
            *s = (*s).max(e.change.seq);
            println!("{}", entry_json(&e));
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return Ok(0);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(interval));
    }
}

pub fn quarantine(out: &Out, r: &mut Replica, cmd: QuarantineCommand) -> Result<u8> {
    match cmd {
        QuarantineCommand::List => {
            let q = r.quarantine()?;
            if out.json {
                out.json(&json!(q.iter().map(|e| json!({"number": e.number, "origin": e.change.origin.to_hex(), "seq": e.change.seq, "reason": e.reason.code(), "detail": e.detail})).collect::<Vec<_>>()));
            } else if q.is_empty() {
                out.say("The quarantine is empty.");
            } else {
                for e in q {
                    out.data(format!(
                        "{:>4}  {}:{}  {:<16} {}",
                        e.number,
                        e.change.origin.short(),
                        e.change.seq,
                        e.reason,
                        e.detail
                    ));
                }
            }
        }
        QuarantineCommand::Retry => {
            let report = r.retry_quarantine()?;
            out.say(format!(
                "Applied {} change(s); {} still in quarantine.",
                report.applied,
                r.quarantine()?.len()
            ));
        }
        QuarantineCommand::Discard { number } => {
            r.discard_quarantined(number)?;
            out.say(format!("Discarded quarantine entry {number}."));
        }
    }
    Ok(0)
}

pub fn doctor(out: &Out, r: &mut Replica, repair: bool) -> Result<u8> {
    let findings = r.doctor(repair)?;
    if out.json {
        out.json(&json!(findings.iter().map(|f| json!({"check": f.check.name(), "ok": f.ok, "detail": f.detail, "repaired": f.repaired, "next": (!f.ok).then_some(crate::failure::remedy_next(f.remedy))})).collect::<Vec<_>>()));
    } else {
        for f in &findings {
            out.data(format!(
                "{} {:<20} {}",
                if f.repaired {
                    "fixed"
                } else if f.ok {
                    "ok   "
                } else {
                    "FAIL "
                },
                f.check,
                f.detail
            ));
        }
    }
    let failing: Vec<_> = findings.iter().filter(|f| !f.ok).collect();
    if !failing.is_empty() {
        let db = r.path().display().to_string();
        let mut said = format!("{} check(s) failed.", failing.len());
        for f in &failing {
            said.push_str(&format!(
                "\n  Next ({}): {}",
                f.check,
                crate::failure::remedy_next(f.remedy).replace("FILE", &db)
            ));
        }
        out.say(said);
        return Ok(crate::failure::INTERNAL);
    }
    Ok(0)
}
