//! The SQLite image inside a bundle (SPEC §5): written with plain settings, read
//! read-only and defensively, after the signature checked out.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use tide_core::change::unpack_chunk;
use tide_core::{ChunkRef, Chunks, DecodeError, ReplicaId, SignedHead, VersionVector};

use crate::error::{BundleError, Result};

const SCHEMA_META: &str = "CREATE TABLE tide_bundle(k TEXT PRIMARY KEY, v) WITHOUT ROWID";
const SCHEMA_CHANGES: &str =
    "CREATE TABLE changes(n INTEGER PRIMARY KEY, head BLOB NOT NULL, sig BLOB NOT NULL)";
const SCHEMA_CHUNKS: &str =
    "CREATE TABLE chunks(hash BLOB PRIMARY KEY, packing INTEGER NOT NULL, data BLOB NOT NULL)";
/// The image version this build writes and reads.
const IMAGE_VERSION: i64 = 2;

/// Collects changes into a new image file.
pub(crate) struct ImageBuilder {
    conn: Connection,
    n: u64,
    ops: u64,
    first: BTreeMap<ReplicaId, u64>,
    last: BTreeMap<ReplicaId, u64>,
}

/// What an image holds, for the header.
pub(crate) struct ImageSummary {
    pub(crate) changes: u64,
    pub(crate) ops: u64,
    pub(crate) requires: VersionVector,
    pub(crate) provides: VersionVector,
}

impl ImageBuilder {
    pub(crate) fn create(path: &Path) -> Result<ImageBuilder> {
        let conn = Connection::open(path)?;
        // A scratch file: no journal, no fsync; it is compressed and discarded.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; {SCHEMA_META}; {SCHEMA_CHANGES};
             {SCHEMA_CHUNKS};
             INSERT INTO tide_bundle VALUES ('format', 'tide-bundle-image'), ('version', {IMAGE_VERSION});
             BEGIN;"
        ))?;
        Ok(ImageBuilder {
            conn,
            n: 0,
            ops: 0,
            first: BTreeMap::new(),
            last: BTreeMap::new(),
        })
    }

    /// Adds a change: its head, and each chunk it names that the image lacks, read from
    /// `chunks` one at a time.
    pub(crate) fn add(&mut self, head: &SignedHead, chunks: &mut dyn Chunks) -> Result<()> {
        let manifest = head
            .manifest()
            .map_err(|e| BundleError::BadImage(e.to_string()))?;
        let id = manifest.id();
        self.n += 1;
        self.ops += manifest.ops;
        let first = self.first.entry(id.origin).or_insert(id.seq);
        *first = (*first).min(id.seq);
        let last = self.last.entry(id.origin).or_insert(id.seq);
        *last = (*last).max(id.seq);
        self.conn
            .prepare_cached("INSERT INTO changes(n, head, sig) VALUES (?1, ?2, ?3)")?
            .execute(rusqlite::params![
                self.n as i64,
                head.bytes(),
                &head.signature()[..]
            ])?;
        for (i, want) in manifest.chunks.iter().enumerate() {
            let held: bool = self
                .conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM chunks WHERE hash = ?1)")?
                .query_row([&want.hash[..]], |r| r.get(0))?;
            if !held {
                // As the log keeps it: a packed chunk is not unpacked and packed again.
                let (data, packing) = chunks.stored(i, want)?;
                self.conn
                    .prepare_cached("INSERT INTO chunks(hash, packing, data) VALUES (?1, ?2, ?3)")?
                    .execute(rusqlite::params![&want.hash[..], packing, data])?;
            }
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<ImageSummary> {
        self.conn.execute_batch("COMMIT")?;
        self.conn.close().map_err(|(_, e)| e)?;
        let requires = self
            .first
            .iter()
            .filter(|(_, s)| **s > 1)
            .map(|(r, s)| (*r, s - 1))
            .collect();
        Ok(ImageSummary {
            changes: self.n,
            ops: self.ops,
            requires,
            provides: self.last,
        })
    }
}

/// Opens a verified, decompressed image read-only and checks it is exactly what §5 says.
pub(crate) fn open_image(path: &Path, expected_changes: u64) -> Result<Connection> {
    let bad = |why: &str| BundleError::BadImage(why.to_string());
    check_file_header(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    // Bounded memory whatever the image's header suggests; no memory mapping.
    conn.execute_batch(
        "PRAGMA trusted_schema = OFF; PRAGMA cache_size = -8192; PRAGMA mmap_size = 0;",
    )?;
    let schema: Vec<(String, String, Option<String>)> = conn
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let expected = vec![
        (
            "table".to_string(),
            "changes".to_string(),
            Some(SCHEMA_CHANGES.to_string()),
        ),
        (
            "table".to_string(),
            "chunks".to_string(),
            Some(SCHEMA_CHUNKS.to_string()),
        ),
        (
            "index".to_string(),
            "sqlite_autoindex_chunks_1".to_string(),
            None,
        ),
        (
            "table".to_string(),
            "tide_bundle".to_string(),
            Some(SCHEMA_META.to_string()),
        ),
    ];
    if schema != expected {
        return Err(bad("unexpected schema"));
    }
    // Only now, with nothing but the two known tables, walk every page.
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| bad(&e.to_string()))?;
    if check != "ok" {
        return Err(bad(&format!("quick_check: {check}")));
    }
    let format: Option<String> = conn
        .query_row("SELECT v FROM tide_bundle WHERE k='format'", [], |r| {
            r.get(0)
        })
        .ok();
    let version: Option<i64> = conn
        .query_row("SELECT v FROM tide_bundle WHERE k='version'", [], |r| {
            r.get(0)
        })
        .ok();
    if format.as_deref() != Some("tide-bundle-image") || version != Some(IMAGE_VERSION) {
        return Err(bad(&format!(
            "not a version {IMAGE_VERSION} bundle image (a bundle made by another build of tide)"
        )));
    }
    let n: i64 = conn.query_row("SELECT count(*) FROM changes", [], |r| r.get(0))?;
    if n as u64 != expected_changes {
        return Err(bad(&format!(
            "{n} changes inside, the header says {expected_changes}"
        )));
    }
    Ok(conn)
}

/// Checks the raw 100-byte SQLite header before SQLite reads it: the magic, a rollback
/// journal (no WAL), no suggested cache size, a size that is whole pages.
fn check_file_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |why: &str| BundleError::BadImage(why.to_string());
    let mut h = [0u8; 100];
    std::fs::File::open(path)?
        .read_exact(&mut h)
        .map_err(|_| bad("shorter than an SQLite header"))?;
    if &h[..16] != b"SQLite format 3\0" {
        return Err(bad("not an SQLite database"));
    }
    if h[18] != 1 || h[19] != 1 {
        return Err(bad("not in rollback-journal mode"));
    }
    if h[48..52] != [0, 0, 0, 0] {
        return Err(bad("suggests a cache size"));
    }
    let page = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536u64,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([h[28], h[29], h[30], h[31]]));
    if page < 512 || std::fs::metadata(path)?.len() != pages * page {
        return Err(bad("its size is not its page count times its page size"));
    }
    Ok(())
}

/// Calls `each` for every change of an opened image, in order, with a reader of its
/// chunks (each read only when asked for, and checked by the caller against the head).
pub(crate) fn each_change(
    conn: &Connection,
    mut each: impl FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare("SELECT head, sig FROM changes ORDER BY n")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let head: Vec<u8> = r.get(0)?;
        let sig: Vec<u8> = r.get(1)?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| BundleError::BadImage("a signature is not 64 bytes".into()))?;
        each(
            &SignedHead::from_parts(head, sig),
            &mut ImageChunks { conn },
        )?;
    }
    Ok(())
}

/// An image's chunk table, read as a change's chunks.
struct ImageChunks<'c> {
    conn: &'c Connection,
}

impl Chunks for ImageChunks<'_> {
    fn chunk(&mut self, index: usize, want: &ChunkRef) -> tide_core::Result<Vec<u8>> {
        let (data, packing) = self.stored(index, want)?;
        Ok(unpack_chunk(data, packing, want.len)?)
    }

    fn stored(&mut self, _index: usize, want: &ChunkRef) -> tide_core::Result<(Vec<u8>, i64)> {
        use rusqlite::OptionalExtension;
        // Only a blob no longer than the chunk the head names (packed, a little more for
        // zstd's framing) is read: a bundle cannot make the reader allocate more than the
        // change it carries.
        let most = want.len + want.len / 128 + 1024;
        self.conn
            .prepare_cached(
                "SELECT data, packing FROM chunks WHERE hash = ?1 AND length(data) <= ?2",
            )?
            .query_row(rusqlite::params![&want.hash[..], most as i64], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?
            .ok_or(tide_core::Error::Decode(DecodeError::Malformed(
                "bundle (a chunk a change names is not in it, or is longer than the chunk)",
            )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("image.db");
        ImageBuilder::create(&path).unwrap().finish().unwrap();
        path
    }

    #[test]
    fn a_clean_image_opens() {
        let dir = tempfile::tempdir().unwrap();
        open_image(&image(dir.path()), 0).unwrap();
    }

    #[test]
    fn an_image_asking_for_a_huge_cache_or_wal_is_refused_before_sqlite_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        for (at, value) in [(48, 0x7f), (18, 2)] {
            let sub = dir.path().join(format!("case{at}"));
            std::fs::create_dir(&sub).unwrap();
            let path = image(&sub);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at] = value;
            std::fs::write(&path, bytes).unwrap();
            assert!(
                matches!(open_image(&path, 0), Err(BundleError::BadImage(_))),
                "byte {at}"
            );
        }
    }
}
