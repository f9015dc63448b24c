//! Upstream pools: round robin across targets, and health checks that take a dead target out.

mod common;

use common::*;
use std::collections::BTreeMap;

#[test]
fn round_robin_spreads_requests_and_health_checks_remove_a_dead_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = echo_upstream("a");
    let b = echo_upstream("b");
    let bundle = example_bundle(dir.path(), &format!("{}\", \"{}", a.addr, b.addr), "", "", &[]);
    let gw = start_gateway(dir.path(), &bundle);
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let r = get(&format!("{}/public/x", gw.base), &[]);
        assert_eq!(r.status, 200, "{r:?}");
        *seen.entry(r.json()["upstream"].as_str().unwrap_or("").to_owned()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");

    drop(b);
    // The health check runs every 200ms in the test bundle; give it a few rounds.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    for _ in 0..20 {
        let r = get(&format!("{}/public/x", gw.base), &[]);
        assert_eq!(r.status, 200, "a dead target must not receive requests: {r:?}");
        assert_eq!(r.json()["upstream"], "a");
    }
}
