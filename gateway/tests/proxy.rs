//! The real `gateway` binary over loopback in front of real upstream processes: every status
//! of the request path, header injection, JWT algorithms, timeouts and the admin listener.

mod common;

use common::*;

const BROKEN: &str = r#"package http.broken

import rego.v1

# Two definitions of a complete rule with different values: an evaluation error.
decision := true if input.request.method == "GET"

decision := false if input.request.path != ""
"#;

const UNDEFINED: &str = r#"package http.undefined

import rego.v1

decision := true if input.request.method == "NEVER"
"#;

const SLOW: &str = r#"package http.slow

import rego.v1

decision := count([x | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000); x != y]) > 0
"#;

/// What the rule saw of the gateway's own headers, handed to the upstream as headers.
const LEAN: &str = r#"package http.lean

import rego.v1

saw(name) := object.get(input.request.headers, name, "none")

decision := {"allow": true, "headers": {"x-rule-saw-xff": saw("x-forwarded-for"), "x-rule-saw-proto": saw("x-forwarded-proto")}}
"#;

fn extra_routes() -> String {
    [
        (
            "lean",
            "/lean",
            "backend",
            "data.http.lean.decision",
            "    upstream_headers: { forwarding: false, request_id: false, traceparent: false }\n",
        ),
        ("fed", "/fed", "backend", "data.http.lean.decision", ""),
        ("broken", "/broken", "backend", "data.http.broken.decision", ""),
        ("undefined", "/undefined", "backend", "data.http.undefined.decision", ""),
        ("lenient", "/lenient", "backend", "data.http.undefined.decision", "    fail_open: true\n"),
        ("slow", "/slow", "backend", "data.http.slow.decision", ""),
        ("down", "/down", "down", "data.http.public.allow", ""),
        ("sleepy", "/sleepy", "sleepy", "data.http.public.allow", ""),
    ]
    .iter()
    .map(|(name, prefix, up, policy, extra)| {
        format!("  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: {up}\n    policy: {policy}\n{extra}")
    })
    .collect()
}

struct Env {
    _dir: tempfile::TempDir,
    _up: Upstream,
    gw: Gateway,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let closed = free_port();
    let extra_upstreams = format!(
        "  down:\n    targets: [\"127.0.0.1:{closed}\"]\n    connect_timeout: 500ms\n  sleepy:\n    targets: [\"{}\"]\n    read_timeout: 300ms\n",
        up.addr
    );
    let bundle = example_bundle(
        dir.path(),
        &up.addr.to_string(),
        &extra_upstreams,
        &extra_routes(),
        &[
            ("http/broken.rego", BROKEN),
            ("http/undefined.rego", UNDEFINED),
            ("http/slow.rego", SLOW),
            ("http/lean.rego", LEAN),
        ],
    );
    let gw = start_gateway(dir.path(), &bundle);
    Env { _dir: dir, _up: up, gw }
}

#[test]
fn public_route_is_proxied_with_its_path_unchanged() {
    let e = env();
    let r = get(&format!("{}/public/hello?x=1", e.gw.base), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["upstream"], "backend");
    assert_eq!(body["path"], "/public/hello?x=1");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
}

/// A route whose upstream wants none of the gateway's own headers gets none, and a client that
/// sends forged forwarding headers to it gets them past neither the rule nor the upstream.
#[test]
fn a_route_that_turns_off_the_gateways_headers_gets_none_and_forged_forwarding_headers_still_go() {
    let e = env();
    let forged = [("x-forwarded-for", "10.9.9.9"), ("x-forwarded-proto", "https"), ("forwarded", "for=10.9.9.9")];
    let r = get(&format!("{}/lean/x", e.gw.base), &forged);
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    for name in ["x-forwarded-for", "x-forwarded-proto", "forwarded", "x-real-ip", "x-request-id", "traceparent"] {
        assert!(h.get(name).is_none(), "{name} reached the upstream: {h}");
    }
    assert_eq!(h["x-rule-saw-xff"], "none", "the rule sees what the upstream receives: {h}");
    assert_eq!(h["x-rule-saw-proto"], "none", "{h}");
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()), "the client still gets the request id");

    // The same rule on a route with the defaults: every header, as the rule saw it.
    let r = get(&format!("{}/fed/x", e.gw.base), &forged);
    assert_eq!(r.status, 200, "{r:?}");
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert!(h.get("forwarded").is_none(), "{h}");
    assert_eq!(h["x-rule-saw-xff"], "127.0.0.1", "{h}");
    assert_eq!(h["x-rule-saw-proto"], "http", "{h}");
    assert_eq!(h["x-request-id"].as_str(), r.header("x-request-id"), "{h}");
    assert!(h["traceparent"].as_str().is_some_and(|t| t.starts_with("00-")), "{h}");
}

#[test]
fn reader_gets_orders_with_identity_headers_added_upstream() {
    let e = env();
    let t = token("alice", &["reader"]);
    let r =
        get(&format!("{}/orders/7", e.gw.base), &[("authorization", &format!("Bearer {t}")), ("x-user-id", "mallory")]);
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["path"], "/orders/7");
    // The decision's header replaces whatever the client sent.
    assert_eq!(body["headers"]["x-user-id"], "alice");
    assert_eq!(body["headers"]["x-user-roles"], "reader");
    assert_eq!(r.header("x-decided-by"), Some("http.orders"));
}

#[test]
fn every_supported_signature_algorithm_is_accepted() {
    let e = env();
    for key in ["es256", "rs256", "ed25519"] {
        let claims =
            serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": key, "roles": ["reader"], "exp": now() + 60});
        let t = token_with(key, claims);
        let r = get(&format!("{}/orders", e.gw.base), &[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(r.status, 200, "{key}: {r:?}");
        assert_eq!(r.json()["headers"]["x-user-id"], key);
    }
}

#[test]
fn policy_denials_carry_their_status_reason_and_headers() {
    let e = env();
    let r = get(&format!("{}/orders", e.gw.base), &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["reason"], "a bearer token is required");

    let t = token("alice", &["reader"]);
    let r = request("POST", &format!("{}/orders", e.gw.base), &[("authorization", &format!("Bearer {t}"))], None);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "alice may not post orders");

    let t = token("bob", &["writer"]);
    let r = request("POST", &format!("{}/orders", e.gw.base), &[("authorization", &format!("Bearer {t}"))], None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["method"], "POST");

    let t = token("carol", &["admin"]);
    let auth = format!("Bearer {t}");
    assert_eq!(
        get(&format!("{}/admin/users", e.gw.base), &[("authorization", &auth), ("x-tenant", "acme")]).status,
        200
    );
    assert_eq!(
        get(&format!("{}/admin/users", e.gw.base), &[("authorization", &auth), ("x-tenant", "initech")]).status,
        403
    );
}

#[test]
fn repeated_decisions_come_from_the_cache_keyed_on_what_the_rules_read() {
    let e = env();
    let hits = |r: &str| metric(&e.gw.admin, &format!("gateway_decision_cache_total{{result=\"{r}\"}}")).unwrap_or(0.0);
    let (hit0, miss0) = (hits("hit"), hits("miss"));
    let alice = format!("Bearer {}", token("alice", &["reader"]));
    for i in 0..6 {
        // Headers the rules never read vary freely; the decision and its headers still apply.
        let agent = format!("agent-{i}");
        let r = get(&format!("{}/orders/{i}", e.gw.base), &[("authorization", &alice), ("user-agent", &agent)]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["headers"]["x-user-id"], "alice");
        assert_eq!(r.header("x-decided-by"), Some("http.orders"));
        // What they read is part of the key: the same token with another method is decided anew.
        let r = request("DELETE", &format!("{}/orders/{i}", e.gw.base), &[("authorization", &alice)], None);
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.json()["reason"], "alice may not delete orders");
    }
    let carol = format!("Bearer {}", token("carol", &["admin"]));
    for _ in 0..3 {
        let acme = get(&format!("{}/admin/users", e.gw.base), &[("authorization", &carol), ("x-tenant", "acme")]);
        assert_eq!(acme.status, 200);
        let other = get(&format!("{}/admin/users", e.gw.base), &[("authorization", &carol), ("x-tenant", "initech")]);
        assert_eq!(other.status, 403);
    }
    // 18 decisions of 4 distinct keys, on at most `threads` (2) per-thread caches.
    let misses =
        metric_settled(&e.gw.admin, "gateway_decision_cache_total{result=\"miss\"}", miss0 + 4.0).unwrap_or(0.0);
    assert!((4.0..=8.0).contains(&(misses - miss0)), "misses: {}", misses - miss0);
    assert_eq!(hits("hit") - hit0 + misses - miss0, 18.0);
    assert_eq!(hits("bypass"), 0.0);
}

#[test]
fn bad_tokens_get_401_before_any_policy_runs() {
    let e = env();
    let base =
        serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "eve", "roles": ["writer"], "exp": now() + 600});
    let mut expired = base.clone();
    expired["exp"] = serde_json::json!(now() - 3600);
    let mut future = base.clone();
    future["nbf"] = serde_json::json!(now() + 3600);
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = serde_json::json!("billing-api");
    let mut wrong_iss = base.clone();
    wrong_iss["iss"] = serde_json::json!("https://evil.example");
    let good = token_with("es256", base.clone());
    let (head, rest) = good.split_once('.').expect("jwt");
    let (_, sig) = rest.split_once('.').expect("jwt");
    let forged_payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "roles": ["admin"], "exp": now() + 600})).expect("json"))
    };
    let tampered = format!("{head}.{forged_payload}.{sig}");
    let before = metric(&e.gw.admin, "gateway_policy_eval_duration_seconds_count").unwrap_or(0.0);
    for (what, t) in [
        ("expired", token_with("es256", expired)),
        ("not yet valid", token_with("es256", future)),
        ("wrong audience", token_with("es256", wrong_aud)),
        ("unknown issuer", token_with("es256", wrong_iss)),
        ("tampered", tampered),
        ("garbage", "not.a.jwt".to_string()),
    ] {
        let r = request("POST", &format!("{}/orders", e.gw.base), &[("authorization", &format!("Bearer {t}"))], None);
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    let after = metric(&e.gw.admin, "gateway_policy_eval_duration_seconds_count").unwrap_or(0.0);
    assert_eq!(before, after, "no policy may run for a refused token");
    assert_eq!(
        metric_settled(&e.gw.admin, "gateway_requests_total{decision=\"unauthenticated\",route=\"orders\"}", 6.0),
        Some(6.0)
    );
}

#[test]
fn unmatched_requests_get_404() {
    let e = env();
    let before = metric(&e.gw.admin, "gateway_requests_total{decision=\"no_route\",route=\"\"}").unwrap_or(0.0);
    let r = get(&format!("{}/nowhere", e.gw.base), &[]);
    assert_eq!(r.status, 404, "{r:?}");
    // Prefixes match whole segments only.
    assert_eq!(get(&format!("{}/ordersx", e.gw.base), &[]).status, 404);
    // The public route only allows GET and HEAD.
    assert_eq!(request("DELETE", &format!("{}/public/x", e.gw.base), &[], None).status, 404);
    assert_eq!(
        metric_settled(&e.gw.admin, "gateway_requests_total{decision=\"no_route\",route=\"\"}", before + 3.0),
        Some(before + 3.0)
    );
}

#[test]
fn policy_errors_and_undefined_results_fail_closed() {
    let e = env();
    // A conflicting complete rule: the interpreter errors, the VM yields undefined; both deny.
    let r = get(&format!("{}/broken", e.gw.base), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = get(&format!("{}/undefined", e.gw.base), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "policy result undefined");
    // ...unless the route says otherwise.
    assert_eq!(get(&format!("{}/lenient", e.gw.base), &[]).status, 200);
    assert_eq!(
        metric_settled(&e.gw.admin, "gateway_requests_total{decision=\"error\",route=\"broken\"}", 1.0),
        Some(1.0)
    );
    assert_eq!(
        metric_settled(&e.gw.admin, "gateway_requests_total{decision=\"error\",route=\"undefined\"}", 1.0),
        Some(1.0)
    );
}

#[test]
fn a_runaway_policy_is_cut_off_and_denied() {
    let e = env();
    let started = std::time::Instant::now();
    let r = get(&format!("{}/slow", e.gw.base), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["reason"], "policy error");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "evaluation was not bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric_settled(&e.gw.admin, "gateway_requests_total{decision=\"error\",route=\"slow\"}", 1.0),
        Some(1.0)
    );
    // The gateway keeps serving other requests.
    assert_eq!(get(&format!("{}/public/x", e.gw.base), &[]).status, 200);
}

#[test]
fn unreachable_or_slow_upstreams_get_502() {
    let e = env();
    let r = get(&format!("{}/down", e.gw.base), &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"], "upstream unavailable");
    let r = get(&format!("{}/sleepy?sleep_ms=2000", e.gw.base), &[]);
    assert_eq!(r.status, 502, "read timeout must cut a slow upstream: {r:?}");
    assert!(metric_settled(&e.gw.admin, "gateway_upstream_errors_total", 2.0).unwrap_or(0.0) >= 2.0);
}

#[test]
fn admin_endpoints_report_the_active_bundle_and_metrics() {
    let e = env();
    assert_eq!(get(&format!("{}/healthz", e.gw.admin), &[]).status, 200);
    assert_eq!(get(&format!("{}/readyz", e.gw.admin), &[]).status, 200);
    let status = get(&format!("{}/status", e.gw.admin), &[]).json();
    assert_eq!(status["ready"], true);
    assert_eq!(status["bundle"]["name"], "main");
    assert_eq!(status["bundle"]["digest"].as_str().map(str::len), Some(64));
    assert!(status["bundle"]["activated_at"].as_u64().unwrap_or(0) > 0);
    get(&format!("{}/public/x", e.gw.base), &[]);
    // Requests are counted in the logging phase, just after the response is written.
    let r = test_support::wait::settle(
        std::time::Duration::from_secs(5),
        || get(&format!("{}/metrics", e.gw.admin), &[]),
        |r| r.text().contains("gateway_requests_total{decision=\"allow\",route=\"public\"} 1"),
    );
    assert_eq!(r.status, 200);
    let body = r.text();
    for needle in [
        "gateway_requests_total{decision=\"allow\",route=\"public\"} 1",
        "gateway_request_duration_seconds_count",
        "gateway_policy_eval_duration_seconds_count",
        "gateway_bundle_info{digest=",
        "gateway_bundle_activated_timestamp_seconds",
    ] {
        assert!(body.contains(needle), "missing {needle} in:\n{body}");
    }
}
