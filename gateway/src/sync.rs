//! The bundle sync transport: a background service that keeps the gateway current without ever
//! making serving depend on the control plane.
//!
//! It polls (ETag, `If-None-Match`, long poll, jitter, backoff, size limit, falling over between
//! sources) and hands each downloaded bundle to a callback ([`OnBundle`]; the gateway's is
//! [`crate::activation::Activator::activate_download`]), knowing nothing of activation. Any
//! failure leaves the last-known-good snapshot serving; the ETag it sends is the active
//! bundle's, which advances only when a new bundle has activated, so after an outage a fleet
//! re-downloads nothing it already has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rand::Rng;
use tokio::sync::mpsc;

use crate::active::Gateway;
use crate::clock::{rfc3339, unix_now, unix_now_ms};
use crate::config::Poll;
use crate::metrics::Metrics;

/// What a downloaded bundle is handed to: `(url, body, etag)`; an error says why it was not
/// taken. Called on a blocking thread.
pub type OnBundle = Arc<dyn Fn(&str, Arc<Vec<u8>>, String) -> Result<(), String> + Send + Sync>;

/// Lowers the calling thread (alone: Linux keeps a niceness per thread) by `nice`, to 19 at
/// most. A thread cannot raise itself back without privileges, so it is called only on
/// threads that end with their work.
fn background_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), (now + nice).min(19)) {
        tracing::debug!(error = %e, "activation thread keeps its priority");
    }
}

/// Runs `work` on a thread of its own, `nice` nicer than the caller's, and waits for its answer
/// without blocking the runtime.
async fn in_background<T: Send + 'static>(
    nice: i32,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("activation".into()).spawn(move || {
        background_priority(nice);
        let _ = tx.send(work());
    });
    match spawned {
        Ok(_) => rx.await.unwrap_or_else(|_| Err("activation panicked".into())),
        Err(e) => Err(format!("cannot start the activation thread: {e}")),
    }
}

/// `x-gateway-instance`: the instance name sent with every bundle request.
pub const INSTANCE_HEADER: &str = "x-gateway-instance";

/// How one poll of one source ended.
#[derive(Debug)]
enum Polled {
    Updated,
    /// `held`: the source applied the long poll (`Preference-Applied: wait=N`), even if it
    /// answered early (a source shutting down releases its held polls at once).
    NotModified {
        held: bool,
    },
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
    /// A redirect the gateway does not follow: any, unless `bundle.follow_redirects` says so;
    /// from https to http, never.
    #[error("{url}: {message}")]
    Redirect { url: String, message: String },
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
    /// `bundle.max_staleness`: past it the gateway alerts (the console colours staleness by it).
    pub max_staleness_seconds: u64,
    /// Unix seconds the active bundle activated at.
    pub activated_at: u64,
    /// The same in Unix milliseconds.
    pub activated_at_ms: u64,
    /// How the last activation attempt from a source ended (a canary's first health signal).
    pub activation: Option<crate::revision_health::ActivationAttempt>,
    /// What the active bundle has served since it activated.
    pub served: crate::revision_health::ServedReport,
}

pub struct Syncer {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    on_bundle: OnBundle,
    /// `bundle.name`, `bundle.max_size`.
    name: String,
    max_size: u64,
    poll: Poll,
    client: reqwest::Client,
    reports: Arc<Reports>,
}

/// What a status report is made of and where it goes: shared by the poll loop (a report after
/// each round) and [`ReportTimer`] (one every `report_interval`, whatever the polls do).
pub struct Reports {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    instance: String,
    sources: Vec<String>,
    /// The source the poll loop prefers now (the one that last answered).
    preferred: std::sync::atomic::AtomicUsize,
    tx: mpsc::Sender<(String, Report)>,
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

/// The longest `Retry-After` honoured: a source cannot park a gateway for longer.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds (`120`) or an HTTP-date (`Wed, 02 Dec 2026 20:00:00 GMT`,
/// RFC 9110 section 10.2.3), as a wait from `now` (Unix seconds); capped at an hour, a date in
/// the past is no wait.
fn parse_retry_after(v: Option<&reqwest::header::HeaderValue>, now: u64) -> Option<Duration> {
    let v = v?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = u64::try_from(at.unix_timestamp()).unwrap_or(0).saturating_sub(now);
    Some(Duration::from_secs(wait).min(RETRY_AFTER_MAX))
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

/// How bundle fetches treat redirects: not at all (the default: a source that moved is a
/// configuration to change, not something to follow silently), or, with
/// `bundle.follow_redirects`, up to 3 hops, none of them from https to http.
fn redirect_policy(follow: bool) -> reqwest::redirect::Policy {
    if !follow {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(|attempt| match follow_redirect(attempt.previous(), attempt.url()) {
        Ok(()) => attempt.follow(),
        Err(why) => attempt.error(why),
    })
}

/// Whether a redirect to `next` is followed after visiting `previous` (the first URL included):
/// at most 3 redirects, and once a fetch is on https it stays on https.
fn follow_redirect(previous: &[reqwest::Url], next: &reqwest::Url) -> Result<(), String> {
    if previous.iter().any(|p| p.scheme() == "https") && next.scheme() != "https" {
        return Err(format!("a redirect from https to {next} is never followed"));
    }
    if previous.len() > 3 {
        return Err("more than 3 redirects".into());
    }
    Ok(())
}

impl Syncer {
    pub fn new(
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
        on_bundle: OnBundle,
        bundle: &crate::config::BundleConfig,
        poll: Poll,
        instance: String,
    ) -> Result<(Syncer, StatusReporter), reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(poll.timeout)
            .redirect(redirect_policy(poll.follow_redirects))
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // One slot: a report that cannot be queued at once is dropped, never waited for.
        let (tx, rx) = mpsc::channel(1);
        let reporter =
            StatusReporter { rx: tokio::sync::Mutex::new(rx), client: client.clone(), token: poll.token.clone() };
        let (name, max_size) = (bundle.name.clone(), bundle.max_size);
        let reports = Arc::new(Reports {
            gateway: gateway.clone(),
            metrics: metrics.clone(),
            instance,
            sources: poll.sources.clone(),
            preferred: std::sync::atomic::AtomicUsize::new(0),
            tx,
        });
        Ok((Syncer { gateway, metrics, on_bundle, name, max_size, poll, client, reports }, reporter))
    }

    /// The report timer, unless `bundle.report_interval` is 0.
    pub fn report_timer(&self) -> Option<ReportTimer> {
        let every = self.poll.report_interval;
        (!every.is_zero()).then(|| ReportTimer { reports: self.reports.clone(), every })
    }

    /// One poll of one source: a GET, then (on 200) the download, handed to [`OnBundle`].
    /// `hold` asks the source to hold the request (long poll); it is off right after a failure
    /// so that a recovered source confirms at once.
    async fn fetch(&self, source: &str, hold: bool) -> Result<Polled, SyncError> {
        let url = bundle_url(source, &self.name);
        let resp = self.send(&url, hold).await?;
        match resp.status().as_u16() {
            304 => {
                self.confirm(source);
                let applied = resp.headers().get("preference-applied").and_then(|v| v.to_str().ok());
                let held = applied.is_some_and(|v| v.to_ascii_lowercase().contains("wait="));
                return Ok(Polled::NotModified { held });
            }
            200 => {}
            status @ 300..=399 => {
                let to = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("-");
                return Err(self.redirect_refused(
                    &url,
                    format!("HTTP {status} to {to}: not followed (`bundle.follow_redirects` is off)"),
                ));
            }
            status => {
                let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER), unix_now());
                return Err(SyncError::Status { url, status, retry_after });
            }
        }
        let etag = resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = self.download(&url, resp).await?;
        // The ETag to send from now on: the source's, or the body's digest as `bundlectl` makes it.
        let etag = etag.unwrap_or_else(|| format!("\"{}\"", policy_bundles::digest(&body)));
        self.hand_over(&url, body, etag).await?;
        self.confirm(source);
        Ok(Polled::Updated)
    }

    /// Sends the GET with the ETag of the active bundle (if any), the long-poll preference and
    /// the token; the headers must arrive within the long-poll wait plus `timeout`.
    async fn send(&self, url: &str, hold: bool) -> Result<reqwest::Response, SyncError> {
        let terr = |m: String| SyncError::Transport { url: url.to_owned(), message: m };
        let etag = self.gateway.etag();
        // The instance, so that a control plane staging a rollout answers with this gateway's cohort.
        let mut req = self.client.get(url).header(INSTANCE_HEADER, self.reports.instance.as_str());
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
        match tokio::time::timeout(wait + self.poll.timeout, req.send()).await {
            Err(_) => Err(terr(format!("no response within {:?}", wait + self.poll.timeout))),
            Ok(Err(e)) if e.is_redirect() => Err(self.redirect_refused(url, causes(&e))),
            Ok(Err(e)) => Err(terr(format!("request failed: {}", causes(&e)))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// A redirect not followed: counted as `gateway_bundle_activation_failures_total{reason="redirect"}`.
    fn redirect_refused(&self, url: &str, message: String) -> SyncError {
        self.metrics.activation_failures.with_label_values(&["redirect"]).inc();
        SyncError::Redirect { url: url.to_owned(), message }
    }

    /// Reads the body of a 200 within `max_size`, and within `timeout` of the headers however
    /// slowly it trickles.
    async fn download(&self, url: &str, mut resp: reqwest::Response) -> Result<Vec<u8>, SyncError> {
        let terr = |m: String| SyncError::Transport { url: url.to_owned(), message: m };
        let limit = self.max_size;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(SyncError::TooLarge { url: url.to_owned(), limit });
        }
        let deadline = Instant::now() + self.poll.timeout;
        // Sized once from Content-Length (already checked against the limit): a large bundle is
        // not copied through doubling buffers.
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit) as usize);
        loop {
            let chunk = tokio::time::timeout_at(deadline.into(), resp.chunk())
                .await
                .map_err(|_| terr(format!("body not received within {:?}", self.poll.timeout)))?
                .map_err(|e| terr(format!("body read failed: {}", causes(&e))))?;
            let Some(chunk) = chunk else { return Ok(body) };
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(SyncError::TooLarge { url: url.to_owned(), limit });
            }
            body.extend_from_slice(&chunk);
        }
    }

    /// Hands a download to [`OnBundle`] on a thread of its own, `activation_nice` nicer: request
    /// workers never wait on what it does, and on a busy machine they get the CPU first.
    async fn hand_over(&self, url: &str, body: Vec<u8>, etag: String) -> Result<(), SyncError> {
        let (on_bundle, src) = (self.on_bundle.clone(), url.to_owned());
        let body = Arc::new(body);
        in_background(self.poll.activation_nice, move || on_bundle(&src, body, etag))
            .await
            .map_err(|message| SyncError::Activation { url: url.to_owned(), message })
    }

    fn confirm(&self, source: &str) {
        self.gateway.sync.confirm(source, unix_now_ms());
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
                        self.gateway.sync.record_error(e.to_string());
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(SyncError::Transport { url: String::new(), message: "no sources".into() }))
    }
}

impl Reports {
    /// Queues a report of the active bundle for the preferred source (dropped, and counted,
    /// when one is still queued: a report is never waited for).
    fn send(&self) {
        let i = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        let Some(source) = self.sources.get(i.min(self.sources.len().saturating_sub(1))) else { return };
        if source.ends_with(".tar.gz") || source.contains("/v1/bundles/") {
            return;
        }
        let Some(active) = self.gateway.active() else { return };
        let sync = &self.gateway.sync;
        let report = Report {
            instance: self.instance.clone(),
            bundle: active.info.name.clone(),
            revision: active.info.revision.clone(),
            digest: active.info.digest.clone(),
            last_sync: match sync.last_confirmed_ms() {
                0 => None,
                ms => Some(rfc3339(ms / 1000)),
            },
            staleness_seconds: sync.age_seconds() as u64,
            max_staleness_seconds: sync.max_staleness().as_secs(),
            activated_at: active.info.activated_at,
            activated_at_ms: active.info.activated_at_ms,
            activation: sync.last_activation(),
            served: active.served.report(),
        };
        if self.tx.try_send((format!("{source}/v1/status"), report)).is_err() {
            self.metrics.status_reports_dropped.inc();
        }
    }
}

/// Status reports every `bundle.report_interval` (±10%), so that a control plane judging a
/// canary hears from it whether or not its long poll is held.
pub struct ReportTimer {
    reports: Arc<Reports>,
    every: Duration,
}

#[async_trait]
impl BackgroundService for ReportTimer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let wait = jitter(self.every.mul_f64(0.9), self.every.mul_f64(1.1));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => self.reports.send(),
            }
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
            let before = preferred;
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.poll_round(&mut preferred, failures == 0) => r,
            };
            let metrics = &self.metrics;
            let delay = match &result {
                Ok(polled) => {
                    failures = 0;
                    let label = match polled {
                        Polled::Updated => "updated",
                        Polled::NotModified { .. } => "not_modified",
                    };
                    metrics.sync.with_label_values(&[label]).inc();
                    // A long poll that was held by the source is answered by polling again at
                    // once (with a little jitter); anything else waits the configured interval.
                    let long_polling = !self.poll.long_poll.is_zero();
                    // Held: by the source's word, or by the time it took (a source that does not
                    // say so).
                    let held = long_polling
                        && (matches!(polled, Polled::NotModified { held: true })
                            || started.elapsed() >= Duration::from_millis(500));
                    // A failover: the next source answered at once, unheld. Long-poll it now
                    // rather than after a poll interval, or a publish waits that long.
                    let failed_over = long_polling && preferred != before;
                    if held || failed_over || matches!(polled, Polled::Updated) && long_polling {
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
            self.reports.preferred.store(preferred, std::sync::atomic::Ordering::Relaxed);
            self.reports.send();
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
    use crate::config::ACTIVATION_NICE;

    /// Niceness is per thread on Linux: an activation thread's may not be the test's.
    fn own_niceness() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
    }

    #[tokio::test]
    async fn an_activation_runs_below_the_request_workers_priority() {
        let ours = own_niceness();
        let theirs = in_background(ACTIVATION_NICE, || Ok(own_niceness())).await.expect("ran");
        assert_eq!(theirs, (ours + ACTIVATION_NICE).min(19), "the activation thread's niceness");
        assert_eq!(own_niceness(), ours, "the caller's niceness is its own");
        let same = in_background(0, || Ok(own_niceness())).await.expect("ran");
        assert_eq!(same, ours, "activation_nice: 0 leaves the priority alone");
        let e = in_background::<()>(ACTIVATION_NICE, || panic!("compile")).await.expect_err("a panic is an error");
        assert!(e.contains("panicked"), "{e}");
    }

    #[test]
    fn redirects_never_leave_https_and_stop_after_three() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(follow_redirect(&[u("http://a/x")], &u("http://b/y")).is_ok());
        assert!(follow_redirect(&[u("http://a/x")], &u("https://b/y")).is_ok());
        assert!(follow_redirect(&[u("https://a/x")], &u("https://b/y")).is_ok());
        let e = follow_redirect(&[u("https://a/x")], &u("http://b/y")).unwrap_err();
        assert!(e.contains("from https"), "{e}");
        // Back down after an upgrade: still refused.
        assert!(follow_redirect(&[u("http://a/x"), u("https://b/y")], &u("http://c/z")).is_err());
        let four: Vec<_> = (0..4).map(|i| u(&format!("http://h{i}/"))).collect();
        assert!(follow_redirect(&four[..3], &u("http://h/")).is_ok());
        assert!(follow_redirect(&four, &u("http://h/")).is_err());
    }

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
    fn honours_retry_after_in_seconds_and_as_an_http_date() {
        let h = |v: &str| reqwest::header::HeaderValue::from_str(v).expect("header value");
        // Wed, 02 Dec 2026 20:00:00 GMT
        let now = 1_796_241_600;
        assert_eq!(parse_retry_after(Some(&h("120")), now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(Some(&h("Wed, 02 Dec 2026 20:01:30 GMT")), now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after(Some(&h("Wed, 02 Dec 2026 19:00:00 GMT")), now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(Some(&h("soon")), now), None);
        assert_eq!(parse_retry_after(None, now), None);
    }

    #[test]
    fn a_hostile_source_cannot_park_a_gateway_for_more_than_an_hour_with_retry_after() {
        let h = |v: &str| reqwest::header::HeaderValue::from_str(v).expect("header value");
        let now = 1_796_241_600;
        assert_eq!(parse_retry_after(Some(&h("Thu, 02 Dec 2027 20:00:00 GMT")), now), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after(Some(&h("Fri, 31 Dec 9999 23:59:59 GMT")), now), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after(Some(&h("99999999")), now), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after(Some(&h("18446744073709551615")), now), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn reads_bundle_urls() {
        assert_eq!(bundle_url("http://cp:8181", "main"), "http://cp:8181/v1/bundles/main");
        assert_eq!(bundle_url("http://cdn/b/main.tar.gz", "main"), "http://cdn/b/main.tar.gz");
    }
}
