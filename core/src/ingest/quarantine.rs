//! The quarantine: changes that cannot be applied here (yet), each with a reason a person
//! can act on; listed, retried.

use super::Source;
use crate::error::Result;
use crate::format::change::SignedHead;
use crate::format::ids::{ChangeId, ReplicaId};
use crate::ingest::ImportReport;
use crate::replica::Replica;
use crate::store::quarantine::QuarantineReason;
use rusqlite::params;

/// One entry of the quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// Its number, for `retry` and `discard`.
    pub number: i64,
    /// The change.
    pub change: ChangeId,
    /// Why it waits there.
    pub reason: QuarantineReason,
    /// Details for a person.
    pub detail: String,
}

impl Replica {
    /// The quarantine, oldest first.
    pub fn quarantine(&self) -> Result<Vec<QuarantineEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT qid, origin, seq, reason, detail FROM _tide_quarantine ORDER BY qid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(QuarantineEntry {
                number: r.get(0)?,
                change: ChangeId {
                    origin: ReplicaId(r.get::<_, Vec<u8>>(1)?.try_into().unwrap_or([0; 16])),
                    seq: r.get::<_, i64>(2)? as u64,
                },
                reason: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Imports every quarantined change again, in one transaction (after adding a peer or
    /// tracking a table). Forks stay; what still fails stays, with its reason.
    pub fn retry_quarantine(&mut self) -> Result<ImportReport> {
        let mut stmt = self.conn.prepare(
            "SELECT body, sig FROM _tide_quarantine WHERE reason NOT IN (?1, ?2) ORDER BY qid",
        )?;
        let heads = stmt
            .query_map(
                params![QuarantineReason::FINAL[0], QuarantineReason::FINAL[1]],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .map(|(b, s)| {
                SignedHead::from_parts(b, s.try_into().expect("signatures are stored as 64 bytes"))
            })
            .collect::<Vec<_>>();
        drop(stmt);
        self.import_with(Source::Quarantine(heads))
    }
}
