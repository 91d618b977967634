//! Instants as the status stores them: Unix milliseconds in memory, RFC 3339 UTC text in
//! JSON and YAML (`2026-11-30T18:23:42.123Z`), as Kubernetes writes timestamps. The calendar
//! is jiff's.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::borrow::Cow;

use super::excerpt::excerpt;

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

    /// Parses RFC 3339 in UTC (`Z`), with or without fractional seconds (milliseconds kept).
    pub fn parse(s: &str) -> Result<Timestamp, String> {
        let bad = || {
            format!(
                "invalid timestamp '{}': expected e.g. 2026-01-31T12:00:00Z",
                excerpt(s)
            )
        };
        // jiff also takes offsets, `t`/space separators, basic format and bracketed time zone
        // annotations; the status has always been the UTC extended form Kubernetes writes, so
        // that form is what is accepted, as before.
        let b = s.as_bytes();
        if b.len() < 20 || b.get(10) != Some(&b'T') || !s.ends_with('Z') || s.contains([',', '[']) {
            return Err(bad());
        }
        // jiff stops at nanoseconds; the old parser cut any longer fraction, so this does too.
        let cut = match s.find('.') {
            Some(dot) if s.len() - dot > 11 => Cow::Owned(format!("{}Z", &s[..dot + 10])),
            _ => Cow::Borrowed(s),
        };
        let t: jiff::Timestamp = cut.parse().map_err(|_| bad())?;
        u64::try_from(t.as_millisecond())
            .map(Timestamp)
            .map_err(|_| bad())
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
        // Past jiff's range (year 9999) the instant is clamped: no real clock gets there.
        let t = i64::try_from(self.0)
            .ok()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .unwrap_or(jiff::Timestamp::MAX);
        write!(f, "{}", t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
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

/// Parses a Go-style duration (`500ms`, `2m`, `1h30m`) into milliseconds, rounding up so a
/// non-zero duration never becomes 0.
///
/// Not jiff's `SignedDuration` parser: Rollout durations are spelled as the filter's policy
/// durations are (one parser, in the plugin), and jiff's "friendly" format differs from it:
/// it refuses a bare `0` and units out of order (`30s1m`), and takes `1 hour` and `PT1S`,
/// which the filter refuses (checked with jiff 0.2.46).
pub fn parse_ms(s: &str) -> Result<u64, String> {
    let ns = rollgate_policy::duration::parse_duration(s)?;
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
    fn status_forms_load_and_impossible_dates_do_not() {
        // Every form the status has held loads with its meaning: fractions of any length are
        // cut to milliseconds, as before.
        for (text, ms) in [
            ("2026-11-30T18:23:42.123456789Z", 1_796_063_022_123),
            ("2026-11-30T18:23:42.1234567891234Z", 1_796_063_022_123),
            ("2026-11-30T18:23:42.1Z", 1_796_063_022_100),
        ] {
            assert_eq!(Timestamp::parse(text), Ok(Timestamp(ms)), "{text}");
        }
        // The hand-written parser took any day up to 31 in any month (2026-02-31 loaded as
        // March 3rd); jiff knows the calendar. Forms jiff takes that the status never held
        // stay refused.
        for bad in [
            "2026-02-31T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-30t18:23:42Z",
            "2026-11-30 18:23:42Z",
            "2026-11-30T18:23:42,5Z",
            "2026-11-30T18:23:42Z[UTC]",
            "20261130T182342Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Timestamp(u64::MAX).to_string(), "9999-12-30T22:00:00.999Z");
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
