//! Decision logs: control-api as the OPA-compatible sink gateways ship their decision events to
//! (`POST /v1/logs`, gzip JSON arrays, idempotent by `decision_id`), and where policy authors
//! read them back (`GET /v1/logs`, `logs` tokens only). This module owns the batch's bounds and
//! checks ([`batch`]), the query's parameters, and retention: events older than
//! `logs.max_age` are never listed and are deleted at every ingest and every minute; past
//! `logs.max_count` the oldest are deleted, checked after every hundredth of `max_count`
//! events stored (so the table may pass it by that much between checks) and every minute.

pub mod batch;
mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use http::{ingest, list};

use crate::api::Shared;
use crate::config::LogsConfig;

/// How often retention runs without ingest.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A span of time such as `90s`, `30m`, `1h`, `7d` or `2w` (also `ms`; a bare number is seconds).
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let days =
        |n: &str, per: u64| n.parse::<u64>().ok().and_then(|n| n.checked_mul(per * 86_400)).map(Duration::from_secs);
    let parsed = match (t.strip_suffix('d'), t.strip_suffix('w')) {
        (Some(n), _) => days(n, 1),
        (_, Some(n)) => days(n, 7),
        _ => policy_bundles::settings::parse_duration(t).ok(),
    };
    parsed.ok_or_else(|| format!("`{s}` is not a span of time such as 30m, 1h or 7d"))
}

/// A point in time for `since`/`until`: RFC 3339, or a span ago (`1h`: an hour before `now_ms`).
/// A bare number is refused: seconds ago and a Unix time are too easily confused.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Some(ms) = crate::store::parse_rfc3339(s.trim()) {
        return Ok(ms);
    }
    if s.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` needs a unit (30m, 1h, 7d) or must be an RFC 3339 time"));
    }
    let span = parse_span(s).map_err(|_| format!("`{s}` is neither an RFC 3339 time nor a span such as 1h or 7d"))?;
    let ago = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    Ok(now_ms.saturating_sub(ago))
}

/// The oldest timestamp retention keeps, at `now_ms`.
pub fn oldest_kept(config: &LogsConfig, now_ms: i64) -> i64 {
    now_ms.saturating_sub(i64::try_from(config.max_age.as_millis()).unwrap_or(i64::MAX))
}

/// When the count bound is checked: after a hundredth of `max_count` new events.
#[derive(Debug, Default)]
pub struct Retention {
    stored_since_count_check: AtomicU64,
}

impl Retention {
    /// Notes `stored` new events; the count to keep when it is time to check it.
    pub fn after_store(&self, stored: u64, max_count: u64) -> Option<u64> {
        let every = (max_count / 100).max(1);
        let total = self.stored_since_count_check.fetch_add(stored, Ordering::Relaxed) + stored;
        (total >= every).then(|| {
            self.stored_since_count_check.store(0, Ordering::Relaxed);
            max_count
        })
    }
}

/// Applies retention: age always, the count when `keep` says. A failure is logged: events stay
/// a little longer, nothing else is affected.
pub async fn prune(s: &Shared, keep: Option<u64>) {
    let before = oldest_kept(&s.config.logs, crate::store::now_ms());
    match s.store.prune_events(before, keep).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::debug!(deleted = n, "decision-log retention");
            s.metrics.pruned_events(n);
        }
        Err(e) => tracing::warn!(error = %e, "decision-log retention failed"),
    }
}

/// Runs retention every minute (age and count), for a store that is not being written to.
pub async fn prune_periodically(state: crate::AppState) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        prune(&state.0, Some(state.0.config.logs.max_count)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_count_is_checked_after_a_hundredth_of_max_count() {
        let r = Retention::default();
        assert_eq!(r.after_store(5, 1000), None);
        assert_eq!(r.after_store(5, 1000), Some(1000));
        assert_eq!(r.after_store(1, 1000), None);
        assert_eq!(r.after_store(1, 5), Some(5), "small bounds are checked at every store");
    }
}
