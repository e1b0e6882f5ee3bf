//! Whether SQLite reads the file back whole.

use crate::error::Result;

/// What SQLite's quick check finds wrong with the file, summed up in one line, or `None`
/// when the file is whole. A check that cannot even run is damage too.
pub(crate) fn damage(conn: &rusqlite::Connection) -> Result<Option<String>> {
    let mut problems: Vec<String> = Vec::new();
    let checked = conn
        .prepare("PRAGMA quick_check(100)")
        .and_then(|mut stmt| {
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                problems.push(r.get(0)?);
            }
            Ok(())
        });
    match checked {
        Ok(()) if problems.iter().all(|p| p == "ok") => return Ok(None),
        Ok(()) => {}
        Err(rusqlite::Error::SqliteFailure(e, detail))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            let why = detail.unwrap_or_else(|| e.to_string());
            problems = vec![format!("the check stops at a page it cannot read ({why})")];
        }
        Err(e) => return Err(e.into()),
    }
    let problems: Vec<&str> = problems
        .iter()
        .flat_map(|p| p.lines())
        .filter(|l| !l.starts_with("*** in database"))
        .collect();
    let first = problems.first().copied().unwrap_or("unreadable pages");
    Ok(Some(format!(
        "SQLite's check finds {}{} problem(s), the first: {first}",
        problems.len(),
        if problems.len() >= 100 {
            " or more"
        } else {
            ""
        },
    )))
}
