//! A savepoint that undoes itself unless released.

use rusqlite::Connection;

use crate::error::Result;

/// Everything written through `conn` after [`Savepoint::begin`] is undone when the guard
/// goes out of scope unreleased (an early return, an error, an explicit
/// [`Savepoint::rollback`]), and kept by [`Savepoint::release`]. Some errors (a full
/// disk) make SQLite end the whole transaction, savepoints included: then there is
/// nothing left to undo, and the error stays the one to report.
pub(crate) struct Savepoint<'c> {
    conn: &'c Connection,
    name: &'static str,
    open: bool,
}

impl<'c> Savepoint<'c> {
    /// Starts savepoint `name` (a plain identifier, unique among the open ones).
    pub(crate) fn begin(conn: &'c Connection, name: &'static str) -> Result<Savepoint<'c>> {
        conn.execute_batch(&format!("SAVEPOINT {name}"))?;
        Ok(Savepoint {
            conn,
            name,
            open: true,
        })
    }

    /// Keeps what was written since it began.
    pub(crate) fn release(mut self) -> Result<()> {
        self.open = false;
        self.conn.execute_batch(&format!("RELEASE {}", self.name))?;
        Ok(())
    }

    /// Undoes what was written since it began.
    pub(crate) fn rollback(mut self) -> Result<()> {
        self.open = false;
        self.undo()
    }

    fn undo(&self) -> Result<()> {
        if self.conn.is_autocommit() {
            return Ok(()); // SQLite already ended the transaction
        }
        self.conn.execute_batch(&format!(
            "ROLLBACK TO {name}; RELEASE {name}",
            name = self.name
        ))?;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            // Nothing to report to: the caller is already returning an error, and the
            // enclosing transaction is rolled back with it.
            let _ = self.undo();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_savepoint_keeps_what_it_releases_and_undoes_the_rest() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(x); BEGIN; INSERT INTO t VALUES (1)")
            .unwrap();
        let kept = Savepoint::begin(&conn, "kept").unwrap();
        conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
        kept.release().unwrap();
        let undone = Savepoint::begin(&conn, "undone").unwrap();
        conn.execute("INSERT INTO t VALUES (3)", []).unwrap();
        undone.rollback().unwrap();
        {
            let _dropped = Savepoint::begin(&conn, "dropped").unwrap();
            conn.execute("INSERT INTO t VALUES (4)", []).unwrap();
        }
        assert_eq!(counted(&conn), 2);
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!(counted(&conn), 2);
    }
}
