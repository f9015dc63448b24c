//! Authorization that cannot be bypassed: hostile requests over raw sockets to the real
//! `gateway` binary, in front of one recording backend that every route shares (as real
//! deployments do). For each request the suite asserts what the backend received, or that
//! nothing was forwarded at all. Each case is named after the attack it tries.
//!
//! The bundle is written to be easy to talk past: a public route that strips its prefix onto
//! the same backend as the protected ones, a host-specific deny-all, a catch-all whose rule
//! guards by path, and a rule in a bracketed package that blocks by header.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// One request as the backend read it off the wire.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "backend got {} `{name}` headers: {all:?}", all.len());
        all.first().copied()
    }
}

/// A raw HTTP/1.1 backend: records every request and answers 200, closing the connection.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn read_request(s: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = buf[head_end + 4..].to_vec();
    let len = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok());
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    loop {
        let done = match len {
            Some(l) => body.len() >= l,
            None => !chunked || find(&body, b"0\r\n\r\n").is_some(),
        };
        if done {
            break;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen { target, headers, body })
}

fn recorder() -> Recorder {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                if let Some(req) = read_request(&mut s) {
                    if req.target != "/healthz" {
                        log.lock().expect("log").push(req);
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                }
            });
        }
    });
    Recorder { addr, seen }
}

const POLICIES: &[(&str, &str)] = &[
    (
        "http/catchall.rego",
        "package http.catchall\nimport rego.v1\n\
         allow if { not startswith(input.request.path, \"/admin\"); not input.request.headers[\"x-banned\"] }\n",
    ),
    ("http/adminhost.rego", "package http.adminhost\nimport rego.v1\ndefault allow := false\n"),
    (
        "tenants/acme.rego",
        "package tenants[\"acme-corp\"]\nimport rego.v1\nallow if not input.request.headers[\"x-banned\"]\n",
    ),
    (
        "http/bad.rego",
        "package http.bad\nimport rego.v1\n\
         length := {\"allow\": true, \"headers\": {\"content-length\": \"0\"}}\n\
         host := {\"allow\": true, \"headers\": {\"host\": \"internal.admin\"}}\n\
         te := {\"allow\": true, \"headers\": {\"transfer-encoding\": \"chunked\"}}\n\
         informational := {\"allow\": false, \"status\": 101}\n\
         login := {\"allow\": false, \"status\": 302, \"response_headers\": {\"location\": \"/login\"}}\n",
    ),
];

fn routes() -> String {
    let r = |name: &str, matcher: &str, policy: &str, extra: &str| {
        format!("  - name: {name}\n    match: {matcher}\n    upstream: backend\n    policy: {policy}\n{extra}")
    };
    [
        r("adminhost", "{ host: admin.example.test }", "data.http.adminhost.allow", ""),
        r(
            "public",
            "{ path_prefix: /public, methods: [GET, HEAD] }",
            "data.http.public.allow",
            "    strip_prefix: true\n",
        ),
        r("orders", "{ path_prefix: /orders }", "data.http.orders.decision", ""),
        r("tenants", "{ path_prefix: /tenants }", "data.tenants[\"acme-corp\"].allow", ""),
        r("bad-length", "{ path: /bad/length }", "data.http.bad.length", ""),
        r("bad-host", "{ path: /bad/host }", "data.http.bad.host", ""),
        r("bad-te", "{ path: /bad/te }", "data.http.bad.te", ""),
        r("bad-status", "{ path: /bad/status }", "data.http.bad.informational", ""),
        r("login", "{ path: /login-required }", "data.http.bad.login", ""),
        r("catchall", "{ path_prefix: / }", "data.http.catchall.allow", ""),
    ]
    .concat()
}

fn bundle(dir: &Path, backend: SocketAddr) -> std::path::PathBuf {
    let b = example_bundle(dir, &backend.to_string(), "", "", POLICIES);
    // The shared routing table replaces the example's own routes.
    let settings = b.join("gateway/data.yaml");
    let text = std::fs::read_to_string(&settings).expect("settings");
    let (head, rest) = text.split_once("routes:").expect("routes");
    let jwt = &rest[rest.find("\njwt:").expect("jwt")..];
    std::fs::write(&settings, format!("{head}routes:\n{}{jwt}", routes())).expect("write");
    std::fs::write(b.join(".manifest"), r#"{"revision": "bypass", "roots": ["http", "gateway", "tenants"]}"#)
        .expect("manifest");
    b
}

struct Env {
    _dir: tempfile::TempDir,
    rec: Recorder,
    gw: Gateway,
    addr: String,
}

fn env(extra_config: &str) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = recorder();
    let b = bundle(dir.path(), rec.addr);
    let (listen, admin) = (free_port(), free_port());
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nthreads: 2\n{extra_config}bundle:\n  name: main\n  file: {}\n",
            b.display()
        ),
    )
    .expect("config");
    let gw = spawn_gateway(&config, listen, admin);
    wait_ready(&gw);
    Env { _dir: dir, rec, gw, addr: format!("127.0.0.1:{listen}") }
}

/// Sends raw bytes from `from` (an address on the loopback range) and reads the whole
/// answer; returns the status of each response in it.
fn send_from(from: Option<&str>, addr: &str, raw: &[u8]) -> Vec<u16> {
    answers(from, addr, raw).0
}

/// The statuses of the responses to `raw`, and the text of the answer.
fn answers(from: Option<&str>, addr: &str, raw: &[u8]) -> (Vec<u16>, String) {
    let mut s = match from {
        None => TcpStream::connect(addr).expect("connect"),
        Some(local) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            let local: SocketAddr = format!("{local}:0").parse().expect("local");
            sock.bind(&local.into()).expect("bind client");
            let remote: SocketAddr = addr.parse().expect("remote");
            sock.connect(&remote.into()).expect("connect");
            sock.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(raw).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let statuses = text
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| text[i..].split(' ').nth(1).and_then(|c| c.get(..3)).and_then(|c| c.parse().ok()))
        .collect();
    (statuses, text.into_owned())
}

/// What must happen to a request.
enum Want {
    /// Answered by the gateway with this status; the backend sees nothing.
    Refused(u16),
    /// Forwarded and answered 200; the check is run on what the backend received.
    Forwarded(fn(&Seen) -> Result<(), String>),
}

struct Case {
    attack: &'static str,
    raw: String,
    want: Want,
}

fn req(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: api.example.test\r\n{extra}connection: close\r\n\r\n")
}

fn check(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn cases() -> Vec<Case> {
    use Want::*;
    let alice = token("alice", &["reader"]);
    let bearer = format!("authorization: Bearer {alice}\r\n");
    let expired = token_with(
        "es256",
        serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "roles": ["admin"], "exp": now() - 3600}),
    );
    let wrong_aud = token_with(
        "es256",
        serde_json::json!({"iss": ISSUER, "aud": "billing", "sub": "alice", "roles": ["admin"], "exp": now() + 600}),
    );
    let unsigned = {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b.encode(format!(
                r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"root","roles":["writer"],"exp":{}}}"#,
                now() + 600
            ))
        )
    };
    let c = |attack: &'static str, raw: String, want: Want| Case { attack, raw, want };
    vec![
        // Identity headers.
        c("identity_headers_from_the_client_never_reach_the_backend", req("/public/orders/7", "x-user-id: alice\r\nx-user-roles: admin\r\n"), Forwarded(|s| {
            check(s.one("x-user-id").is_none() && s.one("x-user-roles").is_none(), format!("identity headers passed: {:?}", s.headers))
        })),
        c("identity_headers_in_upper_case_are_removed_too", req("/public/x", "X-User-Id: alice\r\nX-USER-ROLES: admin\r\n"), Forwarded(|s| {
            check(s.all("x-user-id").is_empty() && s.all("x-user-roles").is_empty(), format!("{:?}", s.headers))
        })),
        c("repeated_identity_headers_are_all_removed", req("/public/x", "x-user-id: a\r\nx-user-id: b\r\n"), Forwarded(|s| {
            check(s.all("x-user-id").is_empty(), format!("{:?}", s.headers))
        })),
        c("underscore_twin_of_an_identity_header_never_rides_along", req("/orders/7", &format!("{bearer}x_user_id: mallory\r\n")), Forwarded(|s| {
            check(s.one("x-user-id") == Some("alice") && s.all("x_user_id").is_empty(), format!("{:?}", s.headers))
        })),
        c("client_identity_header_is_replaced_by_the_decision", req("/orders/7", &format!("{bearer}x-user-id: mallory\r\nx-user-roles: admin\r\n")), Forwarded(|s| {
            check(s.one("x-user-id") == Some("alice") && s.one("x-user-roles") == Some("reader"), format!("{:?}", s.headers))
        })),
        c("underscore_headers_are_dropped_on_public_routes", req("/public/x", "x_forwarded_for: 10.0.0.1\r\nx_tenant: acme\r\n"), Forwarded(|s| {
            check(!s.headers.iter().any(|(n, _)| n.contains('_')), format!("{:?}", s.headers))
        })),
        c("identity_header_on_a_denied_request_goes_nowhere", req("/orders/7", "x-user-id: alice\r\n"), Refused(401)),
        // Paths.
        c("dot_dot_from_the_public_prefix_is_judged_by_the_orders_rule", req("/public/../orders/7", ""), Refused(401)),
        c("encoded_dot_dot_is_a_dot_dot", req("/public/%2e%2e/orders/7", ""), Refused(401)),
        c("upper_case_encoded_dot_dot_is_a_dot_dot", req("/public/%2E%2E/orders/7", ""), Refused(401)),
        c("half_encoded_dot_dot_is_a_dot_dot", req("/public/.%2e/orders/7", ""), Refused(401)),
        c("encoded_slash_after_dot_dot_is_refused", req("/public/..%2forders/7", ""), Refused(400)),
        c("upper_case_encoded_slash_is_refused", req("/public/..%2Forders/7", ""), Refused(400)),
        c("encoded_slash_alone_is_refused", req("/public/a%2fb", ""), Refused(400)),
        c("dot_dot_semicolon_is_refused", req("/public/..;/orders/7", ""), Refused(400)),
        c("dot_semicolon_with_parameters_is_refused", req("/public/.;jsessionid=1/orders/7", ""), Refused(400)),
        c("raw_backslash_is_refused", req("/public/..\\orders/7", ""), Refused(400)),
        c("encoded_backslash_is_refused", req("/public/..%5corders/7", ""), Refused(400)),
        c("encoded_nul_is_refused", req("/public/a%00.json", ""), Refused(400)),
        c("malformed_escape_is_refused", req("/public/%zz", ""), Refused(400)),
        c("truncated_escape_is_refused", req("/public/%4", ""), Refused(400)),
        c("double_slash_before_admin_is_judged_as_admin", req("//admin/x", ""), Refused(403)),
        c("encoded_letter_in_admin_is_judged_as_admin", req("/%61dmin/x", ""), Refused(403)),
        c("dot_segment_before_admin_is_judged_as_admin", req("/./admin/x", ""), Refused(403)),
        c("dot_dot_into_admin_is_judged_as_admin", req("/x/../admin/x", ""), Refused(403)),
        c("encoded_dot_dot_into_admin_is_judged_as_admin", req("/x/%2e%2e/admin/x", ""), Refused(403)),
        c("dot_dot_above_the_root_into_admin_is_judged_as_admin", req("/../../admin/x", ""), Refused(403)),
        c("double_slash_before_orders_reaches_the_orders_rule", req("//orders/7", ""), Refused(401)),
        c("encoded_letter_in_orders_reaches_the_orders_rule", req("/%6frders/7", ""), Refused(401)),
        c("absolute_form_dot_dot_reaches_the_orders_rule", "GET http://api.example.test/public/../orders/7 HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(401)),
        c("dot_dot_with_a_token_is_forwarded_as_the_canonical_path", req("/public/../orders/7", &bearer), Forwarded(|s| {
            check(s.target == "/orders/7" && s.one("x-user-id") == Some("alice"), format!("{} {:?}", s.target, s.headers))
        })),
        c("dot_segments_are_removed_before_forwarding", req("/public/a/./b/../c", ""), Forwarded(|s| check(s.target == "/a/c", s.target.clone()))),
        c("repeated_slashes_are_merged_before_forwarding", req("/public//x///y", ""), Forwarded(|s| check(s.target == "/x/y", s.target.clone()))),
        c("encoded_unreserved_characters_are_forwarded_decoded", req("/public/%7euser/%41", ""), Forwarded(|s| check(s.target == "/~user/A", s.target.clone()))),
        c("double_encoded_dot_dot_stays_data", req("/public/%252e%252e/admin", ""), Forwarded(|s| check(s.target == "/%252e%252e/admin", s.target.clone()))),
        c("query_is_not_a_path", req("/public/x?next=../../admin", ""), Forwarded(|s| check(s.target == "/x?next=../../admin", s.target.clone()))),
        c("catch_all_forwards_what_it_allowed", req("/docs/./intro", ""), Forwarded(|s| check(s.target == "/docs/intro", s.target.clone()))),
        // Decision cache and input pruning in a bracketed package.
        c("clean_client_of_a_bracketed_package_is_allowed", req("/tenants/x", ""), Forwarded(|s| check(s.target == "/tenants/x", s.target.clone()))),
        c("banned_client_of_a_bracketed_package_is_denied_after_a_clean_one", req("/tenants/x", "x-banned: 1\r\n"), Refused(403)),
        c("banned_client_of_the_catch_all_is_denied", req("/docs", "x-banned: yes\r\n"), Refused(403)),
        // Hosts.
        c("absolute_form_without_host_is_routed_by_its_authority", "GET http://admin.example.test/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("absolute_form_disagreeing_with_host_is_refused", "GET http://admin.example.test/x HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("absolute_form_with_userinfo_is_refused", "GET http://user@admin.example.test/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("trailing_dot_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: admin.example.test.\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("upper_case_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: ADMIN.Example.TEST\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("default_port_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: admin.example.test:80\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("trailing_dot_and_port_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: Admin.Example.Test.:80\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("http11_without_host_is_refused", "GET /public/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("two_host_headers_are_refused", "GET /x HTTP/1.1\r\nhost: api.example.test\r\nhost: admin.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("host_with_userinfo_is_refused", "GET /x HTTP/1.1\r\nhost: api.example.test@admin.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("host_with_a_path_is_refused", "GET /x HTTP/1.1\r\nhost: admin.example.test/..\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("host_with_a_bad_port_is_refused", "GET /x HTTP/1.1\r\nhost: api.example.test:99999\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("canonical_host_is_what_the_backend_receives", "GET /public/x HTTP/1.1\r\nhost: API.Example.Test.:80\r\nconnection: close\r\n\r\n".into(), Forwarded(|s| {
            check(s.one("host") == Some("api.example.test"), format!("{:?}", s.one("host")))
        })),
        c("non_default_port_stays_in_the_forwarded_host", "GET /public/x HTTP/1.1\r\nhost: api.example.test:8443\r\nconnection: close\r\n\r\n".into(), Forwarded(|s| {
            check(s.one("host") == Some("api.example.test:8443"), format!("{:?}", s.one("host")))
        })),
        c("absolute_form_is_forwarded_in_origin_form", "GET http://api.example.test/public/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Forwarded(|s| {
            check(s.target == "/x" && s.one("host") == Some("api.example.test"), format!("{} {:?}", s.target, s.one("host")))
        })),
        // Tokens.
        c("second_authorization_header_is_refused_after_a_valid_one", req("/orders/7", &format!("{bearer}authorization: Bearer forged\r\n")), Refused(400)),
        c("second_authorization_header_is_refused_before_a_valid_one", req("/orders/7", &format!("authorization: Bearer forged\r\n{bearer}")), Refused(400)),
        c("two_authorization_headers_on_a_public_route_are_refused", req("/public/x", "authorization: Basic YTpi\r\nauthorization: Bearer x\r\n"), Refused(400)),
        c("garbage_bearer_token_is_refused_everywhere", req("/public/x", "authorization: Bearer garbage\r\n"), Refused(401)),
        c("unsigned_alg_none_token_is_refused", req("/orders/7", &format!("authorization: Bearer {unsigned}\r\n")), Refused(401)),
        c("expired_token_is_refused", req("/orders/7", &format!("authorization: Bearer {expired}\r\n")), Refused(401)),
        c("token_for_another_audience_is_refused", req("/orders/7", &format!("authorization: Bearer {wrong_aud}\r\n")), Refused(401)),
        c("basic_credentials_are_not_a_verified_identity", req("/orders/7", "authorization: Basic YWxpY2U6eA==\r\n"), Refused(401)),
        // Forwarding headers from a client that is not a trusted proxy.
        c("spoofed_x_forwarded_for_is_replaced", req("/public/x", "x-forwarded-for: 10.0.0.1\r\n"), Forwarded(|s| {
            check(s.one("x-forwarded-for") == Some("127.0.0.1"), format!("{:?}", s.all("x-forwarded-for")))
        })),
        c("repeated_x_forwarded_for_is_replaced_by_one", req("/public/x", "x-forwarded-for: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n"), Forwarded(|s| {
            check(s.all("x-forwarded-for") == ["127.0.0.1"], format!("{:?}", s.all("x-forwarded-for")))
        })),
        c("spoofed_x_real_ip_is_replaced", req("/public/x", "x-real-ip: 10.0.0.1\r\n"), Forwarded(|s| {
            check(s.one("x-real-ip") == Some("127.0.0.1"), format!("{:?}", s.all("x-real-ip")))
        })),
        c("spoofed_forwarded_is_removed", req("/public/x", "forwarded: for=10.0.0.1;proto=https\r\n"), Forwarded(|s| {
            check(s.all("forwarded").is_empty(), format!("{:?}", s.all("forwarded")))
        })),
        c("spoofed_x_forwarded_proto_is_replaced", req("/public/x", "x-forwarded-proto: https\r\n"), Forwarded(|s| {
            check(s.one("x-forwarded-proto") == Some("http"), format!("{:?}", s.all("x-forwarded-proto")))
        })),
        c("spoofed_x_forwarded_host_is_removed", req("/public/x", "x-forwarded-host: admin.example.test\r\n"), Forwarded(|s| {
            check(s.all("x-forwarded-host").is_empty(), format!("{:?}", s.all("x-forwarded-host")))
        })),
        // Framing.
        // Pingora resolves this one before any phase runs, as RFC 9112 6.3 says: chunked wins,
        // Content-Length is removed, and the connection closes after the response.
        c("content_length_beside_transfer_encoding_reaches_the_backend_with_one_framing", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ncontent-length: 30\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/x HTTP/1.1\r\nhost: api.example.test\r\n\r\n".into(), Forwarded(|s| {
            check(s.all("content-length").is_empty() && s.all("transfer-encoding") == ["chunked"] && s.body == b"0\r\n\r\n", format!("{:?} {:?}", s.headers, String::from_utf8_lossy(&s.body)))
        })),
        c("two_different_content_lengths_are_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ncontent-length: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\nab".into(), Refused(400)),
        c("obfuscated_transfer_encoding_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ntransfer-encoding: xchunked\r\nconnection: close\r\n\r\n0\r\n\r\n".into(), Refused(400)),
        c("repeated_transfer_encoding_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n".into(), Refused(400)),
        c("signed_content_length_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ncontent-length: +2\r\nconnection: close\r\n\r\nab".into(), Refused(400)),
        c("plain_body_is_forwarded_whole", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello".into(), Forwarded(|s| {
            check(s.body == b"hello", format!("{:?}", String::from_utf8_lossy(&s.body)))
        })),
        // Decisions that would change framing or routing.
        c("decision_setting_content_length_fails_closed", req("/bad/length", ""), Refused(403)),
        c("decision_setting_host_fails_closed", req("/bad/host", ""), Refused(403)),
        c("decision_setting_transfer_encoding_fails_closed", req("/bad/te", ""), Refused(403)),
        c("informational_deny_status_fails_closed", req("/bad/status", ""), Refused(403)),
        c("login_redirect_is_a_deny", req("/login-required", ""), Refused(302)),
    ]
}

#[test]
fn hostile_requests_never_reach_the_backend_past_the_policy() {
    let env = env("");
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 60, "the suite has {} cases", cases.len());
    for case in &cases {
        env.rec.seen.lock().expect("log").clear();
        let (statuses, text) = answers(None, &env.addr, case.raw.as_bytes());
        let body = text.rsplit("\r\n\r\n").next().unwrap_or("").to_owned();
        // A forwarded request reaches the backend before its answer reaches the client.
        let seen = env.rec.seen.lock().expect("log").clone();
        let status = statuses.first().copied().unwrap_or(0);
        let verdict = match &case.want {
            Want::Refused(want) if status != *want => Err(format!("status {status}, want {want}: {body}")),
            Want::Refused(_) if !seen.is_empty() => Err(format!("forwarded anyway: {seen:?}")),
            Want::Refused(_) => Ok(()),
            Want::Forwarded(_) if status != 200 => Err(format!("status {status}, want 200: {body}")),
            Want::Forwarded(_) if seen.len() != 1 => Err(format!("backend saw {} requests", seen.len())),
            Want::Forwarded(check) => check(&seen[0]),
        };
        if let Err(e) = verdict {
            failures.push(format!("{}: {e}", case.attack));
        }
    }
    let metrics = common::get(&format!("{}/metrics", env.gw.admin), &[]).text();
    assert!(failures.is_empty(), "{} of {} attacks got through:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert!(
        metrics.contains("gateway_requests_refused_total{reason=\"escaped_slash\"} 4"),
        "refusals are counted by reason:\n{}",
        metrics.lines().filter(|l| l.contains("refused")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_second_pipelined_request_is_judged_on_its_own() {
    let env = env("");
    let raw = format!("{}{}", req("/public/x", "").replace("connection: close\r\n", ""), req("/admin/x", ""));
    let statuses = send_from(None, &env.addr, raw.as_bytes());
    let seen = env.rec.seen.lock().expect("log").clone();
    assert_eq!(statuses.first(), Some(&200), "pipelined answers: {statuses:?}");
    assert!(statuses[1..].iter().all(|s| *s == 403), "the second is denied or not answered: {statuses:?}");
    assert_eq!(seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(), ["/x"], "only the allowed one is forwarded");
}

#[test]
fn forwarding_headers_are_appended_only_for_trusted_proxies() {
    let env = env("trusted_proxies: [127.0.0.2/32]\n");
    let raw = req("/public/x", "x-forwarded-for: 203.0.113.9\r\nx-real-ip: 203.0.113.9\r\n");
    assert_eq!(send_from(Some("127.0.0.2"), &env.addr, raw.as_bytes()), [200]);
    assert_eq!(send_from(Some("127.0.0.3"), &env.addr, raw.as_bytes()), [200]);
    let seen = env.rec.seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].one("x-forwarded-for"), Some("203.0.113.9, 127.0.0.2"), "a trusted proxy's chain is kept");
    assert_eq!(seen[0].one("x-real-ip"), Some("203.0.113.9"));
    assert_eq!(seen[1].one("x-forwarded-for"), Some("127.0.0.3"), "an untrusted client's chain is replaced");
    assert_eq!(seen[1].one("x-real-ip"), Some("127.0.0.3"));
}

#[test]
fn escaped_slashes_can_be_unescaped_by_configuration() {
    let env = env("path_with_escaped_slashes: unescape\n");
    // Decoded, `..%2forders` is `../orders`: judged by the orders rule, not the public one.
    assert_eq!(send_from(None, &env.addr, req("/public/..%2forders/7", "").as_bytes()), [401]);
    assert_eq!(send_from(None, &env.addr, req("/public/a%2fb", "").as_bytes()), [200]);
    let seen = env.rec.seen.lock().expect("log").clone();
    assert_eq!(seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(), ["/a/b"]);
}

#[test]
fn underscore_headers_can_be_refused_by_configuration() {
    let env = env("headers_with_underscores: reject\n");
    assert_eq!(send_from(None, &env.addr, req("/public/x", "x_user_id: mallory\r\n").as_bytes()), [400]);
    assert_eq!(send_from(None, &env.addr, req("/public/x", "x-user-agent-id: fine\r\n").as_bytes()), [200]);
    let seen = env.rec.seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 1, "only the request without `_` is forwarded");
    assert_eq!(seen[0].one("x-user-agent-id"), Some("fine"));
}
