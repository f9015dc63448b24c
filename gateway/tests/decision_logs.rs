//! Decision logs through the real binaries: the gateway ships OPA-schema events to a real
//! `control-api`, read back through its `GET /v1/logs`. Masking and dropping by the bundle's
//! own rules, credentials never logged, sampling, a sink that is down for a minute under load
//! (memory bounded, oldest dropped and counted, no request failing, shipping resuming), a
//! restart that sends what it spooled, and shadow rules counted exactly.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use test_support::control_api::ControlApi;

const READER: &str = "gateway-reader-token-for-decision-log-tests";
const AUTHORS: &str = "authors-logs-token-for-decision-log-tests";
const TOKENS: [test_support::control_api::Token; 2] = [("gateways", "read", READER), ("authors", "logs", AUTHORS)];
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The bundle's own decision-log rules (OPA's `system.log`): a hostile-looking mask that also
/// tries to rewrite what the event says was decided, and a drop of health probes.
const LOG_RULES: &str = r#"package system.log

import rego.v1

mask contains "/input/request/headers/x-api-key"

mask contains {"op": "upsert", "path": "/input/jwt/claims/sub", "value": "**"} if input.input.jwt

# Outside /input and /result: OPA ignores these, and so must the gateway.
mask contains "/decision_id"

mask contains {"op": "upsert", "path": "/decision", "value": "allow"}

mask contains {"op": "upsert", "path": "/status", "value": 200}

drop if input.input.request.path == "/public/healthz"
"#;

struct Setup {
    gw: Gateway,
    _up: Upstream,
    dir: tempfile::TempDir,
}

/// A gateway on the example bundle (plus `modules`) shipping to `sink` with `extra` keys under
/// `decision_logs:` (each line indented by two spaces) and `top` top-level lines.
fn gateway_logging(sink: &str, modules: &[(&str, &str)], extra: &str, top: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), "", "", modules);
    // `data.system.log` is a root of its own, as in OPA.
    let manifest = bundle.join(".manifest");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace(r#"["http", "gateway"]"#, r#"["http", "gateway", "system"]"#))
        .expect("manifest");
    let token = dir.path().join("reader.token");
    std::fs::write(&token, READER).expect("write the token");
    let logs = format!(
        "{top}decision_logs:\n  sinks: [\"{sink}/v1/logs\"]\n  token_file: {}\n  flush_interval: 200ms\n{extra}",
        token.display()
    );
    let gw = start_gateway_with(dir.path(), &bundle, &logs);
    Setup { gw, _up: up, dir }
}

fn metric_sum(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metric_sum(name, labels).unwrap_or(0.0)
}

fn shipped(gw: &Gateway) -> f64 {
    metric_sum(gw, "gateway_decision_logs_total", &[("result", "shipped")])
}

/// The events control-api holds for bundle `main`, once there are `n`.
fn events_when(api: &ControlApi, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    eventually(Duration::from_secs(20), &format!("{n} decision events in control-api"), || {
        got = api.logs(AUTHORS, "bundle=main&limit=10000");
        got.len() >= n
    });
    got
}

fn by_id<'a>(events: &'a [Value], id: &str) -> &'a Value {
    events.iter().find(|e| e["decision_id"] == id).unwrap_or_else(|| panic!("no event {id} in {events:?}"))
}

/// The decision id of an answer: the gateway's own answers (denies, errors) carry it in
/// `x-decision-id`; an allowed request's backend got it (the echo upstream shows what it got).
fn decision_id(r: &Resp) -> String {
    match r.header("x-decision-id") {
        Some(id) => id.to_owned(),
        None => r.json()["headers"]["x-decision-id"]
            .as_str()
            .unwrap_or_else(|| panic!("no decision id for a {} answer: {}", r.status, r.text()))
            .to_owned(),
    }
}

#[test]
fn decisions_reach_control_api_in_opas_schema_masked_by_the_bundles_rules() {
    let cp_dir = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(cp_dir.path(), &TOKENS);
    let s = gateway_logging(&api.base, &[("system/log.rego", LOG_RULES)], "", "");
    let reader = format!("Bearer {}", token("alice", &["reader"]));
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let headers = [
        ("authorization", reader.as_str()),
        ("cookie", "session=s3cr3t"),
        ("x-api-key", "k-123"),
        ("x-tenant", "acme"),
        ("traceparent", traceparent.as_str()),
    ];
    let allowed = request("GET", &format!("{}/orders/7?page=2", s.gw.base), &headers, None);
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let anonymous = get(&format!("{}/orders/7", s.gw.base), &[]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let forbidden = request("DELETE", &format!("{}/orders/7", s.gw.base), &[("authorization", reader.as_str())], None);
    assert_eq!(forbidden.status, 403, "{}", forbidden.text());
    let probe = get(&format!("{}/public/healthz", s.gw.base), &[]);
    assert_eq!(probe.status, 200);

    // The decision id: to the client on the gateway's own answers (a user quotes it), to the
    // backend on an allowed request, whose answer carries the request id (the event's trace id).
    let id = decision_id(&allowed);
    assert!(allowed.header("x-decision-id").is_none(), "an allowed answer is the backend's");
    assert_eq!(allowed.header("x-request-id"), Some(TRACE));
    assert!(anonymous.header("x-decision-id").is_some() && forbidden.header("x-decision-id").is_some());
    let events = events_when(&api, 3);
    assert_eq!(events.len(), 3, "the health probe's event is dropped by data.system.log.drop: {events:?}");
    eventually(Duration::from_secs(5), "the drop to be counted", || {
        metric_sum(&s.gw, "gateway_decision_logs_total", &[("result", "dropped_by_policy")]) == 1.0
    });

    let e = by_id(&events, &id);
    let revision = revision(&s.gw);
    assert_eq!(e["bundles"]["main"]["revision"], revision.as_str());
    assert_eq!(e["path"], "http/orders/decision");
    assert_eq!(e["route"], "orders");
    assert_eq!((e["decision"].as_str(), e["status"].as_u64()), (Some("allow"), Some(200)));
    assert_eq!(e["trace_id"], TRACE, "the request's W3C trace id");
    assert!(e["labels"]["id"].as_str().is_some_and(|i| !i.is_empty()), "labels.id names the instance: {e}");
    assert!(e["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339 UTC: {e}");
    assert!(e["metrics"]["timer_rego_query_eval_ns"].is_u64(), "{e}");
    assert!(e["cached"].is_boolean());
    let request = &e["input"]["request"];
    assert_eq!((request["method"].as_str(), request["path"].as_str()), (Some("GET"), Some("/orders/7")));
    assert_eq!(request["query"]["page"], serde_json::json!(["2"]));
    assert_eq!(request["headers"]["x-tenant"], "acme", "the full input, every header the rule could see");
    assert_eq!(e["input"]["route"], "orders");
    assert_eq!(e["result"]["allow"], true);
    assert_eq!(e["result"]["headers"]["x-user-id"], "alice", "result is the decision's object form");
    // Credentials are never logged; the bundle's mask removes and upserts under /input only.
    let sent = request["headers"].as_object().expect("headers");
    for h in ["authorization", "cookie", "x-api-key"] {
        assert!(!sent.contains_key(h), "{h} reached the log: {request}");
    }
    assert_eq!(e["input"]["jwt"]["claims"]["sub"], "**");
    let erased: Vec<&str> = e["erased"].as_array().expect("erased").iter().filter_map(Value::as_str).collect();
    for p in
        ["/input/request/headers/authorization", "/input/request/headers/cookie", "/input/request/headers/x-api-key"]
    {
        assert!(erased.contains(&p), "{p} not in erased: {erased:?}");
    }
    assert_eq!(e["masked"], serde_json::json!(["/input/jwt/claims/sub"]));

    let anon = by_id(&events, &decision_id(&anonymous));
    assert_eq!((anon["decision"].as_str(), anon["status"].as_u64()), (Some("deny"), Some(401)));
    assert_eq!(anon["result"]["status"], 401);
    assert!(anon["input"].get("jwt").is_none(), "no token, no jwt in the input: {anon}");
    let denied = by_id(&events, &decision_id(&forbidden));
    assert_eq!((denied["decision"].as_str(), denied["status"].as_u64()), (Some("deny"), Some(403)));
    // The mask edits the logged event, never what was decided: the reason was made from the
    // real input (an author who logs no subjects masks /result/reason too).
    assert_eq!(denied["result"]["reason"], "alice may not delete orders");
    assert_eq!(denied["input"]["jwt"]["claims"]["sub"], "**");
}

/// OPA-Envoy logs a request whose token its policy refuses; the gateway refuses a bad token
/// before any rule runs, and logs it all the same: one deny per request, its id the one the
/// client got, the reason the client got, masked and dropped by the bundle's rules like any
/// event, and the token itself nowhere in it.
#[test]
fn a_request_refused_for_a_malformed_bearer_token_is_in_the_decision_log() {
    let cp_dir = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(cp_dir.path(), &TOKENS);
    // Allows sampled out: only what must be logged is.
    let s = gateway_logging(&api.base, &[("system/log.rego", LOG_RULES)], "  sample: 0.0\n", "");
    let claims = |sub: &str, exp: u64| serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": ["admin"], "exp": exp});
    let expired = token_with("es256", claims("mallory", now() - 3600));
    // Mallory's header and claims under the signature of alice's token: it does not verify.
    let (mallory, alice) =
        (token_with("es256", claims("mallory", now() + 600)), token_with("es256", claims("alice", now() + 600)));
    let signed = |t: &str| {
        t.rsplit_once('.')
            .map(|(head_and_claims, signature)| (head_and_claims.to_owned(), signature.to_owned()))
            .expect("a JWT")
    };
    let forged = format!("{}.{}", signed(&mallory).0, signed(&alice).1);
    let tokens = [
        ("not a JWT", "Bearer not-a-jwt".to_owned(), "not-a-jwt".to_owned()),
        ("forged signature", format!("Bearer {forged}"), forged.clone()),
        ("expired", format!("Bearer {expired}"), expired.clone()),
        ("two spaces", "Bearer  not-one-credential".to_owned(), "not-one-credential".to_owned()),
    ];
    let mut refused = Vec::new();
    for (what, header, token) in &tokens {
        let headers = [("authorization", header.as_str()), ("x-api-key", "k-123"), ("x-tenant", "acme")];
        let r = get(&format!("{}/orders/7", s.gw.base), &headers);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let id = r.header("x-decision-id").unwrap_or_else(|| panic!("{what}: no x-decision-id: {r:?}")).to_owned();
        let reason =
            r.json()["reason"].as_str().unwrap_or_else(|| panic!("{what}: no reason: {}", r.text())).to_owned();
        refused.push((what, id, reason, token));
    }
    // The bundle's drop rule drops a refused request as it drops any other.
    let probe = get(&format!("{}/public/healthz", s.gw.base), &[("authorization", "Bearer not-a-jwt")]);
    assert_eq!(probe.status, 401, "{}", probe.text());
    let events = events_when(&api, tokens.len());
    eventually(Duration::from_secs(5), "the drop to be counted", || {
        metric_sum(&s.gw, "gateway_decision_logs_total", &[("result", "dropped_by_policy")]) == 1.0
    });
    assert_eq!(events.len(), tokens.len(), "one event per refused request, the probe's dropped: {events:?}");

    for (what, id, reason, token) in &refused {
        let e = by_id(&events, id);
        assert_eq!((e["route"].as_str(), e["status"].as_u64()), (Some("orders"), Some(401)), "{what}: {e}");
        assert_eq!(e["decision"], "deny", "{what}");
        assert_eq!(e["path"], "http/orders/decision", "{what}: the route's policy path");
        assert_eq!(
            e["result"],
            serde_json::json!({"allow": false, "status": 401, "reason": reason, "evaluated": false}),
            "{what}: refused before evaluation, for the reason the client got"
        );
        assert_eq!(e["metrics"]["timer_rego_query_eval_ns"], 0, "{what}: no rule ran");
        assert!(e["input"].get("jwt").is_none(), "{what}: nothing verified: {e}");
        let request = &e["input"]["request"];
        assert_eq!(
            (request["path"].as_str(), request["headers"]["x-tenant"].as_str()),
            (Some("/orders/7"), Some("acme"))
        );
        let sent = request["headers"].as_object().expect("headers");
        for h in ["authorization", "x-api-key"] {
            assert!(!sent.contains_key(h), "{what}: {h} reached the log: {request}");
        }
        let erased: Vec<&str> = e["erased"].as_array().expect("erased").iter().filter_map(Value::as_str).collect();
        assert!(erased.contains(&"/input/request/headers/authorization"), "{what}: {erased:?}");
        assert!(erased.contains(&"/input/request/headers/x-api-key"), "{what}: the bundle's mask applies: {erased:?}");
        let text = e.to_string();
        assert!(!text.contains(token.as_str()), "{what}: the token reached the log: {text}");
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(!text.contains(part), "{what}: part of the token reached the log: {part} in {text}");
        }
    }
}

#[test]
fn allows_are_sampled_but_every_deny_is_logged() {
    let cp_dir = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(cp_dir.path(), &TOKENS);
    let s = gateway_logging(&api.base, &[], "  sample: 0.0\n", "");
    for i in 0..10 {
        let r = get(&format!("{}/public/page{i}", s.gw.base), &[]);
        assert_eq!(r.status, 200);
        assert!(r.header("x-decision-id").is_none(), "an allow sampled out is not logged, so has no id");
    }
    let mut ids = Vec::new();
    for i in 0..4 {
        let r = get(&format!("{}/orders/{i}", s.gw.base), &[]);
        assert_eq!(r.status, 401, "the orders rule denies a request without a token");
        ids.push(decision_id(&r));
    }
    let events = events_when(&api, 4);
    eventually(Duration::from_secs(5), "every event shipped", || shipped(&s.gw) == 4.0);
    assert_logged(&events, ids, "exactly the denies");
    assert_eq!(metric_sum(&s.gw, "gateway_decision_logs_total", &[("result", "buffered")]), 4.0);
}

/// A sink nobody listens on yet, and the address it will come back on.
fn down_sink() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

fn spool_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().filter(|l| !l.is_empty()).count())
}

#[test]
fn a_sink_down_for_a_minute_under_load_bounds_memory_drops_the_oldest_and_resumes() {
    const BUFFER: u64 = 2 << 20;
    let sink = down_sink();
    let s = gateway_logging(&sink, &[], "  buffer: 2MiB\n", "");
    let pid = s.gw.proc.pid();
    let url = format!("{}/orders/7", s.gw.base);
    let auth = format!("Bearer {}", token("alice", &["reader"]));
    for _ in 0..50 {
        assert_eq!(get(&url, &[("authorization", auth.as_str())]).status, 200);
    }
    let start_rss = test_support::process::rss(pid);
    let (sent, failed, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, auth, sent, failed, stop) =
                (url.clone(), auth.clone(), sent.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = get(&url, &[("authorization", auth.as_str()), ("x-padding", &"p".repeat(512))]);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let began = Instant::now();
    let mut peak = start_rss;
    while began.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(test_support::process::rss(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed) + 50, failed.load(Ordering::Relaxed));
    let grew = peak.saturating_sub(start_rss);
    eprintln!("{sent} requests in 60 s, sink down: RSS {start_rss} -> peak {peak} (+{grew} B), buffer {BUFFER} B");
    assert_eq!(failed, 0, "a request failed because the sink was down");
    // The buffer bound plus a margin for the allocator and the queue's in-flight decisions.
    assert!(grew < BUFFER + (24 << 20), "RSS grew {grew} B with a {BUFFER} B buffer");
    let buffered = sent as f64;
    eventually(Duration::from_secs(5), "every decision to reach the buffer", || {
        metric_sum(&s.gw, "gateway_decision_logs_total", &[("result", "buffered")]) == buffered
    });
    let dropped = metric_sum(&s.gw, "gateway_decision_logs_dropped_total", &[("reason", "buffer_full")]);
    assert!(dropped > 0.0, "a full buffer drops the oldest and counts them");
    assert!(metric_sum(&s.gw, "gateway_decision_logs_buffer_bytes", &[]) <= BUFFER as f64);

    let api = ControlApi::start_on(s.dir.path(), sink.trim_start_matches("http://"), &TOKENS);
    eventually(Duration::from_secs(45), "the buffer to be shipped once the sink is back", || {
        metric_sum(&s.gw, "gateway_decision_logs_buffer_bytes", &[]) == 0.0
    });
    let shipped = shipped(&s.gw);
    assert_eq!(shipped + dropped, buffered, "what was not dropped was shipped");
    let stored = api.logs(AUTHORS, "bundle=main&limit=10000").len() as f64;
    assert_eq!(stored, shipped.min(10_000.0), "control-api stored what was shipped");
}

/// Sends `n` requests without a token (the orders rule denies them: always logged), and waits
/// until they are buffered; their decision ids.
fn denied_and_buffered(gw: &Gateway, n: usize) -> Vec<String> {
    let ids = (0..n)
        .map(|i| {
            let r = get(&format!("{}/orders/{i}", gw.base), &[]);
            assert_eq!(r.status, 401);
            decision_id(&r)
        })
        .collect();
    eventually(Duration::from_secs(5), "the denies to be buffered", || {
        metric_sum(gw, "gateway_decision_logs_total", &[("result", "buffered")]) == n as f64
    });
    ids
}

/// The events' decision ids are exactly `ids`.
fn assert_logged(events: &[Value], mut ids: Vec<String>, why: &str) {
    let mut logged: Vec<String> = events.iter().filter_map(|e| e["decision_id"].as_str().map(String::from)).collect();
    logged.sort();
    ids.sort();
    assert_eq!(logged, ids, "{why}");
}

#[test]
fn a_restart_sends_everything_that_was_spooled() {
    let sink = down_sink();
    let spool = PathBuf::from("spool.jsonl");
    let s = gateway_logging(&sink, &[], &format!("  spool: {}\n", spool.display()), "");
    let spool = s.dir.path().join(spool);
    let ids = denied_and_buffered(&s.gw, 25);
    let mut gw = s.gw;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gw.proc.pid() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    eventually(Duration::from_secs(20), "the gateway to exit", || gw.proc.exited().is_some());
    assert_eq!(spool_lines(&spool), 25, "the spool holds what the sink did not take");

    let api = ControlApi::start_on(s.dir.path(), sink.trim_start_matches("http://"), &TOKENS);
    gw.restart();
    gw.wait_ready();
    assert_logged(&events_when(&api, 25), ids, "every spooled decision reached the sink after the restart");
}

/// A shadow rule that would deny the orders whose id ends in 0 or 5, where the enforced rule
/// allows them all: it disagrees on exactly one request in five.
const SHADOW: &str = r#"package http.orders_v2

import rego.v1

decision := {"allow": false, "status": 403, "reason": "v2 denies these"} if {
	endswith(input.request.path, "0")
} else := {"allow": false, "status": 403, "reason": "v2 denies these"} if {
	endswith(input.request.path, "5")
} else := data.http.orders.decision
"#;

#[test]
fn a_shadow_rule_is_counted_exactly_and_never_changes_an_answer() {
    let cp_dir = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(cp_dir.path(), &TOKENS);
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), "", "", &[("http/orders_v2.rego", SHADOW)]);
    let settings = bundle.join("gateway/data.yaml");
    let text = std::fs::read_to_string(&settings).expect("settings").replace(
        "    policy: data.http.orders.decision\n",
        "    policy: data.http.orders.decision\n    shadow: data.http.orders_v2.decision\n",
    );
    std::fs::write(&settings, text).expect("write settings");
    let token_file = dir.path().join("reader.token");
    std::fs::write(&token_file, READER).expect("write the token");
    let extra = format!(
        "decision_logs:\n  sinks: [\"{}/v1/logs\"]\n  token_file: {}\n  flush_interval: 200ms\n  sample: 0.0\n",
        api.base,
        token_file.display()
    );
    let gw = start_gateway_with(dir.path(), &bundle, &extra);
    let auth = format!("Bearer {}", token("alice", &["reader"]));
    let mut differing = Vec::new();
    for i in 1..=40 {
        // Each id twice: the second answer comes from the decision cache, and so must the shadow's.
        for _ in 0..2 {
            let r = get(&format!("{}/orders/{i}", gw.base), &[("authorization", auth.as_str())]);
            assert_eq!(r.status, 200, "the shadow rule changed an answer: {}", r.text());
            if i % 5 == 0 {
                differing.push(decision_id(&r));
            }
        }
    }
    let counted = |agreement: &str| metric_sum(&gw, "gateway_shadow_decisions_total", &[("agreement", agreement)]);
    assert_eq!((counted("same"), counted("differ"), counted("error")), (64.0, 16.0, 0.0));
    assert_eq!(
        metric_sum(&gw, "gateway_shadow_decisions_total", &[("route", "orders"), ("agreement", "differ")]),
        16.0
    );
    // Allows are sampled out, yet every disagreement is logged, with both answers.
    let events = events_when(&api, 16);
    assert_eq!(events.len(), 16, "only the disagreements: {events:?}");
    let e = by_id(&events, &differing[0]);
    assert_eq!(e["result"]["allow"], true);
    assert_eq!(e["shadow"]["path"], "http/orders_v2/decision");
    assert_eq!((e["shadow"]["decision"].as_str(), e["shadow"]["agreement"].as_str()), (Some("deny"), Some("differ")));
    assert_eq!(e["shadow"]["result"]["reason"], "v2 denies these");
}

#[test]
fn an_upgrade_hands_over_what_the_old_process_had_not_shipped() {
    let sink = down_sink();
    let s = gateway_logging(&sink, &[], "  spool: spool.jsonl\n", "");
    let ids = denied_and_buffered(&s.gw, 10);
    let _new = s.gw.spawn_upgrade();
    let old = s.gw.proc;
    eventually(Duration::from_secs(30), "the old gateway to hand over and exit", || old.exited().is_some());
    let api = ControlApi::start_on(s.dir.path(), sink.trim_start_matches("http://"), &TOKENS);
    assert_logged(&events_when(&api, 10), ids, "the new process shipped what the old one spooled as it left");
}

fn ids_of(events: &[Value], kind: &str) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .filter(|c| c["kind"] == kind)
        .filter_map(|c| c["decision_id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

#[test]
fn replay_reports_exactly_the_logged_requests_a_candidate_would_flip() {
    let cp_dir = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(cp_dir.path(), &TOKENS);
    let s = gateway_logging(&api.base, &[], "", "");
    let (reader, writer) =
        (format!("Bearer {}", token("alice", &["reader"])), format!("Bearer {}", token("bob", &["writer"])));
    let mut flipped = Vec::new();
    let mut total = 0;
    let mut send = |method: &str, path: &str, auth: Option<&str>, want: u16| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = request(method, &format!("{}{path}", s.gw.base), &headers, None);
        assert_eq!(r.status, want, "{method} {path}: {}", r.text());
        total += 1;
        decision_id(&r)
    };
    for i in 1..=10 {
        send("GET", &format!("/orders/{i}"), Some(&reader), 200);
    }
    for i in 1..=5 {
        flipped.push(send("DELETE", &format!("/orders/{i}"), Some(&writer), 200));
    }
    for i in 6..=8 {
        send("DELETE", &format!("/orders/{i}"), Some(&reader), 403);
    }
    send("GET", "/orders/9", None, 401);
    send("GET", "/public/a", None, 200);
    send("POST", "/orders", Some(&writer), 200);
    events_when(&api, total);

    // The candidate changes one rule: writers may no longer delete orders.
    let candidate = s.dir.path().join("candidate");
    copy_dir(&s.dir.path().join("bundle"), &candidate);
    let rules = candidate.join("http/orders.rego");
    let text = std::fs::read_to_string(&rules).expect("rules");
    let narrowed = text.replace(r#"{"POST", "PUT", "PATCH", "DELETE"}"#, r#"{"POST", "PUT", "PATCH"}"#);
    assert_ne!(narrowed, text, "the candidate's edit applies");
    std::fs::write(&rules, narrowed).expect("write the candidate");

    let replay = |extra: &[&str]| {
        let out = std::process::Command::new(workspace_bin("bundlectl"))
            .args(["replay", candidate.to_str().expect("utf-8 path"), "--server", &api.base, "--since", "1h"])
            .args(extra)
            .env("BUNDLECTL_TOKEN", AUTHORS)
            .output()
            .expect("run bundlectl replay");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = replay(&["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["replayed"], total);
    assert_eq!(report["changed"], 5, "{report:#}");
    assert_eq!(report["not_replayable"], 0, "credentials are erased, but the rules do not read them: {report:#}");
    flipped.sort();
    let changes = report["changes"].as_array().expect("changes");
    assert_eq!(ids_of(changes, "allow→deny"), flipped, "exactly bob's deletes flip, nothing else");
    assert_eq!(report["routes"]["orders"]["allow→deny"], 5);
    assert!(changes.iter().all(|c| c["after"] == "deny 403" && c["reason_after"] == "bob may not delete orders"));

    let (code, text, _) = replay(&[]);
    assert_eq!(code, Some(0));
    assert!(text.contains("5 would change") && text.contains("route orders: allow→deny 5"), "{text}");
    assert_eq!(replay(&["--max-changed", "5"]).0, Some(0));
    let (code, _, stderr) = replay(&["--max-changed", "4"]);
    assert_eq!(code, Some(1), "past --max-changed: {stderr}");
    let (code, stdout, stderr) = replay(&["--route", "public", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let public: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!((public["replayed"].as_u64(), public["changed"].as_u64()), (Some(1), Some(0)), "{public:#}");
}

#[test]
fn a_client_cannot_forge_the_decision_id_the_backend_records() {
    let cp_dir = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(cp_dir.path(), &TOKENS);
    let s = gateway_logging(&api.base, &[], "  sample: 0.0\n", "");
    let forged = [("x-decision-id", "00000000-0000-4000-8000-000000000000")];
    // Sampled out: not logged, so the backend gets no decision id at all.
    let r = get(&format!("{}/public/x", s.gw.base), &forged);
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-decision-id").is_none(), "the forged id reached the backend: {}", r.text());
    // Logged (sample 1.0, the default): the client's id is replaced by the gateway's.
    let all = gateway_logging(&api.base, &[], "", "");
    let auth = format!("Bearer {}", token("bob", &["writer"]));
    let r =
        request("DELETE", &format!("{}/orders/3", all.gw.base), &[forged[0], ("authorization", auth.as_str())], None);
    assert_eq!(r.status, 200);
    let id = decision_id(&r);
    assert_ne!(id, forged[0].1);
    assert_eq!(r.json()["headers"]["x-decision-id"], id.as_str(), "the backend got the gateway's id, not the client's");
}

#[test]
fn a_decision_past_a_rate_limit_is_logged_with_the_limit_and_whether_it_was_enforced() {
    let cp_dir = tempfile::tempdir().expect("tempdir");
    let api = ControlApi::start(cp_dir.path(), &TOKENS);
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let limits = "\nrate_limits:\n  tight: { key: jwt.sub, rate: 1/h, burst: 3 }\n  watch: { key: jwt.sub, rate: 1/h, burst: 1, mode: shadow }\n";
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), limits, "", &[]);
    let settings = bundle.join("gateway/data.yaml");
    let text = std::fs::read_to_string(&settings).expect("settings").replace(
        "    policy: data.http.orders.decision\n",
        "    policy: data.http.orders.decision\n    rate_limits: [tight, watch]\n",
    );
    std::fs::write(&settings, text).expect("write settings");
    let token_file = dir.path().join("reader.token");
    std::fs::write(&token_file, READER).expect("write the token");
    let extra = format!(
        "decision_logs:\n  sinks: [\"{}/v1/logs\"]\n  token_file: {}\n  flush_interval: 200ms\n",
        api.base,
        token_file.display()
    );
    let gw = start_gateway_with(dir.path(), &bundle, &extra);
    let auth = format!("Bearer {}", token("alice", &["reader"]));
    let answers: Vec<_> =
        (1..=4).map(|i| get(&format!("{}/orders/{i}", gw.base), &[("authorization", auth.as_str())])).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "the enforced limit's burst is 3");
    let events = events_when(&api, 4);
    let first = by_id(&events, &decision_id(&answers[0]));
    assert!(first.get("rate_limit").is_none(), "within every limit: {first}");
    let second = by_id(&events, &decision_id(&answers[1]));
    assert_eq!(
        (second["rate_limit"]["name"].as_str(), second["rate_limit"]["mode"].as_str()),
        (Some("watch"), Some("shadow"))
    );
    assert_eq!(second["status"], 200, "a shadow limit refuses nothing");
    let refused = by_id(&events, &decision_id(&answers[3]));
    assert_eq!(
        (refused["rate_limit"]["name"].as_str(), refused["rate_limit"]["mode"].as_str()),
        (Some("tight"), Some("enforce"))
    );
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["result"]["allow"], true, "the policy allowed it; the limit refused it");
}

/// One POST as a sink received it: its head (lower-cased) and its body.
fn receive_one_post(listener: &std::net::TcpListener) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let (mut conn, _) = listener.accept().expect("the gateway posts a batch");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let (head, body_at) = loop {
        let n = conn.read(&mut buf).expect("read the request");
        assert!(n > 0, "the connection closed before the request's head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&got[..i]).to_lowercase(), i + 4);
        }
    };
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    while got.len() < body_at + len {
        let n = conn.read(&mut buf).expect("read the body");
        assert!(n > 0, "the connection closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").expect("answer");
    (head, got[body_at..body_at + len].to_vec())
}

#[test]
fn compression_none_ships_plain_json_arrays_for_a_sink_on_the_same_host() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let sink = format!("http://{}", listener.local_addr().expect("sink address"));
    let s = gateway_logging(&sink, &[], "  compression: none\n", "");
    let r = get(&format!("{}/orders/1", s.gw.base), &[]);
    assert_eq!(r.status, 401);
    let id = decision_id(&r);
    let (head, body) = receive_one_post(&listener);
    assert!(head.starts_with("post /v1/logs "), "{head}");
    assert!(!head.contains("content-encoding"), "a plain batch says no encoding: {head}");
    let batch: Value = serde_json::from_slice(&body).expect("the body is the JSON array itself");
    let events = batch.as_array().expect("an array of events");
    assert_eq!(events.len(), 1, "{batch}");
    assert_eq!(events[0]["decision_id"], id.as_str());
    assert_eq!(events[0]["decision"], "deny");
}
