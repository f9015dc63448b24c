//! Replay: logged decisions (decision-log events, OPA's schema as gateways ship them) decided
//! again with a candidate bundle exactly as a gateway would, and what would change.
//!
//! For each event: the candidate's route table routes the logged request (host, path,
//! method); no route is a 404. The candidate route's rule is asked with the logged input (the
//! whole input the gateway built, with `route` set to the candidate's route name). Its answer is
//! compared with the logged one as the gateway's shadow rules are
//! ([`crate::authorize::same_effect`]): allow against deny, the deny status, the upstream and
//! response headers; the reason text is not compared.
//!
//! What cannot be replayed is reported, never guessed: an event without an input, one
//! whose `erased` or `masked` names a part of the input the candidate's rule may read (an
//! erased header the rule does not read is fine: credentials are erased from every event), and
//! a request the gateway refused for its credentials before any rule was asked (`result` with
//! `"evaluated": false`: the token is not logged, so no candidate's trust roots can check it).
//! The logged `jwt` is what the logging gateway verified: replay uses its claims as they are and
//! cannot check them against the candidate's trust roots.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use crate::decision::Decision;
use crate::snapshot::Snapshot;

/// What a decision did to a request, as far as replay compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Decided(Decision),
    /// The rule failed (a deny, or an allow on a `fail_open` route).
    Error,
    /// No route matches: a 404.
    NoRoute,
}

impl Effect {
    /// A short description: `allow`, `deny 403`, `error`, `no route (404)`.
    pub fn describe(&self) -> String {
        match self {
            Effect::Decided(d) if d.allow => "allow".into(),
            Effect::Decided(d) => format!("deny {}", d.status),
            Effect::Error => "error".into(),
            Effect::NoRoute => "no route (404)".into(),
        }
    }
}

/// What a candidate would change about one logged decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    AllowToDeny,
    DenyToAllow,
    /// Both deny, with another status.
    Status,
    /// The same allow or deny, with other upstream or response headers (or, from an
    /// OPA-Envoy result, other header removals or query rewrites).
    Headers,
    /// The same deny and headers, with another body (an OPA-Envoy result's `body`).
    Body,
    /// The rule fails where it decided, or decides where it failed.
    Error,
    /// The candidate routes the request to another route, or to none.
    Route,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::AllowToDeny => "allow→deny",
            Kind::DenyToAllow => "deny→allow",
            Kind::Status => "status",
            Kind::Headers => "headers",
            Kind::Body => "body",
            Kind::Error => "error",
            Kind::Route => "route",
        }
    }
}

/// One event, replayed. (Made and consumed one at a time by `bundlectl replay`: its size does
/// not matter.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Replayed {
    Unchanged,
    Changed { kind: Kind, before: Effect, after: Effect, route_after: Option<String> },
    NotReplayable(String),
}

/// What the logged event says was decided.
fn logged_effect(event: &Json) -> Effect {
    match event["decision"].as_str() {
        Some("error") => Effect::Error,
        _ => Effect::Decided(decision_of(&event["result"])),
    }
}

/// A decision's object form (as logged in `result`) back into a [`Decision`].
fn decision_of(result: &Json) -> Decision {
    let pairs = |v: &Json| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = v
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        p.sort();
        p
    };
    let allow = result.as_bool().or_else(|| result["allow"].as_bool()).unwrap_or(false);
    Decision {
        allow,
        status: result["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(403),
        headers: pairs(&result["headers"]),
        response_headers: pairs(&result["response_headers"]),
        reason: result["reason"].as_str().map(str::to_owned),
        remove_headers: strings(&result["request_headers_to_remove"]),
        body: result["body"].as_str().map(str::to_owned),
        query_set: result["query_parameters_to_set"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
            .unwrap_or_default(),
        query_remove: strings(&result["query_parameters_to_remove"]),
        rate_limit: result["rate_limit"].as_str().map(str::to_owned),
    }
}

fn strings(v: &Json) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// Why an event cannot be replayed against route `policy` of `snap`, if it cannot.
fn unreplayable(event: &Json, snap: &Snapshot, policy: usize) -> Option<String> {
    if !event["input"].is_object() {
        return Some("the event has no input".into());
    }
    let needs = snap.needs(policy);
    let hidden = ["erased", "masked"].into_iter().flat_map(|k| event[k].as_array().into_iter().flatten());
    for path in hidden.filter_map(Json::as_str).filter(|p| p.starts_with("/input")) {
        let header = path.strip_prefix("/input/request/headers/");
        let readable = match header.or_else(|| path.strip_prefix("/input/attributes/request/http/headers/")) {
            Some(header) => needs.header(&header.replace("~1", "/").replace("~0", "~")),
            None => true,
        };
        if readable {
            return Some(format!("{path} was masked and the candidate's rule may read it"));
        }
    }
    None
}

/// Decides one logged event again with `snap`.
pub fn replay(snap: &Snapshot, event: &Json) -> Replayed {
    decide_again(snap, event).0
}

/// [`replay`], and the candidate's route with whether its rule allowed (for its rate limits).
fn decide_again(snap: &Snapshot, event: &Json) -> (Replayed, Option<(usize, bool, Option<usize>)>) {
    if event["result"]["evaluated"] == false {
        let why = "refused for its credentials before any rule was asked (the token is not logged)";
        return (Replayed::NotReplayable(why.into()), None);
    }
    // The request as it was routed, from the input in either format.
    let envoy = event["input"]["attributes"].is_object();
    let request = if envoy { &event["input"]["attributes"]["request"]["http"] } else { &event["input"]["request"] };
    let text = |k: &str| request[k].as_str().unwrap_or_default();
    let path = if envoy { text("path").split('?').next().unwrap_or_default() } else { text("path") };
    let before = logged_effect(event);
    let logged_route = event["route"].as_str().or(event["input"]["route"].as_str()).unwrap_or_default();
    let Some(route_ix) = snap.table.lookup(text("host"), path, text("method")) else {
        if !event["input"].is_object() {
            return (Replayed::NotReplayable("the event has no input".into()), None);
        }
        return (Replayed::Changed { kind: Kind::Route, before, after: Effect::NoRoute, route_after: None }, None);
    };
    let route = &snap.routes[route_ix];
    if let Some(why) = unreplayable(event, snap, route.policy) {
        return (Replayed::NotReplayable(why), None);
    }
    if envoy != (route.format == crate::input::InputFormat::Envoy) {
        let why = format!(
            "the logged input is in the {} format and route `{}` now reads the other",
            if envoy { "envoy" } else { "gateway" },
            route.name
        );
        return (Replayed::NotReplayable(why), None);
    }
    let mut input = event["input"].clone();
    if !envoy {
        input["route"] = Json::from(route.name.as_str());
    }
    let after = match regorus::Value::from_json_str(&input.to_string()).map(|v| snap.decide(route.policy, v)) {
        Ok(Ok(mut d)) => {
            d.headers.sort();
            d.response_headers.sort();
            Effect::Decided(d)
        }
        Ok(Err(_)) | Err(_) => Effect::Error,
    };
    // A failure on a `fail_open` route is allowed too; a decision may name a limit of its own.
    let allowed = matches!(&after, Effect::Decided(d) if d.allow) || (route.fail_open && after == Effect::Error);
    let named = match &after {
        Effect::Decided(d) => d.rate_limit.as_deref().and_then(|n| snap.rate_limits.iter().position(|l| l.name == n)),
        _ => None,
    };
    let kind = if route.name != logged_route { Some(Kind::Route) } else { compare(&before, &after) };
    let replayed = match kind {
        None => Replayed::Unchanged,
        Some(kind) => Replayed::Changed { kind, before, after, route_after: Some(route.name.clone()) },
    };
    (replayed, Some((route_ix, allowed, named)))
}

fn compare(before: &Effect, after: &Effect) -> Option<Kind> {
    match (before, after) {
        (Effect::Decided(a), Effect::Decided(b)) if crate::authorize::same_effect(a, b) => None,
        (Effect::Decided(a), Effect::Decided(b)) if a.allow && !b.allow => Some(Kind::AllowToDeny),
        (Effect::Decided(a), Effect::Decided(b)) if !a.allow && b.allow => Some(Kind::DenyToAllow),
        (Effect::Decided(a), Effect::Decided(b)) if !a.allow && a.status != b.status => Some(Kind::Status),
        (Effect::Decided(a), Effect::Decided(b)) if !a.allow && a.body != b.body => {
            let rest = |d: &Decision| Decision { body: None, reason: None, ..d.clone() };
            Some(if crate::authorize::same_effect(&rest(a), &rest(b)) { Kind::Body } else { Kind::Headers })
        }
        (Effect::Decided(_), Effect::Decided(_)) => Some(Kind::Headers),
        (Effect::Error, Effect::Error) | (Effect::NoRoute, Effect::NoRoute) => None,
        _ => Some(Kind::Error),
    }
}

/// Replays of many events: totals, counts per logged route and kind, and every change.
#[derive(Debug, Default)]
pub struct Report {
    pub replayed: usize,
    pub unchanged: usize,
    pub not_replayable: Vec<(String, String)>,
    /// Per logged route: kind → count.
    pub routes: BTreeMap<String, BTreeMap<Kind, usize>>,
    /// Every changed event: (event, what replay made of it).
    pub changes: Vec<(Json, Kind, Effect, Effect, Option<String>)>,
    /// Per rate limit of the candidate: how many of the replayed requests it would have refused
    /// (a shadow limit: counted), in the events' time order (`crate::rate_limits`).
    pub rate_limited: BTreeMap<String, usize>,
}

impl Report {
    /// Replays every event of `events` with `snap`.
    pub fn of(snap: &Snapshot, events: &[Json]) -> Report {
        let mut r = Report::default();
        let mut routed = Vec::new();
        for e in events {
            r.replayed += 1;
            let (replayed, route) = decide_again(snap, e);
            if let Some(routed_as) = route {
                routed.push((e, routed_as));
            }
            match replayed {
                Replayed::Unchanged => r.unchanged += 1,
                Replayed::NotReplayable(why) => r.not_replayable.push((id(e), why)),
                Replayed::Changed { kind, before, after, route_after } => {
                    let route = e["route"].as_str().unwrap_or_default().to_owned();
                    *r.routes.entry(route).or_default().entry(kind).or_default() += 1;
                    r.changes.push((e.clone(), kind, before, after, route_after));
                }
            }
        }
        r.rate_limited = crate::rate_limits::replay(snap, &mut routed);
        r
    }

    pub fn changed(&self) -> usize {
        self.changes.len()
    }

    /// The whole report as JSON: totals, per-route counts, every change and every event that
    /// could not be replayed.
    pub fn to_json(&self) -> Json {
        let routes: serde_json::Map<String, Json> = self
            .routes
            .iter()
            .map(|(route, kinds)| {
                (route.clone(), kinds.iter().map(|(k, n)| (k.label().to_owned(), json!(n))).collect())
            })
            .collect();
        let changes: Vec<Json> = self
            .changes
            .iter()
            .map(|(e, kind, before, after, route_after)| {
                let r = &e["input"]["request"];
                json!({
                    "decision_id": id(e), "route": e["route"], "kind": kind.label(),
                    "method": r["method"], "host": r["host"], "path": r["path"],
                    "before": before.describe(), "after": after.describe(), "route_after": route_after,
                    "reason_after": match after { Effect::Decided(d) => json!(d.reason), _ => Json::Null },
                })
            })
            .collect();
        let not_replayable: Vec<Json> =
            self.not_replayable.iter().map(|(id, why)| json!({"decision_id": id, "why": why})).collect();
        json!({
            "replayed": self.replayed, "unchanged": self.unchanged, "changed": self.changed(),
            "not_replayable": self.not_replayable.len(), "routes": routes, "rate_limited": self.rate_limited,
            "changes": changes, "not_replayable_events": not_replayable,
        })
    }

    /// The report for a person: totals, a table of counts per route and kind, and up to
    /// `examples` changed requests of each kind.
    pub fn to_text(&self, examples: usize) -> String {
        let mut out = format!(
            "replayed {} logged decisions: {} unchanged, {} would change, {} not replayable\n",
            self.replayed,
            self.unchanged,
            self.changed(),
            self.not_replayable.len()
        );
        for (route, kinds) in &self.routes {
            let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{} {n}", k.label())).collect();
            out.push_str(&format!("  route {route}: {}\n", counts.join(", ")));
        }
        let mut shown: BTreeMap<Kind, usize> = BTreeMap::new();
        for (e, kind, before, after, route_after) in &self.changes {
            let n = shown.entry(*kind).or_default();
            if *n >= examples {
                continue;
            }
            *n += 1;
            let r = &e["input"]["request"];
            let reason = match after {
                Effect::Decided(d) => d.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
                _ => String::new(),
            };
            let to = route_after.as_deref().map(|r| format!(" on route {r}")).unwrap_or_default();
            out.push_str(&format!(
                "  {:<10} {} {} {}{}: {} -> {}{to}{reason}\n",
                kind.label(),
                id(e),
                r["method"].as_str().unwrap_or("-"),
                r["host"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or("-"),
                before.describe(),
                after.describe(),
            ));
        }
        for (limit, n) in &self.rate_limited {
            out.push_str(&format!("  rate limit {limit}: would refuse {n}\n"));
        }
        for (id, why) in self.not_replayable.iter().take(examples) {
            out.push_str(&format!("  not replayable: {id}: {why}\n"));
        }
        out
    }
}

fn id(e: &Json) -> String {
    e["decision_id"].as_str().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Files;
    use crate::bundle::Bundle;

    const SETTINGS: &str = r#"
upstreams: { backend: { targets: ["127.0.0.1:9"] } }
routes:
  - { name: orders, match: { path_prefix: /orders }, upstream: backend, policy: data.http.orders.decision }
  - { name: public, match: { path_prefix: /public }, upstream: backend, policy: data.http.public.allow }
"#;

    fn snapshot(orders: &str) -> Snapshot {
        let mut files = Files::new();
        files.insert("gateway/data.yaml".into(), SETTINGS.as_bytes().to_vec());
        files.insert("http/orders.rego".into(), orders.as_bytes().to_vec());
        files.insert("http/public.rego".into(), b"package http.public\nimport rego.v1\nallow := true\n".to_vec());
        Snapshot::compile(&Bundle::from_files(files).expect("bundle")).expect("compiles")
    }

    const ALLOW_ALL: &str = r#"package http.orders
import rego.v1
decision := {"allow": true, "headers": {"x-user": "alice"}}
"#;

    fn event(method: &str, path: &str, decision: &str, result: Json) -> Json {
        json!({
            "decision_id": format!("{method} {path}"), "route": "orders", "decision": decision, "result": result,
            "input": {"request": {"method": method, "path": path, "host": "api.test", "headers": {"x-tenant": "acme"},
                                  "query": {}, "scheme": "http", "client_ip": "127.0.0.1"}, "route": "orders"},
            "erased": ["/input/request/headers/authorization"]
        })
    }

    fn allowed() -> Json {
        json!({"allow": true, "headers": {"x-user": "alice"}})
    }

    #[test]
    fn the_same_bundle_changes_nothing() {
        let snap = snapshot(ALLOW_ALL);
        assert_eq!(replay(&snap, &event("GET", "/orders/7", "allow", allowed())), Replayed::Unchanged);
    }

    #[test]
    fn a_candidate_that_denies_reports_allow_to_deny() {
        let snap = snapshot(
            "package http.orders\nimport rego.v1\ndecision := {\"allow\": false, \"status\": 403, \"reason\": \"no\"} if input.request.method == \"DELETE\"\nelse := {\"allow\": true, \"headers\": {\"x-user\": \"alice\"}}\n",
        );
        assert_eq!(replay(&snap, &event("GET", "/orders/7", "allow", allowed())), Replayed::Unchanged);
        let Replayed::Changed { kind, after, .. } = replay(&snap, &event("DELETE", "/orders/7", "allow", allowed()))
        else {
            panic!("a change")
        };
        assert_eq!((kind, after.describe()), (Kind::AllowToDeny, "deny 403".to_owned()));
    }

    #[test]
    fn reason_text_alone_is_not_a_change_but_a_status_is() {
        let snap = snapshot("package http.orders\nimport rego.v1\ndecision := {\"allow\": false, \"status\": 403, \"reason\": \"new words\"}\n");
        let denied = |status: u16| json!({"allow": false, "status": status, "reason": "old words"});
        assert_eq!(replay(&snap, &event("GET", "/orders/1", "deny", denied(403))), Replayed::Unchanged);
        assert!(matches!(
            replay(&snap, &event("GET", "/orders/1", "deny", denied(401))),
            Replayed::Changed { kind: Kind::Status, .. }
        ));
    }

    #[test]
    fn other_upstream_headers_are_a_change() {
        let snap = snapshot(
            "package http.orders\nimport rego.v1\ndecision := {\"allow\": true, \"headers\": {\"x-user\": \"bob\"}}\n",
        );
        assert!(matches!(
            replay(&snap, &event("GET", "/orders/1", "allow", allowed())),
            Replayed::Changed { kind: Kind::Headers, .. }
        ));
    }

    #[test]
    fn a_request_the_candidate_no_longer_routes_is_a_route_change() {
        let snap = snapshot(ALLOW_ALL);
        let mut e = event("GET", "/orders/7", "allow", allowed());
        e["input"]["request"]["path"] = json!("/elsewhere");
        assert!(matches!(
            replay(&snap, &e),
            Replayed::Changed { kind: Kind::Route, after: Effect::NoRoute, route_after: None, .. }
        ));
    }

    #[test]
    fn a_masked_header_the_candidate_reads_is_not_replayable() {
        let reads_tenant = "package http.orders\nimport rego.v1\ndecision := {\"allow\": input.request.headers[\"x-tenant\"] == \"acme\"}\n";
        let snap = snapshot(reads_tenant);
        let mut e = event("GET", "/orders/7", "allow", json!({"allow": true}));
        assert_eq!(replay(&snap, &e), Replayed::Unchanged, "an erased authorization the rule does not read is fine");
        e["erased"] = json!(["/input/request/headers/x-tenant"]);
        assert!(matches!(replay(&snap, &e), Replayed::NotReplayable(why) if why.contains("x-tenant")));
        let mut claims = event("GET", "/orders/7", "allow", allowed());
        claims["masked"] = json!(["/input/jwt/claims/sub"]);
        assert!(matches!(replay(&snap, &claims), Replayed::NotReplayable(_)), "anything else masked is not guessed");
    }

    #[test]
    fn a_request_refused_for_its_token_before_evaluation_is_not_replayable() {
        let snap = snapshot(ALLOW_ALL);
        let refused =
            json!({"allow": false, "status": 401, "reason": "invalid token: ExpiredSignature", "evaluated": false});
        assert!(matches!(
            replay(&snap, &event("GET", "/orders/7", "deny", refused)),
            Replayed::NotReplayable(why) if why.contains("credentials")
        ));
    }

    #[test]
    fn a_candidate_whose_rule_fails_is_an_error_change() {
        let snap = snapshot("package http.orders\nimport rego.v1\ndecision := {\"allow\": true} if input.nothing\n");
        assert!(matches!(
            replay(&snap, &event("GET", "/orders/7", "allow", allowed())),
            Replayed::Changed { kind: Kind::Error, after: Effect::Error, .. }
        ));
    }

    #[test]
    fn the_report_counts_per_route_and_kind() {
        let snap = snapshot("package http.orders\nimport rego.v1\ndecision := {\"allow\": false}\n");
        let events = vec![
            event("GET", "/orders/1", "allow", allowed()),
            event("GET", "/orders/2", "allow", allowed()),
            event("GET", "/orders/3", "deny", json!({"allow": false, "status": 403})),
            json!({"decision_id": "bare", "route": "orders", "decision": "deny"}),
        ];
        let r = Report::of(&snap, &events);
        assert_eq!((r.replayed, r.unchanged, r.changed(), r.not_replayable.len()), (4, 1, 2, 1));
        let j = r.to_json();
        assert_eq!(j["routes"]["orders"]["allow→deny"], 2);
        assert_eq!(j["changes"][0]["decision_id"], "GET /orders/1");
        assert!(r.to_text(3).contains("route orders: allow→deny 2"), "{}", r.to_text(3));
    }

    #[test]
    fn a_candidates_rate_limits_report_what_they_would_have_refused_in_time_order() {
        let settings = SETTINGS.replace(
            "upstreams:",
            "rate_limits:\n  per_tenant: { key: header.x-tenant, rate: 1/s, burst: 2 }\n  watch: { key: route, rate: 1/h, burst: 100, mode: shadow }\nupstreams:",
        )
        .replace("policy: data.http.orders.decision }", "policy: data.http.orders.decision, rate_limits: [per_tenant, watch] }");
        let mut files = Files::new();
        files.insert("gateway/data.yaml".into(), settings.into_bytes());
        files.insert("http/orders.rego".into(), ALLOW_ALL.as_bytes().to_vec());
        files.insert("http/public.rego".into(), b"package http.public\nimport rego.v1\nallow := true\n".to_vec());
        let snap = Snapshot::compile(&Bundle::from_files(files).expect("bundle")).expect("compiles");
        // Five requests of one tenant within a second, logged newest first: the burst of two
        // passes, three would be refused; a sixth two seconds later passes again.
        let at = |ms: u64| format!("2026-12-07T10:00:{:02}.{:03}Z", ms / 1000, ms % 1000);
        let mut events: Vec<Json> = [0, 100, 200, 300, 400, 2400]
            .iter()
            .map(|&ms| {
                let mut e = event("GET", &format!("/orders/{ms}"), "allow", allowed());
                e["timestamp"] = Json::from(at(ms));
                e
            })
            .collect();
        events.reverse();
        let report = Report::of(&snap, &events);
        assert_eq!(report.rate_limited.get("per_tenant"), Some(&3));
        assert_eq!(report.rate_limited.get("watch"), None, "under its burst");
        assert!(report.to_text(3).contains("rate limit per_tenant: would refuse 3"), "{}", report.to_text(3));
        assert_eq!(report.to_json()["rate_limited"]["per_tenant"], 3);
    }
}
