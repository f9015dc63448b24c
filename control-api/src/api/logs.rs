//! The two calls of `/v1/logs`. Ingest: token (read scope, and the bundles it may touch),
//! body within `logs.max_upload`, then inflating and checking on a blocking thread (at most one
//! per CPU at once, each bounded by `logs.max_decompressed`), then one transaction. Query:
//! `logs` tokens only, every parameter checked, newest first, never past retention.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{read_body, ApiError, BodyError};
use crate::app_state::{AppState, Shared};
use crate::auth::{Principal, Scope};
use crate::clock;
use crate::logs;
use crate::logs::batch::{self, BatchError, Encoding};
use crate::store::{DecisionEvent, EventQuery};

/// `GET /v1/logs` answers at most this many events; and this many without `limit`.
pub const MAX_LIMIT: u32 = 10_000;
pub const DEFAULT_LIMIT: u32 = 1_000;

/// A refused batch: the `reason` label it is counted under, and the answer.
struct Refused(&'static str, ApiError);

impl From<BatchError> for Refused {
    fn from(e: BatchError) -> Self {
        let reason = match &e {
            BatchError::TooLarge { .. } => "too_large",
            BatchError::Bomb { .. } => "decompressed_too_large",
            BatchError::Encoding(_) => "encoding",
            BatchError::Gzip(_) | BatchError::NotArray(_) | BatchError::Events(_) => "malformed",
        };
        let error = match e {
            BatchError::TooLarge { .. } | BatchError::Bomb { .. } => ApiError::PayloadTooLarge(e.to_string()),
            BatchError::Encoding(_) => ApiError::UnsupportedMediaType(e.to_string()),
            other => ApiError::BadRequest(format!("decision-log batch refused: {other}")),
        };
        Refused(reason, error)
    }
}

/// `POST /v1/logs`: a JSON array of decision events (gzip with `Content-Encoding: gzip`).
/// 200 `{"accepted": N, "stored": S, "duplicates": N - S}`; refused batches are counted by reason.
pub(super) async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let s = &state.0;
    match take_batch(s, &headers, body).await {
        Ok(r) => Ok(r),
        Err(Refused(reason, e)) => {
            s.metrics.refuse_batch(reason);
            if !matches!(e, ApiError::Store(_)) {
                tracing::info!(reason, error = %e, "decision-log batch refused");
            }
            Err(e)
        }
    }
}

async fn take_batch(s: &Shared, headers: &HeaderMap, body: Body) -> Result<Response, Refused> {
    let auth = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let who = s.tokens.authorize(auth, Scope::Read).map_err(|e| Refused("token", e.into()))?;
    let encoding = Encoding::from_header(headers.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok()))?;
    let limits = s.config.logs;
    let bytes = read_body(headers, body, limits.max_upload).await.map_err(|e| match e {
        BodyError::TooLarge => BatchError::TooLarge { limit: limits.max_upload }.into(),
        BodyError::Read(m) => Refused("malformed", ApiError::BadRequest(format!("cannot read the request body: {m}"))),
    })?;
    let permit =
        s.ingests.clone().acquire_owned().await.map_err(|e| Refused("internal", ApiError::Internal(e.to_string())))?;
    let (events, received) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        batch::parse(&batch::inflate(&bytes, encoding, limits.max_decompressed)?)
    })
    .await
    .map_err(|e| Refused("internal", ApiError::Internal(e.to_string())))??;
    check_bundles(&who, &events)?;
    let stored = s.store.store_events(&events).await.map_err(|e| Refused("store", e.into()))?;
    let duplicates = received as u64 - stored;
    s.metrics.ingested(stored, duplicates);
    logs::prune(&*s.store, &s.config.logs, &s.metrics, s.retention.after_store(stored, limits.max_count)).await;
    Ok((StatusCode::OK, Json(json!({ "accepted": received, "stored": stored, "duplicates": duplicates })))
        .into_response())
}

/// A token limited to some bundles may log events of those only: one event of another bundle
/// refuses the batch.
fn check_bundles(who: &Principal, events: &[DecisionEvent]) -> Result<(), Refused> {
    let Some(e) = events.iter().find(|e| !who.may_touch(&e.bundle)) else { return Ok(()) };
    let allowed = who.bundles.as_deref().unwrap_or_default().join(", ");
    let m = format!(
        "token `{}` may log events of bundles [{allowed}] only; event {} is of bundle `{}`",
        who.name, e.decision_id, e.bundle
    );
    Err(Refused("forbidden", ApiError::Forbidden(m)))
}

/// `GET /v1/logs` parameters, all optional; any other is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    pub bundle: Option<String>,
    pub route: Option<String>,
    pub decision: Option<String>,
    pub revision: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
}

/// `GET /v1/logs?bundle=&route=&decision=&revision=&since=&until=&limit=`: the stored events,
/// as they were sent, newest first.
pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let s = &state.0;
    let auth = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let who = s.tokens.authorize(auth, Scope::Logs)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(format!("GET /v1/logs: {}", e.body_text())))?;
    let query = event_query(params, &who, s, clock::now_ms())?;
    let events = s.store.events(&query).await?;
    let mut body = String::with_capacity(2 + events.iter().map(|e| e.len() + 1).sum::<usize>());
    body.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(e);
    }
    body.push(']');
    Ok(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// Checks every parameter (every problem at once) into a store query limited to what the token
/// may see and what retention keeps.
pub(crate) fn event_query(p: ListParams, who: &Principal, s: &Shared, now_ms: i64) -> Result<EventQuery, ApiError> {
    let mut problems = Vec::new();
    let text = |problems: &mut Vec<String>, key: &str, v: Option<String>| {
        let v = v.filter(|v| !v.is_empty());
        if v.as_ref().is_some_and(|v| v.len() > 256 || v.chars().any(char::is_control)) {
            problems.push(format!("`{key}` must be at most 256 printable characters"));
        }
        v
    };
    let bundle = text(&mut problems, "bundle", p.bundle);
    let route = text(&mut problems, "route", p.route);
    let revision = text(&mut problems, "revision", p.revision);
    let decision = text(&mut problems, "decision", p.decision);
    if decision.as_deref().is_some_and(|d| !matches!(d, "allow" | "deny" | "error")) {
        problems.push("`decision` must be allow, deny or error".into());
    }
    let mut time = |key: &str, v: Option<String>| {
        v.filter(|v| !v.is_empty())
            .and_then(|v| clock::parse_time(&v, now_ms).map_err(|m| problems.push(format!("`{key}`: {m}"))).ok())
    };
    let since_ms = time("since", p.since);
    let until_ms = time("until", p.until);
    let limit = match p.limit.as_deref().filter(|l| !l.is_empty()).map(str::parse::<u32>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            problems.push(format!("`limit` must be a number from 1 to {MAX_LIMIT}"));
            DEFAULT_LIMIT
        }
    };
    if !problems.is_empty() {
        return Err(ApiError::BadRequest(format!("GET /v1/logs: {}", problems.join("; "))));
    }
    let bundles = match (&bundle, &who.bundles) {
        (Some(b), _) if !who.may_touch(b) => {
            let allowed = who.bundles.as_deref().unwrap_or_default().join(", ");
            return Err(ApiError::Forbidden(format!(
                "token `{}` may read the logs of bundles [{allowed}] only, not `{b}`",
                who.name
            )));
        }
        (Some(b), _) => vec![b.clone()],
        (None, Some(list)) => list.clone(),
        (None, None) => Vec::new(),
    };
    let kept = logs::oldest_kept(&s.config.logs, now_ms);
    let since_ms = Some(since_ms.map_or(kept, |t| t.max(kept)));
    Ok(EventQuery { bundles, route, decision, revision, since_ms, until_ms, limit, ..EventQuery::default() })
}
