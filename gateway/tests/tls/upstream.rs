//! The gateway as a client: TLS to upstreams (verified by default, mTLS when asked, health
//! checks over the same transport), gRPC over HTTP/2 with denials as gRPC statuses, and
//! WebSockets authorized at the upgrade, then proxied both ways.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use test_support::certs::Ca;

/// An echo upstream serving TLS with a certificate for `localhost` / 127.0.0.1 from `ca`,
/// requiring a client certificate from `client_ca` when given.
fn tls_upstream(dir: &Path, ca: &Ca, client_ca: Option<&Path>) -> Upstream {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]).write(dir, "upstream");
    let mut cmd = Command::new(workspace_bin("echo-upstream"));
    cmd.args(["--listen", "127.0.0.1:0", "--name", "secure", "--tls-cert"]).arg(&cert).arg("--tls-key").arg(&key);
    if let Some(client_ca) = client_ca {
        cmd.arg("--client-ca").arg(client_ca);
    }
    let (proc, addr) = Proc::spawn_listening(&mut cmd);
    Upstream { addr, proc }
}

const SECURE_ROUTE: &str =
    "  - name: secure\n    match: { path_prefix: /secure }\n    upstream: secure\n    policy: data.http.public.allow\n";

/// A plaintext gateway whose `secure` upstream is `addr` with these `tls` settings (files
/// relative to the gateway's config, in `dir`), health-checked over that transport.
fn gateway_to(dir: &Path, addr: &str, tls: &str) -> (Gateway, Upstream) {
    let backend = echo_upstream("backend");
    let upstreams = format!(
        "  secure:\n    targets: [\"{addr}\"]\n    tls: {tls}\n    health_check: {{ path: /healthz, interval: 200ms }}\n"
    );
    let bundle = example_bundle(dir, &backend.addr.to_string(), &upstreams, SECURE_ROUTE, &[]);
    (start_gateway(dir, &bundle), backend)
}

#[test]
fn an_upstream_over_tls_is_verified_against_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("upstream CA");
    ca.write(dir.path(), "upstream-ca");
    let up = tls_upstream(dir.path(), &ca, None);
    let (gw, _backend) = gateway_to(dir.path(), &up.addr.to_string(), "{ sni: localhost, ca_file: upstream-ca.pem }");
    let r = get(&format!("{}/secure/x", gw.base), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["upstream"], "secure");
}

#[test]
fn health_checks_speak_tls_to_a_tls_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("upstream CA");
    ca.write(dir.path(), "upstream-ca");
    let good = tls_upstream(dir.path(), &ca, None);
    // A target that answers plain HTTP where TLS is expected: its health check must fail.
    let plain = echo_upstream("plain");
    let targets = format!("{}\", \"{}", good.addr, plain.addr);
    let (gw, _backend) = gateway_to(dir.path(), &targets, "{ sni: localhost, ca_file: upstream-ca.pem }");
    // Were the checks not over TLS, both targets would fail them and requests would be spread
    // over both (panic mode), half of them 502.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    for i in 0..20 {
        let r = get(&format!("{}/secure/{i}", gw.base), &[]);
        assert_eq!((r.status, r.json()["upstream"].clone()), (200, "secure".into()), "{r:?}");
    }
}

#[test]
fn an_upstream_certificate_from_another_ca_is_502_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("upstream CA");
    let stranger = Ca::new("a CA the gateway does not trust");
    stranger.write(dir.path(), "other-ca");
    let up = tls_upstream(dir.path(), &ca, None);
    let (gw, _backend) = gateway_to(dir.path(), &up.addr.to_string(), "{ sni: localhost, ca_file: other-ca.pem }");
    let r = get(&format!("{}/secure/x", gw.base), &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(metric_settled(&gw.admin, "gateway_upstream_tls_errors_total", 1.0).is_some_and(|v| v >= 1.0));
    // The name is verified too: the right CA, the wrong name.
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write(dir.path(), "upstream-ca");
    let (gw, _backend) =
        gateway_to(dir.path(), &up.addr.to_string(), "{ sni: orders.internal, ca_file: upstream-ca.pem }");
    let r = get(&format!("{}/secure/x", gw.base), &[]);
    assert_eq!(r.status, 502, "a certificate for another name must not pass: {r:?}");
}

#[test]
fn a_pooled_connection_verified_under_one_ca_is_not_reused_by_an_upstream_trusting_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("upstream CA");
    ca.write(dir.path(), "upstream-ca");
    Ca::new("a CA the second upstream trusts").write(dir.path(), "other-ca");
    let up = tls_upstream(dir.path(), &ca, None);
    let backend = echo_upstream("backend");
    // Same address, same SNI, same verification flags: only the trusted roots differ.
    let upstreams = format!(
        "  secure:\n    targets: [\"{0}\"]\n    tls: {{ sni: localhost, ca_file: upstream-ca.pem }}\n  strict:\n    targets: [\"{0}\"]\n    tls: {{ sni: localhost, ca_file: other-ca.pem }}\n",
        up.addr
    );
    let routes = format!(
        "{SECURE_ROUTE}  - name: strict\n    match: {{ path_prefix: /strict }}\n    upstream: strict\n    policy: data.http.public.allow\n"
    );
    let bundle = example_bundle(dir.path(), &backend.addr.to_string(), &upstreams, &routes, &[]);
    let gw = start_gateway(dir.path(), &bundle);
    let r = get(&format!("{}/secure/x", gw.base), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    // The connection the first request left in the pool must not carry the second.
    let r = get(&format!("{}/strict/x", gw.base), &[]);
    assert_eq!(r.status, 502, "a connection verified under another CA was reused: {r:?}");
}

#[test]
fn mtls_presents_the_client_certificate_the_upstream_requires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("upstream CA");
    let ca_file = ca.write(dir.path(), "upstream-ca");
    ca.client("gateway").write(dir.path(), "client");
    let up = tls_upstream(dir.path(), &ca, Some(&ca_file));
    let tls = "{ sni: localhost, ca_file: upstream-ca.pem, client_cert_file: client.pem, client_key_file: client.key }";
    let (gw, _backend) = gateway_to(dir.path(), &up.addr.to_string(), tls);
    let r = get(&format!("{}/secure/x", gw.base), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["client_cert_cn"], "gateway");

    let dir = tempfile::tempdir().expect("tempdir");
    ca.write(dir.path(), "upstream-ca");
    let (gw, _backend) = gateway_to(dir.path(), &up.addr.to_string(), "{ sni: localhost, ca_file: upstream-ca.pem }");
    let r = get(&format!("{}/secure/x", gw.base), &[]);
    assert_eq!(r.status, 502, "without its client certificate the gateway is refused: {r:?}");
}

#[test]
fn an_upstream_tls_file_that_is_missing_keeps_the_bundle_from_activating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = echo_upstream("backend");
    let upstreams = "  secure:\n    targets: [\"127.0.0.1:9\"]\n    tls: { ca_file: nowhere.pem }\n";
    let bundle = example_bundle(dir.path(), &backend.addr.to_string(), upstreams, SECURE_ROUTE, &[]);
    let config = write_config(dir.path(), &bundle);
    let out = Command::new(env!("CARGO_BIN_EXE_gateway")).arg("--check-config").arg(&config).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nowhere.pem") && err.contains("secure"), "{err}");
}

#[test]
fn a_bundle_cannot_point_the_gateway_at_files_outside_its_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = echo_upstream("backend");
    for (tls, file) in [
        ("{ ca_file: /etc/passwd }", "/etc/passwd"),
        ("{ ca_file: ../../etc/ssl/private/key.pem }", "../../etc/ssl/private/key.pem"),
        ("{ client_cert_file: c.pem, client_key_file: /root/.ssh/id_ed25519 }", "/root/.ssh/id_ed25519"),
    ] {
        let sub = dir.path().join(format!("case{}", file.len()));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let upstreams = format!("  secure:\n    targets: [\"127.0.0.1:9\"]\n    tls: {tls}\n");
        let bundle = example_bundle(&sub, &backend.addr.to_string(), &upstreams, SECURE_ROUTE, &[]);
        let config = write_config(&sub, &bundle);
        let out = Command::new(env!("CARGO_BIN_EXE_gateway")).arg("--check-config").arg(&config).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tls}: {err}");
        assert!(err.contains(file) && err.contains("relative to the gateway's config directory"), "{tls}: {err}");
    }
}

const GRPC_POLICY: &str = r#"package http.grpc

import rego.v1

decision := {"allow": true} if {
	input.request.path == "/demo.Echo/Say"
	input.jwt.claims.sub == "alice"
} else := {"allow": false, "status": 403, "reason": "only alice may say things"}
"#;

#[test]
fn a_grpc_call_is_allowed_or_denied_with_a_grpc_status() {
    let Some(_) = test_support::grpc::python() else {
        panic!("python3 with grpcio is needed: run scripts/py-deps");
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = test_support::grpc::server();
    let certs = crate::three_certs(dir.path());
    let upstreams = format!("  grpc:\n    targets: [\"{}\"]\n    http2: true\n", server.1);
    let route = "  - name: grpc\n    match: { path_prefix: /demo.Echo/ }\n    upstream: grpc\n    policy: data.http.grpc.decision\n";
    let backend = echo_upstream("backend");
    let bundle =
        example_bundle(dir.path(), &backend.addr.to_string(), &upstreams, route, &[("http/grpc.rego", GRPC_POLICY)]);
    let gw = crate::tls_gateway_on(dir.path(), &certs, &bundle, "");
    let target = format!("127.0.0.1:{}", port_of(&gw.base));
    let opts = |token: Option<String>| test_support::grpc::CallOpts {
        ca: Some(certs.ca_file.clone()),
        authority: Some("api.localhost".into()),
        token,
    };
    let ok = test_support::grpc::call(&target, "/demo.Echo/Say", "hi", &opts(Some(token("alice", &["reader"]))));
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["reply"], "echo:hi", "{ok}");

    let denied = test_support::grpc::call(&target, "/demo.Echo/Say", "hi", &opts(Some(token("bob", &["reader"]))));
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");
    assert_eq!(denied["details"], "only alice may say things", "{denied}");

    let forged = test_support::grpc::call(&target, "/demo.Echo/Say", "hi", &opts(Some("not.a.token".into())));
    assert_eq!(forged["code"], "UNAUTHENTICATED", "{forged}");
    let unrouted = test_support::grpc::call(&target, "/other.Service/Call", "hi", &opts(None));
    assert_eq!(unrouted["code"], "UNIMPLEMENTED", "{unrouted}");
}

#[test]
fn a_websocket_is_authorized_at_the_upgrade_then_echoed_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &backend.addr.to_string(), "", "", &[]);
    let gw = start_gateway(dir.path(), &bundle);
    let ws = gw.base.replace("http://", "ws://");
    let echo = || test_support::ws::echo_once(&format!("{ws}/public/chat"), &[], "hello over the gateway");
    // Retried only when Pingora tore the tunnel down at the upgrade (`TORN_DOWN_AT_UPGRADE`).
    let echoed = (1..8)
        .map(|_| echo())
        .find(|r| !r.as_ref().is_err_and(|e| e.starts_with(test_support::ws::TORN_DOWN_AT_UPGRADE)))
        .unwrap_or_else(echo);
    assert_eq!(echoed.as_deref(), Ok("hello over the gateway"));
    // The admin route wants an admin's token: the upgrade is refused like any request, and
    // no byte of the socket reaches the upstream.
    let forged = test_support::http::bearer("not.a.token");
    let refused = test_support::ws::echo_once(&format!("{ws}/admin/chat"), &[("authorization", &forged)], "let me in");
    assert!(refused.as_ref().is_err_and(|e| e.contains("401")), "{refused:?}");
    let bob = test_support::http::bearer(&token("bob", &["reader"]));
    let refused = test_support::ws::echo_once(&format!("{ws}/admin/chat"), &[("authorization", &bob)], "let me in");
    assert!(refused.as_ref().is_err_and(|e| e.contains("403")), "{refused:?}");
}

#[test]
fn a_websocket_carries_forty_times_the_body_limit_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &backend.addr.to_string(), "", "", &[]);
    let gw = start_gateway_with(dir.path(), &bundle, "limits: { max_body: 64KiB }\n");
    let ws = gw.base.replace("http://", "ws://");
    // 40 messages of 64 KiB each way: an upgraded tunnel is no request body.
    let (done, tries) = test_support::ws::exchange_retrying_pingora_946(&format!("{ws}/public/chat"), 40, 64 << 10, 8);
    assert_eq!(done, Ok(test_support::ws::Exchange { echoed: 40, close: None }), "after {tries} tries");
}

#[test]
fn a_tunnel_past_its_byte_limit_is_closed_with_a_close_frame_never_with_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &backend.addr.to_string(), "", "", &[]);
    let gw = start_gateway_with(dir.path(), &bundle, "limits: { tunnel_max_bytes: 64KiB }\n");
    let ws = gw.base.replace("http://", "ws://");
    // 1,000-byte messages: the limit is crossed inside one small frame, read whole.
    let (done, tries) = test_support::ws::exchange_retrying_pingora_946(&format!("{ws}/public/chat"), 200, 1000, 8);
    let done = done.unwrap_or_else(|e| panic!("a WebSocket close, after {tries} tries: {e}"));
    assert_eq!(done.close, Some(1009), "{done:?}");
    assert!((60..=66).contains(&done.echoed), "64 KiB of 1,000-byte messages: {done:?}");
}

#[test]
fn an_upgrade_the_upstream_refuses_does_not_tunnel_the_next_request_past_the_policy() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &backend.addr.to_string(), "", "", &[]);
    let gw = start_gateway(dir.path(), &bundle);
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port_of(&gw.base))).expect("connect");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(3))).expect("timeout");
    // WebSocket smuggling: ask for an upgrade the upstream answers with a plain 200, then send
    // a request for the admin route as if the connection had become a raw tunnel.
    let smuggle = "GET /public/x HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: not-websocket\r\n\r\n\
                   GET /admin/x HTTP/1.1\r\nHost: h\r\n\r\n";
    sock.write_all(smuggle.as_bytes()).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let echoes = text.matches("\"upstream\":\"backend\"").count();
    assert_eq!(echoes, 1, "only the first request may reach the upstream: {text}");
    assert!(!text.contains("\"path\":\"/admin/x\""), "the admin request was tunneled: {text}");
}
