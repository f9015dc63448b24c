//! Every metric control-api exports, named in one place.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const STATUS_REFUSED_TOTAL: &str = "control_api_status_refused_total";
pub const LIMITED_TOTAL: &str = "control_api_limited_total";
pub const PUBLISHES_TOTAL: &str = "control_api_publishes_total";
pub const REJECTIONS_TOTAL: &str = "control_api_rejections_total";
pub const BUNDLE_DOWNLOADS_TOTAL: &str = "control_api_bundle_downloads_total";
pub const LONG_POLL_WAITERS: &str = "control_api_long_poll_waiters";
pub const STORE_UP: &str = "control_api_store_up";
pub const ROLLOUTS_TOTAL: &str = "control_api_rollouts_total";
pub const ROLLBACKS_TOTAL: &str = "control_api_rollbacks_total";
pub const ROLLOUT_DURATION: &str = "control_api_rollout_duration_seconds";
pub const ROLLOUT_PROPAGATION: &str = "control_api_rollout_propagation_seconds";
pub const SERVED_REVISION: &str = "control_api_served_revision";
pub const DECISION_LOGS_EVENTS: &str = "control_api_decision_logs_events_total";
pub const DECISION_LOGS_REFUSED: &str = "control_api_decision_logs_refused_total";
pub const DECISION_LOGS_PRUNED: &str = "control_api_decision_logs_pruned_total";

/// The `reason` label values of `control_api_decision_logs_refused_total`, exported from the start.
pub const REFUSED_REASONS: [&str; 9] = [
    "token",
    "forbidden",
    "too_large",
    "decompressed_too_large",
    "encoding",
    "malformed",
    "store",
    "internal",
    "unknown",
];

/// The `result` label of `control_api_publishes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishResult {
    /// A revision became active (new, or an earlier one published again).
    Created,
    /// Identical to the active revision: nothing changed.
    Identical,
    /// Refused: invalid, failing its tests, too large, or a revision conflict.
    Rejected,
}

impl PublishResult {
    pub fn label(self) -> &'static str {
        match self {
            PublishResult::Created => "created",
            PublishResult::Identical => "identical",
            PublishResult::Rejected => "rejected",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    publishes: IntCounterVec,
    rejections: IntCounterVec,
    downloads: IntCounterVec,
    /// Long polls being held right now.
    pub waiters: IntGauge,
    /// 1 while this replica's view of the store is current, 0 while it is cut off.
    pub store_up: IntGauge,
    /// Ended rollouts by `result` (`promoted`, `rolled_back`).
    pub rollouts: IntCounterVec,
    /// Automatic rollbacks by `reason` (`activation`, `silent`, `error_rate`, `p99`, `not_activated`, `no_canary`).
    pub rollbacks: IntCounterVec,
    /// From publish to promotion (every gateway served the revision).
    pub rollout_duration: Histogram,
    /// From a revision becoming a gateway's target to its report showing it active.
    pub propagation: Histogram,
    /// 1 for the revision each cohort is served: `{bundle, cohort="canary|stable", revision}`.
    pub served_revision: IntGaugeVec,
    /// Decision events received, by `result` (`stored`, `duplicate`: already stored, not again).
    decision_events: IntCounterVec,
    /// Refused `POST /v1/logs` batches by `reason`.
    decision_refused: IntCounterVec,
    /// Events deleted by retention.
    decision_pruned: IntCounter,
    /// Refused `POST /v1/status` reports by `reason`.
    status_refused: IntCounterVec,
    /// What the abuse limits cut, by `limit`.
    limited: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let publishes =
            IntCounterVec::new(Opts::new(PUBLISHES_TOTAL, "Bundle publishes (PUT) by result"), &["result"])?;
        let rejections = IntCounterVec::new(
            Opts::new(
                REJECTIONS_TOTAL,
                "Refused publishes by reason: a bundle error kind (archive, syntax, roots, rego, settings, jwks), \
                 tests, too_large or conflict",
            ),
            &["reason"],
        )?;
        let downloads =
            IntCounterVec::new(Opts::new(BUNDLE_DOWNLOADS_TOTAL, "Bundle GETs answered, by status code"), &["code"])?;
        let waiters = IntGauge::new(LONG_POLL_WAITERS, "Long-poll requests (Prefer: wait=N) being held")?;
        registry.register(Box::new(publishes.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(downloads.clone()))?;
        registry.register(Box::new(waiters.clone()))?;
        let store_up = IntGauge::new(
            STORE_UP,
            "1 while this replica reaches its store (and, on PostgreSQL, hears other replicas); 0 while it is cut off \
             and answers bundle GETs with 503",
        )?;
        registry.register(Box::new(store_up.clone()))?;
        let (rollouts, rollbacks, rollout_duration, propagation, served_revision) = rollout_metrics(&registry)?;
        let (decision_events, decision_refused, decision_pruned) = decision_log_metrics(&registry)?;
        let status_refused = IntCounterVec::new(
            Opts::new(
                STATUS_REFUSED_TOTAL,
                "Refused status reports by reason: instance_bound (the instance reports with another token), \
                 token_instance (the token is bound to another instance), bundle (a bundle the token may not touch), \
                 unbound_token (rollouts are staged and the token is bound to no instance)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(status_refused.clone()))?;
        let limited = IntCounterVec::new(
            Opts::new(
                LIMITED_TOTAL,
                "What the abuse limits cut, by limit: connections (closed at once past max_connections), \
                 header_timeout (no request head in time), long_polls (answered at once past \
                 max_long_polls_per_token), uploads (a PUT that waited for an upload slot before its body was read)",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(limited.clone()))?;
        for l in ["connections", "header_timeout", "long_polls", "uploads"] {
            limited.with_label_values(&[l]);
        }
        for reason in ["instance_bound", "token_instance", "bundle"] {
            status_refused.with_label_values(&[reason]);
        }
        // Label values known in advance are exported at 0 from the start.
        for r in [PublishResult::Created, PublishResult::Identical, PublishResult::Rejected] {
            publishes.with_label_values(&[r.label()]);
        }
        for code in ["200", "304"] {
            downloads.with_label_values(&[code]);
        }
        Ok(Metrics {
            registry,
            publishes,
            rejections,
            downloads,
            waiters,
            store_up,
            rollouts,
            rollbacks,
            rollout_duration,
            propagation,
            served_revision,
            decision_events,
            decision_refused,
            decision_pruned,
            status_refused,
            limited,
        })
    }

    /// Counts what a limit cut (`connections`, `header_timeout`, `long_polls`, `uploads`).
    pub fn limited(&self, limit: &str) {
        self.limited.with_label_values(&[limit]).inc();
    }

    /// Counts a refused status report.
    pub fn refuse_status(&self, reason: &str) {
        self.status_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a decision-log batch taken: `stored` new events, `duplicates` already stored.
    pub fn ingested(&self, stored: u64, duplicates: u64) {
        self.decision_events.with_label_values(&["stored"]).inc_by(stored);
        self.decision_events.with_label_values(&["duplicate"]).inc_by(duplicates);
    }

    /// Counts a refused decision-log batch (`reason` one of [`REFUSED_REASONS`]).
    pub fn refuse_batch(&self, reason: &str) {
        let reason = if REFUSED_REASONS.contains(&reason) { reason } else { "unknown" };
        self.decision_refused.with_label_values(&[reason]).inc();
    }

    /// Counts events deleted by retention.
    pub fn pruned_events(&self, n: u64) {
        self.decision_pruned.inc_by(n);
    }

    pub fn publish(&self, result: PublishResult) {
        self.publishes.with_label_values(&[result.label()]).inc();
    }

    /// Counts a refused publish under `reason` (and as a rejected publish).
    pub fn reject(&self, reason: &str) {
        self.publish(PublishResult::Rejected);
        self.rejections.with_label_values(&[reason]).inc();
    }

    pub fn download(&self, code: u16) {
        let label = if code == 304 { "304" } else { "200" };
        self.downloads.with_label_values(&[label]).inc();
    }

    /// Sets `control_api_served_revision` to what each bundle is served: `(bundle, stable
    /// revision, canary revision)`, with or without a rollout; bundles no longer served go.
    pub fn set_served<'a>(&self, served: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>)>) {
        self.served_revision.reset();
        for (bundle, stable, canary) in served {
            self.served_revision.with_label_values(&[bundle, "stable", stable]).set(1);
            if let Some(canary) = canary {
                self.served_revision.with_label_values(&[bundle, "canary", canary]).set(1);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Staged rollouts: how they ended, why canaries were rolled back, how long promotion and
/// propagation took, and which revision each cohort is served.
fn rollout_metrics(
    registry: &Registry,
) -> Result<(IntCounterVec, IntCounterVec, Histogram, Histogram, IntGaugeVec), prometheus::Error> {
    let rollouts = IntCounterVec::new(Opts::new(ROLLOUTS_TOTAL, "Ended staged rollouts by result"), &["result"])?;
    let rollbacks =
        IntCounterVec::new(Opts::new(ROLLBACKS_TOTAL, "Automatic rollbacks of a canary by reason"), &["reason"])?;
    let buckets = vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
    let rollout_duration = Histogram::with_opts(
        HistogramOpts::new(ROLLOUT_DURATION, "Seconds from publish to promotion to every gateway")
            .buckets(buckets.clone()),
    )?;
    let propagation = Histogram::with_opts(
        HistogramOpts::new(
            ROLLOUT_PROPAGATION,
            "Seconds from a revision becoming a gateway's target (publish to the canary, promotion to the rest) to \
             the first status report showing it active",
        )
        .buckets(buckets),
    )?;
    let served_revision = IntGaugeVec::new(
        Opts::new(SERVED_REVISION, "1 for the revision each cohort of a bundle is served"),
        &["bundle", "cohort", "revision"],
    )?;
    registry.register(Box::new(rollouts.clone()))?;
    registry.register(Box::new(rollbacks.clone()))?;
    registry.register(Box::new(rollout_duration.clone()))?;
    registry.register(Box::new(propagation.clone()))?;
    registry.register(Box::new(served_revision.clone()))?;
    Ok((rollouts, rollbacks, rollout_duration, propagation, served_revision))
}

/// The decision-log counters, registered, with their known labels at 0.
fn decision_log_metrics(registry: &Registry) -> Result<(IntCounterVec, IntCounterVec, IntCounter), prometheus::Error> {
    let events = IntCounterVec::new(
        Opts::new(DECISION_LOGS_EVENTS, "Decision events received by POST /v1/logs, by result (stored, duplicate)"),
        &["result"],
    )?;
    let refused = IntCounterVec::new(
        Opts::new(DECISION_LOGS_REFUSED, "Refused POST /v1/logs batches by reason (nothing of them is stored)"),
        &["reason"],
    )?;
    let pruned = IntCounter::new(DECISION_LOGS_PRUNED, "Decision events deleted by retention (max_age, max_count)")?;
    registry.register(Box::new(events.clone()))?;
    registry.register(Box::new(refused.clone()))?;
    registry.register(Box::new(pruned.clone()))?;
    for r in ["stored", "duplicate"] {
        events.with_label_values(&[r]);
    }
    for r in REFUSED_REASONS {
        refused.with_label_values(&[r]);
    }
    Ok((events, refused, pruned))
}
