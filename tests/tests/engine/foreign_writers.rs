//! Writes made by other programs, with the SQLite they ship (3.40 on Debian 12): the
//! `sqlite3` shell and Python's `sqlite3` module. Capture triggers must work there too.

use std::process::Command;

use tide_tests::{Cluster, query_one};

const SCHEMA: &str =
    "CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT COLLATE NOCASE, body BLOB, n);";

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}); install it (.ci/run does: apt-get install sqlite3 python3)"));
    assert!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn writes_from_the_sqlite3_shell_are_captured() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    let path = c.path(0);
    let db = path.to_str().unwrap();
    run(
        "sqlite3",
        &[
            db,
            "INSERT INTO notes VALUES ('a', 'x', X'00ff', 1); INSERT INTO notes VALUES ('b', 'y', NULL, 2.5);",
        ],
    );
    // A case-only change in a NOCASE column is still a change.
    run(
        "sqlite3",
        &[
            db,
            "UPDATE notes SET title = 'X' WHERE id = 'a'; DELETE FROM notes WHERE id = 'b';",
        ],
    );
    c.send(0, 1);
    assert_eq!(
        query_one::<String>(&c.path(1), "SELECT title FROM notes WHERE id='a'"),
        "X"
    );
    assert_eq!(
        query_one::<i64>(&c.path(1), "SELECT count(*) FROM notes"),
        1
    );
    c.assert_converged();
}

#[test]
fn writes_from_python_are_captured_bit_exact() {
    let mut c = Cluster::new(2, SCHEMA, &["notes"]);
    let script = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("INSERT INTO notes VALUES (?, ?, ?, ?)", ("p", "py", b"", -0.0))
con.execute("INSERT INTO notes VALUES (?, ?, ?, ?)", ("q", "py", None, 9223372036854775807))
con.commit()
con.execute("UPDATE notes SET n = 0.1 + 0.2 WHERE id = 'q'")
con.commit()
print(sqlite3.sqlite_version)
"#;
    run("python3", &["-c", script, c.path(0).to_str().unwrap()]);
    c.send(0, 1);
    c.assert_converged();
    let bits: f64 = query_one(&c.path(1), "SELECT n FROM notes WHERE id='p'");
    assert_eq!(
        bits.to_bits(),
        (-0.0f64).to_bits(),
        "-0.0 keeps its sign in an untyped column"
    );
    let empty: Vec<u8> = query_one(&c.path(1), "SELECT body FROM notes WHERE id='p'");
    assert!(empty.is_empty());
    assert_eq!(
        query_one::<String>(&c.path(1), "SELECT typeof(body) FROM notes WHERE id='p'"),
        "blob",
        "empty BLOB is not NULL"
    );
    let r: f64 = query_one(&c.path(1), "SELECT n FROM notes WHERE id='q'");
    assert_eq!(r.to_bits(), (0.1f64 + 0.2).to_bits());
}
