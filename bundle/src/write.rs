//! Writing bundles: image, compression, encryption, signature (SPEC §1–5), in bounded
//! memory through temporary files.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use tide_core::{Chunks, ReplicaId, SecretIdentity, SignedHead, VersionVector};

use crate::crypto::{ArgonParams, ChunkWriter, FileKey, random, wrap_passphrase, wrap_x25519};
use crate::error::Result;
use crate::header::{FLAG_ENCRYPTED, Header};
use crate::image::ImageBuilder;

/// How to write a bundle.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Address the bundle to this replica (readers elsewhere refuse it).
    pub recipient: Option<ReplicaId>,
    /// Encrypt to these X25519 public keys (from peers' cards).
    pub encrypt_to: Vec<[u8; 32]>,
    /// Encrypt under this passphrase too.
    pub passphrase: Option<Vec<u8>>,
    /// Argon2id cost for the passphrase.
    pub argon: ArgonParams,
    /// zstd level. The default, 1, is zstd's fastest standard level: bundles stay well
    /// under SQLite's own compressed changeset (BENCHMARKS.md) and export of a large
    /// change is bound by compression time at higher levels.
    pub level: i32,
    /// Where the private temporary folder goes (default: the system's temporary folder).
    pub temp_dir: Option<std::path::PathBuf>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            recipient: None,
            encrypt_to: Vec::new(),
            passphrase: None,
            argon: ArgonParams::default(),
            level: 1,
            temp_dir: None,
        }
    }
}

/// What the signer says about itself in the header.
pub struct Sender<'a> {
    /// Signs the bundle.
    pub identity: &'a SecretIdentity,
    /// Its version vector (the acknowledgement the receiver learns).
    pub ack: VersionVector,
    /// Its schema epoch.
    pub schema: u64,
}

/// Writes one bundle to `out` holding the changes `source` hands over. Returns its
/// header and total size.
pub fn write_bundle(
    sender: &Sender<'_>,
    source: impl FnOnce(&mut dyn FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>) -> Result<()>,
    options: &WriteOptions,
    out: &mut dyn Write,
) -> Result<(Header, u64)> {
    let dir = crate::read::private_dir(options.temp_dir.as_deref())?;
    let image_path = dir.path().join("image.db");
    let mut builder = ImageBuilder::create(&image_path)?;
    source(&mut |head, chunks| builder.add(head, chunks))?;
    let summary = builder.finish()?;
    let image_size = std::fs::metadata(&image_path)?.len();

    // Body: zstd, then (maybe) chunked encryption, into a temporary file.
    let body_path = dir.path().join("body");
    let encrypted = !options.encrypt_to.is_empty() || options.passphrase.is_some();
    let mut stanzas = Vec::new();
    let mut nonce = None;
    {
        let body = BufWriter::new(File::create(&body_path)?);
        let mut image = BufReader::new(File::open(&image_path)?);
        if encrypted {
            let file_key = FileKey::generate();
            for r in &options.encrypt_to {
                stanzas.push(wrap_x25519(&file_key, r)?);
            }
            if let Some(p) = &options.passphrase {
                stanzas.push(wrap_passphrase(&file_key, p, options.argon)?);
            }
            let n = random::<16>();
            nonce = Some(n);
            let chunks = ChunkWriter::new(body, &file_key, &n);
            let mut z = zstd::stream::write::Encoder::new(chunks, options.level)?;
            std::io::copy(&mut image, &mut z)?;
            z.finish()?
                .finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
        } else {
            let mut z = zstd::stream::write::Encoder::new(body, options.level)?;
            std::io::copy(&mut image, &mut z)?;
            z.finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
        }
    }
    let body_size = std::fs::metadata(&body_path)?.len();
    let header = Header {
        flags: if encrypted { FLAG_ENCRYPTED } else { 0 },
        critical: Vec::new(),
        sender: sender.identity.id(),
        recipient: options.recipient,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        schema: sender.schema,
        ack: sender.ack.clone(),
        requires: summary.requires,
        provides: summary.provides,
        changes: summary.changes,
        ops: summary.ops,
        image_size,
        body_size,
        stanzas,
        nonce,
    };
    let head = header.encode();

    // Sign BLAKE3(preamble || header || body), then write everything out.
    let mut hasher = blake3::Hasher::new();
    hasher.update(&head);
    let mut body = File::open(&body_path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let signature = sender
        .identity
        .sign(&crate::signing_message(hasher.finalize().as_bytes()));
    out.write_all(&head)?;
    std::io::copy(&mut BufReader::new(File::open(&body_path)?), out)?;
    out.write_all(&signature)?;
    out.flush()?;
    Ok((header, head.len() as u64 + body_size + 64))
}
