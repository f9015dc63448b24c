//! Rollouts: where the latest stands (`GET .../rollout`), the history (`GET .../rollouts`) and
//! a manual rollback (`POST .../rollback`).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::bundles::Published;
use super::{read_json, ApiError, PublishBundle, ReadBundle};
use crate::app_state::AppState;
use crate::auth::Principal;
use crate::clock;
use crate::store::{RollbackOutcome, Rollout};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    revision: String,
}

/// `GET /v1/bundles/{name}/rollout`: where the latest rollout stands, and which revision each
/// cohort is served.
pub(super) async fn rollout_status(
    State(state): State<AppState>,
    ReadBundle { who: _, name }: ReadBundle,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = &state.0;
    let (_, heads) = s.hub.current(&name).await?;
    let Some(heads) = heads else {
        return Err(ApiError::NotFound(format!("no bundle named `{name}` has been published")));
    };
    let rollout = s.store.rollout(&name).await?.as_ref().map(rollout_json);
    let canary = s.config.rollout.as_ref().and_then(|c| c.cohort(&name)).map(|c| match c {
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

/// A rollout as the API shows it.
fn rollout_json(r: &Rollout) -> serde_json::Value {
    json!({
        "revision": r.revision,
        "previous": r.previous,
        "state": r.state,
        "started_at": clock::rfc3339(r.started_at_ms),
        "ended_at": r.ended_at_ms.map(clock::rfc3339),
        "reason": r.reason,
    })
}

/// The most rollouts one history answer lists (`?limit=`), and the default.
const MAX_HISTORY: u32 = 1000;
const DEFAULT_HISTORY: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    limit: Option<u32>,
}

/// `GET /v1/bundles/{name}/rollouts[?limit=N]`: the bundle's rollouts, newest first, each with
/// its state and why it ended (default 100, at most 1000).
pub(super) async fn rollout_history(
    State(state): State<AppState>,
    ReadBundle { who: _, name }: ReadBundle,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::BadRequest(format!("GET /v1/bundles/{name}/rollouts: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be from 1 to {MAX_HISTORY}, not {limit}")));
    }
    let rollouts = state.0.store.rollouts(&name, limit).await?;
    if rollouts.is_empty() && state.0.hub.current(&name).await?.1.is_none() {
        return Err(ApiError::NotFound(format!("no bundle named `{name}` has been published")));
    }
    let list: Vec<serde_json::Value> = rollouts.iter().map(rollout_json).collect();
    Ok(Json(json!({ "bundle": name, "rollouts": list })))
}

/// `POST /v1/bundles/{name}/rollback` `{"revision": "..."}`: make an earlier revision active.
pub(super) async fn rollback(
    State(state): State<AppState>,
    PublishBundle { who, name }: PublishBundle,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: RollbackRequest = read_json(&headers, body).await?;
    let info = roll_back(&state, &who, &name, &req.revision).await?;
    let body = Published { name, revision: info.revision, digest: info.digest, size: info.size };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Makes `revision` of `name` active again and serves it (the API's rollback and the console's).
pub async fn roll_back(
    state: &AppState,
    who: &Principal,
    name: &str,
    revision: &str,
) -> Result<crate::store::RevisionInfo, ApiError> {
    let s = &state.0;
    let info = match s.store.rollback(name, revision).await? {
        RollbackOutcome::Unknown => {
            return Err(ApiError::NotFound(format!("bundle `{name}` has no revision `{revision}`")))
        }
        RollbackOutcome::AlreadyActive(info) => {
            // A rollout in its canary phase may have ended: serve the canaries the active one again.
            if let Err(e) = s.hub.reload(name, None).await {
                tracing::warn!(bundle.name = %name, error = %e, "reloading the active revision failed");
            }
            info
        }
        RollbackOutcome::Activated(info) => {
            tracing::info!(bundle.name = %name, bundle.revision = %info.revision, by = %who.name, "rolled back");
            if let Err(e) = s.hub.reload(name, None).await {
                tracing::warn!(bundle.name = %name, error = %e, "rolled back, but reloading the active revision failed");
            }
            info
        }
    };
    Ok(info)
}
