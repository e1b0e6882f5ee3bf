//! Bundle files carried one at a time (what `tide bundle export` and `import` do, page
//! by page): the sender writes pages of what the receiver last acknowledged lacking, the
//! receiver imports each file, and its acknowledgement travels back as a file too.

use std::path::PathBuf;

use tide_bundle::WriteOptions;
use tide_tests::Cluster;
use tide_transports::pages::Outbox;

use crate::{Fault, Link, Outcome, PAGE};

pub struct Files {
    dir: tempfile::TempDir,
    n: usize,
}

impl Files {
    pub fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
            n: 0,
        }
    }

    fn next(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.path().join(format!("{}.tide", self.n))
    }
}

fn import(c: &mut Cluster, to: usize, path: &PathBuf) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    tide_bundle::import(&mut c.replicas[to], &mut f, None)
        .map(drop)
        .map_err(|e| e.to_string())
}

impl Link for Files {
    fn carry(&mut self, c: &mut Cluster, from: usize, to: usize, fault: Fault) -> Outcome {
        let mut out = Outcome::default();
        // The receiver's acknowledgement reaches the sender first.
        let ack = self.next();
        let mut f = std::fs::File::create(&ack).unwrap();
        tide_bundle::write_ack(&mut c.replicas[to], &WriteOptions::default(), &mut f).unwrap();
        drop(f);
        import(c, from, &ack).expect("an acknowledgement imports");
        let to_id = c.replicas[to].id().unwrap();
        let since = c.replicas[from].peer_ack(to_id).unwrap();
        let mut outbox = Outbox::new(since, PAGE);
        let mut pages = Vec::new();
        while !outbox.done() {
            let path = self.next();
            let mut f = std::fs::File::create(&path).unwrap();
            let page = outbox
                .next_page(&mut c.replicas[from], &WriteOptions::default(), &mut f)
                .unwrap();
            if page.page.changes == 0 {
                break;
            }
            pages.push(path);
        }
        out.pages_sent = pages.len();
        for (i, path) in pages.iter().enumerate() {
            match fault {
                Fault::CutAfter(k) if i >= k => break,
                Fault::Lose(k) if i == k => continue,
                Fault::Tamper(k) if i == k => {
                    let mut bytes = std::fs::read(path).unwrap();
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x40;
                    std::fs::write(path, bytes).unwrap();
                }
                _ => {}
            }
            if let Err(e) = import(c, to, path) {
                out.error.get_or_insert(e);
                continue;
            }
            if fault == Fault::Twice
                && let Err(e) = import(c, to, path)
            {
                out.error.get_or_insert(e);
            }
        }
        out
    }

    fn one_way(
        &mut self,
        _: &mut Cluster,
        _: usize,
        _: usize,
        _: &[bool],
    ) -> Option<Vec<Vec<(tide_core::ReplicaId, tide_core::SeqRuns)>>> {
        None
    }
}

crate::conformance!(Files::new());
