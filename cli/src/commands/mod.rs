//! One function per command; each parses nothing and prints through `Out`.

mod bundle;
mod conflicts;
mod demo;
mod replica;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tide_core::{Card, KeyStore, Replica, ReplicaId};

use crate::cli::{Cli, Command};
use crate::failure::usage;

/// Where output goes: data on stdout, messages on stderr (unless --quiet).
pub struct Out {
    pub json: bool,
    pub quiet: bool,
    pub verbose: bool,
}

impl Out {
    /// A message for a person, on stderr.
    pub fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// Data, on stdout.
    pub fn data(&self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
    }

    pub fn json(&self, v: &serde_json::Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("JSON values always serialize")
        );
    }
}

pub fn run(args: Cli) -> Result<u8> {
    let out = Out {
        json: args.json,
        quiet: args.quiet,
        verbose: args.verbose,
    };
    let db = args.db;
    match args.command {
        Command::Demo { keep } => demo::run(&out, keep),
        Command::Init { name, new_identity } => {
            replica::init(&out, &db_path(&db)?, name, new_identity)
        }
        Command::Track { tables } => replica::track(&out, &mut open(&db)?, &tables),
        Command::Untrack { table } => replica::untrack(&out, &mut open(&db)?, &table),
        Command::Status { check } => replica::status(&out, &mut open(&db)?, check),
        Command::Id { card } => replica::id(&out, &open(&db)?, card),
        Command::Peers(cmd) => replica::peers(&out, &mut open(&db)?, cmd),
        Command::Log {
            origin,
            table,
            limit,
        } => replica::log(&out, &open(&db)?, origin, table, limit),
        Command::Watch { interval, count } => {
            replica::watch(&out, &mut open(&db)?, interval, count)
        }
        Command::Quarantine(cmd) => replica::quarantine(&out, &mut open(&db)?, cmd),
        Command::Doctor { repair } => replica::doctor(&out, &mut open(&db)?, repair),
        Command::Bundle(cmd) => bundle::run(&out, db.as_deref(), cmd),
        Command::Conflicts(cmd) => conflicts::run(&out, &mut open(&db)?, cmd),
    }
}

fn db_path(db: &Option<PathBuf>) -> Result<PathBuf> {
    db.clone().ok_or_else(|| {
        usage(
            "no database given",
            Some("pass --db FILE or set TIDE_DB=FILE"),
        )
    })
}

/// Opens an existing replica (never creates a file: a typo must not make an empty one).
pub fn open(db: &Option<PathBuf>) -> Result<Replica> {
    let path = db_path(db)?;
    open_path(&path)
}

pub fn open_path(path: &Path) -> Result<Replica> {
    if !path.exists() {
        return Err(usage(
            format!("no database at {}", path.display()),
            Some(&format!(
                "check the path, or create a replica there: tide --db {} init --name NAME",
                path.display()
            )),
        ));
    }
    let replica = Replica::open(path, KeyStore::from_env())
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(replica)
}

/// A peer by name, full id or id prefix.
pub fn find_peer(replica: &Replica, which: &str) -> Result<Card> {
    let peers = replica.known_cards()?;
    let wanted = which.trim().to_ascii_lowercase();
    let by_name: Vec<&Card> = peers.iter().filter(|c| c.name == which).collect();
    let matches: Vec<&Card> = if by_name.is_empty() {
        peers
            .iter()
            .filter(|c| c.id.to_hex().starts_with(&wanted))
            .collect()
    } else {
        by_name
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(usage(
            format!("no peer called {which:?}"),
            Some("tide peers list; add one with `tide peers add CARD`"),
        )),
        _ => Err(usage(
            format!("{which:?} names several peers"),
            Some("use more of the id (tide peers list)"),
        )),
    }
}

pub fn peer_name(replica: &Replica, id: ReplicaId) -> String {
    replica
        .known_cards()
        .ok()
        .and_then(|cs| cs.into_iter().find(|c| c.id == id).map(|c| c.name))
        .unwrap_or_else(|| id.short())
}

/// Reads a passphrase: a file, then $TIDE_PASSPHRASE, then (when asked and on a
/// terminal) a prompt that does not echo. Never from an argument.
pub fn passphrase(file: Option<&Path>, prompt: bool) -> Result<Option<Vec<u8>>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the passphrase file {}", f.display()))?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(usage(
                format!("the passphrase file {} is empty", f.display()),
                None,
            ));
        }
        return Ok(Some(line.into_bytes()));
    }
    if let Ok(p) = std::env::var("TIDE_PASSPHRASE")
        && !p.is_empty()
    {
        return Ok(Some(p.into_bytes()));
    }
    if prompt && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let p = rpassword::prompt_password("passphrase: ").context("reading the passphrase")?;
        return Ok(Some(p.into_bytes()));
    }
    Ok(None)
}
