//! control-api under abuse, through the real binary over loopback: a token holder that opens
//! thousands of idle connections and holds thousands of long polls cannot keep another token's
//! publish from completing and waking the fleet; past `max_connections` a connection is closed at
//! once; a connection that sends no request head is closed after `header_timeout`. Each cut is
//! counted in `control_api_limited_total{limit}`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A read token of someone who should not be able to starve the others.
const ABUSER: &str = "abusive-read-token";

/// Raises this process's open-file limit to its hard limit (the server started after inherits
/// it): the abuse test holds over 10,000 sockets on each side. Fails the test, naming the limit,
/// when the hard limit is too low.
fn room_for_sockets(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    assert!(hard >= needed, "the open-file hard limit ({hard}) is below the {needed} this test needs");
    if lim.current.is_some_and(|c| c < needed) {
        setrlimit(Resource::Nofile, Rlimit { current: Some(hard.min(1 << 20)), maximum: lim.maximum })
            .expect("raise the open-file limit");
    }
}

fn start(dir: &std::path::Path, extra: &str) -> Server {
    let tokens = format!("  - name: abuser\n    scope: read\n    sha256: {}\n", hash(ABUSER));
    Server::start(&write_config_with_tokens(dir, "sqlite://./data/control.db", extra, &tokens))
}

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_owned()
}

/// A long poll for `main` past `etag`, written and left unread.
fn held_long_poll(s: &Server, token: &str, etag: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr(s)).expect("connect");
    let req = format!(
        "GET /v1/bundles/main HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nif-none-match: {etag}\r\nprefer: wait=120\r\n\r\n"
    );
    c.write_all(req.as_bytes()).expect("write");
    c
}

#[test]
fn thousands_of_idle_connections_and_held_long_polls_do_not_stop_another_tokens_publish() {
    const IDLE: usize = 5000;
    const POLLS: usize = 5000;
    room_for_sockets(12_000);
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "max_connections: 12000\nheader_timeout: 60s\nmax_long_polls_per_token: 1000");
    assert_eq!(s.publish("main", &bundle("v1")).status, 201);
    let etag = s.active_etag("main").expect("v1");

    // The fleet: three gateways (the `gateways` token) waiting for the next revision.
    let fleet: Vec<_> = (0..3)
        .map(|_| {
            let base = s.base.clone();
            let tag = etag.clone();
            std::thread::spawn(move || {
                let url = format!("{base}/v1/bundles/main");
                let r = call("GET", &url, Some(READ_TOKEN), &[("if-none-match", &tag), ("prefer", "wait=120")], None);
                (r.status, Instant::now())
            })
        })
        .collect();
    s.wait_for_waiters(3.0);

    // The abuser: idle connections, and long polls well past its share.
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr(&s)).expect("connect an idle connection"));
    }
    let idle_took = started.elapsed();
    let mut polls = Vec::with_capacity(POLLS);
    for _ in 0..POLLS {
        polls.push(held_long_poll(&s, ABUSER, &etag));
    }
    let polls_took = started.elapsed();
    eventually(Duration::from_secs(30), "the abuser's long polls past its share answered at once", || {
        s.metric("control_api_limited_total{limit=\"long_polls\"}") >= (POLLS - 1000) as f64
    });
    let held = s.metric("control_api_long_poll_waiters");
    println!(
        "{IDLE} idle connections opened in {idle_took:?}; {POLLS} long polls sent by {polls_took:?}, answered or held by {:?}; {held} held",
        started.elapsed()
    );
    assert_eq!(held, 1003.0, "the abuser holds its share (1000), the fleet its 3");

    // Another token publishes: it completes, and the fleet is woken within a second.
    let t0 = Instant::now();
    let r = s.publish("main", &bundle("v2"));
    let published = Instant::now();
    assert_eq!(r.status, 201, "{}", r.text());
    let mut slowest = Duration::ZERO;
    for f in fleet {
        let (status, at) = f.join().expect("fleet thread");
        assert_eq!(status, 200, "a waiting gateway gets v2");
        let woke = at.saturating_duration_since(published);
        assert!(woke < Duration::from_secs(1), "woken {woke:?} after the publish");
        slowest = slowest.max(woke);
    }
    println!("publish under abuse: {:?}; the fleet's last long poll answered {slowest:?} after it", published - t0);
    assert!(published - t0 < Duration::from_secs(10), "the publish took {:?}", published - t0);
    drop(idle);
    drop(polls);
}

#[test]
fn a_connection_past_max_connections_is_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "max_connections: 20\nheader_timeout: 60s");
    let idle: Vec<_> = (0..20).map(|_| TcpStream::connect(addr(&s)).expect("connect")).collect();
    eventually(Duration::from_secs(5), "20 connections accepted", || {
        // The 21st, made to count: the server closes it at once, without an answer.
        let mut extra = TcpStream::connect(addr(&s)).expect("connect");
        extra.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        matches!(extra.read(&mut buf), Ok(0) | Err(_))
    });
    drop(idle);
    // Room again: the next connection is served (its metric read is an answer of its own).
    eventually(Duration::from_secs(5), "a connection served once the idle ones left", || {
        s.metric("control_api_limited_total{limit=\"connections\"}") >= 1.0
    });
}

#[test]
fn a_connection_that_sends_no_request_head_is_closed_after_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "header_timeout: 1s");
    let mut slow = TcpStream::connect(addr(&s)).expect("connect");
    slow.write_all(b"GET /v1/fleet HTTP/1.1\r\nhost: x\r\n").expect("a head without its end");
    slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let closed = t0.elapsed();
    assert!(closed >= Duration::from_millis(800) && closed < Duration::from_secs(5), "closed after {closed:?}");
    eventually(Duration::from_secs(5), "the timeout counted", || {
        s.metric("control_api_limited_total{limit=\"header_timeout\"}") >= 1.0
    });
    // A well-behaved client is unaffected.
    assert_eq!(call("GET", &s.url("/healthz"), None, &[], None).status, 200);
}
