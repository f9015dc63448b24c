//! How a bundle becomes active, as a pipeline of steps that each either hand on a checked
//! value or fail with one [`ActivationError`]:
//!
//! ```text
//! Candidate (bytes, origin, ETag)
//!   → digest        the body is what the source or the persisted copy says it is
//!   → budget        its cost, measured in a child process under limits (policy_bundles::budget)
//!   → verify        signature and freshness (signed sequence, expiry)
//!   → compile       the snapshot, its upstream pools and route counters: an `Active`
//!   → swap          into the gateway's `ArcSwap`, with its ETag
//!   → persist       the tarball and the signed sequence, as last-known-good
//! ```
//!
//! Any failure before the swap leaves the last-known-good serving; every outcome is recorded
//! here, once ([`Activator::activate`]). The transport that fetched the bytes
//! ([`crate::sync`]) knows nothing of this: it hands each download to [`Activator::activate`]
//! through a callback. On start the persisted copy is activated before any network call
//! ([`Activator::boot_from_persisted`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use policy_bundles::budget::{self, Figures};
use policy_bundles::signing::{self, Identity, SignatureError, VerificationKey};
use policy_bundles::{archive, Bundle, BundleErrors, Limits, Snapshot};

use crate::active::{Active, BundleInfo, Gateway};
use crate::clock::unix_now;
use crate::config::{BundleConfig, Config};
use crate::metrics::Metrics;
use crate::persisted::{self, CacheMeta};
use crate::pool::{Pool, PoolError};
use crate::quota::Quotas;
use crate::revision_health::ActivationAttempt;
use policy_bundles::rate_limits::{LimitMode, RateLimit};

/// Why a bundle did not become active; [`ActivationError::reason`] is a metric label.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleErrors),
    #[error("signature refused: {0}")]
    Signature(#[from] SignatureError),
    #[error("signature refused: {0}")]
    Freshness(#[from] signing::FreshnessError),
    #[error("digest mismatch: {0}")]
    Digest(String),
    #[error("{0}")]
    Upstream(#[from] PoolError),
    #[error("{0}")]
    QuotaStore(#[from] crate::limiter::NoQuotaStore),
}

impl ActivationError {
    pub fn reason(&self) -> &'static str {
        match self {
            ActivationError::Bundle(e) => e.kind().as_str(),
            ActivationError::Signature(_) => "signature",
            ActivationError::Freshness(e) => e.reason(),
            ActivationError::Digest(_) => "digest",
            ActivationError::Upstream(_) => "upstream",
            ActivationError::QuotaStore(_) => "quota_store",
        }
    }

    fn unreadable(path: &Path, message: String) -> ActivationError {
        ActivationError::Bundle(BundleErrors::from(policy_bundles::BundleError::new(
            policy_bundles::ErrorKind::Archive,
            Some(path.display().to_string()),
            message,
        )))
    }
}

/// Where a candidate came from: it decides what is checked (a persisted copy is trusted for
/// freshness, a download must be current) and what is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `bundle.file`.
    File(PathBuf),
    /// The persisted last-known-good, fetched at this Unix second.
    Persisted { fetched_at: u64 },
    /// A download from this URL.
    Source(String),
}

/// The `source` of a bundle booted from the persisted copy.
pub const PERSISTED_SOURCE: &str = "cache";

impl Origin {
    fn label(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Persisted { .. } => PERSISTED_SOURCE.into(),
            Origin::Source(url) => url.clone(),
        }
    }
}

/// A bundle tarball offered for activation.
pub struct Candidate {
    pub bytes: Arc<Vec<u8>>,
    pub origin: Origin,
    /// The ETag it came with: sent in `If-None-Match` once it is active. An ETag naming a
    /// SHA-256 digest (as the control plane's do) is checked against the body.
    pub etag: Option<String>,
    /// The digest the persisted copy's metadata records.
    pub digest: Option<String>,
}

/// Step 1: the body's digest, checked against what its origin said.
fn digest(c: &Candidate) -> Result<String, ActivationError> {
    let digest = policy_bundles::digest(&c.bytes);
    let said = c.digest.as_deref().or_else(|| c.etag.as_deref().and_then(etag_digest));
    match said {
        Some(want) if !want.eq_ignore_ascii_case(&digest) => {
            Err(ActivationError::Digest(format!("source said sha256 {want}, body has {digest}")))
        }
        _ => Ok(digest),
    }
}

/// An ETag that names a SHA-256 digest (`"<64 hex>"`), as the control plane sends.
pub fn etag_digest(etag: &str) -> Option<&str> {
    let inner = etag.trim().trim_start_matches("W/").trim_matches('"');
    (inner.len() == 64 && inner.bytes().all(|b| b.is_ascii_hexdigit())).then_some(inner)
}

/// Step 2: what the bundle costs, measured in a child process with memory and CPU limits
/// before this process reads more than the tarball (one over budget never reaches the compiler
/// here); then its files.
fn budget(bytes: &[u8], b: &BundleConfig) -> Result<(Figures, archive::Files), ActivationError> {
    let limits = limits(b);
    let figures = budget::check(bytes, &limits, &b.budget, &b.validator)?;
    let files = archive::read_tar_gz(bytes, &limits).map_err(|e| ActivationError::Bundle(e.into()))?;
    Ok((figures, files))
}

fn limits(b: &BundleConfig) -> Limits {
    Limits { max_archive_bytes: b.max_size, ..Limits::default() }
}

/// Step 3: the signature, and with `signing.required` the signed identity: the persisted
/// last-known-good boots even past its `expires` and below the persisted highest sequence (its
/// newer copy may not have been written: a restart with the sources down always serves);
/// anything fetched must be current.
fn verify(
    files: &archive::Files,
    b: &BundleConfig,
    keys: &[VerificationKey],
    highest: u64,
    origin: &Origin,
) -> Result<Option<Identity>, ActivationError> {
    let Some(sg) = &b.signing else { return Ok(None) };
    signing::verify(files, keys, sg.required)?;
    if !sg.required {
        return Ok(None);
    }
    let at_boot = matches!(origin, Origin::Persisted { .. });
    let floor = if at_boot { 0 } else { highest };
    Ok(Some(signing::check_identity(files, &b.name, floor, unix_now(), at_boot)?))
}

/// What compiling a bundle needs beside it.
struct Compiling<'a> {
    previous: Option<&'a Active>,
    base_dir: &'a Path,
    metrics: &'a Metrics,
    /// `limits.rate_limit_keys`.
    rate_limit_keys: usize,
    quotas: Option<&'a Quotas>,
}

/// Step 4: the snapshot, keeping the serving bundle's verified tokens when its trust settings
/// are the same, with its upstream pools, route counters and rate limits.
fn compile(bundle: &Bundle, info: BundleInfo, c: Compiling<'_>) -> Result<Active, ActivationError> {
    let Compiling { previous, base_dir, metrics, rate_limit_keys, quotas } = c;
    let mut snapshot = Snapshot::compile(bundle)?;
    let kept_tokens = match (snapshot.jwt.as_mut(), previous.and_then(|a| a.snapshot.jwt.as_ref())) {
        (Some(new), Some(old)) => new.inherit_cache(old),
        _ => false,
    };
    tracing::debug!(jwt.cache_kept = kept_tokens, "compiled");
    let pools = snapshot.upstreams.iter().map(|u| Pool::build(u, base_dir).map(Arc::new)).collect::<Result<_, _>>()?;
    let counters = snapshot.routes.iter().map(|r| metrics.route_counters(&r.name)).collect();
    let mut info = info;
    // A bundle without a manifest revision is named by its content, as `bundlectl build` does.
    info.revision = if snapshot.revision.is_empty() {
        info.digest.get(..12).unwrap_or_default().to_owned()
    } else {
        snapshot.revision.clone()
    };
    let serving = previous.map(|p| &p.limits[..]).unwrap_or_default();
    let limits = crate::limiter::build(&snapshot.rate_limits, serving, rate_limit_keys, quotas, metrics)?;
    let limited = limited_counters(&snapshot, metrics);
    Ok(Active { snapshot, pools, counters, info, served: Default::default(), limits, limited })
}

/// The counters of the limits each route lists (a limit only a decision names gets its series
/// when it first refuses).
fn limited_counters(snapshot: &Snapshot, metrics: &Metrics) -> Vec<Vec<Option<prometheus::IntCounter>>> {
    snapshot
        .routes
        .iter()
        .map(|r| {
            (0..snapshot.rate_limits.len())
                .map(|i| {
                    r.rate_limits.contains(&i).then(|| limited_counter(metrics, &r.name, &snapshot.rate_limits[i]))
                })
                .collect()
        })
        .collect()
}

/// `gateway_rate_limited_total{route,limit,mode}` of one route's limit.
pub fn limited_counter(metrics: &Metrics, route: &str, limit: &RateLimit) -> prometheus::IntCounter {
    let mode = match limit.mode {
        LimitMode::Enforce => "enforce",
        LimitMode::Shadow => "shadow",
    };
    metrics.rate_limited.with_label_values(&[route, &limit.name, mode])
}

/// Runs the pipeline for one gateway: owns what activation needs beyond the gateway's state
/// (the bundle settings, the verification keys, the signed-sequence floor) and the bundles
/// swapped out.
pub struct Activator {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    bundle: BundleConfig,
    base_dir: PathBuf,
    /// `limits.rate_limit_keys`.
    rate_limit_keys: usize,
    /// The fleet's quotas, with a `quota_store`.
    quotas: Option<Arc<Quotas>>,
    keys: Vec<VerificationKey>,
    /// The highest signed sequence activated (`metadata.gateway.sequence`), persisted beside the
    /// bundle so that a restart does not forget it.
    highest_sequence: AtomicU64,
    /// Bundles swapped out, kept until no request holds them, so that the last reference, and
    /// with it the work of freeing a compiled bundle, is dropped here on the activation thread
    /// rather than by whichever request happens to finish last on a worker.
    retired: Mutex<Vec<Arc<Active>>>,
}

/// A verification key in `bundle.signing.keys` that does not load.
#[derive(Debug, thiserror::Error)]
#[error("`bundle.signing.keys`: key `{id}`: {message}")]
pub struct KeyError {
    pub id: String,
    pub message: String,
}

impl Activator {
    pub fn new(
        config: &Config,
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
        quotas: Option<Arc<Quotas>>,
    ) -> Result<Activator, KeyError> {
        let mut keys = Vec::new();
        for k in config.bundle.signing.iter().flat_map(|s| &s.keys) {
            let key = VerificationKey::from_pem(&k.id, &k.algorithm, &k.pem)
                .map_err(|e| KeyError { id: k.id.clone(), message: e.to_string() })?;
            keys.push(key);
        }
        Ok(Activator {
            highest_sequence: AtomicU64::new(persisted::load_sequence(&config.bundle)),
            gateway,
            metrics,
            bundle: config.bundle.clone(),
            base_dir: config.base_dir.clone(),
            rate_limit_keys: config.limits.rate_limit_keys,
            quotas,
            keys,
            retired: Mutex::new(Vec::new()),
        })
    }

    /// Activates a candidate: the pipeline, then the record of how it went (metrics, `/status`,
    /// the status reports). Blocking: call it at start-up or from a blocking thread, never from
    /// a request. On any error the active bundle is left untouched.
    pub fn activate(&self, candidate: Candidate) -> Result<Arc<Active>, ActivationError> {
        let result = self.run(&candidate);
        if let Origin::Source(_) = candidate.origin {
            self.record_attempt(&candidate, &result);
        }
        match &result {
            Ok(active) => self.persist(&candidate, active),
            Err(e) => self.record_failure(e),
        }
        result
    }

    fn run(&self, c: &Candidate) -> Result<Arc<Active>, ActivationError> {
        let digest = digest(c)?;
        let (figures, files) = budget(&c.bytes, &self.bundle)?;
        let identity =
            verify(&files, &self.bundle, &self.keys, self.highest_sequence.load(Ordering::Relaxed), &c.origin)?;
        let bundle = Bundle::from_files(files)?;
        let activated_at_ms = crate::clock::unix_now_ms();
        let info = BundleInfo {
            name: self.bundle.name.clone(),
            revision: String::new(),
            digest,
            activated_at: activated_at_ms / 1000,
            activated_at_ms,
            source: c.origin.label(),
            figures: Some(figures),
            identity,
        };
        let previous = self.gateway.active();
        let active = Arc::new(compile(
            &bundle,
            info,
            Compiling {
                previous: previous.as_deref(),
                base_dir: &self.base_dir,
                metrics: &self.metrics,
                rate_limit_keys: self.rate_limit_keys,
                quotas: self.quotas.as_deref(),
            },
        )?);
        drop(previous);
        self.swap(active.clone(), c.etag.clone());
        Ok(active)
    }

    /// Step 5: the swap, the metrics of the identity, and the retiring of what it replaced.
    fn swap(&self, active: Arc<Active>, etag: Option<String>) {
        let info = &active.info;
        self.metrics.bundle_info.reset();
        self.metrics.bundle_info.with_label_values(&[&info.name, &info.revision, &info.digest]).set(1);
        self.metrics.bundle_activated.set(info.activated_at as i64);
        let previous = self.gateway.swap(active.clone(), etag);
        if let Ok(mut retired) = self.retired.lock() {
            retired.extend(previous);
            retired.retain(|a| Arc::strong_count(a) > 1);
        }
        tracing::info!(
            bundle.name = %info.name,
            bundle.revision = %info.revision,
            bundle.digest = %info.digest,
            bundle.source = %info.source,
            decision_cache.keys = %active.snapshot.describe_reads(),
            "bundle activated"
        );
    }

    /// Step 6: persistence, in one place: the signed sequence when it rose, and a download's
    /// tarball as last-known-good (with `cache_dir`). A failure is counted and shown; serving
    /// goes on with the bundle that activated.
    fn persist(&self, c: &Candidate, active: &Active) {
        if let Some(sequence) = active.info.identity.as_ref().map(|i| i.sequence) {
            if self.highest_sequence.fetch_max(sequence, Ordering::Relaxed) < sequence {
                if let Err(e) = persisted::store_sequence(&self.bundle, sequence) {
                    self.persist_failed(format!("cannot persist the signed sequence: {e}"));
                }
            }
        }
        let (Origin::Source(url), Some(dir)) = (&c.origin, &self.bundle.cache_dir) else { return };
        let meta = CacheMeta {
            name: self.bundle.name.clone(),
            digest: active.info.digest.clone(),
            etag: c.etag.clone(),
            revision: active.info.revision.clone(),
            source: url.clone(),
            fetched_at: unix_now(),
        };
        if let Err(e) = persisted::persist(dir, &c.bytes, &meta) {
            self.persist_failed(format!("cannot persist the bundle to cache_dir: {e}"));
        }
    }

    fn persist_failed(&self, message: String) {
        tracing::error!(error = %message, "last-known-good not persisted; serving continues");
        self.metrics.activation_failures.with_label_values(&["persist"]).inc();
        self.gateway.sync.record_error(message);
    }

    /// Counts and records a failed activation; what was serving keeps serving.
    fn record_failure(&self, error: &ActivationError) {
        self.metrics.activation_failures.with_label_values(&[error.reason()]).inc();
        self.gateway.sync.record_error(error.to_string());
        tracing::warn!(reason = error.reason(), error = %error, "bundle not activated; last-known-good keeps serving");
    }

    /// How an attempt from a source ended: a canary's first health signal.
    fn record_attempt(&self, c: &Candidate, result: &Result<Arc<Active>, ActivationError>) {
        let digest = match result {
            Ok(a) => a.info.digest.clone(),
            Err(_) => policy_bundles::digest(&c.bytes),
        };
        let error = result.as_ref().err();
        self.gateway.sync.record_attempt(ActivationAttempt {
            digest,
            outcome: if error.is_none() { "activated" } else { "failed" },
            reason: error.map(ActivationError::reason),
            message: error.map(ToString::to_string),
            at: unix_now(),
        });
    }

    /// Reads and activates the bundle at `path` (a `.tar.gz` or a directory).
    pub fn activate_path(&self, path: &Path) -> Result<Arc<Active>, ActivationError> {
        let bytes = if path.is_dir() {
            archive::read_dir(path, &limits(&self.bundle)).map_err(|e| ActivationError::Bundle(e.into())).and_then(
                |files| {
                    archive::write_tar_gz(&files)
                        .map_err(|e| ActivationError::unreadable(path, format!("cannot pack the directory: {e}")))
                },
            )
        } else {
            std::fs::read(path).map_err(|e| ActivationError::unreadable(path, format!("cannot read: {e}")))
        };
        let bytes = bytes.inspect_err(|e| self.record_failure(e))?;
        let origin = Origin::File(path.to_owned());
        self.activate(Candidate { bytes: Arc::new(bytes), origin, etag: None, digest: None })
    }

    /// The fleet's quotas (exchanged by [`crate::quota::Exchanges`]), with a `quota_store`.
    pub fn quotas(&self) -> Option<Arc<Quotas>> {
        self.quotas.clone()
    }

    /// Activates the persisted last-known-good bundle, verified as if it were fetched, before
    /// any network call. A missing, corrupt or refused copy is logged and skipped, never fatal.
    pub fn boot_from_persisted(&self) {
        let Some(dir) = &self.bundle.cache_dir else { return };
        let cached = match persisted::load(dir, &self.bundle.name) {
            Ok(None) => return tracing::info!(cache_dir = %dir.display(), "no persisted bundle; waiting for a source"),
            Err(e) => {
                tracing::warn!(error = %e, "persisted bundle unusable; skipping it");
                self.metrics.activation_failures.with_label_values(&["cache"]).inc();
                return self.gateway.sync.record_error(format!("cache: {e}"));
            }
            Ok(Some(cached)) => cached,
        };
        let meta = cached.meta;
        let candidate = Candidate {
            bytes: Arc::new(cached.bytes),
            origin: Origin::Persisted { fetched_at: meta.fetched_at },
            etag: meta.etag.clone().or_else(|| Some(format!("\"{}\"", meta.digest))),
            digest: Some(meta.digest.clone()),
        };
        if let Ok(active) = self.activate(candidate) {
            tracing::info!(bundle.revision = %active.info.revision, "serving the persisted last-known-good bundle");
            self.gateway.sync.confirm(PERSISTED_SOURCE, meta.fetched_at * 1000);
        }
    }

    /// A bundle fetched from `url`: the sync transport's callback.
    pub fn activate_download(&self, url: &str, bytes: Arc<Vec<u8>>, etag: String) -> Result<(), String> {
        let candidate = Candidate { bytes, origin: Origin::Source(url.to_owned()), etag: Some(etag), digest: None };
        self.activate(candidate).map(drop).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(bytes: &[u8], etag: Option<&str>, digest: Option<&str>) -> Candidate {
        Candidate {
            bytes: Arc::new(bytes.to_vec()),
            origin: Origin::Source("http://s".into()),
            etag: etag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        }
    }

    #[test]
    fn a_body_that_is_not_what_its_etag_names_is_refused() {
        let good = policy_bundles::digest(b"body");
        assert_eq!(digest(&candidate(b"body", Some(&format!("\"{good}\"")), None)).ok(), Some(good.clone()));
        let other = format!("\"{}\"", "a".repeat(64));
        assert!(matches!(digest(&candidate(b"body", Some(&other), None)), Err(ActivationError::Digest(_))));
        // An ETag that names no digest checks nothing; a persisted copy's recorded digest does.
        assert!(digest(&candidate(b"body", Some("\"5f1-abc\""), None)).is_ok());
        assert!(digest(&candidate(b"body", None, Some(&"b".repeat(64)))).is_err());
    }

    #[test]
    fn reads_digest_etags() {
        let d = "a".repeat(64);
        assert_eq!(etag_digest(&format!("\"{d}\"")), Some(d.as_str()));
        assert_eq!(etag_digest(&format!("W/\"{d}\"")), Some(d.as_str()));
        assert_eq!(etag_digest("\"5f1-abc\""), None);
    }

    #[test]
    fn sources_are_named_for_status() {
        assert_eq!(Origin::Persisted { fetched_at: 1 }.label(), "cache");
        assert_eq!(Origin::Source("http://cp/v1/bundles/main".into()).label(), "http://cp/v1/bundles/main");
    }
}
