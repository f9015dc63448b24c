//! The gateway's shared state: the active bundle (compiled snapshot, upstream pools, per-route
//! counters) behind an `ArcSwap`, and how a bundle becomes active. Activation is
//! verify → compile → build pools → swap, or nothing changes: the last-known-good keeps serving.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures::FutureExt;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::prelude::RequestHeader;
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
}

/// Why a bundle did not become active; the `reason` is a metric label.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleErrors),
    #[error("upstream `{upstream}`: {message}")]
    Upstream { upstream: String, message: String },
}

pub struct Gateway {
    pub config: Config,
    pub active: ArcSwapOption<Active>,
    pub metrics: Metrics,
    /// The last activation error, for `/status`. Never touched on the request path.
    pub last_error: Mutex<Option<String>>,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
    pub fn new(config: Config) -> Result<Gateway, prometheus::Error> {
        Ok(Gateway { config, active: ArcSwapOption::empty(), metrics: Metrics::new()?, last_error: Mutex::new(None) })
    }

    /// Reads, compiles and activates the bundle at `path` (a `.tar.gz` or a directory).
    /// Blocking: call it at start-up or from a blocking thread, never from a request.
    pub fn activate_path(&self, path: &Path) -> Result<Arc<Active>, ActivationError> {
        let limits = Limits { max_archive_bytes: self.config.bundle.max_size, ..Limits::default() };
        let result = (|| {
            let (bundle, digest) = if path.is_dir() {
                let files = archive::read_dir(path, &limits).map_err(BundleErrors::from)?;
                let digest = archive::write_tar_gz(&files).map(|b| policy_bundles::digest(&b)).unwrap_or_default();
                (Bundle::from_files(files)?, digest)
            } else {
                let bytes = std::fs::read(path).map_err(|e| {
                    BundleErrors::from(policy_bundles::BundleError::new(
                        policy_bundles::ErrorKind::Archive,
                        Some(path.display().to_string()),
                        format!("cannot read: {e}"),
                    ))
                })?;
                (Bundle::from_tar_gz(&bytes, &limits)?, policy_bundles::digest(&bytes))
            };
            self.activate(&bundle, digest, path.display().to_string())
        })();
        if let Err(e) = &result {
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
        result
    }

    /// Compiles a bundle and swaps it in; on any error the active bundle is left untouched.
    pub fn activate(&self, bundle: &Bundle, digest: String, source: String) -> Result<Arc<Active>, ActivationError> {
        let snapshot = Snapshot::compile(bundle)?;
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
        };
        let active = Arc::new(Active { snapshot, pools, counters, info });
        self.metrics.bundle_info.reset();
        self.metrics
            .bundle_info
            .with_label_values(&[&active.info.name, &active.info.revision, &active.info.digest])
            .set(1);
        self.metrics.bundle_activated.set(active.info.activated_at as i64);
        self.active.store(Some(active.clone()));
        tracing::info!(bundle.name = %active.info.name, bundle.revision = %active.info.revision, bundle.digest = %active.info.digest, "bundle activated");
        Ok(active)
    }
}
