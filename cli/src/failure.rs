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
    let message = message(e);
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
    if let Some(t) = e.downcast_ref::<tide_transports::TransportError>() {
        return transport(t, message);
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

fn transport(t: &tide_transports::TransportError, message: String) -> Failure {
    use tide_transports::TransportError::*;
    let (next, code): (Option<String>, u8) = match t {
        Bundle(b) => return bundle(b, message),
        Core(c) => return core(c, message),
        NoFolder(_) => (Some("check the path; a stick must be plugged in and mounted".into()), USAGE),
        MailboxVersion { .. } => (Some("use a tide that reads this mailbox, or another folder".into()), REJECTED),
        ReadOnly(_) => (Some("make the folder writable, or only import from it: tide sync FOLDER --receive-only".into()), USAGE),
        Full { .. } => (
            Some("free space on the folder's disk, or use a larger stick, then run the same command again; what was imported is kept".into()),
            INTERNAL,
        ),
        Protocol(_) | Closed => (
            Some("look at the other side's messages (above, for --command), then run the same command again: every page imported so far is kept".into()),
            INTERNAL,
        ),
        Unreachable { .. } => (
            Some("check the URL and that the hub runs (`tide serve` on it); every page imported so far is kept".into()),
            INTERNAL,
        ),
        UnknownHub { card, .. } => (
            Some(format!("if this is your hub, trust it first: save its card ({card}) to hub.card and run tide peers add hub.card")),
            REJECTED,
        ),
        UnknownToHub { replica, .. } => (
            Some(format!("on the hub, accept this replica: tide --db HUB.db peers accept {}", replica.short())),
            REJECTED,
        ),
        TooLarge { .. } => (
            Some("a proxy in front of the hub limits request bodies: raise its limit (nginx: client_max_body_size) or lower --page-size".into()),
            INTERNAL,
        ),
        Io { .. } => (None, INTERNAL),
        // An error a later transports crate adds.
        _ => (None, INTERNAL),
    };
    Failure {
        message,
        unchanged: false,
        next,
        code,
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

/// What to do about a damaged database file.
const DAMAGED_NEXT: &str = "keep a copy of the file as it is; restore the replica from a backup, or make a new replica (`tide init`) and import from its peers: they hold every change this replica sent them";

/// What to do when the log or the tables differ from what tide wrote.
const ALTERED_NEXT: &str = "keep a copy of the file and report it; a new replica (`tide init`) that imports from this one's peers holds every change they received";

/// What to do about a database with no tide identity yet.
const INIT_NEXT: &str = "tide --db FILE init --name NAME";

/// The next step for a failed doctor check, by its remedy (`FILE` stands for the
/// database). Every remedy is named; the last arm is for remedies a later core adds.
pub fn remedy_next(remedy: tide_core::Remedy) -> &'static str {
    use tide_core::Remedy;
    match remedy {
        Remedy::Repair => "tide --db FILE doctor --repair  # re-creates them",
        Remedy::RestoreOrRebuild => DAMAGED_NEXT,
        Remedy::Report => ALTERED_NEXT,
        Remedy::NewIdentity => {
            "if this file is a copy or a restored backup, give it its own identity: tide --db FILE init --new-identity"
        }
        Remedy::Init => INIT_NEXT,
        Remedy::Retrack => {
            "once every replica's application has migrated: tide --db FILE untrack TABLE, then tide --db FILE track TABLE"
        }
        // A remedy a later core adds.
        _ => ALTERED_NEXT,
    }
}

const RUN_AGAIN_NEXT: &str = "run the same command again; if it fails again, run `tide doctor`";

const CONFLICTS_NEXT: &str = "tide --db FILE conflicts list";

/// The message: each layer of the error's chain, as `{:#}` shows it, with the CLI's
/// own wording for the core errors it says more about.
fn message(e: &anyhow::Error) -> String {
    e.chain().map(worded).collect::<Vec<_>>().join(": ")
}

fn worded(layer: &(dyn std::error::Error + 'static)) -> String {
    let core = match layer.downcast_ref::<BundleError>() {
        Some(BundleError::Core(c)) => Some(c),
        _ => layer.downcast_ref::<tide_core::Error>(),
    };
    match core {
        Some(tide_core::Error::DiskFull(tide_core::Interrupted::Import)) => {
            "the disk is full: free some space and import again; nothing was imported".into()
        }
        Some(tide_core::Error::DiskFull(tide_core::Interrupted::Retry)) => {
            "the disk is full: free some space and run the retry again; nothing was retried".into()
        }
        _ => layer.to_string(),
    }
}

/// Whether anything changed, the next step and the exit code for each core error. Every
/// variant is named; the last arm is for variants a later core adds.
fn core(c: &tide_core::Error, message: String) -> Failure {
    use tide_core::Error::*;
    use tide_core::{
        ApplyError, CannotResolveReason as Why, LogBodyError, OpenError, ResolveError, SealError,
        TrackError, UntrackableReason,
    };
    let (unchanged, next, code): (bool, Option<String>, u8) = match c {
        Open(OpenError::NotInitialized) => (true, Some(INIT_NEXT.into()), USAGE),
        Open(OpenError::Damaged { .. }) => (true, Some(DAMAGED_NEXT.into()), INTERNAL),
        Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseCorrupt => {
            (false, Some(DAMAGED_NEXT.into()), INTERNAL)
        }
        Open(OpenError::OldLogFormat) => (
            true,
            Some("keep the file, make a new replica with this build (`tide init` on a copy of your tables without the _tide_ tables) and sync it from a peer".into()),
            USAGE,
        ),
        Open(OpenError::NoDatabase(_)) => (true, Some("check the path, or create a replica there: tide --db FILE init --name NAME".into()), USAGE),
        Open(OpenError::NotADatabase { .. }) => (true, Some("check the path: --db names the replica's SQLite file".into()), USAGE),
        Open(OpenError::OlderLayout { .. }) => (true, Some("any command that writes upgrades the file in place, such as `tide --db FILE status`; then run this again".into()), USAGE),
        Open(OpenError::NewerLayout { .. }) => (true, Some("use a tide at least as new as the one that wrote this file (`tide --version` shows this one's)".into()), USAGE),
        Open(OpenError::IdentityMissing { .. } | OpenError::IdentityConflict { .. }) => (
            true,
            Some("if this file is a copy or a restored backup, give it its own identity: `tide --db FILE init --new-identity`; if you moved the original, point TIDE_HOME at its key store".into()),
            USAGE,
        ),
        Migration(_) => (
            true,
            Some("fix the SQL and run it again; tide runs it in one transaction of its own, so leave out BEGIN and COMMIT".into()),
            REJECTED,
        ),
        Track(TrackError::NoSuchTable(_)) => (true, Some("create the table first, or check the name (`sqlite3 FILE .tables`)".into()), USAGE),
        Track(TrackError::NoPrimaryKey(t)) => (true, Some(format!("give {t} a PRIMARY KEY (a random id such as a UUID works best), then track it")), USAGE),
        Track(TrackError::Autoincrement(_)) => (true, Some("use a random or composite key instead".into()), USAGE),
        Track(TrackError::Untrackable { reason: UntrackableReason::KeyCollation, .. }) => {
            (true, Some("declare the key columns COLLATE BINARY".into()), USAGE)
        }
        Track(TrackError::Untrackable { reason: UntrackableReason::NullKeys { .. }, .. }) => {
            (true, Some("give those rows a key (or delete them) first".into()), USAGE)
        }
        Track(TrackError::Untrackable {
            reason:
                UntrackableReason::TideTable
                | UntrackableReason::NulInColumnName
                | UntrackableReason::PartialIndex { .. }
                | UntrackableReason::ExpressionIndex { .. },
            ..
        }) => (true, None, USAGE),
        // A reason a later core adds.
        Track(TrackError::Untrackable { .. }) => (true, None, USAGE),
        Track(TrackError::NotTracked(_)) => (true, Some("tide --db FILE status  # lists tracked tables".into()), USAGE),
        Resolve(ResolveError::UnknownConflict(_) | ResolveError::UnknownCandidate { .. }) => {
            (true, Some(CONFLICTS_NEXT.into()), USAGE)
        }
        Resolve(ResolveError::AmbiguousConflict(_)) => {
            (true, Some("tide --db FILE conflicts list  # then give more characters of the id".into()), USAGE)
        }
        Resolve(ResolveError::AmbiguousCandidate { conflict, .. }) => (
            true,
            Some(format!("tide --db FILE conflicts show {conflict}  # then give more characters of the candidate")),
            USAGE,
        ),
        Resolve(ResolveError::CannotResolve { reason, .. }) => {
            let next = match reason {
                Why::WholeRowHeld => "keep one of the candidates (--keep CANDIDATE) instead of giving a value",
                Why::BreaksConstraint { .. } => {
                    "fix what it refers to or its values and it returns by itself, or discard it by keeping the winner (--keep winner)"
                }
                Why::ParentUntracked { .. } => "add the row it refers to by hand and it returns by itself",
                Why::ParentNotByKey { .. } => "restore the row it refers to by hand and it returns by itself",
                Why::ParentNeverHere { .. } => "add the row it refers to by hand and the held row returns by itself",
                Why::ParentHeld { .. } => "resolve the conflict of the row it refers to first (tide --db FILE conflicts list)",
                Why::NothingToWrite | Why::ParentsPresent => CONFLICTS_NEXT,
                // A reason a later core adds.
                _ => CONFLICTS_NEXT,
            };
            (true, Some(next.into()), USAGE)
        }
        UnknownPeer(_) => (true, Some("tide --db FILE peers list".into()), USAGE),
        RemoveSelf => (true, None, USAGE),
        UnknownQuarantine(_) => (true, Some("tide --db FILE quarantine list".into()), USAGE),
        Rejected { .. } => (true, Some("ask the sender for a fresh copy; do not trust this input".into()), REJECTED),
        DiskFull(_) => (true, Some(DISK_FULL_NEXT.into()), INTERNAL),
        // A full disk anywhere else (a seal, a resolution): SQLite ends the transaction,
        // and tide's transactions are all-or-nothing.
        Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
            (true, Some(DISK_FULL_NEXT.into()), INTERNAL)
        }
        Apply(
            ApplyError::TransactionEnded
            | ApplyError::RowsAlreadyKnown { .. }
            | ApplyError::CheckWentOn { .. }
            | ApplyError::ImportWentOn { .. }
            | ApplyError::OfferedAfterFailure { .. },
        )
        | Seal(SealError::RowTwice { .. } | SealError::RowsAlreadyKnown { .. }) => (true, Some(RUN_AGAIN_NEXT.into()), INTERNAL),
        LogBody(
            LogBodyError::Decompress(_)
            | LogBodyError::Unpack(_)
            | LogBodyError::Missing
            | LogBodyError::UnknownPacking(_),
        ) => (false, Some("tide --db FILE doctor  # lists the damaged changes".into()), INTERNAL),
        LogBody(LogBodyError::Compress(_)) | Sqlite(_) | KeyStore { .. } | Decode(_) | Stopped => (false, None, INTERNAL),
        // A variant a later core adds (of `Error` or of an operation's enum).
        _ => (false, None, INTERNAL),
    };
    Failure {
        message,
        unchanged,
        next,
        code,
    }
}
