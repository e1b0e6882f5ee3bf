//! Tide's engine and bundles tested across crates, on real SQLite files in temporary
//! folders. One test binary, one module per topic.
//!
//! Scenarios, with replicas written through plain app connections:
//! - `conflicts`: concurrent writes to a row, how they are recorded and resolved;
//! - `constraints`: UNIQUE, foreign key and CHECK constraints broken by a merge;
//! - `capture`: tracking tables and capturing every kind of app write once;
//! - `import`: imports apply whole or not at all; quarantine;
//! - `identity`: copied databases, restored backups and forks;
//! - `delivery`: relays, causal order, duplicates;
//! - `doctor`: the doctor's findings about a replica's own records;
//! - `schema`: the application's schema changes, followed.
//!
//! Across the whole system:
//! - `convergence`: the property test over random histories;
//! - `foreign_writers`: writes from the `sqlite3` shell and Python;
//! - `bundles`: bundles between replicas, plain, encrypted and split;
//! - `tamper`: over a thousand mutations of valid bundles, all refused;
//! - `vectors`: the bundle test vectors and crash inputs in `fixtures/`;
//! - `large_bundle`: a 200 MB bundle in bounded memory (ignored by default).
//!
//! The test kit they share (replicas that know each other) is `tests/src/lib.rs`.

mod capture;
mod conflicts;
mod constraints;
mod delivery;
mod doctor;
mod identity;
mod import;
mod schema;

mod bundle_errors;
mod bundles;
mod change_vectors;
mod compatibility;
mod convergence;
mod foreign_writers;
mod large_bundle;
mod protocol_vectors;
mod tamper;
mod vectors;
