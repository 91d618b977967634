//! Instants as the status stores them: Unix milliseconds in memory, RFC 3339 UTC text in
//! JSON and YAML (`2026-11-30T18:23:42.123Z`), as Kubernetes writes timestamps.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// This instant plus `ms` milliseconds (saturating).
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Parses RFC 3339 in UTC (`Z`), with or without fractional seconds.
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let bad = || format!("invalid timestamp '{s}': expected e.g. 2026-01-31T12:00:00Z");
        let b = s.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
            return Err(bad());
        }
        if b[16] != b':' || !s.ends_with('Z') {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u64, String> {
            let t = s.get(r).ok_or_else(bad)?;
            if !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        let frac = &s[19..s.len() - 1];
        let ms = match frac.strip_prefix('.') {
            None if frac.is_empty() => 0,
            Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
                // Milliseconds: the first three digits, right-padded.
                let mut digits: String = f.chars().take(3).collect();
                while digits.len() < 3 {
                    digits.push('0');
                }
                digits.parse().map_err(|_| bad())?
            }
            _ => return Err(bad()),
        };
        let days = days_from_civil(y as i64, mo as i64, d as i64);
        let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64;
        let secs = u64::try_from(secs).map_err(|_| bad())?;
        Ok(Timestamp(secs * 1000 + ms))
    }
}

/// Hand-written: serialized as RFC 3339 text, not as the inner number.
impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        write!(
            f,
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            self.0 % 1000
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

// Howard Hinnant's algorithms (proleptic Gregorian calendar), so no date crate is needed.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Parses a Go-style duration (`500ms`, `2m`, `1h30m`) into milliseconds, rounding up so a
/// non-zero duration never becomes 0.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    let ns = rollgate_plugin::duration::parse_duration(s)?;
    Ok(ns.div_ceil(1_000_000))
}

/// Formats milliseconds for people: `850ms`, `12s`, `2m30s`, `1h5m`.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        0..60 if ms.is_multiple_of(1000) => format!("{s}s"),
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_rfc3339() {
        let t = Timestamp(1_796_063_022_123);
        assert_eq!(t.to_string(), "2026-11-30T18:23:42.123Z");
        assert_eq!(Timestamp::parse("2026-11-30T18:23:42.123Z"), Ok(t));
        assert_eq!(
            Timestamp::parse("2026-11-30T18:23:42Z"),
            Ok(Timestamp(1_796_063_022_000))
        );
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00.5Z"),
            Ok(Timestamp(500))
        );
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::parse("2024-02-29T23:59:59.999Z").map(|t| t.to_string()),
            Ok("2024-02-29T23:59:59.999Z".to_string())
        );
        for bad in [
            "",
            "2026-11-30",
            "2026-13-01T00:00:00Z",
            "2026-11-30T18:23:42+01:00",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let t = Timestamp(1_700_000_000_001);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.001Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_ms("500ms"), Ok(500));
        assert_eq!(parse_ms("2m"), Ok(120_000));
        assert_eq!(parse_ms("1ns"), Ok(1));
        assert!(parse_ms("5").is_err());
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_000), "12s");
        assert_eq!(human_ms(1_500), "1.5s");
        assert_eq!(human_ms(150_000), "2m30s");
        assert_eq!(human_ms(120_000), "2m");
        assert_eq!(human_ms(3_900_000), "1h5m");
    }
}
