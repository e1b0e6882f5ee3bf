//! Carriers for tide's bundles (SPEC.md in this crate): what moves changes between
//! replicas besides a person carrying one file.
//!
//! Every carrier moves the same unit, a `.tide` bundle, and keeps no state of its own
//! beyond what the replica records: a receiver's version vector, committed with the
//! changes it applied, is the only checkpoint. The logic of what to send is shared
//! ([`pages::Outbox`]: bounded pages in causal order); the carriers are thin:
//!
//! - [`mailbox`]: a folder any number of replicas visit in turn (a USB stick, a shared
//!   drive), with one-way modes for links where nothing comes back;
//! - [`stream`]: two replicas over a pair of byte streams (a pipe, `ssh`);
//! - `http`: a hub that replicas sync with over HTTP (`hub` feature: the server;
//!   `http` feature: the client).
//!
//! Layering: this crate uses `tide-bundle` and `tide-core`; the command line uses it.

mod error;
#[cfg(any(feature = "hub", feature = "http"))]
pub mod http;
pub mod mailbox;
pub mod pages;
pub mod report;
pub mod stream;

pub use error::{Result, TransportError};
pub use report::{SyncReport, last_synced, note_synced};

use tide_core::Replica;

/// Something a replica syncs through: each call sends what the other end lacks (as far
/// as the carrier can know) and takes what arrived.
pub trait Carrier {
    /// One exchange.
    fn sync(&mut self, replica: &mut Replica) -> Result<SyncReport>;
}

/// Pages of about this many bytes (before compression) by default: small enough that a
/// cut transfer costs little, large enough that the per-bundle cost stays small.
pub const DEFAULT_PAGE_BYTES: u64 = 8 << 20;
