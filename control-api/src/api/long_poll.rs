//! `GET /v1/bundles/{name}`: the tarball its cohort is served, 304 on a matching
//! `If-None-Match`, and the long poll (`Prefer: wait=N`) that answers as soon as it changes.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{speaks_for, ApiError, ReadBundle, BUNDLE_REVISION, INSTANCE, PREFER, PREFERENCE_APPLIED};
use crate::app_state::{AppState, Shared};
use crate::long_poll_hub::ActiveBundle;

/// `GET /v1/bundles/{name}`: the active tarball, 304 on a matching `If-None-Match`, long poll
/// with `Prefer: wait=N`.
pub(super) async fn get_bundle(
    State(state): State<AppState>,
    ReadBundle { who, name }: ReadBundle,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = &state.0;
    // Cut off from the store, what this replica holds may not be the latest: send the gateway on.
    if let Some(why) = s.store_watch.cut_off() {
        return Err(ApiError::Unavailable(why));
    }
    let instance = headers.get(INSTANCE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let instance = speaks_for(&who, instance)?;
    let canary = match (&s.config.rollout, &instance) {
        (Some(r), Some(i)) => r.is_canary(&name, i),
        _ => false,
    };
    let (entry, current) = s.hub.current(&name).await?;
    let Some(heads) = current else {
        return Err(ApiError::NotFound(format!("no bundle named `{name}` has been published")));
    };
    let active = heads.for_cohort(canary).clone();
    if !if_none_match(&headers, &active.digest) {
        return Ok(bundle_response(s, &active, None));
    }
    let wait = match prefer_wait(&headers) {
        Some(n) if n > 0 => Duration::from_secs(n).min(s.config.max_long_poll),
        _ => return Ok(not_modified(s, &active, None)),
    };
    let applied = HeaderValue::try_from(format!("wait={}", wait.as_secs())).ok();
    // A held request keeps only what it needs: thousands of them may be waiting.
    drop(headers);

    // Subscribe, then compare: a change between `current` and here is seen by `borrow_and_update`.
    let mut rx = entry.subscribe();
    let mut shutdown = s.hub.shutdown_signal();
    let mut cut_off = s.store_watch.subscribe();
    let held = active.digest.clone();
    let Some(_waiting) = Waiting::new(s, &who.name) else {
        // Past the token's share of held long polls: answered now, held nowhere.
        s.metrics.limited("long_polls");
        return Ok(not_modified(s, &active, None));
    };
    let changed = async {
        loop {
            let now = rx.borrow_and_update().as_ref().map(|h| h.for_cohort(canary).clone());
            if let Some(now) = now.filter(|a| a.digest != held) {
                return Some(now);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(wait, changed) => Held::Answered(r.ok().flatten()),
        _ = shutdown.wait_for(|down| *down) => Held::Answered(None),
        why = cut_off.wait_for(Option::is_some) => Held::CutOff(why.ok().and_then(|w| w.clone())),
    };
    Ok(match outcome {
        Held::Answered(Some(newer)) => bundle_response(s, &newer, applied),
        Held::Answered(None) => not_modified(s, &active, applied),
        Held::CutOff(why) => {
            return Err(ApiError::Unavailable(why.unwrap_or_else(|| "cut off from the store".into())));
        }
    })
}

/// How a held long poll ended.
enum Held {
    /// A newer revision, or none (the wait or the server ended).
    Answered(Option<std::sync::Arc<crate::long_poll_hub::ActiveBundle>>),
    /// This replica was cut off from its store: the gateway should ask another source.
    CutOff(Option<String>),
}

/// Counts a held long poll, in all and for its token, for as long as it is held (also when the
/// client goes away).
struct Waiting<'a>(&'a Shared, String);

impl<'a> Waiting<'a> {
    /// `None` when the token already has `max_long_polls_per_token` held.
    fn new(s: &'a Shared, token: &str) -> Option<Self> {
        let mut held = s.long_polls.lock().ok()?;
        let n = held.entry(token.to_owned()).or_default();
        if *n >= s.config.max_long_polls_per_token {
            return None;
        }
        *n += 1;
        drop(held);
        s.metrics.waiters.inc();
        Some(Waiting(s, token.to_owned()))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.metrics.waiters.dec();
        if let Ok(mut held) = self.0.long_polls.lock() {
            if let Some(n) = held.get_mut(&self.1) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&self.1);
                }
            }
        }
    }
}

fn common_headers(r: &mut Response, active: &ActiveBundle, applied: Option<HeaderValue>) {
    let h = r.headers_mut();
    h.insert(ETAG, active.etag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::try_from(active.revision.as_str()) {
        h.insert(BUNDLE_REVISION, v);
    }
    if let Some(v) = applied {
        h.insert(PREFERENCE_APPLIED, v);
    }
}

fn bundle_response(s: &Shared, active: &ActiveBundle, applied: Option<HeaderValue>) -> Response {
    s.metrics.download(200);
    let mut r = (StatusCode::OK, [(CONTENT_TYPE, HeaderValue::from_static("application/gzip"))], active.bytes.clone())
        .into_response();
    common_headers(&mut r, active, applied);
    r
}

fn not_modified(s: &Shared, active: &ActiveBundle, applied: Option<HeaderValue>) -> Response {
    s.metrics.download(304);
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    common_headers(&mut r, active, applied);
    r
}

/// Whether `If-None-Match` matches the digest: `*`, or any listed tag, weak or strong (RFC 9110
/// uses the weak comparison for `If-None-Match`).
pub fn if_none_match(headers: &HeaderMap, digest: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|tag| {
        let tag = tag.trim();
        if tag == "*" {
            return true;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(digest)
    })
}

/// The `wait` preference (RFC 7240) in seconds, from any `Prefer` header: `Prefer: wait=30`.
pub fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers.get_all(PREFER).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(|pref| {
        let token = pref.split(';').next()?.trim();
        let (k, v) = token.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("wait") {
            return None;
        }
        v.trim().trim_matches('"').parse().ok()
    })
}
