//! The decisions page: the decision log filtered by bundle, route, decision, status, time, text
//! and decision id, each event with its input (as the gateway masked it) and the shadow rule's
//! agreement counts. Needs a `logs` token, as `GET /v1/logs` does: events hold requests' inputs.
//! The store filters by bundle, route, decision, decision id and time; status and text are
//! matched here over the newest [`SCAN`] events the store returns. One search holds at most
//! [`SCAN`] events of at most [`MAX_EVENT_BYTES`] each: a larger event (the sink takes what a
//! batch may hold) is left to `GET /v1/logs`, and the page says so.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::Html;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::{page, ConsoleError, Viewer};
use crate::api::logs::{event_query, ListParams};
use crate::app_state::AppState;
use crate::auth::Scope;
use crate::clock;

/// Events read from the store per search, and shown at most.
const SCAN: u32 = 500;
const SHOWN: usize = 100;
/// The largest event a search reads (bytes of its stored text).
const MAX_EVENT_BYTES: u32 = 64 * 1024;

#[derive(Deserialize, Default)]
pub(super) struct Filter {
    #[serde(default)]
    bundle: String,
    #[serde(default)]
    route: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    id: String,
}

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// `GET /ui/decisions?bundle=&route=&decision=&status=&since=&until=&q=&id=`.
pub(super) async fn page(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(f): Query<Filter>,
) -> Result<Html<String>, ConsoleError> {
    viewer.needs(Scope::Logs, "the decision log")?;
    let status = match some(&f.status).map(|s| s.parse::<u16>()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return Err(ConsoleError::BadRequest("`status` must be an HTTP status such as 403".into())),
    };
    let since = some(&f.since).or_else(|| some(&f.id).is_none().then(|| "1h".to_owned()));
    let params = ListParams {
        bundle: some(&f.bundle),
        route: some(&f.route),
        decision: some(&f.decision),
        revision: None,
        since,
        until: some(&f.until),
        limit: Some(SCAN.to_string()),
    };
    if f.id.len() > 256 {
        return Err(ConsoleError::BadRequest("a decision id is at most 256 characters".into()));
    }
    let mut query = event_query(params, &viewer.0, &state.0, clock::now_ms())?;
    query.decision_id = some(&f.id);
    query.max_event_bytes = Some(MAX_EVENT_BYTES);
    let raw = state.0.store.events(&query).await?;
    let text = f.q.trim().to_lowercase();
    let events: Vec<Value> = raw
        .iter()
        .filter(|e| text.is_empty() || e.to_lowercase().contains(&text))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|e| status.is_none_or(|s| e["status"].as_u64() == Some(u64::from(s))))
        .collect();
    let body = html! {
        (form(&f))
        p.summary { strong.count { (events.len()) } " matching event" @if events.len() != 1 { "s" }
            " among the newest " (raw.len()) " the store returned"
            @if events.len() > SHOWN { "; the newest " (SHOWN) " are shown" } ". Events over "
            (MAX_EVENT_BYTES / 1024) " KiB are not searched here: " code { "GET /v1/logs" } " has them." }
        (shadow_counts(&events))
        @for e in events.iter().take(SHOWN) { (event(e)) }
    };
    Ok(page::layout("Decisions", &viewer.0, body))
}

fn form(f: &Filter) -> Markup {
    let text = |label: &str, name: &str, value: &str, hint: &str| {
        html! { label { (label) " " input name=(name) value=(value) placeholder=(hint); } " " }
    };
    html! {
        form.filter method="get" action="/ui/decisions" {
            (text("Bundle", "bundle", &f.bundle, "main"))
            (text("Route", "route", &f.route, "orders"))
            label { "Decision " select name="decision" {
                @for d in ["", "allow", "deny", "error"] { option value=(d) selected[f.decision == d] { (if d.is_empty() { "any" } else { d }) } }
            } } " "
            (text("Status", "status", &f.status, "403"))
            (text("Since", "since", &f.since, "1h (default)"))
            (text("Until", "until", &f.until, "now"))
            (text("Text", "q", &f.q, "any text in the event"))
            (text("Decision id", "id", &f.id, "x-decision-id"))
            button type="submit" { "Search" }
        }
    }
}

/// How often each route's shadow rule agreed and disagreed with the enforced one.
fn shadow_counts(events: &[Value]) -> Markup {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in events {
        if let Some(a) = e["shadow"]["agreement"].as_str() {
            let route = e["route"].as_str().unwrap_or("-").to_owned();
            *counts.entry((route, a.to_owned())).or_default() += 1;
        }
    }
    html! {
        @if !counts.is_empty() {
            table.shadow {
                thead { tr { th { "Route" } th { "Shadow rule" } th { "Events" } } }
                tbody { @for ((route, agreement), n) in &counts {
                    tr { td { code { (route) } } td class={ "agreement " (agreement) } { (agreement) } td { (n) } }
                } }
            }
        }
    }
}

fn event(e: &Value) -> Markup {
    let s = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let id = s(&e["decision_id"]);
    let decision = s(&e["decision"]);
    let request = &e["input"]["request"];
    let reason = e["result"]["reason"].as_str().or(e["error"].as_str()).unwrap_or("");
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    html! {
        details.event data-decision-id=(id) id={ "d-" (id) } {
            summary {
                span.time { (s(&e["timestamp"])) } " "
                span class={ "decision " (decision) } { (decision) } " "
                span.status { (s(&e["status"])) } " "
                code.route { (s(&e["route"])) } " "
                span.request { (s(&request["method"])) " " (s(&request["path"])) } " "
                a.id href={ "/ui/decisions?id=" (page::q(&id)) } title="this decision alone" { (id) }
                @if !reason.is_empty() { " " span.reason { (reason) } }
            }
            dl {
                dt { "Bundle" } dd { code { (s(&e["bundles"])) } }
                dt { "Policy" } dd { code { (s(&e["path"])) } }
                @if !e["shadow"].is_null() { dt { "Shadow" } dd { code { (s(&e["shadow"])) } } }
                @if !e["masked"].is_null() { dt { "Masked" } dd { code { (s(&e["masked"])) } } }
                @if !e["erased"].is_null() { dt { "Erased" } dd { code { (s(&e["erased"])) } } }
            }
            h4 { "Input, as logged" } pre.json { (pretty(&e["input"])) }
            h4 { "Result" } pre.json { (pretty(if e["result"].is_null() { &e["error"] } else { &e["result"] })) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_reason_or_path_in_a_logged_event_is_text() {
        let e = serde_json::json!({
            "decision_id": "\"><script>alert(1)</script>", "decision": "deny", "status": 403,
            "route": "<img src=x onerror=alert(1)>",
            "input": { "request": { "method": "GET", "path": "/<svg onload=alert(1)>" } },
            "result": { "reason": "<script>alert(2)</script>" }
        });
        let html = event(&e).into_string();
        assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("<svg"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{html}");
    }
}
