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

mod bundles;
pub mod fleet;
pub(crate) mod logs;
mod long_poll;
pub mod rollouts;

use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::json;

pub use crate::app_state::{AppState, Shared};
use crate::auth::{AuthError, Principal, Scope};
use crate::names::{is_bundle_name, MAX_NAME_LEN};
use crate::store::StoreError;
use crate::validate::Rejection;

pub use long_poll::{if_none_match, prefer_wait};

/// `x-bundle-revision`: the active revision's name, beside its ETag.
pub const BUNDLE_REVISION: HeaderName = HeaderName::from_static("x-bundle-revision");
pub const PREFER: HeaderName = HeaderName::from_static("prefer");
pub const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
/// `x-gateway-instance`: the gateway asking, so that a staged rollout answers with its cohort.
pub const INSTANCE: HeaderName = HeaderName::from_static("x-gateway-instance");
/// `x-force-reason`: publish past the growth guard; the reason is kept in the history.
pub const FORCE_REASON: HeaderName = HeaderName::from_static("x-force-reason");
/// Largest JSON body of the small calls (rollback, status).
const MAX_JSON_BODY: u64 = 64 * 1024;

/// The router, without a socket: `main` serves it, tests call it with `oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/bundles/{name}", get(long_poll::get_bundle).put(bundles::put_bundle))
        .route("/v1/bundles/{name}/revisions", get(bundles::revisions))
        .route("/v1/bundles/{name}/revisions/{revision}", get(bundles::revision_tarball))
        .route("/v1/bundles/{name}/rollback", post(rollouts::rollback))
        .route("/v1/bundles/{name}/rollout", get(rollouts::rollout_status))
        .route("/v1/bundles/{name}/rollouts", get(rollouts::rollout_history))
        .route("/v1/status", post(fleet::status))
        .route("/v1/fleet", get(fleet::fleet))
        .route("/v1/logs", get(logs::list).post(logs::ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
    #[error("{}", crate::growth_guard::message(.0))]
    Growth(Vec<crate::growth_guard::Moved>),
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
    /// This replica is cut off from its store (the message says for how long and why).
    #[error("{0}")]
    Unavailable(String),
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
            ApiError::Store(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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

/// A call on one bundle (`/v1/bundles/{name}...`), checked in this order: the token and its
/// scope (401, 403), the name (400, [`check_name`]), the token's bundles (403,
/// [`check_access`]). `PUBLISH` asks for a publish token.
pub struct BundleCall<const PUBLISH: bool> {
    pub who: Principal,
    pub name: String,
}

/// A call on one bundle with any valid token.
pub type ReadBundle = BundleCall<false>;
/// A call on one bundle with a publish token.
pub type PublishBundle = BundleCall<true>;

impl<const PUBLISH: bool> FromRequestParts<AppState> for BundleCall<PUBLISH> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = authorize(parts, state, if PUBLISH { Scope::Publish } else { Scope::Read })?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("bad path: {}", e.body_text())))?;
        let Some(name) = params.iter().find(|(k, _)| *k == "name").map(|(_, v)| v.to_owned()) else {
            return Err(ApiError::Internal("a bundle call on a route without `{name}`".into()));
        };
        check_name(&name)?;
        check_access(&who, &name)?;
        Ok(BundleCall { who, name })
    }
}

/// A token limited to some bundles (`tokens[].bundles`) touches those only.
pub(crate) fn check_access(who: &Principal, name: &str) -> Result<(), ApiError> {
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

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, MAX_JSON_BODY).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::BadRequest(format!("the JSON body is larger than {MAX_JSON_BODY} bytes")),
        BodyError::Read(m) => ApiError::BadRequest(format!("cannot read the request body: {m}")),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The instance a caller speaks for: a token bound to an instance may speak for that one only
/// (a reader token of one gateway can neither take another's cohort nor report for it).
pub(super) fn speaks_for(who: &Principal, claimed: Option<String>) -> Result<Option<String>, ApiError> {
    match (&who.instance, claimed) {
        (Some(bound), Some(c)) if *bound != c => {
            Err(ApiError::Forbidden(format!("token `{}` speaks for instance `{bound}`, not `{c}`", who.name)))
        }
        (Some(bound), _) => Ok(Some(bound.clone())),
        (None, c) => Ok(c),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while this replica's view of the store is current, 503 (saying why)
/// while it is cut off from it.
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match state.0.store_watch.cut_off() {
        None => Ok("ready\n"),
        Some(why) => Err(ApiError::Unavailable(why)),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    let s = &state.0;
    s.metrics.set_served(s.hub.served().iter().map(|(bundle, heads)| {
        let canary = heads.canary.as_ref().map(|c| c.revision.as_str());
        (bundle.as_str(), heads.stable.revision.as_str(), canary)
    }));
    ([(CONTENT_TYPE, content_type)], s.metrics.render()).into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Config, StoreLocation, TokenConfig};
    use crate::store::{ActiveHead, Change, RevisionInfo, SqlStore};
    use crate::store::{GatewayReport, NewRevision, PublishOutcome, RollbackOutcome, Store};
    use axum::http::header::IF_NONE_MATCH;
    use axum::http::Request;
    use sha2::{Digest, Sha256};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::ServiceExt;

    pub(crate) const PUBLISH: &str = "publish-secret";
    pub(crate) const READ: &str = "read-secret";

    /// A config for router tests: in-memory SQLite, a publish token `ci` and a read token `gw`.
    pub(crate) fn config() -> Config {
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
            store_stale_after: crate::config::DEFAULT_STORE_STALE_AFTER,
            max_long_polls_per_token: 100,
            tokens: vec![token("ci", Scope::Publish, PUBLISH), token("gw", Scope::Read, READ)],
            budget: policy_bundles::budget::Budget::default(),
            validator: policy_bundles::budget::Validator::InProcess,
            growth_guard: Some(crate::config::GrowthGuard::default()),
            rollout: None,
            logs: crate::config::LogsConfig::default(),
            console: crate::config::ConsoleConfig::default(),
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
        async fn ping(&self) -> Result<(), StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn active(&self, _: &str) -> Result<Option<ActiveHead>, StoreError> {
            Err(StoreError::Corrupt("down".into()))
        }
        async fn heads(&self, _: &str) -> Result<Option<crate::store::ServedHeads>, StoreError> {
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
        async fn rollouts(&self, _: &str, _: u32) -> Result<Vec<crate::store::Rollout>, StoreError> {
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
