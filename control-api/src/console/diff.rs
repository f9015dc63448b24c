//! The diff page: what changed between two revisions of a bundle (routes and upstreams added,
//! removed or changed; Rego files as a unified diff; data sizes), computed by
//! [`policy_bundles::diff`], the same code `bundlectl diff` prints.

use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::{html, Markup};
use policy_bundles::diff::{BundleDiff, ChangeKind, FieldChange, ItemChange};
use serde::Deserialize;

use super::bundles::bundle_name;
use super::{page, ConsoleError, Viewer};
use crate::api::ApiError;
use crate::app_state::AppState;

#[derive(Deserialize)]
pub(super) struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /ui/bundles/{name}/diff?from=A&to=B`. One diff at a time per replica (a second is
/// answered 503 at once): reading two bundles is a validation's worth of work, and a read token
/// must not be able to hold memory or CPU that publishes need.
pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<Html<String>, ConsoleError> {
    bundle_name(&viewer, &name)?;
    let (Some(from_rev), Some(to_rev)) = (q.from, q.to) else {
        return Err(ConsoleError::BadRequest("a diff needs two revisions: `from` and `to`".into()));
    };
    let s = &state.0;
    let Ok(permit) = s.diffs.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable("another diff is being computed; try again in a moment".into()).into());
    };
    let revisions = s.store.revisions(&name).await?;
    let digest_of = |rev: &str| {
        revisions
            .iter()
            .find(|r| r.revision == rev)
            .map(|r| r.digest.clone())
            .ok_or_else(|| ConsoleError::NotFound(format!("bundle `{name}` has no revision `{rev}`")))
    };
    let (from, to) = (digest_of(&from_rev)?, digest_of(&to_rev)?);
    let missing = || ConsoleError::NotFound("a revision's content is gone from the store".into());
    let old = s.store.content(&name, &from).await?.ok_or_else(missing)?;
    let new = s.store.content(&name, &to).await?.ok_or_else(missing)?;
    let limits = state.limits();
    let diff = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let old = policy_bundles::Bundle::from_tar_gz(&old, &limits)?;
        let new = policy_bundles::Bundle::from_tar_gz(&new, &limits)?;
        Ok::<_, policy_bundles::BundleErrors>(policy_bundles::diff::diff(&old, &new))
    })
    .await
    .map_err(ApiError::from)?
    // Stored revisions were validated at publish: one that cannot be read is the store's fault.
    .map_err(|e| ApiError::Internal(format!("a stored revision could not be read: {e}")))?;
    let title = format!("{name}: {from_rev} → {to_rev}");
    Ok(page::layout(&title, &viewer.0, render(&name, &diff)))
}

fn kind(k: &ChangeKind) -> (&'static str, &'static str) {
    match k {
        ChangeKind::Added => ("added", "+"),
        ChangeKind::Removed => ("removed", "−"),
        ChangeKind::Changed => ("changed", "~"),
    }
}

/// The diff as HTML: every name, value and line escaped.
pub(super) fn render(name: &str, d: &BundleDiff) -> Markup {
    html! {
        p { a href={ "/ui/bundles/" (page::q(name)) } { "Back to " code { (name) } } }
        @if d.is_empty() { p.nodiff { "No differences." } }
        @if !d.routes.is_empty() { h2 { "Routes" } (items(&d.routes)) }
        @if !d.upstreams.is_empty() { h2 { "Upstreams" } (items(&d.upstreams)) }
        @if !d.settings.is_empty() { h2 { "Other settings" } (fields(&d.settings)) }
        @if !d.rego.is_empty() {
            h2 { "Rego" }
            @for f in &d.rego {
                @let (class, _) = kind(&f.kind);
                h3 { code { (f.path) } " " span class={ "kind " (class) } { (class) } }
                pre.diff { @for line in f.unified.lines() {
                    @let c = match line.as_bytes().first() {
                        Some(b'+') if !line.starts_with("+++") => "add",
                        Some(b'-') if !line.starts_with("---") => "del",
                        Some(b'@') => "hunk",
                        _ => "ctx",
                    };
                    span class=(c) { (line) } "\n"
                } }
            }
        }
        @if !d.data.is_empty() {
            h2 { "Data" }
            table.data {
                thead { tr { th { "File" } th { "Change" } th { "Before" } th { "After" } } }
                tbody { @for c in &d.data {
                    @let (class, _) = kind(&c.kind);
                    tr { td { code { (c.path) } } td class={ "kind " (class) } { (class) }
                         td { (c.old_bytes.map(page::bytes).unwrap_or_default()) }
                         td { (c.new_bytes.map(page::bytes).unwrap_or_default()) } }
                } }
            }
        }
    }
}

fn items(list: &[ItemChange]) -> Markup {
    html! {
        ul.items { @for i in list {
            @let (class, sign) = kind(&i.kind);
            li class={ "item " (class) } {
                span.sign { (sign) } " " code.name { (i.name) } " " span class={ "kind " (class) } { (class) }
                @if !i.fields.is_empty() { (fields(&i.fields)) }
            }
        } }
    }
}

fn fields(list: &[FieldChange]) -> Markup {
    html! {
        table.fields {
            thead { tr { th { "Key" } th { "Before" } th { "After" } } }
            tbody { @for f in list {
                tr { td { code { (f.key) } } td.old { code { (f.old.as_deref().unwrap_or("—")) } }
                     td.new { code { (f.new.as_deref().unwrap_or("—")) } } }
            } }
        }
    }
}
