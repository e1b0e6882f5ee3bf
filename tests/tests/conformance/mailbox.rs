//! The folder mailbox: the sender visits the folder, the fault is done to the pages it
//! wrote there, the receiver visits. Acknowledgements travel with the next visits.
//! One-way: the sender writes drops into an outbox with `--send-only`; a diode copies
//! the drops it delivers into an inbox, which the receiver reads with
//! `--receive-only` and never writes to.

use std::path::{Path, PathBuf};

use tide_tests::Cluster;
use tide_transports::Carrier;
use tide_transports::mailbox::{Mailbox, MailboxOptions, Mode};

use crate::{Fault, Link, Outcome, PAGE};

pub struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    pub fn new() -> Folder {
        Folder {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn mailbox(&self, name: &str, mode: Mode) -> Mailbox {
        let folder = self.dir.path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        Mailbox::new(
            &folder,
            MailboxOptions {
                mode,
                page_bytes: PAGE,
                ..MailboxOptions::default()
            },
        )
    }
}

/// The pages in `seg/`, oldest first (a visit writes them in causal order).
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<(u64, u64, PathBuf)> = std::fs::read_dir(root.join("seg"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .map(|p| {
            let (h, _) =
                tide_bundle::read_header(&mut std::fs::File::open(&p).unwrap(), 0).unwrap();
            (h.created_ms, h.provides.values().sum(), p)
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, _, p)| p).collect()
}

/// Everything under `root`, with contents, to show nothing changed.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

impl Link for Folder {
    fn carry(&mut self, c: &mut Cluster, from: usize, to: usize, fault: Fault) -> Outcome {
        // One stick per cluster: replicas of another cluster are strangers.
        let stick = format!(
            "stick-{}",
            c.dir.path().file_name().unwrap().to_string_lossy()
        );
        let mut mailbox = self.mailbox(&stick, Mode::Both);
        let before = if mailbox.root().exists() {
            pages(mailbox.root())
        } else {
            Vec::new()
        };
        let sent = mailbox.sync(&mut c.replicas[from]).unwrap();
        let new: Vec<PathBuf> = pages(mailbox.root())
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        for (i, page) in new.iter().enumerate() {
            match fault {
                // The stick is pulled out while page k is written.
                Fault::CutAfter(k) if i == k => {
                    let len = std::fs::metadata(page).unwrap().len();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(page)
                        .unwrap()
                        .set_len(len / 2)
                        .unwrap();
                }
                Fault::CutAfter(k) if i > k => std::fs::remove_file(page).unwrap(),
                Fault::Lose(k) if i == k => std::fs::remove_file(page).unwrap(),
                // Changed, and renamed to its new hash: only the signature can tell.
                Fault::Tamper(k) if i == k => {
                    let mut bytes = std::fs::read(page).unwrap();
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x40;
                    std::fs::remove_file(page).unwrap();
                    let name = format!("{}.tide", blake3::hash(&bytes).to_hex());
                    std::fs::write(page.with_file_name(name), bytes).unwrap();
                }
                // The same page arrives a second way: addressed to the receiver too.
                Fault::Twice => {
                    let id = c.replicas[to].id().unwrap().to_hex();
                    let dir = mailbox.root().join("to").join(id);
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::copy(page, dir.join(page.file_name().unwrap())).unwrap();
                }
                _ => {}
            }
        }
        let received = mailbox.sync(&mut c.replicas[to]).unwrap();
        let error = (!received.left.is_empty() || received.garbage > 0)
            .then(|| format!("{:?} (garbage {})", received.left, received.garbage));
        Outcome {
            pages_sent: sent.pages_sent,
            error,
        }
    }

    fn one_way(
        &mut self,
        c: &mut Cluster,
        from: usize,
        to: usize,
        delivered: &[bool],
    ) -> Option<Vec<Vec<(tide_core::ReplicaId, tide_core::SeqRuns)>>> {
        let mut sender = self.mailbox("outbox", Mode::SEND_ONLY);
        let mut receiver = self.mailbox("inbox", Mode::ReceiveOnly);
        let inbox = receiver.root().to_path_buf();
        let mut out = Vec::new();
        for d in delivered {
            sender.sync(&mut c.replicas[from]).unwrap();
            // The diode takes every file away, and delivers the drop or loses it.
            for sub in ["seg", "ack"] {
                std::fs::create_dir_all(inbox.join(sub)).unwrap();
                for e in std::fs::read_dir(sender.root().join(sub))
                    .unwrap()
                    .flatten()
                {
                    if *d {
                        std::fs::copy(e.path(), inbox.join(sub).join(e.file_name())).unwrap();
                    }
                    std::fs::remove_file(e.path()).unwrap();
                }
            }
            std::fs::copy(sender.root().join("VERSION"), inbox.join("VERSION")).unwrap();
            let seen = snapshot(&inbox);
            let report = receiver.sync(&mut c.replicas[to]).unwrap();
            assert_eq!(snapshot(&inbox), seen, "receive-only wrote to its folder");
            out.push(report.missing);
        }
        Some(out)
    }
}

crate::conformance!(Folder::new());
