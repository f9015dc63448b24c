//! The gateway's shared state: the active bundle (compiled snapshot, upstream pools, per-route
//! counters) behind an `ArcSwap`, and how a bundle becomes active. Activation is
//! verify → compile → build pools → swap, or nothing changes: the last-known-good keeps serving.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures::FutureExt;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::prelude::RequestHeader;
use policy_bundles::budget::{self, Figures};
use policy_bundles::signing::{self, SignatureError, VerificationKey};
use policy_bundles::{archive, Bundle, BundleErrors, Limits, Snapshot};

use crate::config::Config;
use crate::metrics::{Metrics, RouteCounters};

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
}

/// One upstream's pool of targets.
pub struct Pool {
    pub name: String,
    pub lb: LoadBalancer<RoundRobin>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Health-check interval, when the upstream has a health check.
    pub health_interval: Option<Duration>,
    /// Unix millis of the next due health check.
    pub next_check_ms: AtomicU64,
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

/// Why a bundle did not become active; [`ActivationError::reason`] is a metric label.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleErrors),
    #[error("signature refused: {0}")]
    Signature(#[from] SignatureError),
    #[error("digest mismatch: {0}")]
    Digest(String),
    #[error("upstream `{upstream}`: {message}")]
    Upstream { upstream: String, message: String },
}

impl ActivationError {
    pub fn reason(&self) -> &'static str {
        match self {
            ActivationError::Bundle(e) => e.kind().as_str(),
            ActivationError::Signature(_) => "signature",
            ActivationError::Digest(_) => "digest",
            ActivationError::Upstream { .. } => "upstream",
        }
    }
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

pub struct Gateway {
    pub config: Config,
    pub active: ArcSwapOption<Active>,
    pub metrics: Metrics,
    /// Unix millis of the last confirmation (a 200 or 304 from a source); 0: never.
    pub last_confirmed_ms: AtomicU64,
    pub sync: Mutex<SyncDetail>,
    /// The last activation attempt from a source, for status reports.
    pub last_activation: Mutex<Option<crate::served::ActivationAttempt>>,
    pub admission: crate::admission::Admission,
    /// Bundles swapped out, kept until no request holds them, so that the last reference, and
    /// with it the work of freeing a compiled bundle, is dropped here on the activation
    /// thread rather than by whichever request happens to finish last on a worker.
    retired: Mutex<Vec<Arc<Active>>>,
    started_ms: u64,
    signing_keys: Vec<VerificationKey>,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn build_pool(u: &policy_bundles::snapshot::Upstream) -> Result<Pool, ActivationError> {
    let err = |message: String| ActivationError::Upstream { upstream: u.name.clone(), message };
    let mut backends = std::collections::BTreeSet::new();
    for t in &u.spec.targets {
        let addrs = t.to_socket_addrs().map_err(|e| err(format!("cannot resolve target `{t}`: {e}")))?;
        for a in addrs {
            backends.insert(Backend::new(&a.to_string()).map_err(|e| err(format!("target `{t}`: {e}")))?);
        }
    }
    if backends.is_empty() {
        return Err(err("no target resolved to an address".into()));
    }
    let mut b = Backends::new(discovery::Static::new(backends));
    let health_interval = match &u.spec.health_check {
        None => None,
        Some(hc) => {
            let check: Box<dyn HealthCheck + Send + Sync> = match &hc.path {
                Some(path) => {
                    let mut h = HttpHealthCheck::new("localhost", false);
                    let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                        .map_err(|e| err(format!("health check path `{path}`: {e}")))?;
                    req.append_header("Host", "localhost").map_err(|e| err(e.to_string()))?;
                    h.req = req;
                    Box::new(h)
                }
                None => TcpHealthCheck::new(),
            };
            b.set_health_check(check);
            Some(hc.interval.unwrap_or(Duration::from_secs(5)))
        }
    };
    let lb = LoadBalancer::from_backends(b);
    // Static discovery never blocks: this resolves immediately.
    lb.update()
        .now_or_never()
        .ok_or_else(|| err("static discovery did not complete".into()))?
        .map_err(|e| err(format!("cannot build the pool: {e}")))?;
    Ok(Pool {
        name: u.name.clone(),
        lb,
        connect_timeout: u.spec.connect_timeout.unwrap_or(Duration::from_secs(1)),
        read_timeout: u.spec.read_timeout.unwrap_or(Duration::from_secs(30)),
        health_interval,
        next_check_ms: AtomicU64::new(0),
    })
}

impl Gateway {
    pub fn new(config: Config) -> anyhow::Result<Gateway> {
        let mut signing_keys = Vec::new();
        if let Some(sg) = &config.bundle.signing {
            for k in &sg.keys {
                signing_keys.push(VerificationKey::from_pem(&k.id, &k.algorithm, &k.pem).map_err(anyhow::Error::msg)?);
            }
        }
        let metrics = Metrics::new()?;
        Ok(Gateway {
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
        })
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

    pub fn is_stale(&self) -> bool {
        self.age_seconds() > self.config.bundle.max_staleness.as_secs_f64()
    }

    /// The Prometheus exposition, with the staleness gauges brought up to date.
    pub fn render_metrics(&self) -> Vec<u8> {
        self.metrics.bundle_age.set(self.age_seconds());
        self.metrics.bundle_stale.set(i64::from(self.is_stale()));
        self.metrics.render()
    }

    fn limits(&self) -> Limits {
        Limits { max_archive_bytes: self.config.bundle.max_size, ..Limits::default() }
    }

    /// Counts and records a failed activation; what was serving keeps serving.
    pub fn record_failure(&self, error: &ActivationError) {
        self.metrics.activation_failures.with_label_values(&[error.reason()]).inc();
        self.record_error(error.to_string());
        tracing::warn!(reason = error.reason(), error = %error, "bundle not activated; last-known-good keeps serving");
    }

    /// Records how an activation attempt of the tarball `digest` ended.
    pub fn record_attempt(&self, digest: String, result: Result<(), &ActivationError>) {
        let attempt = crate::served::ActivationAttempt {
            digest,
            outcome: if result.is_ok() { "activated" } else { "failed" },
            reason: result.err().map(ActivationError::reason),
            message: result.err().map(ToString::to_string),
            at: unix_now(),
        };
        if let Ok(mut last) = self.last_activation.lock() {
            *last = Some(attempt);
        }
    }

    /// Records an error for `/status`.
    pub fn record_error(&self, message: String) {
        if let Ok(mut s) = self.sync.lock() {
            s.last_error = Some(message);
            s.last_error_at = Some(unix_now());
        }
    }

    /// Reads, compiles and activates the bundle at `path` (a `.tar.gz` or a directory).
    /// Blocking: call it at start-up or from a blocking thread, never from a request.
    pub fn activate_path(&self, path: &Path) -> Result<Arc<Active>, ActivationError> {
        let read_err = |m: String| {
            ActivationError::Bundle(BundleErrors::from(policy_bundles::BundleError::new(
                policy_bundles::ErrorKind::Archive,
                Some(path.display().to_string()),
                m,
            )))
        };
        let bytes = if path.is_dir() {
            archive::read_dir(path, &self.limits()).map_err(|e| ActivationError::Bundle(e.into())).and_then(|files| {
                archive::write_tar_gz(&files).map_err(|e| read_err(format!("cannot pack the directory: {e}")))
            })
        } else {
            std::fs::read(path).map_err(|e| read_err(format!("cannot read: {e}")))
        };
        let result = bytes.and_then(|b| self.activate_bytes(&b, None, path.display().to_string(), None));
        if let Err(e) = &result {
            self.record_failure(e);
        }
        result
    }

    /// Verifies (digest against `expected_digest` when given, signature), compiles and
    /// activates a bundle tarball. Blocking. Does not record failures: the caller does.
    /// `etag` becomes the sync ETag in the same step as the swap (see [`Gateway::activate`]).
    pub fn activate_bytes(
        &self,
        bytes: &[u8],
        expected_digest: Option<&str>,
        source: String,
        etag: Option<String>,
    ) -> Result<Arc<Active>, ActivationError> {
        let digest = policy_bundles::digest(bytes);
        if let Some(want) = expected_digest {
            if !want.eq_ignore_ascii_case(&digest) {
                return Err(ActivationError::Digest(format!("source said sha256 {want}, body has {digest}")));
            }
        }
        // What the bundle costs is measured in a child process with memory and CPU limits before
        // this process reads more than the tarball: one over budget never reaches the compiler here.
        let b = &self.config.bundle;
        let figures = budget::check(bytes, &self.limits(), &b.budget, &b.validator)?;
        let files = archive::read_tar_gz(bytes, &self.limits()).map_err(|e| ActivationError::Bundle(e.into()))?;
        if let Some(sg) = &b.signing {
            signing::verify(&files, &self.signing_keys, sg.required)?;
        }
        let bundle = Bundle::from_files(files)?;
        self.activate(&bundle, digest, source, etag, Some(figures))
    }

    /// Compiles a bundle and swaps it in; on any error the active bundle is left untouched.
    /// With `etag`, the sync ETag changes in the same critical section as the swap: a reader of
    /// both under the sync lock (`/status`) never sees the new revision with the old ETag.
    pub fn activate(
        &self,
        bundle: &Bundle,
        digest: String,
        source: String,
        etag: Option<String>,
        figures: Option<Figures>,
    ) -> Result<Arc<Active>, ActivationError> {
        let mut snapshot = Snapshot::compile(bundle)?;
        // Same trust settings as the serving bundle: keep its verified tokens.
        let previous = self.active.load();
        let kept_tokens = match (snapshot.jwt.as_mut(), previous.as_ref().and_then(|a| a.snapshot.jwt.as_ref())) {
            (Some(new), Some(old)) => new.inherit_cache(old),
            _ => false,
        };
        drop(previous);
        let pools = snapshot.upstreams.iter().map(|u| build_pool(u).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        let counters = snapshot.routes.iter().map(|r| self.metrics.route_counters(&r.name)).collect();
        let info = BundleInfo {
            name: self.config.bundle.name.clone(),
            // A bundle without a manifest revision is named by its content, as `bundlectl build` does.
            revision: if snapshot.revision.is_empty() {
                digest.get(..12).unwrap_or_default().to_owned()
            } else {
                snapshot.revision.clone()
            },
            digest,
            activated_at: unix_now(),
            source,
            figures,
        };
        let active = Arc::new(Active { snapshot, pools, counters, info, served: Default::default() });
        self.metrics.bundle_info.reset();
        self.metrics
            .bundle_info
            .with_label_values(&[&active.info.name, &active.info.revision, &active.info.digest])
            .set(1);
        self.metrics.bundle_activated.set(active.info.activated_at as i64);
        let mut sync = self.sync.lock().ok();
        let previous = self.active.swap(Some(active.clone()));
        if let (Some(s), Some(tag)) = (sync.as_mut(), etag) {
            s.etag = Some(tag);
        }
        drop(sync);
        if let Ok(mut retired) = self.retired.lock() {
            retired.extend(previous);
            retired.retain(|a| Arc::strong_count(a) > 1);
        }
        tracing::info!(
            bundle.name = %active.info.name,
            bundle.revision = %active.info.revision,
            bundle.digest = %active.info.digest,
            decision_cache.keys = %active.snapshot.describe_reads(),
            jwt.cache_kept = kept_tokens,
            "bundle activated"
        );
        Ok(active)
    }
}
