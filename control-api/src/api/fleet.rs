//! The fleet: gateways' status reports (`POST /v1/status`) and what they add up to
//! (`GET /v1/fleet`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{check_access, read_json, speaks_for, ApiError, Reader};
use crate::app_state::AppState;
use crate::auth::Principal;
use crate::clock;
use crate::store::GatewayReport;

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
    /// The same in Unix milliseconds (newer gateways): what propagation is measured by.
    #[serde(default)]
    activated_at_ms: Option<u64>,
    /// The gateway's `bundle.max_staleness`: past it, it alerts.
    #[serde(default)]
    max_staleness_seconds: Option<f64>,
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
                let ms = clock::parse_rfc3339(t);
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
        if self.max_staleness_seconds.is_some_and(|x| !x.is_finite() || x < 0.0) {
            problems.push("`max_staleness_seconds` must be a number of seconds, 0 or more");
        }
        if !problems.is_empty() {
            return Err(ApiError::BadRequest(problems.join("; ")));
        }
        let health =
            (self.activation.is_some() || self.served.is_some() || self.max_staleness_seconds.is_some()).then(|| {
                json!({
                    "activation": self.activation,
                    "served": self.served,
                    "activated_at": self.activated_at,
                    "activated_at_ms": self.activated_at_ms,
                    "max_staleness_seconds": self.max_staleness_seconds,
                })
                .to_string()
            });
        Ok(GatewayReport {
            health,
            instance: self.instance,
            bundle: self.bundle,
            revision,
            digest,
            last_sync: last_sync_ms.map(clock::rfc3339),
            staleness_seconds: self.staleness_seconds,
            last_report_ms: now_ms,
            token: String::new(),
        })
    }
}

/// `POST /v1/status`: record a gateway's report (latest per instance). Answers 202.
pub(super) async fn status(
    State(state): State<AppState>,
    Reader(who): Reader,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let s = &state.0;
    let req: StatusRequest = read_json(&headers, body).await?;
    let now = clock::now_ms();
    let mut report = req.into_report(now)?;
    if let Err(e) = speaks_for(&who, Some(report.instance.clone())) {
        s.metrics.refuse_status("token_instance");
        return Err(e);
    }
    // With staged rollouts a report decides promotions and rollbacks: a token shared by many
    // gateways could speak for any of them (forge a canary's health), so only a token bound to
    // its instance may report.
    if s.config.rollout.is_some() && who.instance.is_none() {
        s.metrics.refuse_status("unbound_token");
        tracing::warn!(instance = %report.instance, token = %who.name, "status report with a token bound to no instance while rollouts are staged: refused");
        return Err(ApiError::Forbidden(format!(
            "rollouts are staged: a status report needs a token bound to its instance (`instance: {}` in the token's entry); token `{}` is bound to none",
            report.instance, who.name
        )));
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
    if let Some(digest) = &report.digest {
        let activated_at_ms = health_activated_at(report.health.as_deref());
        let sighting = crate::propagation::Sighting {
            instance: &report.instance,
            bundle: &report.bundle,
            digest,
            activated_at_ms,
            reported_at_ms: now,
        };
        observe(s, sighting).await;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response())
}

/// Records a report's sighting for the console's propagation page: asks the store for the
/// revision behind a digest the first time it is seen, and never counts a digest the bundle's
/// history does not hold.
async fn observe(state: &crate::app_state::Shared, s: crate::propagation::Sighting<'_>) {
    let Some(enforced) = state.propagation.sighting(&s) else { return };
    let spread = match state.propagation.tracked(s.bundle, s.digest) {
        Some(spread) => spread,
        None => {
            if !crate::names::is_bundle_name(s.bundle) {
                return;
            }
            let Ok(history) = state.store.revisions(s.bundle).await else { return };
            let Some(info) = history.into_iter().find(|r| r.digest == s.digest) else { return };
            crate::propagation::Spread::new(s.bundle, info.revision, info.digest, info.published_at_ms)
        }
    };
    state.propagation.record(spread, s.instance, enforced);
}

/// When a report's health says the gateway activated its bundle, in Unix milliseconds:
/// `activated_at_ms`, else `activated_at` (whole seconds, from older gateways).
fn health_activated_at(health: Option<&str>) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(health?).ok()?;
    let ms = v["activated_at_ms"]
        .as_u64()
        .or_else(|| v["activated_at"].as_u64().map(|s| s.saturating_mul(1000)))
        .filter(|ms| *ms > 0 && *ms <= 253_402_300_799_999)?;
    i64::try_from(ms).ok()
}

#[derive(Debug, Serialize)]
pub struct FleetMember {
    pub instance: String,
    pub bundle: String,
    pub revision: Option<String>,
    pub digest: Option<String>,
    /// RFC 3339: when the gateway last confirmed that its bundle was current.
    pub last_sync: Option<String>,
    pub staleness_seconds: Option<f64>,
    /// The gateway's own alert threshold (`bundle.max_staleness`), when it reports one.
    pub max_staleness_seconds: Option<f64>,
    /// RFC 3339: when this control plane last heard from the gateway.
    pub last_report: String,
    /// No report for longer than `fleet_silent_after`.
    pub silent: bool,
    /// Its digest is the one its cohort is served.
    pub current: bool,
    /// `canary` or `stable`, when rollouts are staged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cohort: Option<&'static str>,
    /// The revision its cohort is served.
    pub target_revision: Option<String>,
    /// The name of the token its reports come with.
    pub token: String,
    /// What the gateway said of its health (`activation`, `served`), for the console.
    #[serde(skip)]
    pub health: Option<serde_json::Value>,
}

/// `GET /v1/fleet`: every gateway that reported, and how far it is from the active revision.
pub(super) async fn fleet(
    State(state): State<AppState>,
    Reader(who): Reader,
) -> Result<Json<Vec<FleetMember>>, ApiError> {
    members(&state.0, &who).await.map(Json)
}

/// Rows past `fleet_retention` are pruned at most this often by fleet reads (a console tab
/// asks every second; each report prunes too).
const PRUNE_EVERY_MS: i64 = 10_000;

/// Every gateway that reported (rows past `fleet_retention` pruned), of the bundles `who` may
/// touch, as `GET /v1/fleet` and the console show them.
pub async fn members(s: &crate::app_state::Shared, who: &Principal) -> Result<Vec<FleetMember>, ApiError> {
    let now = clock::now_ms();
    let retention = i64::try_from(s.config.fleet_retention.as_millis()).unwrap_or(i64::MAX);
    let last = s.fleet_pruned_ms.load(std::sync::atomic::Ordering::Relaxed);
    if now.saturating_sub(last) >= PRUNE_EVERY_MS {
        s.fleet_pruned_ms.store(now, std::sync::atomic::Ordering::Relaxed);
        s.store.prune_fleet(now.saturating_sub(retention)).await?;
    }
    let mut reports = s.store.fleet().await?;
    reports.retain(|r| who.may_touch(&r.bundle) && now.saturating_sub(r.last_report_ms) <= retention);
    let silent_after = i64::try_from(s.config.fleet_silent_after.as_millis()).unwrap_or(i64::MAX);
    let mut active: std::collections::HashMap<String, Option<Arc<crate::long_poll_hub::Heads>>> =
        std::collections::HashMap::new();
    let mut out = Vec::with_capacity(reports.len());
    for r in reports {
        if !active.contains_key(&r.bundle) {
            // A report may name anything; only well-formed names can have an active revision.
            let heads = match crate::names::is_bundle_name(&r.bundle) {
                true => s.hub.current(&r.bundle).await?.1,
                false => None,
            };
            active.insert(r.bundle.clone(), heads);
        }
        let cohort = s.config.rollout.as_ref().and_then(|c| c.cohort(&r.bundle));
        let canary = cohort.is_some_and(|c| c.contains(&r.instance));
        let target = active.get(&r.bundle).and_then(|h| h.as_ref()).map(|h| h.for_cohort(canary).clone());
        let current = matches!((&r.digest, &target), (Some(d), Some(t)) if *d == t.digest);
        let health: Option<serde_json::Value> = r.health.as_deref().and_then(|h| serde_json::from_str(h).ok());
        out.push(FleetMember {
            max_staleness_seconds: health.as_ref().and_then(|h| h["max_staleness_seconds"].as_f64()),
            health,
            cohort: cohort.map(|_| if canary { "canary" } else { "stable" }),
            target_revision: target.map(|t| t.revision.clone()),
            last_report: clock::rfc3339(r.last_report_ms),
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_is_measured_to_the_millisecond_when_the_gateway_says_it() {
        let h = |v: serde_json::Value| health_activated_at(Some(&v.to_string()));
        assert_eq!(
            h(json!({"activated_at": 1_700_000_000u64, "activated_at_ms": 1_700_000_000_420u64})),
            Some(1_700_000_000_420)
        );
        assert_eq!(
            h(json!({"activated_at": 1_700_000_000u64})),
            Some(1_700_000_000_000),
            "older gateways: whole seconds"
        );
        assert_eq!(h(json!({"activated_at": 0})), None);
        assert_eq!(h(json!({"activated_at_ms": u64::MAX})), None, "past year 9999 is no time");
        assert_eq!(health_activated_at(Some("not json")), None);
    }
}
