//! Capture: AFTER triggers note every write to a tracked table, from any connection, in a
//! per-table capture log that sealing reads (`triggers`); and capture follows the
//! application's schema changes, recovering the writes made while it could not see them
//! (`follow`, DESIGN.md §2.12).

pub(crate) mod follow;
pub(crate) mod triggers;
