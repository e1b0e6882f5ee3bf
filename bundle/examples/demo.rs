//! The offline story in one run: two replicas edit the same records without a network,
//! exchange their changes, see the conflict the same way, resolve it once, and agree.
//!
//! Run it with `cargo run -p tide-bundle --example demo`. Everything happens in a
//! temporary folder that is removed at the end; changes travel as real `.tide` bundle
//! files (signed; the field laptop's are encrypted to headquarters' key).

use std::path::Path;

use tide_bundle::WriteOptions;
use tide_core::{KeyStore, Replica, Resolution, Value};

/// Writes a bundle of everything `to` lacks into `path`, as a field laptop would onto a
/// USB stick; returns a line describing it.
fn carry(
    from: &mut Replica,
    to: &Replica,
    path: &Path,
    encrypt: bool,
) -> Result<String, Box<dyn std::error::Error>> {
    let since = from.peer_ack(to.id()?)?;
    let options = WriteOptions {
        recipient: Some(to.id()?),
        encrypt_to: if encrypt {
            vec![to.card()?.box_key]
        } else {
            vec![]
        },
        ..Default::default()
    };
    let mut file = std::fs::File::create(path)?;
    let written = tide_bundle::export(from, &since, &options, &mut file)?;
    Ok(format!(
        "{} ({} bytes, {} change(s), {} row op(s){})",
        path.file_name().unwrap_or_default().to_string_lossy(),
        written.bytes,
        written.header.changes,
        written.header.ops,
        if encrypt { ", encrypted" } else { "" }
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    println!("Working in {}", dir.path().display());
    let schema = "CREATE TABLE sites(id TEXT PRIMARY KEY, name TEXT, status TEXT, visits INTEGER);";

    let mut field = Replica::open(
        dir.path().join("field.db"),
        KeyStore::at(dir.path().join("field-keys")),
    )?;
    let mut hq = Replica::open(
        dir.path().join("hq.db"),
        KeyStore::at(dir.path().join("hq-keys")),
    )?;
    field.init("field-laptop")?;
    hq.init("headquarters")?;
    field.add_peer(&hq.card()?)?;
    hq.add_peer(&field.card()?)?;
    println!("\n1. Two replicas, each with its own identity:");
    println!(
        "   field-laptop {}\n   headquarters {}",
        field.id()?,
        hq.id()?
    );

    for r in [&field, &hq] {
        r.connection().execute_batch(schema)?;
    }
    field.track("sites")?;
    hq.track("sites")?;

    // The app writes plain SQL through its own connection; tide captures it.
    let hq_app = rusqlite::Connection::open(dir.path().join("hq.db"))?;
    hq_app.execute_batch(
        "INSERT INTO sites VALUES ('well-7', 'Well 7', 'planned', 0);
         INSERT INTO sites VALUES ('pump-2', 'Pump 2', 'planned', 0);",
    )?;
    println!("\n2. Headquarters plans two sites and sends them to the field.");
    let plan = dir.path().join("hq-to-field.tide");
    println!("   wrote {}", carry(&mut hq, &field, &plan, false)?);
    let report = tide_bundle::import(&mut field, &mut std::fs::File::open(&plan)?, None)?.report;
    println!(
        "   field imported {} change(s), {} row op(s)",
        report.applied, report.ops_applied
    );

    let field_app = rusqlite::Connection::open(dir.path().join("field.db"))?;
    field_app.execute_batch(
        "UPDATE sites SET status = 'repaired', visits = visits + 1 WHERE id = 'well-7';
         UPDATE sites SET visits = 1 WHERE id = 'pump-2';",
    )?;
    hq_app.execute_batch(
        "UPDATE sites SET status = 'cancelled' WHERE id = 'well-7';
         UPDATE sites SET name = 'Pump 2 (north)' WHERE id = 'pump-2';",
    )?;
    println!("\n3. Offline, both edit: the field repairs well-7, headquarters cancels it;");
    println!("   the field counts a visit at pump-2 while headquarters renames it.");

    let up = dir.path().join("field-to-hq.tide");
    let down = dir.path().join("hq-to-field-2.tide");
    println!("\n4. A USB stick travels both ways:");
    println!("   wrote {}", carry(&mut field, &hq, &up, true)?);
    println!("   wrote {}", carry(&mut hq, &field, &down, false)?);
    let a = tide_bundle::import(&mut hq, &mut std::fs::File::open(&up)?, None)?.report;
    let b = tide_bundle::import(&mut field, &mut std::fs::File::open(&down)?, None)?.report;
    println!(
        "   headquarters opened {} conflict(s), the field {}.",
        a.conflicts_opened, b.conflicts_opened
    );

    for (who, r) in [("field", &field), ("hq", &hq)] {
        for c in r.conflicts()? {
            let key: Vec<String> = c.key.iter().map(Value::display).collect();
            println!(
                "   {who}: conflict {} on {}.{} of row {}",
                &c.id[..8],
                c.table,
                c.column.as_deref().unwrap_or("(row)"),
                key.join(", ")
            );
            for cand in &c.candidates {
                let value = cand
                    .value
                    .as_ref()
                    .map(Value::display)
                    .unwrap_or_else(|| "(deleted)".into());
                println!(
                    "      {} {} from {}",
                    if cand.winner { "shown:" } else { "kept: " },
                    value,
                    cand.origin_name
                );
            }
        }
    }
    let pump: (String, i64) = field_app.query_row(
        "SELECT name, visits FROM sites WHERE id='pump-2'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    println!("   pump-2 merged without conflict: {pump:?} (different columns)");

    let conflict = hq.conflicts()?.remove(0);
    let repaired = conflict
        .candidates
        .iter()
        .find(|c| c.value == Some(Value::text("repaired")))
        .expect("the field's value is a candidate");
    hq.resolve(&conflict.id, Resolution::Keep(repaired.id.clone()))?;
    println!("\n5. Headquarters keeps the field's 'repaired' and sends the resolution back.");
    let back = dir.path().join("hq-to-field-3.tide");
    println!("   wrote {}", carry(&mut hq, &field, &back, false)?);
    tide_bundle::import(&mut field, &mut std::fs::File::open(&back)?, None)?;

    let same = field.state_hash()? == hq.state_hash()?;
    println!(
        "   open conflicts: field {}, headquarters {}",
        field.conflicts()?.len(),
        hq.conflicts()?.len()
    );
    println!("   identical tables and conflict sets on both replicas: {same}");
    assert!(same, "replicas that applied the same changes must agree");
    Ok(())
}
