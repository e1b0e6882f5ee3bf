//! The doctor: checks a replica's file, log and tables agree, and repairs what it can.
//! Each check is a function returning its problems (empty when it holds).

use super::*;
use crate::error::{Error, Result};
use crate::format::change::Manifest;
use crate::format::ids::ReplicaId;
use crate::identity::verify_signature;
use crate::merge::Merger;
use crate::merge::winners::shown_values_differ;
use crate::replica::Replica;
use crate::store::chunks::Chunks;
use crate::store::chunks::LogChunks;
use crate::store::health::damage;
use crate::store::meta::origins_map;
use crate::store::rowmeta::RowMeta;
use crate::store::tables::{self as tables, TableInfo};
use rusqlite::Connection;

impl Finding {
    /// The finding of a check that found `problems`.
    fn of(check: Check, problems: Vec<String>, repaired: bool, remedy: Remedy) -> Finding {
        Finding {
            check,
            ok: problems.is_empty() || repaired,
            detail: if problems.is_empty() {
                "ok".into()
            } else {
                problems.join("; ")
            },
            repaired,
            remedy,
        }
    }
}

impl Replica {
    /// Checks what can be checked on a live file: SQLite's own integrity, every origin's
    /// hash chain and signatures, the row metadata against the tables, the capture
    /// triggers and the identity. With `repair`, re-creates missing capture triggers
    /// (the one repair that is always safe).
    pub fn doctor(&mut self, repair: bool) -> Result<Vec<Finding>> {
        // A damaged file is one finding: every other check would read damaged pages and
        // fail on them, or worse, pass on what they misread.
        if let Some(damage) = damage(&self.conn)? {
            let damage = format!(
                "the file is damaged: {damage}; no other check ran, as they would read those pages"
            );
            let finding = Finding::of(
                Check::FileIntact,
                vec![damage],
                false,
                Remedy::RestoreOrRebuild,
            );
            return Ok(vec![finding]);
        }
        if repair {
            // A repair makes triggers anew: the writes made while they were gone are
            // recovered first, as following a schema change does (DESIGN.md §2.12).
            self.follow_schema()?;
        }
        let mut out = vec![Finding::of(
            Check::FileIntact,
            vec![],
            false,
            Remedy::RestoreOrRebuild,
        )];
        let (chain, sigs) = log_problems(&self.conn)?;
        out.push(Finding::of(Check::LogChain, chain, false, Remedy::Report));
        out.push(Finding::of(Check::Signatures, sigs, false, Remedy::Report));

        // Row metadata against the tables (what the merge says is shown is shown).
        let tables = tables::tracked_tables(&self.conn)?;
        {
            let merger = Merger::new(&self.conn, origins_map(&self.conn)?);
            let rows = row_problems(&self.conn, &tables, &merger)?;
            out.push(Finding::of(
                Check::RowsMatchMetadata,
                rows,
                false,
                Remedy::Report,
            ));
            let shown = shown_values_differ(&self.conn, &tables, &merger)?;
            out.push(Finding::of(
                Check::ShownValuesWin,
                shown,
                false,
                Remedy::Report,
            ));
        }
        out.push(self.check_triggers(&tables, repair)?);
        out.push(self.check_identity());
        out.push(self.check_schemas()?);
        Ok(out)
    }

    /// Schemas followed (invariant 13): no tracked table's capture stopped. When none
    /// did, the detail gives each table's schema epoch and where a peer's last change
    /// shows another schema.
    fn check_schemas(&self) -> Result<Finding> {
        let stopped: Vec<String> = self
            .stopped_tables()?
            .into_iter()
            .map(|(t, why)| format!("capture of {t} stopped: {why}"))
            .collect();
        if !stopped.is_empty() {
            return Ok(Finding::of(Check::Schemas, stopped, false, Remedy::Retrack));
        }
        let mut said: Vec<String> = self
            .table_epochs()?
            .into_iter()
            .map(|(t, e)| format!("{t} epoch {e}"))
            .collect();
        if said.is_empty() {
            said.push("ok".into());
        }
        let mut detail = said.join(", ");
        for d in self.schema_differences()? {
            detail.push_str(&format!("; {d}"));
        }
        Ok(Finding {
            check: Check::Schemas,
            ok: true,
            detail,
            repaired: false,
            remedy: Remedy::Retrack,
        })
    }

    /// Capture triggers (invariant 9), re-created with `repair`: the one safe repair.
    fn check_triggers(&mut self, tables: &[TableInfo], repair: bool) -> Result<Finding> {
        let missing = missing_triggers(&self.conn, tables)?;
        let repaired = !missing.is_empty() && repair;
        if repaired {
            let tx = self.conn.transaction()?;
            for t in tables {
                crate::capture::triggers::drop_triggers(&tx, t.tid)?;
                crate::capture::triggers::create_triggers(&tx, t)?;
            }
            tx.commit()?;
        }
        Ok(Finding::of(
            Check::Triggers,
            missing,
            repaired,
            Remedy::Repair,
        ))
    }

    /// Identity (invariant 11): this file may seal under its identity. A file with none
    /// yet is to be initialized; one whose identity is missing here or bound to another
    /// file (a copy, a restored backup) needs an identity of its own.
    fn check_identity(&self) -> Finding {
        let (identity, remedy) = match self.secret_for_sealing() {
            Ok(_) => (vec![], Remedy::NewIdentity),
            Err(Error::Open(crate::error::OpenError::NotInitialized)) => {
                (vec!["no identity yet".into()], Remedy::Init)
            }
            Err(e) => (vec![e.to_string()], Remedy::NewIdentity),
        };
        Finding::of(Check::Identity, identity, false, remedy)
    }
}

/// Hash chains and signatures of the log (invariants 3 and 7): (chain problems,
/// signature problems).
fn log_problems(conn: &Connection) -> Result<(Vec<String>, Vec<String>)> {
    let mut chain = Vec::new();
    let mut sigs = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT o.id, o.sign_key, l.seq, l.hash, l.body, l.sig, l.packing FROM _tide_log l JOIN _tide_origins o ON o.idx = l.origin ORDER BY l.origin, l.seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev: Option<(Vec<u8>, u64, Vec<u8>)> = None;
    while let Some(r) = rows.next()? {
        let (id, key, seq, hash, sig): LogRow =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(5)?);
        let seq = seq as u64;
        let name = format!(
            "{}:{seq}",
            ReplicaId(id.clone().try_into().unwrap_or([0; 16])).short()
        );
        let body = match crate::store::chunks::unpack(r.get(4)?, r.get(6)?) {
            Ok(body) => body,
            Err(e) => {
                chain.push(format!("{name}: {e}"));
                continue;
            }
        };
        // The hash the change must name as its previous one, when it follows it.
        let follows = prev
            .as_ref()
            .filter(|(pid, pseq, _)| *pid == id && *pseq + 1 == seq)
            .map(|(_, _, phash)| &phash[..]);
        chain.extend(chain_problems(conn, &name, &body, &hash, follows));
        sigs.extend(signature_problem(&name, &body, key, sig));
        prev = Some((id, seq, hash));
    }
    Ok((chain, sigs))
}

/// What is wrong with one stored change's place in its chain: its content hash, its
/// previous-change hash (`prev`: the hash of the change before it, when stored) and its
/// chunks, each of which must be in the log, whole.
fn chain_problems(
    conn: &Connection,
    name: &str,
    body: &[u8],
    hash: &[u8],
    prev: Option<&[u8]>,
) -> Vec<String> {
    let mut out = Vec::new();
    if blake3::hash(body).as_bytes()[..] != hash[..] {
        out.push(format!("{name}: content hash differs"));
    }
    let m = match Manifest::decode(body) {
        Ok(m) => m,
        Err(e) => {
            out.push(format!("{name}: {e}"));
            return out;
        }
    };
    if prev.is_some_and(|phash| m.head.prev[..] != phash[..]) {
        out.push(format!("{name}: previous-change hash does not match"));
    }
    let mut chunks = LogChunks { conn };
    for (i, want) in m.chunks.iter().enumerate() {
        let checked = chunks
            .chunk(i, want)
            .and_then(|c| m.check_chunk(i, &c).map_err(Error::from));
        if let Err(e) = checked {
            out.push(format!("{name}: chunk {}: {e}", i + 1));
        }
    }
    out
}

/// A stored change whose origin's key is known and whose signature does not verify.
fn signature_problem(
    name: &str,
    body: &[u8],
    key: Option<Vec<u8>>,
    sig: Vec<u8>,
) -> Option<String> {
    let key = key.and_then(|k| <[u8; 32]>::try_from(k).ok())?;
    let sig = <[u8; 64]>::try_from(sig).ok()?;
    let msg = crate::format::change::signing_message(blake3::hash(body).as_bytes());
    (!verify_signature(&key, &msg, &sig)).then(|| format!("{name}: signature does not verify"))
}

/// Row metadata against the tables: every row's metadata and kept values read, a row
/// tide holds live is in its table and no other is (unless writes are pending), and every
/// value in `_tide_values` is one a row names.
fn row_problems(
    conn: &Connection,
    tables: &[TableInfo],
    merger: &Merger<'_>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in tables {
        table_row_problems(conn, t, merger, &mut out)?;
    }
    stray_spills(conn, tables, &mut out)?;
    Ok(out)
}

/// [`row_problems`] of the rows of one table.
fn table_row_problems(
    conn: &Connection,
    t: &TableInfo,
    merger: &Merger<'_>,
    out: &mut Vec<String>,
) -> Result<()> {
    let mut stmt = conn.prepare("SELECT key, meta, vals FROM _tide_rows WHERE tid = ?1")?;
    let metas = stmt
        .query_map([t.tid], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (key_bytes, meta, vals) in metas {
        let Ok(m) = RowMeta::decode(&meta) else {
            out.push(format!("{}: unreadable metadata", t.name));
            continue;
        };
        if let Some(v) = vals
            && crate::store::kept::read_kept(conn, t.tid, &key_bytes, &v).is_err()
        {
            out.push(format!("{}: unreadable kept values", t.name));
        }
        let key = crate::format::value::decode_key(&key_bytes)?;
        let present = merger.read_row(t, &key)?.is_some();
        let shown = m.materialized(&merger.origins);
        if present != shown && !crate::seal::has_pending(conn)? {
            out.push(format!(
                "{} {:?}: {} in the table but {} by tide",
                t.name,
                key.iter()
                    .map(crate::format::value::Value::display)
                    .collect::<Vec<_>>(),
                if present { "present" } else { "absent" },
                if shown { "live" } else { "not live" }
            ));
        }
    }
    Ok(())
}

/// A value in `_tide_values` is one a row's `vals` marks as spilled there.
fn stray_spills(conn: &Connection, tables: &[TableInfo], out: &mut Vec<String>) -> Result<()> {
    let mut stmt = conn.prepare(
        "SELECT v.tid, v.col, v.origin, v.seq, r.vals FROM _tide_values v
         LEFT JOIN _tide_rows r ON r.tid = v.tid AND r.key = v.key",
    )?;
    let mut spills = stmt.query([])?;
    while let Some(r) = spills.next()? {
        let at = (
            r.get::<_, i64>(1)? as usize,
            r.get(2)?,
            r.get::<_, i64>(3)? as u64,
        );
        let vals: Option<Vec<u8>> = r.get(4)?;
        let named = vals
            .and_then(|b| crate::store::rowmeta::decode_kept(&b).ok())
            .is_some_and(|kept| kept.iter().any(|(k, v)| *k == at && v.is_none()));
        if !named {
            let tid: i64 = r.get(0)?;
            let name = tables
                .iter()
                .find(|t| t.tid == tid)
                .map_or("?", |t| &t.name);
            out.push(format!("{name}: a kept value that no row names"));
        }
    }
    Ok(())
}

/// The capture triggers of tracked tables that are not there.
fn missing_triggers(conn: &Connection, tables: &[TableInfo]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for t in tables {
        for kind in ["ins", "upd", "rekey", "del"] {
            let name = format!("_tide_{kind}_{}", t.tid);
            let exists: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type='trigger' AND name=?1)",
                [&name],
                |r| r.get(0),
            )?;
            if !exists {
                missing.push(format!("{}: trigger {name} missing", t.name));
            }
        }
    }
    Ok(missing)
}
