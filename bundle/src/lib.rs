//! # tide-bundle
//!
//! The `.tide` bundle: one file that carries signed changes across an air gap, on a USB
//! stick or as an e-mail attachment, through hands nobody trusts. `SPEC.md` beside this
//! crate is the normative format; this crate is its reference implementation.
//!
//! * **Writing** ([`write_bundle`], [`export`]): changes go into an SQLite image in a
//!   private temporary folder, which is compressed with zstd and, when asked, encrypted
//!   in 64 KiB XChaCha20-Poly1305 chunks under a random file key wrapped for each
//!   recipient's X25519 key and/or a passphrase (Argon2id). The sender signs preamble,
//!   header and body with Ed25519.
//! * **Reading** ([`read_bundle`], [`import`]): the header is parsed within fixed
//!   limits, the signature is checked against known replicas, and only then is anything
//!   decrypted, decompressed (capped at the declared size) or opened by SQLite
//!   (read-only, defensive). Only a [`VerifiedBundle`] yields changes.
//! * **Parts** ([`split`], [`assemble`]): a bundle cut for e-mail size limits; parts
//!   may arrive in any order.
//!
//! Writing and reading a bundle take bounded memory whatever its size: bodies and
//! images pass through a private temporary folder, removed on every path. [`import`]
//! then hands the replica one change at a time, each read a chunk at a time, so the
//! import streams too (invariant 12).

mod crypto;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod image;
mod parts;
mod read;
mod replica;
mod write;

pub use crypto::ArgonParams;
pub use error::{BundleError, Result};
pub use header::{FLAG_ENCRYPTED, Header, MAGIC, Stanza, VERSION};
pub use parts::{PART_MAGIC, assemble, split};
pub use read::{
    DEFAULT_IMAGE_CAP, ReadOptions, VerifiedBundle, read_bundle, read_header, verify_bundle,
};
pub use replica::{
    Export, ExportedPage, Imported, check_import, export, export_page, import,
    prerequisites_missing, write_ack,
};
pub use write::{Sender, WriteOptions, write_bundle};

/// The context string of the bundle signature (SPEC §4).
pub const SIGNING_CONTEXT: &[u8] = b"tide bundle v1 signature\0";

fn signing_message(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + 32);
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(digest);
    m
}
