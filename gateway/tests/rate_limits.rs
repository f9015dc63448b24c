//! Rate limits through the real binary: a bundle's limit admits a user's burst plus its rate
//! and answers the rest 429 with `Retry-After` and the `RateLimit` headers while another user
//! is untouched; a limit applied before authentication stops a flood without a token by client
//! address before any JWT work; a shadow limit counts and never refuses; a denied request spends
//! no quota.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const OPEN: &str = "package http.open\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.jwt.claims.sub != \"mallory\"\n\nallow if input.request.path == \"/anon/x\"\n";

/// Routes before the example's own: `/limited` (per user, 100/s, burst 20), `/shadow` (the
/// same limit in shadow mode), `/anon` (10/s by client address, before authentication).
const ROUTES: &str = "  - name: limited
    match: { path_prefix: /limited }
    upstream: backend
    policy: data.http.open.allow
    rate_limits: [per_user]
  - name: shadowed
    match: { path_prefix: /shadow }
    upstream: backend
    policy: data.http.open.allow
    rate_limits: [per_user_shadow]
  - name: anon
    match: { path_prefix: /anon }
    upstream: backend
    policy: data.http.open.allow
    rate_limits: [per_ip]
";

const LIMITS: &str = "
rate_limits:
  per_user: { key: jwt.sub, rate: 100/s, burst: 20 }
  per_user_shadow: { key: jwt.sub, rate: 100/s, burst: 20, mode: shadow }
  per_ip: { key: client_ip, rate: 10/s, burst: 5, before_auth: true }
";

fn gateway(dir: &Path) -> (Gateway, Upstream) {
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir, &up.addr.to_string(), LIMITS, ROUTES, &[("http/open.rego", OPEN)]);
    let gw = start_gateway_with(dir, &bundle, "");
    (gw, up)
}

/// `threads` clients send `GET url` with `auth` as fast as they can for `time`; the count of
/// each status.
fn flood(url: &str, auth: Option<String>, threads: usize, time: Duration) -> (u64, u64, u64) {
    let (ok, limited, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (ok, limited, other, stop, url, auth) =
                (ok.clone(), limited.clone(), other.clone(), stop.clone(), url.to_owned(), auth.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
                    match get(&url, &headers).status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(time);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("client");
    }
    (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed), other.load(Ordering::Relaxed))
}

#[test]
fn a_user_past_the_limit_gets_429s_with_retry_after_while_another_user_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path());
    let alice = format!("Bearer {}", token("alice", &["reader"]));
    let bob = format!("Bearer {}", token("bob", &["reader"]));
    let url = format!("{}/limited/x", gw.base);

    // Bob asks now and then during Alice's flood: never refused.
    let bob_url = url.clone();
    let bob_side = std::thread::spawn(move || {
        (0..20)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(100));
                get(&bob_url, &[("authorization", bob.as_str())]).status
            })
            .collect::<Vec<u16>>()
    });
    let started = Instant::now();
    let time = Duration::from_secs(3);
    let (ok, limited, other) = flood(&url, Some(alice.clone()), 6, time);
    let took = started.elapsed().as_secs_f64();
    assert_eq!(other, 0, "every answer is 200 or 429");
    assert!(limited > ok, "the flood was over the limit: {ok} admitted, {limited} refused");
    // The burst, then 100 a second: within 5% of that over the time the clients ran.
    let expected = 20.0 + 100.0 * took;
    let admitted = ok as f64;
    assert!(
        (admitted - expected).abs() <= expected * 0.05,
        "admitted {ok} in {took:.2}s, expected about {expected:.0}"
    );
    let bob_statuses = bob_side.join().expect("bob");
    assert!(bob_statuses.iter().all(|s| *s == 200), "bob is untouched: {bob_statuses:?}");

    // A refusal says when to come back and which policy refused.
    let r = (0..200)
        .map(|_| get(&url, &[("authorization", alice.as_str())]))
        .find(|r| r.status == 429)
        .expect("a 429 while flooding");
    assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per_user\";q=100;w=1"));
    assert_eq!(r.header("ratelimit"), Some("\"per_user\";r=0;t=1"));
    let body = r.json();
    assert_eq!(body["error"], "too many requests");
    assert!(body["reason"].as_str().is_some_and(|s| s.contains("per_user")), "{body}");
    let refused =
        metric(&gw.admin, "gateway_rate_limited_total{route=\"limited\",limit=\"per_user\",mode=\"enforce\"}");
    assert!(refused.is_some_and(|n| n >= limited as f64), "{refused:?} < {limited}");
    let counted = metric(&gw.admin, "gateway_requests_total{route=\"limited\",decision=\"rate_limited\"}");
    assert!(counted.is_some_and(|n| n >= limited as f64), "{counted:?}");
}

#[test]
fn a_flood_without_a_token_is_limited_by_client_address_before_any_jwt_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path());
    // A garbage token would be a 401 after verification; before it, the address's limit
    // answers 429 once its burst is spent: no verification is attempted for those.
    let url = format!("{}/anon/x", gw.base);
    let (ok, limited, other) = flood(&url, None, 4, Duration::from_secs(1));
    assert!(limited > 0 && ok <= 5 + 10 + 2, "admitted {ok}, refused {limited}, other {other}");
    let garbage = get(&url, &[("authorization", "Bearer not.a.token")]);
    assert_eq!(garbage.status, 429, "limited before the token is read: {}", garbage.text());
    assert_eq!(metric(&gw.admin, "gateway_requests_total{route=\"anon\",decision=\"unauthenticated\"}"), Some(0.0));
}

#[test]
fn a_shadow_limit_counts_what_it_would_refuse_and_refuses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path());
    let alice = format!("Bearer {}", token("alice", &["reader"]));
    let (ok, limited, other) = flood(&format!("{}/shadow/x", gw.base), Some(alice), 4, Duration::from_secs(1));
    assert_eq!((limited, other), (0, 0), "{ok} admitted");
    let would =
        metric(&gw.admin, "gateway_rate_limited_total{route=\"shadowed\",limit=\"per_user_shadow\",mode=\"shadow\"}");
    let would = would.unwrap_or(0.0);
    assert!(would > 0.0 && would < ok as f64, "would have refused {would} of {ok}");
}

#[test]
fn a_request_the_policy_denies_spends_none_of_its_keys_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway(dir.path());
    let mallory = format!("Bearer {}", token("mallory", &["reader"]));
    let url = format!("{}/limited/x", gw.base);
    for _ in 0..60 {
        assert_eq!(get(&url, &[("authorization", mallory.as_str())]).status, 403);
    }
    assert_eq!(
        metric(&gw.admin, "gateway_rate_limited_total{route=\"limited\",limit=\"per_user\",mode=\"enforce\"}"),
        Some(0.0)
    );
}

const TIERS: &str = "package http.tiers\n\nimport rego.v1\n\ndecision := {\"allow\": true, \"rate_limit\": \"gold\"} if input.jwt.claims.tier == \"gold\"\n\nelse := {\"allow\": true, \"rate_limit\": \"free\"}\n";

#[test]
fn a_decision_names_the_limit_of_the_callers_tier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let limits = "\nrate_limits:\n  gold: { key: jwt.sub, rate: 1/h, burst: 5 }\n  free: { key: jwt.sub, rate: 1/h, burst: 2 }\n";
    let route = "  - name: tiered\n    match: { path_prefix: /tiered }\n    upstream: backend\n    policy: data.http.tiers.decision\n";
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), limits, route, &[("http/tiers.rego", TIERS)]);
    let gw = start_gateway_with(dir.path(), &bundle, "");
    let claims = |sub: &str, tier: &str| serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tier": tier, "iat": now(), "exp": now() + 600});
    let statuses = |claims: serde_json::Value| -> Vec<u16> {
        let auth = format!("Bearer {}", token_with("es256", claims));
        (0..7).map(|_| get(&format!("{}/tiered/x", gw.base), &[("authorization", auth.as_str())]).status).collect()
    };
    assert_eq!(statuses(claims("carol", "free")), [200, 200, 429, 429, 429, 429, 429]);
    assert_eq!(statuses(claims("dave", "gold")), [200, 200, 200, 200, 200, 429, 429]);
    let refused = metric(&gw.admin, "gateway_rate_limited_total{route=\"tiered\",limit=\"free\",mode=\"enforce\"}");
    assert_eq!(refused, Some(5.0));
}
