//! Turning errors into what a person reads: what happened, whether anything changed, the
//! next command to run, and the exit code.

use tide_bundle::BundleError;

/// A mistake of the person at the keyboard, found after parsing: a usage error (no
/// database, an unknown peer name, …: exit 2) or an input file whose contents are
/// refused (a damaged card: exit 3). Nothing was changed.
#[derive(Debug)]
pub struct Refused {
    pub message: String,
    pub next: Option<String>,
    pub code: u8,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

pub fn usage(message: impl Into<String>, next: Option<&str>) -> anyhow::Error {
    refused(message, next, USAGE)
}

pub fn rejected(message: impl Into<String>, next: Option<&str>) -> anyhow::Error {
    refused(message, next, REJECTED)
}

fn refused(message: impl Into<String>, next: Option<&str>, code: u8) -> anyhow::Error {
    Refused {
        message: message.into(),
        next: next.map(String::from),
        code,
    }
    .into()
}

/// Prerequisites missing: exit 4.
#[derive(Debug)]
pub struct Prerequisites(pub String);

impl std::fmt::Display for Prerequisites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Prerequisites {}

pub struct Failure {
    pub message: String,
    pub unchanged: bool,
    pub next: Option<String>,
    pub code: u8,
}

pub const INTERNAL: u8 = 1;
pub const USAGE: u8 = 2;
pub const REJECTED: u8 = 3;
pub const PREREQUISITES: u8 = 4;
pub const CONFLICTS_OPEN: u8 = 5;

pub fn describe(e: &anyhow::Error) -> Failure {
    let message = format!("{e:#}");
    if let Some(r) = e.downcast_ref::<Refused>() {
        return Failure {
            message,
            unchanged: true,
            next: r.next.clone(),
            code: r.code,
        };
    }
    if e.downcast_ref::<Prerequisites>().is_some() {
        return Failure {
            message,
            unchanged: true,
            next: Some("import the bundles it builds on first (`tide bundle inspect FILE` lists them), or import it anyway: its changes wait until they arrive".into()),
            code: PREREQUISITES,
        };
    }
    if let Some(b) = e.downcast_ref::<BundleError>() {
        return bundle(b, message);
    }
    if let Some(c) = e.downcast_ref::<tide_core::Error>() {
        return core(c, message);
    }
    Failure {
        message,
        unchanged: false,
        next: None,
        code: INTERNAL,
    }
}

fn bundle(b: &BundleError, message: String) -> Failure {
    use BundleError::*;
    let (next, code): (Option<String>, u8) = match b {
        UnknownSender(id) => (Some(format!("get the sender's card (`tide id --card` on it) and run `tide peers add CARD`; its id starts {}", id.short())), REJECTED),
        BadSignature | BadCiphertext => (Some("ask the sender for a fresh copy; do not trust this file".into()), REJECTED),
        Truncated(_) => (Some("copy the file again; it was cut short".into()), REJECTED),
        NoMatchingKey => (Some("give the right passphrase (--passphrase-file FILE or $TIDE_PASSPHRASE), or import on the replica it was encrypted to".into()), REJECTED),
        NeedKey => (Some("give its passphrase with --passphrase-file FILE or $TIDE_PASSPHRASE".into()), REJECTED),
        NotForThisReplica { .. } => (Some("import it on the replica it is addressed to (`tide bundle inspect FILE` shows which)".into()), REJECTED),
        MissingParts { .. } => (Some("import again with every part".into()), REJECTED),
        UnsupportedVersion(v) if *v < tide_bundle::VERSION => (Some("ask the sender to export it again with a current tide".into()), REJECTED),
        UnsupportedVersion(_) | UnknownCritical(_) | UnknownFlags(_) => (Some("upgrade tide on this machine".into()), REJECTED),
        NotABundle | Malformed(_) | LimitExceeded { .. } | TrailingBytes | BadSize { .. } | BadCompression(_) | BadImage(_) | Parts(_) => {
            (Some("check that this is the .tide file you meant; ask the sender for a fresh copy".into()), REJECTED)
        }
        Core(c) => return core(c, message),
        Io(_) | Sqlite(_) => (None, INTERNAL),
    };
    Failure {
        message,
        unchanged: true,
        next,
        code,
    }
}

const DISK_FULL_NEXT: &str = "free space on the disk that holds the database (`df -h` shows it), then run the same command again";

fn core(c: &tide_core::Error, message: String) -> Failure {
    use tide_core::Error::*;
    let (unchanged, next, code): (bool, Option<String>, u8) = match c {
        NotInitialized => (true, Some("tide --db FILE init --name NAME".into()), USAGE),
        Damaged(_) => (true, Some(tide_core::DAMAGED_NEXT.into()), INTERNAL),
        Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseCorrupt => {
            (false, Some(tide_core::DAMAGED_NEXT.into()), INTERNAL)
        }
        OldLogFormat => (true, None, USAGE),
        NoDatabase(_) => (true, Some("check the path, or create a replica there: tide --db FILE init --name NAME".into()), USAGE),
        NotADatabase { .. } => (true, Some("check the path: --db names the replica's SQLite file".into()), USAGE),
        OlderLayout { .. } => (true, Some("any command that writes upgrades the file in place, such as `tide --db FILE status`; then run this again".into()), USAGE),
        IdentityMissing { .. } | IdentityConflict { .. } => (
            true,
            Some("if this file is a copy or a restored backup, give it its own identity: `tide --db FILE init --new-identity`; if you moved the original, point TIDE_HOME at its key store".into()),
            USAGE,
        ),
        NoSuchTable(_) => (true, Some("create the table first, or check the name (`sqlite3 FILE .tables`)".into()), USAGE),
        NoPrimaryKey(t) => (true, Some(format!("give {t} a PRIMARY KEY (a random id such as a UUID works best), then track it")), USAGE),
        Autoincrement(_) | Untrackable(..) => (true, None, USAGE),
        NotTracked(_) => (true, Some("tide --db FILE status  # lists tracked tables".into()), USAGE),
        UnknownConflict(_) | AmbiguousConflict(_) | UnknownCandidate { .. } | CannotResolve { .. } => {
            (true, Some("tide --db FILE conflicts list".into()), USAGE)
        }
        UnknownPeer(_) => (true, Some("tide --db FILE peers list".into()), USAGE),
        UnknownQuarantine(_) => (true, Some("tide --db FILE quarantine list".into()), USAGE),
        Rejected { .. } => (true, Some("ask the sender for a fresh copy; do not trust this input".into()), REJECTED),
        DiskFull(_) => (true, Some(DISK_FULL_NEXT.into()), INTERNAL),
        // A full disk anywhere else (a seal, a resolution): SQLite ends the transaction,
        // and tide's transactions are all-or-nothing.
        Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
            (true, Some(DISK_FULL_NEXT.into()), INTERNAL)
        }
        ApplyAborted(_) | SealAborted(_) => (true, Some("run the same command again; if it fails again, run `tide doctor`".into()), INTERNAL),
        _ => (false, None, INTERNAL),
    };
    Failure {
        message,
        unchanged,
        next,
        code,
    }
}
