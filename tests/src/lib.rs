//! The test kit shared by tide's scenario and property tests: replicas in a temporary
//! folder, each with its own key store, that know each other.
//!
//! Scenarios write through a separate plain SQLite connection, as an application would.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tide_core::{KeyStore, Replica, VersionVector};

/// A set of replicas that all know each other's cards.
pub struct Cluster {
    /// The temporary folder holding every database and key store.
    pub dir: tempfile::TempDir,
    /// The replicas, in creation order.
    pub replicas: Vec<Replica>,
}

impl Cluster {
    /// `n` replicas named r0, r1, …, each running `schema` and tracking `tables`.
    pub fn new(n: usize, schema: &str, tables: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut replicas = Vec::new();
        for i in 0..n {
            let mut r = Replica::open(
                dir.path().join(format!("r{i}.db")),
                KeyStore::at(dir.path().join(format!("keys{i}"))),
            )
            .expect("open replica");
            r.init(&format!("r{i}")).expect("init");
            r.connection().execute_batch(schema).expect("schema");
            for t in tables {
                r.track(t).expect("track");
            }
            replicas.push(r);
        }
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let card = replicas[j].card().expect("card");
                    replicas[i].add_peer(&card).expect("add peer");
                }
            }
        }
        Cluster { dir, replicas }
    }

    /// The database file of replica `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("r{i}.db"))
    }

    /// A plain connection to replica `i`'s file, as an app would open it.
    pub fn app(&self, i: usize) -> Connection {
        Connection::open(self.path(i)).expect("app connection")
    }

    /// Runs `sql` on replica `i` through an app connection.
    pub fn write(&self, i: usize, sql: &str) {
        self.app(i).execute_batch(sql).expect("app write");
    }

    /// Sends everything `to` lacks from `from`; returns the import report.
    pub fn send(&mut self, from: usize, to: usize) -> tide_core::ImportReport {
        let vv = self.replicas[to].version_vector().expect("version vector");
        let changes = self.replicas[from].changes_for(&vv).expect("changes_for");
        self.replicas[to].import(&changes).expect("import")
    }

    /// Full exchange, all pairs, until nothing moves.
    pub fn sync_all(&mut self) {
        for _ in 0..8 {
            let before: Vec<VersionVector> = self
                .replicas
                .iter()
                .map(|r| r.version_vector().unwrap())
                .collect();
            let n = self.replicas.len();
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        self.send(i, j);
                    }
                }
            }
            let after: Vec<VersionVector> = self
                .replicas
                .iter()
                .map(|r| r.version_vector().unwrap())
                .collect();
            if before == after {
                return;
            }
        }
        panic!("replicas did not settle after 8 rounds of full exchange");
    }

    /// The state hash of every replica.
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        self.replicas
            .iter()
            .map(|r| r.state_hash().expect("state hash"))
            .collect()
    }
}

/// Reads one value from replica file `path` through a fresh connection.
pub fn query_one<T: rusqlite::types::FromSql>(path: &Path, sql: &str) -> T {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}
