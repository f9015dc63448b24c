//! Downstream limits through the real binary: past `limits.max_connections` a new connection
//! is closed at once and counted while held ones go on; a body past `limits.max_body` is 413,
//! declared or chunked.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const UPLOAD: &str = "package http.upload\n\nimport rego.v1\n\ndefault allow := true\n";
const UPLOAD_ROUTE: &str =
    "  - name: upload\n    match: { path_prefix: /upload }\n    upstream: backend\n    policy: data.http.upload.allow\n";

fn gateway_with_limits(dir: &Path, limits: &str) -> (Gateway, Upstream) {
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir, &up.addr.to_string(), "", UPLOAD_ROUTE, &[("http/upload.rego", UPLOAD)]);
    let gw = start_gateway_with(dir, &bundle, &format!("limits: {{ {limits} }}\n"));
    (gw, up)
}

/// A connection that sent half a request head and waits.
fn half_open(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: h\r\n").expect("write");
    s
}

#[test]
fn past_max_connections_a_new_connection_is_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "max_connections: 4");
    let port = port_of(&gw.base);
    eventually(Duration::from_secs(5), "the readiness probe's connection to be released", || {
        metric(&gw.admin, "gateway_connections") == Some(0.0)
    });
    let mut held: Vec<TcpStream> = (0..4).map(|_| half_open(port)).collect();
    eventually(Duration::from_secs(5), "four connections to be held", || {
        metric(&gw.admin, "gateway_connections") == Some(4.0)
    });

    let started = Instant::now();
    let mut extra = half_open(port);
    extra.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buf = [0u8; 64];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the fifth connection is closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once, not after a timeout: {:?}", started.elapsed());
    assert_eq!(metric_settled(&gw.admin, "gateway_connections_refused_total", 1.0), Some(1.0));

    // A held connection finishes its request and is answered: the bound is not an outage.
    held[0].write_all(b"\r\n").expect("finish the head");
    held[0].set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let n = held[0].read(&mut buf).expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    held.truncate(1);
    drop(held);
    eventually(Duration::from_secs(5), "released connections to make room", || {
        get(&format!("{}/public/again", gw.base), &[]).status == 200
    });
}

#[test]
fn a_body_past_max_body_is_413_whether_declared_or_chunked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "max_body: 1KiB");
    let small = request("POST", &format!("{}/upload/a", gw.base), &[], Some(&[b'x'; 1024]));
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!(small.json()["body_len"], 1024);
    let big = request("POST", &format!("{}/upload/a", gw.base), &[], Some(&[b'x'; 1025]));
    assert_eq!(big.status, 413, "{big:?}");
    assert!(big.text().contains("limits.max_body"), "{}", big.text());

    // A chunked body says no length: it is counted as it goes.
    let mut s = TcpStream::connect(("127.0.0.1", port_of(&gw.base))).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let chunk = format!("{:x}\r\n{}\r\n", 600, "y".repeat(600));
    let req = format!(
        "POST /upload/b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}
