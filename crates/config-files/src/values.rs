//! Durations and sizes as config files write them.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration or size that could not be read; the message names the text and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid duration `{0}` (use e.g. 500ms, 5s, 2m, 7d)")]
    Duration(String),
    #[error("invalid duration unit in `{0}` (use ms, s, m, h, d or w)")]
    DurationUnit(String),
    #[error("invalid size `{0}` (use e.g. 64MiB)")]
    Size(String),
    #[error("invalid size unit in `{0}` (use B, KiB, MiB or GiB)")]
    SizeUnit(String),
    #[error("size `{0}` is too large")]
    SizeTooLarge(String),
}

/// Parses durations written as `250ms`, `5s`, `2m`, `1h`, `7d`, `2w` (or a bare number of
/// seconds); fractions are allowed (`1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| ValueError::Duration(s.to_owned()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "w" => n * 7.0 * 86_400.0,
        _ => return Err(ValueError::DurationUnit(s.to_owned())),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| ValueError::Duration(s.to_owned()))
}

/// Parses sizes written as `512`, `64KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: u64 = num.parse().map_err(|_| ValueError::Size(s.to_owned()))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(ValueError::SizeUnit(s.to_owned())),
    };
    n.checked_mul(mult).ok_or_else(|| ValueError::SizeTooLarge(s.to_owned()))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Text(String),
    Secs(f64),
}

/// serde helper for optional durations: text as [`parse_duration`] reads it, or seconds.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<DurationRepr>::deserialize(d)? {
        None => Ok(None),
        Some(DurationRepr::Text(s)) => parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
        Some(DurationRepr::Secs(n)) => Duration::try_from_secs_f64(n)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("invalid duration {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1d").is_err());
        assert!(parse_duration("1e300w").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
