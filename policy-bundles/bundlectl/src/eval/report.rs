//! What `bundlectl eval` prints: one JSON object (`--json`) and the same as text, read from it.

use policy_bundles::printable::{printable, printable_lines};
use std::fmt::Write;

use policy_bundles::authorize::{self, Outcome, Verdict};
use policy_bundles::{Decision, Snapshot};
use serde_json::{json, Map, Value as Json};

/// The gateway's own answer to a request it did not forward: its status, its `error` text and
/// the reason it gives.
pub fn own_answer(status: u16, error: &str, reason: Option<String>) -> Json {
    json!({
        "allowed": false, "status": status, "reason": reason, "error": error,
        "headers": {}, "response_headers": {}, "rate_limit": null,
    })
}

/// The route `route_ix` as printed: its name, rule and upstream.
pub fn route(snap: &Snapshot, route_ix: Option<usize>) -> Json {
    let Some(r) = route_ix.and_then(|i| snap.routes.get(i)) else { return Json::Null };
    let upstream = snap.upstreams.get(r.upstream).map(|u| u.name.as_str());
    json!({"name": r.name, "policy": snap.rule(r.policy), "upstream": upstream, "fail_open": r.fail_open})
}

/// What the gateway does with `outcome`: the `decision` object, the stage that decided, and how
/// long the rule took (`None`: it did not run).
pub fn decision(outcome: &Outcome) -> (Json, &'static str, Option<std::time::Duration>) {
    match outcome {
        Outcome::NoRoute => (own_answer(404, "no route matches this request", None), "routing", None),
        Outcome::Refused { refusal, .. } => {
            (own_answer(refusal.status(), refusal.error(), Some(refusal.message().into())), "canonicalization", None)
        }
        Outcome::Unauthenticated { error, .. } => {
            (own_answer(401, "invalid bearer token", Some(error.to_string())), "authentication", None)
        }
        Outcome::Evaluated { verdict, took, .. } => (verdict_json(verdict), "policy", Some(*took)),
    }
}

fn verdict_json(verdict: &Verdict) -> Json {
    match verdict {
        Verdict::Allow(d, how) | Verdict::Deny(d, how) => {
            let mut j = decision_json(d);
            j["cache"] = json!(format!("{how:?}").to_lowercase());
            j
        }
        Verdict::FailedOpen(e) => json!({
            "allowed": true, "status": null, "reason": null, "headers": {}, "response_headers": {},
            "rate_limit": null, "rule_error": e.to_string(),
        }),
        Verdict::Failed(e) => {
            let mut j = own_answer(403, "forbidden", Some(authorize::error_reason(e).into()));
            j["rule_error"] = json!(e.to_string());
            j
        }
    }
}

fn decision_json(d: &Decision) -> Json {
    let pairs = |h: &[(String, String)]| h.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>();
    let mut j = json!({
        "allowed": d.allow, "status": if d.allow { Json::Null } else { json!(d.status) },
        "reason": d.reason, "headers": pairs(&d.headers), "response_headers": pairs(&d.response_headers),
        "rate_limit": d.rate_limit,
    });
    if let Some(body) = &d.body {
        j["body"] = json!(body);
    }
    if !d.remove_headers.is_empty() {
        j["remove_headers"] = json!(d.remove_headers);
    }
    if !d.query_set.is_empty() {
        j["query_set"] = d.query_set.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>().into();
    }
    if !d.query_remove.is_empty() {
        j["query_remove"] = json!(d.query_remove);
    }
    j
}

/// The report as text: the request, the route, the decision, the time, and the input when the
/// report holds one.
pub fn to_text(r: &Json) -> String {
    let mut out = String::new();
    let q = &r["request"];
    let query = q["query"].as_str().map(|q| format!("?{}", printable(q))).unwrap_or_default();
    let _ = writeln!(
        out,
        "request:  {} {}://{}{}{query} (client {})",
        text(&q["method"]),
        text(&q["scheme"]),
        text(&q["host"]),
        text(&q["path"]),
        text(&q["client_ip"])
    );
    for h in q["removed_headers"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  removed header {}: {}", text(&h["name"]), text(&h["why"]));
    }
    let route = &r["route"];
    if route.is_null() && r["stage"] == "canonicalization" {
        let _ = writeln!(out, "route:    none looked up: the request was refused before routing");
    } else if route.is_null() {
        let _ = writeln!(out, "route:    none matched");
    } else {
        let _ = writeln!(
            out,
            "route:    {} (rule {}, upstream {})",
            text(&route["name"]),
            text(&route["policy"]),
            text(&route["upstream"])
        );
    }
    decision_text(&mut out, &r["decision"], r["stage"].as_str().unwrap_or_default(), route);
    match r["took_us"].as_u64() {
        Some(us) => {
            let cache = r["decision"]["cache"].as_str().map(|c| format!(" (decision cache: {c})")).unwrap_or_default();
            let _ = writeln!(out, "evaluated in {}.{:03} ms{cache}", us / 1000, us % 1000);
        }
        None => out.push_str("not evaluated: the rule did not run\n"),
    }
    match r.get("input") {
        Some(Json::Null) => out.push_str("input: none (the rule did not run)\n"),
        Some(input) => {
            let _ =
                writeln!(out, "input:\n{}", printable_lines(&serde_json::to_string_pretty(input).unwrap_or_default()));
        }
        None => {}
    }
    out
}

fn decision_text(out: &mut String, d: &Json, stage: &str, route: &Json) {
    let who = match stage {
        "policy" => "by the rule".to_owned(),
        "authentication" => "before the rule ran (the bearer token was refused)".to_owned(),
        "routing" => "by the gateway (no route)".to_owned(),
        other => format!("by the gateway ({other})"),
    };
    if d["allowed"] == true {
        let _ = writeln!(out, "decision: allowed: forwarded to upstream {}", text(&route["upstream"]));
    } else {
        let error = d["error"].as_str().map(|e| format!(": {}", printable(e))).unwrap_or_default();
        let _ = writeln!(out, "decision: denied {} {who}{error}", d["status"]);
    }
    if let Some(reason) = d["reason"].as_str() {
        let _ = writeln!(out, "  reason: {}", printable(reason));
    }
    if let Some(e) = d["rule_error"].as_str() {
        let _ = writeln!(out, "  rule error: {}", printable(e));
    }
    for (key, title) in [("headers", "headers to the upstream"), ("response_headers", "response_headers")] {
        let Some(h) = d[key].as_object().filter(|h| !h.is_empty()) else { continue };
        let _ = writeln!(out, "  {title}:");
        for (k, v) in h {
            let _ = writeln!(out, "    {}: {}", printable(k), text(v));
        }
    }
    for key in ["rate_limit", "body", "remove_headers", "query_set", "query_remove"] {
        if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
            let _ = writeln!(out, "  {key}: {}", text(v));
        }
    }
}

/// A JSON value as text: strings without their quotes, control characters escaped (no bundle
/// or argument writes escape sequences to the terminal; JSON's own escaping leaves C1 raw).
fn text(v: &Json) -> String {
    match v {
        Json::String(s) => printable(s).into_owned(),
        Json::Null => "-".into(),
        other => printable(&other.to_string()).into_owned(),
    }
}
