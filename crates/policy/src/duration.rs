//! Go-style durations as policies spell them: `100ms`, `1s`, `1.5s`, `2m`, `1h30m`.

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Parses a Go-style duration into nanoseconds. Units: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`;
/// a bare `0` is allowed. Errors say what is wrong.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        // Not `str::parse`: core's float parser is about 17 KB of the filter.
        let value = crate::policy::number::parse(num).ok_or_else(|| {
            format!(
                "invalid duration '{}': expected a number like 100ms, 1s, 2m",
                crate::excerpt::excerpt(s)
            )
        })?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "invalid duration '{}': missing unit (ns, us, ms, s, m, h)",
                    crate::excerpt::excerpt(s)
                ))
            }
            u => {
                return Err(format!(
                    "invalid duration '{}': unknown unit '{}'",
                    crate::excerpt::excerpt(s),
                    crate::excerpt::excerpt(u)
                ))
            }
        };
        total += value * scale;
        rest = next;
    }
    if total > 1e18 {
        return Err(format!(
            "invalid duration '{}': too long",
            crate::excerpt::excerpt(s)
        ));
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_compounds() {
        assert_eq!(parse_duration("100ms"), Ok(100_000_000));
        assert_eq!(parse_duration("1s"), Ok(NANOS_PER_SEC));
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration("2m"), Ok(120 * NANOS_PER_SEC));
        assert_eq!(parse_duration("1h30m"), Ok(5400 * NANOS_PER_SEC));
        assert_eq!(parse_duration("250us"), Ok(250_000));
        assert_eq!(parse_duration("7ns"), Ok(7));
        assert_eq!(parse_duration("0"), Ok(0));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_duration("10"),
            Err("invalid duration '10': missing unit (ns, us, ms, s, m, h)".into())
        );
        assert_eq!(
            parse_duration("10d"),
            Err("invalid duration '10d': unknown unit 'd'".into())
        );
        assert!(parse_duration("ms")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1..2s").is_err());
    }
}
