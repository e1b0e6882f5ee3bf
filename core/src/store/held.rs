//! The held rows (`_tide_held`): rows kept out of their table because a constraint
//! refuses them, each with the reason and, for a UNIQUE slot, the row that keeps it.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// Why a row is held out of its table. Stored by its [`code`](HeldReason::code), which is
/// also the kind of the row's constraint conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum HeldReason {
    /// Another row holds its value in a UNIQUE index (the primary key counts).
    Unique,
    /// It refers to a parent row that is not there.
    ForeignKey,
    /// It breaks a CHECK constraint.
    Check,
    /// It has NULL in a NOT NULL column.
    NotNull,
}

impl HeldReason {
    /// Every reason, for parsing.
    pub(crate) const ALL: [HeldReason; 4] = [
        HeldReason::Unique,
        HeldReason::ForeignKey,
        HeldReason::Check,
        HeldReason::NotNull,
    ];

    /// Its stable code, as stored and as shown as a conflict's kind.
    pub(crate) fn code(self) -> &'static str {
        match self {
            HeldReason::Unique => "unique",
            HeldReason::ForeignKey => "foreign_key",
            HeldReason::Check => "check",
            HeldReason::NotNull => "not_null",
        }
    }

    /// The reason with this code.
    pub(crate) fn from_code(code: &str) -> Option<HeldReason> {
        HeldReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

stored_as_code!(HeldReason, "held reason");

/// Records the row `key` of table `tid` as held for `reason`, kept out by `blocker` (the
/// row that keeps a UNIQUE slot) if any.
pub(crate) fn hold(
    conn: &Connection,
    tid: i64,
    key: &[u8],
    reason: HeldReason,
    blocker: Option<&[u8]>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO _tide_held(tid, key, reason, blocker) VALUES(?1, ?2, ?3, ?4)
         ON CONFLICT(tid, key) DO UPDATE SET reason=excluded.reason, blocker=excluded.blocker",
    )?
    .execute(params![tid, key, reason, blocker])?;
    Ok(())
}

/// The row is back in its table (or gone): no longer held.
pub(crate) fn unhold(conn: &Connection, tid: i64, key: &[u8]) -> Result<()> {
    conn.prepare_cached("DELETE FROM _tide_held WHERE tid=?1 AND key=?2")?
        .execute(params![tid, key])?;
    Ok(())
}

/// Why the row is held, `None` when it is not.
pub(crate) fn reason(conn: &Connection, tid: i64, key: &[u8]) -> Result<Option<HeldReason>> {
    Ok(conn
        .query_row(
            "SELECT reason FROM _tide_held WHERE tid=?1 AND key=?2",
            params![tid, key],
            |r| r.get(0),
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_reasons_keep_their_stored_codes() {
        let codes: Vec<&str> = HeldReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, ["unique", "foreign_key", "check", "not_null"]);
        for r in HeldReason::ALL {
            assert_eq!(HeldReason::from_code(r.code()), Some(r));
        }
        let conn = Connection::open_in_memory().unwrap();
        let back: HeldReason = conn
            .query_row("SELECT ?1", [HeldReason::ForeignKey], |r| r.get(0))
            .unwrap();
        assert_eq!(back, HeldReason::ForeignKey);
        assert!(
            conn.query_row("SELECT 'other'", [], |r| r.get::<_, HeldReason>(0))
                .is_err()
        );
    }
}
