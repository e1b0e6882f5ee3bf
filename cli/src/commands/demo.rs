//! `tide demo`: the offline story on an embedded default, narrated.

use std::path::Path;

use anyhow::Result;
use tide_bundle::WriteOptions;
use tide_core::{KeyStore, Replica, Resolution, Value};
use tide_transports::Carrier;
use tide_transports::http::client::HubClient;
use tide_transports::http::hub::{Hub, HubOptions};

use super::Out;
use crate::render::conflict_text;

fn carry(from: &mut Replica, to: &Replica, path: &Path, encrypt: bool) -> Result<String> {
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
    let w = tide_bundle::export(from, &since, &options, &mut file)?;
    Ok(format!(
        "{} ({} bytes, {} change(s){})",
        path.file_name().unwrap_or_default().to_string_lossy(),
        w.bytes,
        w.header.changes,
        if encrypt {
            ", encrypted to its reader"
        } else {
            ""
        }
    ))
}

fn take(to: &mut Replica, path: &Path) -> Result<tide_core::ImportReport> {
    Ok(tide_bundle::import(to, &mut std::fs::File::open(path)?, None)?.report)
}

pub fn run(out: &Out, keep: bool) -> Result<u8> {
    let dir = tempfile::Builder::new().prefix("tide-demo-").tempdir()?;
    let p = dir.path();
    let say = |s: &str| out.data(s);
    say(&format!("tide demo: two replicas in {}", p.display()));
    let keys = |n: &str| KeyStore::at(p.join(format!("{n}-keys")));
    let mut field = Replica::open(p.join("field.db"), keys("field"))?;
    let mut hq = Replica::open(p.join("hq.db"), keys("hq"))?;
    field.init("field-laptop")?;
    hq.init("headquarters")?;
    field.add_peer(&hq.card()?)?;
    hq.add_peer(&field.card()?)?;
    let schema = "CREATE TABLE sites(id TEXT PRIMARY KEY, name TEXT, status TEXT, visits INTEGER);";
    for r in [&field, &hq] {
        r.connection().execute_batch(schema)?;
    }
    field.track("sites")?;
    hq.track("sites")?;
    say("\n1. Each replica has its own identity and trusts the other's card:");
    say(&format!(
        "     field-laptop {}\n     headquarters {}",
        field.id()?.short(),
        hq.id()?.short()
    ));

    let hq_app = rusqlite::Connection::open(p.join("hq.db"))?;
    hq_app.execute_batch(
        "INSERT INTO sites VALUES ('well-7', 'Well 7', 'planned', 0);
         INSERT INTO sites VALUES ('pump-2', 'Pump 2', 'planned', 0);",
    )?;
    say("\n2. Headquarters' app plans two sites with plain SQL; tide captured the writes.");
    let b1 = p.join("1-hq-to-field.tide");
    say(&format!(
        "   A bundle goes to the field on a USB stick: {}",
        carry(&mut hq, &field, &b1, false)?
    ));
    let r = take(&mut field, &b1)?;
    say(&format!(
        "   The field verifies the signature and applies {} row op(s).",
        r.ops_applied
    ));

    let field_app = rusqlite::Connection::open(p.join("field.db"))?;
    field_app.execute_batch(
        "UPDATE sites SET status = 'repaired', visits = visits + 1 WHERE id = 'well-7';
         UPDATE sites SET visits = 1 WHERE id = 'pump-2';",
    )?;
    hq_app.execute_batch(
        "UPDATE sites SET status = 'cancelled' WHERE id = 'well-7';
         UPDATE sites SET name = 'Pump 2 (north)' WHERE id = 'pump-2';",
    )?;
    say("\n3. Offline, both edit. The field repairs well-7 while headquarters cancels it;");
    say("   the field counts a visit at pump-2 while headquarters renames it.");

    let up = p.join("2-field-to-hq.tide");
    let down = p.join("3-hq-to-field.tide");
    say("\n4. The stick travels both ways:");
    say(&format!("   {}", carry(&mut field, &hq, &up, true)?));
    say(&format!("   {}", carry(&mut hq, &field, &down, false)?));
    let a = take(&mut hq, &up)?;
    let b = take(&mut field, &down)?;
    say(&format!(
        "   Headquarters records {} conflict(s), the field {}: nothing was dropped.",
        a.conflicts_opened, b.conflicts_opened
    ));
    for (who, r) in [("field", &field), ("headquarters", &hq)] {
        for c in r.conflicts()? {
            say(&format!("   {who} sees:"));
            for line in conflict_text(&c).lines() {
                say(&format!("     {line}"));
            }
        }
    }
    let pump: (String, i64) = field_app.query_row(
        "SELECT name, visits FROM sites WHERE id='pump-2'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    say(&format!(
        "   pump-2 merged without a conflict (different columns): name {:?}, visits {}",
        pump.0, pump.1
    ));

    let conflict = hq.conflicts()?.remove(0);
    let repaired = conflict
        .candidates
        .iter()
        .find(|c| c.value == Some(Value::text("repaired")))
        .expect("the field's value is a candidate")
        .id
        .clone();
    hq.resolve(&conflict.id, Resolution::Keep(repaired))?;
    say("\n5. Headquarters keeps the field's 'repaired' (tide conflicts resolve ID --keep remote)");
    let back = p.join("4-hq-to-field.tide");
    say(&format!(
        "   and sends the resolution back: {}",
        carry(&mut hq, &field, &back, false)?
    ));
    take(&mut field, &back)?;
    let same = field.state_hash()? == hq.state_hash()?;
    say(&format!(
        "   Open conflicts: field {}, headquarters {}. Identical tables and conflict sets: {}.",
        field.conflicts()?.len(),
        hq.conflicts()?.len(),
        if same { "yes" } else { "NO" }
    ));
    anyhow::ensure!(
        same,
        "the replicas disagree after the same changes: this is a bug, please report it"
    );
    live(p, &mut field, &mut hq, &field_app, &say)?;
    if keep {
        let kept = dir.keep();
        say(&format!(
            "\nThe files are kept in {} (try: tide --db {}/hq.db log).",
            kept.display(),
            kept.display()
        ));
        say(&format!(
            "Their keys are in {0}/hq-keys and {0}/field-keys: set TIDE_HOME to use them.",
            kept.display()
        ));
    } else {
        say("\nDone; the temporary folder is removed (tide demo --keep keeps it).");
    }
    Ok(0)
}

/// Act 6: back online, both sync through a hub on this machine, as changes come.
fn live(
    p: &Path,
    field: &mut Replica,
    hq: &mut Replica,
    field_app: &rusqlite::Connection,
    say: &dyn Fn(&str),
) -> Result<()> {
    let keys = KeyStore::at(p.join("hub-keys"));
    let mut hub_db = Replica::open(p.join("hub.db"), keys.clone())?;
    hub_db.init("hub")?;
    for r in [&mut *field, &mut *hq] {
        hub_db.add_peer(&r.card()?)?;
        r.add_peer(&hub_db.card()?)?;
    }
    drop(hub_db);
    let hub = Hub::start(p.join("hub.db"), keys, "127.0.0.1:0", HubOptions::default())?;
    let url = format!("http://{}", hub.addr());
    say(&format!(
        "\n6. Back online, both sync through a hub (tide serve) at {url}:"
    ));
    let mut client = HubClient::new(&url);
    client.sync(hq)?;
    client.sync(field)?;
    field_app.execute(
        "INSERT INTO sites VALUES ('tank-9', 'Tank 9', 'inspected', 1)",
        [],
    )?;
    let started = std::time::Instant::now();
    client.sync(field)?;
    let report = client.sync(hq)?;
    say(&format!(
        "   The field records tank-9; one exchange each way later ({} ms), headquarters has it ({} change(s) applied).",
        started.elapsed().as_millis(),
        report.changes_applied
    ));
    let same = field.state_hash()? == hq.state_hash()?;
    say(&format!(
        "   Identical tables and conflict sets after the live sync: {}.",
        if same { "yes" } else { "NO" }
    ));
    hub.stop()?;
    anyhow::ensure!(
        same,
        "the replicas disagree after a live sync: this is a bug, please report it"
    );
    Ok(())
}
