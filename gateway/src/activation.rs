//! How a bundle becomes active: read → check its budget → verify (digest, signature) →
//! compile → build pools → swap, or nothing changes and the last-known-good keeps serving.
//! Also the bookkeeping of attempts and failures that `/status`, `/metrics` and the status
//! reports show, and booting from the persisted copy.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use policy_bundles::budget::{self, Figures};
use policy_bundles::signing::{self, SignatureError};
use policy_bundles::{archive, Bundle, BundleErrors, Limits, Snapshot};

use crate::cache;
use crate::pool::Pool;
use crate::state::{unix_now, Active, BundleInfo, Gateway};

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
    #[error("upstream `{upstream}`: {message}")]
    Upstream { upstream: String, message: String },
}

impl ActivationError {
    pub fn reason(&self) -> &'static str {
        match self {
            ActivationError::Bundle(e) => e.kind().as_str(),
            ActivationError::Signature(_) => "signature",
            ActivationError::Freshness(e) => e.reason(),
            ActivationError::Digest(_) => "digest",
            ActivationError::Upstream { .. } => "upstream",
        }
    }
}

impl Gateway {
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
        let mut identity = None;
        if let Some(sg) = &b.signing {
            signing::verify(&files, &self.signing_keys, sg.required)?;
            if sg.required {
                // The persisted last-known-good boots even past its `expires` (an alert, not an
                // outage); anything fetched must be current.
                // The persisted copy is this gateway's own: at boot it is trusted for freshness
                // (a lower sequence than the persisted highest can only mean its newer copy was
                // not written), so that a restart with the sources down always serves.
                let at_boot = source == CACHE_SOURCE;
                let highest = if at_boot { 0 } else { self.highest_sequence.load(Ordering::Relaxed) };
                identity = Some(signing::check_identity(&files, &b.name, highest, unix_now(), at_boot)?);
            }
        }
        let bundle = Bundle::from_files(files)?;
        let active = self.activate_identified(&bundle, digest, source, etag, Some(figures), identity)?;
        if let Some(sequence) = active.info.identity.as_ref().map(|i| i.sequence) {
            if self.highest_sequence.fetch_max(sequence, Ordering::Relaxed) < sequence {
                if let Err(e) = cache::store_sequence(b, sequence) {
                    tracing::error!(error = %e, "the highest signed sequence is not persisted; a restart would forget it");
                    self.metrics.activation_failures.with_label_values(&["persist"]).inc();
                    self.record_error(format!("cannot persist the signed sequence: {e}"));
                }
            }
        }
        Ok(active)
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
        self.activate_identified(bundle, digest, source, etag, figures, None)
    }

    /// [`Gateway::activate`] of a bundle whose signed identity was checked.
    fn activate_identified(
        &self,
        bundle: &Bundle,
        digest: String,
        source: String,
        etag: Option<String>,
        figures: Option<Figures>,
        identity: Option<signing::Identity>,
    ) -> Result<Arc<Active>, ActivationError> {
        let mut snapshot = Snapshot::compile(bundle)?;
        // Same trust settings as the serving bundle: keep its verified tokens.
        let previous = self.active.load();
        let kept_tokens = match (snapshot.jwt.as_mut(), previous.as_ref().and_then(|a| a.snapshot.jwt.as_ref())) {
            (Some(new), Some(old)) => new.inherit_cache(old),
            _ => false,
        };
        drop(previous);
        let base = &self.config.base_dir;
        let pools =
            snapshot.upstreams.iter().map(|u| Pool::build(u, base).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
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
            identity,
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

/// The `source` of a bundle booted from the persisted copy.
pub const CACHE_SOURCE: &str = "cache";

/// Activates the persisted last-known-good bundle, verified as if it were fetched, before any
/// network call. A missing, corrupt or refused cache is logged and skipped, never fatal.
pub fn boot_from_cache(gateway: &Gateway) {
    let Some(dir) = &gateway.config.bundle.cache_dir else { return };
    match cache::load(dir, &gateway.config.bundle.name) {
        Ok(None) => tracing::info!(cache_dir = %dir.display(), "no persisted bundle; waiting for a source"),
        Err(e) => {
            tracing::warn!(error = %e, "persisted bundle unusable; skipping it");
            gateway.metrics.activation_failures.with_label_values(&["cache"]).inc();
            gateway.record_error(format!("cache: {e}"));
        }
        Ok(Some(cached)) => match gateway.activate_bytes(
            &cached.bytes,
            Some(&cached.meta.digest),
            CACHE_SOURCE.into(),
            cached.meta.etag.clone().or_else(|| Some(format!("\"{}\"", cached.meta.digest))),
        ) {
            Ok(active) => {
                tracing::info!(bundle.revision = %active.info.revision, "serving the persisted last-known-good bundle");
                gateway.last_confirmed_ms.store(cached.meta.fetched_at * 1000, Ordering::Relaxed);
                if let Ok(mut s) = gateway.sync.lock() {
                    s.source = Some("cache".into());
                }
            }
            Err(e) => gateway.record_failure(&e),
        },
    }
}
