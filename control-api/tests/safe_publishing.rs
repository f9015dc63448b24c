//! Safe publishing through the real `control-api` binary: resource budgets checked in a child
//! process at publish, and the growth guard against the active revision.

mod common;

use std::path::Path;

use common::*;
use sha2::{Digest, Sha256};

fn start(dir: &Path, extra: &str) -> Server {
    Server::start(&write_config(dir, "sqlite://./data/control.db", extra))
}

/// `n` strings of 64 hex digits that do not compress: data that costs what its size says.
fn noise(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n).map(|i| hex::encode(Sha256::digest(i.to_le_bytes()))).collect();
    serde_json::to_vec(&serde_json::json!({ "items": items })).expect("json")
}

fn with_data(revision: &str, file: &str, data: Vec<u8>) -> Vec<u8> {
    bundle_with(revision, |f| {
        f.insert(file.into(), data);
    })
}

/// The example with `extra` more routes, all onto the public rule.
fn with_routes(revision: &str, extra: usize) -> Vec<u8> {
    bundle_with(revision, |f| {
        let settings = String::from_utf8(f["gateway/data.yaml"].clone()).expect("utf-8");
        let routes: String = (0..extra)
            .map(|i| {
                format!(
                    "  - name: extra{i}\n    match: {{ path_prefix: /extra{i} }}\n    upstream: backend\n    policy: data.http.public.allow\n"
                )
            })
            .collect();
        let settings = settings.replacen("routes:", &format!("routes:\n{routes}"), 1);
        f.insert("gateway/data.yaml".into(), settings.into_bytes());
    })
}

fn force(s: &Server, tarball: &[u8], reason: &str) -> Resp {
    call("PUT", &s.url("/v1/bundles/main"), Some(PUBLISH_TOKEN), &[("x-force-reason", reason)], Some(tarball))
}

#[test]
fn a_bundle_over_the_uncompressed_budget_is_refused_at_publish_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "budget: { max_uncompressed: 1MiB }");
    let ok = s.publish("main", &bundle("v1"));
    assert_eq!(ok.status, 201, "{}", ok.text());
    let r = s.publish("main", &with_data("v2", "http/pad/data.json", noise(20_000)));
    assert_eq!(r.status, 422, "{}", r.text());
    let e = &r.json()["errors"][0];
    assert_eq!(e["kind"], "budget", "{e}");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(msg.contains("uncompressed") && msg.contains("1.0 MiB (max_uncompressed)"), "{msg}");
    assert_eq!(s.metric("control_api_rejections_total{reason=\"budget\"}"), 1.0);
    assert_eq!(s.revisions("main").as_array().map(Vec::len), Some(1), "nothing was stored");
}

#[test]
fn a_bundle_whose_compile_outgrows_the_memory_budget_is_stopped_in_the_child() {
    let dir = tempfile::tempdir().unwrap();
    // 22 MB of small numbers in two files: many times that once parsed and compiled.
    let numbers: Vec<u32> = (0..1_500_000).collect();
    let data = serde_json::to_vec(&serde_json::json!({ "numbers": numbers })).unwrap();
    let s = start(dir.path(), "budget: { max_memory: 160MiB }");
    let tarball = bundle_with("v1", |f| {
        f.insert("http/a/data.json".into(), data.clone());
        f.insert("http/b/data.json".into(), data.clone());
    });
    let r = s.publish("main", &tarball);
    assert_eq!(r.status, 422, "{}", r.text());
    let msg = r.json()["errors"][0]["message"].as_str().unwrap_or("").to_owned();
    assert!(msg.contains("memory budget of 160.0 MiB (max_memory)"), "{msg}");
    // The control plane itself never compiled it.
    let rss = std::fs::read_to_string(format!("/proc/{}/status", s.proc.pid())).unwrap_or_default();
    let hwm_kb: u64 = rss
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    assert!(hwm_kb > 0 && hwm_kb < 150 * 1024, "control-api peak RSS {hwm_kb} kB");
}

#[test]
fn the_growth_guard_refuses_a_three_times_larger_bundle_unless_forced_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    assert_eq!(s.publish("main", &with_data("v1", "http/pad/data.json", noise(3_000))).status, 201);
    let bigger = with_data("v2", "http/pad/data.json", noise(10_000));
    let r = s.publish("main", &bigger);
    assert_eq!(r.status, 409, "{}", r.text());
    let body = r.json();
    let moved: Vec<&str> =
        body["moved"].as_array().into_iter().flatten().filter_map(|m| m["figure"].as_str()).collect();
    assert!(moved.contains(&"uncompressed_bytes") && moved.contains(&"compressed_bytes"), "{body}");
    let msg = body["error"].as_str().unwrap_or("");
    assert!(msg.contains("x larger") && msg.contains("limit 2x") && msg.contains("--force"), "{msg}");
    assert_eq!(s.metric("control_api_rejections_total{reason=\"growth\"}"), 1.0);

    let blank = force(&s, &bigger, "  ");
    assert_eq!(blank.status, 400, "a forced publish needs a reason: {}", blank.text());
    let forced = force(&s, &bigger, "load test data for the spring sale");
    assert_eq!(forced.status, 201, "{}", forced.text());
    let history = s.revisions("main");
    assert_eq!(history[0]["revision"], "v2");
    assert_eq!(history[0]["forced_reason"], "load test data for the spring sale");
    assert!(history[0]["figures"]["uncompressed_bytes"].as_u64().unwrap_or(0) > 600_000, "{history}");
    assert!(history[1].get("forced_reason").is_none(), "{history}");
}

#[test]
fn the_growth_guard_refuses_a_bundle_that_drops_most_routes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    assert_eq!(s.publish("main", &with_routes("v1", 8)).status, 201);
    let r = s.publish("main", &bundle("v2"));
    assert_eq!(r.status, 409, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap_or("").to_owned();
    assert!(msg.contains("8 of 11 routes removed (73%; limit 20%)"), "{msg}");
    assert_eq!(s.active_etag("main").as_deref(), Some(format!("\"{}\"", digest(&with_routes("v1", 8))).as_str()));
    let forced = force(&s, &bundle("v2"), "extra routes moved to their own bundle");
    assert_eq!(forced.status, 201, "{}", forced.text());
    // A small step is no move at all.
    assert_eq!(s.publish("main", &with_routes("v3", 0)).status, 201);
}

#[test]
fn the_growth_guard_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "growth_guard: { enabled: false }");
    assert_eq!(s.publish("main", &with_routes("v1", 8)).status, 201);
    assert_eq!(s.publish("main", &bundle("v2")).status, 201);
}

const GW_B_TOKEN: &str = "reader-token-of-gw-b";

/// A control plane staging rollouts to `gw-a`, with a reader token bound to `gw-b`.
fn start_staged(dir: &Path) -> Server {
    let gw_b = format!("  - {{ name: gw-b, scope: read, sha256: {}, instance: gw-b }}\n", hash(GW_B_TOKEN));
    let rollout = "rollout:\n  canary: [gw-a]\n  bake: 60s\n";
    Server::start(&write_config_with_tokens(dir, "sqlite://./data/control.db", rollout, &gw_b))
}

fn revision_for(s: &Server, token: &str, instance: Option<&str>) -> (u16, Option<String>) {
    let headers: Vec<(&str, &str)> = instance.map(|i| ("x-gateway-instance", i)).into_iter().collect();
    let r = call("GET", &s.url("/v1/bundles/main"), Some(token), &headers, None);
    (r.status, r.header("x-bundle-revision").map(str::to_owned))
}

#[test]
fn a_staged_publish_is_served_to_the_canary_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_staged(dir.path());
    assert_eq!(s.publish("main", &bundle("v1")).status, 201, "the first publish is active at once");
    let r = s.publish("main", &bundle("v2"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["rollout"], "canary");
    assert_eq!(revision_for(&s, READ_TOKEN, Some("gw-a")), (200, Some("v2".into())));
    assert_eq!(revision_for(&s, READ_TOKEN, Some("gw-c")), (200, Some("v1".into())));
    assert_eq!(revision_for(&s, READ_TOKEN, None), (200, Some("v1".into())));
    let state = call("GET", &s.url("/v1/bundles/main/rollout"), Some(READ_TOKEN), &[], None).json();
    assert_eq!((state["stable"].as_str(), state["canary_revision"].as_str()), (Some("v1"), Some("v2")), "{state}");
    assert_eq!(state["rollout"]["state"], "canary", "{state}");
    // The same content again is no new rollout; a manual rollback ends the canary phase.
    assert_eq!(s.publish("main", &bundle("v2")).status, 200);
    assert_eq!(s.rollback("main", "v1").status, 200);
    assert_eq!(revision_for(&s, READ_TOKEN, Some("gw-a")), (200, Some("v1".into())));
    let state = call("GET", &s.url("/v1/bundles/main/rollout"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(state["rollout"]["state"], "superseded", "{state}");
}

#[test]
fn a_reader_token_bound_to_one_gateway_can_neither_take_the_canary_cohort_nor_report_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_staged(dir.path());
    s.publish("main", &bundle("v1"));
    s.publish("main", &bundle("v2"));
    assert_eq!(revision_for(&s, GW_B_TOKEN, Some("gw-a")).0, 403, "claiming the canary's name");
    assert_eq!(revision_for(&s, GW_B_TOKEN, None), (200, Some("v1".into())), "its own cohort without a header");
    let forged =
        br#"{"instance": "gw-a", "bundle": "main", "revision": "v2", "served": {"requests": 1000, "errors": 0}}"#;
    let r = call("POST", &s.url("/v1/status"), Some(GW_B_TOKEN), &[("content-type", "application/json")], Some(forged));
    assert_eq!(r.status, 403, "a healthy report forged for the canary: {}", r.text());
    let own = br#"{"instance": "gw-b", "bundle": "main", "revision": "v1"}"#;
    let r = call("POST", &s.url("/v1/status"), Some(GW_B_TOKEN), &[("content-type", "application/json")], Some(own));
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn a_shared_token_holder_cannot_forge_a_canarys_health_while_rollouts_are_staged() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_staged(dir.path());
    s.publish("main", &bundle("v1"));
    s.publish("main", &bundle("v2"));
    // READ_TOKEN is bound to no instance: whoever holds it could speak for any gateway, and a
    // canary's report decides a promotion (or a rollback) for the whole fleet.
    let forged =
        br#"{"instance": "gw-a", "bundle": "main", "revision": "v2", "served": {"requests": 1000, "errors": 0}}"#;
    let r = call("POST", &s.url("/v1/status"), Some(READ_TOKEN), &[("content-type", "application/json")], Some(forged));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("bound to its instance"), "{}", r.text());
    let refused = call("GET", &s.url("/metrics"), None, &[], None).text();
    assert!(
        refused.lines().any(|l| l.starts_with("control_api_status_refused_total{reason=\"unbound_token\"} 1")),
        "counted: {refused}"
    );
    // Nothing of it reached the fleet view.
    let fleet = call("GET", &s.url("/v1/fleet"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(fleet.as_array().map(Vec::len), Some(0), "{fleet}");
}

fn revision_of(s: &Server, bundle: &str, instance: &str) -> Option<String> {
    let r = call(
        "GET",
        &s.url(&format!("/v1/bundles/{bundle}")),
        Some(READ_TOKEN),
        &[("x-gateway-instance", instance)],
        None,
    );
    r.header("x-bundle-revision").map(str::to_owned)
}

#[test]
fn a_cohort_belongs_to_its_bundle_so_a_bundle_its_canaries_do_not_serve_is_not_staged_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let gw_b = format!("  - {{ name: gw-b, scope: read, sha256: {}, instance: gw-b }}\n", hash(GW_B_TOKEN));
    // gw-p serves `payments` only; `main` has no cohort of its own and there is no default.
    let rollout = "rollout:\n  bake: 60s\n  bundles:\n    payments: { canary: [gw-p] }\n";
    let s = Server::start(&write_config_with_tokens(dir.path(), "sqlite://./data/control.db", rollout, &gw_b));
    for name in ["main", "payments"] {
        assert_eq!(s.publish(name, &bundle("v1")).status, 201);
    }
    // `main`: nobody's canary bundle, so it goes to everyone at once (before: staged to a
    // cohort that never serves it, then rolled back as "no canary").
    let r = s.publish("main", &bundle("v2"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json()["rollout"].is_null(), "main was staged: {}", r.text());
    assert_eq!(revision_of(&s, "main", "gw-a"), Some("v2".into()));
    assert_eq!(revision_of(&s, "main", "gw-p"), Some("v2".into()));
    // `payments`: its own cohort takes it first.
    let r = s.publish("payments", &bundle("v2"));
    assert_eq!(r.json()["rollout"], "canary", "{}", r.text());
    assert_eq!(revision_of(&s, "payments", "gw-p"), Some("v2".into()));
    assert_eq!(revision_of(&s, "payments", "gw-a"), Some("v1".into()));
    let state = call("GET", &s.url("/v1/bundles/payments/rollout"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(state["canary"]["instances"], serde_json::json!(["gw-p"]), "{state}");
    let state = call("GET", &s.url("/v1/bundles/main/rollout"), Some(READ_TOKEN), &[], None).json();
    assert!(state["canary"].is_null() && state["rollout"].is_null(), "{state}");
    // What each cohort of each bundle is served, rollout or not.
    let metrics = call("GET", &s.url("/metrics"), None, &[], None).text();
    for series in [
        r#"control_api_served_revision{bundle="main",cohort="stable",revision="v2"} 1"#,
        r#"control_api_served_revision{bundle="payments",cohort="stable",revision="v1"} 1"#,
        r#"control_api_served_revision{bundle="payments",cohort="canary",revision="v2"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} missing:\n{metrics}");
    }
}

#[test]
fn past_rollouts_are_listed_newest_first_with_how_each_ended_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_staged(dir.path());
    let history = |q: &str| call("GET", &s.url(&format!("/v1/bundles/main/rollouts{q}")), Some(READ_TOKEN), &[], None);
    assert_eq!(history("").status, 404, "nothing published yet");
    s.publish("main", &bundle("v1"));
    assert_eq!(history("").json()["rollouts"], serde_json::json!([]), "the first publish is no rollout");
    s.publish("main", &bundle("v2"));
    s.publish("main", &bundle("v3"));
    assert_eq!(s.rollback("main", "v1").status, 200);
    let list = history("").json();
    let rows: Vec<(&str, &str, &str)> = list["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["revision"].as_str().unwrap(), r["state"].as_str().unwrap(), r["reason"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        rows,
        [("v3", "superseded", "manual rollback to v1"), ("v2", "superseded", "superseded by v3")],
        "{list}"
    );
    assert_eq!(history("?limit=1").json()["rollouts"].as_array().map(Vec::len), Some(1));
    let bad = history("?limit=0");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("limit must be from 1 to 1000"), "{}", bad.text());
    assert_eq!(history("?limit=x").status, 400);
}
