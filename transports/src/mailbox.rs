//! A folder as a mailbox (SPEC.md §3): a USB stick carried around a site, a shared or
//! network drive. Any number of replicas visit it, each at its own time, with no lock:
//! every file has one author, is written under a temporary name and renamed once whole,
//! is named by the hash of its content, and is deleted only when every addressee's
//! signed acknowledgement proves it was delivered. The folder is a cache: every change
//! in it also lives in the log of the replica that wrote it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tide_bundle::{BundleError, Header, WriteOptions};
use tide_core::{Card, Replica, ReplicaId, VersionVector};

use crate::error::{Result, TransportError};
use crate::pages::{Outbox, covers, raise};
use crate::report::SyncReport;
use crate::{Carrier, DEFAULT_PAGE_BYTES};

/// The folder a mailbox lives in, inside the folder given.
pub const DIR_NAME: &str = "tide-mailbox";

/// What `VERSION` says.
const VERSION_TEXT: &str = "tide mailbox 1\n";

/// Another replica's files in `tmp/` older than this are garbage from a cut write.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Which way data goes through the folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read what arrived, write what others lack, acknowledge, prune.
    Both,
    /// A one-way link's sending side: nothing ever comes back (SPEC.md §3.4).
    SendOnly {
        /// Each change goes out in this many consecutive visits.
        repeat: u32,
        /// Every this many visits, everything above the acknowledgements actually held.
        refresh_every: u32,
    },
    /// A one-way link's receiving side: never writes to the folder.
    ReceiveOnly,
}

impl Mode {
    /// [`Mode::SendOnly`] with the defaults: every change in two consecutive drops, a
    /// full refresh every tenth.
    pub const SEND_ONLY: Mode = Mode::SendOnly {
        repeat: 2,
        refresh_every: 10,
    };
}

/// How to visit a mailbox.
#[derive(Clone, Debug)]
pub struct MailboxOptions {
    /// Which way data goes.
    pub mode: Mode,
    /// Write pages addressed and encrypted to each peer instead of shared ones.
    pub encrypt: bool,
    /// About how many bytes of changes a page holds.
    pub page_bytes: u64,
}

impl Default for MailboxOptions {
    fn default() -> Self {
        MailboxOptions {
            mode: Mode::Both,
            encrypt: false,
            page_bytes: DEFAULT_PAGE_BYTES,
        }
    }
}

/// A mailbox in a folder.
pub struct Mailbox {
    folder: PathBuf,
    root: PathBuf,
    options: MailboxOptions,
}

/// A page in the folder, as its header describes it.
struct Listed {
    path: PathBuf,
    header: Header,
}

impl Mailbox {
    /// The mailbox in `folder` (created at the first visit that writes).
    pub fn new(folder: &Path, options: MailboxOptions) -> Mailbox {
        Mailbox {
            folder: folder.to_path_buf(),
            root: folder.join(DIR_NAME),
            options,
        }
    }

    /// The mailbox folder itself (`FOLDER/tide-mailbox`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks the folder and the mailbox's version; creates the layout when `write`.
    fn prepare(&self, write: bool) -> Result<()> {
        if !self.folder.is_dir() {
            return Err(TransportError::NoFolder(self.folder.clone()));
        }
        let version = self.root.join("VERSION");
        match fs::read_to_string(&version) {
            Ok(found) if found == VERSION_TEXT => {}
            // Cut short (a stick pulled out while it was written): written again.
            Ok(found) if write && VERSION_TEXT.starts_with(&found) => {
                self.write_named(&self.root, "VERSION", "mailbox", |out| {
                    out.write_all(VERSION_TEXT.as_bytes())
                        .map_err(|e| TransportError::io(&version, e, 0))
                })?;
            }
            Ok(found) => {
                return Err(TransportError::MailboxVersion {
                    path: version,
                    found: found.trim_end().to_string(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !write {
                    return Ok(());
                }
                for sub in ["seg", "to", "ack", "tmp"] {
                    let dir = self.root.join(sub);
                    fs::create_dir_all(&dir).map_err(|e| TransportError::io(&dir, e, 0))?;
                }
                self.write_named(&self.root, "VERSION", "mailbox", |out| {
                    out.write_all(VERSION_TEXT.as_bytes())
                        .map_err(|e| TransportError::io(&version, e, 0))
                })?;
            }
            Err(e) => return Err(TransportError::io(&version, e, 0)),
        }
        if write {
            for sub in ["seg", "to", "ack", "tmp"] {
                let dir = self.root.join(sub);
                fs::create_dir_all(&dir).map_err(|e| TransportError::io(&dir, e, 0))?;
            }
            // A folder that cannot be written is found before anything is imported, so
            // a failed visit leaves the replica as it was.
            let probe = self
                .root
                .join("tmp")
                .join(format!("probe-{}.part", hex(&random_bytes())));
            File::create(&probe).map_err(|e| TransportError::io(&self.folder, e, 0))?;
            let _ = fs::remove_file(&probe);
        }
        Ok(())
    }

    /// Writes a file whole or not at all (SPEC.md §3.2): into `tmp/`, flushed to disk,
    /// renamed into `dir` under `name` (or, when `name` is empty, under the hash of its
    /// content), and the folder flushed. Returns the final path and its size.
    fn write_named<T>(
        &self,
        dir: &Path,
        name: &str,
        author: &str,
        write: impl FnOnce(&mut dyn Write) -> Result<T>,
    ) -> Result<(PathBuf, u64, T)> {
        let tmp_dir = self.root.join("tmp");
        let tmp = tmp_dir.join(format!("{author}-{}.part", hex(&random_bytes())));
        let file = File::create(&tmp).map_err(|e| TransportError::io(&tmp_dir, e, 0))?;
        let mut out = Hashing {
            inner: BufWriter::new(file),
            hasher: blake3::Hasher::new(),
            bytes: 0,
        };
        let written = (|| {
            let value = write(&mut out)?;
            out.flush()
                .map_err(|e| TransportError::io(&tmp, e, out.bytes))?;
            let file = out.inner.get_ref();
            file.sync_all()
                .map_err(|e| TransportError::io(&tmp, e, out.bytes))?;
            Ok(value)
        })();
        let value = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(match e {
                    TransportError::Bundle(BundleError::Io(io)) => {
                        TransportError::io(&self.folder, io, out.bytes)
                    }
                    other => other,
                });
            }
        };
        let name = if name.is_empty() {
            format!("{}.tide", out.hasher.finalize().to_hex())
        } else {
            name.to_string()
        };
        let path = dir.join(name);
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(TransportError::io(dir, e, 0));
        }
        // The rename is durable once the folder is (not every file system can say).
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok((path, out.bytes, value))
    }

    /// Removes this replica's unfinished files, and anyone's older than a day.
    fn clean_tmp(&self, me: &str) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
            if name.starts_with(me) || stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Every acknowledgement in the folder from a known peer, verified (and recorded
    /// with the replica); the others are reported.
    fn read_acks(
        &self,
        replica: &mut Replica,
        peers: &[Card],
        report: &mut SyncReport,
    ) -> Result<BTreeMap<ReplicaId, VersionVector>> {
        let mut out = BTreeMap::new();
        let me = replica.id()?;
        let known = replica.known_cards()?;
        for path in files(&self.root.join("ack"), ".tide")? {
            let named = stem_id(&path);
            if named == Some(me) {
                continue;
            }
            if !named.is_some_and(|id| peers.iter().any(|p| p.id == id)) {
                report.left.push((
                    shown(&path),
                    "an acknowledgement from a replica this one does not know".into(),
                ));
                continue;
            }
            let header = File::open(&path)
                .map_err(BundleError::Io)
                .and_then(|mut f| tide_bundle::verify_bundle(&mut f, &known));
            match header {
                Ok(h) if Some(h.sender) == named && h.changes == 0 => {
                    replica.record_peer_ack(h.sender, &h.ack)?;
                    out.insert(h.sender, h.ack);
                }
                Ok(_) => report.left.push((
                    shown(&path),
                    "not an acknowledgement by the replica it names".into(),
                )),
                Err(e) => report.left.push((shown(&path), e.to_string())),
            }
        }
        Ok(out)
    }

    /// The pages in `dir`, with their headers; unreadable ones are reported (and deleted
    /// as garbage when `tidy`).
    fn list(&self, dir: &Path, tidy: bool, report: &mut SyncReport) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for path in files(dir, ".tide")? {
            let header = File::open(&path)
                .map_err(BundleError::Io)
                .and_then(|mut f| tide_bundle::read_header(&mut f, 0).map(|(h, _)| h));
            match header {
                Ok(header) => out.push(Listed { path, header }),
                // Another tide's format: not damage, someone else's business.
                Err(
                    e @ (BundleError::UnsupportedVersion(_)
                    | BundleError::UnknownFlags(_)
                    | BundleError::UnknownCritical(_)),
                ) => report.left.push((shown(&path), e.to_string())),
                Err(e) => self.garbage(&path, &e.to_string(), tidy, report),
            }
        }
        out.sort_by_key(|l| l.header.created_ms);
        Ok(out)
    }

    /// A file no one can use (cut short, damaged): deleted when `tidy`, else reported.
    fn garbage(&self, path: &Path, why: &str, tidy: bool, report: &mut SyncReport) {
        if tidy && fs::remove_file(path).is_ok() {
            report.garbage += 1;
        } else {
            report.left.push((shown(path), why.to_string()));
        }
    }

    /// Imports every page this replica lacks something of (SPEC.md §3.3, step 2).
    fn import_all(&self, replica: &mut Replica, tidy: bool, report: &mut SyncReport) -> Result<()> {
        let me = replica.id()?;
        let peers = replica.peers()?;
        let mut pages = self.list(&self.root.join("seg"), tidy, report)?;
        pages.extend(self.list(&self.root.join("to").join(me.to_hex()), tidy, report)?);
        pages.sort_by_key(|l| l.header.created_ms);
        for Listed { path, header } in pages {
            if header.changes == 0 || covers(&replica.version_vector()?, &header.provides) {
                continue;
            }
            if header.sender != me && !peers.iter().any(|p| p.id == header.sender) {
                report.left.push((
                    shown(&path),
                    format!(
                        "from replica {}, which this one does not know",
                        header.sender.short()
                    ),
                ));
                continue;
            }
            if !hashes_to_its_name(&path)? {
                self.garbage(
                    &path,
                    "does not match its name (a write cut short)",
                    tidy,
                    report,
                );
                continue;
            }
            let imported = File::open(&path)
                .map_err(BundleError::Io)
                .and_then(|mut f| tide_bundle::import(replica, &mut f, None));
            match imported {
                Ok(i) => report.received(&i.report),
                // A change inside that does not verify: the page is not what its
                // signer's peers wrote, and goes like any damaged page.
                Err(BundleError::Core(e @ tide_core::Error::Rejected { .. })) => {
                    self.garbage(&path, &format!("damaged: {e}"), tidy, report)
                }
                Err(BundleError::Core(e)) => return Err(e.into()),
                // Not for this replica to read: someone else's business.
                Err(
                    e @ (BundleError::UnknownSender(_)
                    | BundleError::NotForThisReplica { .. }
                    | BundleError::NoMatchingKey
                    | BundleError::NeedKey
                    | BundleError::UnsupportedVersion(_)
                    | BundleError::UnknownCritical(_)
                    | BundleError::UnknownFlags(_)),
                ) => report.left.push((shown(&path), e.to_string())),
                // A known sender's page that does not verify is not what it wrote: it
                // goes, so that it no longer stands for the changes it names (the
                // author writes them again).
                Err(BundleError::Io(e)) => return Err(TransportError::io(&path, e, 0)),
                Err(e) => self.garbage(&path, &format!("damaged: {e}"), tidy, report),
            }
        }
        Ok(())
    }

    /// What each addressee is known to hold (SPEC.md §3.3, step 3).
    fn addressees(&self, replica: &Replica) -> Result<Vec<(Card, VersionVector)>> {
        replica
            .peers()?
            .into_iter()
            .map(|p| {
                let acked = replica.peer_ack(p.id)?;
                Ok((p, acked))
            })
            .collect()
    }

    /// Writes the pages of what some addressee lacks and no page in the folder carries.
    fn write_pages(&self, replica: &mut Replica, report: &mut SyncReport) -> Result<()> {
        let addressees = self.addressees(replica)?;
        if self.options.encrypt {
            for (peer, acked) in &addressees {
                let dir = self.root.join("to").join(peer.id.to_hex());
                fs::create_dir_all(&dir).map_err(|e| TransportError::io(&dir, e, 0))?;
                let pages = self.list(&dir, true, report)?;
                let options = WriteOptions {
                    recipient: Some(peer.id),
                    encrypt_to: vec![peer.box_key],
                    ..WriteOptions::default()
                };
                self.write_outbox(
                    replica,
                    &dir,
                    floor(std::slice::from_ref(acked), &pages),
                    &options,
                    report,
                )?;
            }
            return Ok(());
        }
        if addressees.is_empty() {
            return Ok(());
        }
        let dir = self.root.join("seg");
        // Only the pages of known replicas stand for the changes they name: a stranger's
        // header, unverifiable, must not stop anyone from writing them.
        let me = replica.id()?;
        let pages: Vec<Listed> = self
            .list(&dir, true, report)?
            .into_iter()
            .filter(|p| {
                p.header.sender == me || addressees.iter().any(|(c, _)| c.id == p.header.sender)
            })
            .collect();
        let acked: Vec<VersionVector> = addressees.into_iter().map(|(_, v)| v).collect();
        self.write_outbox(
            replica,
            &dir,
            floor(&acked, &pages),
            &WriteOptions::default(),
            report,
        )
    }

    /// Writes pages of everything above `since` into `dir`.
    fn write_outbox(
        &self,
        replica: &mut Replica,
        dir: &Path,
        since: VersionVector,
        options: &WriteOptions,
        report: &mut SyncReport,
    ) -> Result<()> {
        let me = replica.id()?.to_hex();
        let mut outbox = Outbox::new(since, self.options.page_bytes);
        while outbox.has_more(replica)? {
            let (path, bytes, page) =
                self.write_named(dir, "", &me, |out| outbox.next_page(replica, options, out))?;
            if page.page.changes == 0 {
                let _ = fs::remove_file(&path);
                break;
            }
            report.pages_sent += 1;
            report.changes_sent += page.page.changes;
            report.bytes_sent += bytes;
        }
        Ok(())
    }

    /// Replaces this replica's acknowledgement (SPEC.md §3.3, step 4).
    fn acknowledge(&self, replica: &mut Replica, report: &mut SyncReport) -> Result<()> {
        let me = replica.id()?.to_hex();
        let (_, bytes, _) =
            self.write_named(&self.root.join("ack"), &format!("{me}.tide"), &me, |out| {
                Ok(tide_bundle::write_ack(
                    replica,
                    &WriteOptions::default(),
                    out,
                )?)
            })?;
        report.bytes_sent += bytes;
        Ok(())
    }

    /// Deletes every page each addressee has acknowledged (SPEC.md §3.3, step 5).
    fn prune(&self, replica: &Replica, report: &mut SyncReport) -> Result<()> {
        let addressees = self.addressees(replica)?;
        let mine = replica.version_vector()?;
        let everyone = |provides: &VersionVector| {
            covers(&mine, provides) && addressees.iter().all(|(_, v)| covers(v, provides))
        };
        for page in self.list(&self.root.join("seg"), true, report)? {
            if everyone(&page.header.provides) && fs::remove_file(&page.path).is_ok() {
                report.pruned += 1;
            }
        }
        for entry in fs::read_dir(self.root.join("to"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Some(id) = stem_id(&entry.path()) else {
                continue;
            };
            let acked = if id == replica.id()? {
                mine.clone()
            } else {
                replica.peer_ack(id)?
            };
            for page in self.list(&entry.path(), true, report)? {
                if covers(&acked, &page.header.provides) && fs::remove_file(&page.path).is_ok() {
                    report.pruned += 1;
                }
            }
        }
        Ok(())
    }

    /// A one-way link's sending side (SPEC.md §3.4): the changes above what was written
    /// `repeat` visits ago, or, every `refresh_every` visits, above what peers actually
    /// acknowledged.
    fn send_only(
        &self,
        replica: &mut Replica,
        repeat: u32,
        refresh_every: u32,
        report: &mut SyncReport,
    ) -> Result<()> {
        let key = format!("mailbox-send {}", self.root.display());
        let mut state = SendState::decode(&replica.transport_state(&key)?.unwrap_or_default());
        state.visits += 1;
        let acked: Vec<VersionVector> = self
            .addressees(replica)?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mut since = floor(&acked, &[]);
        let refresh = refresh_every > 0 && state.visits.is_multiple_of(u64::from(refresh_every));
        if !refresh && state.sent.len() >= repeat.max(1) as usize {
            raise(
                &mut since,
                &state.sent[state.sent.len() - repeat.max(1) as usize],
            );
        }
        if self.options.encrypt {
            for (peer, acked) in self.addressees(replica)? {
                let mut since = since.clone();
                raise(&mut since, &acked);
                let dir = self.root.join("to").join(peer.id.to_hex());
                fs::create_dir_all(&dir).map_err(|e| TransportError::io(&dir, e, 0))?;
                let options = WriteOptions {
                    recipient: Some(peer.id),
                    encrypt_to: vec![peer.box_key],
                    ..WriteOptions::default()
                };
                self.write_outbox(replica, &dir, since, &options, report)?;
            }
        } else {
            let dir = self.root.join("seg");
            self.write_outbox(replica, &dir, since, &WriteOptions::default(), report)?;
        }
        state.sent.push(replica.version_vector()?);
        let keep = repeat.max(1) as usize;
        if state.sent.len() > keep {
            state.sent.drain(..state.sent.len() - keep);
        }
        replica.set_transport_state(&key, &state.encode())?;
        Ok(())
    }
}

impl Carrier for Mailbox {
    fn sync(&mut self, replica: &mut Replica) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let me = replica.id()?;
        match self.options.mode {
            Mode::ReceiveOnly => {
                self.prepare(false)?;
                let peers = replica.peers()?;
                let acks = self.read_acks(replica, &peers, &mut report)?;
                self.import_all(replica, false, &mut report)?;
                let mut known = VersionVector::new();
                for vector in acks.values() {
                    raise(&mut known, vector);
                }
                report.missing = replica.missing(&known)?;
            }
            Mode::SendOnly {
                repeat,
                refresh_every,
            } => {
                self.prepare(true)?;
                self.clean_tmp(&me.to_hex());
                self.send_only(replica, repeat, refresh_every, &mut report)?;
                self.acknowledge(replica, &mut report)?;
            }
            Mode::Both => {
                self.prepare(true)?;
                self.clean_tmp(&me.to_hex());
                let peers = replica.peers()?;
                let acks = self.read_acks(replica, &peers, &mut report)?;
                self.import_all(replica, true, &mut report)?;
                self.write_pages(replica, &mut report)?;
                self.acknowledge(replica, &mut report)?;
                self.prune(replica, &mut report)?;
                let mut known = VersionVector::new();
                for vector in acks.values() {
                    raise(&mut known, vector);
                }
                report.missing = replica.missing(&known)?;
            }
        }
        Ok(report)
    }
}

/// Per origin, the lowest seq any of `acked` holds, raised over every run of seqs the
/// `pages` already carry from there (SPEC.md §3.3, step 3).
fn floor(acked: &[VersionVector], pages: &[Listed]) -> VersionVector {
    let mut origins: Vec<ReplicaId> = acked.iter().flat_map(|v| v.keys().copied()).collect();
    origins.extend(pages.iter().flat_map(|p| p.header.provides.keys().copied()));
    origins.sort();
    origins.dedup();
    let mut out = VersionVector::new();
    for o in origins {
        let mut at = acked
            .iter()
            .map(|v| v.get(&o).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        // Runs (requires, provides] carried for `o`, joined from `at` up.
        let mut runs: Vec<(u64, u64)> = pages
            .iter()
            .filter_map(|p| {
                let last = *p.header.provides.get(&o)?;
                Some((p.header.requires.get(&o).copied().unwrap_or(0), last))
            })
            .collect();
        runs.sort();
        for (from, to) in runs {
            if from <= at && to > at {
                at = to;
            }
        }
        if at > 0 {
            out.insert(o, at);
        }
    }
    out
}

/// What a one-way sender remembers: how many visits, and the vector after each of the
/// last few. Kept as text: `visits` on the first line, then one vector per line as
/// `id=seq` pairs.
#[derive(Default)]
struct SendState {
    visits: u64,
    sent: Vec<VersionVector>,
}

impl SendState {
    fn decode(bytes: &[u8]) -> SendState {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.lines();
        let visits = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let sent = lines
            .map(|line| {
                line.split_whitespace()
                    .filter_map(|pair| {
                        let (id, seq) = pair.split_once('=')?;
                        Some((ReplicaId::parse_hex(id).ok()?, seq.parse().ok()?))
                    })
                    .collect()
            })
            .collect();
        SendState { visits, sent }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!("{}\n", self.visits);
        for v in &self.sent {
            let pairs: Vec<String> = v
                .iter()
                .map(|(id, s)| format!("{}={s}", id.to_hex()))
                .collect();
            out.push_str(&pairs.join(" "));
            out.push('\n');
        }
        out.into_bytes()
    }
}

/// A writer that hashes and counts what passes.
struct Hashing<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The files in `dir` ending in `suffix`, sorted (none when `dir` does not exist).
fn files(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TransportError::io(dir, e, 0)),
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    Ok(out)
}

/// The replica id a file or folder is named after (`<32 hex>` or `<32 hex>.tide`).
fn stem_id(path: &Path) -> Option<ReplicaId> {
    let name = path.file_name()?.to_str()?;
    ReplicaId::parse_hex(name.strip_suffix(".tide").unwrap_or(name)).ok()
}

/// Whether the file's BLAKE3 is the hex in its name.
fn hashes_to_its_name(path: &Path) -> Result<bool> {
    let mut file = File::open(path).map_err(|e| TransportError::io(path, e, 0))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| TransportError::io(path, e, 0))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let want = format!("{}.tide", hasher.finalize().to_hex());
    Ok(path
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == want))
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn random_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system gives random bytes");
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
