//! The SQLite image inside a bundle (SPEC §5): written with plain settings, read
//! read-only and defensively, after the signature checked out.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use tide_core::{ReplicaId, SignedChange, VersionVector};

use crate::error::{BundleError, Result};

const SCHEMA_META: &str = "CREATE TABLE tide_bundle(k TEXT PRIMARY KEY, v) WITHOUT ROWID";
const SCHEMA_CHANGES: &str =
    "CREATE TABLE changes(n INTEGER PRIMARY KEY, body BLOB NOT NULL, sig BLOB NOT NULL)";

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
             INSERT INTO tide_bundle VALUES ('format', 'tide-bundle-image'), ('version', 1);
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

    pub(crate) fn add(&mut self, change: &SignedChange) -> Result<()> {
        let id = change
            .peek_id()
            .map_err(|e| BundleError::BadImage(e.to_string()))?;
        let ops = tide_core::Change::count_ops(change.body())
            .map_err(|e| BundleError::BadImage(e.to_string()))?;
        self.n += 1;
        self.ops += ops as u64;
        let first = self.first.entry(id.origin).or_insert(id.seq);
        *first = (*first).min(id.seq);
        let last = self.last.entry(id.origin).or_insert(id.seq);
        *last = (*last).max(id.seq);
        self.conn
            .prepare_cached("INSERT INTO changes(n, body, sig) VALUES (?1, ?2, ?3)")?
            .execute(rusqlite::params![
                self.n as i64,
                change.body(),
                &change.signature()[..]
            ])?;
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
    if format.as_deref() != Some("tide-bundle-image") || version != Some(1) {
        return Err(bad("not a version 1 bundle image"));
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

/// Calls `each` for every change of an opened image, in order.
pub(crate) fn each_change(
    conn: &Connection,
    mut each: impl FnMut(SignedChange) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare("SELECT body, sig FROM changes ORDER BY n")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let body: Vec<u8> = r.get(0)?;
        let sig: Vec<u8> = r.get(1)?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| BundleError::BadImage("a signature is not 64 bytes".into()))?;
        each(SignedChange::from_parts(body, sig))?;
    }
    Ok(())
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
