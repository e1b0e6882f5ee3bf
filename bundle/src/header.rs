//! Preamble and header: parsed within limits before anything else is read (SPEC §1–2).

use std::collections::BTreeMap;

use tide_core::codec::{Reader, put_varint};
use tide_core::{DecodeError, ReplicaId, VersionVector};

use crate::error::{BundleError, Result};

/// `"\x89TIDE\r\n\x1a"`.
pub const MAGIC: [u8; 8] = [0x89, b'T', b'I', b'D', b'E', 0x0d, 0x0a, 0x1a];
/// The format version this build writes and reads: 2 since the image holds changes as
/// heads and chunks (SPEC §5, §9).
pub const VERSION: u16 = 2;
/// Preamble bytes: magic, version, header length.
pub const PREAMBLE_LEN: usize = 14;
/// Largest header a reader accepts.
pub const MAX_HEADER: u32 = 65536;
/// Flag bit: the body is encrypted.
pub const FLAG_ENCRYPTED: u64 = 1;
const MAX_CRITICAL: u64 = 16;
const MAX_VECTOR: u64 = 4096;
const MAX_STANZAS: u64 = 32;
/// Argon2id limits a reader enforces (SPEC §3.2).
pub const MAX_ARGON_M_KIB: u64 = 1 << 20;
/// Largest Argon2 time cost accepted.
pub const MAX_ARGON_T: u64 = 16;
/// Largest Argon2 parallelism accepted.
pub const MAX_ARGON_P: u64 = 8;

/// A file-key wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stanza {
    /// Wrapped for an X25519 public key.
    X25519 {
        /// The writer's ephemeral public key.
        ephemeral: [u8; 32],
        /// The file key, sealed.
        wrapped: [u8; 48],
    },
    /// Wrapped under a passphrase.
    Passphrase {
        /// Argon2id salt.
        salt: [u8; 16],
        /// Memory cost, KiB.
        m_kib: u32,
        /// Time cost.
        t: u32,
        /// Parallelism.
        p: u32,
        /// The file key, sealed.
        wrapped: [u8; 48],
    },
}

/// Everything a bundle says about itself in the clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Flag bits (only [`FLAG_ENCRYPTED`] is defined).
    pub flags: u64,
    /// Capabilities a reader must have.
    pub critical: Vec<String>,
    /// The signer.
    pub sender: ReplicaId,
    /// Whom it is for, if addressed.
    pub recipient: Option<ReplicaId>,
    /// Milliseconds since 1970 when written.
    pub created_ms: u64,
    /// The sender's schema epoch.
    pub schema: u64,
    /// The sender's version vector.
    pub ack: VersionVector,
    /// What the receiver must hold already: origin → seq.
    pub requires: VersionVector,
    /// What the receiver holds after: origin → last carried seq.
    pub provides: VersionVector,
    /// Changes carried.
    pub changes: u64,
    /// Row ops carried.
    pub ops: u64,
    /// Bytes of the SQLite image.
    pub image_size: u64,
    /// Bytes of the body.
    pub body_size: u64,
    /// File-key wraps (empty when not encrypted).
    pub stanzas: Vec<Stanza>,
    /// Payload nonce (encrypted bundles only).
    pub nonce: Option<[u8; 16]>,
}

impl Header {
    /// True when the body is encrypted.
    pub fn encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    /// The preamble and header bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(256);
        put_varint(&mut h, self.flags);
        put_varint(&mut h, self.critical.len() as u64);
        for c in &self.critical {
            put_varint(&mut h, c.len() as u64);
            h.extend_from_slice(c.as_bytes());
        }
        h.extend_from_slice(&self.sender.0);
        match &self.recipient {
            None => h.push(0),
            Some(r) => {
                h.push(1);
                h.extend_from_slice(&r.0);
            }
        }
        put_varint(&mut h, self.created_ms);
        put_varint(&mut h, self.schema);
        for v in [&self.ack, &self.requires, &self.provides] {
            put_varint(&mut h, v.len() as u64);
            for (id, seq) in v {
                h.extend_from_slice(&id.0);
                put_varint(&mut h, *seq);
            }
        }
        for n in [self.changes, self.ops, self.image_size, self.body_size] {
            put_varint(&mut h, n);
        }
        put_varint(&mut h, self.stanzas.len() as u64);
        for s in &self.stanzas {
            match s {
                Stanza::X25519 { ephemeral, wrapped } => {
                    h.push(1);
                    h.extend_from_slice(ephemeral);
                    h.extend_from_slice(wrapped);
                }
                Stanza::Passphrase {
                    salt,
                    m_kib,
                    t,
                    p,
                    wrapped,
                } => {
                    h.push(2);
                    h.extend_from_slice(salt);
                    put_varint(&mut h, u64::from(*m_kib));
                    put_varint(&mut h, u64::from(*t));
                    put_varint(&mut h, u64::from(*p));
                    h.extend_from_slice(wrapped);
                }
            }
        }
        if let Some(n) = &self.nonce {
            h.extend_from_slice(n);
        }
        let mut out = Vec::with_capacity(PREAMBLE_LEN + h.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        out.extend_from_slice(&h);
        out
    }

    /// Checks a preamble; returns the header length.
    pub fn parse_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<u32> {
        if p[..8] != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let version = u16::from_be_bytes([p[8], p[9]]);
        if version != VERSION {
            return Err(BundleError::UnsupportedVersion(version));
        }
        let len = u32::from_be_bytes([p[10], p[11], p[12], p[13]]);
        if len > MAX_HEADER {
            return Err(BundleError::LimitExceeded {
                field: "header length",
                value: u64::from(len),
                limit: u64::from(MAX_HEADER),
            });
        }
        Ok(len)
    }

    /// Parses header bytes (after the preamble), refusing anything outside the limits.
    pub fn parse(bytes: &[u8], image_cap: u64) -> Result<Header> {
        let mut r = Cursor(Reader::new(bytes));
        let flags = r.varint("flags")?;
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(BundleError::UnknownFlags(flags & !FLAG_ENCRYPTED));
        }
        let ncrit = r.bounded("critical capabilities", MAX_CRITICAL)?;
        let mut critical = Vec::new();
        for _ in 0..ncrit {
            let n = r.bounded("capability name", 256)? as usize;
            let name = String::from_utf8(r.take(n, "capability name")?.to_vec())
                .map_err(|_| BundleError::Malformed("capability name"))?;
            critical.push(name);
        }
        // Version 2 knows no critical capability: any is refused.
        if let Some(c) = critical.first() {
            return Err(BundleError::UnknownCritical(c.clone()));
        }
        let sender = ReplicaId(r.array("sender")?);
        let recipient = match r.byte("recipient")? {
            0 => None,
            1 => Some(ReplicaId(r.array("recipient")?)),
            _ => return Err(BundleError::Malformed("recipient tag")),
        };
        let created_ms = r.varint("created")?;
        let schema = r.varint("schema")?;
        let ack = r.vector("ack")?;
        let requires = r.vector("requires")?;
        let provides = r.vector("provides")?;
        let changes = r.varint("changes")?;
        let ops = r.varint("ops")?;
        let image_size = r.varint("image size")?;
        if image_size > image_cap {
            return Err(BundleError::LimitExceeded {
                field: "image size",
                value: image_size,
                limit: image_cap,
            });
        }
        let body_size = r.varint("body size")?;
        let body_cap = max_body(image_cap);
        if body_size > body_cap {
            return Err(BundleError::LimitExceeded {
                field: "body size",
                value: body_size,
                limit: body_cap,
            });
        }
        let nstanzas = r.bounded("stanzas", MAX_STANZAS)?;
        let mut stanzas = Vec::new();
        for _ in 0..nstanzas {
            stanzas.push(match r.byte("stanza kind")? {
                1 => Stanza::X25519 {
                    ephemeral: r.array("ephemeral key")?,
                    wrapped: r.array("wrapped key")?,
                },
                2 => {
                    let salt = r.array("salt")?;
                    let m = r.varint("argon2 memory")?;
                    let t = r.varint("argon2 time")?;
                    let p = r.varint("argon2 parallelism")?;
                    if m > MAX_ARGON_M_KIB {
                        return Err(BundleError::LimitExceeded {
                            field: "argon2 memory (KiB)",
                            value: m,
                            limit: MAX_ARGON_M_KIB,
                        });
                    }
                    if t > MAX_ARGON_T {
                        return Err(BundleError::LimitExceeded {
                            field: "argon2 time cost",
                            value: t,
                            limit: MAX_ARGON_T,
                        });
                    }
                    if p > MAX_ARGON_P {
                        return Err(BundleError::LimitExceeded {
                            field: "argon2 parallelism",
                            value: p,
                            limit: MAX_ARGON_P,
                        });
                    }
                    if t == 0 || p == 0 || m < 8 * p {
                        return Err(BundleError::Malformed("argon2 parameters"));
                    }
                    Stanza::Passphrase {
                        salt,
                        m_kib: m as u32,
                        t: t as u32,
                        p: p as u32,
                        wrapped: r.array("wrapped key")?,
                    }
                }
                _ => return Err(BundleError::Malformed("stanza kind")),
            });
        }
        if stanzas
            .iter()
            .filter(|s| matches!(s, Stanza::Passphrase { .. }))
            .count()
            > 1
        {
            // One Argon2 computation at most, whatever a header asks for.
            return Err(BundleError::Malformed("more than one passphrase stanza"));
        }
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        if encrypted == stanzas.is_empty() {
            return Err(BundleError::Malformed(
                "stanzas present if and only if encrypted",
            ));
        }
        let nonce = if encrypted {
            Some(r.array("payload nonce")?)
        } else {
            None
        };
        if !r.0.is_empty() {
            return Err(BundleError::Malformed("trailing bytes in header"));
        }
        Ok(Header {
            flags,
            critical,
            sender,
            recipient,
            created_ms,
            schema,
            ack,
            requires,
            provides,
            changes,
            ops,
            image_size,
            body_size,
            stanzas,
            nonce,
        })
    }
}

/// The largest body a given image cap allows: incompressible data plus zstd framing
/// plus one 16-byte tag per 64 KiB chunk.
pub fn max_body(image_cap: u64) -> u64 {
    image_cap
        .saturating_add(image_cap / 100)
        .saturating_add(65536)
        .saturating_add(image_cap / 65536 * 16 + 16)
}

/// Header fields read from untrusted bytes: the core's bounds-checked reader, with its
/// failures named as header errors.
struct Cursor<'a>(Reader<'a>);

fn malformed(e: DecodeError) -> BundleError {
    BundleError::Malformed(match e {
        DecodeError::Truncated(what) | DecodeError::Malformed(what) => what,
        DecodeError::UnknownVersion(_) => "version",
        _ => "header",
    })
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        self.0.take(n, what).map_err(malformed)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8> {
        self.0.byte(what).map_err(malformed)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        self.0.array(what).map_err(malformed)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64> {
        self.0.varint(what).map_err(malformed)
    }

    fn bounded(&mut self, what: &'static str, limit: u64) -> Result<u64> {
        let v = self.varint(what)?;
        if v > limit {
            return Err(BundleError::LimitExceeded {
                field: what,
                value: v,
                limit,
            });
        }
        Ok(v)
    }

    fn vector(&mut self, what: &'static str) -> Result<VersionVector> {
        let n = self.bounded(what, MAX_VECTOR)?;
        let mut out = BTreeMap::new();
        let mut last: Option<ReplicaId> = None;
        for _ in 0..n {
            let id = ReplicaId(self.array(what)?);
            let seq = self.varint(what)?;
            if seq == 0 || last.is_some_and(|l| l >= id) {
                return Err(BundleError::Malformed(what));
            }
            last = Some(id);
            out.insert(id, seq);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 bundle (whole change bodies in its image) is refused at the preamble,
    /// before any work, and the message says an older one must be exported again.
    #[test]
    fn a_version_1_bundle_is_refused_at_the_preamble() {
        let mut p = [0u8; PREAMBLE_LEN];
        p[..8].copy_from_slice(&MAGIC);
        p[8..10].copy_from_slice(&1u16.to_be_bytes());
        p[13] = 100;
        let err = Header::parse_preamble(&p).unwrap_err();
        assert!(matches!(err, BundleError::UnsupportedVersion(1)), "{err}");
        assert!(err.to_string().contains("exported again"), "{err}");
        p[8..10].copy_from_slice(&VERSION.to_be_bytes());
        assert_eq!(Header::parse_preamble(&p).unwrap(), 100);
    }

    fn sample() -> Header {
        Header {
            flags: FLAG_ENCRYPTED,
            critical: vec![],
            sender: ReplicaId([1; 16]),
            recipient: Some(ReplicaId([2; 16])),
            created_ms: 1_700_000_000_000,
            schema: 3,
            ack: [(ReplicaId([1; 16]), 5), (ReplicaId([3; 16]), 2)].into(),
            requires: [(ReplicaId([3; 16]), 1)].into(),
            provides: [(ReplicaId([1; 16]), 5)].into(),
            changes: 4,
            ops: 100,
            image_size: 8192,
            body_size: 1000,
            stanzas: vec![
                Stanza::X25519 {
                    ephemeral: [7; 32],
                    wrapped: [8; 48],
                },
                Stanza::Passphrase {
                    salt: [9; 16],
                    m_kib: 65536,
                    t: 3,
                    p: 1,
                    wrapped: [10; 48],
                },
            ],
            nonce: Some([11; 16]),
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        let bytes = h.encode();
        let len = Header::parse_preamble(bytes[..PREAMBLE_LEN].try_into().unwrap()).unwrap();
        assert_eq!(len as usize, bytes.len() - PREAMBLE_LEN);
        assert_eq!(Header::parse(&bytes[PREAMBLE_LEN..], 1 << 30).unwrap(), h);
    }

    #[test]
    fn two_passphrase_stanzas_are_refused() {
        let mut h = sample();
        h.stanzas.push(h.stanzas[1].clone());
        let bytes = h.encode();
        assert!(matches!(
            Header::parse(&bytes[PREAMBLE_LEN..], 1 << 30),
            Err(BundleError::Malformed(_))
        ));
    }

    #[test]
    fn hostile_argon_parameters_are_refused() {
        let mut h = sample();
        h.stanzas[1] = Stanza::Passphrase {
            salt: [0; 16],
            m_kib: u32::MAX,
            t: 1,
            p: 1,
            wrapped: [0; 48],
        };
        let bytes = h.encode();
        assert!(matches!(
            Header::parse(&bytes[PREAMBLE_LEN..], 1 << 30),
            Err(BundleError::LimitExceeded { .. })
        ));
    }
}
