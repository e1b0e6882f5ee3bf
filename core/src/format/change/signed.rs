//! Signed heads and whole signed changes: the forms a change travels and is verified in.

use super::*;
use crate::format::codec::DecodeError;
use crate::format::codec::{Reader, put_bytes};
use crate::format::ids::{ChangeId, ReplicaId};
use crate::format::signature::{Signer, verify_signature};

/// The Ed25519 message of a change: the context string, then the BLAKE3 content hash of
/// its head (which names every chunk by its hash), so the signature costs the same for
/// any size of change.
pub(crate) fn signing_message(hash: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + hash.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(hash);
    msg
}

/// A change's head as bytes with its signature, not yet checked against any key. Its
/// chunks travel beside it (see [`Chunks`](crate::Chunks)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHead {
    bytes: Vec<u8>,
    signature: [u8; 64],
    hash: [u8; 32],
}

impl SignedHead {
    /// Wraps head bytes and a signature (nothing is verified yet).
    pub fn from_parts(bytes: Vec<u8>, signature: [u8; 64]) -> SignedHead {
        let hash = *blake3::hash(&bytes).as_bytes();
        SignedHead {
            bytes,
            signature,
            hash,
        }
    }

    /// Signs encoded head bytes (the caller's own change).
    pub(crate) fn sign(bytes: Vec<u8>, secret: &impl Signer) -> SignedHead {
        let hash = *blake3::hash(&bytes).as_bytes();
        SignedHead {
            signature: secret.sign(&signing_message(&hash)),
            bytes,
            hash,
        }
    }

    /// The canonical head bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The Ed25519 signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// BLAKE3 of the head: the content hash used for dedup, forks and the hash chain.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// Reads the origin and seq without full decoding (for routing and dedup).
    pub fn peek_id(&self) -> Result<ChangeId, DecodeError> {
        let mut r = Reader::new(&self.bytes);
        let version = r.varint("change version")?;
        if version != CHANGE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let origin = ReplicaId(r.array("origin")?);
        let seq = r.varint("seq")?;
        Ok(ChangeId { origin, seq })
    }

    /// The head, decoded without checking the signature (for what is already trusted,
    /// like this replica's own log).
    pub fn manifest(&self) -> Result<Manifest, DecodeError> {
        Manifest::decode(&self.bytes)
    }

    /// Checks the signature with the origin's public key and the head's structure. The
    /// chunks are checked against the returned head as they are read
    /// ([`Manifest::check_chunk`]).
    pub fn verify(&self, sign_key: &[u8; 32]) -> Result<VerifiedHead, VerifyError> {
        if !verify_signature(sign_key, &signing_message(&self.hash), &self.signature) {
            return Err(VerifyError::BadSignature);
        }
        let manifest = Manifest::decode(&self.bytes).map_err(VerifyError::Decode)?;
        if ReplicaId::for_signing_key(sign_key) != manifest.head.origin {
            return Err(VerifyError::WrongKey);
        }
        Ok(VerifiedHead {
            signed: self.clone(),
            manifest,
        })
    }
}

/// A change head whose signature checked out against its origin's key. Outside the
/// core only [`SignedHead::verify`] makes one; ingest stores nothing else, and apply
/// takes nothing else, so being verified is a type, not a flag a caller could forget.
/// It reads as its [`Manifest`]; each chunk is checked against it as it is read
/// ([`Manifest::check_chunk`]).
#[derive(Clone, Debug)]
pub struct VerifiedHead {
    signed: SignedHead,
    manifest: Manifest,
}

impl VerifiedHead {
    /// A head read back from this replica's log. The log holds only heads that were
    /// verified on their way in, or signed here, so their signature is not checked again.
    pub(crate) fn from_log(signed: SignedHead) -> Result<VerifiedHead, DecodeError> {
        let manifest = Manifest::decode(&signed.bytes)?;
        Ok(VerifiedHead { signed, manifest })
    }

    /// The signed bytes it was verified from.
    pub fn signed(&self) -> &SignedHead {
        &self.signed
    }

    /// The change's origin and seq.
    pub fn id(&self) -> ChangeId {
        self.manifest.id()
    }
}

impl std::ops::Deref for VerifiedHead {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

/// A chunk kept as signed.
pub const PACKING_RAW: i64 = 0;
/// A chunk kept as one zstd frame of it.
pub const PACKING_ZSTD: i64 = 1;

/// A chunk as signed, from its form at rest. A packed chunk must be exactly one zstd
/// frame (no skippable frames or trailing bytes riding along unsigned), and its output
/// may not pass `len` bytes (the length the head gives), growing only with what it
/// produces, so a packed chunk cannot be a decompression bomb; a short result is caught
/// by [`Manifest::check_chunk`].
pub fn unpack_chunk(stored: Vec<u8>, packing: i64, len: usize) -> Result<Vec<u8>, DecodeError> {
    match packing {
        PACKING_RAW => Ok(stored),
        PACKING_ZSTD => unzstd_chunk(&stored, len),
        _ => Err(DecodeError::Malformed("chunk packing")),
    }
}

/// A chunk kept with [`PACKING_ZSTD`], unpacked as [`unpack_chunk`] says.
pub(crate) fn unzstd_chunk(stored: &[u8], len: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    const BAD: DecodeError =
        DecodeError::Malformed("chunk (its packed form is not one zstd frame of its length)");
    if zstd::zstd_safe::find_frame_compressed_size(stored) != Ok(stored.len()) {
        return Err(BAD);
    }
    let mut out = Vec::with_capacity(len.min(stored.len().saturating_mul(8)));
    zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|_| BAD)?
        .single_frame()
        .take(len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| BAD)?;
    if out.len() > len {
        return Err(BAD);
    }
    Ok(out)
}

/// A whole change in memory: its signed head and its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    head: SignedHead,
    chunks: Vec<Vec<u8>>,
}

impl SignedChange {
    /// A signed head and its chunks (nothing is verified yet).
    pub fn new(head: SignedHead, chunks: Vec<Vec<u8>>) -> SignedChange {
        SignedChange { head, chunks }
    }

    /// The signed head.
    pub fn head(&self) -> &SignedHead {
        &self.head
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Vec<u8>] {
        &self.chunks
    }

    /// The content hash (of the head).
    pub fn hash(&self) -> &[u8; 32] {
        self.head.hash()
    }

    /// The origin and seq, read from the head without full decoding.
    pub fn peek_id(&self) -> Result<ChangeId, DecodeError> {
        self.head.peek_id()
    }

    /// The envelope: head, signature, chunks.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.head.bytes.len() + 70 + self.chunks.iter().map(|c| c.len() + 5).sum::<usize>(),
        );
        put_bytes(&mut out, &self.head.bytes);
        out.extend_from_slice(&self.head.signature);
        for c in &self.chunks {
            put_bytes(&mut out, c);
        }
        out
    }

    /// Parses one envelope from the front of `bytes`, returning it and the bytes used.
    pub fn from_bytes(bytes: &[u8]) -> Result<(SignedChange, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        let head = r.bytes("change head")?.to_vec();
        let signature = r.array("change signature")?;
        let n = Manifest::decode(&head)?.chunks.len();
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(r.bytes("change chunk")?.to_vec());
        }
        let used = bytes.len() - r.remaining();
        Ok((
            SignedChange::new(SignedHead::from_parts(head, signature), chunks),
            used,
        ))
    }

    /// Checks the signature with the origin's public key, then decodes every chunk.
    pub fn verify(&self, sign_key: &[u8; 32]) -> Result<VerifiedChange, VerifyError> {
        self.head.verify(sign_key)?;
        let change = Change::decode(&self.head.bytes, &self.chunks).map_err(VerifyError::Decode)?;
        Ok(VerifiedChange {
            change,
            signed: self.clone(),
        })
    }
}

/// Why a change failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature does not match the head under the origin's key.
    #[error("signature does not verify")]
    BadSignature,
    /// The key given is not the origin's.
    #[error("signed by a key that is not the origin's")]
    WrongKey,
    /// Signed, but not a valid change (a chunk that does not match its head included).
    #[error("signed but malformed: {0}")]
    Decode(DecodeError),
}

/// A whole change whose signature checked out against its origin's key, decoded: for
/// callers that hold a change in memory. Ingest works a chunk at a time, from a
/// [`VerifiedHead`].
#[derive(Clone, Debug)]
pub struct VerifiedChange {
    change: Change,
    signed: SignedChange,
}

impl VerifiedChange {
    /// The decoded change.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// The signed bytes.
    pub fn signed(&self) -> &SignedChange {
        &self.signed
    }
}
