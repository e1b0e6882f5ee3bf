//! The SQLite image inside a bundle (SPEC §5): written with plain settings, read
//! read-only and defensively, after the signature checked out.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tide_core::change::unpack_chunk;
use tide_core::{ChunkRef, Chunks, DecodeError, Manifest, ReplicaId, SignedHead, VersionVector};

use crate::error::{BundleError, Result};
use crate::header::Header;

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
    carried: Carried,
}

/// What an image holds, for the header.
pub(crate) struct ImageSummary {
    pub(crate) changes: u64,
    pub(crate) ops: u64,
    pub(crate) requires: VersionVector,
    pub(crate) provides: VersionVector,
}

/// A tally of the changes an image carries: what the writer puts in the header, and
/// what the reader checks the header against (SPEC §2.3), by the same rules.
#[derive(Default)]
pub(crate) struct Carried {
    changes: u64,
    ops: u64,
    first: BTreeMap<ReplicaId, u64>,
    last: BTreeMap<ReplicaId, u64>,
}

impl Carried {
    pub(crate) fn add(&mut self, manifest: &Manifest) {
        let id = manifest.id();
        self.changes += 1;
        self.ops += manifest.ops;
        let first = self.first.entry(id.origin).or_insert(id.seq);
        *first = (*first).min(id.seq);
        let last = self.last.entry(id.origin).or_insert(id.seq);
        *last = (*last).max(id.seq);
    }

    pub(crate) fn summary(self) -> ImageSummary {
        // A bundle that starts an origin's run past seq 1 requires what comes before.
        let requires = self
            .first
            .iter()
            .filter(|(_, s)| **s > 1)
            .map(|(r, s)| (*r, s - 1))
            .collect();
        ImageSummary {
            changes: self.changes,
            ops: self.ops,
            requires,
            provides: self.last,
        }
    }

    /// Checks that `header` says what these changes carry (the count of changes is
    /// checked when the image opens).
    pub(crate) fn check(self, header: &Header) -> Result<()> {
        let carried = self.summary();
        if carried.ops != header.ops {
            return Err(BundleError::Malformed(
                "`ops` is not the number of row ops the changes carry",
            ));
        }
        if carried.requires != header.requires {
            return Err(BundleError::Malformed(
                "`requires` is not what the changes build on",
            ));
        }
        if carried.provides != header.provides {
            return Err(BundleError::Malformed(
                "`provides` is not where the changes end",
            ));
        }
        Ok(())
    }
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
            carried: Carried::default(),
        })
    }

    /// Adds a change: its head, and each chunk it names that the image lacks, read from
    /// `chunks` one at a time.
    pub(crate) fn add(&mut self, head: &SignedHead, chunks: &mut dyn Chunks) -> Result<()> {
        let manifest = head
            .manifest()
            .map_err(|e| BundleError::BadImage(e.to_string()))?;
        self.carried.add(&manifest);
        self.conn
            .prepare_cached("INSERT INTO changes(n, head, sig) VALUES (?1, ?2, ?3)")?
            .execute(rusqlite::params![
                self.carried.changes as i64,
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
        Ok(self.carried.summary())
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
        // Declared BLOB, but SQLite keeps whatever type a writer stored.
        let (ValueRef::Blob(head), ValueRef::Blob(sig)) = (r.get_ref(0)?, r.get_ref(1)?) else {
            return Err(BundleError::BadImage(
                "a change's head or signature is not a blob".into(),
            ));
        };
        let head = head.to_vec();
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
        let found = self
            .conn
            .prepare_cached(
                "SELECT data, packing FROM chunks WHERE hash = ?1 AND length(data) <= ?2",
            )?
            .query_row(rusqlite::params![&want.hash[..], most as i64], |r| {
                Ok(match (r.get_ref(0)?, r.get_ref(1)?) {
                    (ValueRef::Blob(data), ValueRef::Integer(packing)) => {
                        Some((data.to_vec(), packing))
                    }
                    _ => None,
                })
            })
            .optional()?;
        match found {
            Some(Some(stored)) => Ok(stored),
            // Declared BLOB and INTEGER, but SQLite keeps whatever type a writer stored.
            Some(None) => Err(tide_core::Error::Decode(DecodeError::Malformed(
                "bundle (a chunk's data is not a blob or its packing not an integer)",
            ))),
            None => Err(tide_core::Error::Decode(DecodeError::Malformed(
                "bundle (a chunk a change names is not in it, or is longer than the chunk)",
            ))),
        }
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
