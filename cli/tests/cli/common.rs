//! What the command-line tests share: running the real `tide` in a folder with its own
//! key store, and reading the SQLite files it leaves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// Fails the test with the next step when the `sqlite-utils` command is missing.
pub fn require_sqlite_utils() {
    let present = Command::new("sqlite-utils")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        present,
        "these tests drive the real `sqlite-utils` command, which is not installed: \
         run `python3 -m pip install sqlite-utils` (.ci/run does)"
    );
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

    /// Every row `sql` returns from `db`, as text: the column names on the first line,
    /// then one line per row of storage classes and values, so that two tables compare
    /// equal only when their columns, rows, values and types all are.
    pub fn table(&self, db: &str, sql: &str) -> String {
        let conn = rusqlite::Connection::open(self.path(db)).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let mut out = stmt.column_names().collect::<Vec<_>>().join(" | ");
        out.push('\n');
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let cells: Vec<String> = (0..n)
                .map(|i| format!("{:?}", row.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect();
            out.push_str(&cells.join(" | "));
            out.push('\n');
        }
        out
    }

    /// Runs `sqlite-utils args` in this folder (so `a.db` names a replica here), with
    /// `stdin` fed to it, as an application migrating or writing its own database would;
    /// insists that it succeeds.
    pub fn sqlite_utils(&self, args: &[&str], stdin: Option<&str>) {
        let mut child = Command::new("sqlite-utils")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sqlite-utils is installed (.ci/run installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the application's `sqlite-utils {}` failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the SQL script `sql` on `db` through Python's `sqlite3` module, as a Python
    /// application would; insists that it succeeds.
    pub fn python_sql(&self, db: &str, sql: &str) {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 c.executescript(sys.argv[2])\n\
                 c.commit()\n\
                 c.close()",
            ])
            .arg(self.path(db))
            .arg(sql)
            .output()
            .expect("python3 is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "the application's Python statements on {db} failed:\n{sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
