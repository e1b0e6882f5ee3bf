//! SQLite values, carried bit-exact (invariant 10).
//!
//! A REAL is kept as its IEEE-754 bits so that -0.0 and every NaN payload survive
//! encoding; equality is therefore bitwise, not numeric.

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};

use crate::format::codec::DecodeError;
use crate::format::codec::{Reader, put_bytes, put_varint, unzigzag, zigzag};

/// One SQLite value of any storage class.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed INTEGER.
    Integer(i64),
    /// A REAL, stored as its exact bit pattern.
    Real(u64),
    /// TEXT (SQLite guarantees nothing about UTF-8 validity, so neither do we).
    Text(Vec<u8>),
    /// A BLOB; an empty BLOB is distinct from NULL.
    Blob(Vec<u8>),
}

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

impl Value {
    /// A REAL from a float, keeping its bits.
    pub fn real(f: f64) -> Value {
        Value::Real(f.to_bits())
    }

    /// TEXT from a string.
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into().into_bytes())
    }

    /// Reads a value out of a row, bit-exact.
    pub fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f.to_bits()),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    /// Appends the canonical encoding: a tag byte, then the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(TAG_NULL),
            Value::Integer(i) => {
                out.push(TAG_INTEGER);
                put_varint(out, zigzag(*i));
            }
            Value::Real(bits) => {
                out.push(TAG_REAL);
                out.extend_from_slice(&bits.to_be_bytes());
            }
            Value::Text(t) => {
                out.push(TAG_TEXT);
                put_bytes(out, t);
            }
            Value::Blob(b) => {
                out.push(TAG_BLOB);
                put_bytes(out, b);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Value, DecodeError> {
        Ok(match r.byte("value tag")? {
            TAG_NULL => Value::Null,
            TAG_INTEGER => Value::Integer(unzigzag(r.varint("integer")?)),
            TAG_REAL => Value::Real(u64::from_be_bytes(r.array("real")?)),
            TAG_TEXT => Value::Text(r.bytes("text")?.to_vec()),
            TAG_BLOB => Value::Blob(r.bytes("blob")?.to_vec()),
            _ => return Err(DecodeError::Malformed("value tag")),
        })
    }

    /// True when `v` is this value, bit for bit (what `==` says of two values).
    pub(crate) fn same_as(&self, v: ValueRef<'_>) -> bool {
        match (self, v) {
            (Value::Null, ValueRef::Null) => true,
            (Value::Integer(a), ValueRef::Integer(b)) => *a == b,
            (Value::Real(a), ValueRef::Real(b)) => *a == b.to_bits(),
            (Value::Text(a), ValueRef::Text(b)) => a[..] == *b,
            (Value::Blob(a), ValueRef::Blob(b)) => a[..] == *b,
            _ => false,
        }
    }

    /// Checks and passes over one encoded value, as [`Value::decode`] would read it.
    pub(crate) fn skip(r: &mut Reader<'_>) -> Result<(), DecodeError> {
        match r.byte("value tag")? {
            TAG_NULL => {}
            TAG_INTEGER => {
                r.varint("integer")?;
            }
            TAG_REAL => {
                r.array::<8>("real")?;
            }
            TAG_TEXT => {
                r.bytes("text")?;
            }
            TAG_BLOB => {
                r.bytes("blob")?;
            }
            _ => return Err(DecodeError::Malformed("value tag")),
        }
        Ok(())
    }

    /// A short human rendering, for conflict listings and logs.
    pub fn display(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(bits) => format!("{:?}", f64::from_bits(*bits)),
            Value::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
            Value::Blob(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("x'{hex}'")
            }
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(bits) => ToSqlOutput::Owned(SqlValue::Real(f64::from_bits(*bits))),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t)),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl rusqlite::types::FromSql for Value {
    fn column_result(v: ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(Value::from_ref(v))
    }
}

/// Encodes a primary key (its values in declared order) as the byte string tide uses to
/// name a row in its metadata and in changes.
pub fn encode_key(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 9);
    for v in values {
        v.encode(&mut out);
    }
    out
}

/// Decodes a key made by [`encode_key`].
pub fn decode_key(bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(Value::decode(&mut r)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_storage_class_round_trips_bit_exact() {
        let values = vec![
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::real(-0.0),
            Value::Real(0x7ff8_0000_0000_0001),
            Value::real(0.1 + 0.2),
            Value::text(""),
            Value::Blob(vec![]),
            Value::Blob(vec![0, 255]),
        ];
        let key = encode_key(&values);
        assert_eq!(decode_key(&key).unwrap(), values);
    }

    #[test]
    fn same_as_agrees_with_equality_of_values_read_back() {
        let values = [
            Value::Null,
            Value::Integer(7),
            Value::real(7.0),
            Value::real(-0.0),
            Value::real(0.0),
            Value::text("7"),
            Value::Blob(b"7".to_vec()),
        ];
        for a in &values {
            for b in &values {
                let r = match b {
                    Value::Null => ValueRef::Null,
                    Value::Integer(i) => ValueRef::Integer(*i),
                    Value::Real(bits) => ValueRef::Real(f64::from_bits(*bits)),
                    Value::Text(t) => ValueRef::Text(t),
                    Value::Blob(x) => ValueRef::Blob(x),
                };
                assert_eq!(a.same_as(r), a == b, "{a:?} against {b:?}");
            }
        }
    }

    #[test]
    fn negative_zero_differs_from_zero() {
        assert_ne!(Value::real(-0.0), Value::real(0.0));
    }
}
