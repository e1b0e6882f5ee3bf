//! tide's own tables (`_tide_*`) in the replica's SQLite file: their migrations and typed
//! access to what they hold (row metadata, kept values, held rows, chunks, the log's
//! appends, version vectors, settings), and the states they record as integers.

/// An enum stored as a stable text code (its `code` and `from_code`): SQL reads and
/// writes it by that code, `Display` shows it, and it compares equal to it. `$what` names
/// it in the error a code no build wrote gives.
macro_rules! stored_as_code {
    ($ty:ty, $what:literal) => {
        impl rusqlite::types::ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.code()))
            }
        }

        impl rusqlite::types::FromSql for $ty {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let code = value.as_str()?;
                <$ty>::from_code(code).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!(concat!("unknown ", $what, " {:?}"), code).into(),
                    )
                })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.code())
            }
        }

        /// Compares with a stored or printed code.
        impl PartialEq<&str> for $ty {
            fn eq(&self, code: &&str) -> bool {
                self.code() == *code
            }
        }
    };
}

pub(crate) mod append;
pub(crate) mod chunks;
pub(crate) mod conflict_kind;
pub(crate) mod health;
pub(crate) mod held;
pub(crate) mod kept;
pub(crate) mod meta;
pub(crate) mod migrations;
pub(crate) mod peer_columns;
pub(crate) mod quarantine;
pub(crate) mod renumber;
pub(crate) mod rowmeta;
pub(crate) mod savepoint;
pub(crate) mod states;
pub(crate) mod tables;
pub(crate) mod vectors;
