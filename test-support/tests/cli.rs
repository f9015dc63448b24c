//! The fixture binaries run the way tests and scripts run them: by their `listening on ADDR`
//! line (or their stdout), over real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use test_support::process::Proc;

/// Sends one `Connection: close` request and reads the whole answer.
fn exchange(addr: &str, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set timeout");
    stream.write_all(raw).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read to close");
    response
}

#[test]
fn echo_upstream_prints_its_address_and_serves() {
    let (_proc, addr) = Proc::spawn_listening(Command::new(env!("CARGO_BIN_EXE_echo-upstream")).args([
        "--listen",
        "127.0.0.1:0",
        "--name",
        "cli-test",
    ]));
    assert_ne!(addr.port(), 0, "printed the requested, not the bound, address");

    let response = exchange(&addr.to_string(), b"GET /hello?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nx-upstream: cli-test"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(v["upstream"], "cli-test");
    assert_eq!(v["path"], "/hello?x=1");
}

#[test]
fn echo_upstream_refuses_a_name_it_cannot_send() {
    let out = Command::new(env!("CARGO_BIN_EXE_echo-upstream")).args(["--name", "a\u{e9}"]).output().expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no listening line");
    let out = Command::new(env!("CARGO_BIN_EXE_echo-upstream")).args(["--threads", "0"]).output().expect("run");
    assert!(!out.status.success());
}

#[test]
fn demo_token_prints_one_compact_token() {
    let output = Command::new(env!("CARGO_BIN_EXE_demo-token"))
        .args(["--sub", "alice", "--role", "reader", "--alg", "EdDSA"])
        // The default key path must not depend on the working directory.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run demo-token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let token = stdout.strip_suffix('\n').expect("ends in a newline");
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(!token.contains(char::is_whitespace));

    let output = Command::new(env!("CARGO_BIN_EXE_demo-token"))
        .args(["--sub", "alice", "--alg", "RS256", "--key", "/nonexistent.pem"])
        .output()
        .expect("run demo-token");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

#[test]
fn hostile_source_prints_its_address_and_answers_as_scripted() {
    let (_proc, addr) =
        Proc::spawn_listening(Command::new(env!("CARGO_BIN_EXE_hostile-source")).args(["--listen", "127.0.0.1:0"]));
    assert_ne!(addr.port(), 0, "printed the requested, not the bound, address");
    let addr = addr.to_string();

    let answer = exchange(&addr, b"GET /v1/bundles/main HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503 "), "unscripted: {answer}");
    let script = r#"{"mode":"status","code":429,"retry_after":3}"#;
    let put = format!("PUT /_script HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{script}", script.len());
    let answer = exchange(&addr, put.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let answer = exchange(&addr, b"GET /v1/bundles/main HTTP/1.1\r\nIf-None-Match: \"t\"\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 3\r\n"), "{answer}");
    let log = exchange(&addr, b"GET /_requests HTTP/1.1\r\nConnection: close\r\n\r\n");
    let (_, body) = log.split_once("\r\n\r\n").expect("head and body");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON log");
    assert_eq!(v[1]["if_none_match"], "\"t\"");
    assert_eq!(v[1]["answered"], 429);
}

#[test]
fn every_fixture_binary_answers_version() {
    for (name, exe) in [
        ("echo-upstream", env!("CARGO_BIN_EXE_echo-upstream")),
        ("hostile-source", env!("CARGO_BIN_EXE_hostile-source")),
        ("demo-token", env!("CARGO_BIN_EXE_demo-token")),
    ] {
        let out = Command::new(exe).arg("--version").output().expect("run");
        assert!(out.status.success(), "{name}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
}
