//! The quarantine table: changes that cannot be applied here (an unknown origin, an
//! unknown table, a fork, …), each kept whole with a reason a person can act on.

use rusqlite::{Connection, params};

use crate::error::Result;
use crate::format::change::SignedHead;
use crate::format::ids::ChangeId;
use crate::store::states::ChangeState;

/// Why a change sits in quarantine instead of being applied. Stored by its
/// [`code`](QuarantineReason::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuarantineReason {
    /// Same origin and seq as a stored change, other content: the origin forked.
    Fork,
    /// Its `prev` hash does not match the origin's previous change.
    BrokenChain,
    /// Signed by a replica this one does not know; add its card, then retry.
    UnknownOrigin,
    /// Writes a table this replica does not track.
    UnknownTable,
    /// Keys a table differently from this replica.
    SchemaMismatch,
    /// Writes a column this replica's table does not have yet: the writer's schema is
    /// ahead. It applies by itself once this replica's schema has the column.
    NewerSchema,
    /// A quarantined change whose signature failed when retried (its origin's card
    /// was added since, and the change does not verify with it).
    BadSignature,
}

impl QuarantineReason {
    /// Every reason, for parsing and listing.
    pub const ALL: [QuarantineReason; 7] = [
        QuarantineReason::Fork,
        QuarantineReason::BrokenChain,
        QuarantineReason::UnknownOrigin,
        QuarantineReason::UnknownTable,
        QuarantineReason::SchemaMismatch,
        QuarantineReason::NewerSchema,
        QuarantineReason::BadSignature,
    ];

    /// Its stable code, as stored and shown.
    pub fn code(self) -> &'static str {
        match self {
            QuarantineReason::Fork => "fork",
            QuarantineReason::BrokenChain => "broken_chain",
            QuarantineReason::UnknownOrigin => "unknown_origin",
            QuarantineReason::UnknownTable => "unknown_table",
            QuarantineReason::SchemaMismatch => "schema_mismatch",
            QuarantineReason::NewerSchema => "newer_schema",
            QuarantineReason::BadSignature => "bad_signature",
        }
    }

    /// The reason with this code.
    pub fn from_code(code: &str) -> Option<QuarantineReason> {
        QuarantineReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The reasons no retry overcomes: a fork or a broken hash chain stays wrong
    /// whatever this replica learns later. Such entries stay until discarded.
    pub(crate) const FINAL: [QuarantineReason; 2] =
        [QuarantineReason::Fork, QuarantineReason::BrokenChain];

    /// The reasons a change of this replica's tables (a table tracked, a column added)
    /// may clear: a retry takes such changes again from the log.
    pub(crate) const WAITING_FOR_TABLES: [QuarantineReason; 3] = [
        QuarantineReason::UnknownTable,
        QuarantineReason::SchemaMismatch,
        QuarantineReason::NewerSchema,
    ];

    /// Whether retrying can ever apply the change here.
    pub fn retryable(self) -> bool {
        !QuarantineReason::FINAL.contains(&self)
    }
}

stored_as_code!(QuarantineReason, "quarantine reason");

pub(crate) fn quarantine(
    conn: &Connection,
    id: ChangeId,
    signed: &SignedHead,
    reason: QuarantineReason,
    detail: &str,
) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO _tide_quarantine(origin, seq, hash, body, sig, reason, detail) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![&id.origin.0[..], id.seq as i64, &signed.hash()[..], signed.bytes(), &signed.signature()[..], reason, detail],
    )?;
    Ok(())
}

/// Stored changes that could not be applied get another go at the next apply, and the
/// entries that waited for a table or a schema are taken again from the log (a retry,
/// or a schema change followed). What fails again is quarantined again.
pub(crate) fn requeue(conn: &Connection) -> Result<()> {
    conn.execute(
        "UPDATE _tide_log SET applied=?1 WHERE applied=?2",
        params![ChangeState::Waiting, ChangeState::Quarantined],
    )?;
    conn.execute(
        "DELETE FROM _tide_quarantine WHERE reason IN (?1, ?2, ?3)",
        params![
            QuarantineReason::WAITING_FOR_TABLES[0],
            QuarantineReason::WAITING_FOR_TABLES[1],
            QuarantineReason::WAITING_FOR_TABLES[2]
        ],
    )?;
    Ok(())
}
