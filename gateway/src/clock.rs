//! Wall-clock time as the gateway reads and writes it: Unix seconds and milliseconds, RFC 3339
//! text, and the tick of its periodic background services.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-25T12:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".into())
}

/// Waits for `tick`'s next tick; false once the server is shutting down. The loop of every
/// periodic background service: `while next_tick(&mut tick, &mut shutdown).await { .. }`.
pub(crate) async fn next_tick(tick: &mut tokio::time::Interval, shutdown: &mut pingora::server::ShutdownWatch) -> bool {
    tokio::select! {
        _ = shutdown.changed() => false,
        _ = tick.tick() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_609_309), "2026-11-25T12:21:49Z");
    }
}
