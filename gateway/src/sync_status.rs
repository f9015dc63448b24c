//! What the sync loop knows of how current the active bundle is: the source that answered,
//! the ETag, the last error, the last confirmation (staleness) and the last activation
//! attempt. Shown by `/status`, `/metrics` and the status reports; never read on the request
//! path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::{unix_now, unix_now_ms};
use crate::revision_health::ActivationAttempt;

/// The sync loop's latest word, for `/status`.
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

pub struct SyncStatus {
    detail: Mutex<SyncDetail>,
    /// Unix millis of the last confirmation (a 200 or 304 from a source); 0: never.
    last_confirmed_ms: AtomicU64,
    /// The last activation attempt from a source, for status reports.
    last_activation: Mutex<Option<ActivationAttempt>>,
    started_ms: u64,
    /// A local `bundle.file`: nothing to be stale against.
    local: bool,
    max_staleness: Duration,
}

impl SyncStatus {
    pub fn new(local: bool, max_staleness: Duration) -> SyncStatus {
        SyncStatus {
            detail: Mutex::default(),
            last_confirmed_ms: AtomicU64::new(0),
            last_activation: Mutex::new(None),
            started_ms: unix_now_ms(),
            local,
            max_staleness,
        }
    }

    /// Runs `f` under the detail's lock (`None` if it was poisoned).
    pub(crate) fn with_detail<T>(&self, f: impl FnOnce(Option<&mut SyncDetail>) -> T) -> T {
        let mut guard = self.detail.lock().ok();
        f(guard.as_deref_mut())
    }

    pub fn etag(&self) -> Option<String> {
        self.detail.lock().ok().and_then(|d| d.etag.clone())
    }

    /// Records an error for `/status`.
    pub fn record_error(&self, message: String) {
        if let Ok(mut d) = self.detail.lock() {
            d.last_error = Some(message);
            d.last_error_at = Some(unix_now());
        }
    }

    /// A source (or the persisted copy, at `at_ms`) confirmed the active bundle current.
    pub fn confirm(&self, source: &str, at_ms: u64) {
        self.last_confirmed_ms.store(at_ms, Ordering::Relaxed);
        if let Ok(mut d) = self.detail.lock() {
            d.source = Some(source.to_owned());
        }
    }

    /// Unix millis of the last confirmation; 0: never.
    pub fn last_confirmed_ms(&self) -> u64 {
        self.last_confirmed_ms.load(Ordering::Relaxed)
    }

    pub fn record_attempt(&self, attempt: ActivationAttempt) {
        if let Ok(mut last) = self.last_activation.lock() {
            *last = Some(attempt);
        }
    }

    pub fn last_activation(&self) -> Option<ActivationAttempt> {
        self.last_activation.lock().ok().and_then(|a| a.clone())
    }

    /// Seconds since the active bundle was last confirmed current (a 200 or 304 from a source;
    /// at boot from cache, when the cached copy was fetched). With a local `bundle.file` there is
    /// nothing to be stale against: 0. Never confirmed: time since the gateway started.
    pub fn age_seconds(&self) -> f64 {
        if self.local {
            return 0.0;
        }
        let confirmed = self.last_confirmed_ms();
        let since = if confirmed == 0 { self.started_ms } else { confirmed };
        unix_now_ms().saturating_sub(since) as f64 / 1000.0
    }

    pub fn is_stale(&self) -> bool {
        self.age_seconds() > self.max_staleness.as_secs_f64()
    }

    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }
}
