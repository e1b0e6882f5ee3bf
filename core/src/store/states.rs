//! The states tide's tables record as small integers, as types: a change's place in the
//! log (`_tide_log.applied`) and an origin's relation to this replica
//! (`_tide_origins.peer`). The integers are part of the layout: they never change.

use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};

/// Where a stored change stands (`_tide_log.applied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeState {
    /// Applied to the tables (stored as 1).
    Applied,
    /// Stored, waiting for changes it depends on (stored as 0).
    Waiting,
    /// Stored, but applying it failed; its quarantine entry says why (stored as -1). An
    /// import that may fix the cause sets it back to waiting.
    Quarantined,
}

impl ChangeState {
    /// The stored integer.
    pub(crate) const fn stored(self) -> i64 {
        match self {
            ChangeState::Applied => 1,
            ChangeState::Waiting => 0,
            ChangeState::Quarantined => -1,
        }
    }

    /// The word `log` and `watch` show: `applied`, `waiting` or `quarantined`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeState::Applied => "applied",
            ChangeState::Waiting => "waiting",
            ChangeState::Quarantined => "quarantined",
        }
    }
}

impl std::fmt::Display for ChangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl ToSql for ChangeState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Integer(self.stored())))
    }
}

impl FromSql for ChangeState {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        match v.as_i64()? {
            1 => Ok(ChangeState::Applied),
            0 => Ok(ChangeState::Waiting),
            -1 => Ok(ChangeState::Quarantined),
            n => Err(FromSqlError::OutOfRange(n)),
        }
    }
}

/// What an origin is to this replica (`_tide_origins.peer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OriginKind {
    /// Known only as the origin of changes received, or a peer since removed (stored
    /// as 0, the column's default).
    Known,
    /// A peer added from its card (stored as 1).
    Peer,
    /// This replica's own identity (stored as 2); an identity replaced by a new one
    /// becomes a peer.
    Own,
}

impl OriginKind {
    /// The stored integer.
    pub(crate) const fn stored(self) -> i64 {
        match self {
            OriginKind::Known => 0,
            OriginKind::Peer => 1,
            OriginKind::Own => 2,
        }
    }
}

impl ToSql for OriginKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Integer(self.stored())))
    }
}

impl FromSql for OriginKind {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        match v.as_i64()? {
            0 => Ok(OriginKind::Known),
            1 => Ok(OriginKind::Peer),
            2 => Ok(OriginKind::Own),
            n => Err(FromSqlError::OutOfRange(n)),
        }
    }
}

/// What a capture-log row (`_tide_cap_N.op`) records, as the capture triggers write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaptureOp {
    /// A row inserted (stored as 1): its key.
    Insert,
    /// A row updated in place (stored as 2): its key and which columns changed.
    Update,
    /// A row deleted (stored as 3): its key and last values.
    Delete,
}

impl CaptureOp {
    /// The stored integer, as the trigger SQL writes it.
    pub(crate) const fn stored(self) -> i64 {
        match self {
            CaptureOp::Insert => 1,
            CaptureOp::Update => 2,
            CaptureOp::Delete => 3,
        }
    }
}

impl ToSql for CaptureOp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.stored()))
    }
}

impl FromSql for CaptureOp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_i64()? {
            1 => Ok(CaptureOp::Insert),
            2 => Ok(CaptureOp::Update),
            3 => Ok(CaptureOp::Delete),
            n => Err(FromSqlError::OutOfRange(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn states_keep_their_stored_integers() {
        let c = Connection::open_in_memory().unwrap();
        for (state, n) in [
            (ChangeState::Applied, 1),
            (ChangeState::Waiting, 0),
            (ChangeState::Quarantined, -1),
        ] {
            let (stored, back): (i64, ChangeState) = c
                .query_row("SELECT ?1, ?1", [state], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!((stored, back), (n, state));
        }
        for (kind, n) in [
            (OriginKind::Known, 0),
            (OriginKind::Peer, 1),
            (OriginKind::Own, 2),
        ] {
            let (stored, back): (i64, OriginKind) = c
                .query_row("SELECT ?1, ?1", [kind], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!((stored, back), (n, kind));
        }
        let odd: rusqlite::Result<ChangeState> = c.query_row("SELECT 5", [], |r| r.get(0));
        assert!(odd.is_err());
        for op in [CaptureOp::Insert, CaptureOp::Update, CaptureOp::Delete] {
            let back: CaptureOp = c
                .query_row("SELECT ?1", [op.stored()], |r| r.get(0))
                .unwrap();
            assert_eq!(back, op);
        }
        let odd: rusqlite::Result<CaptureOp> = c.query_row("SELECT 4", [], |r| r.get(0));
        assert!(odd.is_err());
    }
}
