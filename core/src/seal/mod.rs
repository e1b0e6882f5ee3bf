//! Sealing: pending captures become one signed change (DESIGN.md §2.4).
//!
//! The capture log says which rows changed and which columns; sealing reads the rows'
//! current values, names the heads each write overwrote, and records the change in the
//! log and in the row metadata, all in one transaction.

mod pending;
mod sealer;

use pending::*;
use sealer::*;

use crate::error::Result;
use crate::format::change::Encoder;
use crate::format::ids::ChangeId;
use crate::identity::SecretIdentity;
use crate::merge::{BATCH, Merger};
use crate::replica::Replica;
use crate::store::meta::origins_map;
use crate::store::rowmeta::Version;
use crate::store::tables::{self as tables};
use rusqlite::Connection;

/// Mask bit 62 stands for every column from 62 on.
pub(crate) const WIDE_BIT: u64 = 1 << 62;

impl Replica {
    /// Seals pending captured writes into one signed change. Returns its id, or `None`
    /// when nothing was pending. Refuses on a copied database (invariant 11).
    pub fn seal(&mut self) -> Result<Option<ChangeId>> {
        if !crate::capture::follow::moved(&self.conn)? && !has_pending(&self.conn)? {
            return Ok(None);
        }
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        // The application may have changed a table's schema: capture follows it first,
        // and the writes it finds are sealed with the rest.
        crate::capture::follow::follow(&tx)?;
        if !has_pending(&tx)? {
            tx.commit()?;
            return Ok(None);
        }
        let secret = self.secret_for_sealing()?;
        let id = seal_pending(&tx, &secret)?;
        tx.commit()?;
        if let Some(id) = id {
            self.record_sealed(id.seq)?;
        }
        Ok(id)
    }
}

/// True when any tracked table has captured writes waiting.
pub(crate) fn has_pending(conn: &Connection) -> Result<bool> {
    // Only the capture logs are read: no table's shape is needed to see that one holds rows.
    let tids: Vec<i64> = conn
        .prepare_cached("SELECT tid FROM _tide_tables WHERE tracked=1 AND stopped IS NULL")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for tid in tids {
        let any: bool = conn.query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM _tide_cap_{tid})"),
            [],
            |r| r.get(0),
        )?;
        if any {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Seals inside the caller's transaction. Returns the new change's id, if any.
///
/// One pass: the change's head (seq, HLC, deps) is fixed first, then captured rows are
/// decided against their metadata in batches, written into the change's chunks and into
/// their metadata, so no part of a large change is held twice.
pub(crate) fn seal_pending(conn: &Connection, secret: &SecretIdentity) -> Result<Option<ChangeId>> {
    crate::capture::follow::follow(conn)?;
    let tables = tables::tracked_tables(conn)?;
    if !has_pending(conn)? {
        return Ok(None);
    }
    let self_idx = crate::store::meta::self_idx(conn)?;
    let head = crate::store::append::next_head(conn, secret)?;
    // Chunks go to the log's chunk store as they fill, so a change of any size is
    // sealed in bounded memory.
    let sink = |hash: &[u8; 32], chunk: &[u8]| crate::store::chunks::store_chunk(conn, hash, chunk);
    let mut sealer = Sealer {
        conn,
        merger: Merger::new(conn, origins_map(conn)?),
        enc: Encoder::new(
            head.clone(),
            crate::store::append::chunk_target(conn)?,
            sink,
        ),
        v: Version {
            origin: self_idx,
            seq: head.seq,
            hlc: head.hlc,
            alive: true,
            created: false,
            lineage: None,
        },
        started: false,
        no_meta: false,
    };
    for t in &tables {
        sealer.started = false;
        // A table sealed for the first time (an initial load) has no metadata yet.
        sealer.no_meta = !conn
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM _tide_rows WHERE tid=?1)")?
            .query_row([t.tid], |r| r.get::<_, bool>(0))?;
        let mut chunk = Vec::with_capacity(BATCH);
        each_pending(conn, t, |p| {
            chunk.push(p);
            if chunk.len() == BATCH {
                sealer.rows(t, &mut chunk)?;
            }
            Ok(())
        })?;
        sealer.rows(t, &mut chunk)?;
        conn.execute_batch(&format!("DELETE FROM {}", t.cap_table()))?;
    }
    let Sealer {
        mut merger, enc, ..
    } = sealer;
    if enc.ops() == 0 {
        return Ok(None);
    }
    crate::store::append::store_own(conn, secret, &enc.finish()?, true)?;
    // A local delete may free a slot a held row waits for, or orphan a child: settle
    // here exactly as a replica applying this change will.
    let _off = tables::TriggersOff::new(conn)?;
    crate::apply::settle(&mut merger, &tables)?;
    Ok(Some(ChangeId {
        origin: head.origin,
        seq: head.seq,
    }))
}
