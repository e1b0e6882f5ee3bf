//! Apply: every stored change whose dependencies are present, in causal order, inside
//! the caller's transaction.

mod applier;
mod settle;

pub(crate) use settle::settle;

use crate::error::{Error, Result};
use crate::format::change::{ChunkDecoder, RowOp, Step, VerifiedHead};
use crate::format::ids::ChangeId;
use crate::format::value::encode_key;
use crate::merge::{BATCH, Merger};
use crate::replica::{Progress, TestHooks};
use crate::store::append::load_head;
use crate::store::chunks::ChunkCache;
use crate::store::meta::{origin_idx, origins_map};
use crate::store::quarantine::{QuarantineReason, quarantine};
use crate::store::savepoint::Savepoint;
use crate::store::states::ChangeState;
use crate::store::tables::{self as tables, TableInfo};
use applier::{Applier, TableMap, map_table};
use foldhash::HashMap;
use rusqlite::{Connection, params};
use std::hash::BuildHasher;

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
    pub quarantined: Vec<(ChangeId, QuarantineReason)>,
    /// Conflict records open after this import that were not open before it (a conflict
    /// that gained a candidate has a new id, so it counts; one opened and closed within
    /// the import does not).
    pub conflicts_opened: usize,
}

/// Applies every stored change whose dependencies are present, in causal order, then
/// gives held rows another chance and settles foreign keys. Runs inside the caller's
/// transaction; capture triggers are off meanwhile so tide's writes are not captured.
pub(crate) fn apply_ready(
    conn: &Connection,
    cache: ChunkCache,
    report: &mut ImportReport,
    hooks: TestHooks,
    mut on_progress: Option<&mut (dyn FnMut(Progress) + '_)>,
) -> Result<()> {
    // Waiting changes are read a page at a time, in HLC order, and each head only when
    // its turn comes: memory does not grow with their number (invariant 12).
    let total: i64 = conn.query_row(
        "SELECT count(*) FROM _tide_log WHERE applied=?1",
        [ChangeState::Waiting],
        |r| r.get(0),
    )?;
    let held: i64 = conn.query_row("SELECT count(*) FROM _tide_held", [], |r| r.get(0))?;
    if total == 0 && held == 0 {
        return Ok(());
    }
    let tracked = tables::tracked_tables(conn)?;
    let _off = tables::TriggersOff::new(conn)?;
    let mut run = Run::start(conn, &tracked, cache, hooks)?;
    let mut waiting;
    loop {
        let mut progress = false;
        waiting = 0;
        let mut pages = PendingPages::default();
        while let Some((origin, seq)) = pages.next(conn)? {
            let verified = VerifiedHead::from_log(load_head(conn, origin, seq)?)?;
            if !run.ready(&verified)? {
                waiting += 1;
                continue;
            }
            progress = true;
            if !run.apply_one((origin, seq), &verified, report)? {
                continue;
            }
            if let Some(p) = on_progress.as_deref_mut() {
                p(Progress {
                    stage: crate::replica::Stage::Applying,
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
    run.finish(&tracked, report)
}

/// One apply's state across the changes it applies.
struct Run<'c> {
    conn: &'c Connection,
    merger: Merger<'c>,
    tables: HashMap<String, TableInfo>,
    /// Origin → highest seq applied, as the apply goes.
    applied: HashMap<i64, u64>,
    max_hlc: u64,
    ops_done: usize,
    cache: ChunkCache,
    hooks: TestHooks,
    /// This replica relays changes to tables it does not track (a hub): their ops pass
    /// through untouched instead of sending the change to quarantine.
    relay: bool,
}

impl<'c> Run<'c> {
    fn start(
        conn: &'c Connection,
        tracked: &[TableInfo],
        cache: ChunkCache,
        hooks: TestHooks,
    ) -> Result<Run<'c>> {
        let tables = tracked
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
        let epoch = crate::store::meta::get_u64(conn, "apply_epoch")? + 1;
        crate::store::meta::set_u64(conn, "apply_epoch", epoch)?;
        merger.epoch = epoch as i64;
        Ok(Run {
            conn,
            merger,
            tables,
            applied,
            max_hlc: crate::store::meta::get_u64(conn, "hlc")?,
            ops_done: 0,
            cache,
            hooks,
            relay: crate::store::meta::get_u64(conn, "relay")? == 1,
        })
    }

    /// Whether every change `head` depends on is applied here.
    fn ready(&self, head: &VerifiedHead) -> Result<bool> {
        for (rid, s) in &head.head.deps {
            let idx = origin_idx(self.conn, *rid)?;
            if self.applied.get(&idx).copied().unwrap_or(0) < *s {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Applies one ready change whole, or rolls it back and quarantines it when a table
    /// of it does not map here. Returns whether it applied.
    fn apply_one(
        &mut self,
        (origin, seq): (i64, u64),
        verified: &VerifiedHead,
        report: &mut ImportReport,
    ) -> Result<bool> {
        let (conn, head) = (self.conn, &verified.head);
        let merger = &mut self.merger;
        if head
            .deps
            .iter()
            .any(|(r, _)| !merger.origins.values().any(|x| x == r))
            || !merger.origins.values().any(|x| *x == head.origin)
        {
            merger.origins = std::rc::Rc::new(origins_map(conn)?);
        }
        let id = verified.id();
        // A change applies whole or not at all: a table that turns out not to map
        // here rolls back the ops already applied from it, and it goes to quarantine.
        let savepoint = Savepoint::begin(conn, "tide_change")?;
        let ops_before = self.ops_done;
        let (opened_before, closed_before) = (merger.conflicts_written, merger.closed_any);
        let outcome = apply_change(
            conn,
            &mut self.cache,
            merger,
            &self.tables,
            (origin, seq, verified),
            &mut self.ops_done,
            (self.hooks, self.relay),
        )?;
        if let Err(Refused {
            reason: code,
            detail,
            named,
        }) = outcome
        {
            savepoint.rollback()?;
            // What the origin's schema is like is worth knowing even when the change
            // waits (its columns are what a `newer_schema` change is about).
            if let Some((table, columns)) = named {
                crate::store::peer_columns::note(conn, origin, seq, &table, &columns)?;
            }
            self.ops_done = ops_before;
            // What the change opened or closed is undone with it.
            merger.conflicts_written = opened_before;
            merger.closed_any = closed_before;
            quarantine(conn, id, verified.signed(), code, &detail)?;
            conn.execute(
                "UPDATE _tide_log SET applied=?3 WHERE origin=?1 AND seq=?2",
                params![origin, seq as i64, ChangeState::Quarantined],
            )?;
            report.quarantined.push((id, code));
            return Ok(false);
        }
        savepoint.release()?;
        conn.prepare_cached("UPDATE _tide_log SET applied=?3 WHERE origin=?1 AND seq=?2")?
            .execute(params![origin, seq as i64, ChangeState::Applied])?;
        self.applied.insert(origin, seq);
        self.max_hlc = self.max_hlc.max(head.hlc);
        report.applied += 1;
        report.ops_applied += self.ops_done - ops_before;
        Ok(true)
    }

    /// Settles held rows and foreign keys, records what is applied per origin and the
    /// clock, and counts the conflicts the apply opened.
    fn finish(mut self, tracked: &[TableInfo], report: &mut ImportReport) -> Result<()> {
        let conn = self.conn;
        self.merger.origins = std::rc::Rc::new(origins_map(conn)?);
        settle(&mut self.merger, tracked)?;
        for (idx, seq) in &self.applied {
            conn.prepare_cached("UPDATE _tide_origins SET applied=?2 WHERE idx=?1 AND applied<?2")?
                .execute(params![idx, *seq as i64])?;
        }
        crate::store::meta::set_u64(conn, "hlc", self.max_hlc)?;
        if conn.is_autocommit() {
            // Something ended our transaction behind our back; nothing after it is atomic.
            return Err(Error::Apply(crate::error::ApplyError::TransactionEnded));
        }
        // Counted as records are written and closed (`Merger::note_opened`, `note_closed`):
        // reading every conflict id before and after would cost memory and time in
        // proportion to all the conflicts the replica holds.
        report.conflicts_opened += self.merger.conflicts_written.max(0) as usize;
        Ok(())
    }
}

/// The changes waiting to apply, in (HLC, origin, seq) order, a page at a time: applying
/// or quarantining one between pages takes it out of later pages, never skips another.
#[derive(Default)]
pub(crate) struct PendingPages {
    pub(crate) page: std::collections::VecDeque<(i64, u64)>,
    pub(crate) after: Option<(i64, i64, i64)>,
    pub(crate) done: bool,
}

impl PendingPages {
    const PAGE: i64 = 256;

    pub(crate) fn next(&mut self, conn: &Connection) -> Result<Option<(i64, u64)>> {
        if self.page.is_empty() && !self.done {
            let (hlc, origin, seq) = self.after.unwrap_or((i64::MIN, i64::MIN, i64::MIN));
            let rows = conn
                .prepare_cached(
                    "SELECT hlc, origin, seq FROM _tide_log
                     WHERE applied=?5 AND (hlc, origin, seq) > (?1, ?2, ?3)
                     ORDER BY hlc, origin, seq LIMIT ?4",
                )?
                .query_map(
                    params![hlc, origin, seq, Self::PAGE, ChangeState::Waiting],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            self.done = (rows.len() as i64) < Self::PAGE;
            self.after = rows.last().copied().or(self.after);
            self.page
                .extend(rows.into_iter().map(|(_, o, s)| (o, s as u64)));
        }
        Ok(self.page.pop_front())
    }
}

/// Why a change cannot apply here: its table does not map onto this replica.
pub(crate) struct Refused {
    reason: QuarantineReason,
    detail: String,
    /// The table the change names and its columns there.
    named: Option<(String, Vec<String>)>,
}

/// Applies one stored change, op by op, straight from its chunks, one chunk in memory
/// at a time. `Ok(Err(..))` says a table of it does not map onto this replica (the
/// caller rolls back and quarantines).
pub(crate) fn apply_change(
    conn: &Connection,
    cache: &mut ChunkCache,
    merger: &mut Merger<'_>,
    tables: &HashMap<String, TableInfo>,
    (origin, seq, manifest): (i64, u64, &VerifiedHead),
    ops_done: &mut usize,
    (hooks, relay): (TestHooks, bool),
) -> Result<std::result::Result<(), Refused>> {
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
                    crate::store::peer_columns::note(conn, origin, seq, &ops.name, &ops.columns)?;
                    match map_table(tables, &ops) {
                        Ok(m) => map = Some(m),
                        // A relay holds the change for others; it has no rows of its own.
                        Err((QuarantineReason::UnknownTable, _)) if relay => map = None,
                        Err((reason, detail)) => {
                            return Ok(Err(Refused {
                                reason,
                                detail,
                                named: Some((ops.name, ops.columns)),
                            }));
                        }
                    }
                    continue;
                }
                Step::Row(op) => op,
            };
            // No map: a table this relay does not track.
            let Some(m) = map.as_ref() else {
                continue;
            };
            let mut op = op;
            m.strip(&mut op);
            hooks.before_op(*ops_done)?;
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
