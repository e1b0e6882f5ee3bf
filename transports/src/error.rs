//! What can go wrong while syncing through a carrier.

use std::path::PathBuf;

/// An error of a carrier. Whatever was imported before it stays imported (each page
/// commits on its own); nothing half-written is left where a reader would take it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A bundle could not be written, read or imported.
    #[error(transparent)]
    Bundle(#[from] tide_bundle::BundleError),
    /// The replica refused or failed.
    #[error(transparent)]
    Core(#[from] tide_core::Error),
    /// Reading or writing a file or stream failed.
    #[error("{path}: {source}")]
    Io {
        /// The file, folder or stream involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The folder given does not exist.
    #[error("no folder {0}")]
    NoFolder(PathBuf),
    /// The mailbox was written by an incompatible version.
    #[error("{path} holds a mailbox of another version ({found:?})")]
    MailboxVersion {
        /// The mailbox's `VERSION` file.
        path: PathBuf,
        /// What it says.
        found: String,
    },
    /// The folder's disk is full: nothing half-written was left.
    #[error("the folder {path} is full: about {needed} more bytes are needed")]
    Full {
        /// The folder.
        path: PathBuf,
        /// Bytes of the page that did not fit.
        needed: u64,
    },
    /// The folder cannot be written to.
    #[error("the folder {0} is read-only")]
    ReadOnly(PathBuf),
    /// The other side of a stream said something that is not this protocol.
    #[error("the other side broke the exchange: {0}")]
    Protocol(String),
    /// The other side of a stream closed it before the exchange ended.
    #[error("the other side closed the connection before the exchange ended")]
    Closed,
    /// A hub could not be reached, or the connection broke.
    #[error("cannot reach {url}: {why}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The hub at the URL is not a known peer of this replica.
    #[error("the hub at {url} is not a peer of this replica (its card: {card})")]
    UnknownHub {
        /// The hub's URL.
        url: String,
        /// The card it presented.
        card: String,
    },
    /// The hub does not know this replica (it lists it as pending).
    #[error("the hub at {url} does not know this replica ({replica})")]
    UnknownToHub {
        /// The hub's URL.
        url: String,
        /// This replica.
        replica: tide_core::ReplicaId,
    },
    /// Even the smallest page was refused as too large (a proxy's body limit).
    #[error("{url} refused a request of {bytes} bytes as too large")]
    TooLarge {
        /// What was asked.
        url: String,
        /// The size refused.
        bytes: u64,
    },
}

/// Results of this crate.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

impl TransportError {
    /// An I/O error on `path`, told apart when it means the disk is full or read-only.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error, needed: u64) -> Self {
        match source.raw_os_error() {
            Some(28) => TransportError::Full {
                path: path.to_path_buf(),
                needed,
            },
            Some(30) | Some(13) => TransportError::ReadOnly(path.to_path_buf()),
            _ => TransportError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}
