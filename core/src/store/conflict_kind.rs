//! What a conflict is about, as `_tide_conflicts.kind` records it: a cell, a deleted
//! row, or a row a constraint holds.

use crate::store::held::HeldReason;

/// The kind of a [`Conflict`](crate::Conflict). Stored in `_tide_conflicts.kind` by its
/// [`code`](ConflictKind::code), which is also how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflictKind {
    /// `update`: a cell written concurrently, with different values, by replicas that
    /// had seen the row.
    Update,
    /// `insert`: a cell of a row inserted concurrently under one key by several
    /// replicas, with different values.
    Insert,
    /// `delete`: a row deleted on one replica and written concurrently on another.
    Delete,
    /// `unique`: a row held out of its table because another row holds its value of a
    /// UNIQUE column or its primary key.
    Unique,
    /// `foreign_key`: a row held out of its table because a foreign key of it refers to
    /// no row.
    ForeignKey,
    /// `check`: a row held out of its table because its values fail a CHECK constraint
    /// (or another constraint SQLite reports).
    Check,
    /// `not_null`: a row held out of its table because a NOT NULL column of it is NULL.
    NotNull,
}

impl ConflictKind {
    /// Every kind, for parsing and listing.
    pub const ALL: [ConflictKind; 7] = [
        ConflictKind::Update,
        ConflictKind::Insert,
        ConflictKind::Delete,
        ConflictKind::Unique,
        ConflictKind::ForeignKey,
        ConflictKind::Check,
        ConflictKind::NotNull,
    ];

    /// Its stable code, as stored and shown.
    pub fn code(self) -> &'static str {
        match self {
            ConflictKind::Update => "update",
            ConflictKind::Insert => "insert",
            ConflictKind::Delete => "delete",
            ConflictKind::Unique => "unique",
            ConflictKind::ForeignKey => "foreign_key",
            ConflictKind::Check => "check",
            ConflictKind::NotNull => "not_null",
        }
    }

    /// The kind with this code.
    pub fn from_code(code: &str) -> Option<ConflictKind> {
        ConflictKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Whether a constraint holds the row out of its table (the conflict is on the whole
    /// row, and its candidates are the held row and the row in its way, if any).
    pub fn holds_row(self) -> bool {
        matches!(
            self,
            ConflictKind::Unique
                | ConflictKind::ForeignKey
                | ConflictKind::Check
                | ConflictKind::NotNull
        )
    }
}

stored_as_code!(ConflictKind, "conflict kind");

impl From<HeldReason> for ConflictKind {
    fn from(reason: HeldReason) -> ConflictKind {
        match reason {
            HeldReason::Unique => ConflictKind::Unique,
            HeldReason::ForeignKey => ConflictKind::ForeignKey,
            HeldReason::Check => ConflictKind::Check,
            HeldReason::NotNull => ConflictKind::NotNull,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConflictKind;
    use crate::store::held::HeldReason;

    #[test]
    fn codes_round_trip() {
        for k in ConflictKind::ALL {
            assert_eq!(ConflictKind::from_code(k.code()), Some(k));
            assert_eq!(k.to_string(), k.code());
            assert!(k == k.code());
        }
        assert_eq!(ConflictKind::from_code("row"), None);
    }

    #[test]
    fn held_reasons_are_constraint_kinds() {
        let held = [
            (HeldReason::Unique.code(), ConflictKind::Unique),
            (HeldReason::ForeignKey.code(), ConflictKind::ForeignKey),
            (HeldReason::Check.code(), ConflictKind::Check),
            (HeldReason::NotNull.code(), ConflictKind::NotNull),
        ];
        for (reason, kind) in held {
            assert_eq!(ConflictKind::from_code(reason), Some(kind));
            let held = HeldReason::from_code(reason).expect("a held reason's code");
            assert_eq!(ConflictKind::from(held), kind);
            assert!(kind.holds_row());
        }
        let others = ConflictKind::ALL.into_iter().filter(|k| !k.holds_row());
        assert_eq!(others.count(), 3);
    }
}
