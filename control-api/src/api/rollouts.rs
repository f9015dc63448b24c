//! Rollouts: where the latest stands (`GET .../rollout`) and a manual rollback
//! (`POST .../rollback`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::bundles::Published;
use super::{read_json, ApiError, PublishBundle, ReadBundle};
use crate::app_state::AppState;
use crate::clock;
use crate::store::RollbackOutcome;

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
    let rollout = s.store.rollout(&name).await?.map(|r| {
        json!({
            "revision": r.revision,
            "previous": r.previous,
            "state": r.state,
            "started_at": clock::rfc3339(r.started_at_ms),
            "ended_at": r.ended_at_ms.map(clock::rfc3339),
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
pub(super) async fn rollback(
    State(state): State<AppState>,
    PublishBundle { who, name }: PublishBundle,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
