//! What a sync did, for a person or a `--json` summary.

use tide_core::{ImportReport, ReplicaId, SeqRuns};

/// What one sync through a carrier did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Pages (bundles with changes) read and imported.
    pub pages_received: usize,
    /// Changes newly stored from them.
    pub changes_received: usize,
    /// Changes applied (including earlier ones that were waiting for these).
    pub changes_applied: usize,
    /// Changes received that were already held.
    pub duplicates: usize,
    /// Changes put in quarantine.
    pub quarantined: usize,
    /// Conflicts opened.
    pub conflicts_opened: usize,
    /// Pages written.
    pub pages_sent: usize,
    /// Changes in them.
    pub changes_sent: u64,
    /// Bytes written (pages and acknowledgements).
    pub bytes_sent: u64,
    /// Files deleted because every addressee acknowledged them.
    pub pruned: usize,
    /// Files deleted because they were incomplete or damaged (a write cut short).
    pub garbage: usize,
    /// Files left in place, each with why (from an unknown replica, not verifying).
    pub left: Vec<(String, String)>,
    /// Per origin, the runs of seqs (first, last) this replica lacks that it knows
    /// exist: gaps below changes it holds, and what a sender said it holds beyond them.
    pub missing: Vec<(ReplicaId, SeqRuns)>,
}

impl SyncReport {
    /// Adds what one import did.
    pub fn received(&mut self, r: &ImportReport) {
        self.pages_received += 1;
        self.changes_received += r.stored;
        self.changes_applied += r.applied;
        self.duplicates += r.duplicates;
        self.quarantined += r.quarantined.len();
        self.conflicts_opened += r.conflicts_opened;
    }
}

/// Records that this replica and `peer` hold each other's changes as of now (an exchange
/// ended with nothing left to send either way): what `tide status` calls "synced".
pub fn note_synced(replica: &mut tide_core::Replica, peer: ReplicaId) -> crate::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    replica.set_transport_state(
        &format!("synced {}", peer.to_hex()),
        now.to_string().as_bytes(),
    )?;
    Ok(())
}

/// When this replica last synced with `peer` (seconds since 1970), if ever.
pub fn last_synced(replica: &tide_core::Replica, peer: ReplicaId) -> crate::Result<Option<u64>> {
    Ok(replica
        .transport_state(&format!("synced {}", peer.to_hex()))?
        .and_then(|b| String::from_utf8(b).ok()?.parse().ok()))
}
