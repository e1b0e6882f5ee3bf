//! The `tide` command-line tool, tested through its real binary on real files in
//! temporary folders. One test binary, one module per topic:
//!
//! - `e2e`: offline exchange end to end, relays, conflicts, encryption, copies, the
//!   doctor, and snapshots (in `tests/snapshots/`) of what a person reads;
//! - `errors`: wrong arguments and unusable files, each with its documented exit code
//!   and the database left as it was;
//! - `import_checks`: what `bundle import` and its dry run refuse in validly signed
//!   bundles;
//! - `disk_full`: imports and seals onto a nearly full disk (needs root to mount a
//!   tmpfs);
//! - `schema`: tracked tables migrated by their applications (`sqlite-utils`, Python's
//!   `sqlite3`) on three replicas at different times, followed by tide.
//!
//! `common` holds what they share: running `tide` and reading the files it leaves.

mod common;

mod disk_full;
mod e2e;
mod errors;
mod hub;
mod import_checks;
mod mailbox;
mod schema;
