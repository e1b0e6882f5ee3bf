//! One function per command; each parses nothing and prints through `Out`.

mod bundle;
mod conflicts;
mod demo;
mod replica;
mod sync;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tide_core::{Card, KeyStore, Replica, ReplicaId};

use crate::cli::{Cli, Command, ConflictsCommand, PeersCommand, QuarantineCommand};
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
        Command::Track { tables } => replica::track(&out, &mut open(&out, &db)?, &tables),
        Command::Untrack { table } => replica::untrack(&out, &mut open(&out, &db)?, &table),
        Command::Migrate { sql, file } => {
            let sql = match (sql, file) {
                (Some(sql), _) => sql,
                (None, Some(file)) => std::fs::read_to_string(&file).map_err(|e| {
                    crate::failure::usage(
                        format!("cannot read {}: {e}", file.display()),
                        Some("check the path of --file"),
                    )
                })?,
                (None, None) => unreachable!("clap requires SQL or --file"),
            };
            replica::migrate(&out, &mut open(&out, &db)?, &sql)
        }
        Command::Status { check } => replica::status(&out, &mut open(&out, &db)?, check),
        Command::Id { card } => replica::id(&out, &open_read(&db)?, card),
        Command::Peers(cmd) => {
            let mut r = match cmd {
                PeersCommand::List | PeersCommand::Show { .. } | PeersCommand::Pending => {
                    open_read(&db)?
                }
                PeersCommand::Add { .. }
                | PeersCommand::Remove { .. }
                | PeersCommand::Accept { .. } => open(&out, &db)?,
            };
            replica::peers(&out, &mut r, cmd)
        }
        Command::Log {
            origin,
            table,
            limit,
        } => replica::log(&out, &open_read(&db)?, origin, table, limit),
        Command::Watch { interval, count } => {
            replica::watch(&out, &mut open(&out, &db)?, interval, count)
        }
        Command::Quarantine(cmd) => {
            let mut r = match cmd {
                QuarantineCommand::List => open_read(&db)?,
                QuarantineCommand::Retry | QuarantineCommand::Discard { .. } => open(&out, &db)?,
            };
            replica::quarantine(&out, &mut r, cmd)
        }
        Command::Doctor { repair } => {
            let mut r = if repair {
                open(&out, &db)?
            } else {
                open_read(&db)?
            };
            replica::doctor(&out, &mut r, repair)
        }
        Command::Bundle(cmd) => bundle::run(&out, db.as_deref(), cmd),
        Command::Serve { listen } => {
            let path = db_path(&db)?;
            // The hub opens the file itself; opening it here says what is wrong first.
            let r = open_path(&out, &path)?;
            drop(r);
            sync::serve(&out, &path, &listen)
        }
        Command::Sync {
            target,
            command,
            send_only,
            receive_only,
            encrypt,
            watch,
            interval,
            page_size,
        } => {
            let page_bytes = crate::render::parse_size(&page_size).ok_or_else(|| {
                usage(
                    format!("--page-size {page_size:?} is not a size"),
                    Some("give a size such as 512K, 8M or 1G"),
                )
            })?;
            let how = sync::How {
                send_only,
                receive_only,
                encrypt,
                watch,
                interval,
                page_bytes,
            };
            sync::run(&out, &mut open(&out, &db)?, target, command, how)
        }
        Command::Conflicts(cmd) => {
            let mut r = match cmd {
                ConflictsCommand::List { .. } | ConflictsCommand::Show { .. } => open_read(&db)?,
                ConflictsCommand::Resolve { .. } => open(&out, &db)?,
            };
            conflicts::run(&out, &mut r, cmd)
        }
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

/// Opens an existing replica to write (never creates a file: a typo must not make an
/// empty one). Metadata an earlier tide wrote is upgraded, and that is said.
pub fn open(out: &Out, db: &Option<PathBuf>) -> Result<Replica> {
    open_path(out, &db_path(db)?)
}

pub fn open_path(out: &Out, path: &Path) -> Result<Replica> {
    let mut r = opened(path, Replica::open_existing(path, KeyStore::from_env()))?;
    if let Some((from, to)) = r.upgraded() {
        out.say(format!(
            "Upgraded tide's metadata in {} from layout {from} (an earlier version of tide) to layout {to}.",
            path.display()
        ));
    }
    // An application migration since the last command: capture follows it now.
    let followed = r.follow_schema()?;
    if followed.applied > 0 {
        out.say(format!(
            "Applied {} change(s) that waited for this replica's schema.",
            followed.applied
        ));
    }
    let shown = shell_word(path);
    for (table, why) in r.stopped_tables()? {
        out.say(format!(
            "warning: capture of {table} stopped: {why}; its writes are not sent.\n  Next: when every replica has migrated, tide --db {shown} untrack {table}, then tide --db {shown} track {table}"
        ));
    }
    Ok(r)
}

/// Opens an existing replica read-only: commands that only look never write the file,
/// not even to upgrade it.
pub fn open_read(db: &Option<PathBuf>) -> Result<Replica> {
    open_read_path(&db_path(db)?)
}

pub fn open_read_path(path: &Path) -> Result<Replica> {
    opened(path, Replica::open_read_only(path, KeyStore::from_env()))
}

/// Says what is wrong with the path, and the exact command that fixes it.
fn opened(path: &Path, result: tide_core::Result<Replica>) -> Result<Replica> {
    use tide_core::OpenError;
    let shown = shell_word(path);
    result.map_err(|e| match e {
        tide_core::Error::Open(OpenError::NoDatabase(_)) => usage(
            format!("no database at {}", path.display()),
            Some(&format!(
                "check the path, or create a replica there: tide --db {shown} init --name NAME"
            )),
        ),
        tide_core::Error::Open(OpenError::NotInitialized) => usage(
            format!(
                "{} has no tide identity: it is not a tide replica yet",
                path.display()
            ),
            Some(&format!("tide --db {shown} init --name NAME")),
        ),
        tide_core::Error::Open(OpenError::NotADatabase { .. }) => usage(
            e.to_string(),
            Some("check the path: --db names the replica's SQLite file"),
        ),
        tide_core::Error::Open(OpenError::OlderLayout { .. }) => usage(
            format!("{}: {e}", path.display()),
            Some(&format!(
                "any command that writes upgrades it in place, such as `tide --db {shown} status`; then run this again"
            )),
        ),
        tide_core::Error::Open(OpenError::NewerLayout { .. }) => usage(
            format!("{}: {e}", path.display()),
            Some("use a tide at least as new as the one that wrote this file (`tide --version` shows this one's)"),
        ),
        other => anyhow::Error::new(other).context(format!("opening {}", path.display())),
    })
}

/// A path as it would be typed in a shell command.
pub fn shell_word(path: &Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+,:@%".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A file a command reads: refused as a usage error when absent or a folder, before
/// anything is opened.
pub fn input_file(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        return Err(usage(
            format!("{} is a folder, not a {what}", path.display()),
            Some("name the file itself"),
        ));
    }
    if !path.exists() {
        return Err(usage(
            format!("no {what} at {}", path.display()),
            Some("check the path"),
        ));
    }
    Ok(())
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
    if wanted.is_empty() {
        return Err(usage(
            "an empty peer name",
            Some("give a peer's name or id (tide peers list)"),
        ));
    }
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
        input_file(f, "passphrase file")?;
        let bytes = std::fs::read(f)
            .with_context(|| format!("reading the passphrase file {}", f.display()))?;
        let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Err(usage(
                format!("the passphrase file {} is empty", f.display()),
                Some("its first line is the passphrase"),
            ));
        }
        return Ok(Some(line.to_vec()));
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
