//! Parts: a bundle cut into files of bounded size, reassembled in any order (SPEC §7).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{BundleError, Result};

/// `"\x89TPRT\r\n\x1a"`.
pub const PART_MAGIC: [u8; 8] = [0x89, b'T', b'P', b'R', b'T', 0x0d, 0x0a, 0x1a];
const PART_HEADER: u64 = 8 + 2 + 32 + 8 + 2 + 2 + 8 + 4;

struct PartHeader {
    hash: [u8; 32],
    total: u64,
    index: u16,
    count: u16,
    offset: u64,
    len: u32,
}

impl PartHeader {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PART_HEADER as usize);
        out.extend_from_slice(&PART_MAGIC);
        out.extend_from_slice(&crate::header::VERSION.to_be_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.total.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out
    }

    fn read(input: &mut dyn Read) -> Result<PartHeader> {
        let mut b = [0u8; PART_HEADER as usize];
        input
            .read_exact(&mut b)
            .map_err(|_| BundleError::Truncated("part header"))?;
        if b[..8] != PART_MAGIC {
            return Err(BundleError::Parts("not a bundle part (bad magic)".into()));
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != crate::header::VERSION {
            return Err(BundleError::UnsupportedVersion(version));
        }
        let h = PartHeader {
            hash: b[10..42].try_into().expect("32 bytes"),
            total: u64::from_be_bytes(b[42..50].try_into().expect("8 bytes")),
            index: u16::from_be_bytes([b[50], b[51]]),
            count: u16::from_be_bytes([b[52], b[53]]),
            offset: u64::from_be_bytes(b[54..62].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(b[62..66].try_into().expect("4 bytes")),
        };
        if h.count == 0
            || h.index >= h.count
            || h.offset
                .checked_add(u64::from(h.len))
                .is_none_or(|end| end > h.total)
        {
            return Err(BundleError::Parts(
                "part header fields are inconsistent".into(),
            ));
        }
        Ok(h)
    }
}

/// Cuts the bundle at `bundle` into parts of at most `part_size` bytes each, written as
/// `<prefix>.1-of-N.tidepart` …; returns their paths.
pub fn split(bundle: &Path, part_size: u64, prefix: &Path) -> Result<Vec<PathBuf>> {
    if part_size <= PART_HEADER {
        return Err(BundleError::Parts(format!(
            "a part must be larger than its {PART_HEADER}-byte header"
        )));
    }
    let per = (part_size - PART_HEADER).min(u64::from(u32::MAX));
    let total = std::fs::metadata(bundle)?.len();
    let count = total.div_ceil(per).max(1);
    if count > u64::from(u16::MAX) {
        return Err(BundleError::Parts(format!(
            "{count} parts needed; at most 65535: choose a larger size"
        )));
    }
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut BufReader::new(File::open(bundle)?), &mut hasher)?;
    let hash = *hasher.finalize().as_bytes();
    let mut input = BufReader::new(File::open(bundle)?);
    let mut out = Vec::new();
    for i in 0..count {
        let offset = i * per;
        let len = per.min(total - offset);
        let path = PathBuf::from(format!(
            "{}.{}-of-{}.tidepart",
            prefix.display(),
            i + 1,
            count
        ));
        let mut f = BufWriter::new(File::create(&path)?);
        let h = PartHeader {
            hash,
            total,
            index: i as u16,
            count: count as u16,
            offset,
            len: len as u32,
        };
        f.write_all(&h.encode())?;
        std::io::copy(&mut (&mut input).take(len), &mut f)?;
        f.flush()?;
        out.push(path);
    }
    Ok(out)
}

/// Reassembles parts (any order) into `out_dir/bundle.tide` and checks the whole
/// bundle's hash. Says which parts are missing when some are.
pub fn assemble(parts: &[PathBuf], out_dir: &Path) -> Result<PathBuf> {
    let mut headers: Vec<(PartHeader, &PathBuf)> = Vec::new();
    for p in parts {
        let h = PartHeader::read(&mut BufReader::new(File::open(p)?))?;
        if let Some((first, _)) = headers.first()
            && (first.hash != h.hash || first.total != h.total || first.count != h.count)
        {
            return Err(BundleError::Parts(
                "these parts belong to different bundles".into(),
            ));
        }
        if let Some((_, first)) = headers.iter().find(|(x, _)| x.index == h.index) {
            return Err(BundleError::Parts(format!(
                "part {} of {} is given twice ({} and {}): give each part once",
                h.index + 1,
                h.count,
                first.display(),
                p.display()
            )));
        }
        let size = std::fs::metadata(p)?.len();
        if size > PART_HEADER + u64::from(h.len) {
            return Err(BundleError::Parts(format!(
                "part {} of {} ({}) has {} byte(s) after its data: it is not the part as written",
                h.index + 1,
                h.count,
                p.display(),
                size - PART_HEADER - u64::from(h.len)
            )));
        }
        headers.push((h, p));
    }
    let Some((first, _)) = headers.first() else {
        return Err(BundleError::Parts("no parts given".into()));
    };
    let (count, total, hash) = (first.count as usize, first.total, first.hash);
    if headers.len() < count {
        let missing = (0..count)
            .filter(|i| !headers.iter().any(|(h, _)| h.index as usize == *i))
            .map(|i| i + 1)
            .collect();
        return Err(BundleError::MissingParts {
            have: headers.len(),
            count,
            missing,
        });
    }
    headers.sort_by_key(|(h, _)| h.index);
    let path = out_dir.join("bundle.tide");
    let mut out = BufWriter::new(File::create(&path)?);
    let mut hasher = blake3::Hasher::new();
    let mut at = 0u64;
    for (h, p) in &headers {
        if h.offset != at {
            return Err(BundleError::Parts(format!(
                "part {} does not continue where part {} ended",
                h.index + 1,
                h.index
            )));
        }
        let mut f = File::open(p)?;
        f.seek(SeekFrom::Start(PART_HEADER))?;
        let mut data = BufReader::new(f).take(u64::from(h.len));
        let mut buf = vec![0u8; 1 << 16];
        let mut copied = 0u64;
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            copied += n as u64;
        }
        if copied != u64::from(h.len) {
            return Err(BundleError::Truncated("bundle part"));
        }
        at += copied;
    }
    if at != total {
        return Err(BundleError::Parts(
            "the parts do not add up to the whole bundle".into(),
        ));
    }
    out.flush()?;
    if *hasher.finalize().as_bytes() != hash {
        return Err(BundleError::Parts(
            "the reassembled bundle does not match its hash: a part was altered".into(),
        ));
    }
    Ok(path)
}
