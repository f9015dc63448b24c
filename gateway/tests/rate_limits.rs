//! Rate limits through the real binary. Counts are checked with limits of one an hour, whose
//! burst alone decides what passes: exact on any machine, however loaded. The rate itself is
//! GCRA arithmetic (unit tests of `gateway::rate_limit`); one test here checks it in real time
//! with a margin for a loaded machine.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Allows everyone with a token but `mallory`, and anyone on `/anon` and `/keyed`; denies
/// `/limited/deny`.
const OPEN: &str = "package http.open

import rego.v1

default allow := false

allow if {
\tinput.jwt.claims.sub != \"mallory\"
\tinput.request.path != \"/limited/deny\"
}

allow if startswith(input.request.path, \"/anon/\")

allow if startswith(input.request.path, \"/keyed/\")
";

/// Routes before the example's own, each on `/NAME` with the open rule: (route, its limits).
const ROUTES: [(&str, &str); 6] = [
    ("limited", "per_user"),
    ("both", "per_user, per_route"),
    ("shadow", "watch"),
    ("anon", "per_ip"),
    ("keyed", "per_key"),
    ("fast", "per_user_fast"),
];

fn routes() -> String {
    ROUTES
        .iter()
        .map(|(name, limits)| {
            format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: backend\n    policy: data.http.open.allow\n    rate_limits: [{limits}]\n")
        })
        .collect()
}

const LIMITS: &str = "
rate_limits:
  per_user: { key: jwt.sub, rate: 1/h, burst: 5 }
  per_route: { key: route, rate: 1/h, burst: 4 }
  watch: { key: jwt.sub, rate: 1/h, burst: 2, mode: shadow }
  per_ip: { key: client_ip, rate: 1/h, burst: 3, before_auth: true }
  per_key: { key: header.x-api-key, rate: 1/h, burst: 2, before_auth: true }
  per_user_fast: { key: jwt.sub, rate: 100/s, burst: 20 }
";

fn gateway(dir: &Path, extra: &str) -> (Gateway, Upstream) {
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir, &up.addr.to_string(), LIMITS, &routes(), &[("http/open.rego", OPEN)]);
    let gw = start_gateway_with(dir, &bundle, extra);
    (gw, up)
}

fn bearer(sub: &str) -> String {
    format!("Bearer {}", token(sub, &["reader"]))
}

/// The statuses of `n` requests in a row.
fn statuses(url: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    (0..n).map(|_| get(url, headers).status).collect()
}

fn limited(gw: &Gateway, route: &str, limit: &str, mode: &str) -> Option<f64> {
    metric(&gw.admin, &format!("gateway_rate_limited_total{{route=\"{route}\",limit=\"{limit}\",mode=\"{mode}\"}}"))
}

#[test]
fn a_user_past_the_limit_gets_429s_with_retry_after_while_another_user_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "");
    let url = format!("{}/limited/x", gw.base);
    let alice = bearer("alice");
    let got = statuses(&url, &[("authorization", alice.as_str())], 8);
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 429, 429], "the burst of 5, then nothing for an hour");
    let bob = bearer("bob");
    assert_eq!(statuses(&url, &[("authorization", bob.as_str())], 3), [200, 200, 200], "bob is untouched");

    let r = get(&url, &[("authorization", alice.as_str())]);
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("retry-after in seconds");
    assert!((3500..=3600).contains(&retry), "one an hour: {retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"per_user\";q=1;w=3600"));
    assert_eq!(r.header("ratelimit"), Some(format!("\"per_user\";r=0;t={retry}").as_str()));
    let body = r.json();
    assert_eq!(body["error"], "too many requests");
    assert!(body["reason"].as_str().is_some_and(|s| s.contains("per_user")), "{body}");
    assert_eq!(limited(&gw, "limited", "per_user", "enforce"), Some(4.0));
    let counted = metric(&gw.admin, "gateway_requests_total{route=\"limited\",decision=\"rate_limited\"}");
    assert_eq!(counted, Some(4.0));
}

#[test]
fn a_refusal_by_one_limit_spends_none_of_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "");
    let url = format!("{}/both/x", gw.base);
    // The route's limit (4 for everyone) and each user's own (5, shared with /limited).
    let alice = bearer("alice");
    assert_eq!(statuses(&url, &[("authorization", alice.as_str())], 2), [200, 200]);
    // Dave is refused by nobody but the route: 2 left of its 4.
    let dave = bearer("dave");
    assert_eq!(statuses(&url, &[("authorization", dave.as_str())], 3), [200, 200, 429]);
    // Refused by the route, Alice spends nothing of her own limit: it still has 3 of 5 on
    // another route that shares it.
    assert_eq!(statuses(&url, &[("authorization", alice.as_str())], 3), [429, 429, 429]);
    let other = format!("{}/limited/x", gw.base);
    assert_eq!(statuses(&other, &[("authorization", alice.as_str())], 4), [200, 200, 200, 429]);
}

#[test]
fn a_flood_without_a_valid_token_is_limited_by_client_address_before_any_jwt_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "");
    let url = format!("{}/anon/x", gw.base);
    let got = statuses(&url, &[("authorization", "Bearer not.a.token")], 8);
    assert_eq!(got, [401, 401, 401, 429, 429, 429, 429, 429], "three reach verification, then none");
    let verified = metric(&gw.admin, "gateway_requests_total{route=\"anon\",decision=\"unauthenticated\"}");
    assert_eq!(verified, Some(3.0), "only the burst's requests were verified");
}

#[test]
fn behind_a_trusted_proxy_the_client_is_the_address_it_forwarded_and_a_client_cannot_prepend_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "trusted_proxies: [127.0.0.0/8]\n");
    let url = format!("{}/anon/x", gw.base);
    let one = [("x-forwarded-for", "203.0.113.7")];
    assert_eq!(statuses(&url, &one, 3), [200, 200, 200]);
    // A left part is whatever the client wrote: the proxy's right-most address counts.
    let spoofed = [("x-forwarded-for", "198.51.100.1, 203.0.113.7")];
    assert_eq!(statuses(&url, &spoofed, 2), [429, 429]);
    let other = [("x-forwarded-for", "203.0.113.8")];
    assert_eq!(statuses(&url, &other, 1), [200], "another client behind the same proxy");
}

#[test]
fn a_second_copy_of_a_key_header_is_counted_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "");
    let url = format!("{}/keyed/x", gw.base);
    assert_eq!(statuses(&url, &[("x-api-key", "real")], 2), [200, 200]);
    // A fresh first copy does not hide the spent second one.
    let got: Vec<u16> =
        (0..2).map(|i| get(&url, &[("x-api-key", &format!("fresh-{i}")), ("x-api-key", "real")]).status).collect();
    assert_eq!(got, [429, 429]);
}

#[test]
fn a_shadow_limit_counts_what_it_would_refuse_and_refuses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "");
    let alice = bearer("alice");
    assert_eq!(statuses(&format!("{}/shadow/x", gw.base), &[("authorization", alice.as_str())], 5), [200; 5]);
    assert_eq!(limited(&gw, "shadow", "watch", "shadow"), Some(3.0));
}

#[test]
fn a_request_the_policy_denies_spends_none_of_its_keys_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "");
    let alice = bearer("alice");
    let auth = [("authorization", alice.as_str())];
    assert_eq!(statuses(&format!("{}/limited/deny", gw.base), &auth, 8), [403; 8]);
    assert_eq!(statuses(&format!("{}/limited/x", gw.base), &auth, 6), [200, 200, 200, 200, 200, 429]);
}

const TIERS: &str = "package http.tiers\n\nimport rego.v1\n\ndecision := {\"allow\": true, \"rate_limit\": \"gold\"} if input.jwt.claims.tier == \"gold\"\n\nelse := {\"allow\": true, \"rate_limit\": input.jwt.claims.tier} if input.jwt.claims.tier == \"platinum\"\n\nelse := {\"allow\": true, \"rate_limit\": \"free\"}\n";

#[test]
fn a_decision_names_the_limit_of_the_callers_tier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let limits = "\nrate_limits:\n  gold: { key: jwt.sub, rate: 1/h, burst: 5 }\n  free: { key: jwt.sub, rate: 1/h, burst: 2 }\n";
    let route = "  - name: tiered\n    match: { path_prefix: /tiered }\n    upstream: backend\n    policy: data.http.tiers.decision\n";
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), limits, route, &[("http/tiers.rego", TIERS)]);
    let gw = start_gateway_with(dir.path(), &bundle, "");
    let claims = |sub: &str, tier: &str| serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tier": tier, "iat": now(), "exp": now() + 600});
    let url = format!("{}/tiered/x", gw.base);
    let run = |claims: serde_json::Value| {
        let auth = format!("Bearer {}", token_with("es256", claims));
        statuses(&url, &[("authorization", auth.as_str())], 7)
    };
    assert_eq!(run(claims("carol", "free")), [200, 200, 429, 429, 429, 429, 429]);
    assert_eq!(run(claims("dave", "gold")), [200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(limited(&gw, "tiered", "free", "enforce"), Some(5.0), "a named limit's series appears when it refuses");
    // A tier the bundle defines no limit for is limited by nothing more, and counted.
    assert_eq!(run(claims("erin", "platinum")), [200; 7]);
    assert_eq!(metric(&gw.admin, "gateway_rate_limit_unknown_total{route=\"tiered\"}"), Some(7.0));
}

/// `threads` clients send `GET url` with `auth` as fast as they can for `time`: (200s, 429s,
/// others).
fn flood(url: &str, auth: &str, threads: usize, time: Duration) -> (u64, u64, u64) {
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (counts, stop, url, auth) = (counts.clone(), stop.clone(), url.to_owned(), auth.to_owned());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = match get(&url, &[("authorization", auth.as_str())]).status {
                        200 => 0,
                        429 => 1,
                        _ => 2,
                    };
                    counts[i].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("client");
    }
    let [a, b, c] = &*counts;
    (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed), c.load(Ordering::Relaxed))
}

#[test]
fn in_real_time_a_flood_gets_the_burst_plus_the_rate_and_never_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path(), "");
    let started = Instant::now();
    let (ok, refused, other) = flood(&format!("{}/fast/x", gw.base), &bearer("erin"), 4, Duration::from_secs(2));
    let took = started.elapsed().as_secs_f64();
    assert_eq!(other, 0);
    assert!(refused > ok, "the flood was over the limit: {ok} admitted, {refused} refused");
    // Never more than the burst plus the rate over the whole run (5% for timing)...
    let most = (20.0 + 100.0 * took) * 1.05;
    assert!((ok as f64) <= most, "admitted {ok} in {took:.2}s: more than {most:.0}");
    // ...and not far less: a loaded machine may stall the clients a little, never by half.
    assert!((ok as f64) >= 20.0 + 100.0 * took * 0.5, "admitted only {ok} in {took:.2}s");
}
