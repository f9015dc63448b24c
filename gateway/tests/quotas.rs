//! Fleet-wide quotas (`scope: global`) through the real binaries: three gateways, one real Redis
//! (Debian's `redis-server`, started by the test), one quota of 300 requests a second on a route,
//! and a paced stream of requests with 80% of it on one gateway. Counted by Unix second, as the
//! quota's windows are.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use test_support::redis::Redis;

const OPEN: &str = "package http.open\n\nimport rego.v1\n\ndefault allow := true\n";

const LIMITS: &str = "
rate_limits:
  fleet: { key: route, rate: 300/s, scope: global }
";

const ROUTE: &str = "  - name: fleet\n    match: { path_prefix: /fleet }\n    upstream: backend\n    policy: data.http.open.allow\n    rate_limits: [fleet]\n";

const QUOTA: u64 = 300;

struct Fleet {
    gateways: Vec<Gateway>,
    _upstream: Upstream,
}

fn fleet(dir: &Path, redis: &Redis) -> Fleet {
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir, &up.addr.to_string(), LIMITS, ROUTE, &[("http/open.rego", OPEN)]);
    let store = format!("quota_store: {{ url: \"{}\", sync_interval: 200ms, timeout: 100ms }}\n", redis.url());
    let gateways = ["a", "b", "c"]
        .iter()
        .map(|n| {
            GatewayConfig::new(dir.join(format!("gateway-{n}.yaml")))
                .launch(|l| l.bin(env!("CARGO_BIN_EXE_gateway")))
                .threads(1)
                .top(&format!("instance: {n}\n{store}"))
                .bundle_file(&bundle)
                .start()
        })
        .collect();
    Fleet { gateways, _upstream: up }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the stream got: by Unix second, by status, a count.
type Seconds = BTreeMap<u64, BTreeMap<u16, u64>>;

/// Sends `rate` requests a second to each gateway (`rates[i]` for `gateways[i]`, spread over
/// `threads[i]` paced threads) for `secs` seconds; each request's status is counted under the
/// Unix second it was sent in (0 for a transport error).
fn stream(gateways: &[Gateway], rates: &[u64], threads: &[u64], secs: u64) -> Seconds {
    let got: Arc<Mutex<Seconds>> = Arc::default();
    let until = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for (i, gw) in gateways.iter().enumerate() {
            for _ in 0..threads[i] {
                let (url, got) = (format!("{}/fleet/x", gw.base), got.clone());
                let every = Duration::from_secs_f64(threads[i] as f64 / rates[i] as f64);
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                    let mut next = Instant::now();
                    while next < until {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += every;
                        let sent = unix_ms() / 1000;
                        let status = match agent.get(&url).call() {
                            Ok(r) => r.status(),
                            Err(ureq::Error::Status(code, _)) => code,
                            Err(_) => 0,
                        };
                        *got.lock().expect("lock").entry(sent).or_default().entry(status).or_default() += 1;
                    }
                });
            }
        }
    });
    Arc::try_unwrap(got).map(|m| m.into_inner().expect("lock")).unwrap_or_default()
}

/// The whole seconds of a stream (its first and last, partial, left out).
fn whole(got: &Seconds) -> Vec<(u64, &BTreeMap<u16, u64>)> {
    let n = got.len();
    got.iter().enumerate().filter(|(i, _)| *i > 0 && *i + 1 < n).map(|(_, (s, c))| (*s, c)).collect()
}

fn count(c: &BTreeMap<u16, u64>, status: u16) -> u64 {
    c.get(&status).copied().unwrap_or(0)
}

fn assert_only_200_and_429(got: &Seconds) {
    for (s, c) in got {
        let other: u64 = c.iter().filter(|(st, _)| !matches!(st, 200 | 429)).map(|(_, n)| n).sum();
        assert_eq!(other, 0, "second {s}: statuses {c:?}: only 200 and 429 may answer");
    }
}

#[test]
fn three_gateways_under_skewed_load_admit_one_fleet_quota_between_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path());
    let f = fleet(dir.path(), &redis);
    // 600 r/s: 480 on one gateway, 60 on each of the others.
    let got = stream(&f.gateways, &[480, 60, 60], &[6, 1, 1], 7);
    assert_only_200_and_429(&got);
    let seconds = whole(&got);
    let mut admitted = Vec::new();
    for (s, c) in &seconds {
        let (ok, offered) = (count(c, 200), c.values().sum::<u64>());
        assert!(offered > QUOTA * 4 / 3, "second {s}: only {offered} sent, too few to test a quota of {QUOTA}");
        admitted.push(ok);
    }
    eprintln!("admitted by the fleet per second: {admitted:?} (quota {QUOTA})");
    for (i, ok) in admitted.iter().enumerate() {
        assert!(
            (QUOTA * 9 / 10..=QUOTA * 11 / 10).contains(ok),
            "whole second {i}: {ok} admitted, not within 10% of {QUOTA}: {admitted:?}"
        );
    }
    let limited: f64 = f.gateways.iter().filter_map(|g| g.metric_sum("gateway_rate_limited_total", &[])).sum();
    assert!(limited > 0.0, "refusals are counted");
    let status = f.gateways[0].status();
    assert_eq!(status["quota_store"]["up"], true, "{status}");
    assert_eq!(status["quota_store"]["fleet"], 3, "{status}");
}

#[test]
fn the_store_killed_and_restarted_mid_run_fails_nothing_but_429s_and_local_shares_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut redis = Redis::start(dir.path());
    let f = fleet(dir.path(), &redis);
    let rates = [480, 60, 60];
    let up = stream(&f.gateways, &rates, &[6, 1, 1], 3);
    redis.kill9();
    let down = stream(&f.gateways, &rates, &[6, 1, 1], 4);
    let status = f.gateways[0].status();
    assert_eq!(status["quota_store"]["up"], false, "{status}");
    assert!(status["quota_store"]["last_error"].is_string(), "{status}");
    let errors = f.gateways[0].metric_sum("gateway_quota_store_errors_total", &[]).unwrap_or(0.0);
    assert!(errors > 0.0, "the store's failures are counted");
    assert_eq!(f.gateways[0].metric("gateway_quota_store_up"), Some(0.0));
    redis.restart();
    let back = stream(&f.gateways, &rates, &[6, 1, 1], 4);
    for got in [&up, &down, &back] {
        assert_only_200_and_429(got);
    }
    // Down: each gateway enforces its share of the fleet's demand on its own counts.
    let admitted: Vec<u64> = whole(&down).iter().skip(1).map(|(_, c)| count(c, 200)).collect();
    eprintln!("store down, admitted per second: {admitted:?}");
    assert!(!admitted.is_empty());
    for ok in &admitted {
        assert!((QUOTA * 3 / 4..=QUOTA * 11 / 10).contains(ok), "store down: {admitted:?}");
    }
    // Back: the fleet's counts resume.
    let admitted: Vec<u64> = whole(&back).iter().skip(1).map(|(_, c)| count(c, 200)).collect();
    eprintln!("store back, admitted per second: {admitted:?}");
    for ok in &admitted {
        assert!((QUOTA * 9 / 10..=QUOTA * 11 / 10).contains(ok), "store back: {admitted:?}");
    }
    let keys: u64 = redis.command(&["DBSIZE"]).ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(keys > 1, "counts are exchanged again: {keys} keys");
    assert_eq!(f.gateways[0].status()["quota_store"]["up"], true);
}

#[test]
fn a_gateway_without_a_quota_store_refuses_a_bundle_with_a_global_limit_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), LIMITS, ROUTE, &[("http/open.rego", OPEN)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--check-config")
        .arg(write_config(dir.path(), &bundle))
        .output()
        .expect("gateway --check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("rate limit `fleet` is `scope: global`") && err.contains("quota_store"), "{err}");
}
