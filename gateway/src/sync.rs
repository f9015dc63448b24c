//! The bundle sync loop: a background service that keeps the gateway current without ever
//! making serving depend on the control plane.
//!
//! Transport (ETag, `If-None-Match`, long poll, jitter, backoff, size limit, falling over between
//! sources) is kept apart from activation, which is verify → compile → swap → persist. Any
//! failure at any step leaves the last-known-good snapshot serving; the ETag sent to sources
//! advances only when a new bundle has activated, so after an outage a fleet re-downloads
//! nothing it already has.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rand::Rng;
use tokio::sync::mpsc;

use crate::cache::{self, CacheMeta};
use crate::config::Poll;
use crate::state::{unix_now, unix_now_ms, Gateway};

/// `x-gateway-instance`: the instance name sent with every bundle request.
pub const INSTANCE_HEADER: &str = "x-gateway-instance";

/// How one poll of one source ended.
#[derive(Debug)]
enum Polled {
    Updated,
    NotModified,
}

/// Why a poll failed. Every failure keeps last-known-good serving.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16, retry_after: Option<Duration> },
    #[error("{url}: bundle is larger than max_size ({limit} bytes)")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: {message}")]
    Activation { url: String, message: String },
}

impl SyncError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A status report for the control plane (`POST /v1/status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub instance: String,
    pub bundle: String,
    pub revision: String,
    pub digest: String,
    /// RFC 3339, UTC; absent when the gateway never confirmed its bundle.
    pub last_sync: Option<String>,
    pub staleness_seconds: u64,
    /// Unix seconds the active bundle activated at.
    pub activated_at: u64,
    /// How the last activation attempt from a source ended (a canary's first health signal).
    pub activation: Option<crate::served::ActivationAttempt>,
    /// What the active bundle has served since it activated.
    pub served: crate::served::ServedReport,
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-25T12:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

pub struct Syncer {
    gateway: Arc<Gateway>,
    poll: Poll,
    client: reqwest::Client,
    reports: mpsc::Sender<(String, Report)>,
    instance: String,
}

/// The bundle URL for a configured source: a control plane base URL, or a direct file URL.
pub fn bundle_url(source: &str, name: &str) -> String {
    if source.ends_with(".tar.gz") || source.contains("/v1/bundles/") {
        source.to_owned()
    } else {
        format!("{source}/v1/bundles/{name}")
    }
}

fn jitter(min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    rand::thread_rng().gen_range(min..=max)
}

/// Exponential backoff with jitter: the n-th consecutive failure waits about `base * 2^(n-1)`,
/// capped at `cap`, uniformly in its upper half so that a fleet never retries in lock step.
pub fn backoff(base: Duration, cap: Duration, failures: u32) -> Duration {
    let base = base.max(Duration::from_millis(100));
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(cap.max(base));
    jitter(exp / 2, exp)
}

fn parse_retry_after(v: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let secs: u64 = v?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// An error with its chain of causes (`error sending request: ... : connection refused`), so
/// that `/status` tells a refused connection from a DNS failure or a TLS mismatch.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = c.source();
    }
    out
}

/// An ETag that names a SHA-256 digest (`"<64 hex>"`), as the control plane sends.
fn etag_digest(etag: &str) -> Option<&str> {
    let inner = etag.trim().trim_start_matches("W/").trim_matches('"');
    (inner.len() == 64 && inner.bytes().all(|b| b.is_ascii_hexdigit())).then_some(inner)
}

impl Syncer {
    pub fn new(gateway: Arc<Gateway>, poll: Poll, instance: String) -> anyhow::Result<(Syncer, StatusReporter)> {
        let client = reqwest::Client::builder()
            .connect_timeout(poll.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // One slot: a report that cannot be queued at once is dropped, never waited for.
        let (tx, rx) = mpsc::channel(1);
        let reporter =
            StatusReporter { rx: tokio::sync::Mutex::new(rx), client: client.clone(), token: poll.token.clone() };
        Ok((Syncer { gateway, poll, client, reports: tx, instance }, reporter))
    }

    /// One GET of one source. `hold` asks the source to hold the request (long poll); it is
    /// off right after a failure so that a recovered source confirms at once.
    async fn fetch(&self, source: &str, hold: bool) -> Result<Polled, SyncError> {
        let gw = &self.gateway;
        let url = bundle_url(source, &gw.config.bundle.name);
        let terr = |m: String| SyncError::Transport { url: url.clone(), message: m };
        let etag = gw.sync.lock().ok().and_then(|s| s.etag.clone()).filter(|_| gw.active.load().is_some());
        // The instance, so that a control plane staging a rollout answers with this gateway's cohort.
        let mut req = self.client.get(&url).header(INSTANCE_HEADER, self.instance.as_str());
        let mut wait = Duration::ZERO;
        if let Some(tag) = &etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag.as_str());
            if hold && !self.poll.long_poll.is_zero() {
                wait = self.poll.long_poll;
                req = req.header("prefer", format!("wait={}", wait.as_secs().max(1)));
            }
        }
        if let Some(t) = &self.poll.token {
            req = req.bearer_auth(t);
        }
        // Headers must arrive within the long-poll wait plus `timeout`.
        let resp = tokio::time::timeout(wait + self.poll.timeout, req.send())
            .await
            .map_err(|_| terr(format!("no response within {:?}", wait + self.poll.timeout)))?
            .map_err(|e| terr(format!("request failed: {}", causes(&e))))?;
        let status = resp.status().as_u16();
        match status {
            304 => {
                self.confirm(source);
                return Ok(Polled::NotModified);
            }
            200 => {}
            _ => {
                let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
                return Err(SyncError::Status { url, status, retry_after });
            }
        }
        let limit = gw.config.bundle.max_size;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(SyncError::TooLarge { url, limit });
        }
        let new_etag = resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // The body must arrive within `timeout` of the headers, however slowly it trickles.
        let body_deadline = Instant::now() + self.poll.timeout;
        // Sized once from Content-Length (already checked against the limit): a large bundle is
        // not copied through doubling buffers.
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit) as usize);
        let mut resp = resp;
        loop {
            let chunk = tokio::time::timeout_at(body_deadline.into(), resp.chunk())
                .await
                .map_err(|_| terr(format!("body not received within {:?}", self.poll.timeout)))?
                .map_err(|e| terr(format!("body read failed: {}", causes(&e))))?;
            let Some(chunk) = chunk else { break };
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(SyncError::TooLarge { url, limit });
            }
            body.extend_from_slice(&chunk);
        }
        let expected = new_etag.as_deref().and_then(etag_digest).map(str::to_owned);
        let gw2 = gw.clone();
        let src = url.clone();
        let body = Arc::new(body);
        let bytes = body.clone();
        // Verify and compile on a blocking thread: request workers never stall on it.
        // The ETag to send from now on: the source's, or the body's digest as `bundlectl` makes it.
        let etag = new_etag.unwrap_or_else(|| format!("\"{}\"", policy_bundles::digest(&body)));
        let tag = etag.clone();
        let activated =
            tokio::task::spawn_blocking(move || gw2.activate_bytes(&bytes, expected.as_deref(), src, Some(tag)))
                .await
                .map_err(|e| SyncError::Activation {
                    url: url.clone(),
                    message: format!("activation panicked: {e}"),
                })?;
        let active = match activated {
            Ok(a) => {
                gw.record_attempt(a.info.digest.clone(), Ok(()));
                a
            }
            Err(e) => {
                gw.record_attempt(policy_bundles::digest(&body), Err(&e));
                gw.record_failure(&e);
                return Err(SyncError::Activation { url, message: e.to_string() });
            }
        };
        self.confirm(source);
        if let Some(dir) = gw.config.bundle.cache_dir.clone() {
            let meta = CacheMeta {
                name: gw.config.bundle.name.clone(),
                digest: active.info.digest.clone(),
                etag: Some(etag),
                revision: active.info.revision.clone(),
                source: url.clone(),
                fetched_at: unix_now(),
            };
            let persisted = tokio::task::spawn_blocking(move || cache::persist(&dir, &body, &meta)).await;
            match persisted {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.persist_failed(format!("cannot persist the bundle to cache_dir: {e}")),
                Err(e) => self.persist_failed(format!("persist task failed: {e}")),
            }
        }
        Ok(Polled::Updated)
    }

    fn persist_failed(&self, message: String) {
        tracing::error!(error = %message, "last-known-good not persisted; serving continues");
        self.gateway.metrics.activation_failures.with_label_values(&["persist"]).inc();
        self.gateway.record_error(message);
    }

    fn confirm(&self, source: &str) {
        self.gateway.last_confirmed_ms.store(unix_now_ms(), Ordering::Relaxed);
        if let Ok(mut s) = self.gateway.sync.lock() {
            s.source = Some(source.to_owned());
        }
    }

    /// One round: each source in order, starting with the one that answered last.
    async fn poll_round(&self, preferred: &mut usize, hold: bool) -> Result<Polled, SyncError> {
        let n = self.poll.sources.len();
        let mut last = None;
        for i in 0..n {
            let ix = (*preferred + i) % n;
            match self.fetch(&self.poll.sources[ix], hold && i == 0).await {
                Ok(p) => {
                    *preferred = ix;
                    return Ok(p);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bundle sync failed");
                    if !matches!(e, SyncError::Activation { .. }) {
                        self.gateway.record_error(e.to_string());
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(SyncError::Transport { url: String::new(), message: "no sources".into() }))
    }

    fn report(&self, source: &str) {
        if source.ends_with(".tar.gz") || source.contains("/v1/bundles/") {
            return;
        }
        let Some(active) = self.gateway.active.load_full() else { return };
        let report = Report {
            instance: self.instance.clone(),
            bundle: active.info.name.clone(),
            revision: active.info.revision.clone(),
            digest: active.info.digest.clone(),
            last_sync: match self.gateway.last_confirmed_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(rfc3339(ms / 1000)),
            },
            staleness_seconds: self.gateway.age_seconds() as u64,
            activated_at: active.info.activated_at,
            activation: self.gateway.last_activation.lock().ok().and_then(|a| a.clone()),
            served: active.served.report(),
        };
        if self.reports.try_send((format!("{source}/v1/status"), report)).is_err() {
            self.gateway.metrics.status_reports_dropped.inc();
        }
    }
}

#[async_trait]
impl BackgroundService for Syncer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut preferred = 0usize;
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.poll_round(&mut preferred, failures == 0) => r,
            };
            let metrics = &self.gateway.metrics;
            let delay = match &result {
                Ok(polled) => {
                    failures = 0;
                    let label = match polled {
                        Polled::Updated => "updated",
                        Polled::NotModified => "not_modified",
                    };
                    metrics.sync.with_label_values(&[label]).inc();
                    // A long poll that was held by the source is answered by polling again at
                    // once (with a little jitter); anything else waits the configured interval.
                    let held = !self.poll.long_poll.is_zero() && started.elapsed() >= Duration::from_millis(500);
                    if held || matches!(polled, Polled::Updated) && !self.poll.long_poll.is_zero() {
                        jitter(Duration::ZERO, Duration::from_millis(100))
                    } else {
                        jitter(self.poll.min_delay, self.poll.max_delay)
                    }
                }
                Err(e) => {
                    failures += 1;
                    metrics.sync.with_label_values(&["error"]).inc();
                    let b = backoff(self.poll.min_delay, self.poll.backoff_max, failures);
                    e.retry_after().map_or(b, |ra| ra.max(b))
                }
            };
            self.report(&self.poll.sources[preferred.min(self.poll.sources.len().saturating_sub(1))]);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Sends status reports to the control plane, one at a time, each bounded in time.
pub struct StatusReporter {
    rx: tokio::sync::Mutex<mpsc::Receiver<(String, Report)>>,
    client: reqwest::Client,
    token: Option<String>,
}

#[async_trait]
impl BackgroundService for StatusReporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        loop {
            let next = tokio::select! {
                _ = shutdown.changed() => return,
                n = rx.recv() => n,
            };
            let Some((url, report)) = next else { return };
            let Ok(body) = serde_json::to_vec(&report) else { continue };
            let mut req = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .timeout(Duration::from_secs(2));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Err(e) = req.send().await {
                tracing::debug!(error = %e, "status report not delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for n in 1..30 {
            let b = backoff(base, cap, n);
            let full = base.saturating_mul(1 << (n - 1).min(16)).min(cap);
            assert!(b >= full / 2 && b <= full, "failure {n}: {b:?} not in [{:?}, {full:?}]", full / 2);
        }
        assert!(backoff(base, cap, 25) >= Duration::from_secs(30));
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_609_309), "2026-11-25T12:21:49Z");
    }

    #[test]
    fn reads_digest_etags_and_bundle_urls() {
        let d = "a".repeat(64);
        assert_eq!(etag_digest(&format!("\"{d}\"")), Some(d.as_str()));
        assert_eq!(etag_digest("\"5f1-abc\""), None);
        assert_eq!(bundle_url("http://cp:8181", "main"), "http://cp:8181/v1/bundles/main");
        assert_eq!(bundle_url("http://cdn/b/main.tar.gz", "main"), "http://cdn/b/main.tar.gz");
    }
}
