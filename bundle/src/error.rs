//! Why a bundle could not be written or read. Every variant says what happened; the
//! reader guarantees that nothing reached the database when it returns one. SPEC.md §10
//! says exactly when each variant is returned and lists every field name a variant can
//! carry; a test checks those lists against this enum and the code that builds it.

use tide_core::ReplicaId;

/// Errors of writing and reading bundles.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file does not start with the bundle magic.
    #[error("not a tide bundle (no bundle magic at the start of the file)")]
    NotABundle,
    /// A format version this build cannot read.
    #[error(
        "bundle format version {0} is not the one this tide reads ({v}): a newer bundle needs a newer tide, an older one must be exported again",
        v = crate::header::VERSION
    )]
    UnsupportedVersion(u16),
    /// The input ended early: the file, a part, or the encrypted body's chunks.
    #[error("the bundle ends early while reading {0}: the file is truncated; copy it again")]
    Truncated(&'static str),
    /// A header field no valid writer produces, or a header whose `ops`, `requires` or
    /// `provides` does not match the changes carried.
    #[error("malformed bundle header: {0}")]
    Malformed(&'static str),
    /// Flag bits this build does not know.
    #[error("the bundle uses unknown flags {0:#x}; it was written by a newer tide")]
    UnknownFlags(u64),
    /// A critical capability this build does not implement.
    #[error("the bundle requires capability {0:?}, which this tide does not have; upgrade tide")]
    UnknownCritical(String),
    /// A declared size or parameter over the reader's limits.
    #[error("the bundle declares {field} = {value}, over the limit of {limit}; refused")]
    LimitExceeded {
        /// The field.
        field: &'static str,
        /// What the bundle declares.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Signed by a replica this one does not know.
    #[error(
        "the bundle is from replica {0}, which is not a known peer; add its card (`tide peers add`) and import again"
    )]
    UnknownSender(ReplicaId),
    /// The signature does not match the bytes.
    #[error("the bundle's signature does not verify: it was altered or forged")]
    BadSignature,
    /// Bytes after the signature.
    #[error("unexpected bytes after the end of the bundle")]
    TrailingBytes,
    /// Encrypted, and no available key opens it.
    #[error(
        "the bundle is encrypted and no key given opens it (wrong passphrase, or addressed to another replica)"
    )]
    NoMatchingKey,
    /// Encrypted to a replica, but this one has no secret key to try.
    #[error(
        "the bundle is encrypted; give its passphrase, or import it on the replica it was encrypted to"
    )]
    NeedKey,
    /// An encrypted chunk does not open (a final chunk that is missing altogether is
    /// [`BundleError::Truncated`]).
    #[error("the encrypted body does not decrypt: it was altered")]
    BadCiphertext,
    /// The body decompresses to more (or less) than declared.
    #[error("the body does not decompress to the declared {declared} bytes ({what}); refused")]
    BadSize {
        /// The declared image size.
        declared: u64,
        /// "more" (a decompression bomb) or "fewer".
        what: &'static str,
    },
    /// The compressed body is not a valid zstd frame.
    #[error("the body does not decompress: {0}")]
    BadCompression(String),
    /// The inner SQLite image is not what §5 of the spec says.
    #[error("the bundle's database image is invalid: {0}")]
    BadImage(String),
    /// Addressed to another replica.
    #[error(
        "the bundle is addressed to replica {recipient}, not to this one ({this}); nothing was imported"
    )]
    NotForThisReplica {
        /// Who it is for.
        recipient: ReplicaId,
        /// This replica.
        this: ReplicaId,
    },
    /// Parts that do not make one whole bundle.
    #[error("bundle parts: {0}")]
    Parts(String),
    /// Some parts are missing.
    #[error(
        "bundle parts missing: have {have} of {count}; missing part numbers {missing:?} (counting from 1)"
    )]
    MissingParts {
        /// Parts present.
        have: usize,
        /// Parts in the bundle.
        count: usize,
        /// Missing part numbers, from 1.
        missing: Vec<usize>,
    },
    /// Reading or writing a file failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The image could not be written or read by SQLite.
    #[error("bundle image: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The replica refused.
    #[error(transparent)]
    Core(#[from] tide_core::Error),
}

/// Result with [`BundleError`].
pub type Result<T, E = BundleError> = std::result::Result<T, E>;
