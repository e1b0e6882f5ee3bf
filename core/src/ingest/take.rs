//! One offered change taken: verified, checked against the log, stored or quarantined.

use crate::apply::ImportReport;
use crate::error::{Error, Result};
use crate::format::change::{SignedHead, VerifiedHead, VerifyError};
use crate::format::ids::ChangeId;
use crate::store::append::store_received;
use crate::store::chunks::store_packed;
use crate::store::chunks::{ChunkCache, Chunks, store_chunk};
use crate::store::meta::origin_idx;
use crate::store::quarantine::{QuarantineReason, quarantine};
use rusqlite::{Connection, OptionalExtension, params};

/// One import's state while changes are offered: each is verified, checked against
/// the log, and stored (or quarantined) before the next is read.
pub(crate) struct Ingest<'c> {
    pub(crate) conn: &'c Connection,
    /// Retrying the quarantine: what fails stays there instead of rejecting the import.
    pub(crate) retrying: bool,
    /// Checking only ([`Replica::check_each`]): every check runs, nothing is stored;
    /// what would be stored is noted in `temp._tide_checking`.
    pub(crate) checking: bool,
    pub(crate) report: ImportReport,
    /// Origins whose stored seq may move.
    pub(crate) touched: Vec<i64>,
    pub(crate) cache: ChunkCache,
    /// Why an offered change failed, if one did.
    pub(crate) failed: Option<String>,
}

impl Ingest<'_> {
    /// Takes one offered change. After an error nothing more is taken: the import
    /// fails even if the source went on.
    pub(crate) fn offer(&mut self, signed: &SignedHead, chunks: &mut dyn Chunks) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::Apply(
                crate::error::ApplyError::OfferedAfterFailure { failure: e.clone() },
            ));
        }
        let taken = self.take(signed, chunks);
        if let Err(e) = &taken {
            self.failed = Some(e.to_string());
        }
        taken
    }

    /// Takes one change: verified against its origin's key, checked against the log
    /// (duplicate, fork, broken chain), its chunks checked against the verified head and
    /// stored, then the head stored to wait for its turn to apply.
    pub(crate) fn take(&mut self, signed: &SignedHead, chunks: &mut dyn Chunks) -> Result<()> {
        self.report.received += 1;
        let Some((id, head)) = self.verified(signed, chunks)? else {
            return Ok(());
        };
        let idx = origin_idx(self.conn, id.origin)?;
        if !self.fits_the_log(id, idx, &head, chunks)? {
            return Ok(());
        }
        let Some(ops) = self.store_chunks(id, &head, chunks)? else {
            return Ok(());
        };
        if ops != head.ops {
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
        store_received(self.conn, idx, &head)?;
        self.report.stored += 1;
        if !self.touched.contains(&idx) {
            // One entry per origin, not per change: a bundle may hold millions.
            self.touched.push(idx);
        }
        Ok(())
    }

    /// The change's id and its head verified with its origin's key; `None` when it went
    /// to quarantine instead (an unknown origin; a bad signature while retrying).
    fn verified(
        &mut self,
        signed: &SignedHead,
        chunks: &mut dyn Chunks,
    ) -> Result<Option<(ChangeId, VerifiedHead)>> {
        let id = match signed.peek_id() {
            Ok(id) => id,
            Err(e) if !self.retrying => {
                return Err(Error::Rejected {
                    change: None,
                    reason: VerifyError::Decode(e),
                });
            }
            Err(_) => return Ok(None),
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
            self.quarantine(
                id,
                signed,
                QuarantineReason::UnknownOrigin,
                "signed by a replica this one does not know",
            )?;
            return Ok(None);
        };
        let key: [u8; 32] = key.try_into().expect("keys are stored as 32 bytes");
        match signed.verify(&key) {
            Ok(head) => Ok(Some((id, head))),
            Err(reason) if !self.retrying => Err(Error::Rejected {
                change: Some(id),
                reason,
            }),
            Err(_) => self.bad_signature(id, signed).map(|()| None),
        }
    }

    /// Whether the change is new and extends its origin's hash chain. A duplicate is
    /// counted; a fork or a broken chain goes to quarantine.
    fn fits_the_log(
        &mut self,
        id: ChangeId,
        idx: i64,
        head: &VerifiedHead,
        chunks: &mut dyn Chunks,
    ) -> Result<bool> {
        let signed = head.signed();
        if let Some(hash) = self.stored_hash(idx, id.seq)? {
            if hash == signed.hash() {
                self.report.duplicates += 1;
                return Ok(false);
            }
            self.keep_chunks(signed, chunks)?;
            self.quarantine(
                id,
                signed,
                QuarantineReason::Fork,
                "another change with this origin and seq is already stored",
            )?;
            return Ok(false);
        }
        if id.seq > 1 {
            let prev = self.stored_hash(idx, id.seq - 1)?;
            if prev.is_some_and(|p| p != head.head.prev) {
                self.keep_chunks(signed, chunks)?;
                self.quarantine(
                    id,
                    signed,
                    QuarantineReason::BrokenChain,
                    "its previous-change hash does not match the stored log",
                )?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks every chunk against the verified head before it is stored, and counts the
    /// rows. A chunk that arrives packed is kept as it came, once it unpacks to what the
    /// head names. `None` when a chunk failed while retrying (the change stays in
    /// quarantine).
    fn store_chunks(
        &mut self,
        id: ChangeId,
        head: &VerifiedHead,
        chunks: &mut dyn Chunks,
    ) -> Result<Option<u64>> {
        let mut ops = 0;
        for (i, want) in head.chunks.iter().enumerate() {
            let checked = chunks.stored(i, want).and_then(|(stored, packing)| {
                let (chunk, stored) = match packing {
                    crate::format::change::PACKING_RAW => (stored, None),
                    crate::format::change::PACKING_ZSTD => (
                        crate::format::change::unzstd_chunk(&stored, want.len)?,
                        Some(stored),
                    ),
                    _ => Err(crate::error::DecodeError::Malformed("chunk packing"))?,
                };
                let n = head.check_chunk(i, &chunk)?;
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
                    return self.bad_signature(id, head.signed()).map(|()| None);
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
        Ok(Some(ops))
    }

    /// Keeps the chunks of a change that goes to quarantine, so that retrying it later
    /// needs nothing more from the sender. A chunk that does not match the head is not
    /// kept (retrying then leaves the change where it is).
    pub(crate) fn keep_chunks(
        &mut self,
        signed: &SignedHead,
        chunks: &mut dyn Chunks,
    ) -> Result<()> {
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
    pub(crate) fn stored_hash(&self, idx: i64, seq: u64) -> Result<Option<Vec<u8>>> {
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

    pub(crate) fn bad_signature(&mut self, id: ChangeId, signed: &SignedHead) -> Result<()> {
        self.quarantine(
            id,
            signed,
            QuarantineReason::BadSignature,
            "the signature or a chunk does not verify with its origin's key",
        )
    }

    pub(crate) fn quarantine(
        &mut self,
        id: ChangeId,
        signed: &SignedHead,
        code: QuarantineReason,
        detail: &str,
    ) -> Result<()> {
        if self.checking {
            self.report.quarantined.push((id, code));
            return Ok(());
        }
        if self.retrying {
            // A retried change keeps one entry, under the reason it fails for now.
            self.conn.execute(
                "DELETE FROM _tide_quarantine WHERE hash=?1 AND reason<>?2
                   AND reason NOT IN (?3, ?4)",
                params![
                    &signed.hash()[..],
                    code,
                    QuarantineReason::FINAL[0],
                    QuarantineReason::FINAL[1]
                ],
            )?;
        }
        quarantine(self.conn, id, signed, code, detail)?;
        self.report.quarantined.push((id, code));
        Ok(())
    }
}
