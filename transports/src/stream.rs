//! Two replicas over a pair of byte streams (SPEC.md §4): a pipe, `ssh host tide sync -`.
//! They take turns; each turn is a run of frames (a length, then one bundle) ended by an
//! empty frame. Each page is imported as it arrives, so a cut costs at most one page.

use std::io::{Read, Seek, Write};

use tide_bundle::{BundleError, WriteOptions};
use tide_core::{Replica, VersionVector};

use crate::error::{Result, TransportError};
use crate::pages::Outbox;
use crate::report::SyncReport;
use crate::{Carrier, DEFAULT_PAGE_BYTES};

/// Which side of the exchange this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that opened the connection: speaks first.
    Initiator,
    /// The side that was reached (`tide sync -`).
    Responder,
}

/// The largest frame taken: no bundle body may be larger (bundle/SPEC.md §2.2 caps images
/// at 8 GiB, and a body is never much larger than its image).
const MAX_FRAME: u64 = 9 << 30;

/// One side of a stream exchange.
pub struct Stream<R: Read, W: Write> {
    reader: R,
    writer: W,
    role: Role,
    /// About how many bytes of changes a page holds.
    pub page_bytes: u64,
    /// The replica at the other end, once its first bundle arrived.
    other: Option<tide_core::ReplicaId>,
}

impl<R: Read, W: Write> Stream<R, W> {
    /// This side of an exchange that reads `reader` and writes `writer`.
    pub fn new(reader: R, writer: W, role: Role) -> Self {
        Stream {
            reader,
            writer,
            role,
            page_bytes: DEFAULT_PAGE_BYTES,
            other: None,
        }
    }

    /// Sends this replica's acknowledgement.
    fn send_ack(&mut self, replica: &mut Replica, report: &mut SyncReport) -> Result<()> {
        let mut ack = Vec::new();
        tide_bundle::write_ack(replica, &WriteOptions::default(), &mut ack)?;
        self.frame(&mut &ack[..], ack.len() as u64)?;
        report.bytes_sent += ack.len() as u64;
        Ok(())
    }

    /// Sends pages of what a replica holding `theirs` lacks.
    fn send_pages(
        &mut self,
        replica: &mut Replica,
        theirs: &VersionVector,
        report: &mut SyncReport,
    ) -> Result<()> {
        let mut outbox = Outbox::new(theirs.clone(), self.page_bytes);
        while outbox.has_more(replica)? {
            let mut file = tempfile::tempfile().map_err(|e| io("a temporary file", e))?;
            let page = outbox.next_page(replica, &WriteOptions::default(), &mut file)?;
            if page.page.changes == 0 {
                break;
            }
            file.rewind().map_err(|e| io("a temporary file", e))?;
            self.frame(&mut file, page.export.bytes)?;
            report.pages_sent += 1;
            report.changes_sent += page.page.changes;
            report.bytes_sent += page.export.bytes;
        }
        Ok(())
    }

    fn frame(&mut self, bytes: &mut dyn Read, len: u64) -> Result<()> {
        let w = &mut self.writer;
        w.write_all(&len.to_be_bytes())
            .and_then(|()| std::io::copy(&mut bytes.take(len), w).map(drop))
            .map_err(|e| io("the stream", e))
    }

    fn end_turn(&mut self) -> Result<()> {
        self.writer
            .write_all(&0u64.to_be_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| io("the stream", e))
    }

    /// Takes the other side's turn: every bundle imported as it arrives. Returns the
    /// vector of the last one (every bundle carries its sender's).
    fn receive_turn(
        &mut self,
        replica: &mut Replica,
        report: &mut SyncReport,
    ) -> Result<Option<VersionVector>> {
        let mut last = None;
        loop {
            let mut len = [0u8; 8];
            read_all(&mut self.reader, &mut len)?;
            let len = u64::from_be_bytes(len);
            if len == 0 {
                return Ok(last);
            }
            if len > MAX_FRAME {
                return Err(TransportError::Protocol(format!(
                    "a frame of {len} bytes is larger than any bundle"
                )));
            }
            let mut file = tempfile::tempfile().map_err(|e| io("a temporary file", e))?;
            let copied = std::io::copy(&mut (&mut self.reader).take(len), &mut file)
                .map_err(|e| io("the stream", e))?;
            if copied < len {
                return Err(TransportError::Closed);
            }
            file.rewind().map_err(|e| io("a temporary file", e))?;
            let imported = tide_bundle::import(replica, &mut file, None).map_err(|e| match e {
                BundleError::Core(c) => TransportError::Core(c),
                other => TransportError::Bundle(other),
            })?;
            // The other side is a known peer, never this replica itself (a pipe that
            // loops back, or a command that echoes).
            if imported.header.sender == replica.id()? {
                return Err(TransportError::Protocol(
                    "the other side is this same replica: the command reached this database again, or echoed what it was sent".into(),
                ));
            }
            if imported.header.changes > 0 {
                report.received(&imported.report);
            }
            last = Some(imported.header.ack);
            self.other = Some(imported.header.sender);
        }
    }

    fn expect_ack(
        &mut self,
        replica: &mut Replica,
        report: &mut SyncReport,
    ) -> Result<VersionVector> {
        self.receive_turn(replica, report)?
            .ok_or_else(|| TransportError::Protocol("a turn without an acknowledgement".into()))
    }
}

impl<R: Read, W: Write> Carrier for Stream<R, W> {
    fn sync(&mut self, replica: &mut Replica) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        match self.role {
            Role::Initiator => {
                self.send_ack(replica, &mut report)?;
                self.end_turn()?;
                let theirs = self.expect_ack(replica, &mut report)?;
                self.send_pages(replica, &theirs, &mut report)?;
                self.send_ack(replica, &mut report)?;
                self.end_turn()?;
                self.expect_ack(replica, &mut report)?;
            }
            Role::Responder => {
                let theirs = self.expect_ack(replica, &mut report)?;
                self.send_ack(replica, &mut report)?;
                self.send_pages(replica, &theirs, &mut report)?;
                self.end_turn()?;
                self.expect_ack(replica, &mut report)?;
                self.send_ack(replica, &mut report)?;
                self.end_turn()?;
            }
        }
        // The exchange ended: each side holds what the other had.
        if let Some(peer) = self.other {
            crate::report::note_synced(replica, peer)?;
        }
        Ok(report)
    }
}

fn read_all(reader: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => TransportError::Closed,
        _ => io("the stream", e),
    })
}

fn io(what: &str, source: std::io::Error) -> TransportError {
    TransportError::Io {
        path: what.into(),
        source,
    }
}
