//! Appending to the log: this replica's own changes (the next head, the hash chain, the
//! clock) and others' verified heads; reading a stored head back.

use crate::error::Result;
use crate::format::change::{Change, ChangeHead, Manifest, PACKING_RAW, SignedHead, VerifiedHead};
use crate::format::ids::ReplicaId;
use crate::identity::SecretIdentity;
use crate::store::chunks::{store_chunk, unpack};
use crate::store::states::ChangeState;
use crate::store::vectors::{VectorOf, vector};
use rusqlite::{Connection, params};

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

pub(crate) fn load_head(conn: &Connection, origin: i64, seq: u64) -> Result<SignedHead> {
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
    let self_idx = crate::store::meta::self_idx(conn)?;
    let (seq, prev): (u64, Option<Vec<u8>>) = conn.query_row(
        "SELECT coalesce(max(seq), 0), (SELECT hash FROM _tide_log WHERE origin=?1 ORDER BY seq DESC LIMIT 1) FROM _tide_log WHERE origin=?1",
        [self_idx],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )?;
    let mut deps: Vec<(ReplicaId, u64)> = vector(conn, VectorOf::Applied)?.into_iter().collect();
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
        schema: crate::store::meta::get_u64(conn, "schema_epoch")?,
        prev: prev
            .map(|p| p.try_into().expect("hashes are stored as 32 bytes"))
            .unwrap_or([0; 32]),
        deps,
    })
}

/// The size past which this replica's writers close a chunk: [`CHUNK_TARGET`], or in a
/// build with the `testing` feature, the size a test set (`Replica::set_chunk_target`).
///
/// [`CHUNK_TARGET`]: crate::format::change::CHUNK_TARGET
pub(crate) fn chunk_target(conn: &Connection) -> Result<usize> {
    #[cfg(feature = "testing")]
    if let n @ 1.. = crate::store::meta::get_u64(conn, "chunk_target")? {
        return Ok(n as usize);
    }
    let _ = conn;
    Ok(crate::format::change::CHUNK_TARGET)
}

/// Signs the head of this replica's change (its chunks already stored) and appends it to
/// the log.
pub(crate) fn store_own(
    conn: &Connection,
    secret: &SecretIdentity,
    manifest: &Manifest,
    applied: bool,
) -> Result<()> {
    let self_idx = crate::store::meta::self_idx(conn)?;
    let head = &manifest.head;
    let signed = SignedHead::sign(manifest.encode(), secret);
    let state = if applied {
        ChangeState::Applied
    } else {
        ChangeState::Waiting
    };
    conn.execute(
        "INSERT INTO _tide_log(origin, seq, hash, hlc, body, sig, applied, packing) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![self_idx, head.seq as i64, &signed.hash()[..], head.hlc as i64, signed.bytes(), &signed.signature()[..], state, PACKING_RAW],
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
    let last = crate::store::meta::get_u64(conn, "hlc")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let hlc = (now_ms << 16).max(last + 1);
    crate::store::meta::set_u64(conn, "hlc", hlc)?;
    Ok(hlc)
}

/// Appends a change received from another replica to the log, waiting to be applied.
/// Only a verified head is stored: the log holds nothing that did not verify.
pub(crate) fn store_received(conn: &Connection, idx: i64, head: &VerifiedHead) -> Result<()> {
    let signed = head.signed();
    conn.prepare_cached(
        "INSERT INTO _tide_log(origin, seq, hash, hlc, body, sig, applied, packing) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        idx,
        head.head.seq as i64,
        &signed.hash()[..],
        head.head.hlc as i64,
        signed.bytes(),
        &signed.signature()[..],
        ChangeState::Waiting,
        PACKING_RAW
    ])?;
    // A change sealed here from now on depends on this one (it is in the version
    // vector) and so gets a later clock, even before this one applies: clock order
    // stays causal order (pages rely on it, `Replica::each_change_page`).
    if head.head.hlc > crate::store::meta::get_u64(conn, "hlc")? {
        crate::store::meta::set_u64(conn, "hlc", head.head.hlc)?;
    }
    Ok(())
}
