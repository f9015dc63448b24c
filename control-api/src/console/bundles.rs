//! The bundle pages: which bundles there are; one bundle's revision history (who published,
//! size, digest, forced publishes and why), its rollout (cohort, bake timer, canary health, why
//! it was rolled back) refreshed every second, and the rollback and promotion a publish token
//! may do, each behind a confirmation page and a same-origin `POST`.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::fleet::staleness_class;
use super::{page, same_origin, ConsoleError, Viewer};
use crate::api::fleet::{members, FleetMember};
use crate::app_state::AppState;
use crate::auth::Scope;
use crate::clock;
use crate::config::Cohort;
use crate::store::{RevisionInfo, Rollout, CANARY};

/// The bundle a page is about, once its name and the token's access are checked.
pub(super) fn bundle_name(viewer: &Viewer, name: &str) -> Result<(), ConsoleError> {
    viewer.needs(Scope::Read, "a bundle's pages")?;
    if !crate::names::is_bundle_name(name) {
        return Err(ConsoleError::BadRequest("that is not a bundle name".into()));
    }
    crate::api::check_access(&viewer.0, name).map_err(|e| ConsoleError::Forbidden(e.to_string()))
}

#[derive(Deserialize)]
pub(super) struct IndexQuery {
    name: Option<String>,
}

/// `GET /ui/bundles`: the bundles this replica knows of (served, reported by a gateway, staged),
/// and a box to open any other by name.
pub(super) async fn index(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<IndexQuery>,
) -> Result<Response, ConsoleError> {
    viewer.needs(Scope::Read, "the bundles")?;
    if let Some(name) = q.name.filter(|n| crate::names::is_bundle_name(n)) {
        return Ok(Redirect::to(&format!("/ui/bundles/{name}")).into_response());
    }
    let s = &state.0;
    let mut names: BTreeSet<String> = s.hub.served().into_iter().map(|(b, _)| b).collect();
    names
        .extend(members(s, &viewer.0).await?.into_iter().map(|m| m.bundle).filter(|b| crate::names::is_bundle_name(b)));
    if let Some(r) = &s.config.rollout {
        names.extend(r.bundles.keys().cloned());
    }
    names.extend(viewer.0.bundles.iter().flatten().cloned());
    names.retain(|n| viewer.0.may_touch(n));
    let body = html! {
        ul.bundles { @for n in &names { li { a href={ "/ui/bundles/" (n) } { code { (n) } } } } }
        form method="get" action="/ui/bundles" {
            label for="name" { "Open bundle " } input #name name="name" required; button type="submit" { "Open" }
        }
    };
    Ok(page::layout("Bundles", &viewer.0, body).into_response())
}

/// `GET /ui/bundles/{name}`.
pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Result<Html<String>, ConsoleError> {
    bundle_name(&viewer, &name)?;
    let s = &state.0;
    let revisions = s.store.revisions(&name).await?;
    if revisions.is_empty() {
        return Err(ConsoleError::NotFound(format!("no bundle named `{name}` has been published")));
    }
    let live = rollout(&state, &viewer, &name).await?;
    let body = html! {
        section {
            h2 { "Rollout" }
            div #rollout data-refresh={ "/ui/bundles/" (name) "/rollout/live" } { (live) }
        }
        section { h2 { "Compare two revisions" } (diff_form(&name, &revisions)) }
        section { h2 { "Revisions" } (revision_table(&viewer, &name, &revisions)) }
    };
    Ok(page::layout(&format!("Bundle {name}"), &viewer.0, body))
}

/// `GET /ui/bundles/{name}/rollout/live`: the rollout's fragment alone.
pub(super) async fn rollout_live(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Result<Html<String>, ConsoleError> {
    bundle_name(&viewer, &name)?;
    Ok(Html(rollout(&state, &viewer, &name).await?.into_string()))
}

/// Where the bundle's rollout stands: the revision each cohort is served, the latest rollout,
/// its bake timer and the canaries' health.
async fn rollout(state: &AppState, viewer: &Viewer, name: &str) -> Result<Markup, ConsoleError> {
    let s = &state.0;
    let (_, heads) = s.hub.current(name).await?;
    let rollouts = s.store.rollouts(name, 10).await?;
    let latest = rollouts.first();
    let canaries: Vec<FleetMember> =
        members(s, &viewer.0).await?.into_iter().filter(|m| m.bundle == name && m.cohort == Some("canary")).collect();
    let now = clock::now_ms();
    let bake = s.config.rollout.as_ref().map(|c| c.bake);
    let cohort = match s.config.rollout.as_ref().and_then(|c| c.cohort(name)) {
        None => "none: every publish goes to every gateway at once".to_owned(),
        Some(Cohort::Instances(list)) => list.join(", "),
        Some(Cohort::Percent(p)) => format!("{p}% of instances (by the hash of their names)"),
    };
    Ok(html! {
        @if let Some(h) = &heads {
            p { "Stable: " code.stable { (h.stable.revision) }
                @if let Some(c) = &h.canary { " · canary: " code.canary { (c.revision) } } }
        }
        p.cohort { "Canary cohort: " span { (cohort) } }
        @match latest {
            None => p { "No staged rollout yet." },
            Some(r) => {
                p.rollout {
                    "Latest rollout: " code { (r.revision) } " (from " code { (r.previous) } ") "
                    span class={ "rollout-state " (r.state) } { (r.state.replace('_', " ")) }
                    " · started " (page::ago(r.started_at_ms, now))
                    @if let (true, Some(b)) = (r.state == CANARY, bake) {
                        " · " span.bake { (bake_left(r, &canaries, b, now)) }
                    }
                }
                @if let Some(why) = &r.reason { p.reason { "Why it ended: " span.why { (why) } } }
                @if r.state == CANARY && viewer.may(Scope::Publish) {
                    p { a.button href={ "/ui/bundles/" (name) "/promote?revision=" (page::q(&r.revision)) } { "Promote now…" } }
                }
            }
        }
        @if !canaries.is_empty() { (canary_table(&canaries)) }
        @if !rollouts.is_empty() { h3 { "Recent rollouts" } (history(&rollouts)) }
    })
}

/// Where the bake stands, as the rollout supervisor counts it: from each canary's activation of
/// the candidate (never before the rollout began), until every canary's has lasted `bake`.
fn bake_left(r: &Rollout, canaries: &[FleetMember], bake: std::time::Duration, now: i64) -> String {
    if canaries.is_empty() {
        return "waiting for the canaries' first reports".into();
    }
    let mut ends = 0i64;
    for c in canaries {
        let activated = c.health.as_ref().and_then(|h| {
            h["activated_at_ms"]
                .as_i64()
                .or_else(|| h["activated_at"].as_i64().map(|s| s.saturating_mul(1000).saturating_add(999)))
        });
        match activated {
            Some(at) if c.revision.as_deref() == Some(r.revision.as_str()) => {
                let bake_ms = i64::try_from(bake.as_millis()).unwrap_or(i64::MAX);
                ends = ends.max(at.max(r.started_at_ms).saturating_add(bake_ms));
            }
            _ => return format!("waiting for canary {} to activate {}", c.instance, r.revision),
        }
    }
    format!("bake ends in {}", page::seconds(ends.saturating_sub(now).max(0)))
}

fn canary_table(canaries: &[FleetMember]) -> Markup {
    html! {
        table.canaries {
            thead { tr { th { "Canary" } th { "Revision" } th { "Activation" } th { "Requests" } th { "Errors" }
                         th { "p99" } th { "Staleness" } th { "Silent" } } }
            tbody { @for m in canaries {
                @let h = m.health.as_ref();
                @let served = h.map(|h| &h["served"]);
                tr {
                    td { code { (m.instance) } }
                    td { code { (m.revision.as_deref().unwrap_or("(none)")) } }
                    td { (h.and_then(|h| h["activation"]["outcome"].as_str()).unwrap_or("—"))
                         @if let Some(m) = h.and_then(|h| h["activation"]["message"].as_str()) { ": " (m) } }
                    td { (served.and_then(|s| s["requests"].as_u64()).unwrap_or(0)) }
                    td { (served.and_then(|s| s["errors"].as_u64()).unwrap_or(0)) }
                    td { @match served.and_then(|s| s["p99_ms"].as_f64()) { Some(p) => { (format!("{p:.1} ms")) }, None => { "—" } } }
                    td class={ "staleness " (staleness_class(m)) } { (m.staleness_seconds.map_or("—".into(), |s| format!("{s:.0} s"))) }
                    td { @if m.silent { "silent" } @else { "no" } }
                }
            } }
        }
    }
}

fn history(rollouts: &[Rollout]) -> Markup {
    html! {
        table.rollouts {
            thead { tr { th { "Revision" } th { "From" } th { "State" } th { "Started" } th { "Ended" } th { "Why" } } }
            tbody { @for r in rollouts {
                tr {
                    td { code { (r.revision) } } td { code { (r.previous) } }
                    td class={ "rollout-state " (r.state) } { (r.state.replace('_', " ")) }
                    td { (page::time(r.started_at_ms)) }
                    td { (r.ended_at_ms.map(page::time).unwrap_or_default()) }
                    td.why { (r.reason.as_deref().unwrap_or("")) }
                }
            } }
        }
    }
}

fn diff_form(name: &str, revisions: &[RevisionInfo]) -> Markup {
    let older = revisions.get(1).or(revisions.first()).map(|r| r.revision.as_str()).unwrap_or_default();
    let newer = revisions.first().map(|r| r.revision.as_str()).unwrap_or_default();
    html! {
        form.diff method="get" action={ "/ui/bundles/" (name) "/diff" } {
            label for="from" { "From " }
            select #from name="from" { @for r in revisions { option value=(r.revision) selected[r.revision == older] { (r.revision) } } }
            label for="to" { " to " }
            select #to name="to" { @for r in revisions { option value=(r.revision) selected[r.revision == newer] { (r.revision) } } }
            button type="submit" { "Show the diff" }
        }
    }
}

fn revision_table(viewer: &Viewer, name: &str, revisions: &[RevisionInfo]) -> Markup {
    let publish = viewer.may(Scope::Publish);
    html! {
        table.revisions {
            thead { tr { th { "Revision" } th { "Published" } th { "By" } th { "Size" } th { "Digest" } th { "Forced" } th {} } }
            tbody { @for (i, r) in revisions.iter().enumerate() {
                tr.active[r.active] data-revision=(r.revision) {
                    td { code { (r.revision) } @if r.active { " " span.badge { "active" } } }
                    td { (page::time(r.published_at_ms)) }
                    td { (r.published_by) }
                    td { (page::bytes(r.size)) }
                    td { code title=(r.digest) { (page::short(&r.digest)) } }
                    td.forced { (r.forced_reason.as_deref().unwrap_or("")) }
                    td {
                        @if let Some(prev) = revisions.get(i + 1) {
                            a href={ "/ui/bundles/" (name) "/diff?from=" (page::q(&prev.revision)) "&to=" (page::q(&r.revision)) } { "diff" }
                        }
                        @if publish && !r.active {
                            " " a.button.rollback href={ "/ui/bundles/" (name) "/rollback?to=" (page::q(&r.revision)) } { "Roll back to this…" }
                        }
                    }
                }
            } }
        }
    }
}

/// A publish token on a bundle it may touch, for `what` (rolling back, promoting); with
/// `headers`, a POST, which must also come from this origin.
fn publisher(viewer: &Viewer, name: &str, what: &str, headers: Option<&HeaderMap>) -> Result<(), ConsoleError> {
    if let Some(h) = headers {
        same_origin(h)?;
    }
    bundle_name(viewer, name)?;
    viewer.needs(Scope::Publish, what)
}

/// A confirmation page's form: POSTs `field=value` to the bundle's `action`, or goes back.
fn confirm_form(name: &str, action: &str, field: &str, value: &str, button: &str) -> Markup {
    html! {
        form method="post" action={ "/ui/bundles/" (name) "/" (action) } {
            input type="hidden" name=(field) value=(value);
            button.danger type="submit" { (button) }
            " " a href={ "/ui/bundles/" (name) } { "Cancel" }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RollbackForm {
    to: String,
}

/// `GET /ui/bundles/{name}/rollback?to=R`: asks for confirmation; changes nothing.
pub(super) async fn confirm_rollback(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(f): Query<RollbackForm>,
) -> Result<Html<String>, ConsoleError> {
    publisher(&viewer, &name, "rolling back", None)?;
    let revisions = state.0.store.revisions(&name).await?;
    let active = revisions.iter().find(|r| r.active).map(|r| r.revision.clone()).unwrap_or_default();
    if !revisions.iter().any(|r| r.revision == f.to) {
        return Err(ConsoleError::NotFound(format!("bundle `{name}` has no revision `{}`", f.to)));
    }
    let body = html! {
        p.confirm { "Make revision " code { (f.to) } " of " code { (name) } " active again, in place of "
                    code { (active) } "? Every gateway will be served it." }
        (confirm_form(&name, "rollback", "to", &f.to, "Roll back"))
    };
    Ok(page::layout("Confirm the rollback", &viewer.0, body))
}

/// `POST /ui/bundles/{name}/rollback` (`to=R`): publish tokens only, from this origin.
pub(super) async fn rollback(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<RollbackForm>,
) -> Result<Response, ConsoleError> {
    publisher(&viewer, &name, "rolling back", Some(&headers))?;
    crate::api::rollouts::roll_back(&state, &viewer.0, &name, &f.to).await?;
    Ok(Redirect::to(&format!("/ui/bundles/{name}")).into_response())
}

#[derive(Deserialize)]
pub(super) struct PromoteForm {
    revision: String,
}

/// `GET /ui/bundles/{name}/promote?revision=R`: asks for confirmation; changes nothing.
pub(super) async fn confirm_promote(
    viewer: Viewer,
    Path(name): Path<String>,
    Query(f): Query<PromoteForm>,
) -> Result<Html<String>, ConsoleError> {
    publisher(&viewer, &name, "promoting", None)?;
    let body = html! {
        p.confirm { "Promote revision " code { (f.revision) } " of " code { (name) }
                    " to every gateway now, before its canary's bake ends?" }
        (confirm_form(&name, "promote", "revision", &f.revision, "Promote"))
    };
    Ok(page::layout("Confirm the promotion", &viewer.0, body))
}

/// `POST /ui/bundles/{name}/promote` (`revision=R`): publish tokens only, from this origin.
pub(super) async fn promote(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<PromoteForm>,
) -> Result<Response, ConsoleError> {
    publisher(&viewer, &name, "promoting", Some(&headers))?;
    if !crate::rollout::promote_now(&state, &name, &f.revision, &viewer.0.name).await? {
        return Err(ConsoleError::Conflict(format!(
            "revision `{}` of `{name}` is not in a canary phase any more: nothing was promoted",
            f.revision
        )));
    }
    Ok(Redirect::to(&format!("/ui/bundles/{name}")).into_response())
}
