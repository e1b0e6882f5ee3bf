//! The replica: one SQLite file, tide's metadata in it, and an identity in a key store.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::format::ids::ReplicaId;
use crate::identity::{Binding, Card, KeyStore, SecretIdentity};
use crate::store::states::OriginKind;

/// A tide replica over one SQLite database file.
///
/// The application keeps its own connections and writes plain SQL; this handle is how
/// tide seals, exchanges and merges. It is not `Sync`: open one per thread.
pub struct Replica {
    pub(crate) conn: Connection,
    pub(crate) keys: KeyStore,
    pub(crate) path: PathBuf,
    /// The metadata layouts (from, to) opening upgraded between, if it did.
    upgraded: Option<(u64, u64)>,
    /// Test hook: make the apply fail after this many row ops (atomicity tests).
    pub(crate) hooks: TestHooks,
    /// Told how long exports and imports are getting on (see [`Replica::set_progress`]).
    pub(crate) progress: Option<Box<dyn FnMut(crate::replica::Progress)>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("path", &self.path).finish()
    }
}

impl Replica {
    /// Opens (creating if absent) the database at `path` and makes sure tide's metadata
    /// tables exist. Secret keys are looked up in `keys`. This is how a database becomes
    /// a replica (with [`Replica::init`]); to work on one that already is, use
    /// [`Replica::open_existing`] or [`Replica::open_read_only`], which never create.
    pub fn open(path: impl AsRef<Path>, keys: KeyStore) -> Result<Replica> {
        let path = path.as_ref().to_path_buf();
        refuse_folder(&path)?;
        let conn = Connection::open(&path)?;
        probe(&conn, &path)?;
        configure(&conn)?;
        let tx = conn.unchecked_transaction()?;
        crate::store::migrations::migrate(&tx)?;
        tx.commit()?;
        Ok(Replica::new(conn, keys, path, None))
    }

    /// Opens an existing replica for reading and writing. Nothing is created: a path with
    /// no file is [`crate::OpenError::NoDatabase`], a folder or a file SQLite cannot read
    /// is [`crate::OpenError::NotADatabase`], and a database with no tide identity (a
    /// plain SQLite file, never initialised) is [`crate::OpenError::NotInitialized`];
    /// each leaves the file as it was. Metadata of an earlier layout is upgraded in
    /// place, and [`Replica::upgraded`] says so.
    pub fn open_existing(path: impl AsRef<Path>, keys: KeyStore) -> Result<Replica> {
        let path = path.as_ref().to_path_buf();
        let conn = connect_existing(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let found = layout(&conn)?;
        let tx = conn.unchecked_transaction()?;
        crate::store::migrations::migrate(&tx)?;
        tx.commit()?;
        let upgraded = (found < crate::store::migrations::LAYOUT)
            .then_some((found, crate::store::migrations::LAYOUT));
        Ok(Replica::new(conn, keys, path, upgraded))
    }

    /// Opens an existing replica read-only (SQLite refuses every write through it): for
    /// commands that only look. Refuses what [`Replica::open_existing`] refuses, and
    /// metadata of an earlier layout too ([`crate::OpenError::OlderLayout`]): upgrading is
    /// a write, so it is left to a command that writes.
    pub fn open_read_only(path: impl AsRef<Path>, keys: KeyStore) -> Result<Replica> {
        let path = path.as_ref().to_path_buf();
        let conn = connect_existing(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let found = layout(&conn)?;
        let current = crate::store::migrations::LAYOUT;
        if found < current {
            return Err(Error::Open(crate::error::OpenError::OlderLayout {
                found,
                current,
            }));
        }
        if found > current {
            return Err(Error::Open(crate::error::OpenError::NewerLayout {
                found,
                current,
            }));
        }
        Ok(Replica::new(conn, keys, path, None))
    }

    fn new(
        conn: Connection,
        keys: KeyStore,
        path: PathBuf,
        upgraded: Option<(u64, u64)>,
    ) -> Replica {
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        Replica {
            conn,
            keys,
            path,
            upgraded,
            hooks: TestHooks::default(),
            progress: None,
        }
    }

    /// When opening upgraded tide's metadata to this build's layout: (from, to).
    pub fn upgraded(&self) -> Option<(u64, u64)> {
        self.upgraded
    }

    /// The underlying connection, for reading tide's view or writing like an app would.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the database an identity if it has none; returns the replica id.
    pub fn init(&mut self, name: &str) -> Result<ReplicaId> {
        if let Some(id) = self.id_opt()? {
            return Ok(id);
        }
        self.new_identity(name)
    }

    /// Creates a fresh identity for this database, keeping the old one (if any) as an
    /// ordinary known origin. This is how a copied or restored database becomes a
    /// replica of its own.
    pub fn new_identity(&mut self, name: &str) -> Result<ReplicaId> {
        let secret = SecretIdentity::generate();
        let card = secret.card(name);
        self.keys.store(&secret)?;
        let tx = self.conn.transaction()?;
        let idx = upsert_origin(&tx, &card)?;
        tx.execute(
            "UPDATE _tide_origins SET peer=?1 WHERE peer=?2",
            [OriginKind::Peer, OriginKind::Own],
        )?;
        tx.execute(
            "UPDATE _tide_origins SET peer=?2 WHERE idx=?1",
            params![idx, OriginKind::Own],
        )?;
        tx.execute("INSERT INTO _tide_meta(k, v) VALUES('self', ?1) ON CONFLICT(k) DO UPDATE SET v=excluded.v", [idx])?;
        tx.commit()?;
        let sealed = self.own_seq()?;
        self.keys.store_binding(
            card.id,
            &Binding {
                db_path: self.path.clone(),
                sealed_seq: sealed,
            },
        )?;
        Ok(card.id)
    }

    pub(crate) fn self_idx(&self) -> Result<i64> {
        crate::store::meta::self_idx(&self.conn)
    }

    fn id_opt(&self) -> Result<Option<ReplicaId>> {
        let id: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT o.id FROM _tide_meta m JOIN _tide_origins o ON o.idx = m.v WHERE m.k='self'", [], |r| r.get(0))
            .optional()?;
        Ok(id.map(|b| ReplicaId(b.try_into().expect("ids are stored as 16 bytes"))))
    }

    /// This replica's id.
    pub fn id(&self) -> Result<ReplicaId> {
        self.id_opt()?
            .ok_or(Error::Open(crate::error::OpenError::NotInitialized))
    }

    /// This replica's public card.
    pub fn card(&self) -> Result<Card> {
        let idx = self.self_idx()?;
        self.origin_card(idx)?
            .ok_or(Error::Open(crate::error::OpenError::NotInitialized))
    }

    fn origin_card(&self, idx: i64) -> Result<Option<Card>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, sign_key, box_key, name FROM _tide_origins WHERE idx=?1",
                [idx],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.and_then(|(id, sk, bk, name)| {
            Some(Card {
                id: ReplicaId(id.try_into().ok()?),
                sign_key: sk?.try_into().ok()?,
                box_key: bk?.try_into().ok()?,
                name,
            })
        }))
    }

    /// Adds (or renames) a peer from its card. Changes signed by it are accepted from
    /// then on, whoever relays them.
    pub fn add_peer(&mut self, card: &Card) -> Result<()> {
        let tx = self.conn.transaction()?;
        let idx = upsert_origin(&tx, card)?;
        tx.execute(
            "UPDATE _tide_origins SET peer=?2 WHERE idx=?1 AND peer=?3",
            params![idx, OriginKind::Peer, OriginKind::Known],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every known replica with a key: peers and this replica.
    pub fn known_cards(&self) -> Result<Vec<Card>> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx FROM _tide_origins WHERE sign_key IS NOT NULL ORDER BY idx")?;
        let idxs = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for idx in idxs {
            out.extend(self.origin_card(idx)?);
        }
        Ok(out)
    }

    /// The secret identity, after checking that this file may write under it (invariant
    /// 11): what signs changes and bundles.
    pub fn signing_identity(&self) -> Result<SecretIdentity> {
        self.secret_for_sealing()
    }

    /// The secret identity for reading what was encrypted to this replica. A copied
    /// database may read (its key store permitting) even though it may not write.
    pub fn reading_identity(&self) -> Result<SecretIdentity> {
        let id = self.id()?;
        self.keys.load(id)?.ok_or_else(|| {
            Error::Open(crate::error::OpenError::IdentityMissing {
                replica: id,
                keystore: self.keys.dir().to_path_buf(),
            })
        })
    }

    /// The schema epoch of the tracked tables.
    pub fn schema_epoch(&self) -> Result<u64> {
        crate::store::meta::get_u64(&self.conn, "schema_epoch")
    }

    /// The secret identity, after checking that this file may write under it (invariant 11).
    pub(crate) fn secret_for_sealing(&self) -> Result<SecretIdentity> {
        let id = self.id()?;
        let Some(secret) = self.keys.load(id)? else {
            return Err(Error::Open(crate::error::OpenError::IdentityMissing {
                replica: id,
                keystore: self.keys.dir().to_path_buf(),
            }));
        };
        let own = self.own_seq()?;
        if let Some(b) = self.keys.load_binding(id)? {
            if b.db_path != self.path {
                return Err(Error::Open(crate::error::OpenError::IdentityConflict {
                    replica: id,
                    reason: crate::error::IdentityConflictReason::BoundElsewhere {
                        bound: b.db_path,
                        this: self.path.clone(),
                    },
                }));
            }
            if b.sealed_seq > own {
                return Err(Error::Open(crate::error::OpenError::IdentityConflict {
                    replica: id,
                    reason: crate::error::IdentityConflictReason::Behind {
                        sealed: b.sealed_seq,
                        held: own,
                    },
                }));
            }
        }
        Ok(secret)
    }

    /// The highest seq of this replica's own log.
    pub(crate) fn own_seq(&self) -> Result<u64> {
        let idx = self.self_idx()?;
        Ok(self.conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM _tide_log WHERE origin=?1",
            [idx],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub(crate) fn record_sealed(&self, seq: u64) -> Result<()> {
        let id = self.id()?;
        self.keys.store_binding(
            id,
            &Binding {
                db_path: self.path.clone(),
                sealed_seq: seq,
            },
        )
    }

    /// Calls `report` as long operations progress (listing changes for an export,
    /// applying an import), for progress bars.
    pub fn set_progress(&mut self, report: Option<Box<dyn FnMut(crate::replica::Progress)>>) {
        self.progress = report;
    }

    /// Test hook (feature `testing`): the next apply fails after `ops` row ops, then
    /// the hook clears.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn inject_apply_failure(&mut self, ops: Option<usize>) {
        self.hooks.fail_after_ops = ops;
    }

    /// Test hook: this replica's changes close a chunk past `bytes` bytes instead of
    /// [`crate::format::change::CHUNK_TARGET`], so small tests make changes of many chunks.
    /// Kept in the database, for every connection of a build with the feature.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn set_chunk_target(&mut self, bytes: usize) -> Result<()> {
        crate::store::meta::set_u64(&self.conn, "chunk_target", bytes as u64)
    }
}

/// Connection settings every replica handle uses.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Sealing and applying cycle through a few dozen statements per table; the
    // default cache of 16 would re-prepare them over and over.
    conn.set_prepared_statement_cache_capacity(64);
    // tide's connection leaves foreign keys off (SQLite's default): an apply must not
    // cascade deletes or set NULLs the origin did not capture. Foreign keys are
    // settled explicitly after every apply and seal (`apply::settle`). Said explicitly:
    // rusqlite's bundled SQLite turns them on by default.
    conn.execute_batch("PRAGMA foreign_keys = OFF;")?;
    Ok(())
}

fn refuse_folder(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Open(crate::error::OpenError::NotADatabase {
            path: path.to_path_buf(),
            reason: crate::error::NotADatabaseReason::Folder,
        }));
    }
    Ok(())
}

/// Reads the schema, so that a file SQLite cannot read fails here, as itself.
fn probe(conn: &Connection, path: &Path) -> Result<()> {
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::NotADatabase => {
            Err(Error::Open(crate::error::OpenError::NotADatabase {
                path: path.to_path_buf(),
                reason: crate::error::NotADatabaseReason::Unreadable,
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens a file that must already be a tide replica, without creating or writing
/// anything: refused when absent, not a database, or without a tide identity.
fn connect_existing(path: &Path, flags: OpenFlags) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::Open(crate::error::OpenError::NoDatabase(
            path.to_path_buf(),
        )));
    }
    refuse_folder(path)?;
    let conn = Connection::open_with_flags(path, flags)?;
    probe(&conn, path)?;
    configure(&conn)?;
    let has_metadata = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ('_tide_meta', '_tide_origins')",
        [],
        |r| r.get::<_, i64>(0),
    )? == 2;
    if !has_metadata {
        return Err(Error::Open(crate::error::OpenError::NotInitialized));
    }
    let identity: Option<Vec<u8>> = conn
        .query_row(
            "SELECT o.id FROM _tide_meta m JOIN _tide_origins o ON o.idx = m.v WHERE m.k='self'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if identity.is_none() {
        // Metadata with no identity in it: never initialised, or a damaged page.
        if let Some(damage) = crate::store::health::damage(&conn)? {
            return Err(Error::Open(crate::error::OpenError::Damaged {
                report: damage,
            }));
        }
        return Err(Error::Open(crate::error::OpenError::NotInitialized));
    }
    Ok(conn)
}

/// How many metadata migrations the database has had.
fn layout(conn: &Connection) -> Result<u64> {
    Ok(conn
        .query_row("SELECT v FROM _tide_meta WHERE k='migration'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0) as u64)
}

pub(crate) fn bump_epoch(conn: &Connection) -> Result<()> {
    let e = crate::store::meta::get_u64(conn, "schema_epoch")?;
    crate::store::meta::set_u64(conn, "schema_epoch", e + 1)
}

/// Inserts the origin of `card` or fills in its keys and name; returns its local number.
fn upsert_origin(conn: &Connection, card: &Card) -> Result<i64> {
    conn.execute(
        "INSERT INTO _tide_origins(id, sign_key, box_key, name) VALUES(?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET sign_key=excluded.sign_key, box_key=excluded.box_key, name=excluded.name",
        params![&card.id.0[..], &card.sign_key[..], &card.box_key[..], card.name],
    )?;
    Ok(conn.query_row(
        "SELECT idx FROM _tide_origins WHERE id=?1",
        [&card.id.0[..]],
        |r| r.get(0),
    )?)
}

/// Progress of a long operation, for a person watching: `done` of `total` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// What is being done.
    pub stage: Stage,
    /// Changes done so far.
    pub done: u64,
    /// Changes in all.
    pub total: u64,
}

/// The stage of a long operation a [`Progress`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// `packing`: listing the changes an export sends.
    Packing,
    /// `applying`: applying the changes an import brings.
    Applying,
}

impl Stage {
    /// Its word, as a person reads it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Packing => "packing",
            Stage::Applying => "applying",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Failures tide's own tests inject (feature `testing`). Without the feature it holds
/// nothing and its check compiles to nothing, so the apply path carries no hook.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TestHooks {
    /// The apply fails once this many row ops are done.
    #[cfg(feature = "testing")]
    pub(crate) fail_after_ops: Option<usize>,
}

impl TestHooks {
    /// Fails the apply when the hook says so, `ops_done` row ops in.
    #[inline(always)]
    pub(crate) fn before_op(self, ops_done: usize) -> Result<()> {
        #[cfg(feature = "testing")]
        if self.fail_after_ops.is_some_and(|n| ops_done >= n) {
            return Err(Error::Apply(crate::error::ApplyError::Injected));
        }
        let _ = ops_done;
        Ok(())
    }
}
