//! What to send, as pages (SPEC.md §2): the sans-I/O part every carrier shares. An
//! [`Outbox`] starts from what the receiver is known to hold and writes one bounded,
//! causally complete bundle at a time to whatever writer the carrier gives it.

use std::io::Write;

use tide_bundle::{ExportedPage, WriteOptions};
use tide_core::{Replica, VersionVector};

use crate::error::Result;

/// Pages of what a receiver lacks, one at a time.
pub struct Outbox {
    since: VersionVector,
    budget: u64,
    done: bool,
}

impl Outbox {
    /// Pages for a receiver known to hold `since`, of about `budget` bytes each.
    pub fn new(since: VersionVector, budget: u64) -> Outbox {
        Outbox {
            since,
            budget,
            done: false,
        }
    }

    /// Nothing is left to send.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether a page is left to write, pending writes sealed first: asked before
    /// writing one, so a carrier never writes a page only to throw it away. Marks the
    /// outbox done when the receiver holds everything.
    pub fn has_more(&mut self, replica: &mut Replica) -> Result<bool> {
        if !self.done {
            replica.seal()?;
            // Pages carry contiguous runs only: what the version vector covers.
            self.done = covers(&self.since, &replica.version_vector()?);
        }
        Ok(!self.done)
    }

    /// What the receiver holds once it has every page written so far.
    pub fn since(&self) -> &VersionVector {
        &self.since
    }

    /// Writes the next page to `out`. A page of no changes means nothing was left: the
    /// carrier discards what was written (an acknowledgement) and the outbox is done.
    pub fn next_page(
        &mut self,
        replica: &mut Replica,
        options: &WriteOptions,
        out: &mut dyn Write,
    ) -> Result<ExportedPage> {
        let written = tide_bundle::export_page(replica, &self.since, self.budget, options, out)?;
        for (origin, seq) in &written.export.header.provides {
            let at = self.since.entry(*origin).or_insert(0);
            *at = (*at).max(*seq);
        }
        self.done = written.page.changes == 0 || !written.page.more;
        Ok(written)
    }
}

/// `a` covers `b`: for every origin, `a` holds at least what `b` names.
pub fn covers(a: &VersionVector, b: &VersionVector) -> bool {
    b.iter().all(|(o, s)| a.get(o).copied().unwrap_or(0) >= *s)
}

/// Raises `into` to `other`, origin by origin.
pub fn raise(into: &mut VersionVector, other: &VersionVector) {
    for (o, s) in other {
        let at = into.entry(*o).or_insert(0);
        *at = (*at).max(*s);
    }
}
