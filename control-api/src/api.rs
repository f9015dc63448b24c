//! The HTTP API of DESIGN.md's "Control plane HTTP API" table: [`app`] builds the router, every
//! handler returns `Result<_, ApiError>`, and [`ApiError`] maps every failure to HTTP in one place.
//!
//! | call | token | answers |
//! |---|---|---|
//! | `PUT /v1/bundles/{name}` | publish | 201 new active revision, 200 identical, 400, 409, 413, 422 |
//! | `GET /v1/bundles/{name}` | read | 200 tarball + `ETag`, 304, 404; long poll with `Prefer: wait=N` |
//! | `GET /v1/bundles/{name}/revisions` | read | 200 history, newest first; 404 |
//! | `GET /v1/bundles/{name}/revisions/{revision}` | read | 200 that revision's tarball; 404 |
//! | `POST /v1/bundles/{name}/rollback` | publish | 200; 404 unknown revision |
//! | `POST /v1/status` | read | 202; 400 |
//! | `GET /v1/fleet` | read | 200 |
//! | `POST /v1/logs` | read | 200 `{accepted, stored, duplicates}`; 400, 403, 413, 415 ([`crate::logs`]) |
//! | `GET /v1/logs` | logs | 200 events, newest first; 400, 403 |
//! | `GET /healthz`, `GET /metrics` | none | 200 |
//!
//! A token limited to some bundles (`tokens[].bundles`) gets 403 for any other bundle.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, WWW_AUTHENTICATE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use policy_bundles::Limits;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::auth::{AuthError, Principal, Scope, Tokens};
use crate::config::Config;
use crate::hub::{ActiveBundle, Hub};
use crate::metrics::{Metrics, PublishResult};
use crate::store::{self, GatewayReport, NewRevision, PublishOutcome, RollbackOutcome, Store, StoreError};
use crate::validate::{self, Rejection};

/// `x-bundle-revision`: the active revision's name, beside its ETag.
pub const BUNDLE_REVISION: HeaderName = HeaderName::from_static("x-bundle-revision");
pub const PREFER: HeaderName = HeaderName::from_static("prefer");
pub const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
/// `x-gateway-instance`: the gateway asking, so that a staged rollout answers with its cohort.
pub const INSTANCE: HeaderName = HeaderName::from_static("x-gateway-instance");
/// `x-force-reason`: publish past the growth guard; the reason is kept in the history.
pub const FORCE_REASON: HeaderName = HeaderName::from_static("x-force-reason");
/// Longest force reason kept.
const MAX_REASON_LEN: usize = 512;
/// Largest JSON body of the small calls (rollback, status).
const MAX_JSON_BODY: u64 = 64 * 1024;
const MAX_NAME_LEN: usize = 128;

/// Everything the handlers share.
pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    pub metrics: Metrics,
    pub tokens: Tokens,
    /// Bounds how many bundles are validated at once (each may hold a decompressed bundle).
    pub validations: Arc<Semaphore>,
    /// Bounds how many decision-log batches are inflated and parsed at once.
    pub ingests: Arc<Semaphore>,
    /// When decision-log retention checks the count.
    pub retention: crate::logs::Retention,
    /// Long polls held per token name (`max_long_polls_per_token`).
    pub long_polls: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Bounds how many PUT bodies are read at once: each may be `max_bundle_size` in memory.
    pub uploads: Arc<Semaphore>,
}

/// The router's state: cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<AppState, prometheus::Error> {
        let permits = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(AppState(Arc::new(Shared {
            hub: Hub::new(store.clone()),
            tokens: Tokens::new(config.tokens.clone()),
            metrics: Metrics::new()?,
            uploads: Arc::new(Semaphore::new(permits * 2)),
            long_polls: std::sync::Mutex::new(std::collections::HashMap::new()),
            validations: Arc::new(Semaphore::new(permits)),
            ingests: Arc::new(Semaphore::new(permits)),
            retention: crate::logs::Retention::default(),
            config,
            store,
        })))
    }

    fn limits(&self) -> Limits {
        Limits { max_archive_bytes: self.0.config.max_bundle_size, ..Limits::default() }
    }
}

/// The router, without a socket: `main` serves it, tests call it with `oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/bundles/{name}", get(get_bundle).put(put_bundle))
        .route("/v1/bundles/{name}/revisions", get(revisions))
        .route("/v1/bundles/{name}/revisions/{revision}", get(revision_tarball))
        .route("/v1/bundles/{name}/rollback", post(rollback))
        .route("/v1/bundles/{name}/rollout", get(rollout_status))
        .route("/v1/status", post(status))
        .route("/v1/fleet", get(fleet))
        .route("/v1/logs", get(crate::logs::list).post(crate::logs::ingest))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// Every way a call fails, and its HTTP answer (`{"error": ...}`, plus `errors` for 422).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// Past the growth guard: 409 with every figure that moved.
    #[error("{}", crate::guard::message(.0))]
    Growth(Vec<crate::guard::Moved>),
    #[error("the bundle is larger than max_bundle_size ({limit} bytes)")]
    TooLarge { limit: u64 },
    /// A body past a bound other than `max_bundle_size` (the message names it).
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the bundle was refused: {0}")]
    Rejected(Rejection),
    #[error("the store is unavailable: {0}")]
    Store(#[from] StoreError),
    /// The pool that bounds validations was closed (the service is stopping).
    #[error("internal error: the validation pool is closed")]
    ValidationsClosed(#[from] tokio::sync::AcquireError),
    #[error("internal error: validation task failed: {0}")]
    ValidationTask(#[from] tokio::task::JoinError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Auth(AuthError::Forbidden { .. }) => StatusCode::FORBIDDEN,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) | ApiError::Growth(_) => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } | ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ValidationsClosed(_) | ApiError::ValidationTask(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = match &self {
            ApiError::Rejected(r) => {
                json!({ "error": format!("the bundle was refused: {}", summary(r)), "errors": r.errors() })
            }
            ApiError::Growth(moved) => json!({ "error": self.to_string(), "moved": moved }),
            other => json!({ "error": other.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn summary(r: &Rejection) -> String {
    match r {
        Rejection::Invalid(e) => {
            let n = e.0.len();
            format!("{n} problem{} found", if n == 1 { "" } else { "s" })
        }
        Rejection::TestsFailed(f) => {
            let n = f.len();
            format!("{n} of its tests failed")
        }
    }
}

/// A caller with any valid token (read or publish).
pub struct Reader(pub Principal);
/// A caller with a publish token.
pub struct Publisher(pub Principal);

fn authorize(parts: &Parts, state: &AppState, needs: Scope) -> Result<Principal, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    Ok(state.0.tokens.authorize(header, needs)?)
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(parts, state, Scope::Read).map(Reader)
    }
}

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(parts, state, Scope::Publish).map(Publisher)
    }
}

/// Whether `name` can be a bundle's: letters, digits, `-`, `_`, `.` (not first), at most 128
/// characters. Bundle names appear in URLs, the store and logs.
pub fn is_bundle_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A token limited to some bundles (`tokens[].bundles`) touches those only.
fn check_access(who: &Principal, name: &str) -> Result<(), ApiError> {
    if who.may_touch(name) {
        return Ok(());
    }
    let allowed = who.bundles.as_deref().unwrap_or_default().join(", ");
    Err(ApiError::Forbidden(format!("token `{}` may touch bundles [{allowed}] only, not `{name}`", who.name)))
}

/// 400 unless `name` is a bundle name ([`is_bundle_name`]).
fn check_name(name: &str) -> Result<(), ApiError> {
    if is_bundle_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "bundle name `{name}`: use letters, digits, `-`, `_` and `.` (not first), at most {MAX_NAME_LEN} characters"
        )))
    }
}

/// Why a body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads a request body, refusing it as soon as it is known to exceed `limit`: from its
/// `Content-Length` before reading anything, else while the bytes arrive.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, BodyError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    let capacity = declared.unwrap_or(0).min(limit).min(16 << 20);
    let mut buf = BytesMut::with_capacity(capacity as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

async fn read_json<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, MAX_JSON_BODY).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::BadRequest(format!("the JSON body is larger than {MAX_JSON_BODY} bytes")),
        BodyError::Read(m) => ApiError::BadRequest(format!("cannot read the request body: {m}")),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

#[derive(Debug, Serialize)]
struct Published {
    name: String,
    revision: String,
    digest: String,
    size: u64,
}

/// `PUT /v1/bundles/{name}`: validate, store as a new revision, activate.
async fn put_bundle(
    State(state): State<AppState>,
    Publisher(who): Publisher,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    check_access(&who, &name)?;
    let s = &state.0;
    // A slot before the body is read: bodies in memory at once are bounded, whoever sends them.
    let _upload = match s.uploads.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            s.metrics.limited("uploads");
            s.uploads.clone().acquire_owned().await?
        }
    };
    let bytes = read_bundle(s, &headers, body).await?;
    let digest = policy_bundles::digest(&bytes);
    let size = bytes.len() as u64;
    let forced = force_reason(&headers)?;

    // The active revision was validated when it was published: an identical body needs no work.
    if let Some(active) = served_with_digest(s, &name, &digest).await? {
        s.metrics.publish(PublishResult::Identical);
        let body = Published { name, revision: active.revision.clone(), digest, size };
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    let validated = validate_in_pool(&state, &name, &who, bytes.clone()).await?;
    if forced.is_none() {
        check_growth(s, &name, &who, &validated.figures).await?;
    }
    let figures = serde_json::to_string(&validated.figures).ok();
    let revision = validated.manifest_revision.unwrap_or_else(|| digest[..12].to_owned());
    let new = NewRevision {
        bundle: &name,
        revision: &revision,
        digest: &digest,
        content: &bytes,
        published_by: &who.name,
        published_at_ms: store::now_ms(),
        figures: figures.as_deref(),
        forced_reason: forced.as_deref(),
        staged: s.config.rollout.is_some(),
    };
    let outcome = s.store.publish(&new).await?;
    let published = Published { name, revision, digest, size };
    answer_publish(s, outcome, published, &who, validated.tests_passed, bytes).await
}

/// Reads a bundle body within `max_bundle_size` (a larger one is counted as refused).
async fn read_bundle(s: &Shared, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = s.config.max_bundle_size;
    match read_body(headers, body, limit).await {
        Ok(b) => Ok(b),
        Err(BodyError::TooLarge) => {
            s.metrics.reject("too_large");
            Err(ApiError::TooLarge { limit })
        }
        Err(BodyError::Read(m)) => Err(ApiError::BadRequest(format!("cannot read the request body: {m}"))),
    }
}

/// The revision of the bundle served (to everyone or to the canaries) with this digest, if any.
async fn served_with_digest(s: &Shared, name: &str, digest: &str) -> Result<Option<Arc<ActiveBundle>>, ApiError> {
    let (_, current) = s.hub.current(name).await?;
    Ok(current
        .as_ref()
        .and_then(|h| [Some(&h.stable), h.canary.as_ref()].into_iter().flatten().find(|a| a.digest == digest).cloned()))
}

/// Validates a bundle on the blocking pool, at most `validations` at a time; a refusal is
/// logged and counted.
async fn validate_in_pool(
    state: &AppState,
    name: &str,
    who: &Principal,
    input: Bytes,
) -> Result<validate::Validated, ApiError> {
    let s = &state.0;
    let permit = s.validations.clone().acquire_owned().await?;
    let limits = state.limits();
    let (budget, validator) = (s.config.budget, s.config.validator.clone());
    let validated = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        validate::validate(&input, &limits, &budget, &validator)
    })
    .await?;
    validated.map_err(|rejection| {
        tracing::info!(bundle.name = %name, published_by = %who.name, reason = rejection.reason(), error = %rejection, "publish refused");
        s.metrics.reject(rejection.reason());
        ApiError::Rejected(rejection)
    })
}

/// The growth guard, when configured: refuses a candidate that moved too far from the active
/// revision's figures.
async fn check_growth(
    s: &Shared,
    name: &str,
    who: &Principal,
    figures: &policy_bundles::budget::Figures,
) -> Result<(), ApiError> {
    let Some(guard) = &s.config.growth_guard else { return Ok(()) };
    let active = s.store.active(name).await?;
    let was = active.and_then(|a| a.figures).and_then(|f| serde_json::from_str(&f).ok());
    let moved = was.map(|was| crate::guard::compare(&was, figures, guard)).unwrap_or_default();
    if moved.is_empty() {
        return Ok(());
    }
    tracing::info!(bundle.name = %name, published_by = %who.name, moved = ?moved.iter().map(|m| m.figure).collect::<Vec<_>>(), "publish refused by the growth guard");
    s.metrics.reject("growth");
    Err(ApiError::Growth(moved))
}

/// The answer to a publish the store decided on; a new active revision wakes the waiters.
async fn answer_publish(
    s: &Shared,
    outcome: PublishOutcome,
    p: Published,
    who: &Principal,
    tests: usize,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let Published { name, revision, digest, size } = p;
    match outcome {
        PublishOutcome::Created(_) | PublishOutcome::Reactivated(_) => {
            tracing::info!(bundle.name = %name, bundle.revision = %revision, bundle.digest = %digest, published_by = %who.name, tests, "revision published and active");
            s.metrics.publish(PublishResult::Created);
            // The store is committed; waking the waiters must not turn success into an error.
            match s.hub.reload(&name, Some((&digest, bytes))).await {
                Ok((_, Some(heads))) if heads.canary.as_ref().is_some_and(|c| c.digest == digest) => {
                    tracing::info!(bundle.name = %name, bundle.revision = %revision, "staged: the canary cohort is served it first");
                    let body = json!({ "name": name, "revision": revision, "digest": digest, "size": size, "rollout": "canary" });
                    return Ok((StatusCode::CREATED, Json(body)).into_response());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(bundle.name = %name, error = %e, "published, but reloading the active revision failed")
                }
            }
            Ok((StatusCode::CREATED, Json(Published { name, revision, digest, size })).into_response())
        }
        PublishOutcome::Identical(info) => {
            s.metrics.publish(PublishResult::Identical);
            Ok((StatusCode::OK, Json(Published { name, revision: info.revision, digest, size })).into_response())
        }
        PublishOutcome::Conflict { existing_digest } => {
            s.metrics.reject("conflict");
            Err(ApiError::Conflict(format!(
                "bundle `{name}` already has a revision `{revision}` with other content (digest {existing_digest}); \
                 give the new content a new revision in its .manifest"
            )))
        }
    }
}

/// The instance a caller speaks for: a token bound to an instance may speak for that one only
/// (a reader token of one gateway can neither take another's cohort nor report for it).
fn speaks_for(who: &Principal, claimed: Option<String>) -> Result<Option<String>, ApiError> {
    match (&who.instance, claimed) {
        (Some(bound), Some(c)) if *bound != c => {
            Err(ApiError::Forbidden(format!("token `{}` speaks for instance `{bound}`, not `{c}`", who.name)))
        }
        (Some(bound), _) => Ok(Some(bound.clone())),
        (None, c) => Ok(c),
    }
}

/// The reason of a forced publish (`x-force-reason`): printable, bounded, not blank.
fn force_reason(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(FORCE_REASON) else { return Ok(None) };
    let reason = v.to_str().map(str::trim).unwrap_or("");
    if reason.is_empty() || reason.len() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "`x-force-reason` must say why, in 1 to {MAX_REASON_LEN} printable ASCII characters"
        )));
    }
    Ok(Some(reason.to_owned()))
}

/// `GET /v1/bundles/{name}`: the active tarball, 304 on a matching `If-None-Match`, long poll
/// with `Prefer: wait=N`.
async fn get_bundle(
    State(state): State<AppState>,
    Reader(who): Reader,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    check_access(&who, &name)?;
    let s = &state.0;
    let instance = headers.get(INSTANCE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let instance = speaks_for(&who, instance)?;
    let canary = match (&s.config.rollout, &instance) {
        (Some(r), Some(i)) => r.canary.contains(i),
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
        r = tokio::time::timeout(wait, changed) => r.ok().flatten(),
        _ = shutdown.wait_for(|down| *down) => None,
    };
    Ok(match outcome {
        Some(newer) => bundle_response(s, &newer, applied),
        None => not_modified(s, &active, applied),
    })
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

#[derive(Debug, Serialize)]
struct RevisionView {
    revision: String,
    digest: String,
    size: u64,
    published_at: String,
    published_by: String,
    active: bool,
    /// What it cost when it was validated (sizes, compile time, routes, upstreams).
    #[serde(skip_serializing_if = "Option::is_none")]
    figures: Option<serde_json::Value>,
    /// Why it was forced past the growth guard.
    #[serde(skip_serializing_if = "Option::is_none")]
    forced_reason: Option<String>,
}

/// `GET /v1/bundles/{name}/revisions`: the history, newest first.
async fn revisions(
    State(state): State<AppState>,
    Reader(who): Reader,
    Path(name): Path<String>,
) -> Result<Json<Vec<RevisionView>>, ApiError> {
    check_name(&name)?;
    check_access(&who, &name)?;
    let list = state.0.store.revisions(&name).await?;
    if list.is_empty() {
        return Err(ApiError::NotFound(format!("no bundle named `{name}` has been published")));
    }
    Ok(Json(
        list.into_iter()
            .map(|r| RevisionView {
                published_at: store::rfc3339(r.published_at_ms),
                revision: r.revision,
                digest: r.digest,
                size: r.size,
                published_by: r.published_by,
                active: r.active,
                figures: r.figures.and_then(|f| serde_json::from_str(&f).ok()),
                forced_reason: r.forced_reason,
            })
            .collect(),
    ))
}

/// `GET /v1/bundles/{name}/revisions/{revision}`: that revision's tarball, active or not (what
/// `bundlectl rollback --sign` signs again).
async fn revision_tarball(
    State(state): State<AppState>,
    Reader(who): Reader,
    Path((name, revision)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    check_access(&who, &name)?;
    let store = &state.0.store;
    let info = store.revisions(&name).await?.into_iter().find(|r| r.revision == revision);
    let Some(info) = info else {
        return Err(ApiError::NotFound(format!("bundle `{name}` has no revision `{revision}`")));
    };
    let Some(bytes) = store.content(&name, &info.digest).await? else {
        return Err(ApiError::NotFound(format!("bundle `{name}` revision `{revision}` has no stored content")));
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", info.digest)).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::OK, [(CONTENT_TYPE, HeaderValue::from_static("application/gzip")), (ETAG, etag)], bytes)
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    revision: String,
}

/// `GET /v1/bundles/{name}/rollout`: where the latest rollout stands, and which revision each
/// cohort is served.
async fn rollout_status(
    State(state): State<AppState>,
    Reader(who): Reader,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name(&name)?;
    check_access(&who, &name)?;
    let s = &state.0;
    let (_, heads) = s.hub.current(&name).await?;
    let Some(heads) = heads else {
        return Err(ApiError::NotFound(format!("no bundle named `{name}` has been published")));
    };
    let rollout = s.store.rollout(&name).await?.map(|r| {
        json!({
            "revision": r.revision,
            "previous": r.previous,
            "state": r.state,
            "started_at": store::rfc3339(r.started_at_ms),
            "ended_at": r.ended_at_ms.map(store::rfc3339),
            "reason": r.reason,
        })
    });
    let canary = s.config.rollout.as_ref().map(|c| match &c.canary {
        crate::config::Cohort::Instances(list) => json!({ "instances": list }),
        crate::config::Cohort::Percent(p) => json!({ "percent": p }),
    });
    Ok(Json(json!({
        "bundle": name,
        "stable": heads.stable.revision,
        "canary_revision": heads.canary.as_ref().map(|c| c.revision.clone()),
        "canary": canary,
        "rollout": rollout,
    })))
}

/// `POST /v1/bundles/{name}/rollback` `{"revision": "..."}`: make an earlier revision active.
async fn rollback(
    State(state): State<AppState>,
    Publisher(who): Publisher,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    check_access(&who, &name)?;
    let req: RollbackRequest = read_json(&headers, body).await?;
    let s = &state.0;
    let info = match s.store.rollback(&name, &req.revision).await? {
        RollbackOutcome::Unknown => {
            return Err(ApiError::NotFound(format!("bundle `{name}` has no revision `{}`", req.revision)))
        }
        RollbackOutcome::AlreadyActive(info) => {
            // A rollout in its canary phase may have ended: serve the canaries the active one again.
            if let Err(e) = s.hub.reload(&name, None).await {
                tracing::warn!(bundle.name = %name, error = %e, "reloading the active revision failed");
            }
            info
        }
        RollbackOutcome::Activated(info) => {
            tracing::info!(bundle.name = %name, bundle.revision = %info.revision, by = %who.name, "rolled back");
            if let Err(e) = s.hub.reload(&name, None).await {
                tracing::warn!(bundle.name = %name, error = %e, "rolled back, but reloading the active revision failed");
            }
            info
        }
    };
    let body = Published { name, revision: info.revision, digest: info.digest, size: info.size };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// A gateway's report (`POST /v1/status`). Fields this version does not know are ignored, so
/// newer gateways can report more. `last_sync` is Unix seconds or an RFC 3339 time (0 or null:
/// never); an empty `revision` or `digest` means none (a gateway without a bundle yet).
#[derive(Debug, Deserialize)]
struct StatusRequest {
    instance: String,
    bundle: String,
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    last_sync: Option<serde_json::Value>,
    #[serde(default)]
    staleness_seconds: Option<f64>,
    /// The last activation attempt: `{digest, outcome, reason, message, at}`.
    #[serde(default)]
    activation: Option<serde_json::Value>,
    /// What the active bundle served since it activated: `{requests, denies, errors, p99_ms}`.
    #[serde(default)]
    served: Option<serde_json::Value>,
    #[serde(default)]
    activated_at: Option<u64>,
}

impl StatusRequest {
    /// Checks every field (all problems are reported at once) and normalizes the report.
    fn into_report(self, now_ms: i64) -> Result<GatewayReport, ApiError> {
        let mut problems = Vec::new();
        let text_ok = |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
        if !text_ok(&self.instance) {
            problems.push("`instance` must be 1 to 256 characters without control characters");
        }
        if !text_ok(&self.bundle) {
            problems.push("`bundle` must be 1 to 256 characters without control characters");
        }
        let revision = self.revision.filter(|r| !r.is_empty());
        if revision.as_deref().is_some_and(|r| !text_ok(r)) {
            problems.push("`revision` must be at most 256 characters without control characters");
        }
        let digest = self.digest.filter(|d| !d.is_empty()).map(|d| d.to_ascii_lowercase());
        if digest.as_deref().is_some_and(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit())) {
            problems.push("`digest` must be a hex SHA-256 (64 digits)");
        }
        let last_sync_ms = match &self.last_sync {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => match n.as_f64() {
                // Up to the last second of year 9999, as RFC 3339 can write.
                Some(secs) if (0.0..=253_402_300_799.0).contains(&secs) => {
                    (secs > 0.0).then_some((secs * 1000.0) as i64)
                }
                _ => {
                    problems.push("`last_sync` must be Unix seconds (0 or more) or an RFC 3339 time");
                    None
                }
            },
            Some(serde_json::Value::String(t)) => {
                let ms = store::parse_rfc3339(t);
                if ms.is_none() {
                    problems.push("`last_sync` must be Unix seconds or an RFC 3339 time such as 2026-11-25T12:00:00Z");
                }
                ms
            }
            Some(_) => {
                problems.push("`last_sync` must be Unix seconds or an RFC 3339 time");
                None
            }
        };
        if self.staleness_seconds.is_some_and(|x| !x.is_finite() || x < 0.0) {
            problems.push("`staleness_seconds` must be a number of seconds, 0 or more");
        }
        if !problems.is_empty() {
            return Err(ApiError::BadRequest(problems.join("; ")));
        }
        let health = (self.activation.is_some() || self.served.is_some()).then(|| {
            json!({ "activation": self.activation, "served": self.served, "activated_at": self.activated_at })
                .to_string()
        });
        Ok(GatewayReport {
            health,
            instance: self.instance,
            bundle: self.bundle,
            revision,
            digest,
            last_sync: last_sync_ms.map(store::rfc3339),
            staleness_seconds: self.staleness_seconds,
            last_report_ms: now_ms,
            token: String::new(),
        })
    }
}

/// `POST /v1/status`: record a gateway's report (latest per instance). Answers 202.
async fn status(
    State(state): State<AppState>,
    Reader(who): Reader,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let s = &state.0;
    let req: StatusRequest = read_json(&headers, body).await?;
    let now = store::now_ms();
    let mut report = req.into_report(now)?;
    if let Err(e) = speaks_for(&who, Some(report.instance.clone())) {
        s.metrics.refuse_status("token_instance");
        return Err(e);
    }
    if let Err(e) = check_access(&who, &report.bundle) {
        s.metrics.refuse_status("bundle");
        return Err(e);
    }
    // Rows not heard from within the retention go, and with them their binding to a token.
    let retention = i64::try_from(s.config.fleet_retention.as_millis()).unwrap_or(i64::MAX);
    s.store.prune_fleet(now.saturating_sub(retention)).await?;
    report.token.clone_from(&who.name);
    if !s.store.report(&report).await? {
        s.metrics.refuse_status("instance_bound");
        tracing::warn!(instance = %report.instance, token = %who.name, "status report for an instance another token reports for: refused");
        return Err(ApiError::Forbidden(format!(
            "instance `{}` reports with another token; token `{}` may not report for it",
            report.instance, who.name
        )));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response())
}

#[derive(Debug, Serialize)]
struct FleetMember {
    instance: String,
    bundle: String,
    revision: Option<String>,
    digest: Option<String>,
    /// RFC 3339: when the gateway last confirmed that its bundle was current.
    last_sync: Option<String>,
    staleness_seconds: Option<f64>,
    /// RFC 3339: when this control plane last heard from the gateway.
    last_report: String,
    /// No report for longer than `fleet_silent_after`.
    silent: bool,
    /// Its digest is the one its cohort is served.
    current: bool,
    /// `canary` or `stable`, when rollouts are staged.
    #[serde(skip_serializing_if = "Option::is_none")]
    cohort: Option<&'static str>,
    /// The revision its cohort is served.
    target_revision: Option<String>,
    /// The name of the token its reports come with.
    token: String,
}

/// `GET /v1/fleet`: every gateway that reported, and how far it is from the active revision.
async fn fleet(State(state): State<AppState>, Reader(_): Reader) -> Result<Json<Vec<FleetMember>>, ApiError> {
    let s = &state.0;
    let now = store::now_ms();
    let retention = i64::try_from(s.config.fleet_retention.as_millis()).unwrap_or(i64::MAX);
    s.store.prune_fleet(now.saturating_sub(retention)).await?;
    let reports = s.store.fleet().await?;
    let silent_after = i64::try_from(s.config.fleet_silent_after.as_millis()).unwrap_or(i64::MAX);
    let mut active: std::collections::HashMap<String, Option<Arc<crate::hub::Heads>>> =
        std::collections::HashMap::new();
    let mut out = Vec::with_capacity(reports.len());
    for r in reports {
        if !active.contains_key(&r.bundle) {
            // A report may name anything; only well-formed names can have an active revision.
            let heads = match check_name(&r.bundle) {
                Ok(()) => s.hub.current(&r.bundle).await?.1,
                Err(_) => None,
            };
            active.insert(r.bundle.clone(), heads);
        }
        let canary = s.config.rollout.as_ref().is_some_and(|c| c.canary.contains(&r.instance));
        let target = active.get(&r.bundle).and_then(|h| h.as_ref()).map(|h| h.for_cohort(canary).clone());
        let current = matches!((&r.digest, &target), (Some(d), Some(t)) if *d == t.digest);
        out.push(FleetMember {
            cohort: s.config.rollout.as_ref().map(|_| if canary { "canary" } else { "stable" }),
            target_revision: target.map(|t| t.revision.clone()),
            last_report: store::rfc3339(r.last_report_ms),
            silent: now.saturating_sub(r.last_report_ms) > silent_after,
            token: r.token.clone(),
            current,
            instance: r.instance,
            bundle: r.bundle,
            revision: r.revision,
            digest: r.digest,
            last_sync: r.last_sync,
            staleness_seconds: r.staleness_seconds,
        });
    }
    Ok(Json(out))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(CONTENT_TYPE, content_type)], state.0.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StoreLocation, TokenConfig};
    use crate::store::{ActiveHead, Change, RevisionInfo, SqlStore};
    use axum::http::Request;
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;

    const PUBLISH: &str = "publish-secret";
    const READ: &str = "read-secret";

    fn config() -> Config {
        let token = |name: &str, scope, secret: &str| TokenConfig {
            name: name.into(),
            scope,
            sha256: Sha256::digest(secret.as_bytes()).into(),
            instance: None,
            bundles: None,
        };
        Config {
            listen: ([127, 0, 0, 1], 0).into(),
            store: StoreLocation::SqliteMemory,
            max_bundle_size: 1024,
            max_long_poll: Duration::from_secs(5),
            fleet_silent_after: Duration::from_secs(60),
            fleet_retention: Duration::from_secs(3600),
            max_connections: 100,
            header_timeout: Duration::from_secs(10),
            max_long_polls_per_token: 100,
            tokens: vec![token("ci", Scope::Publish, PUBLISH), token("gw", Scope::Read, READ)],
            budget: policy_bundles::budget::Budget::default(),
            validator: policy_bundles::budget::Validator::InProcess,
            growth_guard: Some(crate::config::GrowthGuard::default()),
            rollout: None,
            logs: crate::config::LogsConfig::default(),
        }
    }

    async fn router() -> Router {
        let store = Arc::new(SqlStore::sqlite_memory().await.unwrap());
        app(AppState::new(config(), store).unwrap())
    }

    async fn call(
        router: Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = router.oneshot(req.body(Body::from(body.to_vec())).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    #[tokio::test]
    async fn a_missing_or_unknown_token_is_401_with_a_bearer_challenge() {
        for token in [None, Some("wrong")] {
            let (status, headers, body) = call(router().await, "GET", "/v1/bundles/main", token, b"").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(headers.get(WWW_AUTHENTICATE).unwrap(), "Bearer");
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        }
    }

    #[tokio::test]
    async fn a_read_token_may_not_publish_or_roll_back() {
        let (status, _, body) = call(router().await, "PUT", "/v1/bundles/main", Some(READ), b"x").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body["error"].as_str().unwrap().contains("`gw`"), "{body}");
        let (status, _, _) =
            call(router().await, "POST", "/v1/bundles/main/rollback", Some(READ), br#"{"revision":"a"}"#).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn an_unreadable_archive_is_422_with_structured_errors() {
        let (status, _, body) = call(router().await, "PUT", "/v1/bundles/main", Some(PUBLISH), b"not gzip").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let e = &body["errors"][0];
        assert_eq!(e["kind"], "archive");
        assert!(e["message"].as_str().unwrap().contains("gzip"), "{e}");
        assert!(e.get("file").is_some() && e.get("line").is_some(), "every error has file and line keys: {e}");
    }

    #[tokio::test]
    async fn a_body_over_max_bundle_size_is_413() {
        let (status, _, body) = call(router().await, "PUT", "/v1/bundles/main", Some(PUBLISH), &[0u8; 2000]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body["error"].as_str().unwrap().contains("1024"), "{body}");
    }

    #[tokio::test]
    async fn bad_json_bodies_are_400() {
        let r = router().await;
        let (status, _, _) = call(r.clone(), "POST", "/v1/bundles/main/rollback", Some(PUBLISH), b"{").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, body) = call(r, "POST", "/v1/status", Some(READ), br#"{"instance": 7}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("invalid JSON"), "{body}");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_json_and_health_needs_no_token() {
        let (status, _, body) = call(router().await, "GET", "/v2/nothing", None, b"").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"].is_string());
        let (status, _, _) = call(router().await, "GET", "/healthz", None, b"").await;
        assert_eq!(status, StatusCode::OK);
    }

    /// A store that is down.
    struct DownStore;

    #[async_trait::async_trait]
    impl Store for DownStore {
        async fn publish(&self, _: &NewRevision<'_>) -> Result<PublishOutcome, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn active(&self, _: &str) -> Result<Option<ActiveHead>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn content(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn revisions(&self, _: &str) -> Result<Vec<RevisionInfo>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn rollback(&self, _: &str, _: &str) -> Result<RollbackOutcome, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn report(&self, _: &GatewayReport) -> Result<bool, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn prune_fleet(&self, _: i64) -> Result<u64, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn fleet(&self) -> Result<Vec<GatewayReport>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn rollout(&self, _: &str) -> Result<Option<crate::store::Rollout>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn canaries(&self) -> Result<Vec<crate::store::Rollout>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn finish_rollout(&self, _: i64, _: &str, _: Option<&str>, _: i64) -> Result<bool, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn store_events(&self, _: &[crate::store::DecisionEvent]) -> Result<u64, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn events(&self, _: &crate::store::EventQuery) -> Result<Vec<String>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn prune_events(&self, _: i64, _: Option<u64>) -> Result<u64, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn changes(&self) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<Change>>, StoreError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_failing_store_is_503_never_a_panic() {
        let router = app(AppState::new(config(), Arc::new(DownStore)).unwrap());
        for (method, uri, token) in
            [("GET", "/v1/bundles/main", READ), ("GET", "/v1/bundles/main/revisions", READ), ("GET", "/v1/fleet", READ)]
        {
            let (status, _, body) = call(router.clone(), method, uri, Some(token), b"").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {uri}");
            assert!(body["error"].as_str().unwrap().contains("store"), "{body}");
        }
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let digest = "abc";
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(if_none_match(&h("\"abc\""), digest));
        assert!(if_none_match(&h("\"x\", W/\"abc\""), digest));
        assert!(if_none_match(&h("*"), digest));
        assert!(!if_none_match(&h("abc"), digest), "unquoted is not an entity tag");
        assert!(!if_none_match(&h("\"abcd\""), digest));
        assert!(!if_none_match(&HeaderMap::new(), digest));
    }

    #[test]
    fn prefer_wait_is_read_among_other_preferences() {
        let h = |vs: &[&str]| {
            let mut m = HeaderMap::new();
            for v in vs {
                m.append(PREFER, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert_eq!(prefer_wait(&h(&["wait=30"])), Some(30));
        assert_eq!(prefer_wait(&h(&["respond-async, Wait = 7"])), Some(7));
        assert_eq!(prefer_wait(&h(&["return=minimal", "wait=\"5\""])), Some(5));
        assert_eq!(prefer_wait(&h(&["wait=soon"])), None);
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
    }
}
