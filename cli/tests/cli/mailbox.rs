//! `tide sync`: a folder as a mailbox (transports/SPEC.md §3) that replicas visit each at
//! its own time, the one-way modes of a data diode (§3.4), and the exchange over a pipe
//! (§4), through the real binary on real files.
//!
//! What must hold: replicas that visit converge and lose no write, whatever order they
//! come in and whatever a stick pulled out mid-write leaves behind; the folder shrinks to
//! the acknowledgements once everyone has everything; files from replicas a visitor does
//! not know, damaged files and tampered files are never applied; `--receive-only` never
//! touches the folder; and no run ends in an internal error.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{Run, Site};

/// The table every replica tracks: a text key, so rows inserted on different replicas
/// never collide.
const SCHEMA: &str = "CREATE TABLE t(id TEXT PRIMARY KEY, n INTEGER, note TEXT)";

/// Replicas of `t` in one site that trust each other, and everything `tide` said so far.
struct Devices {
    site: Site,
    said: RefCell<String>,
}

impl Devices {
    fn new(names: &[&str]) -> Devices {
        let site = Site::new();
        for n in names {
            site.replica_with(n, SCHEMA, &["t"]);
        }
        site.trust_each_other(names);
        Devices {
            site,
            said: RefCell::new(String::new()),
        }
    }

    /// Runs `tide --db NAME.db args` in the site (global flags may lead `args`), keeping
    /// what it said; never an internal error or a panic.
    fn tide(&self, name: &str, args: &[&str]) -> Run {
        let db = format!("{name}.db");
        let mut all = vec!["--db", db.as_str()];
        all.extend(args);
        let r = self.site.tide(&all);
        self.said.borrow_mut().push_str(&format!(
            "$ tide {}\n{}{}[exit {}]\n",
            all.join(" "),
            r.stdout,
            r.stderr,
            r.code
        ));
        assert!(
            r.code != 1 && r.code != 101,
            "tide {all:?} failed with an internal error (exit {}):\n{}{}\nearlier:\n{}",
            r.code,
            r.stdout,
            r.stderr,
            self.recent()
        );
        r
    }

    /// [`Devices::tide`], insisting on exit 0.
    fn ok(&self, name: &str, args: &[&str]) -> Run {
        let r = self.tide(name, args);
        assert_eq!(
            r.code,
            0,
            "tide --db {name}.db {args:?} failed:\n{}{}\nearlier:\n{}",
            r.stdout,
            r.stderr,
            self.recent()
        );
        r
    }

    /// The end of what `tide` said, for a failure message.
    fn recent(&self) -> String {
        let said = self.said.borrow();
        let mut from = said.len().saturating_sub(6000);
        while !said.is_char_boundary(from) {
            from += 1;
        }
        said[from..].to_string()
    }

    /// `tide --db NAME.db --json sync FOLDER extra...`, exit 0, its summary parsed.
    fn sync(&self, name: &str, folder: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--json", "sync", folder];
        args.extend(extra);
        let r = self.ok(name, &args);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("tide sync --json printed no JSON ({e}):\n{}", r.stdout))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.site.path(name)
    }

    /// The replica's id, as its files in a mailbox are named.
    fn id(&self, name: &str) -> String {
        self.ok(name, &["id"]).stdout.trim().to_string()
    }

    /// Table `t`, every row and type.
    fn rows(&self, name: &str) -> String {
        self.site
            .table(&format!("{name}.db"), "SELECT * FROM t ORDER BY id")
    }

    /// The change log, as `tide log --json` lists it (a command that only looks).
    fn log(&self, name: &str) -> String {
        self.ok(name, &["--json", "log", "--limit", "100000"])
            .stdout
    }

    /// The open conflicts, as `tide conflicts list --json` lists them, without the one
    /// field that depends on the replica asking (`local`: whether it wrote the value).
    fn conflicts(&self, name: &str) -> Value {
        let r = self.ok(name, &["--json", "conflicts", "list"]);
        let mut v: Value = serde_json::from_str(&r.stdout).unwrap();
        for c in v.as_array_mut().expect("a list of conflicts") {
            for cand in c["candidates"].as_array_mut().expect("candidates") {
                cand.as_object_mut().unwrap().remove("local");
            }
        }
        v
    }

    /// The mailbox folder inside `folder`.
    fn mailbox(&self, folder: &str) -> PathBuf {
        self.path(folder).join("tide-mailbox")
    }
}

/// Every file and folder under `root`, by path relative to it, with each file's bytes
/// (`None` for a folder): two listings are equal only when nothing was added, removed,
/// renamed or changed.
fn listing(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The listing shown by name and size, for a failure message.
fn shown(listing: &BTreeMap<String, Option<Vec<u8>>>) -> String {
    listing
        .iter()
        .map(|(p, c)| match c {
            Some(bytes) => format!("{p} ({} bytes)\n", bytes.len()),
            None => format!("{p}/\n"),
        })
        .collect()
}

/// The `.tide` files directly in `dir`, sorted (none when it does not exist).
fn tide_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "tide"))
        .collect();
    out.sort();
    out
}

/// The number a `--json` summary gives for `field`.
fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field} in {v}"))
}

/// The name of the file at `path`.
fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().to_string()
}

/// The names of the files a `--json` summary says were left in place (it gives their
/// paths as reached from the folder named on the command line).
fn left_files(v: &Value) -> Vec<String> {
    v["left"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| file_name(Path::new(l["file"].as_str().unwrap())))
        .collect()
}

/// What a `--json` summary says is missing, per origin: the runs (first, last).
fn missing(v: &Value) -> BTreeMap<String, Vec<(u64, u64)>> {
    v["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let runs = m["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
                .collect();
            (m["origin"].as_str().unwrap().to_string(), runs)
        })
        .collect()
}

/// A small deterministic pseudo-random generator (xorshift64*): a seed fixes every
/// choice the test makes from what it finds. (Page names are hashes of contents that
/// include clocks, so which page a yank cuts, and what follows from it, can still differ
/// between runs of one seed; a failure shows the seed and every command's output.)
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------
// 1. Five devices, one stick, random visits and yanks.
// ---------------------------------------------------------------------------------------

const FIVE: [&str; 5] = ["d0", "d1", "d2", "d3", "d4"];

/// The seeds of the runs, and the steps (a write, a visit or a yank) of each.
const SEEDS: [u64; 6] = [
    0x9e37_79b9_7f4a_7c15,
    0x0123_4567_89ab_cdef,
    0x5eed_0000_0000_0003,
    0xfeed_face_0bad_f00d,
    0x0000_0000_0000_002a,
    0x7469_6465_6d61_696c,
];
const STEPS: usize = 60;

/// What the five devices wrote, to check the end state against.
///
/// Private rows (`dN-pK`) are only ever written by the device that made them, so their
/// end state is exactly that device's last write. Shared rows (`dN-sK`) are never deleted
/// and any device updates their `note`; every value written stays visible (as the shown
/// value or a conflict candidate) unless a later write replaced it: a write replaces the
/// value its replica showed when it was made and every value that same replica wrote to
/// the cell before (DESIGN.md §2.6). So the values still standing at the end are the
/// ones written minus the ones replaced, whatever order the changes travelled in.
#[derive(Default)]
struct Written {
    /// Private row → its writer's last (n, note), `None` once deleted.
    private: BTreeMap<String, Option<(i64, String)>>,
    /// Shared row → every value written to its note (each value is unique).
    notes: BTreeMap<String, BTreeSet<String>>,
    /// Shared row → the values of its note some write replaced.
    replaced: BTreeMap<String, BTreeSet<String>>,
    /// (device, shared row) → the values that device wrote to the row's note.
    by: BTreeMap<(String, String), BTreeSet<String>>,
    /// Writes so far (numbers the values and keys).
    next: i64,
}

impl Written {
    /// One write (a single statement, one transaction) by `dev` on its own database.
    fn write(&mut self, d: &Devices, dev: &str, rng: &mut Rng) {
        self.next += 1;
        let k = self.next;
        let db = format!("{dev}.db");
        let value = format!("{dev}#{k}");
        let own_private: Vec<String> = self
            .private
            .iter()
            .filter(|(id, v)| id.starts_with(&format!("{dev}-p")) && v.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let shared_here: Vec<(String, String)> = {
            let conn = rusqlite::Connection::open(d.path(&db)).unwrap();
            let mut stmt = conn
                .prepare("SELECT id, note FROM t WHERE id LIKE '%-s%' ORDER BY id")
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        match rng.below(10) {
            0 | 1 => {
                let id = format!("{dev}-p{k}");
                d.site.sql(
                    &db,
                    &format!("INSERT INTO t VALUES ('{id}', {k}, '{value}')"),
                );
                self.private.insert(id, Some((k, value)));
            }
            2 | 3 => {
                let id = format!("{dev}-s{k}");
                d.site
                    .sql(&db, &format!("INSERT INTO t VALUES ('{id}', 0, '{value}')"));
                self.notes
                    .entry(id.clone())
                    .or_default()
                    .insert(value.clone());
                self.by
                    .entry((dev.to_string(), id))
                    .or_default()
                    .insert(value);
            }
            4 if !own_private.is_empty() => {
                let id = rng.pick(&own_private).clone();
                d.site.sql(
                    &db,
                    &format!("UPDATE t SET n = {k}, note = '{value}' WHERE id = '{id}'"),
                );
                self.private.insert(id, Some((k, value)));
            }
            5 if !own_private.is_empty() => {
                let id = rng.pick(&own_private).clone();
                d.site.sql(&db, &format!("DELETE FROM t WHERE id = '{id}'"));
                self.private.insert(id, None);
            }
            _ if !shared_here.is_empty() => {
                // Mostly rows another device made, as they arrive.
                let others: Vec<(String, String)> = shared_here
                    .iter()
                    .filter(|(id, _)| !id.starts_with(&format!("{dev}-")))
                    .cloned()
                    .collect();
                let (id, shows) = if !others.is_empty() && rng.chance(80) {
                    rng.pick(&others).clone()
                } else {
                    rng.pick(&shared_here).clone()
                };
                d.site.sql(
                    &db,
                    &format!("UPDATE t SET note = '{value}' WHERE id = '{id}'"),
                );
                let mine = self.by.entry((dev.to_string(), id.clone())).or_default();
                let replaced = self.replaced.entry(id.clone()).or_default();
                replaced.insert(shows);
                replaced.extend(mine.iter().cloned());
                mine.insert(value.clone());
                self.notes.entry(id).or_default().insert(value);
            }
            _ => {
                let id = format!("{dev}-p{k}");
                d.site.sql(
                    &db,
                    &format!("INSERT INTO t VALUES ('{id}', {k}, '{value}')"),
                );
                self.private.insert(id, Some((k, value)));
            }
        }
    }

    /// The values of a shared row's `note` still standing: written and not replaced.
    fn standing(&self, id: &str) -> BTreeSet<String> {
        let empty = BTreeSet::new();
        let replaced = self.replaced.get(id).unwrap_or(&empty);
        self.notes[id].difference(replaced).cloned().collect()
    }

    /// Checks `table` (every row of `t`, read through SQLite) and the open `conflicts`
    /// against what was written.
    fn check(&self, table: &BTreeMap<String, (i64, String)>, conflicts: &Value, seed: u64) {
        for (id, row) in &self.private {
            match row {
                Some((n, note)) => assert_eq!(
                    table.get(id),
                    Some(&(*n, note.clone())),
                    "seed {seed:#x}: row {id} must hold its writer's last write"
                ),
                None => assert!(
                    !table.contains_key(id),
                    "seed {seed:#x}: row {id} was deleted by its only writer, yet is there"
                ),
            }
        }
        // Candidates per row, from the open conflicts (all on shared rows' notes).
        let mut candidates: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in conflicts.as_array().unwrap() {
            assert_eq!(
                (
                    c["kind"].as_str(),
                    c["table"].as_str(),
                    c["column"].as_str()
                ),
                (Some("update"), Some("t"), Some("note")),
                "seed {seed:#x}: only concurrent updates of a shared row's note conflict: {c}"
            );
            let id = c["key"][0].as_str().unwrap().to_string();
            let values: BTreeSet<String> = c["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|cand| cand["value"].as_str().unwrap().to_string())
                .collect();
            assert!(
                candidates.insert(id.clone(), values).is_none(),
                "seed {seed:#x}: one open conflict per cell, but {id} has more"
            );
        }
        for id in self.notes.keys() {
            let standing = self.standing(id);
            let (_, note) = table
                .get(id)
                .unwrap_or_else(|| panic!("seed {seed:#x}: shared row {id} is missing"));
            assert!(
                standing.contains(note),
                "seed {seed:#x}: row {id} shows {note:?}, which a later write replaced \
                 or no one wrote; standing: {standing:?}"
            );
            let visible = candidates
                .get(id)
                .cloned()
                .unwrap_or_else(|| BTreeSet::from([note.clone()]));
            assert_eq!(
                visible, standing,
                "seed {seed:#x}: row {id}: every value written and not replaced must stay \
                 visible (shown or a conflict candidate), and nothing else"
            );
        }
        let expected: BTreeSet<&String> = self
            .private
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(id, _)| id)
            .chain(self.notes.keys())
            .collect();
        let found: BTreeSet<&String> = table.keys().collect();
        assert_eq!(found, expected, "seed {seed:#x}: the rows of t");
    }
}

/// Table `t` of `db`, by id.
fn t_rows(d: &Devices, name: &str) -> BTreeMap<String, (i64, String)> {
    let conn = rusqlite::Connection::open(d.path(&format!("{name}.db"))).unwrap();
    let mut stmt = conn.prepare("SELECT id, n, note FROM t").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// A stick pulled out mid-write, after a rename but before the data reached it: a page
/// cut to a random shorter length, and/or a half-written temporary file of a device.
fn yank(d: &Devices, ids: &[String], rng: &mut Rng) -> String {
    let root = d.mailbox("stick");
    let mut what = String::new();
    let pages = tide_files(&root.join("seg"));
    if !pages.is_empty() && rng.chance(80) {
        let page = rng.pick(&pages);
        let len = std::fs::metadata(page).unwrap().len();
        let cut = rng.below(len);
        std::fs::OpenOptions::new()
            .write(true)
            .open(page)
            .unwrap()
            .set_len(cut)
            .unwrap();
        what.push_str(&format!(
            "cut {} from {len} to {cut} bytes; ",
            page.file_name().unwrap().to_string_lossy()
        ));
    }
    if root.join("tmp").is_dir() && rng.chance(50) {
        let id = rng.pick(ids);
        let name = format!("{id}-{:016x}.part", rng.next());
        let junk: Vec<u8> = (0..rng.below(3000)).map(|_| rng.next() as u8).collect();
        std::fs::write(root.join("tmp").join(&name), junk).unwrap();
        what.push_str(&format!("left tmp/{name}; "));
    }
    what
}

/// What happened in one run, so the test can show it exercised what it claims to.
#[derive(Debug, Default)]
struct Tally {
    writes: i64,
    visits: u64,
    yanks: u64,
    garbage: u64,
    pruned: u64,
    conflicts: usize,
    rounds: u64,
}

fn five_devices_one_stick(seed: u64) -> Tally {
    let d = Devices::new(&FIVE);
    std::fs::create_dir(d.path("stick")).unwrap();
    let ids: Vec<String> = FIVE.iter().map(|n| d.id(n)).collect();
    let mut rng = Rng::new(seed);
    let mut written = Written::default();
    let tally = RefCell::new(Tally::default());
    let visit = |d: &Devices, dev: &str, rng: &mut Rng| -> Value {
        let small = rng.chance(40);
        let v = d.sync(
            dev,
            "stick",
            if small { &["--page-size", "1K"] } else { &[] },
        );
        assert_eq!(
            v["left"],
            Value::Array(vec![]),
            "seed {seed:#x}: a device of the site left files it could not use:\n{}",
            d.recent()
        );
        assert_eq!(num(&v, "quarantined"), 0, "seed {seed:#x}: {v}");
        let mut t = tally.borrow_mut();
        t.visits += 1;
        t.garbage += num(&v, "garbage");
        t.pruned += num(&v, "pruned");
        v
    };

    for _ in 0..STEPS {
        let dev = *rng.pick(&FIVE);
        match rng.below(10) {
            0..=3 => {
                for _ in 0..=rng.below(3) {
                    written.write(&d, dev, &mut rng);
                }
            }
            4..=8 => {
                visit(&d, dev, &mut rng);
            }
            _ => {
                let what = yank(&d, &ids, &mut rng);
                if !what.is_empty() {
                    tally.borrow_mut().yanks += 1;
                }
                d.said.borrow_mut().push_str(&format!("# yank: {what}\n"));
            }
        }
    }

    // Everyone visits in turn until a whole round moves nothing.
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(
            rounds <= 8,
            "seed {seed:#x}: still moving after 8 rounds of visits:\n{}",
            d.recent()
        );
        let mut moved = 0;
        for dev in FIVE {
            let v = visit(&d, dev, &mut rng);
            moved += num(&v, "pages_received")
                + num(&v, "pages_sent")
                + num(&v, "pruned")
                + num(&v, "garbage");
        }
        if moved == 0 && rounds >= 2 {
            break;
        }
    }
    tally.borrow_mut().rounds = rounds;

    let table = d.rows("d0");
    let conflicts = d.conflicts("d0");
    for dev in &FIVE[1..] {
        assert_eq!(d.rows(dev), table, "seed {seed:#x}: {dev} and d0 differ");
        assert_eq!(
            d.conflicts(dev),
            conflicts,
            "seed {seed:#x}: {dev} and d0 list different conflicts"
        );
    }
    written.check(&t_rows(&d, "d0"), &conflicts, seed);

    // Bounded: only the acknowledgements and VERSION are left.
    let root = d.mailbox("stick");
    let all = listing(&root);
    let mut expected: BTreeSet<String> = ["VERSION", "ack", "seg", "tmp", "to"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    expected.extend(ids.iter().map(|id| format!("ack/{id}.tide")));
    assert_eq!(
        all.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "seed {seed:#x}: once all five have acknowledged everything, the stick holds only \
         VERSION and one acknowledgement per device:\n{}",
        shown(&all)
    );
    for (path, bytes) in &all {
        if let Some(bytes) = bytes {
            assert!(
                bytes.len() < 4096,
                "seed {seed:#x}: {path} is {} bytes; an acknowledgement is under 4 KiB",
                bytes.len()
            );
        }
    }
    let mut t = tally.into_inner();
    t.writes = written.next;
    t.conflicts = conflicts.as_array().unwrap().len();
    t
}

/// Five devices that trust each other share one stick: in a seeded random order they
/// write (inserts, updates of their own rows and of rows that came from others,
/// deletes), visit the stick, and the stick is yanked between visits (a page cut short
/// after its rename, a half-written temporary file left behind). Then each visits in
/// turn until nothing moves. Every `tide` call exits 0; all five show the same table and
/// the same conflicts (`conflicts list --json`, less `local`, which says whether the
/// replica asking wrote the value); every write is there (see [`Written`]); and the
/// stick is bounded: no page and no temporary file is left, only VERSION and five
/// acknowledgements, each under 4 KiB.
#[test]
fn five_devices_one_stick_with_yanks_converge_lose_nothing_and_leave_only_acknowledgements() {
    let mut total = Tally::default();
    for seed in SEEDS {
        let t = five_devices_one_stick(seed);
        eprintln!("seed {seed:#x}: {t:?}");
        total.yanks += t.yanks;
        total.garbage += t.garbage;
        total.pruned += t.pruned;
        total.conflicts += t.conflicts;
    }
    // The seeds are chosen so that the runs cover what the test is about.
    assert!(
        total.yanks > 0 && total.garbage > 0,
        "no yank cut a page: {total:?}"
    );
    assert!(total.pruned > 0, "no page was ever pruned: {total:?}");
    assert!(total.conflicts > 0, "no concurrent updates met: {total:?}");
}

// ---------------------------------------------------------------------------------------
// 2. Relay.
// ---------------------------------------------------------------------------------------

/// C gets A's rows without ever meeting A. On one stick: A visits, B visits, C visits,
/// and C has A's rows; when A's page is gone from the stick before C comes, B's next
/// visit writes A's changes again (B relays), and C gets them from B's page. Through two
/// folders, where C never visits the folder A writes to, B carries A's changes from one
/// to the other, and C's own rows travel back to A the same way.
#[test]
fn a_visitor_relays_changes_to_a_replica_that_never_meets_their_author() {
    let d = Devices::new(&["a", "b", "c"]);
    for f in ["stick", "home", "field"] {
        std::fs::create_dir(d.path(f)).unwrap();
    }
    d.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a1', 1, 'from a'); INSERT INTO t VALUES ('a2', 2, 'from a');",
    );
    let a = d.sync("a", "stick", &[]);
    assert_eq!(num(&a, "changes_sent"), 1, "{a}");
    let b = d.sync("b", "stick", &[]);
    assert_eq!(num(&b, "changes_received"), 1, "{b}");
    let c = d.sync("c", "stick", &[]);
    assert_eq!(num(&c, "changes_received"), 1, "{c}");
    assert_eq!(d.rows("c"), d.rows("a"));

    // A's page is lost before C comes: B writes A's changes again.
    d.site
        .sql("a.db", "INSERT INTO t VALUES ('a4', 4, 'relayed by b')");
    d.sync("a", "stick", &[]);
    d.sync("b", "stick", &[]);
    let seg = d.mailbox("stick").join("seg");
    let lost = tide_files(&seg);
    assert_eq!(lost.len(), 1, "a's page, which c has not acknowledged yet");
    std::fs::remove_file(&lost[0]).unwrap();
    let relay = d.sync("b", "stick", &[]);
    assert_eq!(
        num(&relay, "changes_sent"),
        1,
        "b writes a's change: {relay}"
    );
    let pages = tide_files(&seg);
    assert_eq!(pages.len(), 1);
    let header: Value = serde_json::from_str(
        &d.ok(
            "c",
            &[
                "--json",
                "bundle",
                "inspect",
                &pages[0].display().to_string(),
            ],
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(header["sender"].as_str(), Some(d.id("b").as_str()));
    let c = d.sync("c", "stick", &[]);
    assert_eq!(num(&c, "changes_received"), 1, "{c}");
    assert_eq!(d.one_note("c", "a4"), "Text(\"relayed by b\")");

    // Two folders: a and b meet at home, b and c in the field.
    d.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a3', 3, 'from a, at home'); UPDATE t SET note = 'edited by a' WHERE id = 'a1';",
    );
    d.site.sql(
        "c.db",
        "INSERT INTO t VALUES ('c1', 1, 'from c, in the field')",
    );
    d.sync("a", "home", &[]);
    d.sync("c", "field", &[]);
    let b_home = d.sync("b", "home", &[]);
    assert!(num(&b_home, "changes_received") >= 1, "{b_home}");
    let b_field = d.sync("b", "field", &[]);
    assert!(num(&b_field, "changes_received") >= 1, "{b_field}");
    assert!(
        num(&b_field, "changes_sent") >= 1,
        "b writes a's changes for c: {b_field}"
    );
    let c_field = d.sync("c", "field", &[]);
    assert!(num(&c_field, "changes_received") >= 1, "{c_field}");
    assert_eq!(
        d.one_note("c", "a3"),
        "Text(\"from a, at home\")",
        "c has a's row from home without visiting home"
    );
    assert_eq!(d.one_note("c", "a1"), "Text(\"edited by a\")");
    d.sync("b", "home", &[]);
    d.sync("a", "home", &[]);
    assert_eq!(d.rows("a"), d.rows("b"));
    assert_eq!(d.rows("a"), d.rows("c"));
    assert_eq!(
        d.one_note("a", "c1"),
        "Text(\"from c, in the field\")",
        "a has c's row without visiting the field"
    );
    // No one visited `field` but b and c, nor `home` but a and b.
    let (ida, idc) = (d.id("a"), d.id("c"));
    assert!(!d.mailbox("field").join(format!("ack/{ida}.tide")).exists());
    assert!(!d.mailbox("home").join(format!("ack/{idc}.tide")).exists());
}

impl Devices {
    /// The note of row `id` of `name`.
    fn one_note(&self, name: &str, id: &str) -> String {
        self.site.one(
            &format!("{name}.db"),
            &format!("SELECT note FROM t WHERE id = '{id}'"),
        )
    }
}

// ---------------------------------------------------------------------------------------
// 3. Files of replicas of another site.
// ---------------------------------------------------------------------------------------

/// A folder holding pages and acknowledgements written by replicas of another site:
/// a visitor from this site exits 0, imports nothing, leaves every one of those files
/// byte for byte, and says they come from replicas it does not know. Its own visit adds
/// only its own files.
#[test]
fn files_of_replicas_from_another_site_are_left_in_place_and_reported() {
    let other = Devices::new(&["x", "y"]);
    std::fs::create_dir(other.path("shared")).unwrap();
    other
        .site
        .sql("x.db", "INSERT INTO t VALUES ('x1', 1, 'x')");
    other.sync("x", "shared", &[]);
    other
        .site
        .sql("y.db", "INSERT INTO t VALUES ('y1', 1, 'y')");
    other.sync("y", "shared", &[]);
    other
        .site
        .sql("x.db", "INSERT INTO t VALUES ('x2', 2, 'x')");
    other.sync("x", "shared", &[]);
    let folder = other.path("shared");
    let root = folder.join("tide-mailbox");
    let before = listing(&root);
    let foreign_pages = tide_files(&root.join("seg"));
    let foreign_acks = tide_files(&root.join("ack"));
    assert!(
        !foreign_pages.is_empty() && foreign_acks.len() == 2,
        "the other site's folder holds pages and two acknowledgements:\n{}",
        shown(&before)
    );

    let d = Devices::new(&["a", "b"]);
    d.site.sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'a')");
    let rows = d.rows("a");
    let folder_arg = folder.display().to_string();

    // Receiving only: nothing at all changes in the folder.
    let v = d.sync("a", &folder_arg, &["--receive-only"]);
    assert_eq!(num(&v, "pages_received"), 0, "{v}");
    assert_eq!(listing(&root), before, "--receive-only wrote to the folder");

    let v = d.sync("a", &folder_arg, &[]);
    assert_eq!(num(&v, "pages_received"), 0, "{v}");
    assert_eq!(num(&v, "changes_received"), 0, "{v}");
    assert_eq!(num(&v, "garbage"), 0, "{v}");
    assert_eq!(
        d.rows("a"),
        rows,
        "nothing of the other site reached a's table"
    );
    let ida = d.id("a");
    let log: Value = serde_json::from_str(&d.log("a")).unwrap();
    for change in log.as_array().unwrap() {
        assert_eq!(
            change["origin"].as_str(),
            Some(ida.as_str()),
            "nothing of the other site reached a's log: {change}"
        );
    }
    let left: BTreeMap<String, String> = v["left"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["file"].as_str().unwrap().to_string(),
                l["why"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for page in &foreign_pages {
        let why = left
            .get(&page.display().to_string())
            .unwrap_or_else(|| panic!("{} is not reported as left: {v}", page.display()));
        assert!(why.contains("does not know"), "{why}");
    }
    for ack in &foreign_acks {
        let why = left
            .get(&ack.display().to_string())
            .unwrap_or_else(|| panic!("{} is not reported as left: {v}", ack.display()));
        assert!(why.contains("does not know"), "{why}");
    }

    // Every file of the other site is still there, byte for byte; what is new is a's.
    let after = listing(&root);
    for (path, bytes) in &before {
        assert_eq!(
            after.get(path),
            Some(bytes),
            "{path} of the other site was changed or removed"
        );
    }
    for (path, bytes) in &after {
        if before.contains_key(path) || bytes.is_none() {
            continue;
        }
        let file = root.join(path);
        let inspect = d.ok(
            "a",
            &["--json", "bundle", "inspect", &file.display().to_string()],
        );
        let header: Value = serde_json::from_str(&inspect.stdout).unwrap();
        assert_eq!(
            header["sender"].as_str(),
            Some(ida.as_str()),
            "a new file {path} that a did not write"
        );
    }
    assert!(after.contains_key(&format!("ack/{ida}.tide")));

    // What a person reads names them.
    let human = d.ok("a", &["sync", &folder_arg]);
    let said = format!("{}{}", human.stdout, human.stderr);
    assert!(
        said.contains("which this one does not know")
            && said.contains("an acknowledgement from a replica this one does not know"),
        "{said}"
    );
    // And the other site still syncs through it.
    other.sync("y", "shared", &[]);
    assert_eq!(other.rows("y"), other.rows("x"));
}

// ---------------------------------------------------------------------------------------
// 4. A page cut short.
// ---------------------------------------------------------------------------------------

/// A page cut short by a yanked stick (renamed, but its end never written) does not hash
/// to its name: `--receive-only` reports it and leaves it, a plain visit deletes it as
/// incomplete, and neither imports anything from it. The author's next visit writes the
/// page again, and the receiver then gets the rows.
#[test]
fn a_page_cut_short_is_deleted_as_incomplete_and_written_again_by_its_author() {
    let d = Devices::new(&["a", "b"]);
    std::fs::create_dir(d.path("stick")).unwrap();
    d.sync("b", "stick", &[]);
    d.sync("a", "stick", &[]);
    d.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a1', 1, 'one'); INSERT INTO t VALUES ('a2', 2, 'two');",
    );
    let sent = d.sync("a", "stick", &[]);
    assert_eq!(num(&sent, "pages_sent"), 1, "{sent}");
    let seg = d.mailbox("stick").join("seg");
    let pages = tide_files(&seg);
    assert_eq!(pages.len(), 1);
    let page = &pages[0];
    // Its header stays readable; its body and signature are cut.
    let len = std::fs::metadata(page).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(page)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let rows = d.rows("b");
    let log = d.log("b");
    let before = listing(&d.mailbox("stick"));
    let ro = d.sync("b", "stick", &["--receive-only"]);
    assert_eq!(num(&ro, "pages_received"), 0, "{ro}");
    assert_eq!(num(&ro, "garbage"), 0, "{ro}");
    assert_eq!(left_files(&ro), vec![file_name(page)], "{ro}");
    assert!(
        ro["left"][0]["why"]
            .as_str()
            .unwrap()
            .contains("does not match its name"),
        "{ro}"
    );
    assert_eq!(listing(&d.mailbox("stick")), before);

    let v = d.sync("b", "stick", &[]);
    assert_eq!(num(&v, "garbage"), 1, "{v}");
    assert_eq!(num(&v, "pages_received"), 0, "{v}");
    assert_eq!(num(&v, "changes_received"), 0, "{v}");
    assert!(!page.exists(), "the cut page is deleted");
    assert_eq!(
        d.rows("b"),
        rows,
        "nothing of the cut page reached b's table"
    );
    assert_eq!(d.log("b"), log, "nothing of the cut page reached b's log");

    // What a person reads.
    d.site
        .sql("a.db", "INSERT INTO t VALUES ('a3', 3, 'three')");
    d.sync("a", "stick", &[]);
    let pages = tide_files(&seg);
    assert_eq!(pages.len(), 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages[0])
        .unwrap()
        .set_len(20)
        .unwrap();
    let human = d.ok("b", &["sync", "stick"]);
    assert!(
        human
            .stderr
            .contains("deleted 1 incomplete file(s) (a write cut short)"),
        "{}",
        human.stderr
    );
    assert_eq!(d.rows("b"), rows);

    // The author writes it again; b gets every row.
    let again = d.sync("a", "stick", &[]);
    assert!(num(&again, "pages_sent") >= 1, "a writes again: {again}");
    let got = d.sync("b", "stick", &[]);
    assert_eq!(num(&got, "changes_received"), 2, "{got}");
    assert_eq!(d.rows("b"), d.rows("a"));
    assert_eq!(d.site.count("b.db", "SELECT count(*) FROM t"), 3);
}

// ---------------------------------------------------------------------------------------
// 5. A read-only stick.
// ---------------------------------------------------------------------------------------

/// Every table's rows, tide's own included: what the database holds, logically.
fn dump(d: &Devices, name: &str) -> String {
    let db = format!("{name}.db");
    let tables: Vec<String> = {
        let conn = rusqlite::Connection::open(d.path(&db)).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    tables
        .iter()
        .map(|t| {
            let mut rows: Vec<String> = d
                .site
                .table(&db, &format!("SELECT * FROM \"{t}\""))
                .lines()
                .map(String::from)
                .collect();
            rows.sort();
            format!("{t}:\n{}\n", rows.join("\n"))
        })
        .collect()
}

/// A folder made read-only, put back as it was when dropped.
enum ReadOnly {
    /// Its permissions taken away (which stop anyone but root).
    Chmod(Vec<(PathBuf, u32)>),
    /// A read-only bind mount of it at another path (root can mount, and a read-only
    /// mount stops root too).
    Mount(PathBuf),
}

impl ReadOnly {
    /// `folder` made read-only, at the path returned; `None`, with why, when neither
    /// works here.
    fn make(folder: &Path) -> Result<(ReadOnly, PathBuf), String> {
        use std::os::unix::fs::PermissionsExt;
        let mut saved = Vec::new();
        let mut dirs = vec![folder.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                if entry.path().is_dir() {
                    dirs.push(entry.path());
                }
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            saved.push((dir, mode));
        }
        let chmod = ReadOnly::Chmod(saved);
        if !writable(&folder.join("tide-mailbox").join("tmp")) {
            return Ok((chmod, folder.to_path_buf()));
        }
        drop(chmod);
        let at = folder.with_extension("ro");
        std::fs::create_dir_all(&at).unwrap();
        let run = |args: &[&str]| {
            std::process::Command::new("mount")
                .args(args)
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
                    }
                })
        };
        let at_s = at.display().to_string();
        run(&["--bind", &folder.display().to_string(), &at_s]).map_err(|e| {
            format!(
                "chmod does not stop this user (root) from writing, and a read-only bind \
                 mount is not possible here either ({e})"
            )
        })?;
        let mounted = ReadOnly::Mount(at.clone());
        run(&["-o", "remount,bind,ro", &at_s]).map_err(|e| {
            format!("chmod does not stop this user (root), and remounting read-only failed ({e})")
        })?;
        if writable(&at.join("tide-mailbox").join("tmp")) {
            return Err("neither chmod nor a read-only bind mount stops writes here".into());
        }
        Ok((mounted, at))
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        match self {
            ReadOnly::Chmod(saved) => {
                for (dir, mode) in saved.iter().rev() {
                    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode));
                }
            }
            ReadOnly::Mount(at) => {
                let done = std::process::Command::new("umount").arg(&*at).status();
                if !done.is_ok_and(|s| s.success()) {
                    let _ = std::process::Command::new("umount")
                        .arg("-l")
                        .arg(&*at)
                        .status();
                }
            }
        }
    }
}

/// Whether a file can be created in `dir` (the probe is removed).
fn writable(dir: &Path) -> bool {
    let probe = dir.join("probe-write");
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// On a read-only stick, a plain sync fails with exit 2, says the folder is read-only
/// and suggests `--receive-only`, and leaves the database as it was; `--receive-only`
/// works there. And on a writable folder, `--receive-only` never changes a thing in
/// it (every file's name, size and bytes compared, a cut page and a half-written
/// temporary file of its own included), while importing what it brings.
#[test]
fn a_read_only_stick_fails_clearly_and_receive_only_never_writes() {
    let d = Devices::new(&["a", "b"]);
    std::fs::create_dir(d.path("stick")).unwrap();
    d.site
        .sql("b.db", "INSERT INTO t VALUES ('b1', 1, 'from b')");
    d.sync("b", "stick", &[]);
    d.sync("a", "stick", &[]);
    d.sync("b", "stick", &[]);
    d.sync("a", "stick", &[]);
    assert_eq!(d.rows("a"), d.rows("b"));

    match ReadOnly::make(&d.path("stick")) {
        Ok((guard, at)) => {
            let at = at.display().to_string();
            let dump_a = dump(&d, "a");
            let r = d.tide("a", &["sync", &at]);
            assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
            assert!(
                r.stderr.contains("read-only") && r.stderr.contains("--receive-only"),
                "the message says the folder is read-only and suggests --receive-only:\n{}",
                r.stderr
            );
            assert_eq!(
                dump(&d, "a"),
                dump_a,
                "the failed sync changed the database"
            );
            let v = d.sync("a", &at, &["--receive-only"]);
            assert_eq!(v["missing"], Value::Array(vec![]), "{v}");
            drop(guard);
        }
        Err(why) => eprintln!(
            "skipping the read-only stick part of this test: {why}; the --receive-only \
             part still runs"
        ),
    }

    // --receive-only on a writable folder: b writes more, in several pages, and a
    // half-written temporary file of a's own lies in tmp/ (a plain visit by a would
    // delete it).
    d.site.sql(
        "b.db",
        "INSERT INTO t VALUES ('b2', 2, 'more'); UPDATE t SET note = 'edited' WHERE id = 'b1';",
    );
    d.sync("b", "stick", &["--page-size", "1K"]);
    d.site
        .sql("b.db", "INSERT INTO t VALUES ('b3', 3, 'and more')");
    d.sync("b", "stick", &[]);
    let root = d.mailbox("stick");
    let ida = d.id("a");
    std::fs::write(
        root.join("tmp")
            .join(format!("{ida}-0123456789abcdef.part")),
        b"half",
    )
    .unwrap();
    let pages = tide_files(&root.join("seg"));
    assert_eq!(pages.len(), 2, "{}", shown(&listing(&root)));
    let before = listing(&root);
    let v = d.sync("a", "stick", &["--receive-only"]);
    assert_eq!(listing(&root), before, "--receive-only changed the folder");
    assert_eq!(num(&v, "changes_received"), 2, "{v}");
    assert_eq!(d.rows("a"), d.rows("b"));
    let human = d.ok("a", &["sync", "stick", "--receive-only"]);
    assert!(
        human.stderr.contains("nothing was written to stick"),
        "{}",
        human.stderr
    );
    assert_eq!(listing(&root), before, "--receive-only changed the folder");

    // A cut page: reported, left, not deleted.
    d.site.sql("b.db", "INSERT INTO t VALUES ('b4', 4, 'cut')");
    let sent = d.sync("b", "stick", &[]);
    assert_eq!(num(&sent, "pages_sent"), 1, "{sent}");
    let newest = tide_files(&root.join("seg"))
        .into_iter()
        .find(|p| !pages.contains(p))
        .unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let before = listing(&root);
    let v = d.sync("a", "stick", &["--receive-only"]);
    assert_eq!(listing(&root), before, "--receive-only changed the folder");
    assert_eq!(num(&v, "garbage"), 0, "{v}");
    assert_eq!(num(&v, "changes_received"), 0, "{v}");
    assert_eq!(v["left"].as_array().unwrap().len(), 1, "{v}");
}

/// On a read-only stick that holds a page this replica lacks, a plain sync exits 2
/// before it imports anything: either the database is left as it was, or what was
/// imported is said, so that a person reading "error: the folder … is read-only" knows
/// what happened.
#[test]
fn a_read_only_stick_with_new_pages_leaves_the_database_or_says_what_it_imported() {
    let d = Devices::new(&["a", "b"]);
    std::fs::create_dir(d.path("stick")).unwrap();
    d.sync("a", "stick", &[]);
    d.site
        .sql("b.db", "INSERT INTO t VALUES ('b1', 1, 'from b')");
    d.sync("b", "stick", &[]);
    let (guard, at) = match ReadOnly::make(&d.path("stick")) {
        Ok(made) => made,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let at = at.display().to_string();
    let dump_a = dump(&d, "a");
    let r = d.tide("a", &["sync", &at]);
    drop(guard);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--receive-only"), "{}", r.stderr);
    let unchanged = dump(&d, "a") == dump_a;
    let says = r.stderr.contains("received 1 page");
    assert!(
        unchanged || says,
        "a imported b's page, yet its failure does not say so:\n{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 6. A one-way link.
// ---------------------------------------------------------------------------------------

/// The highest seq `name` holds of its own changes.
fn own_seq(d: &Devices, name: &str) -> u64 {
    let r = d.ok(name, &["--json", "log", "--origin", name, "--limit", "1"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    v[0]["seq"].as_u64().unwrap_or(0)
}

/// A data diode: `low` drops into an outbox with `--send-only`; a diode copies some
/// drops' pages (and low's acknowledgement) to an inbox, loses others entirely, and in
/// one drop loses the pages but passes the acknowledgement; `high` reads the inbox with
/// `--receive-only`. Each change goes out in two consecutive drops, so one lost drop
/// loses nothing; two lost in a row leave a gap that high reports exactly (`missing from
/// low: changes A-B`) until the tenth drop, a full refresh, fills it. `--receive-only`
/// never writes to the inbox.
#[test]
fn a_one_way_link_reports_exactly_what_is_missing_until_a_refresh_fills_it() {
    let d = Devices::new(&["low", "high"]);
    for f in ["outbox", "inbox"] {
        std::fs::create_dir(d.path(f)).unwrap();
    }
    let idlow = d.id("low");
    let out_root = d.mailbox("outbox");
    let in_root = d.mailbox("inbox");
    let mut copied_ever: BTreeSet<String> = BTreeSet::new();
    // Drop i carries the changes sealed at drops i-1 and i: seqs (seq[i-2], seq[i]].
    let mut seq = vec![0u64];
    let mut row = 0;
    for drop in 1..=13u64 {
        // Two changes per drop (`status` seals what was written so far).
        for _ in 0..2 {
            row += 1;
            d.site.sql(
                "low.db",
                &format!("INSERT INTO t VALUES ('r{row:03}', {row}, 'drop {drop}')"),
            );
            d.ok("low", &["status"]);
        }
        let before: BTreeSet<PathBuf> = tide_files(&out_root.join("seg")).into_iter().collect();
        let sent = d.sync("low", "outbox", &["--send-only"]);
        assert_eq!(sent["left"], Value::Array(vec![]), "{sent}");
        seq.push(own_seq(&d, "low"));
        let new: Vec<PathBuf> = tide_files(&out_root.join("seg"))
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        let first = seq[(drop as usize).saturating_sub(2)] + 1;
        let expected = if drop % 10 == 0 {
            seq[drop as usize]
        } else {
            seq[drop as usize] + 1 - first
        };
        assert_eq!(
            num(&sent, "changes_sent"),
            expected,
            "drop {drop} carries the changes of this drop and the one before (all of them \
             on every tenth): {sent}"
        );

        // The diode: drops 3 and 6 are lost; drop 7 loses its pages but not the
        // acknowledgement; every other drop passes whole.
        let pass_pages = !matches!(drop, 3 | 6 | 7);
        let pass_ack = !matches!(drop, 3 | 6);
        if pass_pages || pass_ack {
            for sub in ["seg", "ack"] {
                std::fs::create_dir_all(in_root.join(sub)).unwrap();
            }
            std::fs::write(
                in_root.join("VERSION"),
                std::fs::read(out_root.join("VERSION")).unwrap(),
            )
            .unwrap();
        }
        if pass_pages {
            for p in &new {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                std::fs::copy(p, in_root.join("seg").join(&name)).unwrap();
                copied_ever.insert(name);
            }
        }
        if pass_ack {
            let ack = format!("{idlow}.tide");
            std::fs::copy(
                out_root.join("ack").join(&ack),
                in_root.join("ack").join(&ack),
            )
            .unwrap();
        }

        let inbox_before = listing(&in_root);
        let got = d.sync("high", "inbox", &["--receive-only"]);
        assert_eq!(
            listing(&in_root),
            inbox_before,
            "drop {drop}: --receive-only wrote to the inbox"
        );
        assert_eq!(got["left"], Value::Array(vec![]), "drop {drop}: {got}");
        let gap: Vec<(u64, u64)> = match drop {
            // Drop 7's acknowledgement says low holds up to seq[7]; high holds seq[5].
            7 => vec![(seq[5] + 1, seq[7])],
            // Drops 8 and 9 carry (seq[6], seq[8]] and (seq[7], seq[9]]: drop 6's
            // changes are still missing, until drop 10 carries everything.
            8 | 9 => vec![(seq[5] + 1, seq[6])],
            _ => vec![],
        };
        let expected: BTreeMap<String, Vec<(u64, u64)>> = if gap.is_empty() {
            BTreeMap::new()
        } else {
            BTreeMap::from([(idlow.clone(), gap)])
        };
        assert_eq!(
            missing(&got),
            expected,
            "drop {drop}: what high reports missing: {got}"
        );
        if drop == 8 {
            let human = d.ok("high", &["sync", "inbox", "--receive-only"]);
            assert!(
                human.stderr.contains(&format!(
                    "missing from low: changes {}-{}",
                    seq[5] + 1,
                    seq[6]
                )),
                "{}",
                human.stderr
            );
            assert_eq!(listing(&in_root), inbox_before);
        }
        let applied = d.site.count("high.db", "SELECT count(*) FROM t") as u64;
        if pass_pages && expected.is_empty() {
            assert_eq!(
                d.rows("high"),
                d.rows("low"),
                "drop {drop}: high has everything low wrote"
            );
        } else {
            assert!(
                applied < 2 * drop,
                "drop {drop}: high cannot have everything yet"
            );
        }
    }
    // The sender never deletes, never reads; the inbox holds only what the diode copied.
    assert_eq!(
        tide_files(&in_root.join("seg"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect::<BTreeSet<_>>(),
        copied_ever
    );
    assert_eq!(d.rows("high"), d.rows("low"));
}

// ---------------------------------------------------------------------------------------
// 7. A pipe.
// ---------------------------------------------------------------------------------------

/// `tide sync --command 'tide --db b.db sync -'` exchanges both ways over the pipe:
/// a and b show the same table and the same conflicts. With a far end that fails (its
/// database does not exist) the near end exits non-zero, names the command, and leaves
/// its database as it was.
#[test]
fn a_pipe_to_another_tide_converges_both_ways_and_a_failing_far_end_changes_nothing() {
    let d = Devices::new(&["a", "b"]);
    d.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a1', 1, 'from a'); INSERT INTO t VALUES ('s', 0, 'start');",
    );
    d.site
        .sql("b.db", "INSERT INTO t VALUES ('b1', 1, 'from b')");
    let tide = env!("CARGO_BIN_EXE_tide");
    let far = format!("'{tide}' --db b.db sync -");
    let v: Value =
        serde_json::from_str(&d.ok("a", &["--json", "sync", "--command", &far]).stdout).unwrap();
    assert_eq!(num(&v, "changes_received"), 1, "{v}");
    assert_eq!(num(&v, "changes_sent"), 1, "{v}");
    assert_eq!(d.rows("a"), d.rows("b"));

    // Concurrent edits of one cell, and more rows on each side, in several pages.
    d.site
        .sql("a.db", "UPDATE t SET note = 'a says' WHERE id = 's'");
    d.site
        .sql("b.db", "UPDATE t SET note = 'b says' WHERE id = 's'");
    for i in 0..20 {
        d.site
            .sql("a.db", &format!("INSERT INTO t VALUES ('a-{i}', {i}, 'x')"));
        d.site
            .sql("b.db", &format!("INSERT INTO t VALUES ('b-{i}', {i}, 'y')"));
    }
    let human = d.ok("a", &["sync", "--page-size", "1K", "--command", &far]);
    assert!(human.stderr.contains("received"), "{}", human.stderr);
    assert_eq!(d.rows("a"), d.rows("b"));
    assert_eq!(d.conflicts("a"), d.conflicts("b"));
    assert_eq!(d.conflicts("a").as_array().unwrap().len(), 1);
    let again: Value =
        serde_json::from_str(&d.ok("a", &["--json", "sync", "--command", &far]).stdout).unwrap();
    assert_eq!(
        num(&again, "pages_received") + num(&again, "pages_sent"),
        0,
        "{again}"
    );

    // A far end that fails.
    d.site
        .sql("a.db", "INSERT INTO t VALUES ('a2', 2, 'not sent')");
    d.ok("a", &["status"]);
    let dump_a = dump(&d, "a");
    let broken = format!("'{tide}' --db nowhere.db sync -");
    let r = d.site.tide(&["--db", "a.db", "sync", "--command", &broken]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_ne!(r.code, 101, "a panic: {}", r.stderr);
    assert!(
        r.stderr.contains(&broken),
        "the message names the command:\n{}",
        r.stderr
    );
    assert!(!d.path("nowhere.db").exists());
    assert_eq!(
        dump(&d, "a"),
        dump_a,
        "the failed exchange changed a's database"
    );
}

// ---------------------------------------------------------------------------------------
// 8. A tampered page.
// ---------------------------------------------------------------------------------------

/// `page` with one byte of its body flipped, renamed to the BLAKE3 of its new content
/// (so the name check passes); returns the new path.
fn tamper(page: &Path) -> PathBuf {
    let mut bytes = std::fs::read(page).unwrap();
    let header_len = u32::from_be_bytes(bytes[10..14].try_into().unwrap()) as usize;
    let body = 14 + header_len..bytes.len() - 64;
    assert!(body.len() > 2, "a page has a body");
    let at = body.start + body.len() / 2;
    bytes[at] ^= 0x5a;
    let renamed = page.with_file_name(format!("{}.tide", blake3::hash(&bytes).to_hex()));
    std::fs::write(&renamed, &bytes).unwrap();
    std::fs::remove_file(page).unwrap();
    renamed
}

/// A page with one byte of its body flipped and renamed to its new hash: the receiver
/// refuses it (the signature does not hold), imports nothing from it, leaves its table
/// and log as they were, deletes it as damaged (it is not what its author wrote) and
/// exits 0 saying so (never an internal error).
#[test]
fn a_tampered_page_renamed_to_its_hash_is_refused_and_nothing_of_it_is_applied() {
    let d = Devices::new(&["a", "b"]);
    std::fs::create_dir(d.path("stick")).unwrap();
    d.sync("b", "stick", &[]);
    d.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a1', 1, 'one'); INSERT INTO t VALUES ('a2', 2, 'two');",
    );
    d.sync("a", "stick", &[]);
    let pages = tide_files(&d.mailbox("stick").join("seg"));
    assert_eq!(pages.len(), 1);
    let tampered = tamper(&pages[0]);

    let rows = d.rows("b");
    let log = d.log("b");
    let r = d.tide("b", &["--json", "sync", "stick"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(num(&v, "pages_received"), 0, "{v}");
    assert_eq!(num(&v, "changes_received"), 0, "{v}");
    assert_eq!(num(&v, "changes_applied"), 0, "{v}");
    assert_eq!(num(&v, "garbage"), 1, "the damaged page is deleted: {v}");
    assert!(!tampered.exists(), "the tampered page is gone");
    assert_eq!(
        d.rows("b"),
        rows,
        "nothing of the tampered page was applied"
    );
    assert_eq!(d.log("b"), log, "nothing of the tampered page was stored");
}

/// A tampered page left in the folder does not stop the changes it claims to carry from
/// being delivered: once the receiver has refused it, the author's next visit writes
/// them again (or someone deletes the refused page), and the receiver gets the rows.
#[test]
fn a_tampered_page_does_not_stop_its_changes_from_being_delivered() {
    let d = Devices::new(&["a", "b"]);
    std::fs::create_dir(d.path("stick")).unwrap();
    d.sync("b", "stick", &[]);
    d.site.sql(
        "a.db",
        "INSERT INTO t VALUES ('a1', 1, 'one'); INSERT INTO t VALUES ('a2', 2, 'two');",
    );
    d.sync("a", "stick", &[]);
    let pages = tide_files(&d.mailbox("stick").join("seg"));
    tamper(&pages[0]);
    d.sync("b", "stick", &[]);
    for _ in 0..3 {
        d.sync("a", "stick", &[]);
        d.sync("b", "stick", &[]);
    }
    assert_eq!(
        d.rows("b"),
        d.rows("a"),
        "b never got a's rows:\n{}",
        d.recent()
    );
}

/// A pipe whose far end is this same replica (`--command` pointing back at its own
/// database, or a command that only echoes) exchanges nothing; the exchange requires the
/// other side to be a known peer (SPEC.md §4, step 2), so it must not end in a success
/// that reads "nothing new either way".
#[test]
fn a_pipe_back_to_the_same_replica_is_not_a_successful_sync() {
    let d = Devices::new(&["a", "b"]);
    d.site
        .sql("a.db", "INSERT INTO t VALUES ('a1', 1, 'from a')");
    let tide = env!("CARGO_BIN_EXE_tide");
    for far in [format!("'{tide}' --db a.db sync -"), "cat".to_string()] {
        let r = d.site.tide(&["--db", "a.db", "sync", "--command", &far]);
        assert_ne!(
            r.code, 0,
            "--command {far:?} reaches a itself, yet the sync succeeded:\n{}{}",
            r.stdout, r.stderr
        );
    }
}
