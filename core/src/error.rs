//! Typed errors, by failure area. Every variant says what went wrong in words a person
//! can act on; the CLI adds the next command to run.

use std::path::PathBuf;

pub use crate::format::codec::DecodeError;
use crate::format::ids::ReplicaId;

/// Everything the core engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
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
    /// A change's chunk kept in the log could not be packed, unpacked or found.
    #[error("a change chunk in the log could not be {0}; `tide doctor` lists the damaged changes")]
    LogBody(String),
    /// The log holds changes of a format this build no longer reads.
    #[error(
        "this database's change log was written by an earlier development build of tide \
         (change format 2); this build reads format 3 only. Nothing was changed. Keep the \
         file, make a new replica with this build (`tide init` on a copy of your tables \
         without the _tide_ tables) and sync it from a peer"
    )]
    OldLogFormat,
    /// The database has no tide identity yet.
    #[error("this database has no tide identity yet; initialise it first")]
    NotInitialized,
    /// SQLite finds the database file damaged (pages that do not read back as written).
    #[error("the database file is damaged: {0}")]
    Damaged(String),
    /// No file at the database path (only `Replica::open` creates one).
    #[error("no database at {}", .0.display())]
    NoDatabase(PathBuf),
    /// The path is not a SQLite database: a folder, or a file SQLite cannot read.
    #[error("{} is not a SQLite database: {reason}", path.display())]
    NotADatabase {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        reason: String,
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
    /// The database names an identity whose secret key is not in this key store: it was
    /// copied or restored from another machine or key store.
    #[error(
        "this database looks like a copy: its identity {replica} has no secret key in {keystore}; \
         give it a new identity, or use the key store it was made with"
    )]
    IdentityMissing {
        /// The identity recorded in the database.
        replica: ReplicaId,
        /// The key store that was searched.
        keystore: PathBuf,
    },
    /// The secret key exists, but it is bound to another database file (a copy on the
    /// same machine) or the database is older than the last change this identity sealed
    /// (a restored backup). Sealing here would fork the identity's history.
    #[error(
        "this database looks like a copy or an old backup of {replica}: {reason}; \
         it must not write under that identity"
    )]
    IdentityConflict {
        /// The identity recorded in the database.
        replica: ReplicaId,
        /// Why the key store disagrees with this file.
        reason: String,
    },
    /// The named table does not exist.
    #[error("no table named {0:?} in this database")]
    NoSuchTable(String),
    /// The table has no declared PRIMARY KEY, so rows have no stable identity across replicas.
    #[error("table {0:?} has no declared PRIMARY KEY; tide needs one to name rows across replicas")]
    NoPrimaryKey(String),
    /// AUTOINCREMENT keys are minted independently by each replica and collide.
    #[error(
        "table {0:?} uses AUTOINCREMENT; every replica would mint the same ids. Use a random or composite key instead"
    )]
    Autoincrement(String),
    /// The table is not tracked by tide.
    #[error("table {0:?} is not tracked")]
    NotTracked(String),
    /// A tracked table's name or column name is not usable (tide's own prefix).
    #[error("table {0:?} cannot be tracked: {1}")]
    Untrackable(String, String),
    /// No open conflict has this id (or id prefix).
    #[error("no open conflict with id {0:?}")]
    UnknownConflict(String),
    /// The conflict id prefix matches several conflicts.
    #[error("conflict id {0:?} is ambiguous; give more characters")]
    AmbiguousConflict(String),
    /// The conflict has no candidate with this id.
    #[error("conflict {conflict} has no candidate {candidate:?}")]
    UnknownCandidate {
        /// The conflict.
        conflict: String,
        /// The candidate asked for.
        candidate: String,
    },
    /// A change failed verification; the whole import was refused before any write.
    #[error("{} rejected, nothing was imported: {reason}", change.map(|c| format!("change {c}")).unwrap_or_else(|| "input".into()))]
    Rejected {
        /// The change, when its id could be read.
        change: Option<crate::format::ids::ChangeId>,
        /// What failed.
        reason: crate::format::change::VerifyError,
    },
    /// The conflict cannot be resolved the way asked.
    #[error("conflict {conflict} cannot be resolved that way: {reason}")]
    CannotResolve {
        /// The conflict.
        conflict: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// No peer with this id or name.
    #[error("no peer {0:?} is known")]
    UnknownPeer(String),
    /// No quarantine entry with this number.
    #[error("no quarantine entry number {0}")]
    UnknownQuarantine(i64),
    /// A caller's callback asked to stop (its own error travels separately).
    #[error("stopped by the caller")]
    Stopped,
    /// A change could not be applied; the whole apply was rolled back.
    #[error("apply failed and was rolled back, nothing changed: {0}")]
    ApplyAborted(String),
    /// The disk holding the database is full. The transaction was rolled back whole; the
    /// text says what to do again and what was not done.
    #[error("the disk is full: free some space and {0}")]
    DiskFull(&'static str),
    /// Sealing found the capture log in a state it cannot turn into a valid change; the
    /// seal was rolled back and the captures are kept.
    #[error("sealing stopped, nothing was sealed and the captured writes are kept: {0}")]
    SealAborted(String),
}

/// Result with the core's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
