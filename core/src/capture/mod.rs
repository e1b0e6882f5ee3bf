//! Capture: AFTER triggers note every write to a tracked table, from any connection, in a
//! per-table capture log that sealing reads.

pub(crate) mod follow;
pub(crate) mod triggers;
