//! Authorization that cannot be bypassed: hostile requests over raw sockets to the real
//! `gateway` binary, in front of one recording backend that every route shares (as real
//! deployments do). For each request the suite asserts what the backend received, or that
//! nothing was forwarded at all. Each case is named after the attack it tries.
//!
//! The bundle is written to be easy to talk past: a public route that strips its prefix onto
//! the same backend as the protected ones, a host-specific deny-all, a catch-all whose rule
//! guards by path, and a rule in a bracketed package that blocks by header. Round two adds a
//! route that lets `Basic` through to its rule (`/legacy`), one whose rule reads the query
//! (`/search`) and one whose rule denies whenever it sees a claim header (`/claims`).
//!
//! Round two's cases run over HTTP/1.1 (raw bytes) and over HTTP/2 cleartext with prior
//! knowledge (the `h2` crate, sending the case's method, target as `:path`, `Host` as
//! `:authority` and its other headers as they are), except the ones marked HTTP/1.1 only
//! because HTTP/2 has no way to say them (framing, absolute form, obs-fold, header-name
//! syntax, bytes the `http` crate refuses in a `:path`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// One request as the backend read it off the wire.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
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
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
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
    Some(Seen { method, target, headers, body })
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
    // `/blind` lists `Basic` too, but its rule never reads the header: nothing would verify it.
    ("http/blind.rego", "package http.blind\nimport rego.v1\nallow := true\n"),
    // Round two. `/legacy` lets `Basic` through to this rule (`authorization_schemes`), which
    // reads the header the backend will get.
    (
        "http/legacy.rego",
        "package http.legacy\nimport rego.v1\ndefault allow := false\n\
         allow if startswith(lower(input.request.headers.authorization), \"basic \")\n\
         allow if input.jwt.claims.sub\n",
    ),
    // `/search` reads the query: a parameter the rule cannot see must not reach the backend.
    (
        "http/search.rego",
        "package http.search\nimport rego.v1\ndefault allow := false\nallow if not input.request.query.debug\n",
    ),
];

/// Claim headers that the spec removes from a peer outside `trusted_proxies` and keeps from a
/// trusted proxy (forwarding, scheme, port, prefix, client address, host): the name, a forged
/// value, and the attack it is.
const FORWARDING_CLAIMS: [(&str, &str, &str); 31] = [
    ("x-forwarded-ssl", "on", "x_forwarded_ssl_never_reaches_the_backend"),
    ("x-forwarded-scheme", "https", "x_forwarded_scheme_never_reaches_the_backend"),
    ("x-forwarded-port", "443", "x_forwarded_port_never_reaches_the_backend"),
    ("x-forwarded-prefix", "/admin", "x_forwarded_prefix_never_reaches_the_backend"),
    ("x-forwarded-path", "/admin", "x_forwarded_path_never_reaches_the_backend"),
    ("x-forwarded-server", "admin.example.test", "x_forwarded_server_never_reaches_the_backend"),
    ("x-forwarded-protocol", "https", "x_forwarded_protocol_never_reaches_the_backend"),
    ("x-original-forwarded-for", "10.0.0.1", "x_original_forwarded_for_never_reaches_the_backend"),
    ("front-end-https", "on", "front_end_https_never_reaches_the_backend"),
    ("x-url-scheme", "https", "x_url_scheme_never_reaches_the_backend"),
    ("x-scheme", "https", "x_scheme_never_reaches_the_backend"),
    ("true-client-ip", "10.0.0.1", "true_client_ip_never_reaches_the_backend"),
    ("x-client-ip", "10.0.0.1", "x_client_ip_never_reaches_the_backend"),
    ("cf-connecting-ip", "10.0.0.1", "cf_connecting_ip_never_reaches_the_backend"),
    ("x-originating-ip", "10.0.0.1", "x_originating_ip_never_reaches_the_backend"),
    ("client-ip", "10.0.0.1", "client_ip_never_reaches_the_backend"),
    ("x-cluster-client-ip", "10.0.0.1", "x_cluster_client_ip_never_reaches_the_backend"),
    ("fastly-client-ip", "10.0.0.1", "fastly_client_ip_never_reaches_the_backend"),
    ("x-remote-ip", "10.0.0.1", "x_remote_ip_never_reaches_the_backend"),
    ("x-remote-addr", "10.0.0.1", "x_remote_addr_never_reaches_the_backend"),
    ("forwarded-for", "10.0.0.1", "forwarded_for_never_reaches_the_backend"),
    ("x-forwarded", "for=10.0.0.1", "x_forwarded_never_reaches_the_backend"),
    ("x-host", "admin.example.test", "x_host_never_reaches_the_backend"),
    ("x-original-host", "admin.example.test", "x_original_host_never_reaches_the_backend"),
    (
        "x-forwarded-client-cert",
        "By=spiffe://x;URI=spiffe://admin",
        "x_forwarded_client_cert_never_reaches_the_backend",
    ),
    ("ssl-client-cert", "-----BEGIN%20CERTIFICATE-----", "ssl_client_cert_never_reaches_the_backend"),
    ("x-ssl-client-cert", "-----BEGIN%20CERTIFICATE-----", "x_ssl_client_cert_never_reaches_the_backend"),
    ("x-client-cert", "forged", "x_client_cert_never_reaches_the_backend"),
    ("x-ssl-client-verify", "SUCCESS", "x_ssl_client_verify_never_reaches_the_backend"),
    ("x-ssl-client-dn", "CN=admin", "x_ssl_client_dn_never_reaches_the_backend"),
    ("x-ssl-client-s-dn", "CN=admin", "x_ssl_client_s_dn_never_reaches_the_backend"),
];

/// Request-target and method overrides: removed from every peer, a trusted proxy included.
const OVERRIDE_CLAIMS: [(&str, &str, &str); 10] = [
    ("x-original-url", "/admin/x", "x_original_url_never_reaches_the_backend"),
    ("x-rewrite-url", "/admin/x", "x_rewrite_url_never_reaches_the_backend"),
    ("x-original-uri", "/admin/x", "x_original_uri_never_reaches_the_backend"),
    ("x-http-method-override", "DELETE", "x_http_method_override_never_reaches_the_backend"),
    ("x-http-method", "DELETE", "x_http_method_never_reaches_the_backend"),
    ("x-method-override", "DELETE", "x_method_override_never_reaches_the_backend"),
    ("x-original-method", "DELETE", "x_original_method_never_reaches_the_backend"),
    ("x-envoy-original-path", "/admin/x", "x_envoy_original_path_never_reaches_the_backend"),
    ("x-forwarded-uri", "/admin/x", "x_forwarded_uri_never_reaches_the_backend"),
    ("x-forwarded-method", "DELETE", "x_forwarded_method_never_reaches_the_backend"),
];

#[test]
fn every_claim_header_the_gateway_owns_is_a_case_here() {
    let tested: Vec<&str> = FORWARDING_CLAIMS.iter().chain(OVERRIDE_CLAIMS.iter()).map(|(n, _, _)| *n).collect();
    let first_round = ["x-forwarded-for", "x-real-ip", "forwarded", "x-forwarded-proto", "x-forwarded-host"];
    for name in http_canon::claims::names() {
        assert!(tested.contains(&name) || first_round.contains(&name), "claim header `{name}` has no case");
    }
}

/// The `/claims` rule: denies whenever its input holds a claim header, so a case that passes
/// there shows the policy saw the headers as the backend did (without them).
fn claims_rego() -> String {
    let names: Vec<String> =
        FORWARDING_CLAIMS.iter().chain(OVERRIDE_CLAIMS.iter()).map(|(n, _, _)| format!("\"{n}\"")).collect();
    format!(
        "package http.claims\nimport rego.v1\nclaims := {{{}}}\ndefault allow := false\n\
         allow if count([h | some h in claims; input.request.headers[h]]) == 0\n",
        names.join(", ")
    )
}

/// Round two's routes, before the catch-all.
const ROUND_TWO_ROUTES: &str = concat!(
    "  - name: legacy\n    match: { path_prefix: /legacy }\n    upstream: backend\n",
    "    policy: data.http.legacy.allow\n    authorization_schemes: [basic]\n",
    "  - name: blind\n    match: { path_prefix: /blind }\n    upstream: backend\n",
    "    policy: data.http.blind.allow\n    authorization_schemes: [basic]\n",
    "  - name: search\n    match: { path_prefix: /search }\n    upstream: backend\n",
    "    policy: data.http.search.allow\n",
    "  - name: claims\n    match: { path_prefix: /claims }\n    upstream: backend\n",
    "    policy: data.http.claims.allow\n",
);

fn routes(extra: &str) -> String {
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
        extra.to_owned(),
        r("catchall", "{ path_prefix: / }", "data.http.catchall.allow", ""),
    ]
    .concat()
}

/// What a test changes in the shared bundle: routes put before the catch-all, and lines added
/// under `request_headers:` (e.g. `  allow: [x-http-method-override]\n`).
#[derive(Default, Clone, Copy)]
struct Edits<'a> {
    routes: &'a str,
    request_headers: &'a str,
}

fn bundle(dir: &Path, backend: SocketAddr, edits: Edits) -> std::path::PathBuf {
    let claims = claims_rego();
    let mut modules = POLICIES.to_vec();
    modules.push(("http/claims.rego", claims.as_str()));
    let b = example_bundle(dir, &backend.to_string(), "", "", &modules);
    // The shared routing table replaces the example's own routes.
    let settings = b.join("gateway/data.yaml");
    let text = std::fs::read_to_string(&settings).expect("settings");
    // An edit with its own `remove` list replaces the example's.
    let text = match edits.request_headers.contains("remove:") {
        true => text.replacen("  remove: [x-user-id, x-user-roles]\n", "", 1),
        false => text,
    };
    let text = text.replacen("request_headers:\n", &format!("request_headers:\n{}", edits.request_headers), 1);
    let (head, rest) = text.split_once("routes:").expect("routes");
    let jwt = &rest[rest.find("\njwt:").expect("jwt")..];
    std::fs::write(&settings, format!("{head}routes:\n{}{jwt}", routes(edits.routes))).expect("write");
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
    env_with(extra_config, Edits::default())
}

/// Round two's gateway: h2c on the listener (HTTP/2 by prior knowledge beside HTTP/1.1) and
/// round two's routes.
fn round_two_env(extra_config: &str) -> Env {
    env_with(&format!("h2c: true\n{extra_config}"), Edits { routes: ROUND_TWO_ROUTES, ..Edits::default() })
}

fn env_with(extra_config: &str, edits: Edits) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = recorder();
    let b = bundle(dir.path(), rec.addr, edits);
    let gw = start_gateway_with(dir.path(), &b, extra_config);
    let addr = gw.addr();
    Env { _dir: dir, rec, gw, addr }
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

/// The gateway's answer to one request, whichever protocol carried it.
struct Answer {
    /// 0 when there was none (the connection closed, the stream was reset).
    status: u16,
    /// The response's headers, names in lower case.
    headers: Vec<(String, String)>,
    /// The response body, or what went wrong when there was no response.
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends raw HTTP/1.1 bytes and reads the first response.
fn h1_answer(from: Option<&str>, addr: &str, raw: &[u8]) -> Answer {
    let (statuses, text) = answers(from, addr, raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status: statuses.first().copied().unwrap_or(0), headers, body: body.to_owned() }
}

/// One HTTP/2 request, as the `h2` crate will send it: `:path` is `target` byte for byte.
struct H2Request {
    method: String,
    scheme: &'static str,
    /// `:authority`; `None` sends none (a request "translated from HTTP/1", with `Host` as an
    /// ordinary header when the case has one).
    authority: Option<String>,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl H2Request {
    /// The HTTP/2 form of a raw HTTP/1.1 request: its method, its target as `:path`, its
    /// `Host` as `:authority`, its other headers as they are but for the connection-specific
    /// ones HTTP/2 forbids, its body as DATA. Err says why it has no HTTP/2 form.
    fn from_h1(raw: &str) -> Result<H2Request, String> {
        let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of the head")?;
        let mut lines = head.split("\r\n");
        let mut line = lines.next().ok_or("no request line")?.splitn(3, ' ');
        let (Some(method), Some(target), Some("HTTP/1.1")) = (line.next(), line.next(), line.next()) else {
            return Err("the request line is not `METHOD TARGET HTTP/1.1`".into());
        };
        if !target.starts_with('/') && target != "*" {
            return Err(format!("`{target}` is in absolute or authority form"));
        }
        let mut authority = None;
        let mut headers = Vec::new();
        for l in lines {
            if l.starts_with([' ', '\t']) {
                return Err("obs-fold".into());
            }
            let (name, value) = l.split_once(':').ok_or_else(|| format!("`{l}` has no colon"))?;
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(format!("the header name `{name}` has whitespace"));
            }
            let value = value.trim_matches([' ', '\t']);
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "host" if authority.is_some() => return Err("more than one Host".into()),
                "host" => authority = Some(value.to_owned()),
                "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" => {}
                _ => headers.push((name, value.as_bytes().to_vec())),
            }
        }
        let authority = Some(authority.ok_or("no Host to make `:authority` of")?);
        Ok(H2Request {
            method: method.to_owned(),
            scheme: "http",
            authority,
            target: target.to_owned(),
            headers,
            body: body.as_bytes().to_vec(),
        })
    }

    /// The request the `h2` crate sends; Err when the `http` crate cannot hold it (a raw tab
    /// in the target, a header the crate refuses).
    fn build(&self) -> Result<http::Request<()>, String> {
        let mut uri = http::Uri::builder();
        let version = match &self.authority {
            Some(a) => {
                uri = uri.scheme(self.scheme).authority(a.as_str());
                http::Version::HTTP_2
            }
            // The `h2` crate sends a request without a scheme or authority only as one
            // translated from HTTP/1.x: `:scheme: http` and no `:authority`.
            None => http::Version::HTTP_11,
        };
        let uri =
            uri.path_and_query(self.target.as_str()).build().map_err(|e| format!("`:path` {:?}: {e}", self.target))?;
        let method = http::Method::from_bytes(self.method.as_bytes()).map_err(|e| format!("`:method`: {e}"))?;
        let mut req = http::Request::builder().method(method).uri(uri).version(version);
        for (name, value) in &self.headers {
            let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header name `{name}`: {e}"))?;
            let v = http::HeaderValue::from_bytes(value).map_err(|e| format!("`{name}` value: {e}"))?;
            req = req.header(n, v);
        }
        req.body(()).map_err(|e| e.to_string())
    }
}

/// Sends `req` over a fresh HTTP/2 prior-knowledge connection from `from` and reads the
/// answer. Err only when the request cannot be expressed in HTTP/2 at all.
fn h2_answer(from: Option<&str>, addr: &str, req: &H2Request) -> Result<Answer, String> {
    let request = req.build()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let body = bytes::Bytes::from(req.body.clone());
    let exchange = h2_exchange(from, addr, request, body);
    Ok(match rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), exchange).await }) {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => Answer { status: 0, headers: Vec::new(), body: why },
        Err(_) => Answer { status: 0, headers: Vec::new(), body: "no HTTP/2 answer within 10 s".into() },
    })
}

async fn h2_exchange(
    from: Option<&str>,
    addr: &str,
    request: http::Request<()>,
    body: bytes::Bytes,
) -> Result<Answer, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(local) = from {
        socket.bind(format!("{local}:0").parse().expect("local address")).map_err(|e| format!("bind: {e}"))?;
    }
    let tcp = socket.connect(addr.parse().expect("gateway address")).await.map_err(|e| format!("connect: {e}"))?;
    let (client, connection) = h2::client::handshake(tcp).await.map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| format!("h2 not ready: {e}"))?;
    let end = body.is_empty();
    let (response, mut stream) = client.send_request(request, end).map_err(|e| format!("h2 send: {e}"))?;
    if !end {
        stream.send_data(body, true).map_err(|e| format!("h2 send body: {e}"))?;
    }
    let response = response.await.map_err(|e| format!("h2 stream: {e}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("h2 body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    Ok(Answer { status, headers, body: String::from_utf8_lossy(&text).into_owned() })
}

/// What must happen to a request.
enum Want {
    /// Answered by the gateway with this status; the backend sees nothing.
    Refused(u16),
    /// As `Refused`, and counted in `gateway_requests_refused_total{reason}` with this reason.
    RefusedAs(u16, &'static str),
    /// Forwarded and answered 200; the check is run on what the backend received.
    Forwarded(fn(&Seen) -> Result<(), String>),
    /// Forwarded and answered 200, and the backend received no header of this name.
    Absent(&'static str),
}

/// The protocols a case is sent over.
#[derive(Clone, Copy)]
enum Over {
    Both,
    /// HTTP/1.1 only, and why HTTP/2 cannot say it.
    H1Only(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

struct Case {
    attack: &'static str,
    raw: String,
    want: Want,
    over: Over,
}

impl Case {
    fn h1_only(mut self, why: &'static str) -> Case {
        self.over = Over::H1Only(why);
        self
    }
}

fn c(attack: &'static str, raw: String, want: Want) -> Case {
    Case { attack, raw, want, over: Over::Both }
}

fn req(path: &str, extra: &str) -> String {
    request_with("GET", path, extra)
}

fn request_with(method: &str, target: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nhost: api.example.test\r\n{extra}connection: close\r\n\r\n")
}

/// A POST with a body (and its length).
fn post(target: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nhost: api.example.test\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn check(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// Whether the answer and what the backend saw are what `want` says.
fn judge(want: &Want, answer: &Answer, seen: &[Seen]) -> Result<(), String> {
    let status = answer.status;
    let body = &answer.body;
    match want {
        Want::Refused(code) | Want::RefusedAs(code, _) => {
            check(status == *code, format!("status {status}, want {code}: {body}"))?;
            check(seen.is_empty(), format!("forwarded anyway: {seen:?}"))?;
            // Every 401 the gateway writes invites a bearer token, whatever refused it.
            let invites = answer.header("www-authenticate").is_some_and(|v| v.eq_ignore_ascii_case("bearer"));
            check(*code != 401 || invites, format!("401 without `www-authenticate: Bearer`: {:?}", answer.headers))
        }
        Want::Forwarded(_) | Want::Absent(_) if status != 200 => Err(format!("status {status}, want 200: {body}")),
        Want::Forwarded(_) | Want::Absent(_) if seen.len() != 1 => Err(format!("backend saw {} requests", seen.len())),
        Want::Forwarded(check) => check(&seen[0]),
        Want::Absent(name) => {
            check(seen[0].all(name).is_empty(), format!("the backend got `{name}`: {:?}", seen[0].all(name)))
        }
    }
}

/// Sends one case over one protocol and judges it.
fn attempt(env: &Env, case: &Case, proto: Proto, from: Option<&str>) -> Result<(), String> {
    env.rec.seen.lock().expect("log").clear();
    let answer = match proto {
        Proto::H1 => h1_answer(from, &env.addr, case.raw.as_bytes()),
        Proto::H2 => {
            let inexpressible = |why: String| format!("has no HTTP/2 form (mark it HTTP/1.1 only): {why}");
            let req = H2Request::from_h1(&case.raw).map_err(inexpressible)?;
            h2_answer(from, &env.addr, &req).map_err(inexpressible)?
        }
    };
    // A forwarded request reaches the backend before its answer reaches the client.
    let seen = env.rec.seen.lock().expect("log").clone();
    judge(&case.want, &answer, &seen)
}

/// What a run of cases found: the failures, and the refusals each reason should have counted.
#[derive(Default)]
struct Run {
    failures: Vec<String>,
    counted: BTreeMap<&'static str, u64>,
    attempts: usize,
}

/// Sends every case over each of `protos` it can be sent over, from `from`.
fn run_cases(env: &Env, cases: &[Case], protos: &[Proto], from: Option<&str>) -> Run {
    let mut run = Run::default();
    for case in cases {
        for &proto in protos {
            if let (Proto::H2, Over::H1Only(why)) = (proto, case.over) {
                assert!(!why.is_empty(), "{}: an HTTP/1.1-only case says why", case.attack);
                continue;
            }
            run.attempts += 1;
            match attempt(env, case, proto, from) {
                Ok(()) => {
                    if let Want::RefusedAs(_, reason) = case.want {
                        *run.counted.entry(reason).or_default() += 1;
                    }
                }
                Err(e) => run.failures.push(format!("{} over {proto:?}: {e}", case.attack)),
            }
        }
    }
    run
}

/// The `gateway_requests_refused_total{reason}` series that differ from what `run` refused.
fn miscounted(env: &Env, run: &Run) -> Vec<String> {
    let url = format!("{}/metrics", env.gw.admin);
    let read = || {
        let scrape = test_support::metrics::Scrape::fetch(&url);
        run.counted
            .iter()
            .map(|(reason, want)| {
                let got =
                    scrape.as_ref().and_then(|s| s.value("gateway_requests_refused_total", &[("reason", reason)]));
                (*reason, *want, got.unwrap_or(0.0) as u64)
            })
            .collect::<Vec<_>>()
    };
    // Requests are counted just after their response is written.
    let counts = test_support::wait::settle(Duration::from_secs(5), read, |v| v.iter().all(|(_, w, g)| g >= w));
    counts
        .into_iter()
        .filter(|(_, want, got)| want != got)
        .map(|(reason, want, got)| {
            format!("gateway_requests_refused_total{{reason=\"{reason}\"}} is {got}, want {want}")
        })
        .collect()
}

/// Runs `cases` over both protocols and asserts they all held and their refusals were counted.
fn assert_cases_hold(env: &Env, cases: &[Case], from: Option<&str>) {
    let run = run_cases(env, cases, &[Proto::H1, Proto::H2], from);
    let counts = miscounted(env, &run);
    assert!(
        run.failures.is_empty() && counts.is_empty(),
        "{} of {} attempts got through:\n{}\n{}",
        run.failures.len(),
        run.attempts,
        run.failures.join("\n"),
        counts.join("\n")
    );
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
        c("absolute_form_dot_dot_reaches_the_orders_rule", "GET http://api.example.test/public/../orders/7 HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(401)).h1_only("absolute form"),
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
        c("absolute_form_without_host_is_routed_by_its_authority", "GET http://admin.example.test/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Refused(403)).h1_only("absolute form"),
        c("absolute_form_disagreeing_with_host_is_refused", "GET http://admin.example.test/x HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)).h1_only("absolute form"),
        c("absolute_form_with_userinfo_is_refused", "GET http://user@admin.example.test/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Refused(400)).h1_only("absolute form"),
        c("trailing_dot_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: admin.example.test.\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("upper_case_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: ADMIN.Example.TEST\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("default_port_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: admin.example.test:80\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("trailing_dot_and_port_host_is_the_same_host", "GET /x HTTP/1.1\r\nhost: Admin.Example.Test.:80\r\nconnection: close\r\n\r\n".into(), Refused(403)),
        c("http11_without_host_is_refused", "GET /public/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Refused(400)).h1_only("no Host, so no `:authority`"),
        c("two_host_headers_are_refused", "GET /x HTTP/1.1\r\nhost: api.example.test\r\nhost: admin.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)).h1_only("more than one Host"),
        c("host_with_userinfo_is_refused", "GET /x HTTP/1.1\r\nhost: api.example.test@admin.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("host_with_a_path_is_refused", "GET /x HTTP/1.1\r\nhost: admin.example.test/..\r\nconnection: close\r\n\r\n".into(), Refused(400)).h1_only("`admin.example.test/..` is no authority the `http` crate takes"),
        c("host_with_a_bad_port_is_refused", "GET /x HTTP/1.1\r\nhost: api.example.test:99999\r\nconnection: close\r\n\r\n".into(), Refused(400)),
        c("canonical_host_is_what_the_backend_receives", "GET /public/x HTTP/1.1\r\nhost: API.Example.Test.:80\r\nconnection: close\r\n\r\n".into(), Forwarded(|s| {
            check(s.one("host") == Some("api.example.test"), format!("{:?}", s.one("host")))
        })),
        c("non_default_port_stays_in_the_forwarded_host", "GET /public/x HTTP/1.1\r\nhost: api.example.test:8443\r\nconnection: close\r\n\r\n".into(), Forwarded(|s| {
            check(s.one("host") == Some("api.example.test:8443"), format!("{:?}", s.one("host")))
        })),
        c("absolute_form_is_forwarded_in_origin_form", "GET http://api.example.test/public/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Forwarded(|s| {
            check(s.target == "/x" && s.one("host") == Some("api.example.test"), format!("{} {:?}", s.target, s.one("host")))
        })).h1_only("absolute form"),
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
        })).h1_only("framing"),
        c("two_different_content_lengths_are_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ncontent-length: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\nab".into(), Refused(400)).h1_only("framing"),
        c("obfuscated_transfer_encoding_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ntransfer-encoding: xchunked\r\nconnection: close\r\n\r\n0\r\n\r\n".into(), Refused(400)).h1_only("framing"),
        c("repeated_transfer_encoding_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n".into(), Refused(400)).h1_only("framing"),
        c("signed_content_length_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ncontent-length: +2\r\nconnection: close\r\n\r\nab".into(), Refused(400)).h1_only("framing"),
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

/// Round two: every attack named in the spec ("No bypass, round two: the decisions"), over
/// HTTP/1.1 and HTTP/2.
#[rustfmt::skip]
fn round_two_cases() -> Vec<Case> {
    use Want::*;
    let alice = token("alice", &["reader"]);
    let accepted = |s: &Seen| check(s.one("x-user-id") == Some("alice"), format!("{} {:?}", s.target, s.headers));
    let mut cases = vec![
        // Authorization: a header that is the scheme `bearer` but not exactly `Bearer SP token68`
        // is never read as "no token" (and so never forwarded unverified on a public route).
        c("bearer_with_a_tab_is_never_forwarded_as_no_token", req("/public/x", "authorization: Bearer\tforged\r\n"), RefusedAs(401, "malformed_credentials")),
        c("bearer_with_a_no_break_space_is_never_forwarded_as_no_token", req("/public/x", "authorization: Bearer\u{a0}forged\r\n"), RefusedAs(401, "malformed_credentials")),
        c("bearer_with_two_spaces_is_never_forwarded_as_no_token", req("/public/x", "authorization: Bearer  forged\r\n"), RefusedAs(401, "malformed_credentials")),
        c("bearer_alone_is_refused", req("/public/x", "authorization: Bearer\r\n"), RefusedAs(401, "malformed_credentials")),
        c("bearer_with_two_tokens_is_refused", req("/public/x", "authorization: Bearer forged other\r\n"), RefusedAs(401, "malformed_credentials")),
        c("bearer_with_a_comma_list_of_tokens_is_refused", req("/public/x", "authorization: Bearer forged,other\r\n"), RefusedAs(401, "malformed_credentials")),
        c("quoted_bearer_token_is_refused", req("/public/x", "authorization: Bearer \"forged\"\r\n"), RefusedAs(401, "malformed_credentials")),
        c("trailing_junk_after_a_valid_token_is_refused", req("/orders/7", &format!("authorization: Bearer {alice};x\r\n")), RefusedAs(401, "malformed_credentials")),
        c("bearer_token_with_a_byte_above_ascii_is_refused", req("/public/x", "authorization: Bearer forg\u{e9}d\r\n"), RefusedAs(401, "malformed_credentials")),
        c("empty_authorization_is_refused", req("/public/x", "authorization: \r\n"), RefusedAs(401, "malformed_credentials")),
        c("authorization_not_starting_with_a_scheme_is_refused", req("/public/x", "authorization: =Bearer forged\r\n"), RefusedAs(401, "malformed_credentials")),
        c("lower_case_bearer_with_one_space_and_a_valid_token_is_accepted", req("/orders/7", &format!("authorization: bearer {alice}\r\n")), Forwarded(accepted)),
        // Other schemes: refused unless the route lists them.
        c("basic_on_a_route_that_does_not_list_it_is_refused", req("/public/x", "authorization: Basic YWxpY2U6eA==\r\n"), RefusedAs(401, "authorization_scheme")),
        c("basic_on_a_route_that_lists_it_is_forwarded_with_the_header", req("/legacy/x", "authorization: Basic YWxpY2U6eA==\r\n"), Forwarded(|s| {
            check(s.one("authorization") == Some("Basic YWxpY2U6eA==") && s.target == "/legacy/x", format!("{} {:?}", s.target, s.headers))
        })),
        c("basic_on_a_route_whose_rule_never_reads_it_is_refused", req("/blind/x", "authorization: Basic YWxpY2U6eA==\r\n"), RefusedAs(401, "authorization_scheme")),
        c("digest_is_refused", req("/public/x", "authorization: Digest username=\"alice\", response=\"x\"\r\n"), RefusedAs(401, "authorization_scheme")),
        c("negotiate_is_refused", req("/public/x", "authorization: Negotiate YIIBhwYGKwYBBQUC\r\n"), RefusedAs(401, "authorization_scheme")),
        c("token_scheme_is_refused", req("/public/x", "authorization: Token forged\r\n"), RefusedAs(401, "authorization_scheme")),
        c("bearer_glued_to_its_token_is_another_scheme_and_refused", req("/public/x", "authorization: Bearerx.y.z\r\n"), RefusedAs(401, "authorization_scheme")),
        // RFC 6750 2.3: a token in the query is one Spring and FastAPI would read.
        c("access_token_in_the_query_is_refused", req("/public/x?access_token=forged", ""), RefusedAs(401, "token_in_query")),
        c("percent_encoded_access_token_name_is_refused", req("/public/x?access%5Ftoken=forged", ""), RefusedAs(401, "token_in_query")),
        c("valid_access_token_in_the_query_is_refused_too", req(&format!("/orders/7?page=1&access_token={alice}"), ""), RefusedAs(401, "token_in_query")),
        // Path parameters (`path_params: reject`, the default).
        c("empty_segment_with_parameters_never_escapes_the_route_table", req("/;/admin/x", ""), RefusedAs(400, "path_params")),
        c("parameters_on_an_empty_first_segment_are_refused", req("/;x=1/orders/7", ""), RefusedAs(400, "path_params")),
        c("parameters_on_a_route_prefix_are_refused", req("/orders;v=1/7", ""), RefusedAs(400, "path_params")),
        c("dot_dot_semicolon_is_refused_as_a_path_parameter", req("/public/..;/orders/7", ""), RefusedAs(400, "path_params")),
        // Escapes that decode to no UTF-8 (overlong forms a lax decoder reads as `.` or `/`).
        c("overlong_dot_dot_is_refused", req("/public/%C0%AE%C0%AE/orders/7", ""), RefusedAs(400, "bad_utf8")),
        c("three_byte_overlong_dot_dot_is_refused", req("/public/%E0%80%AE%E0%80%AE/orders/7", ""), RefusedAs(400, "bad_utf8")),
        c("overlong_slash_is_refused", req("/public/..%C0%AForders/7", ""), RefusedAs(400, "bad_utf8")),
        c("four_byte_overlong_dot_dot_is_refused", req("/public/%F0%80%80%AE%F0%80%80%AE/orders/7", ""), RefusedAs(400, "bad_utf8")),
        c("lone_continuation_byte_is_refused", req("/public/a%80b", ""), RefusedAs(400, "bad_utf8")),
        c("truncated_sequence_is_refused", req("/public/%E2%82/x", ""), RefusedAs(400, "bad_utf8")),
        c("encoded_surrogate_is_refused", req("/public/%ED%A0%80/x", ""), RefusedAs(400, "bad_utf8")),
        // Characters a normalizing (NFKC) backend reads as `.`, `/`, `\` or `%`.
        c("fullwidth_dot_dot_is_refused", req("/public/%EF%BC%8E%EF%BC%8E/orders/7", ""), RefusedAs(400, "confusable")),
        c("fullwidth_slash_is_refused", req("/public/..%EF%BC%8Forders/7", ""), RefusedAs(400, "confusable")),
        c("fullwidth_backslash_is_refused", req("/public/..%EF%BC%BCorders/7", ""), RefusedAs(400, "confusable")),
        c("fullwidth_percent_is_refused", req("/public/%EF%BC%852e%EF%BC%852e/orders/7", ""), RefusedAs(400, "confusable")),
        c("one_dot_leaders_are_refused", req("/public/%E2%80%A4%E2%80%A4/orders/7", ""), RefusedAs(400, "confusable")),
        c("two_dot_leader_is_refused", req("/public/%E2%80%A5/orders/7", ""), RefusedAs(400, "confusable")),
        c("ellipsis_is_refused", req("/public/%E2%80%A6/orders/7", ""), RefusedAs(400, "confusable")),
        c("small_full_stops_are_refused", req("/public/%EF%B9%92%EF%B9%92/orders/7", ""), RefusedAs(400, "confusable")),
        c("small_reverse_solidus_is_refused", req("/public/..%EF%B9%A8orders/7", ""), RefusedAs(400, "confusable")),
        c("small_percent_is_refused", req("/public/%EF%B9%AA2e%EF%B9%AA2e/orders/7", ""), RefusedAs(400, "confusable")),
        c("other_valid_utf8_stays_encoded", req("/public/caf%C3%A9", ""), Forwarded(|s| check(s.target == "/caf%C3%A9", s.target.clone()))),
        // Methods.
        c("lower_case_delete_is_refused", request_with("delete", "/x", ""), RefusedAs(400, "method_case")),
        c("mixed_case_get_is_refused_not_routed_past_a_get_only_route", request_with("Get", "/public/x", ""), RefusedAs(400, "method_case")),
        c("mixed_case_post_is_refused", request_with("pOST", "/docs", "content-length: 0\r\n"), RefusedAs(400, "method_case")),
        c("extension_method_is_matched_as_sent", request_with("PURGE", "/public/x", ""), Forwarded(|s| {
            // Not GET or HEAD, so not the public route: the catch-all, without the strip.
            check(s.method == "PURGE" && s.target == "/public/x", format!("{} {}", s.method, s.target))
        })),
        c("lower_case_extension_method_is_forwarded_as_sent", request_with("propfind", "/docs", ""), Forwarded(|s| check(s.method == "propfind", s.method.clone()))),
        c("method_override_parameter_is_refused", request_with("POST", "/docs?_method=DELETE", "content-length: 0\r\n"), RefusedAs(400, "method_override")),
        c("method_override_parameter_on_a_get_is_refused", req("/public/x?a=1&_method=DELETE", ""), RefusedAs(400, "method_override")),
        // PHP's spellings of the same name (Laravel, Symfony): found by fuzzing and review.
        c("php_nul_spelling_of_method_override_is_refused", request_with("POST", "/docs?_method%00=DELETE", "content-length: 0\r\n"), RefusedAs(400, "method_override")),
        c("php_dot_spelling_of_method_override_is_refused", request_with("POST", "/docs?.method=DELETE", "content-length: 0\r\n"), RefusedAs(400, "method_override")),
        c("php_leading_space_spelling_of_method_override_is_refused", request_with("POST", "/docs?+_method=DELETE", "content-length: 0\r\n"), RefusedAs(400, "method_override")),
        c("php_dot_spelling_of_access_token_is_refused", req("/public/x?access.token=forged", ""), RefusedAs(401, "token_in_query")),
        c("nfkc_two_dot_leader_never_reaches_the_backend_as_dot_dot", req("/public/%EF%B8%B0/admin/x", ""), RefusedAs(400, "confusable")),
        c("fullwidth_parenthesis_in_a_cjk_title_is_forwarded", req("/docs/%E6%9D%B1%E4%BA%AC%EF%BC%88x%EF%BC%89", ""), Forwarded(|s| check(s.target == "/docs/%E6%9D%B1%E4%BA%AC%EF%BC%88x%EF%BC%89", s.target.clone()))),
        // Queries a backend may parse differently from the policy, on a route whose rule reads
        // the query; the same on one whose rule does not are forwarded untouched.
        c("semicolon_in_a_query_the_rule_reads_is_refused", req("/search?x=1;debug=1", ""), RefusedAs(400, "ambiguous_query")),
        c("brackets_in_a_parameter_name_the_rule_reads_are_refused", req("/search?debug[]=1", ""), RefusedAs(400, "ambiguous_query")),
        c("encoded_brackets_in_a_parameter_name_are_refused", req("/search?a%5Bb%5D=1", ""), RefusedAs(400, "ambiguous_query")),
        c("malformed_escape_in_a_query_the_rule_reads_is_refused", req("/search?a=%zz", ""), RefusedAs(400, "ambiguous_query")),
        c("nul_in_a_query_the_rule_reads_is_refused", req("/search?a=%00", ""), RefusedAs(400, "ambiguous_query")),
        c("overlong_utf8_in_a_query_the_rule_reads_is_refused", req("/search?a=%C0%AE", ""), RefusedAs(400, "ambiguous_query")),
        c("semicolon_in_a_query_the_rule_ignores_is_forwarded_untouched", req("/docs?x=1;debug=1", ""), Forwarded(|s| check(s.target == "/docs?x=1;debug=1", s.target.clone()))),
        c("brackets_in_a_query_the_rule_ignores_are_forwarded_untouched", req("/docs?debug[]=1", ""), Forwarded(|s| check(s.target == "/docs?debug[]=1", s.target.clone()))),
    ];
    // Claim headers from a client (not a trusted proxy): never forwarded, and not in the input
    // of the `/claims` rule, which denies whenever it sees one.
    for &(name, value, attack) in FORWARDING_CLAIMS.iter().chain(OVERRIDE_CLAIMS.iter()) {
        cases.push(c(attack, req("/claims/x", &format!("{name}: {value}\r\n")), Absent(name)));
    }
    cases
}

/// Beyond the spec's list: how Tomcat, Spring, Django, Rack, Express, ASP.NET/IIS and Go's
/// net/http read a request, tried against the gateway. Where the design leaves a reading to the
/// backend, the case says so ("the backend's reading") and asserts exactly what is forwarded.
#[rustfmt::skip]
fn framework_cases() -> Vec<Case> {
    use Want::*;
    let alice = token("alice", &["reader"]);
    let bearer = format!("authorization: Bearer {alice}\r\n");
    let accepted = |s: &Seen| check(s.one("x-user-id") == Some("alice"), format!("{} {:?}", s.target, s.headers));
    vec![
        // Tomcat and Spring: `;` path parameters (`;jsessionid=`) are removed before mapping.
        c("jsessionid_on_a_public_path_is_refused", req("/public/x;jsessionid=ABC", ""), RefusedAs(400, "path_params")),
        c("jsessionid_after_admin_is_refused", req("/admin;jsessionid=ABC/x", ""), RefusedAs(400, "path_params")),
        c("encoded_dot_dot_with_parameters_is_refused", req("/public/%2e%2e;/orders/7", ""), RefusedAs(400, "path_params")),
        c("semicolon_between_admin_and_its_slash_is_refused", req("/admin;/", ""), RefusedAs(400, "path_params")),
        c("encoded_semicolon_is_data_not_a_parameter", req("/public/a%3Bb", ""), Forwarded(|s| check(s.target == "/a%3Bb", s.target.clone()))),
        c("lower_case_encoded_semicolon_is_forwarded_upper_case", req("/public/a%3bb", ""), Forwarded(|s| check(s.target == "/a%3Bb", s.target.clone()))),
        // The backend's reading: Spring's UrlPathHelper decodes before it removes `;...`, and
        // would see `..` here; Spring Security's firewall refuses `%3B` by default.
        c("encoded_semicolon_after_dot_dot_is_the_backends_reading", req("/public/..%3B/orders/7", ""), Forwarded(|s| check(s.target == "/..%3B/orders/7", s.target.clone()))),
        // Spring: trailing slashes and suffix patterns.
        c("trailing_slash_on_admin_is_judged_as_admin", req("/admin/", ""), Refused(403)),
        c("trailing_dot_on_admin_is_judged_as_admin", req("/admin.", ""), Refused(403)),
        c("encoded_trailing_dot_on_admin_is_judged_as_admin", req("/admin%2e", ""), Refused(403)),
        c("trailing_slash_after_orders_still_needs_a_token", req("/orders/", ""), Refused(401)),
        c("doubled_slash_inside_orders_still_needs_a_token", req("/orders//7", ""), Refused(401)),
        // The backend's reading: `/orders.json` is not under the `/orders` prefix, so the
        // catch-all allows it; Spring's suffix pattern matching (default before 5.3) would
        // serve it as `/orders`.
        c("suffix_after_a_route_prefix_is_the_backends_reading", req("/orders.json", ""), Forwarded(|s| check(s.target == "/orders.json", s.target.clone()))),
        // Django (`USE_X_FORWARDED_HOST`), Rack (`X-Forwarded-Scheme`) and WSGI/CGI, where `_`
        // and `-` in a name become the same `HTTP_X_...` variable.
        c("underscore_x_forwarded_host_is_dropped", req("/public/x", "x_forwarded_host: admin.example.test\r\n"), Forwarded(|s| {
            check(s.all("x_forwarded_host").is_empty() && s.all("x-forwarded-host").is_empty(), format!("{:?}", s.headers))
        })),
        c("upper_case_x_forwarded_host_is_removed", req("/public/x", "X-FORWARDED-HOST: admin.example.test\r\n"), Absent("x-forwarded-host")),
        c("comma_list_x_forwarded_proto_is_replaced", req("/public/x", "x-forwarded-proto: https, http\r\n"), Forwarded(|s| {
            check(s.all("x-forwarded-proto") == ["http"], format!("{:?}", s.all("x-forwarded-proto")))
        })),
        c("underscore_x_forwarded_scheme_is_dropped", req("/public/x", "x_forwarded_scheme: https\r\n"), Forwarded(|s| {
            check(s.all("x_forwarded_scheme").is_empty() && s.all("x-forwarded-scheme").is_empty(), format!("{:?}", s.headers))
        })),
        c("upper_case_forwarded_is_removed", req("/public/x", "FORWARDED: for=10.0.0.1;host=admin.example.test;proto=https\r\n"), Absent("forwarded")),
        // IIS URL Rewrite / Symfony `X-Original-URL`, in other spellings and beside a token.
        c("upper_case_x_original_url_is_removed", req("/claims/x", "X-Original-URL: /admin/x\r\n"), Absent("x-original-url")),
        c("repeated_x_original_url_is_removed", req("/claims/x", "x-original-url: /admin/x\r\nx-original-url: /admin/y\r\n"), Absent("x-original-url")),
        c("x_original_url_beside_a_valid_token_is_removed", req("/orders/7", &format!("{bearer}x-original-url: /admin/x\r\nx-http-method-override: DELETE\r\n")), Forwarded(|s| {
            check(
                s.one("x-user-id") == Some("alice") && s.all("x-original-url").is_empty() && s.all("x-http-method-override").is_empty(),
                format!("{:?}", s.headers),
            )
        })),
        c("proxy_authorization_never_reaches_the_backend", req("/public/x", "proxy-authorization: Bearer forged\r\n"), Absent("proxy-authorization")),
        // ASP.NET / IIS: `%uXXXX` escapes are malformed percent-encoding here.
        c("iis_unicode_escape_of_a_dot_is_refused", req("/public/%u002e%u002e/orders/7", ""), RefusedAs(400, "bad_escape")),
        c("iis_unicode_escape_of_a_division_slash_is_refused", req("/public/..%u2215orders/7", ""), RefusedAs(400, "bad_escape")),
        c("iis_unicode_escape_of_a_fullwidth_slash_is_refused", req("/public/..%uFF0Forders/7", ""), RefusedAs(400, "bad_escape")),
        c("lower_case_overlong_dot_dot_is_refused", req("/public/%c0%ae%c0%ae/orders/7", ""), RefusedAs(400, "bad_utf8")),
        c("overlong_nul_is_refused", req("/public/a%C0%80.json", ""), RefusedAs(400, "bad_utf8")),
        c("three_byte_overlong_slash_is_refused", req("/public/..%E0%80%AForders/7", ""), RefusedAs(400, "bad_utf8")),
        c("code_point_above_unicode_is_refused", req("/public/%F4%90%80%80", ""), RefusedAs(400, "bad_utf8")),
        c("byte_ff_is_refused", req("/public/%FF", ""), RefusedAs(400, "bad_utf8")),
        c("lower_case_fullwidth_dot_dot_is_refused", req("/public/%ef%bc%8e%ef%bc%8e/orders/7", ""), RefusedAs(400, "confusable")),
        c("lower_case_other_utf8_is_forwarded_upper_case", req("/public/caf%c3%a9", ""), Forwarded(|s| check(s.target == "/caf%C3%A9", s.target.clone()))),
        // The backend's reading: ASP.NET's cookieless sessions remove `/(S(...))` and would
        // serve `/admin/x`; for the gateway it is a path outside `/admin`.
        c("cookieless_session_segment_is_the_backends_reading", req("/(S(x))/admin/x", ""), Forwarded(|s| check(s.target == "/(S(x))/admin/x", s.target.clone()))),
        // The backend's reading: Windows drops a trailing dot from a path segment.
        c("trailing_dot_on_a_route_prefix_is_the_backends_reading", req("/orders./7", ""), Forwarded(|s| check(s.target == "/orders./7", s.target.clone()))),
        // Express: routing is case-insensitive by default, the gateway's route table and this
        // policy are not. The backend's reading: an Express backend serves `/admin/x` and
        // `/orders/7` for these, past the rules that guard them.
        c("upper_case_admin_is_the_backends_reading", req("/ADMIN/x", ""), Forwarded(|s| check(s.target == "/ADMIN/x", s.target.clone()))),
        c("upper_case_orders_is_the_backends_reading", req("/Orders/7", ""), Forwarded(|s| check(s.target == "/Orders/7", s.target.clone()))),
        // Express's `qs`, PHP and Rack read `a[b]` names as nested parameters.
        c("bracketed_index_in_a_name_the_rule_reads_is_refused", req("/search?debug[0]=1", ""), RefusedAs(400, "ambiguous_query")),
        c("lower_case_encoded_brackets_in_a_name_are_refused", req("/search?debug%5b%5d=1", ""), RefusedAs(400, "ambiguous_query")),
        c("closing_bracket_alone_in_a_name_is_refused", req("/search?a]=1", ""), RefusedAs(400, "ambiguous_query")),
        c("debug_in_a_query_the_rule_reads_is_denied", req("/search?debug=1", ""), Refused(403)),
        c("encoded_parameter_name_is_read_decoded_by_the_rule", req("/search?%64ebug=1", ""), Refused(403)),
        c("bare_parameter_name_is_seen_by_the_rule", req("/search?q=x&debug", ""), Refused(403)),
        c("clean_query_the_rule_reads_is_forwarded_untouched", req("/search?q=caf%C3%A9&page=2", ""), Forwarded(|s| check(s.target == "/search?q=caf%C3%A9&page=2", s.target.clone()))),
        c("brackets_in_a_value_are_data", req("/search?q=[1]", ""), Forwarded(|s| check(s.target == "/search?q=[1]", s.target.clone()))),
        c("encoded_semicolon_in_a_query_the_rule_reads_is_data", req("/search?x=1%3Bdebug=1", ""), Forwarded(|s| check(s.target == "/search?x=1%3Bdebug=1", s.target.clone()))),
        c("fragment_after_the_query_never_reaches_the_backend", req("/search?x=1#&debug=1", ""), Forwarded(|s| check(s.target == "/search?x=1", s.target.clone()))),
        c("malformed_escape_in_a_query_the_rule_ignores_is_forwarded_untouched", req("/docs?a=%zz", ""), Forwarded(|s| check(s.target == "/docs?a=%zz", s.target.clone()))),
        // The backend's reading: ASP.NET binds query names case-insensitively; the rule asks
        // for `debug`, so `DEBUG` passes it.
        c("upper_case_parameter_name_is_the_backends_reading", req("/search?DEBUG=1", ""), Forwarded(|s| check(s.target == "/search?DEBUG=1", s.target.clone()))),
        // Go's net/http: `path.Clean`, CONNECT and asterisk targets.
        c("empty_segments_around_dot_dot_reach_the_orders_rule", req("/public//..//orders/7", ""), Refused(401)),
        c("asterisk_target_is_refused", request_with("OPTIONS", "*", ""), RefusedAs(400, "bad_target")),
        // Pingora answers CONNECT itself (405) before any phase runs.
        c("connect_to_an_authority_is_refused", "CONNECT api.example.test:80 HTTP/1.1\r\nhost: api.example.test:80\r\n\r\n".into(), Refused(405)).h1_only("authority-form target"),
        // HTTP/1.1 syntax a lax parser reads otherwise.
        c("obs_fold_is_refused", req("/public/x", "authorization: Bearer\r\n forged\r\n"), Refused(400)).h1_only("obs-fold"),
        c("space_before_the_colon_is_refused", req("/public/x", "x-original-url : /admin/x\r\n"), Refused(400)).h1_only("header-name syntax"),
        c("tab_before_the_colon_is_refused", req("/public/x", "authorization\t: Bearer forged\r\n"), Refused(400)).h1_only("header-name syntax"),
        c("pseudo_header_in_http1_is_refused", req("/public/x", ":path: /admin/x\r\n"), Refused(400)).h1_only("header-name syntax"),
        c("chunked_then_identity_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ntransfer-encoding: chunked, identity\r\nconnection: close\r\n\r\n0\r\n\r\n".into(), Refused(400)).h1_only("framing"),
        c("hex_content_length_is_refused", "POST /docs HTTP/1.1\r\nhost: api.example.test\r\ncontent-length: 0x5\r\nconnection: close\r\n\r\nhello".into(), Refused(400)).h1_only("framing"),
        // Pingora percent-encodes a request line's illegal bytes (here tabs and a space) and
        // parses again: a tab is `%09` data, a space `%20`, before canonicalization.
        c("tab_in_the_path_is_forwarded_encoded", "GET /public/long-enough-name/x\ty HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Forwarded(|s| check(s.target == "/long-enough-name/x%09y", s.target.clone()))).h1_only("a raw tab in the target"),
        c("tab_and_dot_dots_in_the_path_reach_the_orders_rule", "GET /public/long-enough-name/x\t/../../../orders/7 HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(401)).h1_only("a raw tab in the target"),
        // With h2c on the listener, Pingora first parses the 24 bytes it peeked for the HTTP/2
        // preface: an illegal byte there with no ` HTTP/1` after it in those 24 bytes is not
        // escaped but refused (Pingora's 400, not counted). Without h2c this would be a 401.
        c("tab_early_in_a_long_request_line_is_refused_on_an_h2c_listener", "GET /orders/x\t/../7 HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)).h1_only("a raw tab in the target"),
        c("space_in_the_path_after_admin_is_judged_as_admin", "GET /admin /x HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(403)).h1_only("a raw space in the target"),
        c("absolute_form_with_an_upper_case_scheme_is_routed_by_its_authority", "GET HTTP://ADMIN.EXAMPLE.TEST/x HTTP/1.1\r\nconnection: close\r\n\r\n".into(), Refused(403)).h1_only("absolute form"),
        c("absolute_form_with_another_port_than_host_is_refused", "GET http://api.example.test:8080/public/x HTTP/1.1\r\nhost: api.example.test\r\nconnection: close\r\n\r\n".into(), Refused(400)).h1_only("absolute form"),
        // h2c smuggling: an `Upgrade: h2c` that reached the backend would open a tunnel the
        // gateway no longer reads.
        c("h2c_upgrade_never_reaches_the_backend", "GET /public/x HTTP/1.1\r\nhost: api.example.test\r\nconnection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".into(), Forwarded(|s| {
            check(s.all("upgrade").is_empty() && s.all("http2-settings").is_empty(), format!("{:?}", s.headers))
        })).h1_only("connection-specific headers"),
        c("connection_nominating_the_identity_header_never_strips_the_decisions_copy", format!("GET /orders/7 HTTP/1.1\r\nhost: api.example.test\r\n{bearer}connection: close, x-user-id\r\n\r\n"), Forwarded(accepted)).h1_only("connection-specific headers"),
        // Raw bytes outside visible ASCII (the `http` crate takes valid UTF-8 in a `:path`).
        c("raw_no_break_space_in_the_path_is_refused", req("/public/\u{a0}x", ""), RefusedAs(400, "bad_path_char")),
        c("raw_byte_order_mark_before_admin_is_refused", req("/\u{feff}admin/x", ""), RefusedAs(400, "bad_path_char")),
        // IIS "best fit" maps U+2215 DIVISION SLASH to `/` (not in the spec's list; the gateway
        // counts it a confusable too).
        c("division_slash_is_refused", req("/public/..%E2%88%95orders/7", ""), RefusedAs(400, "confusable")),
        // The backend's reading: valid UTF-8 that is no confusable stays encoded data. A
        // backend that drops a BOM, or folds fullwidth letters (NFKC, IIS "best fit"), reads
        // `/admin/x` in these.
        c("encoded_byte_order_mark_before_admin_is_the_backends_reading", req("/%EF%BB%BFadmin/x", ""), Forwarded(|s| check(s.target == "/%EF%BB%BFadmin/x", s.target.clone()))),
        c("fullwidth_letter_in_admin_is_refused_as_an_nfkc_backend_reads_admin", req("/%EF%BD%81dmin/x", ""), RefusedAs(400, "confusable")),
        // Double encoding: one decoding step, never two.
        c("nested_escape_never_becomes_an_encoded_slash", req("/public/..%25%32%66orders/7", ""), Forwarded(|s| check(s.target == "/..%252forders/7", s.target.clone()))),
        c("double_encoded_slash_is_data", req("/public/..%252forders/7", ""), Forwarded(|s| check(s.target == "/..%252forders/7", s.target.clone()))),
        c("encoded_dot_dot_and_encoded_slash_are_refused", req("/public/%2e%2e%2forders/7", ""), RefusedAs(400, "escaped_slash")),
        c("encoded_slash_before_admin_is_refused", req("/%2fadmin/x", ""), RefusedAs(400, "escaped_slash")),
        c("half_encoded_dot_dot_before_admin_is_judged_as_admin", req("/.%2e/admin/x", ""), Refused(403)),
        c("admin_with_an_encoded_space_is_judged_as_admin", req("/admin%20", ""), Refused(403)),
        c("admin_with_an_encoded_tab_is_judged_as_admin", req("/admin%09", ""), Refused(403)),
        // The backend's reading: Windows trims trailing spaces, so IIS may read `..`.
        c("dot_dot_with_an_encoded_space_is_the_backends_reading", req("/public/..%20/orders/7", ""), Forwarded(|s| check(s.target == "/..%20/orders/7", s.target.clone()))),
        // Tokens.
        c("padded_token_is_verified_and_refused", req("/orders/7", &format!("authorization: Bearer {alice}==\r\n")), Refused(401)),
        c("upper_case_bearer_with_a_valid_token_is_accepted", req("/orders/7", &format!("authorization: BEARER {alice}\r\n")), Forwarded(accepted)),
        c("forged_bearer_on_a_basic_route_is_still_verified", req("/legacy/x", "authorization: Bearer forged\r\n"), Refused(401)),
        c("lower_case_basic_on_a_route_that_lists_it_is_forwarded", req("/legacy/x", "authorization: basic YWxpY2U6eA==\r\n"), Forwarded(|s| check(s.one("authorization") == Some("basic YWxpY2U6eA=="), format!("{:?}", s.headers)))),
        c("digest_on_a_basic_route_is_refused", req("/legacy/x", "authorization: Digest username=\"alice\"\r\n"), RefusedAs(401, "authorization_scheme")),
        c("upper_case_header_name_with_a_tab_after_bearer_is_refused", req("/public/x", "AUTHORIZATION: Bearer\tforged\r\n"), RefusedAs(401, "malformed_credentials")),
        c("bearer_and_basic_in_one_value_are_refused", req("/public/x", "authorization: Bearer forged, Basic YTpi\r\n"), RefusedAs(401, "malformed_credentials")),
        c("lower_case_get_with_a_valid_token_is_refused", request_with("get", "/orders/7", &bearer), RefusedAs(400, "method_case")),
        c("percent_encoded_method_override_name_is_refused", request_with("POST", "/docs?%5Fmethod=DELETE", "content-length: 0\r\n"), RefusedAs(400, "method_override")),
        // The backend's reading: the spec refuses `access_token` and `_method` in the query
        // only. Rails' Rack::MethodOverride reads `_method` from a form body (only there), and
        // Spring can read `access_token` from one (RFC 6750 2.2).
        c("method_override_in_a_form_body_is_the_backends_reading", post("/docs", "content-type: application/x-www-form-urlencoded\r\n", "_method=DELETE"), Forwarded(|s| {
            check(s.method == "POST" && s.body == b"_method=DELETE", format!("{} {:?}", s.method, String::from_utf8_lossy(&s.body)))
        })),
        c("access_token_in_a_form_body_is_the_backends_reading", post("/docs", "content-type: application/x-www-form-urlencoded\r\n", "access_token=forged"), Forwarded(|s| {
            check(s.body == b"access_token=forged", format!("{:?}", String::from_utf8_lossy(&s.body)))
        })),
    ]
}

#[test]
fn hostile_requests_never_reach_the_backend_past_the_policy() {
    let env = env("");
    let cases = cases();
    assert!(cases.len() >= 60, "the suite has {} cases", cases.len());
    let run = run_cases(&env, &cases, &[Proto::H1], None);
    let metrics = common::get(&format!("{}/metrics", env.gw.admin), &[]).text();
    assert!(
        run.failures.is_empty(),
        "{} of {} attacks got through:\n{}",
        run.failures.len(),
        cases.len(),
        run.failures.join("\n")
    );
    assert!(
        metrics.contains("gateway_requests_refused_total{reason=\"escaped_slash\"} 4"),
        "refusals are counted by reason:\n{}",
        metrics.lines().filter(|l| l.contains("refused")).collect::<Vec<_>>().join("\n")
    );
}

/// The first round's attacks, over HTTP/2: `:path`, `:method` and `:authority` go through the
/// same canonicalization as an HTTP/1.1 request line and `Host`.
#[test]
fn first_round_attacks_hold_over_http2_too() {
    let env = env("h2c: true\n");
    let cases = cases();
    let run = run_cases(&env, &cases, &[Proto::H2], None);
    assert!(
        run.failures.is_empty(),
        "{} of {} attacks got through over HTTP/2:\n{}",
        run.failures.len(),
        run.attempts,
        run.failures.join("\n")
    );
}

#[test]
fn round_two_attacks_never_reach_the_backend_over_http1_or_http2() {
    let env = round_two_env("");
    let cases = round_two_cases();
    assert!(cases.len() >= 89, "round two has {} cases", cases.len());
    assert_cases_hold(&env, &cases, None);
}

#[test]
fn framework_readings_never_reach_the_backend_past_the_policy() {
    let env = round_two_env("");
    let cases = framework_cases();
    assert!(cases.len() >= 80, "the framework list has {} cases", cases.len());
    assert_cases_hold(&env, &cases, None);
}

#[test]
fn claim_headers_from_a_trusted_proxy_are_kept_but_overrides_never_are() {
    let env = round_two_env("trusted_proxies: [127.0.0.2/32]\n");
    let claims: String =
        FORWARDING_CLAIMS.iter().chain(OVERRIDE_CLAIMS.iter()).map(|(n, v, _)| format!("{n}: {v}\r\n")).collect();
    let raw = req("/public/x", &claims);
    let mut failures = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        for (from, trusted) in [("127.0.0.2", true), ("127.0.0.3", false)] {
            env.rec.seen.lock().expect("log").clear();
            let answer = match proto {
                Proto::H1 => h1_answer(Some(from), &env.addr, raw.as_bytes()),
                Proto::H2 => {
                    let req = H2Request::from_h1(&raw).expect("an HTTP/2 form");
                    h2_answer(Some(from), &env.addr, &req).expect("an HTTP/2 form")
                }
            };
            let seen = env.rec.seen.lock().expect("log").clone();
            let [s] = seen.as_slice() else {
                failures.push(format!("{proto:?} from {from}: status {}, {} forwarded", answer.status, seen.len()));
                continue;
            };
            for (name, value, _) in FORWARDING_CLAIMS {
                let want = if trusted { vec![value] } else { vec![] };
                if s.all(name) != want {
                    failures.push(format!(
                        "{proto:?} from {from}: the backend got `{name}` {:?}, want {want:?}",
                        s.all(name)
                    ));
                }
            }
            for (name, _, _) in OVERRIDE_CLAIMS {
                if !s.all(name).is_empty() {
                    failures.push(format!(
                        "{proto:?} from {from}: the backend got the override `{name}` {:?}",
                        s.all(name)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "claim headers:\n{}", failures.join("\n"));
}

#[test]
fn path_parameters_can_be_stripped_by_configuration() {
    let env = round_two_env("path_params: strip\n");
    assert_cases_hold(&env, &strip_cases(), None);
}

/// `path_params: strip`: each segment's `;...` removed, then the path is made canonical.
#[rustfmt::skip]
fn strip_cases() -> Vec<Case> {
    use Want::*;
    let bearer = format!("authorization: Bearer {}\r\n", token("alice", &["reader"]));
    vec![
        c("stripped_empty_segment_before_admin_is_judged_as_admin", req("/;/admin/x", ""), Refused(403)),
        c("stripped_dot_dot_semicolon_is_judged_by_the_orders_rule", req("/public/..;/orders/7", ""), Refused(401)),
        c("stripped_dot_dot_semicolon_is_forwarded_as_the_stripped_path", req("/public/..;/orders/7", &bearer), Forwarded(|s| {
            check(s.target == "/orders/7" && s.one("x-user-id") == Some("alice"), format!("{} {:?}", s.target, s.headers))
        })),
        c("stripped_parameters_on_a_route_prefix_are_judged_by_its_rule", req("/orders;v=1/7", ""), Refused(401)),
        c("stripped_parameters_on_a_route_prefix_are_not_forwarded", req("/orders;v=1/7", &bearer), Forwarded(|s| {
            check(s.target == "/orders/7" && s.one("x-user-id") == Some("alice"), format!("{} {:?}", s.target, s.headers))
        })),
        c("stripped_parameters_on_an_empty_first_segment_reach_the_orders_rule", req("/;x=1/orders/7", ""), Refused(401)),
        c("stripped_jsessionid_is_not_forwarded", req("/public/x;jsessionid=ABC", ""), Forwarded(|s| check(s.target == "/x", s.target.clone()))),
        c("every_segments_parameters_are_stripped", req("/public/a;b/c;d=1", ""), Forwarded(|s| check(s.target == "/a/c", s.target.clone()))),
        c("stripped_dot_with_parameters_is_a_dot_segment", req("/public/.;x=1/y", ""), Forwarded(|s| check(s.target == "/y", s.target.clone()))),
        c("parameters_on_a_stripped_prefix_go_with_it", req("/public;a=b/x", ""), Forwarded(|s| check(s.target == "/x", s.target.clone()))),
        c("stripped_path_keeps_an_encoded_semicolon_as_data", req("/public/a%3Bb", ""), Forwarded(|s| check(s.target == "/a%3Bb", s.target.clone()))),
        c("stripping_never_touches_the_query", req("/docs;a=1?x=1;y=2", ""), Forwarded(|s| check(s.target == "/docs?x=1;y=2", s.target.clone()))),
    ]
}

#[test]
fn path_parameters_can_be_kept_for_the_backend_by_configuration() {
    let env = round_two_env("path_params: keep\n");
    assert_cases_hold(&env, &keep_cases(), None);
}

/// `path_params: keep`: forwarded as sent, routed and judged as Tomcat reads them.
#[rustfmt::skip]
fn keep_cases() -> Vec<Case> {
    use Want::*;
    let bearer = format!("authorization: Bearer {}\r\n", token("alice", &["reader"]));
    vec![
        // The route table and the policy read the path as Tomcat does, without parameters.
        c("kept_parameters_on_a_route_prefix_are_judged_by_its_rule", req("/orders;v=1/7", ""), Refused(401)),
        c("kept_parameters_before_admin_are_judged_as_admin", req("/admin;x=1/y", ""), Refused(403)),
        c("kept_parameters_are_forwarded_as_sent", req("/orders;v=1/7", &bearer), Forwarded(|s| {
            check(s.target == "/orders;v=1/7" && s.one("x-user-id") == Some("alice"), format!("{} {:?}", s.target, s.headers))
        })),
        c("kept_parameters_on_the_last_segment_are_forwarded", req("/orders/7;v=1", &bearer), Forwarded(|s| {
            check(s.target == "/orders/7;v=1" && s.one("x-user-id") == Some("alice"), format!("{} {:?}", s.target, s.headers))
        })),
        c("kept_jsessionid_is_forwarded_past_the_stripped_prefix", req("/public/x;jsessionid=ABC", ""), Forwarded(|s| check(s.target == "/x;jsessionid=ABC", s.target.clone()))),
        // Tomcat would read `/public;a=b/x` as `/public/x`; stripped, the prefix goes with its
        // parameters, or they stay on an empty segment: never a target without its `/`.
        c("parameters_on_a_stripped_prefix_never_leave_a_target_without_a_slash", req("/public;a=b/x", ""), Forwarded(|s| {
            check(s.target == "/x" || s.target == "/;a=b/x", s.target.clone())
        })),
        c("kept_path_keeps_an_encoded_semicolon_as_data", req("/public/a%3Bb", ""), Forwarded(|s| check(s.target == "/a%3Bb", s.target.clone()))),
        // Segments whose parameters would make them something else for the backend.
        c("empty_segment_with_parameters_is_refused_when_kept", req("/;/admin/x", ""), RefusedAs(400, "empty_param_segment")),
        c("empty_first_segment_with_parameters_is_refused_when_kept", req("/;x=1/orders/7", ""), RefusedAs(400, "empty_param_segment")),
        c("doubled_slash_with_parameters_is_refused_when_kept", req("/public//;x=1/y", ""), RefusedAs(400, "empty_param_segment")),
        c("dot_dot_semicolon_is_refused_when_kept", req("/public/..;/orders/7", ""), RefusedAs(400, "dot_semicolon")),
        c("dot_semicolon_is_refused_when_kept", req("/public/.;x=1/y", ""), RefusedAs(400, "dot_semicolon")),
        c("encoded_dot_dot_semicolon_is_refused_when_kept", req("/public/%2e%2e;x/orders/7", ""), RefusedAs(400, "dot_semicolon")),
    ]
}

#[test]
fn a_bundle_can_let_a_named_override_header_through() {
    let allow = Edits { routes: ROUND_TWO_ROUTES, request_headers: "  allow: [x-http-method-override]\n" };
    let env = env_with("h2c: true\n", allow);
    assert_cases_hold(&env, &allow_cases(), None);
}

/// `request_headers.allow: [x-http-method-override]` in the bundle.
#[rustfmt::skip]
fn allow_cases() -> Vec<Case> {
    use Want::*;
    vec![
        c("allowed_override_header_is_forwarded", req("/public/x", "x-http-method-override: DELETE\r\n"), Forwarded(|s| {
            check(s.one("x-http-method-override") == Some("DELETE"), format!("{:?}", s.headers))
        })),
        // The policy sees headers as the backend will: this one, now.
        c("allowed_override_header_is_seen_by_the_policy", req("/claims/x", "x-http-method-override: DELETE\r\n"), Refused(403)),
        c("overrides_not_allowed_stay_removed", req("/claims/x", "x-http-method: DELETE\r\nx-method-override: DELETE\r\nx-original-url: /admin/x\r\n"), Forwarded(|s| {
            let passed = ["x-http-method", "x-method-override", "x-original-url"].iter().any(|n| !s.all(n).is_empty());
            check(!passed, format!("{:?}", s.headers))
        })),
        c("forwarding_claims_not_allowed_stay_removed", req("/claims/x", "x-forwarded-host: admin.example.test\r\nx-forwarded-prefix: /admin\r\n"), Forwarded(|s| {
            check(s.all("x-forwarded-host").is_empty() && s.all("x-forwarded-prefix").is_empty(), format!("{:?}", s.headers))
        })),
    ]
}

#[test]
fn a_bundle_that_removes_authorization_keeps_every_credential_from_its_backends() {
    let text = "  remove: [x-user-id, x-user-roles, authorization]\n  allow: []\n";
    let env = env_with("", Edits { routes: ROUND_TWO_ROUTES, request_headers: text });
    let raw = req("/public/x", "authorization: Basic YWxpY2U6eA==\r\n");
    let answer = h1_answer(None, &env.addr, raw.as_bytes());
    let seen = env.rec.seen.lock().expect("log").clone();
    assert_eq!(answer.status, 200, "removed before anything read it: {}", answer.body);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].all("authorization").is_empty(), "the backend got a credential: {:?}", seen[0].headers);
}

#[test]
fn a_bundle_removing_a_header_that_routes_or_frames_the_request_is_refused() {
    for name in ["host", "Content-Length", "transfer-encoding"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: &'static str = Box::leak(format!("  remove: [{name}]\n  allow: []\n").into_boxed_str());
        let b = bundle(
            dir.path(),
            "127.0.0.1:9".parse().expect("addr"),
            Edits { routes: ROUND_TWO_ROUTES, request_headers: text },
        );
        let limits = policy_bundles::Limits::default();
        let err = policy_bundles::Bundle::from_path(&b, &limits)
            .and_then(|b| policy_bundles::Snapshot::compile(&b))
            .map(|_| ())
            .expect_err("refused");
        assert!(err.to_string().contains(name), "the error names `{name}`: {err}");
    }
}

#[test]
fn a_bundle_allowing_a_header_that_is_no_claim_is_refused_naming_it() {
    let compile = |allow: &'static str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let edits = Edits { routes: ROUND_TWO_ROUTES, request_headers: allow };
        let b = bundle(dir.path(), "127.0.0.1:9".parse().expect("addr"), edits);
        let limits = policy_bundles::Limits::default();
        policy_bundles::Bundle::from_path(&b, &limits).and_then(|b| policy_bundles::Snapshot::compile(&b)).map(|_| ())
    };
    assert!(compile("  allow: [x-http-method-override]\n").is_ok(), "an override header may be allowed");
    let err = compile("  allow: [x-tenant]\n").expect_err("x-tenant is not a claim header").to_string();
    assert!(err.contains("x-tenant"), "the error names the header: {err}");
}

/// HTTP/2 only: pseudo-header fields said in ways HTTP/1.1 has no words for.
#[test]
fn h2_pseudo_header_games_are_judged_like_http1() {
    let env = round_two_env("");
    let games = h2_games();
    let mut run = Run::default();
    for (attack, req, want) in &games {
        run.attempts += 1;
        env.rec.seen.lock().expect("log").clear();
        let answer = h2_answer(None, &env.addr, req).expect("an HTTP/2 request");
        let seen = env.rec.seen.lock().expect("log").clone();
        match judge(want, &answer, &seen) {
            Ok(()) => {
                if let Want::RefusedAs(_, reason) = want {
                    *run.counted.entry(reason).or_default() += 1;
                }
            }
            Err(e) => run.failures.push(format!("{attack}: {e}")),
        }
    }
    let counts = miscounted(&env, &run);
    assert!(
        run.failures.is_empty() && counts.is_empty(),
        "{} of {} games got through:\n{}\n{}",
        run.failures.len(),
        run.attempts,
        run.failures.join("\n"),
        counts.join("\n")
    );
}

/// Requests with pseudo-header fields HTTP/1.1 cannot say: `:authority` beside or instead of
/// `Host`, `:scheme`, `*` as `:path`, values with surrounding whitespace.
#[rustfmt::skip]
fn h2_games() -> Vec<(&'static str, H2Request, Want)> {
    use Want::*;
    let alice = token("alice", &["reader"]);
    let h2 = |authority: Option<&str>, scheme: &'static str, target: &str, headers: &[(&str, &str)]| H2Request {
        method: if target == "*" { "OPTIONS".into() } else { "GET".into() },
        scheme,
        authority: authority.map(str::to_owned),
        target: target.to_owned(),
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
        body: Vec::new(),
    };
    let api = Some("api.example.test");
    let trailing_space = format!("Bearer {alice} ");
    vec![
        ("h2_authority_and_a_host_header_that_disagree_are_refused", h2(api, "http", "/public/x", &[("host", "admin.example.test")]), Refused(400)),
        ("h2_host_header_that_agrees_with_the_authority_is_forwarded_once", h2(api, "http", "/public/x", &[("host", "api.example.test")]), Forwarded(|s| {
            check(s.all("host") == ["api.example.test"], format!("{:?}", s.all("host")))
        })),
        ("h2_authority_naming_the_admin_host_is_judged_by_its_rule", h2(Some("admin.example.test"), "http", "/public/x", &[]), Refused(403)),
        ("h2_upper_case_authority_with_a_trailing_dot_is_the_same_host", h2(Some("ADMIN.Example.TEST."), "http", "/x", &[]), Refused(403)),
        ("h2_authority_with_userinfo_is_refused", h2(Some("mallory@admin.example.test"), "http", "/x", &[]), Refused(400)),
        ("h2_without_authority_is_routed_by_its_host_header", h2(None, "http", "/public/x", &[("host", "admin.example.test")]), Refused(403)),
        // Pingora's HTTP/2 session refuses it before any phase runs (not counted).
        ("h2_without_authority_or_host_is_refused", h2(None, "http", "/public/x", &[]), Refused(400)),
        ("h2_scheme_https_on_cleartext_is_not_believed", h2(api, "https", "/public/x", &[]), Forwarded(|s| {
            check(s.all("x-forwarded-proto") == ["http"], format!("{:?}", s.all("x-forwarded-proto")))
        })),
        ("h2_asterisk_path_is_refused", h2(api, "http", "*", &[]), RefusedAs(400, "bad_target")),
        // HTTP/1.1 strips a value's surrounding whitespace; HTTP/2 carries it.
        ("h2_authorization_starting_with_a_space_is_refused", h2(api, "http", "/public/x", &[("authorization", " Bearer forged")]), RefusedAs(401, "malformed_credentials")),
        ("h2_valid_token_with_a_trailing_space_is_refused", h2(api, "http", "/orders/7", &[("authorization", trailing_space.as_str())]), RefusedAs(401, "malformed_credentials")),
    ]
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
