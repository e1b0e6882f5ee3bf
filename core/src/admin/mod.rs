//! What an operator needs beyond sync itself: peers, the log, the quarantine, and a
//! doctor that checks the invariants on a live file.

mod doctor;
mod finding;

pub use finding::{Check, Finding, Remedy};

use crate::error::{Error, Result};
use crate::format::change::{ChunkDecoder, Manifest, Step};
use crate::format::ids::{ChangeId, ReplicaId};
use crate::identity::Card;
use crate::replica::Replica;
use crate::store::chunks::Chunks;
use crate::store::chunks::LogChunks;
pub use crate::store::states::ChangeState;
use crate::store::states::OriginKind;
use rusqlite::{OptionalExtension, params};

/// The tables a change writes, in order, read a chunk at a time.
pub(crate) fn change_tables(
    conn: &rusqlite::Connection,
    manifest: &Manifest,
) -> Result<Vec<String>> {
    let mut tables: Vec<String> = Vec::new();
    let mut chunks = LogChunks { conn };
    for (i, want) in manifest.chunks.iter().enumerate() {
        let chunk = chunks.chunk(i, want)?;
        let mut dec = ChunkDecoder::checking(&manifest.head.deps, &chunk)?;
        loop {
            match dec.next()? {
                Step::Table(t) => {
                    if !tables.contains(&t.name) {
                        tables.push(t.name);
                    }
                }
                Step::Row(_) => {}
                Step::End => break,
            }
        }
    }
    Ok(tables)
}

/// A log entry from a row of (origin id, origin name, seq, hlc, head, applied, packing).
pub(crate) fn log_entry(conn: &rusqlite::Connection, r: &rusqlite::Row<'_>) -> Result<LogEntry> {
    let id: Vec<u8> = r.get(0)?;
    let manifest = Manifest::decode(&crate::store::chunks::unpack(r.get(4)?, r.get(6)?)?)?;
    Ok(LogEntry {
        change: ChangeId {
            origin: ReplicaId(id.try_into().expect("ids are stored as 16 bytes")),
            seq: r.get::<_, i64>(2)? as u64,
        },
        origin_name: r.get(1)?,
        hlc: r.get::<_, i64>(3)? as u64,
        ops: manifest.ops as usize,
        tables: change_tables(conn, &manifest)?,
        state: r.get(5)?,
    })
}

/// A log row as the doctor reads it: origin id, its key, seq, hash, signature.
pub(crate) type LogRow = (Vec<u8>, Option<Vec<u8>>, i64, Vec<u8>, Vec<u8>);

/// One entry of the change log, for `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The change.
    pub change: ChangeId,
    /// Its origin's name, as known here.
    pub origin_name: String,
    /// Its hybrid logical clock.
    pub hlc: u64,
    /// Tables it writes.
    pub tables: Vec<String>,
    /// Row ops it carries.
    pub ops: usize,
    /// Applied, waiting (dependencies missing) or quarantined.
    pub state: ChangeState,
}

impl Replica {
    /// The peers: known replicas other than this one, with their cards.
    pub fn peers(&self) -> Result<Vec<Card>> {
        let me = self.id().ok();
        Ok(self
            .known_cards()?
            .into_iter()
            .filter(|c| Some(c.id) != me)
            .collect())
    }

    /// Forgets a peer's keys: changes it signs are no longer accepted (they go to
    /// quarantine as from an unknown replica). What it wrote before stays.
    pub fn remove_peer(&mut self, id: ReplicaId) -> Result<()> {
        if self.id().ok() == Some(id) {
            return Err(Error::RemoveSelf);
        }
        let n = self.conn.execute(
            "UPDATE _tide_origins SET sign_key = NULL, box_key = NULL, peer = ?2 WHERE id = ?1 AND sign_key IS NOT NULL",
            params![&id.0[..], OriginKind::Known],
        )?;
        if n == 0 {
            return Err(Error::UnknownPeer(id.to_hex()));
        }
        Ok(())
    }

    /// The newest `limit` changes of the log, newest first, optionally only those of one
    /// origin or touching one table.
    pub fn log(
        &self,
        origin: Option<ReplicaId>,
        table: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT o.id, o.name, l.seq, l.hlc, l.body, l.applied, l.packing FROM _tide_log l JOIN _tide_origins o ON o.idx = l.origin
             WHERE (?1 IS NULL OR o.id = ?1) ORDER BY l.hlc DESC, o.id, l.seq DESC",
        )?;
        let origin = origin.map(|o| o.0.to_vec());
        let mut rows = stmt.query(params![origin])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            if out.len() >= limit {
                break;
            }
            let entry = log_entry(&self.conn, r)?;
            if table.is_some_and(|t| !entry.tables.iter().any(|x| x == t)) {
                continue;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Changes applied here after `since` (origin by origin, oldest first): what `watch`
    /// streams. Only the new changes are read and decoded.
    pub fn applied_since(
        &self,
        since: &crate::format::ids::VersionVector,
    ) -> Result<Vec<LogEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.id, o.name, l.seq, l.hlc, l.body, l.applied, l.packing FROM _tide_log l JOIN _tide_origins o ON o.idx = l.origin
             WHERE o.id = ?1 AND l.seq > ?2 AND l.applied = ?3 ORDER BY l.seq",
        )?;
        let mut out = Vec::new();
        for (origin, seq) in self.applied_vector()? {
            let after = since.get(&origin).copied().unwrap_or(0);
            if seq <= after {
                continue;
            }
            let mut rows =
                stmt.query(params![&origin.0[..], after as i64, ChangeState::Applied])?;
            while let Some(r) = rows.next()? {
                out.push(log_entry(&self.conn, r)?);
            }
        }
        Ok(out)
    }

    /// Stored changes waiting for dependencies not received yet.
    pub fn waiting_count(&self) -> Result<usize> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM _tide_log WHERE applied = ?1",
            [ChangeState::Waiting],
            |r| r.get::<_, i64>(0),
        )? as usize)
    }

    /// Drops quarantine entry `number` for good.
    pub fn discard_quarantined(&mut self, number: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        let hash: Option<Vec<u8>> = tx
            .query_row(
                "SELECT hash FROM _tide_quarantine WHERE qid = ?1",
                [number],
                |r| r.get(0),
            )
            .optional()?;
        let Some(hash) = hash else {
            return Err(Error::UnknownQuarantine(number));
        };
        tx.execute("DELETE FROM _tide_quarantine WHERE qid = ?1", [number])?;
        // A stored change that could not be applied leaves the log with it.
        tx.execute(
            "DELETE FROM _tide_log WHERE hash = ?1 AND applied = ?2",
            params![&hash, ChangeState::Quarantined],
        )?;
        crate::store::chunks::sweep_chunks(&tx)?;
        tx.commit()?;
        Ok(())
    }
}
