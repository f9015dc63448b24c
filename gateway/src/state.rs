//! The gateway's shared state: the active bundle (compiled snapshot, upstream pools, per-route
//! counters) behind an `ArcSwap` that requests load without locks, and what the sync loop knows
//! (ETag, last error, staleness). How a bundle becomes active is `crate::activation`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use policy_bundles::budget::Figures;
use policy_bundles::signing::VerificationKey;
use policy_bundles::Snapshot;

use crate::config::Config;
use crate::metrics::{Metrics, RouteCounters};
use crate::pool::Pool;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("`bundle.signing.keys`: key `{id}`: {message}")]
    SigningKey { id: String, message: String },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP client for bundle sources: {0}")]
    Client(#[from] reqwest::Error),
    #[error("`tls.certificates`: {0}")]
    Certificate(#[from] crate::tls::CertError),
    #[error("listener: {0}")]
    Listener(String),
    #[error("`access_log`: {0}")]
    AccessLog(std::io::Error),
    #[error("`decision_logs`: cannot start the shipper: {0}")]
    DecisionLogs(std::io::Error),
    #[error("upgrade: {0}")]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("a lock was poisoned while starting")]
    Poisoned,
    #[error("cannot activate {path}: {source}")]
    Activation { path: String, source: crate::activation::ActivationError },
}

/// Identity of the active bundle, shown by `/status` and `gateway_bundle_info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleInfo {
    pub name: String,
    pub revision: String,
    pub digest: String,
    /// Unix seconds.
    pub activated_at: u64,
    pub source: String,
    /// What the bundle cost when it was checked against `bundle.budget`.
    pub figures: Option<Figures>,
    /// Its signed identity (`metadata.gateway`), checked when `signing.required`.
    pub identity: Option<policy_bundles::signing::Identity>,
}

/// Everything a request needs, immutable once built.
pub struct Active {
    pub snapshot: Snapshot,
    /// By upstream index of the snapshot.
    pub pools: Vec<Arc<Pool>>,
    /// By route index of the snapshot.
    pub counters: Vec<RouteCounters>,
    pub info: BundleInfo,
    /// What this snapshot has served since it activated.
    pub served: crate::served::Served,
}

/// What the sync loop knows, for `/status` and `/metrics`. Never read on the request path.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncDetail {
    /// The source that last answered (a URL, `cache`, or the bundle file).
    pub source: Option<String>,
    /// The ETag the gateway sends in `If-None-Match`: the active bundle's, kept across errors.
    pub etag: Option<String>,
    pub last_error: Option<String>,
    /// Unix seconds of the last error.
    pub last_error_at: Option<u64>,
}

/// Shared by the proxy, the admin listener, the health checks and the sync loop; its fields
/// are the crate's own (outside it, a gateway is built, activated and read through methods).
pub struct Gateway {
    pub(crate) config: Config,
    /// Loaded once per request, without a lock; swapped by activation.
    pub(crate) active: ArcSwapOption<Active>,
    pub(crate) metrics: Metrics,
    /// Unix millis of the last confirmation (a 200 or 304 from a source); 0: never.
    pub(crate) last_confirmed_ms: AtomicU64,
    pub(crate) sync: Mutex<SyncDetail>,
    /// The last activation attempt from a source, for status reports.
    pub(crate) last_activation: Mutex<Option<crate::served::ActivationAttempt>>,
    pub(crate) admission: crate::admission::Admission,
    /// Bundles swapped out, kept until no request holds them, so that the last reference, and
    /// with it the work of freeing a compiled bundle, is dropped here on the activation
    /// thread rather than by whichever request happens to finish last on a worker.
    pub(crate) retired: Mutex<Vec<Arc<Active>>>,
    started_ms: u64,
    pub(crate) signing_keys: Vec<VerificationKey>,
    /// TLS on the proxy listener, once the listeners are built (for `/status`).
    pub(crate) tls: Mutex<Option<Arc<crate::tls::Tls>>>,
    /// Starting, running, or draining (handing over / shutting down): `/readyz`.
    pub(crate) phases: Arc<crate::upgrade::Phases>,
    /// Set when the server is built with `access_log`.
    pub(crate) access_log: std::sync::OnceLock<crate::access_log::AccessLog>,
    /// Set when the server is built with `decision_logs`.
    pub(crate) decision_logs: std::sync::OnceLock<crate::decision_log::DecisionLogs>,
    /// The highest signed sequence activated (`metadata.gateway.sequence`), persisted in
    /// `cache_dir` so that a restart does not forget it.
    pub(crate) highest_sequence: AtomicU64,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Waits for `tick`'s next tick; false once the server is shutting down. The loop of every
/// periodic background service: `while next_tick(&mut tick, &mut shutdown).await { .. }`.
pub(crate) async fn next_tick(tick: &mut tokio::time::Interval, shutdown: &mut pingora::server::ShutdownWatch) -> bool {
    tokio::select! {
        _ = shutdown.changed() => false,
        _ = tick.tick() => true,
    }
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Gateway {
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let mut signing_keys = Vec::new();
        if let Some(sg) = &config.bundle.signing {
            for k in &sg.keys {
                let key = VerificationKey::from_pem(&k.id, &k.algorithm, &k.pem)
                    .map_err(|e| StartError::SigningKey { id: k.id.clone(), message: e.to_string() })?;
                signing_keys.push(key);
            }
        }
        let metrics = Metrics::new()?;
        let highest_sequence = AtomicU64::new(crate::cache::load_sequence(&config.bundle));
        Ok(Gateway {
            highest_sequence,
            admission: crate::admission::Admission::new(config.limits, metrics.in_flight.clone()),
            config,
            active: ArcSwapOption::empty(),
            metrics,
            last_confirmed_ms: AtomicU64::new(0),
            sync: Mutex::new(SyncDetail::default()),
            last_activation: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            started_ms: unix_now_ms(),
            signing_keys,
            tls: Mutex::new(None),
            phases: Arc::default(),
            access_log: std::sync::OnceLock::new(),
            decision_logs: std::sync::OnceLock::new(),
        })
    }

    /// The configuration this gateway runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The active bundle, if any (one lock-free load).
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active.load_full()
    }

    /// Seconds since the active bundle was last confirmed current (a 200 or 304 from a source;
    /// at boot from cache, when the cached copy was fetched). With a local `bundle.file` there is
    /// nothing to be stale against: 0. Never confirmed: time since the gateway started.
    pub fn age_seconds(&self) -> f64 {
        if matches!(self.config.bundle.source, crate::config::Source::File(_)) {
            return 0.0;
        }
        let confirmed = self.last_confirmed_ms.load(Ordering::Relaxed);
        let since = if confirmed == 0 { self.started_ms } else { confirmed };
        unix_now_ms().saturating_sub(since) as f64 / 1000.0
    }

    /// Whether the serving bundle's signature is past its `expires`: an alert; it keeps serving.
    pub fn signature_expired(&self) -> bool {
        let active = self.active.load();
        let expires = active.as_ref().and_then(|a| a.info.identity.as_ref()).and_then(|i| i.expires);
        expires.is_some_and(|e| unix_now() >= e)
    }

    pub fn is_stale(&self) -> bool {
        self.age_seconds() > self.config.bundle.max_staleness.as_secs_f64()
    }

    /// The Prometheus exposition, with the staleness gauges brought up to date.
    pub fn render_metrics(&self) -> Vec<u8> {
        self.metrics.bundle_age.set(self.age_seconds());
        self.metrics.bundle_stale.set(i64::from(self.is_stale()));
        self.metrics.signature_expired.set(i64::from(self.signature_expired()));
        self.metrics.render()
    }

    /// Records an error for `/status`.
    pub fn record_error(&self, message: String) {
        if let Ok(mut s) = self.sync.lock() {
            s.last_error = Some(message);
            s.last_error_at = Some(unix_now());
        }
    }
}
