//! What this replica holds and what a peer lacks: version vectors, acknowledgements, the changes to send.

use crate::error::Result;
use crate::format::change::{SignedChange, SignedHead};
use crate::format::ids::ReplicaId;
use crate::format::ids::VersionVector;
use crate::replica::{Progress, Replica};
use crate::store::chunks::{Chunks, LogChunks, unpack};
use crate::store::vectors::{VectorOf, read_vector, store_ack, vector};
use rusqlite::{OptionalExtension, params};

impl Replica {
    /// What this replica holds: origin → highest contiguous seq stored. This is the
    /// acknowledgement a peer gets.
    pub fn version_vector(&self) -> Result<VersionVector> {
        vector(&self.conn, VectorOf::Stored)
    }

    /// What this replica has applied (≤ [`Replica::version_vector`]).
    pub fn applied_vector(&self) -> Result<VersionVector> {
        vector(&self.conn, VectorOf::Applied)
    }

    /// Every stored change a replica with vector `theirs` lacks, from every origin (so
    /// replicas relay for each other), in (origin, seq) order. Seals pending writes first.
    /// Whole changes in memory: for small exchanges and tests.
    pub fn changes_for(&mut self, theirs: &VersionVector) -> Result<Vec<SignedChange>> {
        let mut out = Vec::new();
        self.each_change_for(theirs, |head, chunks| {
            let manifest = head.manifest()?;
            let data = manifest
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| chunks.chunk(i, c))
                .collect::<Result<Vec<_>>>()?;
            out.push(SignedChange::new(head.clone(), data));
            Ok(())
        })?;
        Ok(out)
    }

    /// Like [`Replica::changes_for`], one change at a time, its chunks read from the log
    /// only when asked for, so a caller can stream changes of any number and size in
    /// bounded memory. Seals pending writes first; the whole listing reads one snapshot
    /// of the log.
    pub fn each_change_for(
        &mut self,
        theirs: &VersionVector,
        mut each: impl FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>,
    ) -> Result<()> {
        self.seal()?;
        let tx = self.conn.unchecked_transaction()?;
        let origins = tx
            .prepare("SELECT idx, id FROM _tide_origins ORDER BY id")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut total = 0u64;
        for (idx, id) in &origins {
            let id = ReplicaId(id.clone().try_into().expect("ids are stored as 16 bytes"));
            let since = theirs.get(&id).copied().unwrap_or(0);
            total += tx.query_row(
                "SELECT count(*) FROM _tide_log WHERE origin=?1 AND seq>?2",
                params![idx, since as i64],
                |r| r.get::<_, i64>(0),
            )? as u64;
        }
        let mut stmt = tx.prepare(
            "SELECT body, sig, packing FROM _tide_log WHERE origin=?1 AND seq>?2 ORDER BY seq",
        )?;
        let mut done = 0u64;
        for (idx, id) in origins {
            let id = ReplicaId(id.try_into().expect("ids are stored as 16 bytes"));
            let since = theirs.get(&id).copied().unwrap_or(0);
            let mut rows = stmt.query(params![idx, since as i64])?;
            while let Some(r) = rows.next()? {
                let sig: Vec<u8> = r.get(1)?;
                let head = SignedHead::from_parts(
                    unpack(r.get(0)?, r.get(2)?)?,
                    sig.try_into().expect("signatures are stored as 64 bytes"),
                );
                each(&head, &mut LogChunks { conn: &tx })?;
                done += 1;
                if let Some(p) = self.progress.as_mut() {
                    p(Progress {
                        stage: crate::replica::Stage::Packing,
                        done,
                        total,
                    });
                }
            }
        }
        Ok(())
    }

    /// One page of what a replica with vector `theirs` lacks: changes in causal order
    /// (by HLC, which a change always has above every change it depends on), up to
    /// about `budget` bytes of heads and chunks (always at least one change). Because
    /// the order is causal, every origin's part of a page is a contiguous run of seqs
    /// right after `theirs`, and a receiver holding `theirs` can apply all of it: the
    /// page is a complete unit that an interrupted transfer loses at most once. The
    /// next page starts from `theirs` moved up by what this one carried. Changes past a
    /// gap in this replica's own copy of an origin wait until the gap is filled. Seals pending
    /// writes first. Memory holds the metadata of a few hundred changes per origin, and
    /// one change at a time.
    pub fn each_change_page(
        &mut self,
        theirs: &VersionVector,
        budget: u64,
        mut each: impl FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>,
    ) -> Result<Page> {
        self.seal()?;
        let tx = self.conn.unchecked_transaction()?;
        let origins = tx
            .prepare("SELECT idx, id FROM _tide_origins ORDER BY id")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let held = vector(&tx, VectorOf::Stored)?;
        let mut cursors: Vec<Cursor> = origins
            .into_iter()
            .map(|(idx, id)| {
                let id = ReplicaId(id.try_into().expect("ids are stored as 16 bytes"));
                Cursor {
                    idx,
                    after: theirs.get(&id).copied().unwrap_or(0),
                    last: held.get(&id).copied().unwrap_or(0),
                    next: std::collections::VecDeque::new(),
                    done: false,
                }
            })
            .collect();
        let mut page = Page::default();
        loop {
            for c in cursors.iter_mut() {
                c.fill(&tx)?;
            }
            // The next change in causal order: the lowest HLC at the head of any origin.
            let Some(c) = cursors
                .iter_mut()
                .filter(|c| !c.next.is_empty())
                .min_by_key(|c| (c.next[0].1, c.idx))
            else {
                return Ok(page);
            };
            let (seq, _) = c.next[0];
            let (body, sig, packing): (Vec<u8>, Vec<u8>, i64) = tx
                .prepare_cached(
                    "SELECT body, sig, packing FROM _tide_log WHERE origin=?1 AND seq=?2",
                )?
                .query_row(params![c.idx, seq as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            let head = SignedHead::from_parts(
                unpack(body, packing)?,
                sig.try_into().expect("signatures are stored as 64 bytes"),
            );
            let size = head.bytes().len() as u64
                + head
                    .manifest()?
                    .chunks
                    .iter()
                    .map(|k| k.len as u64)
                    .sum::<u64>();
            if page.changes > 0 && page.bytes + size > budget {
                page.more = true;
                return Ok(page);
            }
            each(&head, &mut LogChunks { conn: &tx })?;
            c.next.pop_front();
            c.after = seq;
            page.changes += 1;
            page.bytes += size;
        }
    }

    /// Per origin, the runs of seqs (first, last) this replica lacks: gaps below changes
    /// it stored (those past a gap are kept and wait for it), and what `known` says exists
    /// beyond the highest it stored (a sender's acknowledgement, for example). Origins
    /// with nothing missing are left out.
    pub fn missing(&self, known: &VersionVector) -> Result<Vec<(ReplicaId, SeqRuns)>> {
        let stored = self.version_vector()?;
        let mut origins: std::collections::BTreeMap<ReplicaId, Option<i64>> = self
            .conn
            .prepare("SELECT idx, id FROM _tide_origins")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .map(|row| {
                row.map(|(idx, id)| {
                    let id = ReplicaId(id.try_into().expect("ids are stored as 16 bytes"));
                    (id, Some(idx))
                })
            })
            .collect::<rusqlite::Result<_>>()?;
        for id in known.keys() {
            origins.entry(*id).or_insert(None);
        }
        let mut out = Vec::new();
        for (id, idx) in origins {
            let mut expected = stored.get(&id).copied().unwrap_or(0) + 1;
            let mut runs = Vec::new();
            if let Some(idx) = idx {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT seq FROM _tide_log WHERE origin=?1 AND seq>=?2 ORDER BY seq",
                )?;
                let mut rows = stmt.query(params![idx, expected as i64])?;
                while let Some(r) = rows.next()? {
                    let seq = r.get::<_, i64>(0)? as u64;
                    if seq > expected {
                        runs.push((expected, seq - 1));
                    }
                    expected = seq + 1;
                }
            }
            if let Some(&last) = known.get(&id)
                && last >= expected
            {
                runs.push((expected, last));
            }
            if !runs.is_empty() {
                out.push((id, runs));
            }
        }
        Ok(out)
    }

    /// A carrier's own small state kept with the replica (what a one-way link last
    /// sent, for example), by `key`; `None` when never set.
    pub fn transport_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT v FROM _tide_meta WHERE k=?1",
                [format!("transport {key}")],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets a carrier's state `key` (see [`Replica::transport_state`]).
    pub fn set_transport_state(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO _tide_meta(k, v) VALUES(?1, ?2) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            params![format!("transport {key}"), value],
        )?;
        Ok(())
    }

    /// Every carrier state whose key starts with `prefix`, with its key (the prefix
    /// included), in key order.
    pub fn transport_states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let start = format!("transport {prefix}");
        let rows = self
            .conn
            .prepare("SELECT k, v FROM _tide_meta WHERE substr(k, 1, length(?1)) = ?1 ORDER BY k")?
            .query_map([&start], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows
            .into_iter()
            .map(|(k, v)| (k["transport ".len()..].to_string(), v))
            .collect())
    }

    /// Forgets a carrier's state `key`.
    pub fn remove_transport_state(&mut self, key: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM _tide_meta WHERE k=?1",
            [format!("transport {key}")],
        )?;
        Ok(())
    }

    /// Makes this replica a relay (a hub): changes to tables it does not track are
    /// stored and passed on like any other, instead of waiting in quarantine.
    pub fn set_relay(&mut self, on: bool) -> Result<()> {
        crate::store::meta::set_u64(&self.conn, "relay", u64::from(on))
    }

    /// Whether this replica relays changes to tables it does not track.
    pub fn relays(&self) -> Result<bool> {
        Ok(crate::store::meta::get_u64(&self.conn, "relay")? == 1)
    }

    /// Remembers what `peer` said it holds (its version vector, from a bundle or a sync
    /// message). Only ever moves forward.
    pub fn record_peer_ack(&mut self, peer: ReplicaId, vector: &VersionVector) -> Result<()> {
        let tx = self.conn.transaction()?;
        store_ack(&tx, peer, vector)?;
        tx.commit()?;
        Ok(())
    }

    /// What `peer` last said it holds (empty when it never said).
    pub fn peer_ack(&self, peer: ReplicaId) -> Result<VersionVector> {
        let peer: &[u8] = &peer.0;
        read_vector(
            &self.conn,
            "SELECT origin, seq FROM _tide_acks WHERE peer=?1",
            &[&peer],
        )
    }
}

/// Runs of seqs of one origin, each (first, last).
pub type SeqRuns = Vec<(u64, u64)>;

/// What [`Replica::each_change_page`] carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Changes in the page.
    pub changes: u64,
    /// Bytes of their heads and chunks (before compression).
    pub bytes: u64,
    /// More changes remain past the budget: ask for the next page.
    pub more: bool,
}

/// One origin's changes past a vector, read a batch at a time in seq order (which is
/// its HLC order).
struct Cursor {
    idx: i64,
    /// The last seq taken (or the vector's).
    after: u64,
    /// The last seq of the origin's contiguous run here: changes past a gap are not
    /// sent until it is filled (a receiver could not apply them, and a page's runs stay
    /// contiguous).
    last: u64,
    /// (seq, HLC) of the next changes.
    next: std::collections::VecDeque<(u64, u64)>,
    /// No change is left past `after`.
    done: bool,
}

impl Cursor {
    const BATCH: i64 = 256;

    fn fill(&mut self, conn: &rusqlite::Connection) -> Result<()> {
        if !self.next.is_empty() || self.done {
            return Ok(());
        }
        let rows = conn
            .prepare_cached(
                "SELECT seq, hlc FROM _tide_log WHERE origin=?1 AND seq>?2 AND seq<=?3 ORDER BY seq LIMIT ?4",
            )?
            .query_map(params![self.idx, self.after as i64, self.last as i64, Self::BATCH], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.done = (rows.len() as i64) < Self::BATCH;
        self.next.extend(rows);
        Ok(())
    }
}
