//! Byte-level helpers shared by every hand-written encoding of tide (changes here, bundle
//! headers in `tide-bundle`): LEB128 varints, length-prefixed byte strings and a
//! bounds-checked reader for untrusted input.
//!
//! Signed bytes are produced only through these helpers so that no serializer upgrade can
//! change what was signed.

/// Bytes that do not decode: a change, a key, a card or a metadata blob.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended while reading the named field.
    #[error("input ends early while reading {0}")]
    Truncated(&'static str),
    /// The named field holds a value no valid encoder produces.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A format version this build does not know.
    #[error("unknown format version {0}")]
    UnknownVersion(u64),
}

/// Appends `v` as an unsigned LEB128 varint (minimal, at most 10 bytes).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Zig-zag maps signed integers so small magnitudes of either sign stay short.
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over untrusted bytes: every read is bounds-checked and reports what was
/// being read when the input ends early.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// One byte.
    pub fn byte(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        Ok(s.try_into().expect("take returned exactly N bytes"))
    }

    /// A minimal LEB128 varint (non-minimal encodings are refused: one value, one encoding).
    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Malformed(what));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                // Reject non-minimal encodings so every value has exactly one encoding.
                if b == 0 && shift > 0 {
                    return Err(DecodeError::Malformed(what));
                }
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed(what))
    }

    /// Reads a count that must be plausible for the bytes left (each item takes at least
    /// one byte), so a hostile count cannot make us allocate more than the input's size.
    pub fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.varint(what)?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::Malformed(what));
        }
        Ok(n as usize)
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.count(what)?;
        self.take(n, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_extremes() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.varint("v").unwrap(), v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn zigzag_round_trips_extremes() {
        for v in [0, -1, 1, i64::MIN, i64::MAX, -64, 63] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn non_minimal_varint_is_rejected() {
        let mut r = Reader::new(&[0x80, 0x00]);
        assert!(r.varint("v").is_err());
    }

    #[test]
    fn hostile_count_is_rejected() {
        let mut out = Vec::new();
        put_varint(&mut out, 1 << 40);
        assert!(Reader::new(&out).count("n").is_err());
    }
}
