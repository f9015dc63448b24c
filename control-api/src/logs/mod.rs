//! Decision logs: control-api as the OPA-compatible sink gateways ship their decision events to
//! (`POST /v1/logs`, gzip JSON arrays, idempotent by `decision_id`), and where policy authors
//! read them back (`GET /v1/logs`, `logs` tokens only). This module owns the batch's bounds and
//! checks ([`batch`]), the query's parameters, and retention: events older than
//! `logs.max_age` are never listed and are deleted at every ingest and every minute; past
//! `logs.max_count` the oldest are deleted, checked after every hundredth of `max_count`
//! events stored (so the table may pass it by that much between checks) and every minute.

pub mod batch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::LogsConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// How often retention runs without ingest.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

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
pub async fn prune(store: &dyn Store, config: &LogsConfig, metrics: &Metrics, keep: Option<u64>) {
    let before = oldest_kept(config, crate::clock::now_ms());
    match store.prune_events(before, keep).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::debug!(deleted = n, "decision-log retention");
            metrics.pruned_events(n);
        }
        Err(e) => tracing::warn!(error = %e, "decision-log retention failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_checked_after_a_hundredth_of_max_count() {
        let r = Retention::default();
        assert_eq!(r.after_store(5, 1000), None);
        assert_eq!(r.after_store(5, 1000), Some(1000));
        assert_eq!(r.after_store(1, 1000), None);
        assert_eq!(r.after_store(1, 5), Some(5), "small bounds are checked at every store");
    }
}
