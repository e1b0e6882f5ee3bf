//! What the command-line tests share: running the real `tide` in a folder with its own
//! key store, and reading the SQLite files it leaves.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one run of `tide` printed and how it exited.
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// Runs `tide args` in `dir`, with `dir/keys` as the key store and `env` added.
pub fn tide_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tide"));
    cmd.args(args)
        .current_dir(dir)
        .env("TIDE_HOME", dir.join("keys"))
        .env_remove("TIDE_DB")
        .env_remove("TIDE_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// [`tide_in`], insisting on success.
pub fn ok_in(dir: &Path, args: &[&str]) -> Run {
    let r = tide_in(dir, args, &[]);
    assert_eq!(r.code, 0, "tide {args:?} failed:\n{}{}", r.stdout, r.stderr);
    r
}

/// A temporary folder with its own key store, where replicas live.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn tide_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        tide_in(self.dir.path(), args, env)
    }

    pub fn tide(&self, args: &[&str]) -> Run {
        self.tide_env(args, &[])
    }

    /// Runs and insists on success.
    pub fn ok(&self, args: &[&str]) -> Run {
        ok_in(self.dir.path(), args)
    }

    /// Runs `sql` on `db` through a plain connection, as an app would.
    pub fn sql(&self, db: &str, sql: &str) {
        rusqlite::Connection::open(self.path(db))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }

    /// One value of `db`, shown as its storage class and value (`Text("x")`).
    pub fn one(&self, db: &str, sql: &str) -> String {
        rusqlite::Connection::open(self.path(db))
            .unwrap()
            .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| format!("{v:?}"))
            .unwrap()
    }

    /// One integer of `db`.
    pub fn count(&self, db: &str, sql: &str) -> i64 {
        rusqlite::Connection::open(self.path(db))
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    /// Replica `name` running `schema`, tracking `tables`, its card in `NAME.card`.
    pub fn replica_with(&self, name: &str, schema: &str, tables: &[&str]) {
        let db = format!("{name}.db");
        self.ok(&["--db", &db, "init", "--name", name]);
        self.sql(&db, schema);
        let mut args = vec!["--db", &db, "track"];
        args.extend(tables);
        self.ok(&args);
        let card = self.ok(&["--db", &db, "id", "--card"]).stdout;
        std::fs::write(self.path(&format!("{name}.card")), card).unwrap();
    }

    /// Every replica in `names` adds every other's card.
    pub fn trust_each_other(&self, names: &[&str]) {
        for a in names {
            for b in names {
                if a != b {
                    self.ok(&[
                        "--db",
                        &format!("{a}.db"),
                        "peers",
                        "add",
                        &format!("{b}.card"),
                    ]);
                }
            }
        }
    }
}
