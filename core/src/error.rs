//! Typed errors, by operation: opening a replica file, tracking a table, resolving a
//! conflict, applying, sealing, reading the log's chunks. Each says what happened and
//! carries its data; what to do next is for the caller to say (the CLI names the next
//! command to run). [`Error`] wraps them all, with the failures any operation can meet.

use std::path::PathBuf;

pub use crate::format::codec::DecodeError;
use crate::format::ids::ReplicaId;
use crate::format::value::Value;

/// Everything the core engine can refuse or fail at: what every [`crate::Replica`]
/// method returns. Operations compose (an import seals first, tracking a table seals
/// first), so each operation's own enum is one variant here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite reported an error (disk full, locked database, corrupt file, …).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Reading or writing the key store failed.
    #[error("key store {path}: {source}")]
    KeyStore {
        /// The file or folder involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Stored bytes did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The database file cannot serve as a replica: absent, not SQLite, damaged, of a
    /// layout or log format this build does not take as it is, or without a usable
    /// identity.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A table cannot be tracked, or is not tracked.
    #[error(transparent)]
    Track(#[from] TrackError),
    /// A conflict cannot be resolved as asked.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// A change's chunk kept in the log could not be packed, unpacked or found.
    #[error(transparent)]
    LogBody(#[from] LogBodyError),
    /// Changes could not be applied; the whole apply was rolled back.
    #[error("apply failed and was rolled back, nothing changed: {0}")]
    Apply(ApplyError),
    /// Sealing found the capture log in a state it cannot turn into a valid change; the
    /// seal was rolled back and the captures are kept.
    #[error("sealing stopped, nothing was sealed and the captured writes are kept: {0}")]
    Seal(SealError),
    /// A change failed verification; the whole import was refused before any write.
    #[error("{} rejected, nothing was imported: {reason}", change.map(|c| format!("change {c}")).unwrap_or_else(|| "input".into()))]
    Rejected {
        /// The change, when its id could be read.
        change: Option<crate::format::ids::ChangeId>,
        /// What failed.
        reason: crate::format::change::VerifyError,
    },
    /// No peer with this id or name.
    #[error("no peer {0:?} is known")]
    UnknownPeer(String),
    /// A replica was asked to remove itself from its peers.
    #[error("a replica cannot remove itself: it is not one of its peers")]
    RemoveSelf,
    /// No quarantine entry with this number.
    #[error("no quarantine entry number {0}")]
    UnknownQuarantine(i64),
    /// A caller's callback asked to stop (its own error travels separately).
    #[error("stopped by the caller")]
    Stopped,
    /// The application's migration given to [`Replica::migrate`](crate::Replica::migrate)
    /// failed; it was rolled back and capture goes on as before.
    #[error("the migration failed and was rolled back: {0}")]
    Migration(String),
    /// The disk holding the database is full. The transaction was rolled back whole.
    #[error("the disk is full: nothing was {}", .0.undone())]
    DiskFull(Interrupted),
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Error {
        Error::Apply(e)
    }
}

impl From<SealError> for Error {
    fn from(e: SealError) -> Error {
        Error::Seal(e)
    }
}

/// What a full disk stopped ([`Error::DiskFull`]); none of it was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interrupted {
    /// An import of offered changes.
    Import,
    /// A retry of the quarantine.
    Retry,
}

impl Interrupted {
    /// What was not done, as the past participle that ends "nothing was …".
    fn undone(self) -> &'static str {
        match self {
            Interrupted::Import => "imported",
            Interrupted::Retry => "retried",
        }
    }
}

/// Why a database file cannot serve as a replica: found when it is opened, or when its
/// identity is first used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No file at the database path (only `Replica::open` creates one).
    #[error("no database at {}", .0.display())]
    NoDatabase(PathBuf),
    /// The path is not a SQLite database.
    #[error("{} is not a SQLite database: {reason}", path.display())]
    NotADatabase {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        reason: NotADatabaseReason,
    },
    /// SQLite finds the database file damaged (pages that do not read back as written).
    #[error("the database file is damaged: {report}")]
    Damaged {
        /// What SQLite's integrity check reports, summed up in one line (its own words).
        report: String,
    },
    /// The database's tide metadata has an earlier layout than this build's, and it was
    /// opened read-only, so it was not upgraded.
    #[error(
        "this database's tide metadata was written by an earlier version of tide (layout \
         {found}; this build uses layout {current}); a read-only command does not upgrade it"
    )]
    OlderLayout {
        /// The layout (number of metadata migrations) the file has.
        found: u64,
        /// The layout this build writes.
        current: u64,
    },
    /// The database's tide metadata has a later layout than any this build knows: a
    /// newer tide wrote it, and this build could misread or damage it.
    #[error(
        "this database's tide metadata was written by a newer version of tide (layout \
         {found}; this build knows layouts up to {current})"
    )]
    NewerLayout {
        /// The layout (number of metadata migrations) the file has.
        found: u64,
        /// The latest layout this build knows.
        current: u64,
    },
    /// The log holds changes of format 2, which this build does not read. Nothing was
    /// changed.
    #[error(
        "this database's change log was written by an earlier development build of tide \
         (change format 2); this build reads format 3 only"
    )]
    OldLogFormat,
    /// The database has no tide identity yet.
    #[error("this database has no tide identity yet")]
    NotInitialized,
    /// The database names an identity whose secret key is not in this key store: it was
    /// copied or restored from another machine or key store.
    #[error(
        "this database looks like a copy: its identity {replica} has no secret key in {keystore}"
    )]
    IdentityMissing {
        /// The identity recorded in the database.
        replica: ReplicaId,
        /// The key store that was searched.
        keystore: PathBuf,
    },
    /// The secret key exists, but the key store disagrees with this file about it.
    /// Sealing here would fork the identity's history.
    #[error(
        "this database looks like a copy or an old backup of {replica}: {reason}; \
         it must not write under that identity"
    )]
    IdentityConflict {
        /// The identity recorded in the database.
        replica: ReplicaId,
        /// How the key store disagrees with this file.
        reason: IdentityConflictReason,
    },
}

/// What a path given as a database is instead ([`OpenError::NotADatabase`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotADatabaseReason {
    /// A folder.
    #[error("it is a folder")]
    Folder,
    /// A file SQLite cannot read.
    #[error("SQLite cannot read it (it is some other kind of file, or damaged)")]
    Unreadable,
}

/// How the key store disagrees with a database about its identity
/// ([`OpenError::IdentityConflict`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityConflictReason {
    /// The key is bound to another database file: this one is a copy on the same machine.
    #[error("its key is bound to {}, not to {}", bound.display(), this.display())]
    BoundElsewhere {
        /// The file the key is bound to.
        bound: PathBuf,
        /// This file.
        this: PathBuf,
    },
    /// The identity has sealed more changes than this file holds: it is a restored backup.
    #[error("this identity has sealed change {sealed} but this file holds only {held}")]
    Behind {
        /// The last change the identity sealed.
        sealed: u64,
        /// The last of its changes this file holds.
        held: u64,
    },
}

/// Why a table cannot be tracked, or untracked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The named table does not exist.
    #[error("no table named {0:?} in this database")]
    NoSuchTable(String),
    /// The table has no declared PRIMARY KEY, so rows have no stable identity across replicas.
    #[error("table {0:?} has no declared PRIMARY KEY; tide needs one to name rows across replicas")]
    NoPrimaryKey(String),
    /// AUTOINCREMENT keys are minted independently by each replica and collide.
    #[error("table {0:?} uses AUTOINCREMENT; every replica would mint the same ids")]
    Autoincrement(String),
    /// The table is not tracked by tide.
    #[error("table {0:?} is not tracked")]
    NotTracked(String),
    /// The table has something tide cannot sync.
    #[error("table {table:?} cannot be tracked: {reason}")]
    Untrackable {
        /// The table.
        table: String,
        /// What tide cannot sync.
        reason: UntrackableReason,
    },
}

/// What tide cannot sync in a table ([`TrackError::Untrackable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UntrackableReason {
    /// The table is one of tide's own.
    #[error("tide's own tables are never tracked")]
    TideTable,
    /// The primary key compares with a collation other than BINARY.
    #[error(
        "its PRIMARY KEY compares with a collation other than BINARY, so keys that differ \
         byte-wise could name one row"
    )]
    KeyCollation,
    /// Rows have a NULL primary key.
    #[error("{rows} row(s) have a NULL primary key")]
    NullKeys {
        /// How many.
        rows: u64,
    },
    /// A column name contains NUL.
    #[error("a column name contains NUL")]
    NulInColumnName,
    /// A UNIQUE index is partial (has a WHERE clause).
    #[error(
        "UNIQUE index {index:?} is partial (has a WHERE clause); tide cannot yet merge \
         concurrent rows under it"
    )]
    PartialIndex {
        /// The index.
        index: String,
    },
    /// A UNIQUE index is on an expression.
    #[error(
        "UNIQUE index {index:?} is on an expression; tide cannot yet merge concurrent rows \
         under it"
    )]
    ExpressionIndex {
        /// The index.
        index: String,
    },
}

/// Why a conflict cannot be resolved as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No open conflict has this id (or id prefix).
    #[error("no open conflict with id {0:?}")]
    UnknownConflict(String),
    /// The conflict id prefix matches several conflicts.
    #[error("conflict id {0:?} is ambiguous: it starts the ids of several open conflicts")]
    AmbiguousConflict(String),
    /// The conflict has no candidate with this id.
    #[error("conflict {conflict} has no candidate {candidate:?}")]
    UnknownCandidate {
        /// The conflict.
        conflict: String,
        /// The candidate asked for.
        candidate: String,
    },
    /// The candidate id prefix matches several candidates of the conflict.
    #[error(
        "candidate {candidate:?} of conflict {conflict} is ambiguous: it starts the ids of \
         several candidates"
    )]
    AmbiguousCandidate {
        /// The conflict.
        conflict: String,
        /// The candidate asked for.
        candidate: String,
    },
    /// The conflict cannot be resolved the way asked.
    #[error("conflict {conflict} cannot be resolved that way: {reason}")]
    CannotResolve {
        /// The conflict.
        conflict: String,
        /// Why not.
        reason: CannotResolveReason,
    },
}

/// Why a conflict cannot be resolved the way asked ([`ResolveError::CannotResolve`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CannotResolveReason {
    /// A value was given, but the conflict holds a whole row.
    #[error("a whole row is held, not one value")]
    WholeRowHeld,
    /// The held row breaks a constraint with no other row involved.
    #[error("the row breaks a {constraint} constraint on its own")]
    BreaksConstraint {
        /// The constraint kind, as the conflict names it (`foreign_key`, `check`, …).
        constraint: String,
    },
    /// Nothing to write: the row the conflict names is gone.
    #[error("nothing to write: the row it names is gone")]
    NothingToWrite,
    /// The held row refers to a parent in a table tide does not track.
    #[error("its parent table {parent} is not tracked")]
    ParentUntracked {
        /// The parent table.
        parent: String,
    },
    /// The held row refers to its parent by columns other than the parent's primary key.
    #[error("it refers to {parent} by columns other than its primary key")]
    ParentNotByKey {
        /// The parent table.
        parent: String,
    },
    /// The parent row the held row refers to was never on this replica.
    #[error("the row it refers to, {parent} [{}], was never here", shown(key))]
    ParentNeverHere {
        /// The parent table.
        parent: String,
        /// The parent row's key.
        key: Vec<Value>,
    },
    /// The parent row the held row refers to is held itself.
    #[error("the row it refers to, {parent} [{}], is held itself", shown(key))]
    ParentHeld {
        /// The parent table.
        parent: String,
        /// The parent row's key.
        key: Vec<Value>,
    },
    /// Every row the held row refers to is present already.
    #[error("every row it refers to is here; it returns at the next import or seal")]
    ParentsPresent,
}

/// A key as a person reads it: its values, comma-separated.
fn shown(key: &[Value]) -> String {
    key.iter()
        .map(Value::display)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a change's chunk in the log could not be packed, unpacked or found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogBodyError {
    /// Compressing a chunk for the log failed.
    #[error("a change chunk could not be compressed for the log: {0}")]
    Compress(std::io::Error),
    /// A chunk's stored bytes did not decompress.
    #[error("a change chunk in the log could not be decompressed: {0}")]
    Decompress(std::io::Error),
    /// A chunk's stored bytes are not the packed form of a chunk of its length.
    #[error("a change chunk in the log could not be decompressed: {0}")]
    Unpack(DecodeError),
    /// A chunk a stored change names is not in the log.
    #[error("a change chunk is missing from the log")]
    Missing,
    /// A chunk is stored with a packing this build does not know.
    #[error("a change chunk in the log has an unknown packing ({0})")]
    UnknownPacking(i64),
}

/// Why an apply stopped ([`Error::Apply`]); it was rolled back whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// SQLite ended the apply's transaction before it was done.
    #[error("the apply transaction was ended by SQLite")]
    TransactionEnded,
    /// Rows written as new already had metadata: what the apply knew of them would be lost.
    #[error("{rows} of {of} rows of {table} written as new already had metadata")]
    RowsAlreadyKnown {
        /// The table.
        table: String,
        /// Rows that had metadata.
        rows: usize,
        /// Rows written as new.
        of: usize,
    },
    /// A check of offered changes went on after one of them failed.
    #[error("an offered change failed and the check went on: {failure}")]
    CheckWentOn {
        /// The failure the source went past, as it was reported.
        failure: String,
    },
    /// An import went on after one of its offered changes failed.
    #[error("an offered change failed and the import went on: {failure}")]
    ImportWentOn {
        /// The failure the source went past, as it was reported.
        failure: String,
    },
    /// A change was offered after an earlier one failed.
    #[error("a change was offered after the import failed: {failure}")]
    OfferedAfterFailure {
        /// The earlier failure, as it was reported.
        failure: String,
    },
    /// A failure injected by a test hook (feature `testing`).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    #[error("injected failure (test hook)")]
    Injected,
}

/// Why a seal stopped ([`Error::Seal`]); it was rolled back and the captures are kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The capture log names a row the change being sealed already wrote.
    #[error("the capture log names the row [{}] of {table} twice", shown(key))]
    RowTwice {
        /// The table.
        table: String,
        /// The row's key.
        key: Vec<Value>,
    },
    /// Rows sealed as new already had metadata: what was known of them would be lost.
    #[error("{rows} of {of} rows of {table} sealed as new already had metadata")]
    RowsAlreadyKnown {
        /// The table.
        table: String,
        /// Rows that had metadata.
        rows: usize,
        /// Rows sealed as new.
        of: usize,
    },
}

/// Result with the core's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
