//! Publishing (`PUT /v1/bundles/{name}`: validate, guard, store, wake the waiters) and the
//! revision history (`GET .../revisions`, `GET .../revisions/{revision}`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use super::{read_body, ApiError, BodyError, PublishBundle, ReadBundle, FORCE_REASON};
use crate::app_state::{AppState, Shared};
use crate::auth::Principal;
use crate::clock;
use crate::long_poll_hub::ActiveBundle;
use crate::metrics::PublishResult;
use crate::store::{NewRevision, PublishOutcome};
use crate::validate;

/// Longest force reason kept.
const MAX_REASON_LEN: usize = 512;

#[derive(Debug, Serialize)]
pub(super) struct Published {
    pub(super) name: String,
    pub(super) revision: String,
    pub(super) digest: String,
    pub(super) size: u64,
}

/// `PUT /v1/bundles/{name}`: validate, store as a new revision, activate.
pub(super) async fn put_bundle(
    State(state): State<AppState>,
    PublishBundle { who, name }: PublishBundle,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
        published_at_ms: clock::now_ms(),
        figures: figures.as_deref(),
        forced_reason: forced.as_deref(),
        staged: s.config.rollout.as_ref().is_some_and(|r| r.cohort(&name).is_some()),
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
    let moved = was.map(|was| crate::growth_guard::compare(&was, figures, guard)).unwrap_or_default();
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

#[derive(Debug, Serialize)]
pub(super) struct RevisionView {
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
pub(super) async fn revisions(
    State(state): State<AppState>,
    ReadBundle { who: _, name }: ReadBundle,
) -> Result<Json<Vec<RevisionView>>, ApiError> {
    let list = state.0.store.revisions(&name).await?;
    if list.is_empty() {
        return Err(ApiError::NotFound(format!("no bundle named `{name}` has been published")));
    }
    Ok(Json(
        list.into_iter()
            .map(|r| RevisionView {
                published_at: clock::rfc3339(r.published_at_ms),
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
pub(super) async fn revision_tarball(
    State(state): State<AppState>,
    ReadBundle { who: _, name }: ReadBundle,
    Path((_, revision)): Path<(String, String)>,
) -> Result<Response, ApiError> {
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
