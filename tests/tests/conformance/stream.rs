//! The stream exchange over a pair of pipes, each side a replica opened on its own, as
//! two `tide` processes would be. The receiving replica starts the exchange; faults are
//! done to the sender's frames on their way, whole frames at a time.

use std::io::Write;

use tide_core::{KeyStore, Replica};
use tide_tests::Cluster;
use tide_transports::Carrier;
use tide_transports::stream::{Role, Stream};

use crate::{Fault, Link, Outcome, PAGE};

pub struct Pipes;

/// A writer that passes whole frames on, doing `fault` to the sender's pages: its first
/// frame is its acknowledgement, the frames after it until its turn ends are pages.
struct Faulty<W: Write> {
    inner: W,
    fault: Fault,
    buf: Vec<u8>,
    /// Frames passed so far in the sender's first turn (its acknowledgement is 0).
    frames: usize,
    /// The first turn ended: later frames pass untouched.
    turn_over: bool,
}

impl<W: Write> Write for Faulty<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= 8 {
            let len = u64::from_be_bytes(self.buf[..8].try_into().unwrap()) as usize;
            if self.buf.len() < 8 + len {
                break;
            }
            let mut frame: Vec<u8> = self.buf.drain(..8 + len).collect();
            if self.turn_over || len == 0 {
                self.turn_over |= len == 0;
                self.inner.write_all(&frame)?;
                continue;
            }
            let page = self.frames.checked_sub(1);
            self.frames += 1;
            match (self.fault, page) {
                (Fault::CutAfter(k), Some(p)) if p >= k => {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                (Fault::Lose(k), Some(p)) if p == k => continue,
                (Fault::Tamper(k), Some(p)) if p == k => {
                    let at = 8 + len / 2;
                    frame[at] ^= 0x40;
                }
                (Fault::Twice, Some(_)) => self.inner.write_all(&frame)?,
                _ => {}
            }
            self.inner.write_all(&frame)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Link for Pipes {
    fn carry(&mut self, c: &mut Cluster, from: usize, to: usize, fault: Fault) -> Outcome {
        let (to_reads, from_writes) = std::io::pipe().unwrap();
        let (from_reads, to_writes) = std::io::pipe().unwrap();
        let path = c.path(from);
        let keys = c.dir.path().join(format!("keys{from}"));
        std::thread::scope(|s| {
            let sender = s.spawn(move || {
                let mut r = Replica::open_existing(&path, KeyStore::at(keys)).unwrap();
                let writer = Faulty {
                    inner: from_writes,
                    fault,
                    buf: Vec::new(),
                    frames: 0,
                    turn_over: false,
                };
                let mut stream = Stream::new(from_reads, writer, Role::Responder);
                stream.page_bytes = PAGE;
                stream.sync(&mut r)
            });
            let mut stream = Stream::new(to_reads, to_writes, Role::Initiator);
            stream.page_bytes = PAGE;
            let received = stream.sync(&mut c.replicas[to]);
            // Closing this side's ends lets the sender finish, whatever happened.
            drop(stream);
            let sent = sender.join().unwrap();
            Outcome {
                pages_sent: sent.as_ref().map_or(0, |r| r.pages_sent),
                error: received
                    .err()
                    .map(|e| e.to_string())
                    .or_else(|| sent.err().map(|e| e.to_string())),
            }
        })
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

crate::conformance!(Pipes);
