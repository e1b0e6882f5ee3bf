//! Ingest: others' changes verified, deduplicated, checked against forks, stored or
//! quarantined, then applied in one transaction.

pub(crate) mod quarantine;
mod take;

pub use crate::apply::ImportReport;
pub use crate::store::quarantine::QuarantineReason;
pub use quarantine::QuarantineEntry;

use crate::apply::apply_ready;
use crate::error::{Error, Result};
use crate::format::change::{SignedChange, SignedHead};
use crate::format::ids::ReplicaId;
use crate::format::ids::VersionVector;
use crate::replica::Replica;
use crate::store::append::advance_stored;
use crate::store::chunks::{ChunkCache, Chunks, LogChunks};
use crate::store::states::ChangeState;
use crate::store::vectors::store_ack;
use rusqlite::{Connection, params};
use take::Ingest;

impl Replica {
    /// Follows the application's schema changes (DESIGN.md §2.12), when SQLite's schema
    /// moved since tide last looked: capture is brought up to the live schema, the writes
    /// made meanwhile are sealed, and changes that waited for this replica's schema
    /// apply. Every import and seal does this first; a command that does neither calls it
    /// to notice a migration at once.
    pub fn follow_schema(&mut self) -> Result<ImportReport> {
        if !crate::capture::follow::moved(&self.conn)? {
            return Ok(ImportReport::default());
        }
        self.import_each(|_| Ok(()))
    }

    /// Runs the application's schema migration `sql` with capture paused: SQLite refuses
    /// some statements while tide's triggers name a column (`ALTER TABLE … DROP COLUMN`),
    /// so the triggers of every tracked table are dropped, `sql` runs one statement at a
    /// time (so each column added, renamed or dropped is told apart exactly), and tide
    /// follows the new schema as it follows any (DESIGN.md §2.12): triggers made anew,
    /// the rows the migration wrote recovered, then sealed as ordinary changes, and
    /// changes that waited for the new columns applied. The triggers' removal, `sql` and
    /// the following are one transaction: if `sql` fails, nothing changed. `sql` must
    /// not open a transaction of its own.
    pub fn migrate(&mut self, sql: &str) -> Result<ImportReport> {
        // What moved before is followed first, so this migration alone is stepped.
        self.follow_schema()?;
        let tx = self.conn.transaction()?;
        for t in crate::store::tables::tracked_tables(&tx)? {
            crate::capture::triggers::drop_triggers(&tx, t.tid)?;
        }
        let mut steps = crate::capture::follow::Steps::start(&tx)?;
        run_statements(&tx, sql, &mut steps)?;
        crate::capture::follow::follow_with(&tx, &steps.hints(), true)?;
        tx.commit()?;
        // Seals what was recovered and applies what waited for these columns.
        self.import_each(|_| Ok(()))
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
            return Err(Error::Apply(crate::error::ApplyError::CheckWentOn {
                failure: e,
            }));
        }
        // Drops the temporary table too.
        tx.rollback()?;
        Ok(report)
    }

    pub(crate) fn import_with(&mut self, source: Source<'_>) -> Result<ImportReport> {
        let retrying = matches!(source, Source::Quarantine(_));
        // A full disk makes SQLite roll the transaction back (or it is rolled back when
        // dropped): nothing of the import is kept, and that is what to say.
        self.import_in_one_transaction(source).map_err(|e| match e {
            Error::Sqlite(ref s)
                if s.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                Error::DiskFull(if retrying {
                    crate::error::Interrupted::Retry
                } else {
                    crate::error::Interrupted::Import
                })
            }
            other => other,
        })
    }

    pub(crate) fn import_in_one_transaction(&mut self, source: Source<'_>) -> Result<ImportReport> {
        let retrying = matches!(source, Source::Quarantine(_));
        let hooks = std::mem::take(&mut self.hooks);
        // IMMEDIATE: no app write can slip in between sealing and applying.
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        crate::capture::follow::follow(&tx)?;
        let sealed = if crate::seal::has_pending(&tx)? {
            let secret = self.secret_for_sealing()?;
            crate::seal::seal_pending(&tx, &secret)?.map(|id| id.seq)
        } else {
            None
        };
        let (mut report, cache, ack) = take_all(&tx, source, retrying)?;
        if retrying {
            crate::store::quarantine::requeue(&tx)?;
        }
        let mut progress = self.progress.take();
        let applied = apply_ready(&tx, cache, &mut report, hooks, progress.as_deref_mut());
        self.progress = progress;
        applied?;
        drop_dealt_with(&tx)?;
        if let Some((peer, vector)) = ack {
            store_ack(&tx, peer, &vector)?;
        }
        tx.commit()?;
        if let Some(seq) = sealed {
            self.record_sealed(seq)?;
        }
        Ok(report)
    }
}

/// Takes every change `source` offers, each verified and stored (or quarantined) before
/// the next is read, then moves each touched origin's stored seq up. Returns the report
/// so far, the chunks just received, and the sender's acknowledgement if it gave one.
fn take_all(
    tx: &Connection,
    source: Source<'_>,
    retrying: bool,
) -> Result<(ImportReport, ChunkCache, Option<Ack>)> {
    let mut ingest = Ingest {
        conn: tx,
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
                ingest.offer(head, &mut LogChunks { conn: tx })?;
            }
        }
    }
    let Ingest {
        report,
        touched,
        cache,
        failed,
        ..
    } = ingest;
    if let Some(e) = failed {
        // The source swallowed the error and went on: nothing of it is kept.
        return Err(Error::Apply(crate::error::ApplyError::ImportWentOn {
            failure: e,
        }));
    }
    for idx in touched {
        advance_stored(tx, idx)?;
    }
    Ok((report, cache, ack))
}

/// A quarantined change now in the log, applied or waiting, has been dealt with.
fn drop_dealt_with(tx: &Connection) -> Result<()> {
    tx.execute(
        "DELETE FROM _tide_quarantine WHERE reason NOT IN (?1, ?2)
           AND hash IN (SELECT hash FROM _tide_log WHERE applied IN (?3, ?4))",
        params![
            QuarantineReason::FINAL[0],
            QuarantineReason::FINAL[1],
            ChangeState::Applied,
            ChangeState::Waiting
        ],
    )?;
    Ok(())
}

/// A sender's acknowledgement: what it holds, by its own account.
pub(crate) type Ack = (ReplicaId, VersionVector);

/// Where an import's changes come from.
pub(crate) enum Source<'s> {
    /// A caller offers them with their chunks, maybe with the sender's acknowledgement.
    Offered(OfferFn<'s>, Option<Ack>),
    /// The quarantine, retried: heads from it, chunks from the log's chunk store.
    Quarantine(Vec<SignedHead>),
}

pub(crate) type OfferFn<'s> =
    Box<dyn FnOnce(&mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>) -> Result<()> + 's>;

/// Runs each statement of `sql` in turn, noting after each how it moved the tracked
/// tables' columns. An error of the SQL itself is the migration's; the caller's
/// transaction undoes everything.
fn run_statements(
    tx: &Connection,
    sql: &str,
    steps: &mut crate::capture::follow::Steps,
) -> Result<()> {
    use rusqlite::fallible_iterator::FallibleIterator;
    let theirs = |e: rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(ref f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            Error::Sqlite(e)
        }
        other => Error::Migration(other.to_string()),
    };
    let mut batch = rusqlite::Batch::new(tx, sql);
    while let Some(mut stmt) = batch.next().map_err(theirs)? {
        let mut rows = stmt.raw_query();
        while rows.next().map_err(theirs)?.is_some() {}
        drop(rows);
        steps.after_statement(tx)?;
    }
    Ok(())
}
