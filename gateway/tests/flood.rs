//! A connection flood through the real binary: twice `limits.max_connections` half-open
//! connections (a request head sent without its end). Past the cap a connection is closed at
//! once; the held ones are closed after `limits.header_timeout`; a client already connected
//! keeps being served all along; and the memory the flood took is given back.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use test_support::process::rss;

const CAP: usize = 500;
/// What the flood may add to the gateway's resident memory while it holds `CAP` half-open
/// connections: 64 KB each (docs/src/operator/operating.md, "What a connection costs": measured 46 KB in a debug build,
/// 42 KB in a release one; 109 KB before the socket read buffer was cut to 4 KiB).
const FLOOD_RSS_BOUND: u64 = 32 << 20;

/// One kept-alive connection sending a request at a time: every latency, and the failures.
fn legit_stream(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<Duration>, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut took, mut failed) = (Vec::new(), Vec::new());
        let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut conn = conn;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            match one_request(&mut conn, &mut reader) {
                Ok(200) => took.push(started.elapsed()),
                Ok(status) => failed.push(format!("status {status}")),
                Err(e) => {
                    failed.push(e.to_string());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (took, failed)
    })
}

/// A GET on a kept-alive connection, its response read to the end of its body.
fn one_request(conn: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    conn.write_all(b"GET /public/legit HTTP/1.1\r\nHost: h\r\n\r\n")?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed mid-response"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(status)
}

fn p99(took: &mut [Duration]) -> Duration {
    took.sort();
    took.get(took.len() * 99 / 100).copied().unwrap_or_default()
}

#[test]
fn a_flood_of_half_open_connections_is_capped_timed_out_and_its_memory_given_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), "", "", &[]);
    let gw =
        start_gateway_with(dir.path(), &bundle, &format!("limits: {{ max_connections: {CAP}, header_timeout: 3s }}\n"));
    let (port, pid) = (port_of(&gw.base), gw.proc.pid());
    for _ in 0..200 {
        assert_eq!(get(&format!("{}/public/warm", gw.base), &[]).status, 200);
    }
    let before = rss(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let legit = legit_stream(port, stop.clone());
    eventually(Duration::from_secs(5), "the legitimate client to be connected", || {
        metric(&gw.admin, "gateway_connections") == Some(1.0)
    });

    // Twice the cap, as fast as they connect; the gateway holds CAP of them (one is the client's).
    let flood_started = Instant::now();
    let flood: Vec<TcpStream> = (0..2 * CAP)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let _ = s.write_all(b"GET /public/flood HTTP/1.1\r\nHost: h\r\nX-Slow: ");
            s
        })
        .collect();
    eventually(Duration::from_secs(5), "the flood to fill the cap", || {
        metric(&gw.admin, "gateway_connections") == Some(CAP as f64)
    });
    let refused = metric_settled(&gw.admin, "gateway_connections_refused_total", CAP as f64 + 1.0).unwrap_or(0.0);
    assert_eq!(refused, CAP as f64 + 1.0, "every connection past the cap was refused");

    // Past the cap a new connection is closed at once, before the flood times out.
    let mut extra = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    extra.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let t = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(extra.read(&mut buf).unwrap_or(0), 0, "closed without an answer");
    assert!(t.elapsed() < Duration::from_secs(1), "closed at once: {:?}", t.elapsed());

    let held = rss(pid);
    // The held ones are closed after header_timeout (3 s) from their accept.
    eventually(Duration::from_secs(6), "the half-open connections to be closed", || {
        metric(&gw.admin, "gateway_connections") == Some(1.0)
    });
    let closed_after = flood_started.elapsed();
    assert!(closed_after >= Duration::from_millis(2900), "not before header_timeout: {closed_after:?}");
    let timed_out =
        metric_settled(&gw.admin, r#"gateway_connections_closed_total{reason="header_timeout"}"#, (CAP - 1) as f64);
    assert_eq!(timed_out, Some((CAP - 1) as f64));
    drop(flood);

    // And a new connection is served again.
    assert_eq!(get(&format!("{}/public/after", gw.base), &[]).status, 200);
    let given_back = eventually(Duration::from_secs(60), "RSS back within 20% of its value before the flood", || {
        rss(pid) <= before + before / 5
    });
    stop.store(true, Ordering::Relaxed);
    let (mut took, failed) = legit.join().expect("legit client");
    eprintln!(
        "flood of {}: RSS {} KB before, {} KB holding {CAP} ({} B per connection), back to {} KB {given_back:?} after; \
         legit client: {} requests, p99 {:?}",
        2 * CAP,
        before >> 10,
        held >> 10,
        held.saturating_sub(before) / CAP as u64,
        rss(pid) >> 10,
        took.len(),
        p99(&mut took)
    );
    assert!(failed.is_empty(), "the connected client was served throughout: {failed:?}");
    assert!(took.len() > 100, "the client kept being served: {} requests", took.len());
    assert!(
        held.saturating_sub(before) < FLOOD_RSS_BOUND,
        "the flood took {} KB, more than the {} KB bound",
        held.saturating_sub(before) >> 10,
        FLOOD_RSS_BOUND >> 10
    );
}
