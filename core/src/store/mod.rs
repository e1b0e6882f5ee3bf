//! tide's own tables (`_tide_*`) in the replica's SQLite file: their migrations and typed
//! access to what they hold (row metadata, kept values, held rows, chunks, the log's
//! appends, version vectors, settings), and the states they record as integers.

pub(crate) mod append;
pub(crate) mod chunks;
pub(crate) mod conflict_kind;
pub(crate) mod health;
pub(crate) mod held;
pub(crate) mod kept;
pub(crate) mod meta;
pub(crate) mod migrations;
pub(crate) mod quarantine;
pub(crate) mod rowmeta;
pub(crate) mod savepoint;
pub(crate) mod states;
pub(crate) mod tables;
pub(crate) mod vectors;
