//! Newtype ids: replicas, changes, conflicts.

use std::fmt;

use crate::format::codec::DecodeError;
use std::collections::BTreeMap;

/// A replica's id: the first 16 bytes of a domain-separated BLAKE3 hash of its Ed25519
/// public key, so an id and its key cannot be paired wrongly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub [u8; 16]);

impl ReplicaId {
    /// Derives the id that belongs to a signing public key.
    pub fn for_signing_key(public: &[u8; 32]) -> ReplicaId {
        let mut h = blake3::Hasher::new_derive_key("tide 2026-11 replica id v1");
        h.update(public);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        ReplicaId(id)
    }

    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The first 8 hex characters, for people.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }

    /// Parses 32 hex characters.
    pub fn parse_hex(s: &str) -> Result<ReplicaId, DecodeError> {
        Ok(ReplicaId(parse_hex_array(s, "replica id")?))
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({})", self.short())
    }
}

/// A change's place in its origin's log: (origin, seq). Seqs start at 1 and have no gaps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ChangeId {
    /// The replica that sealed the change.
    pub origin: ReplicaId,
    /// Its position in that replica's log.
    pub seq: u64,
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin.short(), self.seq)
    }
}

/// Lower-case hex of any bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses exactly `N` bytes of hex.
pub fn parse_hex_array<const N: usize>(
    s: &str,
    what: &'static str,
) -> Result<[u8; N], DecodeError> {
    let s = s.trim();
    if s.len() != N * 2 {
        return Err(DecodeError::Malformed(what));
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk).map_err(|_| DecodeError::Malformed(what))?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| DecodeError::Malformed(what))?;
    }
    Ok(out)
}

/// A version vector: origin → highest contiguous seq held.
pub type VersionVector = BTreeMap<ReplicaId, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = ReplicaId([0xab; 16]);
        assert_eq!(ReplicaId::parse_hex(&id.to_hex()).unwrap(), id);
        assert!(ReplicaId::parse_hex("zz").is_err());
    }
}
