//! Every metric the gateway exports, named in one place. Request-path counters are resolved
//! per route at activation, so serving a request only touches atomics (no label lookups, no locks).

use http_canon::Refusal;
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
pub const SIGNATURE_EXPIRED: &str = "gateway_bundle_signature_expired";
pub const BUNDLE_SYNC_TOTAL: &str = "gateway_bundle_sync_total";
pub const ACTIVATION_FAILURES_TOTAL: &str = "gateway_bundle_activation_failures_total";
pub const STATUS_REPORTS_DROPPED_TOTAL: &str = "gateway_status_reports_dropped_total";
pub const REQUESTS_REFUSED_TOTAL: &str = "gateway_requests_refused_total";
pub const TLS_CERT_EXPIRY: &str = "gateway_tls_certificate_expiry_timestamp_seconds";
pub const TLS_RELOADS_TOTAL: &str = "gateway_tls_certificate_reloads_total";
pub const CONNECTIONS: &str = "gateway_connections";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "gateway_connections_refused_total";
pub const CONNECTIONS_PER_IP_REFUSED_TOTAL: &str = "gateway_connections_per_ip_refused_total";
pub const CONNECTIONS_CLOSED_TOTAL: &str = "gateway_connections_closed_total";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "gateway_access_log_dropped_total";
pub const DECISION_LOGS_TOTAL: &str = "gateway_decision_logs_total";
pub const DECISION_LOGS_DROPPED_TOTAL: &str = "gateway_decision_logs_dropped_total";
pub const DECISION_LOGS_BUFFER_BYTES: &str = "gateway_decision_logs_buffer_bytes";
pub const SHADOW_DECISIONS_TOTAL: &str = "gateway_shadow_decisions_total";
pub const UPSTREAM_TLS_ERRORS_TOTAL: &str = "gateway_upstream_tls_errors_total";
pub const RATE_LIMITED_TOTAL: &str = "gateway_rate_limited_total";
pub const RATE_LIMIT_EVICTIONS_TOTAL: &str = "gateway_rate_limit_evictions_total";
pub const RATE_LIMIT_UNKNOWN_TOTAL: &str = "gateway_rate_limit_unknown_total";
pub const QUOTA_STORE_ERRORS_TOTAL: &str = "gateway_quota_store_errors_total";
pub const QUOTA_STORE_UP: &str = "gateway_quota_store_up";
pub const QUOTA_FLEET_GATEWAYS: &str = "gateway_quota_fleet_gateways";
pub const UPSTREAM_RETRIES_TOTAL: &str = "gateway_upstream_retries_total";
pub const UPSTREAM_RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "gateway_upstream_retry_budget_exhausted_total";
pub const UPSTREAM_EJECTIONS_TOTAL: &str = "gateway_upstream_ejections_total";
pub const UPSTREAM_CONNECTIONS: &str = "gateway_upstream_connections";
pub const UPSTREAM_PENDING_OVERFLOW_TOTAL: &str = "gateway_upstream_pending_overflow_total";

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
    /// Past a rate limit (429): see `gateway_rate_limited_total`.
    RateLimited,
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
            Outcome::RateLimited => "rate_limited",
        }
    }
}

const ROUTE_OUTCOMES: [Outcome; 5] =
    [Outcome::Allow, Outcome::Deny, Outcome::Unauthenticated, Outcome::Error, Outcome::RateLimited];

/// The metrics of the decision log.
#[derive(Clone)]
pub struct DecisionLogCounters {
    /// `gateway_decision_logs_total{result="buffered|shipped|dropped_by_policy"}`.
    pub buffered: IntCounter,
    pub shipped: IntCounter,
    pub dropped_by_policy: IntCounter,
    /// `gateway_decision_logs_dropped_total{reason="queue_full|buffer_full|rejected"}`.
    pub queue_full: IntCounter,
    pub buffer_full: IntCounter,
    pub rejected: IntCounter,
    /// `gateway_decision_logs_buffer_bytes`.
    pub buffer_bytes: IntGauge,
}

/// Counters of one route, one per outcome.
#[derive(Clone)]
pub struct RouteCounters([IntCounter; 5]);

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
    /// Upstream TLS handshakes that failed (verification, protocol), each also a 502.
    pub upstream_tls_errors: IntCounter,
    /// `gateway_tls_certificate_expiry_timestamp_seconds{name}`: the serving certificate's `notAfter`.
    pub tls_expiry: IntGaugeVec,
    /// Downstream connections held now.
    pub connections: IntGauge,
    /// Connections closed at once because `limits.max_connections` were held.
    pub connections_refused: IntCounter,
    /// Connections closed at once because their address held `limits.max_connections_per_ip`.
    pub connections_per_ip_refused: IntCounter,
    /// `gateway_connections_closed_total{reason="header_timeout|header_too_large"}`: connections
    /// closed because a request head did not arrive in time or was too large.
    pub connections_closed: IntCounterVec,
    /// Access-log lines dropped because the writer's queue was full.
    pub access_log_dropped: IntCounter,
    /// `gateway_decision_logs_total{result}`, `gateway_decision_logs_dropped_total{reason}`.
    pub decision_logs: DecisionLogCounters,
    /// `gateway_shadow_decisions_total{route,agreement="same|differ|error"}`.
    pub shadow: IntCounterVec,
    /// `gateway_rate_limited_total{route,limit,mode}`: requests past a limit (refused with 429,
    /// or in shadow mode only counted).
    pub rate_limited: IntCounterVec,
    /// `gateway_rate_limit_evictions_total{limit}`: keys that lost their bucket to a new key.
    pub rate_limit_evictions: IntCounterVec,
    /// `gateway_rate_limit_unknown_total{route}`: allowing decisions that named a limit the
    /// bundle does not define (the request was limited by nothing more).
    pub rate_limit_unknown: IntCounterVec,
    pub quota: QuotaMetrics,
    pub upstream: UpstreamMetrics,
    /// `gateway_tls_certificate_reloads_total{name,result="ok|error"}`.
    pub tls_reloads: IntCounterVec,
    /// Set when rendered, from the last confirmed sync.
    pub bundle_age: prometheus::Gauge,
    pub bundle_stale: IntGauge,
    /// `gateway_bundle_signature_expired`: 1 when the serving bundle's signature is past `expires`.
    pub signature_expired: IntGauge,
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

fn decision_log_counters(r: &Registry) -> Result<DecisionLogCounters, prometheus::Error> {
    let total = counter_vec(
        r,
        DECISION_LOGS_TOTAL,
        "Decision-log events: buffered, shipped, dropped by the bundle's drop rule",
        &["result"],
    )?;
    let dropped = counter_vec(
        r,
        DECISION_LOGS_DROPPED_TOTAL,
        "Decision-log events lost: the queue or the buffer was full, or a sink refused the batch",
        &["reason"],
    )?;
    Ok(DecisionLogCounters {
        buffered: total.with_label_values(&["buffered"]),
        shipped: total.with_label_values(&["shipped"]),
        dropped_by_policy: total.with_label_values(&["dropped_by_policy"]),
        queue_full: dropped.with_label_values(&["queue_full"]),
        buffer_full: dropped.with_label_values(&["buffer_full"]),
        rejected: dropped.with_label_values(&["rejected"]),
        buffer_bytes: reg(
            r,
            IntGauge::new(
                DECISION_LOGS_BUFFER_BYTES,
                "Serialized decision-log events waiting to be shipped, in bytes",
            )?,
        )?,
    })
}

/// `gateway_bundle_sync_total{result}`, each result's series present from the start.
fn sync_counter(r: &Registry) -> Result<IntCounterVec, prometheus::Error> {
    let sync = counter_vec(r, BUNDLE_SYNC_TOTAL, "Polls of the bundle source by result", &["result"])?;
    for result in ["updated", "not_modified", "error"] {
        sync.with_label_values(&[result]);
    }
    Ok(sync)
}

/// The fleet-wide quota store's metrics.
#[derive(Clone)]
pub struct QuotaMetrics {
    /// `gateway_quota_store_errors_total{reason="connect|timeout|reset|garbage"}`.
    pub errors: IntCounterVec,
    /// `gateway_quota_store_up`: 1 while the fleet's counts are current, 0 while each gateway
    /// enforces its local share.
    pub up: IntGauge,
    /// `gateway_quota_fleet_gateways`: gateways that exchanged counts recently.
    pub fleet: IntGauge,
}

fn quota_metrics(r: &Registry) -> Result<QuotaMetrics, prometheus::Error> {
    let why = "Exchanges with the quota store that failed, by reason (global limits then use local shares)";
    let up = "1 while global limits count the fleet's use, 0 while each gateway enforces its local share";
    Ok(QuotaMetrics {
        errors: counter_vec(r, QUOTA_STORE_ERRORS_TOTAL, why, &["reason"])?,
        up: reg(r, IntGauge::new(QUOTA_STORE_UP, up)?)?,
        fleet: reg(r, IntGauge::new(QUOTA_FLEET_GATEWAYS, "Gateways that exchanged quota counts recently")?)?,
    })
}

/// What the gateway did about failing or saturated upstreams.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// `gateway_upstream_retries_total{upstream,reason}`.
    pub retries: IntCounterVec,
    /// `gateway_upstream_retry_budget_exhausted_total{upstream}`: retries the budget refused.
    pub budget_exhausted: IntCounterVec,
    /// `gateway_upstream_ejections_total{upstream,target}`.
    pub ejections: IntCounterVec,
    /// `gateway_upstream_connections{upstream}`: requests in flight to it (set when rendered).
    pub connections: IntGaugeVec,
    /// `gateway_upstream_pending_overflow_total{upstream,reason="queue_full|timeout"}`: 503s for
    /// want of a slot.
    pub pending_overflow: IntCounterVec,
}

fn upstream_metrics(r: &Registry) -> Result<UpstreamMetrics, prometheus::Error> {
    Ok(UpstreamMetrics {
        retries: counter_vec(
            r,
            UPSTREAM_RETRIES_TOTAL,
            "Requests tried again, by what failed",
            &["upstream", "reason"],
        )?,
        budget_exhausted: counter_vec(
            r,
            UPSTREAM_RETRY_BUDGET_EXHAUSTED_TOTAL,
            "Retries the retry budget refused (the failure was the answer)",
            &["upstream"],
        )?,
        ejections: counter_vec(
            r,
            UPSTREAM_EJECTIONS_TOTAL,
            "Targets ejected for failing requests in a row",
            &["upstream", "target"],
        )?,
        connections: reg(
            r,
            IntGaugeVec::new(Opts::new(UPSTREAM_CONNECTIONS, "Requests in flight to the upstream"), &["upstream"])?,
        )?,
        pending_overflow: counter_vec(
            r,
            UPSTREAM_PENDING_OVERFLOW_TOTAL,
            "Requests answered 503 for want of a slot to the upstream (max_connections, max_pending, pending_timeout)",
            &["upstream", "reason"],
        )?,
    })
}

/// Registers a collector and hands it back (collectors are handles onto shared values).
fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> Result<C, prometheus::Error> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    reg(registry, IntCounter::new(name, help)?)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    reg(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn buckets() -> Vec<f64> {
    vec![
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

/// The active bundle: its identity, when it activated, how old and whether stale or expired.
fn bundle_metrics(
    r: &Registry,
) -> Result<(IntGaugeVec, IntGauge, prometheus::Gauge, IntGauge, IntGauge), prometheus::Error> {
    Ok((
        reg(
            r,
            IntGaugeVec::new(Opts::new(BUNDLE_INFO, "The active bundle (value 1)"), &["name", "revision", "digest"])?,
        )?,
        reg(r, IntGauge::new(BUNDLE_ACTIVATED_TIMESTAMP, "Unix time the active bundle was activated")?)?,
        reg(
            r,
            prometheus::Gauge::new(
                BUNDLE_AGE,
                "Seconds since the gateway last confirmed (200 or 304) that its active bundle is current",
            )?,
        )?,
        reg(r, IntGauge::new(BUNDLE_STALE, "1 when the bundle age exceeds max_staleness")?)?,
        reg(
            r,
            IntGauge::new(
                SIGNATURE_EXPIRED,
                "1 when the serving bundle's signature is past its expires (it keeps serving)",
            )?,
        )?,
    ))
}

/// Downstream connections: held, refused at the bound (all, per address), closed for their
/// request head.
fn connection_metrics(r: &Registry) -> Result<(IntGauge, IntCounter, IntCounter, IntCounterVec), prometheus::Error> {
    Ok((
        reg(r, IntGauge::new(CONNECTIONS, "Downstream connections held now")?)?,
        counter(
            r,
            CONNECTIONS_REFUSED_TOTAL,
            "Downstream connections closed at once: limits.max_connections were held",
        )?,
        counter(
            r,
            CONNECTIONS_PER_IP_REFUSED_TOTAL,
            "Downstream connections closed at once: their address held limits.max_connections_per_ip",
        )?,
        counter_vec(
            r,
            CONNECTIONS_CLOSED_TOTAL,
            "Downstream connections closed for a slow (limits.header_timeout) or large (limits.max_header_bytes) request head",
            &["reason"],
        )?,
    ))
}

/// Rate limits: requests past one, keys that lost their bucket, decisions naming no limit.
fn rate_limit_metrics(r: &Registry) -> Result<(IntCounterVec, IntCounterVec, IntCounterVec), prometheus::Error> {
    Ok((
        counter_vec(
            r,
            RATE_LIMITED_TOTAL,
            "Requests past a rate limit: refused with 429 (mode enforce) or only counted (mode shadow)",
            &["route", "limit", "mode"],
        )?,
        counter_vec(
            r,
            RATE_LIMIT_EVICTIONS_TOTAL,
            "Keys whose rate-limit bucket was taken by a new key (limits.rate_limit_keys were held)",
            &["limit"],
        )?,
        counter_vec(
            r,
            RATE_LIMIT_UNKNOWN_TOTAL,
            "Allowing decisions that named a rate limit the bundle does not define (nothing more limited the request)",
            &["route"],
        )?,
    ))
}

/// TLS: when the serving certificates expire and how their reloads went.
fn tls_metrics(r: &Registry) -> Result<(IntGaugeVec, IntCounterVec), prometheus::Error> {
    Ok((
        reg(
            r,
            IntGaugeVec::new(
                Opts::new(TLS_CERT_EXPIRY, "Unix time the serving TLS certificate expires (notAfter)"),
                &["name"],
            )?,
        )?,
        counter_vec(
            r,
            TLS_RELOADS_TOTAL,
            "Changed TLS certificate files loaded (ok) or refused, the old pair serving on (error)",
            &["name", "result"],
        )?,
    ))
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let requests = counter_vec(&r, REQUESTS_TOTAL, "Requests by route and decision", &["route", "decision"])?;
        let histogram =
            |name: &str, help: &str| reg(&r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets()))?);
        let sync = sync_counter(&r)?;
        let how = "Decisions by how they were reached: from the cache, or by running the rule";
        let cache = counter_vec(&r, DECISION_CACHE_TOTAL, how, &["result"])?;
        let why = "Requests refused (400) before routing: ambiguous path, host or headers";
        let refused = counter_vec(&r, REQUESTS_REFUSED_TOTAL, why, &["reason"])?;
        let (bundle_info, bundle_activated, bundle_age, bundle_stale, signature_expired) = bundle_metrics(&r)?;
        let (connections, connections_refused, connections_per_ip_refused, connections_closed) =
            connection_metrics(&r)?;
        let (rate_limited, rate_limit_evictions, rate_limit_unknown) = rate_limit_metrics(&r)?;
        let (tls_expiry, tls_reloads) = tls_metrics(&r)?;
        Ok(Metrics {
            tls_expiry,
            tls_reloads,
            connections,
            connections_refused,
            connections_per_ip_refused,
            connections_closed,
            bundle_info,
            bundle_activated,
            bundle_age,
            bundle_stale,
            signature_expired,
            no_route: requests.with_label_values(&["", Outcome::NoRoute.label()]),
            unavailable: requests.with_label_values(&["", Outcome::Unavailable.label()]),
            refused_requests: requests.with_label_values(&["", Outcome::Refused.label()]),
            requests,
            request_duration: histogram(REQUEST_DURATION, "Time from request headers to the end of the response")?,
            policy_eval_duration: histogram(
                POLICY_EVAL_DURATION,
                "Time to build the input and evaluate a route's rule",
            )?,
            upstream_errors: counter(&r, UPSTREAM_ERRORS_TOTAL, "Requests that failed to reach an upstream (502)")?,
            upstream_tls_errors: counter(
                &r,
                UPSTREAM_TLS_ERRORS_TOTAL,
                "TLS handshakes with an upstream that failed (verification or protocol); each is a 502",
            )?,
            access_log_dropped: counter(
                &r,
                ACCESS_LOG_DROPPED_TOTAL,
                "Access-log lines dropped (the writer's queue was full); requests never wait for the log",
            )?,
            decision_logs: decision_log_counters(&r)?,
            rate_limited,
            rate_limit_evictions,
            rate_limit_unknown,
            quota: quota_metrics(&r)?,
            upstream: upstream_metrics(&r)?,
            shadow: counter_vec(
                &r,
                SHADOW_DECISIONS_TOTAL,
                "Shadow rules evaluated beside the enforced one: whether they agreed (same, differ) or failed (error)",
                &["route", "agreement"],
            )?,
            sync,
            activation_failures: counter_vec(
                &r,
                ACTIVATION_FAILURES_TOTAL,
                "Bundles that did not become active, by reason",
                &["reason"],
            )?,
            status_reports_dropped: counter(
                &r,
                STATUS_REPORTS_DROPPED_TOTAL,
                "Status reports to the control plane dropped rather than queued",
            )?,
            shed: counter(&r, SHED_TOTAL, "Requests answered 503 at once because the gateway was at its limits")?,
            in_flight: reg(&r, IntGauge::new(IN_FLIGHT, "Requests being handled now")?)?,
            decision_cache: ["hit", "miss", "bypass"].map(|result| cache.with_label_values(&[result])),
            refused: Refusal::ALL.map(|why| refused.with_label_values(&[why.reason()])),
            registry: r,
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
