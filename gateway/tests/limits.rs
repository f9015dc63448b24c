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

/// A half-open connection from the loopback address `from`.
fn half_open_from(from: &str, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: std::net::SocketAddr = format!("{from}:0").parse().expect("addr");
    socket.bind(&local.into()).expect("bind");
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    socket.connect(&to.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: h\r\n").expect("write");
    s
}

#[test]
fn one_address_past_max_connections_per_ip_is_closed_at_once_while_another_address_connects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "max_connections_per_ip: 3");
    let port = port_of(&gw.base);
    let held: Vec<TcpStream> = (0..3).map(|_| half_open_from("127.0.0.2", port)).collect();
    eventually(Duration::from_secs(5), "three connections from 127.0.0.2 to be held", || {
        metric(&gw.admin, "gateway_connections").is_some_and(|n| n >= 3.0)
    });
    let mut extra = half_open_from("127.0.0.2", port);
    extra.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the fourth connection from the address is closed, not {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "at once: {:?}", started.elapsed());
    assert_eq!(metric_settled(&gw.admin, "gateway_connections_per_ip_refused_total", 1.0), Some(1.0));
    // Another client address is not affected by the first one's connections.
    let mut other = half_open_from("127.0.0.3", port);
    other.write_all(b"\r\n").expect("finish the head");
    other.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let n = other.read(&mut buf).expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    drop(held);
    eventually(Duration::from_secs(5), "the address to connect again once its connections closed", || {
        let mut again = half_open_from("127.0.0.2", port);
        again.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        again.write_all(b"\r\n").is_ok() && again.read(&mut buf).is_ok_and(|n| n > 0)
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

/// Reads until the gateway closes the connection (or `limit` passes): what it sent, and when it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the gateway did not close the connection within {limit:?}: {e}; got {got:?}"),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
}

#[test]
fn a_slowloris_head_dribbled_a_byte_at_a_time_is_answered_408_and_closed_after_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "header_timeout: 1s");
    let mut slow = TcpStream::connect(("127.0.0.1", port_of(&gw.base))).expect("connect");
    let started = Instant::now();
    // One byte every 100 ms, each read well inside any per-read timeout, never the whole head.
    for b in b"GET /public/slow HTTP/1.1\r\nHost: h\r\nX-Pad: ".iter().cycle() {
        if slow.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (text, _) = read_until_closed(&mut slow, Duration::from_secs(3));
    let took = started.elapsed();
    assert!(text.starts_with("HTTP/1.1 408"), "answered 408: {text:?}");
    assert!(took < Duration::from_secs(4), "closed after about header_timeout (1 s), not later: {took:?}");
    assert!(took >= Duration::from_millis(900), "not before header_timeout: {took:?}");
    assert_eq!(
        metric_settled(&gw.admin, r#"gateway_connections_closed_total{reason="header_timeout"}"#, 1.0),
        Some(1.0)
    );
    // A client that sends its head at once is served as usual.
    assert_eq!(get(&format!("{}/public/fast", gw.base), &[]).status, 200);
}

#[test]
fn a_connection_that_never_sends_a_byte_is_closed_after_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "header_timeout: 1s");
    let mut silent = TcpStream::connect(("127.0.0.1", port_of(&gw.base))).expect("connect");
    let (text, took) = read_until_closed(&mut silent, Duration::from_secs(5));
    assert_eq!(text, "", "nothing to answer: closed quietly");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after header_timeout: {took:?}"
    );
    eventually(Duration::from_secs(5), "the connection to be released", || {
        metric(&gw.admin, "gateway_connections") == Some(0.0)
    });
}

#[test]
fn a_head_past_max_header_bytes_is_431_even_when_each_header_is_small() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "max_header_bytes: 2KiB");
    let fits: Vec<(String, String)> = (0..10).map(|i| (format!("x-fits-{i}"), "v".repeat(100))).collect();
    let fits: Vec<(&str, &str)> = fits.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(get(&format!("{}/public/fits", gw.base), &fits).status, 200, "a 1.2 KB head fits in 2 KiB");

    // Forty small headers: none is large, together they are 4 KB.
    let mut s = TcpStream::connect(("127.0.0.1", port_of(&gw.base))).expect("connect");
    let mut head = String::from("GET /public/many HTTP/1.1\r\nHost: h\r\n");
    for i in 0..40 {
        head.push_str(&format!("x-many-{i}: {}\r\n", "v".repeat(90)));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
    assert_eq!(
        metric_settled(&gw.admin, r#"gateway_connections_closed_total{reason="header_too_large"}"#, 1.0),
        Some(1.0)
    );
    let public = r#"gateway_requests_total{decision="allow",route="public"}"#;
    assert_eq!(metric(&gw.admin, public), Some(1.0), "the refused request was never routed, only the first was");
}

#[test]
fn a_kept_alive_connection_is_closed_after_keepalive_timeout_and_each_later_head_is_bounded_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "header_timeout: 1s, keepalive_timeout: 2s");
    let port = port_of(&gw.base);
    let one = b"GET /public/one HTTP/1.1\r\nHost: h\r\n\r\n";

    // Idle past keepalive_timeout after a response: closed, quietly.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.write_all(one).expect("write");
    idle.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).expect("the first answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let (text, took) = read_until_closed(&mut idle, Duration::from_secs(6));
    assert_eq!(text, "");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "closed after keepalive_timeout: {took:?}"
    );

    // Idle for longer than header_timeout between requests is fine; the next head then has
    // header_timeout from its first byte, like the first.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(one).expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let n = slow.read(&mut buf).expect("the first answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(1300));
    slow.write_all(one).expect("a second request after an idle pause");
    let n = slow.read(&mut buf).expect("the second answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    slow.write_all(b"GET /public/three HTTP/1.1\r\n").expect("half a third head");
    let (text, took) = read_until_closed(&mut slow, Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_body_refused_before_it_is_read_closes_the_connection_instead_of_reading_the_body_as_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "max_body: 1KiB");
    let mut s = TcpStream::connect(("127.0.0.1", port_of(&gw.base))).expect("connect");
    // The body is a request of its own; it must never be taken as the connection's next one.
    let inner = "GET /public/smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let body = format!("{inner}{}", "z".repeat(4000));
    let req = format!("POST /upload/c HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).expect("write");
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer, then closed: {text:?}");
    let public = r#"gateway_requests_total{decision="allow",route="public"}"#;
    assert_eq!(metric(&gw.admin, public).unwrap_or(0.0), 0.0, "the body was never served as a request");
}

#[test]
fn a_client_still_sending_a_refused_body_gets_its_413_not_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _up) = gateway_with_limits(dir.path(), "max_body: 1KiB");
    // The client writes its whole body before it reads, as most do: the 413 was already sent,
    // and the gateway reads the rest away (up to 1 MiB, 1 s) instead of resetting the socket.
    for round in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", port_of(&gw.base))).expect("connect");
        let body = vec![b'q'; 200_000];
        let head = format!("POST /upload/d HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).expect("head");
        // A slow uploader: the 413 is written while the body is still on its way.
        std::thread::sleep(Duration::from_millis(100));
        let sent = s.write_all(&body[..1000]).and_then(|()| {
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&body[1000..])
        });
        if let Err(e) = sent {
            panic!("round {round}: the gateway reset the connection while the body was sent: {e}");
        }
        let (text, _) = read_until_closed(&mut s, Duration::from_secs(5));
        assert!(text.starts_with("HTTP/1.1 413"), "round {round}: {text:?}");
    }
}
