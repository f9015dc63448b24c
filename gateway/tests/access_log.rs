//! The access log and request ids through the real binary: one JSON line per request, checked
//! field by field; W3C `traceparent` honoured; the file reopened on SIGUSR1; a sink that stops
//! reading drops (and counts) lines while requests go on being served.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn gateway_logging_to(dir: &Path, log: &Path, queue: usize) -> (Gateway, Upstream) {
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir, &up.addr.to_string(), "", "", &[]);
    let extra = format!("access_log: {{ path: {}, queue: {queue} }}\n", log.display());
    let gw = start_gateway_with(dir, &bundle, &extra);
    (gw, up)
}

fn lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn wait_lines(log: &Path, n: usize) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(5), "the access log to have its lines", || lines(log).len() >= n);
    lines(log)
}

#[test]
fn every_request_is_one_json_line_with_its_request_id_decision_and_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let (gw, up) = gateway_logging_to(dir.path(), &log, 1024);
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let tok = test_support::http::bearer(&token("alice", &["reader"]));
    let allowed = get(
        &format!("{}/orders/7/../8", gw.base),
        &[("authorization", &tok), ("traceparent", &traceparent), ("x-request-id", "forged")],
    );
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.header("x-request-id"), Some(TRACE), "the trace id is the request id");
    let seen = &allowed.json()["headers"];
    assert_eq!(seen["x-request-id"], TRACE, "the upstream gets the request id, not the client's: {seen}");
    let upstream_tp = seen["traceparent"].as_str().unwrap_or("");
    assert!(
        upstream_tp.starts_with(&format!("00-{TRACE}-")) && !upstream_tp.contains("00f067aa0ba902b7"),
        "{upstream_tp}"
    );

    let denied = get(&format!("{}/orders/7", gw.base), &[]);
    assert_eq!(denied.status, 401);
    let denied_id = denied.header("x-request-id").unwrap_or("").to_owned();
    assert_eq!(denied_id.len(), 32, "a generated id: {denied:?}");
    let refused = get(&format!("{}/public/%2e%2e%2fadmin", gw.base), &[]);
    assert_eq!(refused.status, 400);
    assert_eq!(get(&format!("{}/nowhere", gw.base), &[]).status, 404);

    let all = wait_lines(&log, 4);
    assert_eq!(all.len(), 4, "one line per request: {all:?}");
    // Lines are queued as requests end, so two requests in a row may log in either order.
    let by_status =
        |s: u16| all.iter().find(|l| l["status"] == s).cloned().unwrap_or_else(|| panic!("no {s}: {all:?}"));
    let l = [by_status(200), by_status(401), by_status(400), by_status(404)];
    let a = &l[0];
    assert_eq!(a["request_id"], TRACE);
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/orders/8", "the canonical path");
    assert_eq!(a["host"], "127.0.0.1");
    assert_eq!(a["client_ip"], "127.0.0.1");
    assert_eq!(a["route"], "orders");
    assert_eq!(a["status"], 200);
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["upstream"], up.addr.to_string());
    assert_eq!(a["upstream_status"], 200);
    assert!(a["bytes_out"].as_u64().is_some_and(|b| b > 0), "{a}");
    assert_eq!(a["bytes_in"], 0);
    assert!(a["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{a}");
    assert!(a["bundle_revision"].as_str().is_some_and(|r| !r.is_empty()), "{a}");
    assert!(
        time::OffsetDateTime::parse(a["time"].as_str().unwrap_or(""), &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{a}"
    );

    let d = &l[1];
    assert_eq!(
        (d["status"].clone(), d["decision"].clone(), d["route"].clone()),
        (401.into(), "deny".into(), "orders".into()),
        "{d}"
    );
    assert_eq!(d["request_id"], denied_id.as_str());
    assert!(d["reason"].as_str().is_some_and(|r| r.contains("bearer token")), "{d}");
    assert!(d["upstream"].is_null() && d["upstream_status"].is_null(), "never reached the upstream: {d}");
    assert_eq!((l[2]["status"].clone(), l[2]["decision"].clone()), (400.into(), "refused".into()), "{}", l[2]);
    assert!(l[2]["reason"].as_str().is_some_and(|r| r.contains("encoded")), "{}", l[2]);
    assert_eq!((l[3]["status"].clone(), l[3]["decision"].clone()), (404.into(), "no_route".into()), "{}", l[3]);
    for line in &l {
        assert_eq!(line["bundle_revision"], a["bundle_revision"], "the bundle that handled it: {line}");
    }
}

#[test]
fn sigusr1_reopens_the_log_file_for_logrotate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let (gw, _up) = gateway_logging_to(dir.path(), &log, 1024);
    assert_eq!(get(&format!("{}/public/before", gw.base), &[]).status, 200);
    wait_lines(&log, 1);
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gw.proc.pid() as i32), nix::sys::signal::Signal::SIGUSR1)
        .expect("SIGUSR1");
    eventually(Duration::from_secs(5), "a request after the reopen to land in the new file", || {
        let _ = get(&format!("{}/public/after", gw.base), &[]);
        lines(&log).iter().any(|l| l["path"] == "/public/after")
    });
    let old = lines(&rotated);
    assert!(old.iter().any(|l| l["path"] == "/public/before"), "{old:?}");
    assert!(!lines(&log).iter().any(|l| l["path"] == "/public/before"));
}

#[test]
fn a_sink_that_stops_reading_drops_counted_lines_and_never_holds_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("access.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    // A reader that opens the pipe and never reads: the pipe fills and the writer blocks.
    use std::os::unix::fs::OpenOptionsExt;
    let _stuck_reader =
        std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).expect("open fifo");
    let (gw, _up) = gateway_logging_to(dir.path(), &fifo, 8);
    let long = "x".repeat(2000);
    for i in 0..400 {
        let r = get(&format!("{}/public/{i}?{long}", gw.base), &[]);
        assert_eq!(r.status, 200, "request {i} is served while the log is stuck: {r:?}");
    }
    let dropped = metric_settled(&gw.admin, "gateway_access_log_dropped_total", 1.0);
    assert!(dropped.is_some_and(|d| d >= 1.0), "lines that did not fit are counted: {dropped:?}");
}

#[test]
fn a_graceful_shutdown_writes_every_queued_line_before_the_process_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let (gw, _up) = gateway_logging_to(dir.path(), &log, 100_000);
    let n = 300;
    for i in 0..n {
        assert_eq!(get(&format!("{}/public/{i}", gw.base), &[]).status, 200);
    }
    // At once, before the writer's next 50 ms drain: the lines are still queued.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(gw.proc.pid() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    eventually(Duration::from_secs(20), "the gateway to exit", || gw.proc.exited().is_some());
    let written = lines(&log).iter().filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/public/"))).count();
    assert_eq!(written, n, "every answered request has its line after the exit");
}
