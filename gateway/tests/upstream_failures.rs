//! When upstream targets fail, through the real binary: targets that refuse connections, reset
//! them, or answer 503 (a scriptable HTTP/1.1 server on a loopback port that counts what it
//! was sent), against the retries, the retry budget and outlier ejection of an upstream's
//! settings.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// What a scripted target does with each request.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Ok = 0,
    /// Answers 503.
    Unavailable = 1,
    /// Closes the connection without a byte of response.
    Reset = 2,
    /// Reads the request and never answers.
    Stall = 3,
    /// Answers 500: the application failing.
    ServerError = 4,
}

/// A scripted target: an HTTP/1.1 server counting the requests it reads, by method.
struct Target {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    gets: Arc<AtomicU64>,
    posts: Arc<AtomicU64>,
}

impl Target {
    fn start(mode: Mode) -> Target {
        Target::on(TcpListener::bind("127.0.0.1:0").expect("bind"), mode)
    }

    fn on(listener: TcpListener, mode: Mode) -> Target {
        let addr = listener.local_addr().expect("addr");
        let t = Target { addr, mode: Arc::new(AtomicU8::new(mode as u8)), gets: Arc::default(), posts: Arc::default() };
        let (m, gets, posts) = (t.mode.clone(), t.gets.clone(), t.posts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (m, gets, posts) = (m.clone(), gets.clone(), posts.clone());
                std::thread::spawn(move || serve(conn, &m, &gets, &posts));
            }
        });
        t
    }

    fn requests(&self) -> u64 {
        self.gets.load(Ordering::SeqCst) + self.posts.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, mode: &AtomicU8, gets: &AtomicU64, posts: &AtomicU64) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if line.starts_with("POST") { posts } else { gets }.fetch_add(1, Ordering::SeqCst);
        let answer: &[u8] = match mode.load(Ordering::SeqCst) {
            0 => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            1 => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown",
            4 => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops",
            3 => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            _ => {
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        if out.write_all(answer).is_err() {
            return;
        }
    }
}

/// A loopback port nothing listens on: connections to it are refused.
fn refusing_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

const OPEN: &str = "package http.open\n\nimport rego.v1\n\ndefault allow := true\n";

/// A gateway whose route `/flaky` goes to upstream `flaky` of `targets`, with `settings` (YAML
/// lines of the upstream, indented by four spaces).
fn gateway(dir: &Path, targets: &[SocketAddr], settings: &str) -> (Gateway, Upstream) {
    let up = echo_upstream("backend");
    let list = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    let upstream = format!("  flaky:\n    targets: [{list}]\n    connect_timeout: 500ms\n{settings}");
    // `/flaky` with the upstream's retries as they are; `/repeatable` lets them repeat a POST.
    let route = "  - name: flaky\n    match: { path_prefix: /flaky }\n    upstream: flaky\n    policy: data.http.open.allow\n  - name: repeatable\n    match: { path_prefix: /repeatable }\n    upstream: flaky\n    policy: data.http.open.allow\n    retry_non_idempotent: true\n";
    let bundle = example_bundle(dir, &up.addr.to_string(), &upstream, route, &[("http/open.rego", OPEN)]);
    (start_gateway(dir, &bundle), up)
}

fn post(url: &str, body: &[u8]) -> u16 {
    request("POST", url, &[("content-type", "text/plain")], Some(body)).status
}

#[test]
fn one_of_three_targets_refusing_connections_fails_no_request_and_is_ejected_until_it_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, c) = (Target::start(Mode::Ok), Target::start(Mode::Ok));
    let refusing = refusing_port();
    let settings = "    outlier: { consecutive_failures: 3, base_ejection: 1s }\n";
    let (gw, _up) = gateway(dir.path(), &[a.addr, refusing, c.addr], settings);
    let url = format!("{}/flaky/x", gw.base);
    let statuses: Vec<u16> = (0..100).map(|_| get(&url, &[]).status).collect();
    assert!(statuses.iter().all(|s| *s == 200), "every GET answered 200: {statuses:?}");
    let target = refusing.to_string();
    let ejections = gw.metric_sum("gateway_upstream_ejections_total", &[("upstream", "flaky"), ("target", &target)]);
    assert_eq!(ejections, Some(1.0), "ejected once in 100 requests");
    let retried = gw.metric_sum("gateway_upstream_retries_total", &[("upstream", "flaky")]).unwrap_or(0.0);
    assert!((3.0..=4.0).contains(&retried), "each connect failure before the ejection was retried: {retried}");
    let status = gw.status();
    let flaky = &status["bundle"]["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["name"] == "flaky")
        .cloned()
        .expect("flaky");
    let t = flaky["targets"].as_array().expect("targets").iter().find(|t| t["address"] == target.as_str()).cloned();
    assert_eq!(t.as_ref().map(|t| t["state"].clone()), Some("ejected".into()), "{flaky}");

    // It heals: once its second is over it is sent requests again.
    let healed = Target::on(TcpListener::bind(refusing).expect("the port again"), Mode::Ok);
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..30 {
        assert_eq!(get(&url, &[]).status, 200);
    }
    assert!(healed.requests() >= 5, "the healed target serves again: {}", healed.requests());
}

#[test]
fn every_target_answering_503_sees_at_most_one_plus_the_budget_of_the_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let targets: Vec<Target> = (0..3).map(|_| Target::start(Mode::Unavailable)).collect();
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    let settings = "    retries: { attempts: 3, on: [\"503\"], budget: { ratio: 0.2, min_per_second: 0 } }\n    outlier: { consecutive_failures: 0 }\n";
    let (gw, _up) = gateway(dir.path(), &addrs, settings);
    let url = format!("{}/flaky/x", gw.base);
    let n = 500;
    let statuses: Vec<u16> = (0..n).map(|_| get(&url, &[]).status).collect();
    assert!(statuses.iter().all(|s| *s == 503), "the clients get the 503s");
    let seen: u64 = targets.iter().map(Target::requests).sum();
    let ratio = seen as f64 / n as f64;
    eprintln!("{n} requests, {seen} reached the targets: {ratio:.3} x");
    assert!(ratio <= 1.2 + 0.01, "at most (1 + 0.2) x the offered requests: {ratio}");
    assert!(ratio > 1.1, "the budget was used: {ratio}");
    let exhausted = gw.metric_sum("gateway_upstream_retry_budget_exhausted_total", &[]).unwrap_or(0.0);
    assert!(exhausted > 0.0, "the budget refused retries and said so");
}

#[test]
fn a_post_is_never_retried_but_a_get_is_retried_on_another_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reset, ok) = (Target::start(Mode::Reset), Target::start(Mode::Ok));
    let (gw, _up) = gateway(dir.path(), &[reset.addr, ok.addr], "    outlier: { consecutive_failures: 0 }\n");
    let url = format!("{}/flaky/x", gw.base);
    let posts: Vec<u16> = (0..20).map(|_| post(&url, b"an order")).collect();
    let failed = posts.iter().filter(|s| **s == 502).count() as u64;
    assert_eq!(reset.posts.load(Ordering::SeqCst), failed, "each POST the resetting target read failed: {posts:?}");
    assert_eq!(reset.posts.load(Ordering::SeqCst) + ok.posts.load(Ordering::SeqCst), 20, "no POST was sent twice");
    assert!(failed > 0, "round robin sent POSTs to the resetting target");
    let gets: Vec<u16> = (0..20).map(|_| get(&url, &[]).status).collect();
    assert!(gets.iter().all(|s| *s == 200), "every GET answered by the other target: {gets:?}");
    assert!(reset.gets.load(Ordering::SeqCst) > 0, "GETs reached the resetting target and were retried");
    let retried = gw.metric_sum("gateway_upstream_retries_total", &[("upstream", "flaky"), ("reason", "reset")]);
    assert_eq!(retried, Some(reset.gets.load(Ordering::SeqCst) as f64));
    // A route whose backend makes a POST safe to repeat says so: its POSTs are retried too.
    let before = reset.posts.load(Ordering::SeqCst);
    let posts: Vec<u16> = (0..10).map(|_| post(&format!("{}/repeatable/x", gw.base), b"an order")).collect();
    assert!(posts.iter().all(|s| *s == 200), "{posts:?}");
    assert!(reset.posts.load(Ordering::SeqCst) > before, "round robin sent some to the resetting target");
}

#[test]
fn a_target_that_stalls_is_given_up_on_after_the_per_try_timeout_and_another_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stalls, ok) = (Target::start(Mode::Stall), Target::start(Mode::Ok));
    let settings =
        "    read_timeout: 10s\n    retries: { per_try_timeout: 300ms }\n    outlier: { consecutive_failures: 0 }\n";
    let (gw, _up) = gateway(dir.path(), &[stalls.addr, ok.addr], settings);
    let url = format!("{}/flaky/x", gw.base);
    for _ in 0..4 {
        let started = std::time::Instant::now();
        assert_eq!(get(&url, &[]).status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a stalled try lasts the per-try timeout, not the read timeout"
        );
    }
    assert!(stalls.gets.load(Ordering::SeqCst) >= 1, "round robin reached the stalling target");
    let retried = gw.metric_sum("gateway_upstream_retries_total", &[("upstream", "flaky"), ("reason", "reset")]);
    assert_eq!(retried, Some(stalls.gets.load(Ordering::SeqCst) as f64));
}

/// Established connections whose local port is `port` (the server's side of each), from
/// `/proc/net/tcp`.
/// The remote addresses of the established connections whose local port is `port` (a set: the
/// kernel writes the table in pieces, and a connection may appear twice in one read).
fn connections_to(port: u16) -> std::collections::HashSet<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[1].ends_with(&port) && f[3] == "01").then(|| f[2].to_owned())
        })
        .collect()
}

/// `connections` h2c connections to `addr`, each with `streams` GETs of `path` in flight at
/// once, `rounds` times; the statuses.
async fn h2_streams(addr: String, path: &'static str, connections: usize, streams: usize, rounds: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut statuses = Vec::new();
            for _ in 0..rounds {
                let mut inflight = Vec::new();
                for _ in 0..streams {
                    let mut c = client.clone().ready().await.expect("ready");
                    let req = http::Request::get(format!("http://{addr}{path}")).body(()).expect("request");
                    let (resp, _) = c.send_request(req, true).expect("send");
                    inflight.push(resp);
                }
                for r in inflight {
                    statuses.push(match r.await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let mut body = resp.into_body();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            status
                        }
                        Err(_) => 0,
                    });
                }
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

/// 640 h2 streams in flight through the gateway to one upstream target (`--h2` for an HTTP/2
/// one) capped at 16: the most connections the target held at once, and over the run.
fn six_hundred_forty_streams_to_a_capped_upstream(h2: bool) -> (usize, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--listen", "127.0.0.1:0", "--name", "capped"];
    if h2 {
        args.push("--h2");
    }
    let (_backend, backend) =
        Proc::spawn_listening(std::process::Command::new(workspace_bin("echo-upstream")).args(&args));
    let port = backend.port();
    let upstream = format!(
        "  capped:\n    targets: [\"{backend}\"]\n    http2: {h2}\n    max_connections: 16\n    max_pending: 1000\n    pending_timeout: 10s\n"
    );
    let route = "  - name: capped\n    match: { path_prefix: /capped }\n    upstream: capped\n    policy: data.http.open.allow\n";
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), &upstream, route, &[("http/open.rego", OPEN)]);
    let gw = start_gateway_with(dir.path(), &bundle, "h2c: true\n");
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let most = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, most) = (done.clone(), most.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            while !done.load(Ordering::SeqCst) {
                let now = connections_to(port);
                most.fetch_max(now.len() as u64, Ordering::SeqCst);
                seen.extend(now);
                std::thread::sleep(Duration::from_millis(2));
            }
            seen.len()
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // Ten connections of 64 streams each: 640 in flight, three times over.
    let statuses = rt.block_on(h2_streams(addr, "/capped/x?sleep_ms=20", 10, 64, 3));
    done.store(true, Ordering::SeqCst);
    let distinct = sampler.join().expect("sampler");
    let most = most.load(Ordering::SeqCst);
    eprintln!(
        "h2 upstream {h2}: {} requests, at most {most} upstream connections at once, {distinct} over the run",
        statuses.len()
    );
    let not_ok: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert_eq!(statuses.len(), 1920);
    assert!(not_ok.is_empty(), "{} not 200: {:?}", not_ok.len(), &not_ok[..not_ok.len().min(10)]);
    assert_eq!(
        gw.metric_sum("gateway_upstream_pending_overflow_total", &[]).unwrap_or(0.0),
        0.0,
        "none waited too long"
    );
    (distinct, most)
}

#[test]
fn six_hundred_forty_h2_streams_reach_an_http1_upstream_over_at_most_sixteen_connections() {
    // Measured without the cap (max_connections: 1024): 618 at once, 766 over the run.
    let (_, most) = six_hundred_forty_streams_to_a_capped_upstream(false);
    assert!(most <= 16, "at most 16 connections to the upstream at once, saw {most}");
    assert!(most >= 8, "the cap was reached, not the load too light: {most}");
}

#[test]
fn six_hundred_forty_h2_streams_reach_an_h2_upstream_over_at_most_sixteen_connections() {
    let (distinct, most) = six_hundred_forty_streams_to_a_capped_upstream(true);
    assert!(most <= 16 && distinct <= 16, "at most 16 connections: {most} at once, {distinct} over the run");
}

#[test]
fn past_its_connections_and_its_queue_an_upstream_is_spared_with_a_503_and_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = echo_upstream("slow");
    let settings = "    max_connections: 1\n    max_pending: 1\n    pending_timeout: 300ms\n";
    let (gw, _up) = gateway(dir.path(), &[slow.addr], settings);
    let url = format!("{}/flaky/x?sleep_ms=1500", gw.base);
    let answers: Vec<Resp> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(50 * i));
                    get(&url, &[])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "one in flight: {statuses:?}");
    let refused: Vec<&Resp> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!(refused.len(), 3, "{statuses:?}");
    assert!(refused.iter().all(|r| r.header("retry-after") == Some("1")), "every 503 says when to come back");
    let full = gw.metric_sum("gateway_upstream_pending_overflow_total", &[("reason", "queue_full")]).unwrap_or(0.0);
    let waited = gw.metric_sum("gateway_upstream_pending_overflow_total", &[("reason", "timeout")]).unwrap_or(0.0);
    assert_eq!((full, waited), (2.0, 1.0), "two found the queue full, one waited its 300 ms");
}

#[test]
fn a_client_whose_requests_make_the_application_fail_cannot_eject_its_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (Target::start(Mode::ServerError), Target::start(Mode::ServerError));
    let (gw, _up) = gateway(dir.path(), &[a.addr, b.addr], "    outlier: { consecutive_failures: 2 }\n");
    let url = format!("{}/flaky/crash-me", gw.base);
    let statuses: Vec<u16> = (0..20).map(|_| get(&url, &[]).status).collect();
    assert!(statuses.iter().all(|s| *s == 500), "the application's answer reaches the client: {statuses:?}");
    assert_eq!(gw.metric_sum("gateway_upstream_ejections_total", &[]).unwrap_or(0.0), 0.0, "a 500 ejects nothing");
    assert_eq!(gw.metric_sum("gateway_upstream_retries_total", &[]).unwrap_or(0.0), 0.0, "nor is it retried");
}
