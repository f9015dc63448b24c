//! Every metric the gateway exports, named in one place. Request-path counters are resolved
//! per route at activation, so serving a request only touches atomics (no label lookups, no locks).

use crate::canon::Refusal;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "gateway_requests_total";
pub const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
pub const POLICY_EVAL_DURATION: &str = "gateway_policy_eval_duration_seconds";
pub const BUNDLE_INFO: &str = "gateway_bundle_info";
pub const BUNDLE_ACTIVATED_TIMESTAMP: &str = "gateway_bundle_activated_timestamp_seconds";
pub const UPSTREAM_ERRORS_TOTAL: &str = "gateway_upstream_errors_total";
pub const SHED_TOTAL: &str = "gateway_shed_total";
pub const DECISION_CACHE_TOTAL: &str = "gateway_decision_cache_total";
pub const IN_FLIGHT: &str = "gateway_requests_in_flight";
pub const BUNDLE_AGE: &str = "gateway_bundle_age_seconds";
pub const BUNDLE_STALE: &str = "gateway_bundle_stale";
pub const BUNDLE_SYNC_TOTAL: &str = "gateway_bundle_sync_total";
pub const ACTIVATION_FAILURES_TOTAL: &str = "gateway_bundle_activation_failures_total";
pub const STATUS_REPORTS_DROPPED_TOTAL: &str = "gateway_status_reports_dropped_total";
pub const REQUESTS_REFUSED_TOTAL: &str = "gateway_requests_refused_total";

/// The `decision` label values of `gateway_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// A bearer token failed verification (401).
    Unauthenticated,
    /// The policy errored or was undefined: denied, fail closed.
    Error,
    NoRoute,
    /// No bundle is active yet (503).
    Unavailable,
    /// Shed at the in-flight limit (503).
    Shed,
    /// Refused before routing (400): see `gateway_requests_refused_total`.
    Refused,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Error => "error",
            Outcome::NoRoute => "no_route",
            Outcome::Unavailable => "unavailable",
            Outcome::Shed => "shed",
            Outcome::Refused => "refused",
        }
    }
}

const ROUTE_OUTCOMES: [Outcome; 4] = [Outcome::Allow, Outcome::Deny, Outcome::Unauthenticated, Outcome::Error];

/// Counters of one route, one per outcome.
#[derive(Clone)]
pub struct RouteCounters([IntCounter; 4]);

impl RouteCounters {
    pub fn inc(&self, outcome: Outcome) {
        if let Some(i) = ROUTE_OUTCOMES.iter().position(|o| *o == outcome) {
            self.0[i].inc();
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    no_route: IntCounter,
    unavailable: IntCounter,
    refused_requests: IntCounter,
    pub request_duration: Histogram,
    pub policy_eval_duration: Histogram,
    pub bundle_info: IntGaugeVec,
    pub bundle_activated: IntGauge,
    pub upstream_errors: IntCounter,
    /// Set when rendered, from the last confirmed sync.
    pub bundle_age: prometheus::Gauge,
    pub bundle_stale: IntGauge,
    pub sync: IntCounterVec,
    pub activation_failures: IntCounterVec,
    pub status_reports_dropped: IntCounter,
    pub shed: IntCounter,
    pub in_flight: IntGauge,
    /// `gateway_decision_cache_total{result="hit|miss|bypass"}`, resolved once.
    pub decision_cache: [IntCounter; 3],
    /// `gateway_requests_refused_total{reason}`, by [`Refusal`] in the order of `Refusal::ALL`.
    refused: [IntCounter; Refusal::ALL.len()],
}

fn buckets() -> Vec<f64> {
    vec![
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests =
            IntCounterVec::new(Opts::new(REQUESTS_TOTAL, "Requests by route and decision"), &["route", "decision"])?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(REQUEST_DURATION, "Time from request headers to the end of the response")
                .buckets(buckets()),
        )?;
        let policy_eval_duration = Histogram::with_opts(
            HistogramOpts::new(POLICY_EVAL_DURATION, "Time to build the input and evaluate a route's rule")
                .buckets(buckets()),
        )?;
        let bundle_info =
            IntGaugeVec::new(Opts::new(BUNDLE_INFO, "The active bundle (value 1)"), &["name", "revision", "digest"])?;
        let bundle_activated = IntGauge::new(BUNDLE_ACTIVATED_TIMESTAMP, "Unix time the active bundle was activated")?;
        let upstream_errors =
            IntCounter::new(UPSTREAM_ERRORS_TOTAL, "Requests that failed to reach an upstream (502)")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(policy_eval_duration.clone()))?;
        registry.register(Box::new(bundle_info.clone()))?;
        registry.register(Box::new(bundle_activated.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        let bundle_age = prometheus::Gauge::new(
            BUNDLE_AGE,
            "Seconds since the gateway last confirmed (200 or 304) that its active bundle is current",
        )?;
        let bundle_stale = IntGauge::new(BUNDLE_STALE, "1 when the bundle age exceeds max_staleness")?;
        let sync =
            IntCounterVec::new(Opts::new(BUNDLE_SYNC_TOTAL, "Polls of the bundle source by result"), &["result"])?;
        let activation_failures = IntCounterVec::new(
            Opts::new(ACTIVATION_FAILURES_TOTAL, "Bundles that did not become active, by reason"),
            &["reason"],
        )?;
        let status_reports_dropped = IntCounter::new(
            STATUS_REPORTS_DROPPED_TOTAL,
            "Status reports to the control plane dropped rather than queued",
        )?;
        registry.register(Box::new(bundle_age.clone()))?;
        registry.register(Box::new(bundle_stale.clone()))?;
        registry.register(Box::new(sync.clone()))?;
        registry.register(Box::new(activation_failures.clone()))?;
        registry.register(Box::new(status_reports_dropped.clone()))?;
        let shed = IntCounter::new(SHED_TOTAL, "Requests answered 503 at once because the gateway was at its limits")?;
        let in_flight = IntGauge::new(IN_FLIGHT, "Requests being handled now")?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let cache = IntCounterVec::new(
            Opts::new(
                DECISION_CACHE_TOTAL,
                "Decisions by how they were reached: from the cache, or by running the rule",
            ),
            &["result"],
        )?;
        registry.register(Box::new(cache.clone()))?;
        let decision_cache = ["hit", "miss", "bypass"].map(|r| cache.with_label_values(&[r]));
        let refused_vec = IntCounterVec::new(
            Opts::new(REQUESTS_REFUSED_TOTAL, "Requests refused (400) before routing: ambiguous path, host or headers"),
            &["reason"],
        )?;
        registry.register(Box::new(refused_vec.clone()))?;
        let refused = Refusal::ALL.map(|r| refused_vec.with_label_values(&[r.reason()]));
        for r in ["updated", "not_modified", "error"] {
            sync.with_label_values(&[r]);
        }
        Ok(Metrics {
            no_route: requests.with_label_values(&["", Outcome::NoRoute.label()]),
            unavailable: requests.with_label_values(&["", Outcome::Unavailable.label()]),
            refused_requests: requests.with_label_values(&["", Outcome::Refused.label()]),
            requests,
            registry,
            request_duration,
            policy_eval_duration,
            bundle_info,
            bundle_activated,
            upstream_errors,
            bundle_age,
            bundle_stale,
            sync,
            activation_failures,
            status_reports_dropped,
            shed,
            in_flight,
            decision_cache,
            refused,
        })
    }

    /// Resolves a route's counters (done once per route at activation).
    pub fn route_counters(&self, route: &str) -> RouteCounters {
        RouteCounters(ROUTE_OUTCOMES.map(|o| self.requests.with_label_values(&[route, o.label()])))
    }

    pub fn count_decision(&self, how: policy_bundles::snapshot::CacheOutcome) {
        use policy_bundles::snapshot::CacheOutcome;
        let i = match how {
            CacheOutcome::Hit => 0,
            CacheOutcome::Miss => 1,
            CacheOutcome::Bypass => 2,
        };
        self.decision_cache[i].inc();
    }

    pub fn count_refusal(&self, r: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|x| *x == r) {
            self.refused[i].inc();
        }
    }

    pub fn count_unrouted(&self, outcome: Outcome) {
        match outcome {
            Outcome::Unavailable => self.unavailable.inc(),
            Outcome::Shed => self.shed.inc(),
            Outcome::Refused => self.refused_requests.inc(),
            _ => self.no_route.inc(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}
