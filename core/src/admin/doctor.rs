//! The doctor: checks a replica's file, log and tables agree, and repairs what it can.

use super::*;
use crate::error::{Error, Result};
use crate::format::change::{ChunkDecoder, Manifest, Step};
use crate::format::ids::ReplicaId;
use crate::format::value::{Value, decode_key, encode_key};
use crate::identity::verify_signature;
use crate::replica::Replica;
use crate::store::chunks::Chunks;
use crate::store::chunks::LogChunks;
use crate::store::health::damage;
use crate::store::meta::origins_map;
use crate::store::rowmeta::RowMeta;
use crate::store::tables::{self as tables, TableInfo};

impl Replica {
    /// Checks what can be checked on a live file: SQLite's own integrity, every origin's
    /// hash chain and signatures, the row metadata against the tables, the capture
    /// triggers and the identity. With `repair`, re-creates missing capture triggers
    /// (the one repair that is always safe).
    pub fn doctor(&mut self, repair: bool) -> Result<Vec<Finding>> {
        let mut out = Vec::new();
        let mut add = |check: &'static str, problems: Vec<String>, repaired: bool, next| {
            out.push(Finding {
                check,
                ok: problems.is_empty() || repaired,
                detail: if problems.is_empty() {
                    "ok".into()
                } else {
                    problems.join("; ")
                },
                repaired,
                next,
            });
        };
        // A damaged file is one finding: every other check would read damaged pages and
        // fail on them, or worse, pass on what they misread.
        if let Some(damage) = damage(&self.conn)? {
            let damage = format!(
                "the file is damaged: {damage}; no other check ran, as they would read those pages"
            );
            add("sqlite integrity", vec![damage], false, DAMAGED_NEXT);
            return Ok(out);
        }
        add("sqlite integrity", vec![], false, DAMAGED_NEXT);

        // Hash chains and signatures (invariants 3 and 7).
        let mut chain = Vec::new();
        let mut sigs = Vec::new();
        {
            let mut stmt = self.conn.prepare(
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
                if blake3::hash(&body).as_bytes()[..] != hash[..] {
                    chain.push(format!("{name}: content hash differs"));
                }
                match Manifest::decode(&body) {
                    Ok(m) => {
                        if let Some((pid, pseq, phash)) = &prev
                            && *pid == id
                            && *pseq + 1 == seq
                            && m.head.prev[..] != phash[..]
                        {
                            chain.push(format!("{name}: previous-change hash does not match"));
                        }
                        // Every chunk the head names is in the log, whole.
                        let mut chunks = LogChunks { conn: &self.conn };
                        for (i, want) in m.chunks.iter().enumerate() {
                            let checked = chunks
                                .chunk(i, want)
                                .and_then(|c| m.check_chunk(i, &c).map_err(Error::from));
                            if let Err(e) = checked {
                                chain.push(format!("{name}: chunk {}: {e}", i + 1));
                            }
                        }
                    }
                    Err(e) => chain.push(format!("{name}: {e}")),
                }
                if let (Some(key), Ok(sig)) = (
                    key.and_then(|k| <[u8; 32]>::try_from(k).ok()),
                    <[u8; 64]>::try_from(sig),
                ) {
                    let msg =
                        crate::format::change::signing_message(blake3::hash(&body).as_bytes());
                    if !verify_signature(&key, &msg, &sig) {
                        sigs.push(format!("{name}: signature does not verify"));
                    }
                }
                prev = Some((id, seq, hash));
            }
        }
        add("hash chains", chain, false, ALTERED_NEXT);
        add("signatures", sigs, false, ALTERED_NEXT);

        // Row metadata against the tables (what the merge says is shown is shown).
        let origins = origins_map(&self.conn)?;
        let merger = crate::merge::Merger::new(&self.conn, origins);
        let mut rows_bad = Vec::new();
        let tables = tables::tracked_tables(&self.conn)?;
        for t in &tables {
            let mut stmt = self
                .conn
                .prepare("SELECT key, meta, vals FROM _tide_rows WHERE tid = ?1")?;
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
                    rows_bad.push(format!("{}: unreadable metadata", t.name));
                    continue;
                };
                if let Some(v) = vals
                    && crate::store::kept::read_kept(&self.conn, t.tid, &key_bytes, &v).is_err()
                {
                    rows_bad.push(format!("{}: unreadable kept values", t.name));
                }
                let key = crate::format::value::decode_key(&key_bytes)?;
                let present = merger.read_row(t, &key)?.is_some();
                let shown = m.materialized(&merger.origins);
                if present != shown && !crate::seal::has_pending(&self.conn)? {
                    rows_bad.push(format!(
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
        }
        // A value in `_tide_values` is one a row's `vals` marks as spilled there.
        let mut stmt = self.conn.prepare(
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
                rows_bad.push(format!("{name}: a kept value that no row names"));
            }
        }
        drop(spills);
        drop(stmt);
        add("rows match metadata", rows_bad, false, ALTERED_NEXT);
        let shown = shown_values_differ(&self.conn, &tables, &merger)?;
        add("shown values are the winners", shown, false, ALTERED_NEXT);
        drop(merger);

        // Capture triggers (invariant 9): the one safe repair.
        let mut missing = Vec::new();
        for t in &tables {
            for kind in ["ins", "upd", "rekey", "del"] {
                let name = format!("_tide_{kind}_{}", t.tid);
                let exists: bool = self.conn.query_row(
                    "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type='trigger' AND name=?1)",
                    [&name],
                    |r| r.get(0),
                )?;
                if !exists {
                    missing.push(format!("{}: trigger {name} missing", t.name));
                }
            }
        }
        let repaired = if !missing.is_empty() && repair {
            let tx = self.conn.transaction()?;
            for t in &tables {
                crate::capture::triggers::drop_triggers(&tx, t.tid)?;
                crate::capture::triggers::create_triggers(&tx, t)?;
            }
            tx.commit()?;
            true
        } else {
            false
        };
        add(
            "capture triggers",
            missing,
            repaired,
            "tide --db FILE doctor --repair  # re-creates them",
        );

        // Identity (invariant 11).
        let identity = match self.secret_for_sealing() {
            Ok(_) => vec![],
            Err(Error::Open(crate::error::OpenError::NotInitialized)) => {
                vec!["no identity yet (run init)".into()]
            }
            Err(e) => vec![e.to_string()],
        };
        add(
            "identity",
            identity,
            false,
            "if this file is a copy or a restored backup, give it its own identity: tide --db FILE init --new-identity",
        );
        Ok(out)
    }
}

/// Every value a live row shows against the value its winning head wrote, read from that
/// head's change in the log: the merge decides which head wins each cell, and the table
/// must show exactly that value (invariant 1). Rows with unsealed writes are left out:
/// there the table is ahead of the log until the next seal.
///
/// One pass over the applied log, one metadata lookup per op and one row read per row a
/// change still wins; memory stays within one change's cells that are still winners.
pub(crate) fn shown_values_differ(
    conn: &rusqlite::Connection,
    tables: &[TableInfo],
    merger: &crate::merge::Merger<'_>,
) -> Result<Vec<String>> {
    use std::collections::{HashMap, HashSet};
    let by_name: HashMap<&str, &TableInfo> = tables.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut pending: HashSet<(i64, Vec<u8>)> = HashSet::new();
    for t in tables {
        let keys = (0..t.key_columns.len())
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn.prepare(&format!("SELECT {keys} FROM {}", t.cap_table()))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = (0..t.key_columns.len())
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            pending.insert((t.tid, encode_key(&key)));
        }
    }
    let skip = |t: &TableInfo, key_bytes: &[u8]| pending.contains(&(t.tid, key_bytes.to_vec()));

    // How many shown cells each table has: every one must be found in the log.
    let mut expected: HashMap<i64, u64> = HashMap::new();
    for t in tables {
        let mut stmt = conn.prepare_cached("SELECT key, meta FROM _tide_rows WHERE tid = ?1")?;
        let mut rows = stmt.query([t.tid])?;
        while let Some(r) = rows.next()? {
            let key_bytes: Vec<u8> = r.get(0)?;
            let Ok(m) = RowMeta::decode(&r.get::<_, Vec<u8>>(1)?) else {
                continue; // reported by the metadata check
            };
            if m.materialized(&merger.origins) && !skip(t, &key_bytes) {
                *expected.entry(t.tid).or_default() += (1..=t.columns.len())
                    .filter(|&c| m.winner(c, &merger.origins).is_some())
                    .count() as u64;
            }
        }
    }

    let mut problems = Vec::new();
    let mut found: HashMap<i64, u64> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT origin, seq, body, packing FROM _tide_log WHERE applied = 1 ORDER BY origin, seq",
    )?;
    let mut log = stmt.query([])?;
    while let Some(r) = log.next()? {
        let (origin, seq): (i64, i64) = (r.get(0)?, r.get(1)?);
        let Ok(manifest) = crate::store::chunks::unpack(r.get(2)?, r.get(3)?)
            .and_then(|body| Manifest::decode(&body).map_err(Error::from))
        else {
            continue; // reported by the hash-chain check
        };
        // The cells this change wrote that still win, with the value written last (a key
        // may come back within one change).
        let mut wins: HashMap<(i64, Vec<u8>), HashMap<usize, Value>> = HashMap::new();
        let mut chunks = LogChunks { conn };
        'chunks: for (i, want) in manifest.chunks.iter().enumerate() {
            let Ok(chunk) = chunks.chunk(i, want) else {
                break; // reported by the hash-chain check
            };
            let Ok(mut dec) = ChunkDecoder::new(&manifest.head.deps, &chunk) else {
                break;
            };
            let mut table: Option<(&TableInfo, Vec<Option<usize>>)> = None;
            loop {
                let op = match dec.next() {
                    Ok(Step::End) | Err(_) => continue 'chunks,
                    Ok(Step::Table(ops)) => {
                        table = by_name.get(ops.name.as_str()).map(|t| {
                            let cols = ops
                                .columns
                                .iter()
                                .map(|c| t.columns.iter().position(|x| x == c))
                                .collect();
                            (*t, cols)
                        });
                        continue;
                    }
                    Ok(Step::Row(op)) => op,
                };
                let Some((t, cols)) = &table else { continue };
                let key_bytes = encode_key(&op.key);
                if skip(t, &key_bytes) {
                    continue;
                }
                let Some(m) = merger.load_meta(t, &key_bytes)? else {
                    continue;
                };
                if !m.materialized(&merger.origins) {
                    continue;
                }
                for cell in op.cells {
                    let Some(Some(c)) = cols.get(cell.column) else {
                        continue;
                    };
                    let wins_here = m
                        .winner(c + 1, &merger.origins)
                        .is_some_and(|w| w.origin == origin && w.seq == seq as u64);
                    if wins_here {
                        wins.entry((t.tid, key_bytes.clone()))
                            .or_default()
                            .insert(*c, cell.value);
                    }
                }
            }
        }
        for ((tid, key_bytes), cells) in wins {
            *found.entry(tid).or_default() += cells.len() as u64;
            let t = tables.iter().find(|t| t.tid == tid).expect("tables by tid");
            let key = decode_key(&key_bytes)?;
            let row = merger.read_row(t, &key)?;
            for (c, want) in cells {
                let shown = row.as_ref().map(|row| &row[c]);
                if shown != Some(&want) && problems.len() < 20 {
                    problems.push(format!(
                        "{} [{}].{}: shows {}, its winning value is {}",
                        t.name,
                        key.iter()
                            .map(Value::display)
                            .collect::<Vec<_>>()
                            .join(", "),
                        t.columns[c],
                        shown.map_or("no row".into(), Value::display),
                        want.display()
                    ));
                }
            }
        }
    }
    for t in tables {
        let (want, got) = (
            expected.get(&t.tid).copied().unwrap_or(0),
            found.get(&t.tid).copied().unwrap_or(0),
        );
        if got < want {
            problems.push(format!(
                "{}: {} shown value(s) whose winning change is not in the log",
                t.name,
                want - got
            ));
        }
    }
    Ok(problems)
}
