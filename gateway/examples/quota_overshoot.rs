//! How far a fleet overshoots a global quota, by `quota_store.sync_interval` and load: the
//! gateway's own quota code (`gateway::quota`) and a real Redis (`redis-server`, started here),
//! with time driven by the model so that the numbers do not depend on this machine's load.
//! Three gateways, each exchanging every `sync_interval` (staggered), one quota of 300 a second,
//! requests spread evenly over each millisecond.
//!
//! Writes a markdown table to stdout: for each interval and scenario, the most the fleet admitted
//! in any second (sliding, by the millisecond) against the quota, and the mean per whole second.
//!
//! `cargo run --release -p gateway --example quota_overshoot > loadtest/reports/quota-overshoot.md`

use std::time::Duration;

use gateway::config::QuotaStoreConfig;
use gateway::quota::{Counter, Quotas};
use gateway::rate_limit::Check;
use policy_bundles::rate_limits::{LimitKey, LimitMode, LimitScope, RateLimit};

const QUOTA: u32 = 300;
/// A window start far from the real clock.
const T0: u64 = 1_000_000_000_000;
const SECONDS: u64 = 12;

/// Requests per second to each of the three gateways at second `s`.
type Load = fn(u64) -> [u64; 3];

const SCENARIOS: [(&str, Load); 5] = [
    ("2x the quota, 80/10/10", |_| [480, 60, 60]),
    ("10x the quota, 80/10/10", |_| [2400, 300, 300]),
    ("2x, even", |_| [200, 200, 200]),
    ("2x, the busy gateway changes every second", |s| match s % 3 {
        0 => [480, 60, 60],
        1 => [60, 480, 60],
        _ => [60, 60, 480],
    }),
    ("idle, then 10x at once on every gateway", |s| if s < 4 { [0, 0, 0] } else { [1000, 1000, 1000] }),
];

fn limit() -> RateLimit {
    RateLimit {
        name: "fleet".into(),
        key: LimitKey::Route,
        quota: QUOTA,
        window: Duration::from_secs(1),
        burst: QUOTA,
        mode: LimitMode::Enforce,
        before_auth: false,
        scope: LimitScope::Global,
    }
}

/// Admitted requests by millisecond.
async fn run(url: &str, interval: Duration, load: Load) -> Vec<u32> {
    let config =
        QuotaStoreConfig { url: url.into(), sync_interval: interval, timeout: Duration::from_secs(1), keys: 128 };
    let metrics = gateway::metrics::Metrics::new().expect("metrics");
    let gws: Vec<Quotas> =
        ["a", "b", "c"].iter().map(|n| Quotas::new(&config, "main", n, &metrics).expect("store")).collect();
    let counters: Vec<Counter> = gws.iter().map(|q| q.counter(&limit(), None)).collect();
    let every = interval.as_millis() as u64;
    // A warm fleet: every gateway has exchanged (and knows the fleet's size) before traffic.
    for q in &gws {
        q.exchange_at(T0 - 500).await;
    }
    let mut admitted = vec![0u32; (SECONDS * 1000) as usize];
    for ms in 0..SECONDS * 1000 {
        let now = T0 + ms;
        let rates = load(ms / 1000);
        for (i, (q, c)) in gws.iter().zip(&counters).enumerate() {
            if (ms + i as u64 * every / 3) % every == 0 {
                q.exchange_at(now).await;
            }
            let n = (ms + 1) * rates[i] / 1000 - ms * rates[i] / 1000;
            for _ in 0..n {
                if matches!(c.count(b"k", now, true, true), Check::Allowed { .. }) {
                    admitted[ms as usize] += 1;
                }
            }
        }
    }
    admitted
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = test_support::redis::Redis::start(dir.path());
    println!("# Global quota overshoot by sync interval\n");
    println!("A model with the gateway's own quota code (`gateway::quota`) and a real Redis, time driven by the model");
    println!("(`cargo run --release -p gateway --example quota_overshoot`): three gateways, one quota of {QUOTA}/s,");
    println!(
        "{SECONDS} s, each gateway exchanging every `sync_interval` (staggered) and once before the first request."
    );
    println!("*Max 1 s*: the most the fleet admitted in any second, sliding by the millisecond. *Mean*: per whole");
    println!("second (the idle scenario's mean counts its 4 idle seconds; a mean under the quota with demand over it");
    println!("is shares lagging a moving demand, refusing early).\n");
    println!("| sync_interval | scenario | max 1 s | overshoot | mean / s |");
    println!("|---|---|---:|---:|---:|");
    for interval in [50, 100, 200, 500, 1000].map(Duration::from_millis) {
        for (name, load) in SCENARIOS {
            redis.command(&["FLUSHALL"]).expect("a fresh store for each run");
            let admitted = run(&redis.url(), interval, load).await;
            let from = 0;
            let max = (from..admitted.len() - 999)
                .map(|s| admitted[s..s + 1000].iter().map(|&n| u64::from(n)).sum::<u64>())
                .max()
                .unwrap_or(0);
            let whole: Vec<u64> =
                admitted[from..].chunks(1000).map(|c| c.iter().map(|&n| u64::from(n)).sum()).collect();
            let mean = whole.iter().sum::<u64>() as f64 / whole.len() as f64;
            let over = (max as f64 / f64::from(QUOTA) - 1.0) * 100.0;
            println!("| {} ms | {name} | {max} | {over:+.1}% | {mean:.0} |", interval.as_millis());
        }
    }
}
