//! File keys, their wraps (X25519 and passphrase), and the chunked payload encryption
//! (SPEC §3). Every construction follows age's, with BLAKE3's KDF for HKDF.

use std::io::{self, Read, Write};

use aead_stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};

use crate::error::{BundleError, Result};
use crate::header::Stanza;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 65536;
/// Tag bytes per chunk.
pub const TAG: usize = 16;

/// A bundle's random file key.
pub struct FileKey([u8; 32]);

impl FileKey {
    /// A fresh key from the operating system.
    pub fn generate() -> FileKey {
        FileKey(random())
    }

    fn payload_key(&self, nonce: &[u8; 16]) -> [u8; 32] {
        let mut material = [0u8; 48];
        material[..32].copy_from_slice(&self.0);
        material[32..].copy_from_slice(nonce);
        blake3::derive_key("tide bundle v1 payload key", &material)
    }
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b
}

fn seal_key(wrap_key: &[u8; 32], file_key: &FileKey) -> [u8; 48] {
    let aead = ChaCha20Poly1305::new(wrap_key.into());
    let sealed = aead
        .encrypt(&[0u8; 12].into(), &file_key.0[..])
        .expect("sealing 32 bytes cannot fail");
    sealed.try_into().expect("32 bytes of key + 16 of tag")
}

fn open_key(wrap_key: &[u8; 32], wrapped: &[u8; 48]) -> Option<FileKey> {
    let aead = ChaCha20Poly1305::new(wrap_key.into());
    let key = aead.decrypt(&[0u8; 12].into(), &wrapped[..]).ok()?;
    Some(FileKey(key.try_into().ok()?))
}

fn x25519_wrap_key(ephemeral: &[u8; 32], recipient: &[u8; 32], shared: &[u8; 32]) -> [u8; 32] {
    let mut material = [0u8; 96];
    material[..32].copy_from_slice(ephemeral);
    material[32..64].copy_from_slice(recipient);
    material[64..].copy_from_slice(shared);
    blake3::derive_key("tide bundle v1 x25519 wrap", &material)
}

/// Wraps `file_key` for the holder of X25519 public key `recipient`.
pub fn wrap_x25519(file_key: &FileKey, recipient: &[u8; 32]) -> Result<Stanza> {
    let e = x25519_dalek::StaticSecret::from(random::<32>());
    let ephemeral = x25519_dalek::PublicKey::from(&e).to_bytes();
    let shared = e.diffie_hellman(&x25519_dalek::PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(BundleError::Malformed("recipient key is a low-order point"));
    }
    let wrap_key = x25519_wrap_key(&ephemeral, recipient, shared.as_bytes());
    Ok(Stanza::X25519 {
        ephemeral,
        wrapped: seal_key(&wrap_key, file_key),
    })
}

/// Argon2id parameters for passphrase stanzas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgonParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for ArgonParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 1 lane.
    fn default() -> Self {
        ArgonParams {
            m_kib: 65536,
            t: 3,
            p: 1,
        }
    }
}

fn passphrase_wrap_key(passphrase: &[u8], salt: &[u8; 16], p: ArgonParams) -> Result<[u8; 32]> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32))
        .map_err(|_| BundleError::Malformed("argon2 parameters"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut k = [0u8; 32];
    argon
        .hash_password_into(passphrase, salt, &mut k)
        .map_err(|_| BundleError::Malformed("argon2 parameters"))?;
    let mut material = [0u8; 48];
    material[..32].copy_from_slice(&k);
    material[32..].copy_from_slice(salt);
    Ok(blake3::derive_key(
        "tide bundle v1 passphrase wrap",
        &material,
    ))
}

/// Wraps `file_key` under a passphrase.
pub fn wrap_passphrase(
    file_key: &FileKey,
    passphrase: &[u8],
    params: ArgonParams,
) -> Result<Stanza> {
    let salt = random::<16>();
    let wrap_key = passphrase_wrap_key(passphrase, &salt, params)?;
    Ok(Stanza::Passphrase {
        salt,
        m_kib: params.m_kib,
        t: params.t,
        p: params.p,
        wrapped: seal_key(&wrap_key, file_key),
    })
}

/// Tries every stanza with what the reader holds; the first that opens gives the key.
pub fn unwrap(
    stanzas: &[Stanza],
    box_secret: Option<&[u8; 32]>,
    passphrase: Option<&[u8]>,
) -> Result<FileKey> {
    if box_secret.is_none() && passphrase.is_none() {
        return Err(BundleError::NeedKey);
    }
    // X25519 first: a passphrase stanza costs Argon2 work, a key stanza almost nothing.
    let ordered = stanzas
        .iter()
        .filter(|s| matches!(s, Stanza::X25519 { .. }))
        .chain(
            stanzas
                .iter()
                .filter(|s| matches!(s, Stanza::Passphrase { .. })),
        );
    for s in ordered {
        match (s, box_secret, passphrase) {
            (Stanza::X25519 { ephemeral, wrapped }, Some(secret), _) => {
                let secret = x25519_dalek::StaticSecret::from(*secret);
                let recipient = x25519_dalek::PublicKey::from(&secret).to_bytes();
                let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*ephemeral));
                if !shared.was_contributory() {
                    continue;
                }
                if let Some(k) = open_key(
                    &x25519_wrap_key(ephemeral, &recipient, shared.as_bytes()),
                    wrapped,
                ) {
                    return Ok(k);
                }
            }
            (
                Stanza::Passphrase {
                    salt,
                    m_kib,
                    t,
                    p,
                    wrapped,
                },
                _,
                Some(pass),
            ) => {
                let params = ArgonParams {
                    m_kib: *m_kib,
                    t: *t,
                    p: *p,
                };
                if let Some(k) = open_key(&passphrase_wrap_key(pass, salt, params)?, wrapped) {
                    return Ok(k);
                }
            }
            _ => {}
        }
    }
    Err(BundleError::NoMatchingKey)
}

/// A writer that seals what it is given in 64 KiB chunks; `finish` seals the last.
pub struct ChunkWriter<W: Write> {
    inner: W,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    buf: Vec<u8>,
}

impl<W: Write> ChunkWriter<W> {
    /// Encrypts to `inner` under the payload key of `file_key` and `nonce`.
    pub fn new(inner: W, file_key: &FileKey, nonce: &[u8; 16]) -> ChunkWriter<W> {
        let key = file_key.payload_key(nonce);
        let enc = EncryptorBE32::new(&key.into(), &[0u8; 19].into());
        ChunkWriter {
            inner,
            enc: Some(enc),
            buf: Vec::with_capacity(CHUNK),
        }
    }

    /// Seals the final chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let enc = self.enc.take().expect("finish is called once");
        let sealed = enc
            .encrypt_last(&self.buf[..])
            .map_err(|_| io::Error::other("chunk encryption failed"))?;
        self.inner.write_all(&sealed)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.len() == CHUNK {
                // A full chunk followed by more data is not the last one.
                let enc = self.enc.as_mut().expect("not finished");
                let sealed = enc
                    .encrypt_next(&self.buf[..])
                    .map_err(|_| io::Error::other("too many chunks"))?;
                self.inner.write_all(&sealed)?;
                self.buf.clear();
            }
            let n = rest.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that opens sealed chunks of a body of known size, one at a time.
pub struct ChunkReader<R: Read> {
    inner: R,
    remaining: u64,
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    plain: Vec<u8>,
    at: usize,
    key: [u8; 32],
    counter: u32,
    /// Set when a chunk failed; the reader's caller turns it into a typed error.
    pub failure: Option<BundleError>,
}

impl<R: Read> ChunkReader<R> {
    /// Decrypts `body_size` bytes of `inner`.
    pub fn new(inner: R, body_size: u64, file_key: &FileKey, nonce: &[u8; 16]) -> ChunkReader<R> {
        let key = file_key.payload_key(nonce);
        ChunkReader {
            inner,
            remaining: body_size,
            dec: Some(DecryptorBE32::new(&key.into(), &[0u8; 19].into())),
            plain: Vec::new(),
            at: 0,
            key,
            counter: 0,
            failure: None,
        }
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let Some(dec) = self.dec.as_mut() else {
            return Ok(());
        };
        let n = (self.remaining.min((CHUNK + TAG) as u64)) as usize;
        if n < TAG {
            self.failure = Some(BundleError::Truncated("encrypted body (no final chunk)"));
            return Err(io::Error::other("truncated"));
        }
        let mut sealed = vec![0u8; n];
        self.inner.read_exact(&mut sealed)?;
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let dec = self.dec.take().expect("checked above");
            match dec.decrypt_last(&sealed[..]) {
                // An empty final chunk is allowed only as the whole stream (SPEC §3.1).
                Ok(p) if p.is_empty() && self.counter > 0 => {
                    self.failure = Some(BundleError::BadCiphertext);
                    return Err(io::Error::other("empty final chunk"));
                }
                Ok(p) => self.plain = p,
                Err(_) => {
                    // A chunk that opens as a middle chunk where the last should be means
                    // the stream was cut at a chunk boundary.
                    let mut nonce = [0u8; 24];
                    nonce[19..23].copy_from_slice(&self.counter.to_be_bytes());
                    let middle = XChaCha20Poly1305::new(&self.key.into())
                        .decrypt(&nonce.into(), &sealed[..])
                        .is_ok();
                    self.failure = Some(if middle {
                        BundleError::Truncated("encrypted body (final chunk missing)")
                    } else {
                        BundleError::BadCiphertext
                    });
                    return Err(io::Error::other("bad chunk"));
                }
            }
        } else {
            match dec.decrypt_next(&sealed[..]) {
                Ok(p) => {
                    self.plain = p;
                    self.counter += 1;
                }
                Err(_) => {
                    self.failure = Some(BundleError::BadCiphertext);
                    return Err(io::Error::other("bad chunk"));
                }
            }
        }
        self.at = 0;
        Ok(())
    }
}

impl<R: Read> Read for ChunkReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if self.dec.is_none() {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.at);
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(data: &[u8], key: &FileKey, nonce: &[u8; 16]) -> Vec<u8> {
        let mut w = ChunkWriter::new(Vec::new(), key, nonce);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn chunks_round_trip_at_every_boundary() {
        let key = FileKey::generate();
        let nonce = random();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = seal(&data, &key, &nonce);
            let mut r = ChunkReader::new(&sealed[..], sealed.len() as u64, &key, &nonce);
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "length {len}");
        }
    }

    #[test]
    fn dropping_the_last_chunk_is_detected() {
        let key = FileKey::generate();
        let nonce = random();
        let data = vec![5u8; 2 * CHUNK + 10];
        let sealed = seal(&data, &key, &nonce);
        let cut = &sealed[..2 * (CHUNK + TAG)];
        let mut r = ChunkReader::new(cut, cut.len() as u64, &key, &nonce);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn wraps_open_only_for_their_holder() {
        let key = FileKey::generate();
        let secret = random::<32>();
        let public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes();
        let fast = ArgonParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        let stanzas = vec![
            wrap_x25519(&key, &public).unwrap(),
            wrap_passphrase(&key, b"correct horse", fast).unwrap(),
        ];
        assert_eq!(unwrap(&stanzas, Some(&secret), None).unwrap().0, key.0);
        assert_eq!(
            unwrap(&stanzas, None, Some(b"correct horse")).unwrap().0,
            key.0
        );
        assert!(matches!(
            unwrap(&stanzas, Some(&random()), None),
            Err(BundleError::NoMatchingKey)
        ));
        assert!(matches!(
            unwrap(&stanzas, None, Some(b"wrong")),
            Err(BundleError::NoMatchingKey)
        ));
    }
}

#[cfg(test)]
mod stream_edge_cases {
    use super::*;

    #[test]
    fn an_empty_final_chunk_after_data_is_refused() {
        let key = FileKey::generate();
        let nonce = random();
        // A full middle chunk, then an empty last one: a valid STREAM, but not the
        // canonical chunking of SPEC §3.1.
        let payload = key.payload_key(&nonce);
        let mut enc = EncryptorBE32::<XChaCha20Poly1305>::new(&payload.into(), &[0u8; 19].into());
        let mut sealed = enc.encrypt_next(&vec![1u8; CHUNK][..]).unwrap();
        sealed.extend(enc.encrypt_last(&[][..]).unwrap());
        let mut r = ChunkReader::new(&sealed[..], sealed.len() as u64, &key, &nonce);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(r.failure, Some(BundleError::BadCiphertext)));
    }
}
