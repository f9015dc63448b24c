//! The fixture binaries run the way tests and scripts run them: by their `listening on ADDR`
//! line (or their stdout), over real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::PublicKeyData as _;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

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
        ("demo-certs", env!("CARGO_BIN_EXE_demo-certs")),
    ] {
        let out = Command::new(exe).arg("--version").output().expect("run");
        assert!(out.status.success(), "{name}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
}

/// The certificate in `dir/<stem>.pem`, after checking that `dir/<stem>.key` is its key.
fn cert_with_matching_key(dir: &Path, stem: &str) -> CertificateDer<'static> {
    let cert = CertificateDer::from_pem_file(dir.join(format!("{stem}.pem"))).expect("one PEM certificate");
    let key_pem = std::fs::read_to_string(dir.join(format!("{stem}.key"))).expect("key file");
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{stem}: PKCS#8");
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("key parses");
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).expect("X.509");
    assert_eq!(parsed.public_key().raw, key.subject_public_key_info().as_slice(), "{stem}: key matches");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join(format!("{stem}.key"))).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{stem}.key is private");
    }
    cert
}

/// Checks the demo set in `dir`: every key matches its certificate, every server certificate
/// verifies for its names under `ca.pem`, the client certificate as a client named `gateway`.
fn check_demo_set(dir: &Path) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca.pem")).expect("root");
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let servers =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .expect("server verifier");
    for (stem, names) in [
        ("api", &["api.localhost", "localhost", "127.0.0.1"][..]),
        ("wildcard", &["a.apps.localhost", "b.apps.localhost"]),
        ("default", &["gateway.localhost"]),
        ("upstream", &["localhost", "127.0.0.1"]),
    ] {
        let cert = cert_with_matching_key(dir, stem);
        for name in names {
            let server_name = ServerName::try_from(*name).expect("name");
            servers
                .verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("{stem} for {name}: {e}"));
        }
        let other = ServerName::try_from("api.other").expect("name");
        assert!(servers.verify_server_cert(&cert, &[], &other, &[], UnixTime::now()).is_err(), "{stem}");
    }
    let client = cert_with_matching_key(dir, "client");
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider).build().expect("verifier");
    clients.verify_client_cert(&client, &[], UnixTime::now()).expect("a client certificate under the CA");
    let (_, parsed) = x509_parser::parse_x509_certificate(&client).expect("X.509");
    let cn = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    assert_eq!(cn.as_deref(), Some("gateway"));
}

#[test]
fn demo_certs_writes_a_ca_and_certificates_that_verify_with_their_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("new/certs");
    let out = Command::new(env!("CARGO_BIN_EXE_demo-certs")).arg("--out").arg(&out_dir).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let expected: Vec<String> = [
        "ca.pem",
        "api.pem",
        "api.key",
        "wildcard.pem",
        "wildcard.key",
        "default.pem",
        "default.key",
        "upstream.pem",
        "upstream.key",
        "client.pem",
        "client.key",
    ]
    .iter()
    .map(|f| out_dir.join(f).display().to_string())
    .collect();
    assert_eq!(printed, expected);
    check_demo_set(&out_dir);

    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, "not a folder").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_demo-certs")).arg("--out").arg(blocked.join("x")).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("creating"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn make_certs_script_writes_the_demo_set_and_replaces_an_old_one() {
    let script = test_support::paths::repo_root().join("scripts/make-certs");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = || {
        Command::new(&script)
            .arg(dir.path().join("certs"))
            .env("DEMO_CERTS", env!("CARGO_BIN_EXE_demo-certs"))
            .output()
            .expect("run scripts/make-certs")
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first_ca = std::fs::read(dir.path().join("certs/ca.pem")).expect("ca.pem");
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(std::fs::read(dir.path().join("certs/ca.pem")).expect("ca.pem"), first_ca, "a new CA each run");
    check_demo_set(&dir.path().join("certs"));

    let out = Command::new(&script).output().expect("run without DIR");
    assert_eq!(out.status.code(), Some(2));
}
