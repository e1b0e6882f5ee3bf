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

    /// Sends both ways between replicas `a` and `b`: first `a` to `b`, then `b` to `a`.
    pub fn exchange(&mut self, a: usize, b: usize) {
        self.send(a, b);
        self.send(b, a);
    }

    /// Replicas 0 and 1 write `on0` and `on1` without seeing each other's writes (0
    /// first), then [`exchange`](Cluster::exchange) both ways.
    pub fn diverge(&mut self, on0: &str, on1: &str) {
        self.write(0, on0);
        self.write(1, on1);
        self.exchange(0, 1);
    }

    /// Replica 0 writes `base` and sends it to replica 1; from that shared state the two
    /// [`diverge`](Cluster::diverge) with `on0` and `on1` and exchange both ways.
    pub fn diverge_from(&mut self, base: &str, on0: &str, on1: &str) {
        self.write(0, base);
        self.send(0, 1);
        self.diverge(on0, on1);
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

    /// Asserts that every replica's state hash equals replica 0's.
    #[track_caller]
    pub fn assert_converged(&self) {
        let h = self.hashes();
        for i in 1..h.len() {
            assert_eq!(h[0], h[i]);
        }
    }
}

/// The table most scenarios write to: notes keyed by text, with two text columns and an
/// integer.
pub const NOTES: &str =
    "CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT, body TEXT, n INTEGER);";

/// `n` replicas running [`NOTES`] and tracking `notes`.
pub fn notes(n: usize) -> Cluster {
    Cluster::new(n, NOTES, &["notes"])
}

/// SQL inserting one row into `table` for each `x` from `from` to `to`, made of `select`
/// (expressions of `x`).
pub fn series(table: &str, from: i64, to: i64, select: &str) -> String {
    format!(
        "WITH RECURSIVE s(x) AS (SELECT {from} UNION ALL SELECT x + 1 FROM s WHERE x < {to})
         INSERT INTO {table} SELECT {select} FROM s;"
    )
}

/// Reads one value from replica file `path` through a fresh connection.
pub fn query_one<T: rusqlite::types::FromSql>(path: &Path, sql: &str) -> T {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}
