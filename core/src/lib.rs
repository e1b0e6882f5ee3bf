//! # tide-core
//!
//! The engine of tide, offline-first sync for SQLite: capture plain SQL writes, seal them
//! into signed changes, apply others' changes causally, and keep every conflict.
//!
//! ## Design in one page
//!
//! * **Capture** ([`Replica::track`]): AFTER triggers append *that* a row changed (key,
//!   kind, changed-column mask) to a per-table capture log. They fire for every
//!   connection and process, and use only SQL that SQLite 3.40 understands.
//! * **Seal** ([`Replica::seal`]): pending captures become one [`Change`]: origin, seq,
//!   deps (version vector), HLC, schema epoch, hash of the previous change, and row ops
//!   with bit-exact [`Value`]s and per-cell predecessors, signed with Ed25519 over a
//!   hand-written encoding that starts with a context string ([`change`] documents it).
//! * **Ingest and apply** ([`Replica::import`]): verify every signature before any
//!   write, dedup by id and hash, quarantine forks, store, then apply every change whose
//!   deps are present, in causal order, in one transaction.
//! * **Heads and conflicts**: each (table, key, column) cell keeps the values no later
//!   write overwrote. Several heads with different values make a [`Conflict`] whose id
//!   every replica derives alike; the visible value is the head that wins a total order
//!   (HLC, then replica id). [`Replica::resolve`] writes a new value over all heads.
//!
//! The core does no network I/O and holds no trust policy beyond "verify against the
//! keys of known replicas"; bundles and transports build on it.
//!
//! ## Example
//!
//! ```
//! use tide_core::{KeyStore, Replica};
//! # fn main() -> Result<(), tide_core::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let keys = KeyStore::at(dir.path().join("keys"));
//! let mut a = Replica::open(dir.path().join("a.db"), keys.clone())?;
//! let mut b = Replica::open(dir.path().join("b.db"), keys)?;
//! a.init("a")?;
//! b.init("b")?;
//! a.add_peer(&b.card()?)?;
//! b.add_peer(&a.card()?)?;
//! for r in [&a, &b] {
//!     r.connection().execute_batch("CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT)")?;
//! }
//! a.track("notes")?;
//! b.track("notes")?;
//!
//! // Any connection may write; tide captures it.
//! a.connection().execute("INSERT INTO notes VALUES ('n1', 'hello')", [])?;
//! let missing = a.changes_for(&b.version_vector()?)?;
//! let report = b.import(&missing)?;
//! assert_eq!(report.applied, 1);
//! let body: String = b.connection().query_row("SELECT body FROM notes WHERE id='n1'", [], |r| r.get(0))?;
//! assert_eq!(body, "hello");
//! # Ok(()) }
//! ```

// The engine's layers, from the bottom up: a module uses only the modules
// listed before it (`.ci/modules.py` checks this in CI).

// The change format: bytes, values, ids, signatures. Nothing here reads or writes a
// database.
mod format;

mod error;

mod identity;

// tide's own tables and typed access to them.
mod store;

mod replica;

// The row merge: heads, shown values, kept values, conflict records, held rows.
mod merge;

// Applying stored changes in causal order.
mod apply;

// Capture triggers, and following the application's schema changes.
mod capture;

// Sealing captured writes into this replica's signed changes.
mod seal;

// Tracking and untracking tables.
mod track;

// Verifying, storing and applying others' changes; what a peer lacks.
mod ingest;

mod export;

mod conflicts;

mod state;

// Peers, the log, the quarantine and the doctor.
mod admin;

pub use format::{change, codec};

pub use admin::{ChangeState, Check, Finding, LogEntry, Remedy};
pub use change::{
    CellWrite, Change, ChangeHead, ChunkRef, Lineage, Manifest, OpKind, RowOp, SignedChange,
    SignedHead, TableOps, VerifiedChange, VerifiedHead, VerifyError,
};
pub use conflicts::{Candidate, Conflict, ConflictKind, Resolution};
pub use error::{
    ApplyError, CannotResolveReason, DecodeError, Error, IdentityConflictReason, Interrupted,
    LogBodyError, NotADatabaseReason, OpenError, ResolveError, Result, SealError, TrackError,
    UntrackableReason,
};
pub use export::{Page, SeqRuns};
pub use format::ids::{ChangeId, ReplicaId, VersionVector};
pub use format::signature::verify_signature;
pub use format::value::{Value, decode_key, encode_key};
pub use identity::{Card, KeyStore, SecretIdentity};
pub use ingest::{ImportReport, QuarantineEntry, QuarantineReason};
pub use replica::{Progress, Replica, Stage};
pub use store::chunks::Chunks;
pub use track::{SchemaDifference, TrackReport};
