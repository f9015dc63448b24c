//! The gateway's promise against the real control plane: a publish reaches gateways within a
//! second under long poll, a control-api outage costs no request, a restart with the control
//! plane down serves from cache, and a fleet converges.

use std::time::Duration;

use e2e::*;
use test_support::http::get;
use test_support::postgres::TestDb;
use test_support::wait::eventually;

const POLL: &str = "  long_poll: 20s\n  min_delay: 200ms\n  max_delay: 400ms\n  backoff_max: 500ms\n  timeout: 2s\n";

#[test]
fn a_publish_reaches_three_gateways_within_a_second_and_the_fleet_sees_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, up) = echo_upstream("u");
    let cp = start_control_api(dir.path(), None);
    push(&cp.base, &example_tarball(&up.to_string(), "r1"), dir.path());
    let gws = gateway_fleet(dir.path(), &["gw-a", "gw-b", "gw-c"], &[&cp.base], POLL);
    for gw in &gws {
        assert_eq!(gw.revision(), "r1");
    }
    // Let every gateway settle into a held long poll.
    std::thread::sleep(Duration::from_millis(500));
    let published = std::time::Instant::now();
    let out = push(&cp.base, &example_tarball(&up.to_string(), "r2"), dir.path());
    assert!(out.contains("published"), "{out}");
    let mut times = Vec::new();
    for gw in &gws {
        eventually(Duration::from_secs(5), "r2 on every gateway", || gw.revision() == "r2");
        times.push(published.elapsed());
    }
    println!("publish-to-activation (cumulative, per gateway): {times:?}");
    assert!(times.iter().all(|t| *t < Duration::from_secs(1)), "{times:?}");

    // Status reports reach the fleet view.
    eventually(Duration::from_secs(20), "fleet lists three current gateways", || {
        let r = get_as_reader(&format!("{}/v1/fleet", cp.base));
        r.status == 200
            && r.json()
                .as_array()
                .map(|a| a.iter().filter(|g| g["revision"] == "r2" && g["current"] == true).count() == 3)
                .unwrap_or(false)
    });
}

#[test]
fn a_control_plane_outage_costs_no_request_and_recovery_downloads_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, up) = echo_upstream("u");
    let mut cp = start_control_api(dir.path(), None);
    push(&cp.base, &example_tarball(&up.to_string(), "r1"), dir.path());
    let mut gw = start_gateway(
        dir.path(),
        "gw",
        &[&cp.base],
        &format!(
            "{}  max_staleness: 2s\n",
            POLL.replace("long_poll: 20s", "long_poll: 1s").replace("timeout: 2s", "timeout: 500ms")
        ),
    );
    let traffic = Traffic::start(std::slice::from_ref(&gw.base), Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(500));
    let downloads_before = cp.metric("control_api_bundle_downloads_total{code=\"200\"}").unwrap_or(0.0);

    // SIGKILL mid long poll, and stay down past max_staleness.
    cp.kill9();
    eventually(Duration::from_secs(10), "stale flag", || gw.metric("gateway_bundle_stale") == Some(1.0));
    assert_eq!(get(&format!("{}/readyz", gw.admin), &[]).status, 200, "stale is an alert, not an outage");
    assert_eq!(gw.revision(), "r1");

    // A gateway restarted while the control plane is down boots from its cache.
    let before_restart = traffic.snapshot();
    gw.restart();
    gw.wait_ready();
    assert_eq!(gw.status()["bundle"]["source"], "cache");
    // The stream is one client sending one request at a time: once it has an answer from the
    // new process, every request it sent while the gateway was down has been counted. (Taken
    // straight after `wait_ready`, a refusal from the last moment of the restart could still be
    // on its way into the tally, and count as a failure after it.)
    let ready = traffic.snapshot();
    let mut mid = ready.clone();
    eventually(Duration::from_secs(10), "an answer from the restarted gateway", || {
        mid = traffic.snapshot();
        mid.sent - mid.failed - mid.wrong > ready.sent - ready.failed - ready.wrong
    });

    cp.restart();
    eventually(Duration::from_secs(10), "staleness clears", || gw.metric("gateway_bundle_stale") == Some(0.0));
    std::thread::sleep(Duration::from_millis(300));
    let tally = traffic.stop();
    println!(
        "outage traffic: sent {} failed {} wrong {} p99 {} us",
        tally.sent,
        tally.failed,
        tally.wrong,
        tally.p99_us()
    );
    // The restarted control-api counts afresh: the gateway's recovery was a 304, not a download.
    let downloads_after = cp.metric("control_api_bundle_downloads_total{code=\"200\"}").unwrap_or(0.0);
    assert_eq!(
        downloads_after, 0.0,
        "the gateway kept its ETag: no re-download (before the outage: {downloads_before})"
    );
    assert!(cp.metric("control_api_bundle_downloads_total{code=\"304\"}").unwrap_or(0.0) >= 1.0);
    // Requests during the kill and the staleness window: none may fail. Requests in flight while
    // the gateway itself was killed are excluded (that is a gateway restart, not the outage).
    assert_eq!(before_restart.failed, 0, "{:?}", before_restart.first_failure);
    assert_eq!(tally.wrong, 0, "{:?}", tally.first_failure);
    assert!(tally.failed - mid.failed == 0, "failures after the restart: {:?}", tally.first_failure);
    assert!(tally.sent > 300, "the stream was too thin: {}", tally.sent);
}

/// A held long poll (30 s) used to space a gateway's status reports 30 s apart, so a control
/// plane judging canaries with `silent_after` under that called healthy ones silent. Reports now
/// have a timer of their own (`report_interval`, ±10%).
#[test]
fn status_reports_arrive_every_report_interval_while_the_long_poll_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, up) = echo_upstream("u");
    let cp = start_control_api(dir.path(), None);
    push(&cp.base, &example_tarball(&up.to_string(), "r1"), dir.path());
    let keys = "  long_poll: 30s\n  timeout: 2s\n  max_staleness: 60s\n  report_interval: 1s\n";
    let _gw = start_gateway(dir.path(), "gw-r", &[&cp.base], keys);
    let last_report = || {
        let fleet = get_as_reader(&format!("{}/v1/fleet", cp.base)).json();
        let me = fleet.as_array().and_then(|a| a.iter().find(|g| g["instance"] == "gw-r").cloned());
        me.and_then(|g| g["last_report"].as_str().map(str::to_owned))
    };
    let started = std::time::Instant::now();
    let mut seen: Vec<(String, std::time::Instant)> = Vec::new();
    while started.elapsed() < Duration::from_secs(7) {
        if let Some(at) = last_report() {
            if seen.last().map(|(s, _)| s != &at).unwrap_or(true) {
                seen.push((at, std::time::Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gaps: Vec<u128> = seen.windows(2).map(|w| (w[1].1 - w[0].1).as_millis()).collect();
    println!("{} reports in 7 s with the long poll held; gaps (ms): {gaps:?}", seen.len());
    assert!(seen.len() >= 6, "a report about every second: {gaps:?}");
    assert!(gaps.iter().all(|g| (600..=1600).contains(g)), "every gap within the interval and its jitter: {gaps:?}");
}

/// The store two replicas share: a fresh PostgreSQL database (as replicas are deployed), or
/// one SQLite file where no PostgreSQL is configured outside CI.
fn shared_store(dir: &std::path::Path) -> (Option<TestDb>, String) {
    match TestDb::create() {
        Some(db) => {
            let url = db.url.clone();
            (Some(db), url)
        }
        None => (None, format!("sqlite://{}", dir.join("shared.db").display())),
    }
}

/// Two replicas on one store, the gateway listing both; the one it long-polls goes away
/// (`stop`), a publish through the other follows 0.3 s later: the time until the gateway has it.
/// It used to ask the next replica without holding, get a quick 304, and then sleep a whole
/// poll interval (3-4 s here) before long-polling it; it now long-polls it at once.
fn publish_after_failover(stop: fn(&test_support::control_api::ControlApi)) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, up) = echo_upstream("u");
    let (_db, store) = shared_store(dir.path());
    let a = start_control_api(dir.path(), Some(&store));
    push(&a.base, &example_tarball(&up.to_string(), "r1"), dir.path());
    let b = start_control_api(dir.path(), Some(&store));
    let keys = "  long_poll: 20s\n  min_delay: 3s\n  max_delay: 4s\n  backoff_max: 500ms\n  timeout: 2s\n  max_staleness: 60s\n";
    let gw = start_gateway(dir.path(), "gw-f", &[&a.base, &b.base], keys);
    assert_eq!(gw.revision(), "r1");
    // Settled into a held long poll on the first replica, which goes away.
    std::thread::sleep(Duration::from_millis(500));
    stop(&a);
    std::thread::sleep(Duration::from_millis(300));
    let published = std::time::Instant::now();
    push(&b.base, &example_tarball(&up.to_string(), "r2"), dir.path());
    eventually(Duration::from_secs(6), "r2 on the gateway", || gw.revision() == "r2");
    published.elapsed()
}

#[test]
fn after_its_source_is_killed_a_gateway_long_polls_the_next_at_once() {
    let took = publish_after_failover(|a| a.kill9());
    println!("SIGKILL: a publish 0.3 s after the failover active on the gateway {} ms later", took.as_millis());
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn after_its_source_stops_gracefully_a_gateway_long_polls_the_next_at_once() {
    // A replica stopping releases its held long polls at once (304): it held them, and says so
    // (`Preference-Applied`), so the gateway asks again at once, finds it gone, and moves on.
    let took = publish_after_failover(|a| {
        let _ = std::process::Command::new("kill").args(["-TERM", &a.proc.pid().to_string()]).status();
    });
    println!("SIGTERM: a publish 0.3 s after the failover active on the gateway {} ms later", took.as_millis());
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// Two replicas on one PostgreSQL, the gateway long-polling the first; every database
/// connection of that replica is cut for 5 s and a publish goes through the other 0.3 s after
/// the cut. The cut-off replica stops answering as current within `store_stale_after` (3 s):
/// it releases the held long poll with 503, the gateway moves to the other replica and has the
/// publish; when the database is back the first replica is ready again by itself.
#[test]
fn a_gateway_moves_on_from_a_replica_cut_off_from_postgresql() {
    let Some(db) = TestDb::create() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, up) = echo_upstream("u");
    let relay = test_support::relay::Relay::start(db.addr());
    let a = start_control_api(dir.path(), Some(&db.url_through(relay.addr)));
    push(&a.base, &example_tarball(&up.to_string(), "r1"), dir.path());
    let b = start_control_api(dir.path(), Some(&db.url));
    let keys = "  long_poll: 20s\n  min_delay: 3s\n  max_delay: 4s\n  backoff_max: 500ms\n  timeout: 2s\n  max_staleness: 60s\n";
    let gw = start_gateway(dir.path(), "gw-c", &[&a.base, &b.base], keys);
    assert_eq!(gw.revision(), "r1");
    std::thread::sleep(Duration::from_millis(500));
    let cut = std::time::Instant::now();
    relay.cut();
    std::thread::sleep(Duration::from_millis(300));
    push(&b.base, &example_tarball(&up.to_string(), "r2"), dir.path());
    eventually(Duration::from_secs(8), "r2 on the gateway", || gw.revision() == "r2");
    let took = cut.elapsed();
    println!("cut off: a publish 0.3 s after the cut active on the gateway {} ms after the cut", took.as_millis());
    assert!(took < Duration::from_secs(5), "{took:?}");
    let ready = |cp: &test_support::control_api::ControlApi| {
        test_support::http::get(&format!("{}/readyz", cp.base), &[]).status
    };
    assert_eq!(ready(&a), 503);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed()));
    relay.restore();
    let back = eventually(Duration::from_secs(15), "replica a ready again", || ready(&a) == 200);
    println!("replica a ready again {} ms after the database came back", back.as_millis());
    let r = test_support::http::get(
        &format!("{}/v1/bundles/main", a.base),
        &[("authorization", &test_support::http::bearer(e2e::READ_TOKEN))],
    );
    assert_eq!(r.header("x-bundle-revision"), Some("r2"), "replica a serves what was published while it was cut off");
}
