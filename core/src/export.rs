//! What this replica holds and what a peer lacks: version vectors, acknowledgements, the changes to send.

use crate::error::Result;
use crate::format::change::{SignedChange, SignedHead};
use crate::format::ids::ReplicaId;
use crate::format::ids::VersionVector;
use crate::replica::{Progress, Replica};
use crate::store::chunks::{Chunks, LogChunks, unpack};
use crate::store::vectors::{VectorOf, read_vector, store_ack, vector};
use rusqlite::params;

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
