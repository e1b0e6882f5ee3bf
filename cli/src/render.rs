//! Rendering for people and for `--json`.

use serde_json::{Value as Json, json};
use tide_core::{Candidate, Conflict, ConflictKind, Value};

/// A value as JSON: NULL → null, numbers → numbers, TEXT → string, BLOB → {"blob": hex}.
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        Value::Real(bits) => json!(f64::from_bits(*bits)),
        Value::Text(t) => json!(String::from_utf8_lossy(t)),
        Value::Blob(b) => json!({ "blob": hex(b) }),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A hybrid logical clock as UTC time, `2026-11-21T23:55:00.123Z`.
pub fn time(hlc: u64) -> String {
    let ms = hlc >> 16;
    let (secs, millis) = (ms / 1000, ms % 1000);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn key_text(key: &[Value]) -> String {
    key.iter()
        .map(Value::display)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn candidate_json(c: &Candidate) -> Json {
    json!({
        "id": c.id,
        "value": c.value.as_ref().map(value_json),
        "origin": c.change.origin.to_hex(),
        "origin_name": c.origin_name,
        "time": time(c.hlc),
        "hlc": c.hlc,
        "winner": c.winner,
        "local": c.local,
    })
}

pub fn conflict_json(c: &Conflict) -> Json {
    json!({
        "id": c.id,
        "table": c.table,
        "key": c.key.iter().map(value_json).collect::<Vec<_>>(),
        "column": c.column,
        "kind": c.kind.code(),
        "candidates": c.candidates.iter().map(candidate_json).collect::<Vec<_>>(),
    })
}

/// A conflict for people: one header line, one line per candidate.
pub fn conflict_text(c: &Conflict) -> String {
    let mut s = format!(
        "{}  {} {}  {}.{}  row {}\n",
        &c.id[..8],
        c.kind,
        if c.column.is_some() {
            "conflict"
        } else {
            "conflict on the row"
        },
        c.table,
        c.column.as_deref().unwrap_or("*"),
        key_text(&c.key)
    );
    for cand in &c.candidates {
        let value = match &cand.value {
            Some(v) => v.display(),
            None => "(deleted)".into(),
        };
        let who = if cand.local {
            format!("{} (this replica)", cand.origin_name)
        } else {
            cand.origin_name.clone()
        };
        s.push_str(&format!(
            "    {} {:<24} {}  from {}  at {}\n",
            if cand.winner {
                "shown"
            } else if c.column.is_none() && c.kind != ConflictKind::Delete {
                // A row a constraint keeps out of its table.
                "held "
            } else {
                "kept "
            },
            value,
            short_candidate(&cand.id),
            who,
            time(cand.hlc)
        ));
    }
    if let Some(choices) = choices(c) {
        s.push_str(&format!("    choices: {choices}\n"));
    }
    s
}

/// What resolving a constraint conflict can do, in words (see `tide_core::conflicts`).
fn choices(c: &Conflict) -> Option<&'static str> {
    if c.column.is_some() {
        return None;
    }
    let blocked = c.candidates.iter().any(|x| x.winner);
    Some(match c.kind {
        ConflictKind::Delete => return None,
        _ if blocked => {
            "--keep winner keeps the shown row and discards the held one; --keep held keeps the held row and discards the shown one"
        }
        ConflictKind::ForeignKey => {
            "--keep held brings back the row it refers to, and the held row returns; --keep winner discards the held row"
        }
        _ => {
            "--keep winner discards the held row; or write values that satisfy the constraint to the held row's key, and it returns"
        }
    })
}

/// `origin-hex:seq` shortened to 8 hex digits (still accepted by `resolve --keep`).
pub fn short_candidate(id: &str) -> String {
    match id.split_once(':') {
        Some((o, s)) => format!("{}:{s}", &o[..8.min(o.len())]),
        None => id.to_string(),
    }
}

/// Parses `1.5M`, `512K`, `10000` into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num.parse().ok()?;
    (n > 0.0).then_some((n * mult as f64) as u64)
}

/// Parses a value for `--value COL=VALUE`: NULL, integers, reals, x'hex', 'quoted' or bare text.
pub fn parse_value(s: &str) -> Value {
    if s.eq_ignore_ascii_case("null") {
        return Value::Null;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Integer(i);
    }
    if let Ok(f) = s.parse::<f64>()
        && s.contains(['.', 'e', 'E'])
    {
        return Value::real(f);
    }
    if let Some(h) = s
        .strip_prefix("x'")
        .or_else(|| s.strip_prefix("X'"))
        .and_then(|r| r.strip_suffix('\''))
        && h.len() % 2 == 0
        && let Ok(bytes) = (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16))
            .collect::<Result<Vec<_>, _>>()
    {
        return Value::Blob(bytes);
    }
    if let Some(t) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Value::text(t.replace("''", "'"));
    }
    Value::text(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(951_782_400_000u64 << 16), "2000-02-29T00:00:00.000Z");
        assert_eq!(time(1_795_305_600_123u64 << 16), "2026-11-22T00:00:00.123Z");
    }

    #[test]
    fn sizes_and_values_parse() {
        assert_eq!(parse_size("10M"), Some(10 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_value("42"), Value::Integer(42));
        assert_eq!(parse_value("1.5"), Value::real(1.5));
        assert_eq!(parse_value("x'00ff'"), Value::Blob(vec![0, 255]));
        assert_eq!(parse_value("'it''s'"), Value::text("it's"));
        assert_eq!(parse_value("repaired"), Value::text("repaired"));
        assert_eq!(parse_value("NULL"), Value::Null);
    }
}
