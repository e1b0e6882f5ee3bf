//! Reading bundles in the fixed order of SPEC §6: header within limits, signature,
//! decryption, capped decompression, then the image, read-only and defensive.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::Connection;
use tide_core::{Card, Chunks, SignedChange, SignedHead};

use crate::crypto::{ChunkReader, unwrap};
use crate::error::{BundleError, Result};
use crate::header::{Header, PREAMBLE_LEN};

/// Default cap on a bundle's decompressed image: 8 GiB.
pub const DEFAULT_IMAGE_CAP: u64 = 8 << 30;

/// What a reader holds: the replicas it trusts and the keys it may decrypt with.
#[derive(Clone, Default)]
pub struct ReadOptions {
    /// Known replicas: a bundle signed by anyone else is refused.
    pub known: Vec<Card>,
    /// This replica's X25519 secret, to open bundles encrypted to it.
    pub box_secret: Option<[u8; 32]>,
    /// A passphrase to try.
    pub passphrase: Option<Vec<u8>>,
    /// Largest image accepted; 0 means [`DEFAULT_IMAGE_CAP`].
    pub image_cap: u64,
    /// Where the private temporary folder goes (default: the system's temporary
    /// folder). It needs room for the body and the image; it is removed on every path.
    pub temp_dir: Option<std::path::PathBuf>,
}

impl ReadOptions {
    fn cap(&self) -> u64 {
        if self.image_cap == 0 {
            DEFAULT_IMAGE_CAP
        } else {
            self.image_cap
        }
    }
}

/// A bundle whose signature verified and whose image opened cleanly. Only this type
/// yields changes.
pub struct VerifiedBundle {
    header: Header,
    image: Connection,
    // Declared after `image` so the connection closes before the folder goes.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for VerifiedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedBundle")
            .field("header", &self.header)
            .finish()
    }
}

impl VerifiedBundle {
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Calls `each` with every change's signed head, in the order written, and a reader
    /// of its chunks: a change of any size passes a chunk at a time. After the last
    /// change, checks that the header's `ops`, `requires` and `provides` say what the
    /// changes carry (SPEC §2.3), and fails if they do not: an import that takes the
    /// changes as they come must not commit before this returns.
    pub fn for_each_change(
        &self,
        mut each: impl FnMut(&SignedHead, &mut dyn Chunks) -> Result<()>,
    ) -> Result<()> {
        let mut carried = crate::image::Carried::default();
        crate::image::each_change(&self.image, |head, chunks| {
            each(head, chunks)?;
            let manifest = head
                .manifest()
                .map_err(|e| BundleError::BadImage(e.to_string()))?;
            carried.add(&manifest);
            Ok(())
        })?;
        carried.check(&self.header)
    }

    /// Every change, collected whole in memory (for small bundles and tests).
    pub fn changes(&self) -> Result<Vec<SignedChange>> {
        let mut out = Vec::new();
        self.for_each_change(|head, chunks| {
            let manifest = head
                .manifest()
                .map_err(|e| BundleError::BadImage(e.to_string()))?;
            let data = manifest
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| chunks.chunk(i, c))
                .collect::<tide_core::Result<Vec<_>>>()?;
            out.push(SignedChange::new(head.clone(), data));
            Ok(())
        })?;
        Ok(out)
    }
}

fn read_exact_or(input: &mut dyn Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(what),
        _ => BundleError::Io(e),
    })
}

/// Reads the preamble and header only: what `inspect` shows. Nothing is verified.
pub fn read_header(input: &mut dyn Read, image_cap: u64) -> Result<(Header, Vec<u8>)> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_exact_or(input, &mut pre, "preamble")?;
    let len = Header::parse_preamble(&pre)?;
    let mut head = vec![0u8; len as usize];
    read_exact_or(input, &mut head, "header")?;
    let header = Header::parse(
        &head,
        if image_cap == 0 {
            DEFAULT_IMAGE_CAP
        } else {
            image_cap
        },
    )?;
    let mut all = pre.to_vec();
    all.extend_from_slice(&head);
    Ok((header, all))
}

/// Reads, verifies, decrypts and opens a bundle. Nothing of it reaches zstd, the AEAD or
/// SQLite before its signature verified against a known replica's key.
pub fn read_bundle(input: &mut dyn Read, options: &ReadOptions) -> Result<VerifiedBundle> {
    let (header, head) = read_header(input, options.cap())?;
    let dir = private_dir(options.temp_dir.as_deref())?;
    let body_path = verify_into(input, &header, &head, &options.known, dir.path())?;

    // Decrypt (if encrypted) and decompress with the declared size as a hard cap.
    let image_path = dir.path().join("image.db");
    {
        let body = BufReader::new(File::open(&body_path)?);
        let mut out = BufWriter::new(File::create(&image_path)?);
        let written = if header.encrypted() {
            let key = unwrap(
                &header.stanzas,
                options.box_secret.as_ref(),
                options.passphrase.as_deref(),
            )?;
            let nonce = header
                .nonce
                .expect("encrypted headers carry a nonce (checked when parsed)");
            let mut chunks = ChunkReader::new(body, header.body_size, &key, &nonce);
            let result = decompress_capped(&mut chunks, &mut out, header.image_size);
            match (result, chunks.failure.take()) {
                (_, Some(failure)) => return Err(failure),
                (r, None) => r?,
            }
        } else {
            decompress_capped(&mut { body }, &mut out, header.image_size)?
        };
        if written < header.image_size {
            return Err(BundleError::BadSize {
                declared: header.image_size,
                what: "fewer bytes",
            });
        }
        out.flush()?;
    }
    std::fs::remove_file(&body_path)?;
    let image = crate::image::open_image(&image_path, header.changes)?;
    Ok(VerifiedBundle {
        header,
        image,
        _dir: dir,
    })
}

/// A private temporary folder, removed when dropped (on every path, errors included).
/// Mode 0700: it holds decrypted plaintext, and files inside inherit no access for others.
pub(crate) fn private_dir(parent: Option<&std::path::Path>) -> Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(".tide-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o700));
    }
    Ok(match parent {
        Some(p) => b.tempdir_in(p)?,
        None => b.tempdir()?,
    })
}

/// Streams the body into `dir` while hashing, then checks the signature and the end of
/// the file. Returns the body's path.
fn verify_into(
    input: &mut dyn Read,
    header: &Header,
    head: &[u8],
    known: &[Card],
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let body_path = dir.join("body");
    let mut body = BufWriter::new(File::create(&body_path)?);
    verify_stream(input, header, head, known, &mut body)?;
    body.flush()?;
    Ok(body_path)
}

/// Hashes the body as it passes into `body`, then checks the signature and the end of
/// the input.
fn verify_stream(
    input: &mut dyn Read,
    header: &Header,
    head: &[u8],
    known: &[Card],
    body: &mut dyn Write,
) -> Result<()> {
    let card = known
        .iter()
        .find(|c| c.id == header.sender)
        .ok_or(BundleError::UnknownSender(header.sender))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(head);
    let mut left = header.body_size;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(BundleError::Truncated("body"));
        }
        hasher.update(&buf[..n]);
        body.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let mut sig = [0u8; 64];
    read_exact_or(input, &mut sig, "signature")?;
    if input.read(&mut [0u8; 1])? != 0 {
        return Err(BundleError::TrailingBytes);
    }
    let key = VerifyingKey::from_bytes(&card.sign_key).map_err(|_| BundleError::BadSignature)?;
    key.verify_strict(
        &crate::signing_message(hasher.finalize().as_bytes()),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| BundleError::BadSignature)?;
    Ok(())
}

/// Decompresses one zstd stream, refusing more than `cap` bytes of output.
fn decompress_capped(input: &mut dyn Read, out: &mut dyn Write, cap: u64) -> Result<u64> {
    let mut z = zstd::stream::read::Decoder::new(input)
        .map_err(|e| BundleError::BadCompression(e.to_string()))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match z.read(&mut buf) {
            Ok(n) => n,
            Err(e) => return Err(BundleError::BadCompression(e.to_string())),
        };
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > cap {
            return Err(BundleError::BadSize {
                declared: cap,
                what: "more bytes: a decompression bomb",
            });
        }
        out.write_all(&buf[..n])?;
    }
}

/// Reads a whole bundle and checks its signature (no decryption): what `verify` shows.
pub fn verify_bundle(input: &mut dyn Read, known: &[Card]) -> Result<Header> {
    let (header, head) = read_header(input, DEFAULT_IMAGE_CAP)?;
    // Verification alone needs no copy of the body: hash it as it streams past.
    verify_stream(input, &header, &head, known, &mut std::io::sink())?;
    Ok(header)
}

/// Decompresses a plain body (as if verified) and opens its image: the part of reading
/// that lies behind the signature, for fuzzing and crash replays.
pub(crate) fn open_plain_body(body: &[u8], image_size: u64, changes: u64) -> Result<usize> {
    let dir = private_dir(None)?;
    let image_path = dir.path().join("image.db");
    let written = {
        let mut out = BufWriter::new(File::create(&image_path)?);
        let n = decompress_capped(&mut &body[..], &mut out, image_size)?;
        out.flush()?;
        n
    };
    if written < image_size {
        return Err(BundleError::BadSize {
            declared: image_size,
            what: "fewer bytes",
        });
    }
    let image = crate::image::open_image(&image_path, changes)?;
    let mut n = 0;
    crate::image::each_change(&image, |_, _| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_and_garbage_after_the_frames_are_refused() {
        let one = zstd::encode_all(&b"image"[..], 3).unwrap();
        let mut two = one.clone();
        two.extend_from_slice(&one);
        assert_eq!(
            decompress_capped(&mut &one[..], &mut Vec::new(), 5).unwrap(),
            5
        );
        // Concatenated frames are one stream (SPEC §3), and still capped.
        assert_eq!(
            decompress_capped(&mut &two[..], &mut Vec::new(), 10).unwrap(),
            10
        );
        assert!(matches!(
            decompress_capped(&mut &two[..], &mut Vec::new(), 9),
            Err(BundleError::BadSize { .. })
        ));
        let mut garbage = one.clone();
        garbage.extend_from_slice(b"not zstd at all");
        assert!(decompress_capped(&mut &garbage[..], &mut Vec::new(), 100).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn the_temporary_folder_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = private_dir(Some(parent.path())).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
