//! The change log: appending this replica's changes, ingesting others' (verify, dedup,
//! fork detection), and applying every change whose dependencies are present, in causal
//! order, inside the caller's transaction.

use foldhash::HashMap;
use std::hash::BuildHasher;

use rusqlite::{Connection, OptionalExtension, params};

use crate::change::{
    Change, ChangeHead, ChunkDecoder, ChunkRef, Chunks, Manifest, OpKind, RowOp, SignedChange,
    SignedHead, Step, TableOps, VerifyError,
};
use crate::error::{Error, Result};
use crate::identity::SecretIdentity;
use crate::ids::{ChangeId, ReplicaId};
use crate::merge::{BATCH, Merger, RowRef, Visible};
use crate::replica::{Replica, VersionVector, origin_idx, origins_map};
use crate::rowmeta::{ROW, RowMeta, Version};
use crate::savepoint::Savepoint;
use crate::schema::{self, TableInfo};
use crate::value::{Value, encode_key};

/// Why a change sits in quarantine instead of being applied.
pub mod reason {
    /// Same origin and seq as a stored change, other content: the origin forked.
    pub const FORK: &str = "fork";
    /// Its `prev` hash does not match the origin's previous change.
    pub const BROKEN_CHAIN: &str = "broken_chain";
    /// Signed by a replica this one does not know; add its card, then retry.
    pub const UNKNOWN_ORIGIN: &str = "unknown_origin";
    /// Writes a table this replica does not track.
    pub const UNKNOWN_TABLE: &str = "unknown_table";
    /// Writes a column this replica's table does not have, or keys it differently.
    pub const SCHEMA_MISMATCH: &str = "schema_mismatch";
    /// A quarantined change whose signature failed when retried (its origin's card
    /// was added since, and the change does not verify with it).
    pub const BAD_SIGNATURE: &str = "bad_signature";
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Changes offered.
    pub received: usize,
    /// Already held (same id and content): ignored.
    pub duplicates: usize,
    /// Newly stored in the log.
    pub stored: usize,
    /// Changes applied by this import (including earlier ones that were waiting).
    pub applied: usize,
    /// Row ops applied.
    pub ops_applied: usize,
    /// Stored changes still waiting for missing dependencies.
    pub waiting: usize,
    /// Changes put in quarantine by this import, with the reason.
    pub quarantined: Vec<(ChangeId, String)>,
    /// Conflict records open after this import that were not open before it (a conflict
    /// that gained a candidate has a new id, so it counts; one opened and closed within
    /// the import does not).
    pub conflicts_opened: usize,
}

/// Progress of a long operation, for a person watching: `done` of `total` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// `packing` (listing changes for export) or `applying` (import).
    pub stage: &'static str,
    /// Changes done so far.
    pub done: u64,
    /// Changes in all.
    pub total: u64,
}

/// One entry of the quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// Its number, for `retry` and `discard`.
    pub number: i64,
    /// The change.
    pub change: ChangeId,
    /// A reason code from [`reason`].
    pub reason: String,
    /// Details for a person.
    pub detail: String,
}

impl Replica {
    /// What this replica holds: origin → highest contiguous seq stored. This is the
    /// acknowledgement a peer gets.
    pub fn version_vector(&self) -> Result<VersionVector> {
        vector(&self.conn, "stored")
    }

    /// What this replica has applied (≤ [`Replica::version_vector`]).
    pub fn applied_vector(&self) -> Result<VersionVector> {
        vector(&self.conn, "applied")
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
                        stage: "packing",
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

    /// Verifies, stores and applies `changes` in one transaction: all of it or nothing
    /// (invariant 6). See [`Replica::import_each`].
    pub fn import(&mut self, changes: &[SignedChange]) -> Result<ImportReport> {
        self.import_each(|offer| {
            for c in changes {
                offer(c.head(), &mut &*c)?;
            }
            Ok(())
        })
    }

    /// Verifies, stores and applies the changes `source` offers, one at a time with its
    /// chunks, in one transaction: all of it or nothing (invariant 6). Pending local
    /// writes are sealed first, in the same transaction, so they keep their place in
    /// causal order. A change with a bad signature, or a chunk that is not the one its
    /// signed head names, rejects the whole import and nothing is kept; one from an
    /// unknown origin, a fork, or one that cannot be applied goes to quarantine; one
    /// whose dependencies are missing waits. Memory stays bounded whatever the number
    /// and size of the changes: a chunk at a time is held.
    pub fn import_each(
        &mut self,
        source: impl FnOnce(&mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>) -> Result<()>,
    ) -> Result<ImportReport> {
        self.import_with(Source::Offered(Box::new(source), None))
    }

    /// [`Replica::import_each`], recording in the same transaction what `peer` says it
    /// holds (a bundle's acknowledgement, see [`Replica::record_peer_ack`]): an import
    /// is then one commit, so an app writing alongside sees its snapshot go stale once,
    /// not twice, and a full disk cannot keep the changes but lose the acknowledgement.
    pub fn import_each_from(
        &mut self,
        peer: ReplicaId,
        ack: &VersionVector,
        source: impl FnOnce(&mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>) -> Result<()>,
    ) -> Result<ImportReport> {
        self.import_with(Source::Offered(Box::new(source), Some((peer, ack.clone()))))
    }

    /// What [`Replica::import_each`] would do with the changes `source` offers, short of
    /// writing: the same checks, by the same code, with the same outcome for each change
    /// (refused, stored, duplicate, quarantined), so a change the import would refuse
    /// fails here with the same error. Nothing is applied, so the report's `applied`,
    /// `ops_applied`, `waiting` and `conflicts_opened` stay 0; `stored` counts what the
    /// import would store. The log is read in one read transaction; what the import
    /// would store is noted in a table of SQLite's temporary database (never this file),
    /// so that later changes are judged against it as the import would judge them, and
    /// the transaction is rolled back. Nothing is written to the database file.
    pub fn check_each(
        &self,
        source: impl FnOnce(&mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>) -> Result<()>,
    ) -> Result<ImportReport> {
        let tx = self.conn.unchecked_transaction()?;
        if crate::seal::has_pending(&tx)? {
            // The import would seal the pending writes first, which this file may
            // only do under its own key (invariant 11).
            self.secret_for_sealing()?;
        }
        tx.execute_batch(
            "CREATE TEMP TABLE _tide_checking(origin INTEGER, seq INTEGER, hash BLOB,
               PRIMARY KEY(origin, seq))",
        )?;
        let mut ingest = Ingest {
            conn: &tx,
            retrying: false,
            checking: true,
            report: ImportReport::default(),
            touched: Vec::new(),
            cache: ChunkCache::default(),
            failed: None,
        };
        source(&mut |head, chunks| ingest.offer(head, chunks))?;
        let Ingest { report, failed, .. } = ingest;
        if let Some(e) = failed {
            return Err(Error::ApplyAborted(format!(
                "an offered change failed and the check went on: {e}"
            )));
        }
        // Drops the temporary table too.
        tx.rollback()?;
        Ok(report)
    }

    fn import_with(&mut self, source: Source<'_>) -> Result<ImportReport> {
        let retrying = matches!(source, Source::Quarantine(_));
        // A full disk makes SQLite roll the transaction back (or it is rolled back when
        // dropped): nothing of the import is kept, and that is what to say.
        self.import_in_one_transaction(source).map_err(|e| match e {
            Error::Sqlite(ref s)
                if s.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                Error::DiskFull(if retrying {
                    "run the retry again; nothing was retried"
                } else {
                    "import again; nothing was imported"
                })
            }
            other => other,
        })
    }

    fn import_in_one_transaction(&mut self, source: Source<'_>) -> Result<ImportReport> {
        let retrying = matches!(source, Source::Quarantine(_));
        let fail_after = self.fail_after_ops.take();
        // IMMEDIATE: no app write can slip in between sealing and applying.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let sealed = if crate::seal::has_pending(&tx)? {
            let secret = self.secret_for_sealing()?;
            crate::seal::seal_pending(&tx, &secret)?.map(|id| id.seq)
        } else {
            None
        };
        let mut ingest = Ingest {
            conn: &tx,
            retrying,
            checking: false,
            report: ImportReport::default(),
            touched: Vec::new(),
            cache: ChunkCache::default(),
            failed: None,
        };
        let mut ack = None;
        match source {
            Source::Offered(source, from) => {
                ack = from;
                source(&mut |head, chunks| ingest.offer(head, chunks))?
            }
            Source::Quarantine(heads) => {
                for head in &heads {
                    ingest.offer(head, &mut LogChunks { conn: &tx })?;
                }
            }
        }
        let Ingest {
            mut report,
            touched,
            cache,
            failed,
            ..
        } = ingest;
        if let Some(e) = failed {
            // The source swallowed the error and went on: nothing of it is kept.
            return Err(Error::ApplyAborted(format!(
                "an offered change failed and the import went on: {e}"
            )));
        }
        for idx in touched {
            advance_stored(&tx, idx)?;
        }
        if retrying {
            // Stored changes that could not be applied get another go.
            tx.execute("UPDATE _tide_log SET applied=0 WHERE applied=-1", [])?;
            tx.execute(
                "DELETE FROM _tide_quarantine WHERE reason IN ('unknown_table', 'schema_mismatch')",
                [],
            )?;
        }
        let mut progress = self.progress.take();
        let applied = apply_ready(&tx, cache, &mut report, fail_after, progress.as_deref_mut());
        self.progress = progress;
        applied?;
        // A quarantined change now in the log has been dealt with.
        tx.execute(
            "DELETE FROM _tide_quarantine WHERE reason NOT IN ('fork', 'broken_chain')
               AND hash IN (SELECT hash FROM _tide_log WHERE applied >= 0)",
            [],
        )?;
        if let Some((peer, vector)) = ack {
            store_ack(&tx, peer, &vector)?;
        }
        tx.commit()?;
        if let Some(seq) = sealed {
            self.record_sealed(seq)?;
        }
        Ok(report)
    }

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
        let mut stmt = self
            .conn
            .prepare("SELECT body, sig FROM _tide_quarantine WHERE reason NOT IN ('fork', 'broken_chain') ORDER BY qid")?;
        let heads = stmt
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
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

/// Where an import's changes come from.
enum Source<'s> {
    /// A caller offers them with their chunks, maybe with the sender's acknowledgement.
    Offered(OfferFn<'s>, Option<(ReplicaId, VersionVector)>),
    /// The quarantine, retried: heads from it, chunks from the log's chunk store.
    Quarantine(Vec<SignedHead>),
}

/// Records that `peer` holds `vector` (acknowledgements only grow).
fn store_ack(conn: &Connection, peer: ReplicaId, vector: &VersionVector) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO _tide_acks(peer, origin, seq) VALUES(?1, ?2, ?3)
         ON CONFLICT(peer, origin) DO UPDATE SET seq = max(seq, excluded.seq)",
    )?;
    for (origin, seq) in vector {
        stmt.execute(params![&peer.0[..], &origin.0[..], *seq as i64])?;
    }
    Ok(())
}

type OfferFn<'s> =
    Box<dyn FnOnce(&mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>) -> Result<()> + 's>;

/// One import's state while changes are offered: each is verified, checked against
/// the log, and stored (or quarantined) before the next is read.
struct Ingest<'c> {
    conn: &'c Connection,
    /// Retrying the quarantine: what fails stays there instead of rejecting the import.
    retrying: bool,
    /// Checking only ([`Replica::check_each`]): every check runs, nothing is stored;
    /// what would be stored is noted in `temp._tide_checking`.
    checking: bool,
    report: ImportReport,
    /// Origins whose stored seq may move.
    touched: Vec<i64>,
    cache: ChunkCache,
    /// Why an offered change failed, if one did.
    failed: Option<String>,
}

impl Ingest<'_> {
    /// Takes one offered change. After an error nothing more is taken: the import
    /// fails even if the source went on.
    fn offer(&mut self, signed: &SignedHead, chunks: &mut dyn Chunks) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::ApplyAborted(format!(
                "a change was offered after the import failed: {e}"
            )));
        }
        let taken = self.take(signed, chunks);
        if let Err(e) = &taken {
            self.failed = Some(e.to_string());
        }
        taken
    }

    fn take(&mut self, signed: &SignedHead, chunks: &mut dyn Chunks) -> Result<()> {
        self.report.received += 1;
        let id = match signed.peek_id() {
            Ok(id) => id,
            Err(e) if !self.retrying => {
                return Err(Error::Rejected {
                    change: None,
                    reason: VerifyError::Decode(e),
                });
            }
            Err(_) => return Ok(()),
        };
        let key: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT sign_key FROM _tide_origins WHERE id=?1",
                [&id.origin.0[..]],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(key) = key else {
            self.keep_chunks(signed, chunks)?;
            return self.quarantine(
                id,
                signed,
                reason::UNKNOWN_ORIGIN,
                "signed by a replica this one does not know",
            );
        };
        let key: [u8; 32] = key.try_into().expect("keys are stored as 32 bytes");
        let manifest = match signed.verify(&key) {
            Ok(m) => m,
            Err(reason) if !self.retrying => {
                return Err(Error::Rejected {
                    change: Some(id),
                    reason,
                });
            }
            Err(_) => return self.bad_signature(id, signed),
        };
        let idx = origin_idx(self.conn, id.origin)?;
        let existing = self.stored_hash(idx, id.seq)?;
        if let Some(hash) = existing {
            if hash == signed.hash() {
                self.report.duplicates += 1;
                return Ok(());
            }
            self.keep_chunks(signed, chunks)?;
            return self.quarantine(
                id,
                signed,
                reason::FORK,
                "another change with this origin and seq is already stored",
            );
        }
        if id.seq > 1 {
            let prev = self.stored_hash(idx, id.seq - 1)?;
            if prev.is_some_and(|p| p != manifest.head.prev) {
                self.keep_chunks(signed, chunks)?;
                return self.quarantine(
                    id,
                    signed,
                    reason::BROKEN_CHAIN,
                    "its previous-change hash does not match the stored log",
                );
            }
        }
        // Every chunk is checked against the signed head before it is stored. A chunk
        // that arrives packed is kept as it came, once it unpacks to what the head names.
        let mut ops = 0;
        for (i, want) in manifest.chunks.iter().enumerate() {
            let checked = chunks.stored(i, want).and_then(|(stored, packing)| {
                let (chunk, stored) = match packing {
                    crate::change::PACKING_RAW => (stored, None),
                    crate::change::PACKING_ZSTD => (
                        crate::change::unzstd_chunk(&stored, want.len)?,
                        Some(stored),
                    ),
                    _ => Err(crate::error::DecodeError::Malformed("chunk packing"))?,
                };
                let n = manifest.check_chunk(i, &chunk)?;
                Ok((n, chunk, stored, packing))
            });
            let (n, chunk, stored, packing) = match checked {
                Ok(x) => x,
                Err(e) if !self.retrying => {
                    return Err(match e {
                        Error::Decode(d) => Error::Rejected {
                            change: Some(id),
                            reason: VerifyError::Decode(d),
                        },
                        other => other,
                    });
                }
                // Retrying: a chunk that is missing or does not match leaves the change
                // in quarantine; anything else (the disk, SQLite) stops the retry.
                Err(Error::Decode(_) | Error::LogBody(_)) => {
                    return self.bad_signature(id, signed);
                }
                Err(e) => return Err(e),
            };
            ops += n;
            if self.checking {
                continue;
            }
            match &stored {
                None => store_chunk(self.conn, &want.hash, &chunk)?,
                Some(stored) => store_packed(self.conn, &want.hash, stored, packing)?,
            }
            self.cache.offer(want.hash, chunk);
        }
        if ops != manifest.ops {
            if !self.retrying {
                return Err(Error::Rejected {
                    change: Some(id),
                    reason: VerifyError::Decode(crate::error::DecodeError::Malformed("op count")),
                });
            }
            return self.bad_signature(id, signed);
        }
        if self.checking {
            self.conn
                .prepare_cached(
                    "INSERT INTO temp._tide_checking(origin, seq, hash) VALUES(?1, ?2, ?3)",
                )?
                .execute(params![idx, id.seq as i64, &signed.hash()[..]])?;
            self.report.stored += 1;
            return Ok(());
        }
        self.conn
            .prepare_cached("INSERT INTO _tide_log(origin, seq, hash, hlc, body, sig, applied, packing) VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0, 0)")?
            .execute(params![idx, id.seq as i64, &signed.hash()[..], manifest.head.hlc as i64, signed.bytes(), &signed.signature()[..]])?;
        self.report.stored += 1;
        if !self.touched.contains(&idx) {
            // One entry per origin, not per change: a bundle may hold millions.
            self.touched.push(idx);
        }
        Ok(())
    }

    /// Keeps the chunks of a change that goes to quarantine, so that retrying it later
    /// needs nothing more from the sender. A chunk that does not match the head is not
    /// kept (retrying then leaves the change where it is).
    fn keep_chunks(&mut self, signed: &SignedHead, chunks: &mut dyn Chunks) -> Result<()> {
        if self.checking {
            return Ok(());
        }
        let Ok(manifest) = signed.manifest() else {
            return Ok(());
        };
        for (i, want) in manifest.chunks.iter().enumerate() {
            let chunk = match chunks.chunk(i, want) {
                Ok(c) => c,
                Err(Error::Decode(_) | Error::LogBody(_)) => continue,
                Err(e) => return Err(e),
            };
            if manifest.check_chunk(i, &chunk).is_ok() {
                store_chunk(self.conn, &want.hash, &chunk)?;
            }
        }
        Ok(())
    }

    /// The hash of the change stored as `seq` of origin `idx`, if one is (or, checking,
    /// would be by now).
    fn stored_hash(&self, idx: i64, seq: u64) -> Result<Option<Vec<u8>>> {
        let stored = self
            .conn
            .prepare_cached("SELECT hash FROM _tide_log WHERE origin=?1 AND seq=?2")?
            .query_row(params![idx, seq as i64], |r| r.get(0))
            .optional()?;
        if stored.is_some() || !self.checking {
            return Ok(stored);
        }
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM temp._tide_checking WHERE origin=?1 AND seq=?2")?
            .query_row(params![idx, seq as i64], |r| r.get(0))
            .optional()?)
    }

    fn bad_signature(&mut self, id: ChangeId, signed: &SignedHead) -> Result<()> {
        self.quarantine(
            id,
            signed,
            reason::BAD_SIGNATURE,
            "the signature or a chunk does not verify with its origin's key",
        )
    }

    fn quarantine(
        &mut self,
        id: ChangeId,
        signed: &SignedHead,
        code: &'static str,
        detail: &str,
    ) -> Result<()> {
        if self.checking {
            self.report.quarantined.push((id, code.into()));
            return Ok(());
        }
        if self.retrying {
            // A retried change keeps one entry, under the reason it fails for now.
            self.conn.execute(
                "DELETE FROM _tide_quarantine WHERE hash=?1 AND reason<>?2
                   AND reason NOT IN ('fork', 'broken_chain')",
                params![&signed.hash()[..], code],
            )?;
        }
        quarantine(self.conn, id, signed, code, detail)?;
        self.report.quarantined.push((id, code.into()));
        Ok(())
    }
}

fn vector(conn: &Connection, column: &str) -> Result<VersionVector> {
    read_vector(
        conn,
        &format!("SELECT id, {column} FROM _tide_origins WHERE {column} > 0"),
        &[],
    )
}

/// A version vector from a query yielding (replica id, seq) rows.
fn read_vector(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<VersionVector> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = VersionVector::new();
    for row in rows {
        let (id, seq) = row?;
        out.insert(
            ReplicaId(id.try_into().expect("ids are stored as 16 bytes")),
            seq as u64,
        );
    }
    Ok(out)
}

fn quarantine(
    conn: &Connection,
    id: ChangeId,
    signed: &SignedHead,
    reason: &str,
    detail: &str,
) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO _tide_quarantine(origin, seq, hash, body, sig, reason, detail) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![&id.origin.0[..], id.seq as i64, &signed.hash()[..], signed.bytes(), &signed.signature()[..], reason, detail],
    )?;
    Ok(())
}

/// Chunks just received, by hash, kept up to a memory budget so that applying them
/// right after storing need not read them back from the log and unpack them.
#[derive(Default)]
pub(crate) struct ChunkCache {
    chunks: HashMap<[u8; 32], Vec<u8>>,
    bytes: usize,
}

impl ChunkCache {
    /// What the cache may hold: applying a large change reads the rest from the log.
    const BUDGET: usize = 16 << 20;

    fn offer(&mut self, hash: [u8; 32], chunk: Vec<u8>) {
        if !self.chunks.contains_key(&hash) && self.bytes + chunk.len() <= Self::BUDGET {
            self.bytes += chunk.len();
            self.chunks.insert(hash, chunk);
        }
    }

    /// Chunk `want`, from the cache when it is there (and then dropped from it, as each
    /// chunk is applied once), else from the log.
    fn take(&mut self, conn: &Connection, index: usize, want: &ChunkRef) -> Result<Vec<u8>> {
        match self.chunks.remove(&want.hash) {
            Some(c) => {
                self.bytes -= c.len();
                Ok(c)
            }
            None => LogChunks { conn }.chunk(index, want),
        }
    }
}

/// The log's chunk store, read as a change's chunks.
pub(crate) struct LogChunks<'c> {
    pub(crate) conn: &'c Connection,
}

impl Chunks for LogChunks<'_> {
    fn chunk(&mut self, index: usize, want: &ChunkRef) -> Result<Vec<u8>> {
        let (data, packing) = self.stored(index, want)?;
        crate::change::unpack_chunk(data, packing, want.len)
            .map_err(|e| Error::LogBody(format!("decompressed: {e}")))
    }

    fn stored(&mut self, _index: usize, want: &ChunkRef) -> Result<(Vec<u8>, i64)> {
        self.conn
            .prepare_cached("SELECT data, packing FROM _tide_chunks WHERE hash=?1")?
            .query_row([&want.hash[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| Error::LogBody("found (it is missing from the log)".into()))
    }
}

/// Deletes the chunks no head in the log or the quarantine names any more.
pub(crate) fn sweep_chunks(conn: &Connection) -> Result<()> {
    let mut named = std::collections::HashSet::new();
    {
        let mut stmt = conn.prepare(
            "SELECT body, packing FROM _tide_log UNION ALL SELECT body, 0 FROM _tide_quarantine",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            // A head that does not decode names nothing this build can read.
            if let Ok(m) = Manifest::decode(&unpack(r.get(0)?, r.get(1)?)?) {
                named.extend(m.chunks.iter().map(|c| c.hash));
            }
        }
    }
    let unnamed: Vec<i64> =
        conn.prepare("SELECT rowid, hash FROM _tide_chunks")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?
            .filter_map(|row| match row {
                Ok((id, hash)) => (!<[u8; 32]>::try_from(hash).is_ok_and(|h| named.contains(&h)))
                    .then_some(Ok(id)),
                Err(e) => Some(Err(e)),
            })
            .collect::<rusqlite::Result<_>>()?;
    let mut delete = conn.prepare("DELETE FROM _tide_chunks WHERE rowid = ?1")?;
    for id in unnamed {
        delete.execute([id])?;
    }
    Ok(())
}

/// Stores a chunk in the log's chunk store (once, whichever changes name it).
pub(crate) fn store_chunk(conn: &Connection, hash: &[u8; 32], chunk: &[u8]) -> Result<()> {
    let (stored, packing) = pack(chunk)?;
    store_packed(conn, hash, &stored, packing)
}

/// Stores a chunk already in its form at rest (checked against its hash by the caller).
fn store_packed(conn: &Connection, hash: &[u8; 32], stored: &[u8], packing: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO _tide_chunks(hash, data, packing) VALUES(?1, ?2, ?3)",
    )?
    .execute(params![&hash[..], stored, packing])?;
    Ok(())
}

/// Chunks up to this size are stored as they are; compressing them gains little.
const PACK_FROM: usize = 512;

/// How a chunk is kept in `_tide_chunks`: a zstd frame (packing 1) when that is
/// smaller, else as signed (packing 0). Hashes always cover the chunk as signed.
pub(crate) fn pack(chunk: &[u8]) -> Result<(std::borrow::Cow<'_, [u8]>, i64)> {
    if chunk.len() < PACK_FROM {
        return Ok((chunk.into(), crate::change::PACKING_RAW));
    }
    let packed =
        zstd::bulk::compress(chunk, 1).map_err(|e| Error::LogBody(format!("compressed: {e}")))?;
    Ok(if packed.len() < chunk.len() {
        (packed.into(), crate::change::PACKING_ZSTD)
    } else {
        (chunk.into(), crate::change::PACKING_RAW)
    })
}

/// The bytes as signed, from their stored form.
pub(crate) fn unpack(stored: Vec<u8>, packing: i64) -> Result<Vec<u8>> {
    match packing {
        0 => Ok(stored),
        1 => zstd::stream::decode_all(&stored[..])
            .map_err(|e| Error::LogBody(format!("decompressed: {e}"))),
        other => Err(Error::LogBody(format!("read: unknown packing {other}"))),
    }
}

/// Moves `stored` up over every contiguous seq now in the log.
pub(crate) fn advance_stored(conn: &Connection, idx: i64) -> Result<()> {
    let mut stored: i64 = conn.query_row(
        "SELECT stored FROM _tide_origins WHERE idx=?1",
        [idx],
        |r| r.get(0),
    )?;
    let mut stmt =
        conn.prepare_cached("SELECT seq FROM _tide_log WHERE origin=?1 AND seq>?2 ORDER BY seq")?;
    let seqs = stmt.query_map(params![idx, stored], |r| r.get::<_, i64>(0))?;
    for s in seqs {
        if s? != stored + 1 {
            break;
        }
        stored += 1;
    }
    conn.execute(
        "UPDATE _tide_origins SET stored=?2 WHERE idx=?1",
        params![idx, stored],
    )?;
    Ok(())
}

/// How a change's table maps onto a local tracked table.
struct TableMap<'a> {
    t: &'a TableInfo,
    columns: Vec<usize>,
}

impl TableMap<'_> {
    /// An insert that writes every column of the local table and names no predecessor:
    /// on a row this replica never had, there is nothing to merge.
    fn whole(&self, op: &RowOp) -> bool {
        let ncols = self.t.columns.len();
        op.kind == OpKind::Insert
            && op.row_preds.is_empty()
            && op.cells.len() == ncols
            && self.columns.len() == ncols
            && op.cells.iter().all(|c| c.preds.is_empty())
    }

    /// A [`TableMap::whole`] insert as a new row: values in the local column order.
    fn fresh_row(&self, op: RowOp, key_bytes: Vec<u8>) -> FreshRow {
        let mut values = vec![Value::Null; self.t.columns.len()];
        for cell in op.cells {
            values[self.columns[cell.column]] = cell.value;
        }
        (op.key, key_bytes, values)
    }
}

fn map_table<'a>(
    tables: &'a HashMap<String, TableInfo>,
    ops: &TableOps,
) -> std::result::Result<TableMap<'a>, (&'static str, String)> {
    let t = tables.get(&ops.name).ok_or_else(|| {
        (
            reason::UNKNOWN_TABLE,
            format!("table {:?} is not tracked here", ops.name),
        )
    })?;
    if t.key_columns != ops.key_columns {
        return Err((
            reason::SCHEMA_MISMATCH,
            format!(
                "table {:?} has key {:?} here, {:?} in the change",
                ops.name, t.key_columns, ops.key_columns
            ),
        ));
    }
    let columns = ops
        .columns
        .iter()
        .map(|c| {
            t.columns.iter().position(|x| x == c).ok_or_else(|| {
                (
                    reason::SCHEMA_MISMATCH,
                    format!("table {:?} has no column {c:?} here", ops.name),
                )
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(TableMap { t, columns })
}

/// Applies every stored change whose dependencies are present, in causal order, then
/// gives held rows another chance and settles foreign keys. Runs inside the caller's
/// transaction; capture triggers are off meanwhile so tide's writes are not captured.
pub(crate) fn apply_ready(
    conn: &Connection,
    mut cache: ChunkCache,
    report: &mut ImportReport,
    fail_after: Option<usize>,
    mut on_progress: Option<&mut (dyn FnMut(Progress) + '_)>,
) -> Result<()> {
    // Waiting changes are read a page at a time, in HLC order, and each head only when
    // its turn comes: memory does not grow with their number (invariant 12).
    let total: i64 = conn.query_row("SELECT count(*) FROM _tide_log WHERE applied=0", [], |r| {
        r.get(0)
    })?;
    let held: i64 = conn.query_row("SELECT count(*) FROM _tide_held", [], |r| r.get(0))?;
    if total == 0 && held == 0 {
        return Ok(());
    }
    let tracked = schema::tracked_tables(conn)?;
    let _off = schema::TriggersOff::new(conn)?;
    let tables: HashMap<String, TableInfo> = tracked
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut applied: HashMap<i64, u64> = HashMap::default();
    {
        let mut s = conn.prepare("SELECT idx, applied FROM _tide_origins")?;
        for row in s.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
        })? {
            let (i, a) = row?;
            applied.insert(i, a);
        }
    }
    let mut merger = Merger::new(conn, HashMap::default());
    // Each apply stamps the conflict records it writes (see `Merger::set_conflict`).
    let epoch = Replica::meta_u64(conn, "apply_epoch")? + 1;
    Replica::set_meta_u64(conn, "apply_epoch", epoch)?;
    merger.epoch = epoch as i64;
    let mut max_hlc = Replica::meta_u64(conn, "hlc")?;
    let mut ops_done = 0usize;
    let mut waiting;
    loop {
        let mut progress = false;
        waiting = 0;
        let mut pages = PendingPages::default();
        while let Some((origin, seq)) = pages.next(conn)? {
            let manifest = {
                let (head, packing): (Vec<u8>, i64) = conn
                    .prepare_cached(
                        "SELECT body, packing FROM _tide_log WHERE origin=?1 AND seq=?2",
                    )?
                    .query_row(params![origin, seq as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Manifest::decode(&unpack(head, packing)?)?
            };
            let head = &manifest.head;
            let mut ready = true;
            for (rid, s) in &head.deps {
                let idx = origin_idx(conn, *rid)?;
                if applied.get(&idx).copied().unwrap_or(0) < *s {
                    ready = false;
                    break;
                }
            }
            if !ready {
                waiting += 1;
                continue;
            }
            progress = true;
            if head
                .deps
                .iter()
                .any(|(r, _)| !merger.origins.values().any(|x| x == r))
                || !merger.origins.values().any(|x| *x == head.origin)
            {
                merger.origins = std::rc::Rc::new(origins_map(conn)?);
            }
            let id = ChangeId {
                origin: head.origin,
                seq: head.seq,
            };
            // A change applies whole or not at all: a table that turns out not to map
            // here rolls back the ops already applied from it, and it goes to quarantine.
            let savepoint = Savepoint::begin(conn, "tide_change")?;
            let ops_before = ops_done;
            let (opened_before, closed_before) = (merger.conflicts_written, merger.closed_any);
            let outcome = apply_change(
                conn,
                &mut cache,
                &mut merger,
                &tables,
                (origin, seq, &manifest),
                &mut ops_done,
                fail_after,
            )?;
            if let Err((code, detail)) = outcome {
                savepoint.rollback()?;
                ops_done = ops_before;
                // What the change opened or closed is undone with it.
                merger.conflicts_written = opened_before;
                merger.closed_any = closed_before;
                let signed = load_head(conn, origin, seq)?;
                quarantine(conn, id, &signed, code, &detail)?;
                conn.execute(
                    "UPDATE _tide_log SET applied=-1 WHERE origin=?1 AND seq=?2",
                    params![origin, seq as i64],
                )?;
                report.quarantined.push((id, code.into()));
                continue;
            }
            savepoint.release()?;
            conn.prepare_cached("UPDATE _tide_log SET applied=1 WHERE origin=?1 AND seq=?2")?
                .execute(params![origin, seq as i64])?;
            applied.insert(origin, seq);
            max_hlc = max_hlc.max(head.hlc);
            report.applied += 1;
            report.ops_applied += ops_done - ops_before;
            if let Some(p) = on_progress.as_deref_mut() {
                p(Progress {
                    stage: "applying",
                    done: report.applied as u64,
                    total: total.max(0) as u64,
                });
            }
        }
        if !progress || waiting == 0 {
            break;
        }
    }
    report.waiting = waiting;
    merger.origins = std::rc::Rc::new(origins_map(conn)?);
    settle(&mut merger, &tracked)?;
    for (idx, seq) in &applied {
        conn.prepare_cached("UPDATE _tide_origins SET applied=?2 WHERE idx=?1 AND applied<?2")?
            .execute(params![idx, *seq as i64])?;
    }
    Replica::set_meta_u64(conn, "hlc", max_hlc)?;
    if conn.is_autocommit() {
        // Something ended our transaction behind our back; nothing after it is atomic.
        return Err(Error::ApplyAborted(
            "the apply transaction was ended by SQLite".into(),
        ));
    }
    // Counted as records are written and closed (`Merger::note_opened`, `note_closed`):
    // reading every conflict id before and after would cost memory and time in
    // proportion to all the conflicts the replica holds.
    report.conflicts_opened += merger.conflicts_written.max(0) as usize;
    Ok(())
}

/// The changes waiting to apply, in (HLC, origin, seq) order, a page at a time: applying
/// or quarantining one between pages takes it out of later pages, never skips another.
#[derive(Default)]
struct PendingPages {
    page: std::collections::VecDeque<(i64, u64)>,
    after: Option<(i64, i64, i64)>,
    done: bool,
}

impl PendingPages {
    const PAGE: i64 = 256;

    fn next(&mut self, conn: &Connection) -> Result<Option<(i64, u64)>> {
        if self.page.is_empty() && !self.done {
            let (hlc, origin, seq) = self.after.unwrap_or((i64::MIN, i64::MIN, i64::MIN));
            let rows = conn
                .prepare_cached(
                    "SELECT hlc, origin, seq FROM _tide_log
                     WHERE applied=0 AND (hlc, origin, seq) > (?1, ?2, ?3)
                     ORDER BY hlc, origin, seq LIMIT ?4",
                )?
                .query_map(params![hlc, origin, seq, Self::PAGE], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            self.done = (rows.len() as i64) < Self::PAGE;
            self.after = rows.last().copied().or(self.after);
            self.page
                .extend(rows.into_iter().map(|(_, o, s)| (o, s as u64)));
        }
        Ok(self.page.pop_front())
    }
}

/// Applies one stored change, op by op, straight from its chunks, one chunk in memory
/// at a time. `Ok(Err(..))` says a table of it does not map onto this replica (the
/// caller rolls back and quarantines).
fn apply_change(
    conn: &Connection,
    cache: &mut ChunkCache,
    merger: &mut Merger<'_>,
    tables: &HashMap<String, TableInfo>,
    (origin, seq, manifest): (i64, u64, &Manifest),
    ops_done: &mut usize,
    fail_after: Option<usize>,
) -> Result<std::result::Result<(), (&'static str, String)>> {
    let mut applier = Applier {
        merger,
        ids: HashMap::default(),
        origin,
        seq,
        hlc: manifest.head.hlc,
        optimistic: true,
    };
    applier.ids = applier
        .merger
        .origins
        .iter()
        .map(|(i, r)| (*r, *i))
        .collect();
    let mut map: Option<TableMap<'_>> = None;
    // Ops wait in a batch (of one table, distinct keys) so their metadata is read, and
    // new rows written, many per statement.
    let mut batch: Vec<(RowOp, Vec<u8>)> = Vec::with_capacity(BATCH);
    // Keys by hash: a collision only ends a batch early.
    let mut batch_keys: foldhash::HashSet<u64> = Default::default();
    let hasher = foldhash::fast::FixedState::default();
    for (i, want) in manifest.chunks.iter().enumerate() {
        let chunk = cache.take(conn, i, want)?;
        let mut dec = ChunkDecoder::new(&manifest.head.deps, &chunk)?;
        loop {
            let step = dec.next()?;
            if let (Some(m), Step::Table(_) | Step::End) = (&map, &step) {
                applier.ops(m, &mut batch)?;
                batch_keys.clear();
            }
            let op = match step {
                Step::End => break,
                Step::Table(ops) => {
                    match map_table(tables, &ops) {
                        Ok(m) => map = Some(m),
                        Err(e) => return Ok(Err(e)),
                    }
                    continue;
                }
                Step::Row(op) => op,
            };
            let m = map
                .as_ref()
                .expect("the decoder yields a table before its rows");
            if fail_after.is_some_and(|n| *ops_done >= n) {
                return Err(Error::ApplyAborted("injected failure (test hook)".into()));
            }
            *ops_done += 1;
            let key_bytes = encode_key(&op.key);
            if !batch_keys.insert(hasher.hash_one(&key_bytes)) {
                applier.ops(m, &mut batch)?;
                batch_keys.clear();
                batch_keys.insert(hasher.hash_one(&key_bytes));
            }
            batch.push((op, key_bytes));
            if batch.len() == BATCH {
                applier.ops(m, &mut batch)?;
                batch_keys.clear();
            }
        }
    }
    Ok(Ok(()))
}

/// Applies the ops of one change.
struct Applier<'m, 'c> {
    merger: &'m mut Merger<'c>,
    ids: HashMap<ReplicaId, i64>,
    origin: i64,
    seq: u64,
    hlc: u64,
    /// Whether a batch that looks like rows new here is written without reading its
    /// metadata first ([`Applier::new_rows_at_once`]); off for the rest of the change once
    /// a batch turns out not to be.
    optimistic: bool,
}

/// A new row written whole: its key and its values in the local table's column order.
type FreshRow = (Vec<Value>, Vec<u8>, Vec<Value>);

impl Applier<'_, '_> {
    fn to_idx(&self, p: &ChangeId) -> (i64, u64) {
        (self.ids[&p.origin], p.seq)
    }

    fn version(&self, op: &RowOp) -> Version {
        Version {
            origin: self.origin,
            seq: self.seq,
            hlc: self.hlc,
            alive: op.kind != OpKind::Delete,
            created: op.kind == OpKind::Insert,
            lineage: op.lineage.map(|l| crate::rowmeta::Stamp {
                origin: self.ids[&l.change.origin],
                seq: l.change.seq,
                hlc: l.hlc,
            }),
        }
    }

    /// The version of a whole insert of this change: every row written by
    /// [`Applier::fresh`] and [`Applier::new_rows_at_once`] has it.
    fn insert_version(&self) -> Version {
        Version {
            origin: self.origin,
            seq: self.seq,
            hlc: self.hlc,
            alive: true,
            created: true,
            lineage: None,
        }
    }

    /// A full batch of inserts written whole, with nothing to merge, is most likely rows
    /// this replica never had (an initial sync, a bulk load elsewhere). Written as such in
    /// a savepoint, without reading any metadata: the rows in one statement, their
    /// metadata with `INSERT OR IGNORE`. If the table refuses a row (it has one with that
    /// key, or a constraint says no) or some key had metadata after all, the savepoint is
    /// rolled back, the batch is put back as it was, and false sends it down the general
    /// path, which reads what is there.
    fn new_rows_at_once(
        &mut self,
        map: &TableMap<'_>,
        batch: &mut Vec<(RowOp, Vec<u8>)>,
    ) -> Result<bool> {
        let t = map.t;
        if batch.len() != Merger::batch_rows(t) || !batch.iter().all(|(op, _)| map.whole(op)) {
            return Ok(false);
        }
        let rows: Vec<FreshRow> = batch
            .drain(..)
            .map(|(op, key_bytes)| map.fresh_row(op, key_bytes))
            .collect();
        let conn = self.merger.conn;
        let savepoint = Savepoint::begin(conn, "tide_new_rows")?;
        let all_new = (|| -> Result<bool> {
            let refs: Vec<(&[Value], &[Value])> = rows
                .iter()
                .map(|(k, _, v)| (k.as_slice(), v.as_slice()))
                .collect();
            match self.merger.insert_rows(t, &refs) {
                Ok(()) => {}
                Err(e) if crate::merge::constraint_reason(&e).is_some() => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            let keys: Vec<&[u8]> = rows.iter().map(|(_, kb, _)| kb.as_slice()).collect();
            let written = self
                .merger
                .write_fresh_where_new(t, &keys, self.insert_version())?;
            Ok(written == keys.len())
        })();
        // On an error the guard undoes the batch, so nothing of it outlives the error.
        if all_new? {
            savepoint.release()?;
            return Ok(true);
        }
        savepoint.rollback()?;
        self.optimistic = false;
        // The ops as they came: `map.columns` is a permutation here (every column written).
        batch.extend(rows.into_iter().map(|(key, key_bytes, mut values)| {
            let cells = map
                .columns
                .iter()
                .enumerate()
                .map(|(column, &local)| crate::change::CellWrite {
                    column,
                    value: std::mem::replace(&mut values[local], Value::Null),
                    preds: Vec::new(),
                })
                .collect();
            let op = RowOp {
                kind: OpKind::Insert,
                key,
                row_preds: Vec::new(),
                lineage: None,
                cells,
            };
            (op, key_bytes)
        }));
        Ok(false)
    }

    /// Applies a batch of ops of one table, in order, and empties it.
    fn ops(&mut self, map: &TableMap<'_>, batch: &mut Vec<(RowOp, Vec<u8>)>) -> Result<()> {
        if self.optimistic && self.new_rows_at_once(map, batch)? {
            return Ok(());
        }
        let t = map.t;
        let ncols = t.columns.len();
        let keys: Vec<&[u8]> = batch.iter().map(|(_, k)| k.as_slice()).collect();
        let metas = self.merger.load_metas(t, &keys)?;
        let mut fresh: Vec<FreshRow> = Vec::new();
        // A batch names each key once (`apply_change`), so a row's metadata read ahead is
        // only out of date if a merge changed other rows than its own (it can hold the
        // rows blocking a UNIQUE slot): from then on, the batch's rows are read again.
        let mut stale = false;
        for ((op, key_bytes), m0) in batch.drain(..).zip(metas) {
            let m0 = if stale {
                self.merger.load_meta(t, &key_bytes)?
            } else {
                m0
            };
            // The common case: a row new here, written whole, with nothing to merge.
            if m0.is_none() && map.whole(&op) {
                fresh.push(map.fresh_row(op, key_bytes));
                continue;
            }
            let m0 = if self.fresh(t, &mut fresh)? {
                stale = true;
                self.merger.load_meta(t, &key_bytes)?
            } else {
                m0
            };
            let v = self.version(&op);
            let mut m1 = m0
                .as_ref()
                .map_or_else(|| RowMeta::new(ncols), RowMeta::successor);
            let row_preds: Vec<_> = op.row_preds.iter().map(|p| self.to_idx(p)).collect();
            m1.write(ROW, v, &row_preds);
            let mut new_values = Vec::with_capacity(op.cells.len());
            for cell in op.cells {
                let col = map.columns[cell.column];
                let preds: Vec<_> = cell.preds.iter().map(|p| self.to_idx(p)).collect();
                m1.write(col + 1, v, &preds);
                new_values.push((col, v, cell.value));
            }
            let before = self.merger.transitions;
            self.merger.transition(
                &RowRef {
                    t,
                    key: &op.key,
                    key_bytes: &key_bytes,
                },
                m0.as_ref(),
                m1,
                &new_values,
                Visible::Table,
            )?;
            stale |= self.merger.transitions - before > 1;
        }
        self.fresh(t, &mut fresh)?;
        Ok(())
    }

    /// Inserts new rows written whole, many per statement when a full batch is waiting;
    /// a row a constraint refuses takes the full merge (which holds it). Empties `fresh`;
    /// true when some row took the full merge.
    fn fresh(&mut self, t: &TableInfo, fresh: &mut Vec<FreshRow>) -> Result<bool> {
        if fresh.is_empty() {
            return Ok(false);
        }
        let v = self.insert_version();
        let per_statement = Merger::batch_rows(t);
        let mut merged = false;
        let mut done: Vec<&[u8]> = Vec::with_capacity(fresh.len());
        for chunk in fresh.chunks(per_statement) {
            if chunk.len() == per_statement {
                let rows: Vec<(&[Value], &[Value])> = chunk
                    .iter()
                    .map(|(k, _, v)| (k.as_slice(), v.as_slice()))
                    .collect();
                match self.merger.insert_rows(t, &rows) {
                    Ok(()) => {
                        done.extend(chunk.iter().map(|(_, kb, _)| kb.as_slice()));
                        continue;
                    }
                    Err(e) if crate::merge::constraint_reason(&e).is_some() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            for (key, key_bytes, values) in chunk {
                if self.merger.insert_fresh_row(t, key, values)? {
                    done.push(key_bytes);
                    continue;
                }
                // Refused by a constraint: the full merge decides what is held.
                self.merger.write_fresh(t, &done, v)?;
                done.clear();
                let mut m1 = RowMeta::new(t.columns.len());
                m1.write(ROW, v, &[]);
                let new_values: Vec<_> = values
                    .iter()
                    .enumerate()
                    .map(|(c, value)| {
                        m1.write(c + 1, v, &[]);
                        (c, v, value.clone())
                    })
                    .collect();
                self.merger.transition(
                    &RowRef { t, key, key_bytes },
                    None,
                    m1,
                    &new_values,
                    Visible::Table,
                )?;
                merged = true;
            }
        }
        self.merger.write_fresh(t, &done, v)?;
        fresh.clear();
        Ok(merged)
    }
}

/// Brings held rows and foreign keys to a fixpoint: every held row gets another chance,
/// oldest first, and rows whose foreign key points nowhere are held, until nothing
/// moves. Runs with triggers off, after applies and after local seals alike, so every
/// replica reaches the same state from the same changes.
pub(crate) fn settle(merger: &mut Merger<'_>, tracked: &[TableInfo]) -> Result<()> {
    for _round in 0..64 {
        let before = held_rows(merger.conn)?;
        let mut order = Vec::with_capacity(before.len());
        for (tid, key) in &before {
            let Some(t) = tracked.iter().find(|t| t.tid == *tid) else {
                continue;
            };
            let Some(m) = merger.load_meta(t, key)? else {
                continue;
            };
            order.push((merger.priority(&m, key), t, key.clone()));
        }
        order.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, t, key) in order {
            merger.release(t, &key)?;
        }
        hold_foreign_key_violators(merger, tracked)?;
        if held_rows(merger.conn)? == before {
            return Ok(());
        }
    }
    Ok(())
}

fn held_rows(conn: &Connection) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached("SELECT tid, key FROM _tide_held ORDER BY tid, key")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Rows of tracked tables whose foreign key points at no row (the parent was deleted
/// concurrently, or is itself held) are held until the parent is back. Found through
/// the declared keys, so WITHOUT ROWID tables are covered too.
fn hold_foreign_key_violators(merger: &mut Merger<'_>, tracked: &[TableInfo]) -> Result<()> {
    use crate::schema::q;
    for t in tracked {
        let fks: Vec<(i64, String, String, Option<String>)> = merger
            .conn
            .prepare_cached("SELECT id, \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq")?
            .query_map([&t.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut i = 0;
        while i < fks.len() {
            let id = fks[i].0;
            let group: Vec<_> = fks[i..].iter().take_while(|f| f.0 == id).cloned().collect();
            i += group.len();
            let parent = &group[0].1;
            let parent_cols: Vec<String> = if group.iter().all(|f| f.3.is_some()) {
                group
                    .iter()
                    .map(|f| f.3.clone().expect("checked above"))
                    .collect()
            } else {
                // No parent columns named: the parent's primary key, in order.
                merger
                    .conn
                    .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
                    .query_map([parent], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            if parent_cols.len() != group.len() {
                continue;
            }
            let not_null = group
                .iter()
                .map(|f| format!("c.{} IS NOT NULL", q(&f.2)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let matches = group
                .iter()
                .zip(&parent_cols)
                .map(|(f, p)| format!("p.{} = c.{}", q(p), q(&f.2)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let keys = t
                .key_columns
                .iter()
                .map(|k| format!("c.{}", q(k)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {keys} FROM {} c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {matches})",
                q(&t.name),
                q(parent)
            );
            let n = t.key_columns.len();
            let orphans: Vec<Vec<crate::value::Value>> = merger
                .conn
                .prepare(&sql)?
                .query_map([], |r| (0..n).map(|i| r.get(i)).collect())?
                .collect::<rusqlite::Result<_>>()?;
            for key in orphans {
                merger.hold(t, &key, crate::merge::HELD_FOREIGN_KEY)?;
            }
        }
    }
    Ok(())
}

fn load_head(conn: &Connection, origin: i64, seq: u64) -> Result<SignedHead> {
    let (body, sig, packing): (Vec<u8>, Vec<u8>, i64) = conn.query_row(
        "SELECT body, sig, packing FROM _tide_log WHERE origin=?1 AND seq=?2",
        params![origin, seq as i64],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(SignedHead::from_parts(
        unpack(body, packing)?,
        sig.try_into().expect("signatures are stored as 64 bytes"),
    ))
}

/// Appends a change by this replica to the log (applied or not) and returns it.
pub(crate) fn append_own(
    conn: &Connection,
    secret: &SecretIdentity,
    build: impl FnOnce(&mut Change),
    applied: bool,
) -> Result<Change> {
    let mut change = Change {
        head: next_head(conn, secret)?,
        tables: Vec::new(),
    };
    build(&mut change);
    let (manifest, chunks) = change.encode_with(chunk_target(conn)?);
    for (c, data) in manifest.chunks.iter().zip(&chunks) {
        store_chunk(conn, &c.hash, data)?;
    }
    store_own(conn, secret, &manifest, applied)?;
    Ok(change)
}

/// The head of this replica's next change: the next seq, the hash chain, the version
/// vector applied here, and a fresh HLC reading.
pub(crate) fn next_head(conn: &Connection, secret: &SecretIdentity) -> Result<ChangeHead> {
    let self_idx: i64 =
        conn.query_row("SELECT v FROM _tide_meta WHERE k='self'", [], |r| r.get(0))?;
    let (seq, prev): (u64, Option<Vec<u8>>) = conn.query_row(
        "SELECT coalesce(max(seq), 0), (SELECT hash FROM _tide_log WHERE origin=?1 ORDER BY seq DESC LIMIT 1) FROM _tide_log WHERE origin=?1",
        [self_idx],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )?;
    let mut deps: Vec<(ReplicaId, u64)> = vector(conn, "applied")?.into_iter().collect();
    let me = secret.id();
    deps.retain(|(r, _)| *r != me);
    if seq > 0 {
        deps.push((me, seq));
    }
    deps.sort();
    Ok(ChangeHead {
        origin: me,
        seq: seq + 1,
        hlc: next_hlc(conn)?,
        schema: Replica::meta_u64(conn, "schema_epoch")?,
        prev: prev
            .map(|p| p.try_into().expect("hashes are stored as 32 bytes"))
            .unwrap_or([0; 32]),
        deps,
    })
}

/// The size past which this replica's writers close a chunk: [`CHUNK_TARGET`] unless a
/// test set another (`Replica::set_chunk_target`).
///
/// [`CHUNK_TARGET`]: crate::change::CHUNK_TARGET
pub(crate) fn chunk_target(conn: &Connection) -> Result<usize> {
    Ok(match Replica::meta_u64(conn, "chunk_target")? {
        0 => crate::change::CHUNK_TARGET,
        n => n as usize,
    })
}

/// Signs the head of this replica's change (its chunks already stored) and appends it to
/// the log.
pub(crate) fn store_own(
    conn: &Connection,
    secret: &SecretIdentity,
    manifest: &Manifest,
    applied: bool,
) -> Result<()> {
    let self_idx: i64 =
        conn.query_row("SELECT v FROM _tide_meta WHERE k='self'", [], |r| r.get(0))?;
    let head = &manifest.head;
    let signed = SignedHead::sign(manifest.encode(), secret);
    conn.execute(
        "INSERT INTO _tide_log(origin, seq, hash, hlc, body, sig, applied, packing) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
        params![self_idx, head.seq as i64, &signed.hash()[..], head.hlc as i64, signed.bytes(), &signed.signature()[..], i64::from(applied)],
    )?;
    advance_stored(conn, self_idx)?;
    if applied {
        conn.execute(
            "UPDATE _tide_origins SET applied=?2 WHERE idx=?1",
            params![self_idx, head.seq as i64],
        )?;
    }
    Ok(())
}

/// The next hybrid logical clock reading: wall-clock milliseconds in the high 48 bits, a
/// counter in the low 16, always above anything seen.
pub(crate) fn next_hlc(conn: &Connection) -> Result<u64> {
    let last = Replica::meta_u64(conn, "hlc")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let hlc = (now_ms << 16).max(last + 1);
    Replica::set_meta_u64(conn, "hlc", hlc)?;
    Ok(hlc)
}
