//! `echo-upstream`'s TLS, mTLS, HTTP/2 and WebSocket modes, through the built binary, with
//! certificates from `test_support::certs`, a rustls client, curl and a tungstenite client.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use test_support::certs::{Ca, Leaf};
use test_support::process::Proc;
use tungstenite::Message;

/// A CA and a server certificate for 127.0.0.1 and localhost, written to a temporary folder.
struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    ca_pem: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("echo test CA");
        let ca_pem = ca.write(dir.path(), "ca");
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]).write(dir.path(), "server");
        Pki { _dir: dir, ca, ca_pem, cert, key }
    }

    /// `--tls-cert` and `--tls-key` for the server certificate.
    fn tls_args(&self) -> Vec<String> {
        vec!["--tls-cert".into(), path(&self.cert), "--tls-key".into(), path(&self.key)]
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

fn echo_upstream(args: &[String]) -> (Proc, SocketAddr) {
    Proc::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_echo-upstream"))
            .args(["--listen", "127.0.0.1:0", "--name", "tls-up"])
            .args(args),
    )
}

/// A ureq agent that trusts `ca_pem` and presents `client` when given.
fn agent(ca_pem: &str, client: Option<&Leaf>) -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM")).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("client cert")];
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key");
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    ureq::AgentBuilder::new().tls_config(Arc::new(config)).timeout(Duration::from_secs(10)).build()
}

fn get_json(agent: &ureq::Agent, url: &str) -> Result<serde_json::Value, String> {
    let resp = agent.get(url).call().map_err(|e| e.to_string())?;
    assert_eq!(resp.header("x-upstream"), Some("tls-up"));
    serde_json::from_reader(resp.into_reader()).map_err(|e| e.to_string())
}

/// `curl -sS ARGS URL`: the body on success, the error text otherwise.
fn curl(args: &[&str], url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn tls_echo_is_served_to_a_client_that_trusts_the_ca() {
    let pki = Pki::new();
    let (_up, addr) = echo_upstream(&pki.tls_args());
    let v = get_json(&agent(&pki.ca.cert_pem(), None), &format!("https://127.0.0.1:{}/secure?x=1", addr.port()))
        .expect("TLS echo");
    assert_eq!((v["path"].as_str(), v["version"].as_str()), (Some("/secure?x=1"), Some("HTTP/1.1")));
    assert_eq!(v["client_cert_cn"], serde_json::Value::Null);

    let stranger = Ca::new("another CA");
    let err = get_json(&agent(&stranger.cert_pem(), None), &format!("https://127.0.0.1:{}/", addr.port()))
        .expect_err("a client that does not trust the CA refuses the server");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Plaintext HTTP to the TLS port gets no echo.
    let plain = test_support::http::get(&format!("http://{addr}/"), &[]);
    assert_ne!(plain.status, 200, "{plain:?}");
}

#[test]
fn mtls_echoes_the_client_cn_and_refuses_a_client_without_a_valid_certificate() {
    let pki = Pki::new();
    let mut args = pki.tls_args();
    args.extend(["--client-ca".to_owned(), path(&pki.ca_pem)]);
    let (_up, addr) = echo_upstream(&args);
    let url = format!("https://127.0.0.1:{}/m", addr.port());

    let with_cert = get_json(&agent(&pki.ca.cert_pem(), Some(&pki.ca.client("gateway"))), &url).expect("mTLS echo");
    assert_eq!(with_cert["client_cert_cn"], "gateway");

    let err = get_json(&agent(&pki.ca.cert_pem(), None), &url).expect_err("no client certificate");
    assert!(err.contains("CertificateRequired"), "{err}");
    let other_ca = Ca::new("rogue CA");
    let err = get_json(&agent(&pki.ca.cert_pem(), Some(&other_ca.client("gateway"))), &url)
        .expect_err("a client certificate from another CA");
    assert!(err.contains("fatal alert"), "{err}");
}

#[test]
fn h2_over_tls_is_chosen_by_alpn_only_with_the_h2_flag() {
    let pki = Pki::new();
    let ca = path(&pki.ca_pem);
    let mut args = pki.tls_args();
    args.push("--h2".into());
    let (_up, addr) = echo_upstream(&args);
    let url = format!("https://127.0.0.1:{}/two?x=1", addr.port());
    let v = json(&curl(&["--http2", "--cacert", &ca], &url).expect("curl over h2"));
    assert_eq!((v["version"].as_str(), v["path"].as_str()), (Some("HTTP/2.0"), Some("/two?x=1")));
    assert_eq!(v["upstream"], "tls-up");
    // HTTP/1.1 clients still get HTTP/1.1 on the same port.
    let v = json(&curl(&["--http1.1", "--cacert", &ca], &url).expect("curl over h1"));
    assert_eq!(v["version"], "HTTP/1.1");
    // A HEAD answer on h2: headers with the JSON's length, no body.
    let head = curl(&["--http2", "--cacert", &ca, "--head"], &url).expect("HEAD over h2");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.to_lowercase().contains("content-length: "), "{head}");

    let (_h1_only, addr) = echo_upstream(&pki.tls_args());
    let v = json(&curl(&["--http2", "--cacert", &ca], &format!("https://127.0.0.1:{}/", addr.port())).expect("curl"));
    assert_eq!(v["version"], "HTTP/1.1", "no h2 offered without --h2");
}

#[test]
fn h2c_by_prior_knowledge_beside_http1_on_one_plaintext_port() {
    let (_up, addr) = echo_upstream(&["--h2".into()]);
    let url = format!("http://{addr}/clear?y=2");
    let v = json(&curl(&["--http2-prior-knowledge"], &url).expect("h2c"));
    assert_eq!((v["version"].as_str(), v["path"].as_str()), (Some("HTTP/2.0"), Some("/clear?y=2")));
    let h1 = test_support::http::get(&url, &[]);
    assert_eq!((h1.status, h1.json()["version"].as_str()), (200, Some("HTTP/1.1")));
    let seen = curl(
        &["--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"],
        &format!("http://{addr}/status/404"),
    );
    assert_eq!(seen.as_deref(), Ok("404 2"));

    let (_h1_only, addr) = echo_upstream(&[]);
    assert!(curl(&["--http2-prior-knowledge"], &format!("http://{addr}/")).is_err(), "no h2c without --h2");
}

#[test]
fn websocket_messages_come_back_unchanged() {
    let (_up, addr) = echo_upstream(&[]);
    let url = format!("ws://{addr}/chat");
    assert_eq!(test_support::ws::echo_once(&url, &[("x-test", "1")], "hello, ws").as_deref(), Ok("hello, ws"));

    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).expect("request");
    request.headers_mut().insert("sec-websocket-protocol", "chat.v1, chat.v2".parse().expect("value"));
    let (mut socket, response) = tungstenite::client(request, stream).expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers().get("x-upstream").map(|v| v.as_bytes()), Some(&b"tls-up"[..]));
    assert_eq!(response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()), Some(&b"chat.v1"[..]));

    socket.send(Message::binary(vec![0u8, 1, 2, 255])).expect("send binary");
    assert_eq!(socket.read().expect("echo"), Message::binary(vec![0u8, 1, 2, 255]));
    socket.send(Message::Ping(b"p".to_vec().into())).expect("ping");
    assert_eq!(socket.read().expect("pong"), Message::Pong(b"p".to_vec().into()));
    socket.send(Message::text("after ping")).expect("send text");
    assert_eq!(socket.read().expect("echo"), Message::text("after ping"));
    socket.close(None).expect("close");
    assert!(matches!(socket.read().expect("closing reply"), Message::Close(_)));
}

#[test]
fn a_websocket_upgrade_without_a_key_gets_400() {
    use std::io::{Read as _, Write as _};
    let (_up, addr) = echo_upstream(&[]);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.to_lowercase().contains("x-upstream: tls-up"), "{answer}");
}
