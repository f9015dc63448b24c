//! Time as the control plane stores and reads it: Unix milliseconds, RFC 3339 text, and the
//! spans (`30m`, `7d`) and points (`1h` ago, an RFC 3339 time) of the API and the config.

use std::time::Duration;

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision (`2026-11-25T12:00:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&fmt).unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// An RFC 3339 timestamp as Unix milliseconds; `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A span of time such as `90s`, `30m`, `1h`, `7d` or `2w` ([`config_files::parse_duration`]).
pub fn parse_span(s: &str) -> Result<Duration, String> {
    config_files::parse_duration(s).map_err(|_| format!("`{s}` is not a span of time such as 30m, 1h or 7d"))
}

/// A point in time for `since`/`until`: RFC 3339, or a span ago (`1h`: an hour before `now_ms`).
/// A bare number is refused: seconds ago and a Unix time are too easily confused.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Some(ms) = parse_rfc3339(s.trim()) {
        return Ok(ms);
    }
    if s.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` needs a unit (30m, 1h, 7d) or must be an RFC 3339 time"));
    }
    let span = parse_span(s).map_err(|_| format!("`{s}` is neither an RFC 3339 time nor a span such as 1h or 7d"))?;
    let ago = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    Ok(now_ms.saturating_sub(ago))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_608_000_123), "2026-11-25T12:00:00.123Z");
        let now = now_ms();
        assert_eq!(parse_rfc3339(&rfc3339(now)), Some(now));
        assert_eq!(parse_rfc3339("2026-11-25T13:00:00.123+01:00"), Some(1_795_608_000_123));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn spans_take_days_and_weeks_beside_the_usual_units() {
        assert_eq!(parse_span("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_span("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_span("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_span("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_span("soon").is_err());
        assert!(parse_span("-1d").is_err());
    }

    #[test]
    fn times_are_rfc3339_or_a_span_ago_never_a_bare_number() {
        let now = 1_796_288_462_000;
        assert_eq!(parse_time("1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("2026-12-03T09:01:02Z", now), Ok(1_796_288_462_000));
        assert!(parse_time("3600", now).unwrap_err().contains("unit"));
        assert!(parse_time("last tuesday", now).is_err());
    }
}
