//! `echo-upstream`: a small HTTP echo server on hyper (HTTP/1.1; HTTP/2, TLS, mTLS and
//! WebSocket when asked).
//!
//! Integration tests and load tests use it as the real upstream behind the
//! gateway.
//!
//! ```text
//! echo-upstream --listen 127.0.0.1:0 [--name NAME] [--threads N] [--h2]
//!               [--tls-cert FILE --tls-key FILE [--client-ca FILE]]
//! ```
//!
//! Once bound it prints exactly one line, `listening on <addr>`, to stdout, so
//! a test can read the ephemeral port.
//!
//! Behaviour:
//! * Every request gets `200` with `content-type: application/json` and the body
//!   `{"upstream":NAME,"method":M,"path":TARGET,"headers":{..},"body_len":N,
//!   "version":"HTTP/1.1"|"HTTP/2.0"|"HTTP/1.0","client_cert_cn":CN|null}`.
//!   Header names are lower-cased and repeated headers are joined with `", "`.
//!   `client_cert_cn` is the subject CN of the client certificate (mTLS), else null.
//! * `GET /healthz` (or `HEAD`) answers `200` with the text body `ok`.
//! * A path that contains `/status/NNN` (200..=599) answers with that status. The
//!   body is the same JSON echo, except that 204 and 304 have no body.
//! * `?sleep_ms=N` in the query delays the answer by N ms (at most 30000).
//! * Keep-alive is the default for HTTP/1.1 and pipelined requests are answered
//!   in order. `Connection: close` and HTTP/1.0 (without `Connection:
//!   keep-alive`) close the connection after the response.
//! * Request bodies (by `Content-Length` or chunked) are counted, not kept, up
//!   to 1 MiB: a larger body gets 413 and a close (what the client still sends
//!   is drained for a while, so that the answer is not lost to a reset). A
//!   broken chunked body gets 400 and a close; a malformed head gets hyper's
//!   400, a head of more than 64 fields or 16 KiB its 431.
//! * Every response carries `x-upstream: NAME`, which helps when the body is
//!   empty (HEAD, 204, 304, 101).
//! * WebSocket: an HTTP/1.1 request with `Upgrade: websocket` and `Connection: upgrade`
//!   gets `101` (with `x-upstream`, and the first `Sec-WebSocket-Protocol` offered), then
//!   every text and binary message is sent back unchanged; pings get pongs, a close is
//!   answered with a close. Without `Sec-WebSocket-Key` or version 13 it gets `400`.
//! * `--tls-cert FILE --tls-key FILE`: TLS (rustls, ring) instead of plaintext; ALPN offers
//!   `http/1.1`, and `h2` first with `--h2`.
//! * `--client-ca FILE` (with TLS): a client certificate signed by that CA is required; a
//!   client without one, or with another CA's, fails the handshake.
//! * `--h2`: HTTP/2 as well, chosen by ALPN on TLS and by the connection preface (h2c with
//!   prior knowledge) on plaintext. On HTTP/2 the `path` is the `:path` (the authority is not
//!   echoed, and there is no `host` header unless the client sent one); a `HEAD` answer has
//!   no body but the `content-length` of the JSON it would have had. Without `--h2` every
//!   connection is HTTP/1.x exactly as before.

mod tls;
mod websocket;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Most header fields accepted in one request head (hyper answers 431 beyond).
const MAX_HEADERS: usize = 64;
/// Largest request head accepted (hyper answers 431 beyond): hyper's read buffer.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body accepted; larger bodies get 413.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How much of a too-large body is read before the 413 goes out.
const MAX_DRAIN_BYTES: usize = 4 * MAX_BODY_BYTES;
/// Upper bound on `?sleep_ms=`.
const MAX_SLEEP_MS: u64 = 30_000;
/// How long a client may take over the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "echo-upstream",
    version,
    about = "HTTP/1.1 and HTTP/2 echo server (TLS, mTLS, WebSocket) for tests and load tests"
)]
struct Args {
    /// Address to listen on; use port 0 for an ephemeral port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name reported in the `upstream` field and the `x-upstream` header.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Runtime worker threads (defaults to the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Serve TLS with this certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With TLS: require a client certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Speak HTTP/2 too: by ALPN on TLS, by prior knowledge (h2c) on plaintext.
    #[arg(long)]
    h2: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = tls::Files { cert, key, client_ca: args.client_ca.as_deref() };
            Some(tls::acceptor(&files, args.h2)?)
        }
        _ => None,
    };
    let server = Arc::new(Server::new(Echo::new(&args.name)?, tls, args.h2));

    test_support::serve::runtime(args.threads)?.block_on(async move {
        let listener = test_support::serve::listen(args.listen).await?;
        serve(listener, server).await;
        Ok(())
    })
}

/// Per-server settings shared by all connections.
#[derive(Debug)]
struct Echo {
    /// The name as a JSON string literal, quotes included.
    name_json: String,
    /// The value of the `x-upstream` header.
    name_header: HeaderValue,
}

impl Echo {
    fn new(name: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            name.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "--name must be printable ASCII (it is sent as a header value)"
        );
        let name_header = HeaderValue::from_str(name).context("--name as a header value")?;
        Ok(Self { name_json: serde_json::Value::from(name).to_string(), name_header })
    }
}

/// What every connection is served with.
struct Server {
    echo: Arc<Echo>,
    /// `Some` for TLS.
    tls: Option<TlsAcceptor>,
    /// HTTP/1.x only (the default).
    http1: hyper::server::conn::http1::Builder,
    /// HTTP/1.x or h2c by the connection preface (`--h2` on plaintext).
    auto: Option<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    /// HTTP/2 (TLS with ALPN `h2`).
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Server {
    fn new(echo: Echo, tls: Option<TlsAcceptor>, h2: bool) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // Not `pipeline_flush`: with it hyper drops its own 400/431 answers to a bad head.
        http1.max_headers(MAX_HEADERS).max_buf_size(MAX_HEAD_BYTES).writev(false);
        let auto = h2.then(|| {
            let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            auto.http1().max_headers(MAX_HEADERS).max_buf_size(MAX_HEAD_BYTES).writev(false);
            auto
        });
        let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        Self { echo: Arc::new(echo), tls, http1, auto, http2 }
    }
}

/// What the echo reports of the connection a request came on.
#[derive(Debug, Default)]
struct Peer {
    /// The subject CN of the client certificate (mTLS).
    client_cert_cn: Option<String>,
}

/// How a connection's bytes are read as HTTP.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    /// HTTP/1.x, or HTTP/2 when the client opens with its preface.
    Sniff,
}

/// Accepts connections forever, one task per connection.
async fn serve(listener: TcpListener, server: Arc<Server>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // Responses are written in one go, so Nagle only adds latency.
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, Arc::clone(&server)));
            }
            Err(err) => {
                // Usually EMFILE under load: back off briefly instead of spinning.
                eprintln!("echo-upstream: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Serves one connection: the TLS handshake if any, then HTTP in the protocol it chose.
async fn connection(stream: TcpStream, server: Arc<Server>) {
    let Some(acceptor) = &server.tls else {
        let protocol = if server.auto.is_some() { Protocol::Sniff } else { Protocol::Http1 };
        return serve_http(TokioIo::new(stream), &server, Peer::default(), protocol).await;
    };
    // A failed handshake (no or a bad client certificate, no common ALPN) ends the connection.
    let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await else {
        return;
    };
    let session = tls.get_ref().1;
    let protocol = if session.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
    let peer = Peer { client_cert_cn: tls::client_cn(session.peer_certificates()) };
    serve_http(TokioIo::new(tls), &server, peer, protocol).await;
}

/// Serves HTTP on `io` until the connection ends. Errors are the peer going away; nothing to
/// report.
async fn serve_http<I>(io: TokioIo<I>, server: &Server, peer: Peer, protocol: Protocol)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (echo, peer) = (Arc::clone(&server.echo), Arc::new(peer));
    let service = hyper::service::service_fn(move |req| {
        let (echo, peer) = (Arc::clone(&echo), Arc::clone(&peer));
        async move { Ok::<_, Infallible>(respond(req, &echo, &peer).await) }
    });
    match (protocol, &server.auto) {
        (Protocol::Sniff, Some(auto)) => {
            let _ = auto.serve_connection_with_upgrades(io, service).await;
        }
        (Protocol::Http2, _) => {
            let _ = server.http2.serve_connection(io, service).await;
        }
        _ => {
            let _ = server.http1.serve_connection(io, service).with_upgrades().await;
        }
    }
}

/// What to answer, decided from the request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The JSON echo with the given status.
    Echo(u16),
    /// `GET /healthz`.
    Healthz,
}

/// Answers one request: a WebSocket upgrade, or reads (counts) the body, waits `sleep_ms` and
/// echoes.
async fn respond(req: Request<Incoming>, echo: &Echo, peer: &Peer) -> Response<Full<Bytes>> {
    if websocket::is_upgrade(&req) {
        return websocket::accept(req, echo.name_header.clone());
    }
    let (head, body) = req.into_parts();
    // The request target as sent: origin form as is, absolute form rebuilt; HTTP/2's `:path`.
    let target = match (head.version, head.uri.scheme(), head.uri.path_and_query()) {
        (Version::HTTP_2, _, Some(pq)) | (_, None, Some(pq)) => Cow::Borrowed(pq.as_str()),
        _ => Cow::Owned(head.uri.to_string()),
    };
    let (route, sleep_ms) = route_for(head.method.as_str(), &target);
    let resp = match read_body(body).await {
        Err(refused) => refusal(echo, refused),
        Ok(body_len) => {
            if sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            }
            match route {
                Route::Healthz => answer(echo, StatusCode::OK, "text/plain", "ok"),
                Route::Echo(code) => {
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                    // 204 and 304 never have a body; hyper leaves out the body of an HTTP/1 HEAD answer.
                    let json = if code == 204 || code == 304 {
                        String::new()
                    } else {
                        echo_json(echo, &head, &target, body_len, peer)
                    };
                    answer(echo, status, "application/json", json)
                }
            }
        }
    };
    if head.version == Version::HTTP_2 {
        fit_to_http2(resp, head.method == Method::HEAD)
    } else {
        resp
    }
}

/// HTTP/2 has no `Connection` header, and hyper would send a HEAD answer's body: the answer
/// to a HEAD keeps only the `content-length` of the body it would have had.
fn fit_to_http2(resp: Response<Full<Bytes>>, head_request: bool) -> Response<Full<Bytes>> {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(CONNECTION);
    if !head_request {
        return Response::from_parts(parts, body);
    }
    if let Some(len) = body.size_hint().exact().filter(|&len| len > 0) {
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn answer(
    echo: &Echo,
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-upstream", echo.name_header.clone());
    resp
}

/// Why a request body was refused.
enum Refused {
    /// Over [`MAX_BODY_BYTES`]; the rest of the body, still to be drained.
    TooLarge(Incoming),
    /// Broken framing (a bad chunk).
    Malformed,
}

/// The answer to a refused body, which closes the connection. A too-large body is drained
/// (up to [`MAX_DRAIN_BYTES`], for at most 2 s) while the answer goes out: closing with unread
/// data sends a reset, which can destroy the answer before the client reads it.
fn refusal(echo: &Echo, refused: Refused) -> Response<Full<Bytes>> {
    let mut resp = match refused {
        Refused::TooLarge(rest) => {
            tokio::spawn(tokio::time::timeout(Duration::from_secs(2), drain(rest)));
            answer(echo, StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "request body larger than 1 MiB\n")
        }
        Refused::Malformed => answer(echo, StatusCode::BAD_REQUEST, "text/plain", "malformed request body\n"),
    };
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Counts the body's bytes without keeping them.
async fn read_body(mut body: Incoming) -> Result<usize, Refused> {
    if body.size_hint().exact().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(Refused::TooLarge(body));
    }
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => return Ok(len),
            Some(Err(_)) => return Err(Refused::Malformed),
            Some(Ok(frame)) => len += frame.data_ref().map_or(0, Bytes::len),
        }
        if len > MAX_BODY_BYTES {
            return Err(Refused::TooLarge(body));
        }
    }
}

async fn drain(mut body: Incoming) {
    let mut len = 0usize;
    while len < MAX_DRAIN_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => len += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}

/// `{"upstream":..,"method":..,"path":..,"headers":{..},"body_len":N,"version":..,"client_cert_cn":..}`.
fn echo_json(echo: &Echo, head: &hyper::http::request::Parts, target: &str, body_len: usize, peer: &Peer) -> String {
    use std::fmt::Write as _;
    let (method, headers) = (&head.method, &head.headers);
    let mut out = String::with_capacity(128 + target.len() + 64 * headers.len());
    out.push_str("{\"upstream\":");
    out.push_str(&echo.name_json);
    out.push_str(",\"method\":");
    push_json_str(&mut out, method.as_str());
    out.push_str(",\"path\":");
    push_json_str(&mut out, target);
    out.push_str(",\"headers\":{");
    for (i, name) in headers.keys().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Names are lower-case tokens: no escaping needed.
        let _ = write!(out, "\"{name}\":\"");
        for (j, value) in headers.get_all(name).iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            // Invalid UTF-8 (obs-text) becomes U+FFFD.
            push_json_str_contents(&mut out, &String::from_utf8_lossy(value.as_bytes()));
        }
        out.push('"');
    }
    let _ = write!(out, "}},\"body_len\":{body_len},\"version\":\"{:?}\",\"client_cert_cn\":", head.version);
    match &peer.client_cert_cn {
        Some(cn) => push_json_str(&mut out, cn),
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

/// Picks the route and the `sleep_ms` delay from the method and target.
fn route_for(method: &str, target: &str) -> (Route, u64) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let sleep_ms = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("sleep_ms="))
        .and_then(parse_decimal)
        .map_or(0, |ms| ms.min(MAX_SLEEP_MS));

    if path == "/healthz" && (method == "GET" || method == "HEAD") {
        return (Route::Healthz, sleep_ms);
    }
    let status =
        path.match_indices("/status/").find_map(|(at, m)| status_code_at(&path[at + m.len()..])).unwrap_or(200);
    (Route::Echo(status), sleep_ms)
}

/// `NNN` followed by the end of the path or `/`, with NNN in 200..=599
/// (1xx are interim responses and cannot answer a request on their own).
fn status_code_at(rest: &str) -> Option<u16> {
    let digits = rest.get(..3)?;
    let tail = &rest[3..];
    if !(tail.is_empty() || tail.starts_with('/')) {
        return None;
    }
    let code = u16::try_from(parse_decimal(digits)?).ok()?;
    (200..=599).contains(&code).then_some(code)
}

/// A non-empty string of ASCII digits; `None` on anything else (signs included) or overflow.
fn parse_decimal(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes `s` as a JSON string literal, quotes included.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_json_str_contents(out, s);
    out.push('"');
}

/// Writes `s` escaped for the inside of a JSON string.
fn push_json_str_contents(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\0'..='\x1f' => "",
            _ => continue,
        };
        out.push_str(&s[plain_from..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(escape);
        }
        plain_from = i + 1;
    }
    out.push_str(&s[plain_from..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Instant;
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    type Head = (u16, Vec<(String, String)>, Vec<u8>);

    async fn start_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(serve(listener, Arc::new(Server::new(Echo::new("test-up").expect("valid name"), None, false))));
        addr
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Reads one response (head plus content-length body) from `stream`, keeping any bytes
    /// after it in `buf`. A `HEAD` answer has no body whatever its content-length says.
    async fn read_response_to<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>, head_only: bool) -> Head {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = resp.parse(buf).expect("valid response") {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let len = if head_only {
                    0
                } else {
                    header(&headers, "content-length").map_or(0, |v| v.parse().expect("length"))
                };
                let code = resp.code.expect("status code");
                if buf.len() >= head_len + len {
                    let body = buf[head_len..head_len + len].to_vec();
                    buf.drain(..head_len + len);
                    return (code, headers, body);
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(buf))
                .await
                .expect("response within 5s")
                .expect("read");
            assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(buf));
        }
    }

    async fn read_response<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> Head {
        read_response_to(stream, buf, false).await
    }

    async fn expect_closed<R: AsyncRead + Unpin>(stream: &mut R, buf: &[u8]) {
        assert!(buf.is_empty(), "unexpected bytes: {buf:?}");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed within 5s")
            .expect("read to end");
        assert_eq!(n, 0, "unexpected bytes: {rest:?}");
    }

    /// One request on a new connection; the first response.
    /// Each of `cases` on its own connection gets a 400 with `connection: close`, then the close.
    async fn refused_with_400_and_closed(addr: SocketAddr, cases: &[&[u8]]) {
        for raw in cases {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(raw).await.expect("write");
            let mut buf = Vec::new();
            let (code, headers, _) = read_response(&mut stream, &mut buf).await;
            assert_eq!(code, 400, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(header(&headers, "connection"), Some("close"));
            expect_closed(&mut stream, &buf).await;
        }
    }

    async fn roundtrip(addr: SocketAddr, raw: &[u8]) -> Head {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw).await.expect("write");
        let head_only = raw.starts_with(b"HEAD ");
        read_response_to(&mut stream, &mut Vec::new(), head_only).await
    }

    fn json_body((code, headers, body): &Head) -> Value {
        assert_eq!(header(headers, "content-type"), Some("application/json"), "{code}");
        assert_eq!(header(headers, "content-length"), Some(body.len().to_string().as_str()));
        serde_json::from_slice(body).expect("body is JSON")
    }

    #[tokio::test]
    async fn echoes_method_target_headers_and_body_len() {
        let addr = start_server().await;
        let raw = b"POST /orders/7?x=1&y=%20 HTTP/1.1\r\nHost: a.test\r\nX-Tag: one\r\n\
            Content-Length: 5\r\nx-tag: two\r\nX-Quote: say \"hi\" \\o/\r\n\r\nhello";
        let v = json_body(&roundtrip(addr, raw).await);
        assert_eq!(v["upstream"], "test-up");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/orders/7?x=1&y=%20");
        assert_eq!(v["headers"]["host"], "a.test");
        assert_eq!(v["headers"]["x-tag"], "one, two");
        assert_eq!(v["headers"]["x-quote"], "say \"hi\" \\o/");
        assert_eq!(v["headers"]["content-length"], "5");
        assert_eq!(v["body_len"], 5);
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["client_cert_cn"], Value::Null);
        assert_eq!(v.as_object().map(|o| o.len()), Some(7));
    }

    #[tokio::test]
    async fn an_absolute_form_target_is_echoed_whole() {
        let addr = start_server().await;
        let v = json_body(&roundtrip(addr, b"GET http://a.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\n\r\n").await);
        assert_eq!(v["path"], "http://a.test/x?y=1");
    }

    #[tokio::test]
    async fn non_utf8_header_values_still_give_valid_json() {
        let addr = start_server().await;
        let v = json_body(&roundtrip(addr, b"GET / HTTP/1.1\r\nX-Bin: caf\xe9\r\n\r\n").await);
        assert_eq!(v["headers"]["x-bin"], "caf\u{fffd}");
    }

    #[tokio::test]
    async fn chunked_bodies_are_counted_in_one_buffer_or_one_byte_at_a_time() {
        let addr = start_server().await;
        let raw = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n6;ext=1\r\n world\r\nA \r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n";
        assert_eq!(json_body(&roundtrip(addr, raw).await)["body_len"], 21);

        let raw = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        for byte in raw {
            stream.write_all(&[*byte]).await.expect("write");
        }
        let mut buf = Vec::new();
        let first = read_response(&mut stream, &mut buf).await;
        assert_eq!(
            (json_body(&first)["path"].as_str(), json_body(&first)["body_len"].as_u64()),
            (Some("/c"), Some(19))
        );
        let second = read_response(&mut stream, &mut buf).await;
        assert_eq!(json_body(&second)["path"], "/next");
    }

    #[tokio::test]
    async fn two_pipelined_requests_in_one_write_are_answered_in_order() {
        let addr = start_server().await;
        let raw = b"POST /one HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /two?sleep_ms=5 HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw).await.expect("write");
        let mut buf = Vec::new();
        let v = json_body(&read_response(&mut stream, &mut buf).await);
        assert_eq!(
            (v["method"].as_str(), v["path"].as_str(), v["body_len"].as_u64()),
            (Some("POST"), Some("/one"), Some(3))
        );
        let v = json_body(&read_response(&mut stream, &mut buf).await);
        assert_eq!((v["method"].as_str(), v["path"].as_str()), (Some("GET"), Some("/two?sleep_ms=5")));
        assert_eq!(v["headers"]["host"], "h");
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn malformed_input_is_rejected_with_400_and_a_close() {
        let addr = start_server().await;
        let cases: &[&[u8]] = &[
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nab",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ];
        refused_with_400_and_closed(addr, cases).await;
    }

    #[tokio::test]
    async fn both_framings_read_the_body_as_chunked_and_close_after_the_answer() {
        // RFC 9112 6.1: Transfer-Encoding overrides Content-Length, and the connection closes.
        let addr = start_server().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        stream.write_all(raw).await.expect("write");
        let mut buf = Vec::new();
        let answer = read_response(&mut stream, &mut buf).await;
        assert_eq!(json_body(&answer)["body_len"], 3);
        expect_closed(&mut stream, &buf).await;
    }

    #[tokio::test]
    async fn bad_chunk_framing_gets_400_and_a_close() {
        let addr = start_server().await;
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            // Without the data-CRLF check this would parse as "abc" then the last chunk.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\nabc\r\n",
        ];
        refused_with_400_and_closed(addr, cases).await;
    }

    #[tokio::test]
    async fn limits_give_413_and_431() {
        let addr = start_server().await;
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        let mut raw = big.into_bytes();
        raw.resize(raw.len() + MAX_BODY_BYTES + 1, b'a');
        assert_eq!(roundtrip(addr, &raw).await.0, 413);
        let at_limit = format!("POST / HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n");
        let mut raw = at_limit.into_bytes();
        raw.resize(raw.len() + MAX_BODY_BYTES, b'a');
        assert_eq!(json_body(&roundtrip(addr, &raw).await)["body_len"], MAX_BODY_BYTES);

        // Two chunks that are fine alone but not together.
        let half = MAX_BODY_BYTES / 2 + 1;
        let mut two = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{half:x}\r\n").into_bytes();
        two.extend(std::iter::repeat_n(b'a', half));
        two.extend_from_slice(format!("\r\n{half:x}\r\n").as_bytes());
        two.extend(std::iter::repeat_n(b'a', half));
        two.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(roundtrip(addr, &two).await.0, 413);

        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(roundtrip(addr, many.as_bytes()).await.0, 431);
        let long = format!("GET / HTTP/1.1\r\nx-long: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(roundtrip(addr, long.as_bytes()).await.0, 431);
        // Also when the head never ends.
        let endless = format!("GET / HTTP/1.1\r\nx-long: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(roundtrip(addr, endless.as_bytes()).await.0, 431);
    }

    #[tokio::test]
    async fn connection_handling_by_version_and_header() {
        let addr = start_server().await;
        // (request, connection header of the answer, closed after it)
        let cases: &[(&[u8], Option<&str>, bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", None, false),
            (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", Some("close"), true),
            (b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n", Some("close"), true),
            (b"GET / HTTP/1.0\r\n\r\n", None, true),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", Some("keep-alive"), false),
        ];
        for &(raw, connection, closed) in cases {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(raw).await.expect("write");
            let mut buf = Vec::new();
            let (code, headers, _) = read_response(&mut stream, &mut buf).await;
            assert_eq!(code, 200);
            let what = String::from_utf8_lossy(raw);
            assert_eq!(header(&headers, "connection").map(str::to_ascii_lowercase).as_deref(), connection, "{what}");
            if closed {
                expect_closed(&mut stream, &buf).await;
            } else {
                stream.write_all(b"GET /again HTTP/1.1\r\n\r\n").await.expect("write");
                assert_eq!(read_response(&mut stream, &mut buf).await.0, 200, "{what}: kept alive");
            }
        }
    }

    #[test]
    fn routes_and_sleep() {
        assert_eq!(route_for("GET", "/healthz"), (Route::Healthz, 0));
        assert_eq!(route_for("GET", "/healthz?sleep_ms=7"), (Route::Healthz, 7));
        assert_eq!(route_for("POST", "/healthz"), (Route::Echo(200), 0));
        assert_eq!(route_for("GET", "/status/503"), (Route::Echo(503), 0));
        assert_eq!(route_for("GET", "/api/status/404/x?a=b"), (Route::Echo(404), 0));
        assert_eq!(route_for("GET", "/status/5034"), (Route::Echo(200), 0));
        assert_eq!(route_for("GET", "/status/abc/status/201"), (Route::Echo(201), 0));
        assert_eq!(route_for("GET", "/status/101"), (Route::Echo(200), 0));
        assert_eq!(route_for("GET", "/x?status/500"), (Route::Echo(200), 0));
        assert_eq!(route_for("GET", "/x?a=1&sleep_ms=250"), (Route::Echo(200), 250));
        assert_eq!(route_for("GET", "/x?sleep_ms=99999999"), (Route::Echo(200), MAX_SLEEP_MS));
        assert_eq!(route_for("GET", "/x?sleep_ms=-1"), (Route::Echo(200), 0));
        assert_eq!(route_for("GET", "/x?sleep_ms=+5"), (Route::Echo(200), 0));
    }

    #[tokio::test]
    async fn special_responses() {
        let addr = start_server().await;
        let (code, headers, body) = roundtrip(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!((code, body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(header(&headers, "x-upstream"), Some("test-up"));
        assert_eq!(header(&headers, "content-type"), Some("text/plain"));

        let teapot = roundtrip(addr, b"DELETE /status/418 HTTP/1.1\r\n\r\n").await;
        assert_eq!(teapot.0, 418);
        assert_eq!(json_body(&teapot)["method"], "DELETE");

        for code in [204, 304] {
            let raw = format!("GET /status/{code} HTTP/1.1\r\n\r\n");
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(raw.as_bytes()).await.expect("write");
            let mut buf = Vec::new();
            let (got, headers, body) = read_response(&mut stream, &mut buf).await;
            assert_eq!(got, code);
            assert!(body.is_empty());
            assert_eq!(header(&headers, "content-length"), None, "{code}");
            assert_eq!(header(&headers, "x-upstream"), Some("test-up"));
            // Nothing follows the head: the next answer starts right after it.
            stream.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.expect("write");
            assert_eq!(json_body(&read_response(&mut stream, &mut buf).await)["path"], "/next");
        }

        let (code, headers, body) = roundtrip(addr, b"HEAD /x HTTP/1.1\r\n\r\n").await;
        assert_eq!(code, 200);
        assert!(body.is_empty());
        let len: usize =
            header(&headers, "content-length").and_then(|v| v.parse().ok()).expect("HEAD answer has content-length");
        assert!(len > 20);
    }

    #[test]
    fn json_escaping() {
        let mut out = String::new();
        push_json_str(&mut out, &String::from_utf8_lossy(b"a\"b\\c\x01\x1f\t\n\x7f\xc3\xa9\xff"));
        let parsed: String = serde_json::from_str(&out).expect("valid JSON string");
        assert_eq!(parsed, "a\"b\\c\u{1}\u{1f}\t\n\u{7f}é\u{fffd}");
        assert!(Echo::new("bad\r\nname").is_err());
        assert_eq!(Echo::new("q\"uote").expect("printable").name_json, "\"q\\\"uote\"");
    }

    #[tokio::test]
    async fn serves_over_a_real_socket() {
        let addr = start_server().await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();

        // Two pipelined requests in one write, the second chunked, sent in two pieces.
        stream
            .write_all(b"GET /a?q=1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /status/201 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab")
            .await
            .expect("write");
        let (code, _, body) = read_response(&mut stream, &mut buf).await;
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!((code, v["path"].as_str(), v["upstream"].as_str()), (200, Some("/a?q=1"), Some("test-up")));
        stream.write_all(b"cd\r\n0\r\n\r\n").await.expect("write");
        let (code, _, body) = read_response(&mut stream, &mut buf).await;
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!((code, v["body_len"].as_u64()), (201, Some(4)));

        // sleep_ms delays the answer.
        let started = Instant::now();
        stream.write_all(b"GET /slow?sleep_ms=150 HTTP/1.1\r\n\r\n").await.expect("write");
        let (code, _, _) = read_response(&mut stream, &mut buf).await;
        assert_eq!(code, 200);
        assert!(started.elapsed() >= Duration::from_millis(150));

        // Expect: 100-continue gets an interim answer before the body is sent.
        stream
            .write_all(b"PUT /up HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            .await
            .expect("write");
        let (code, _, _) = read_response(&mut stream, &mut buf).await;
        assert_eq!(code, 100);
        stream.write_all(b"xyz").await.expect("write");
        let (code, _, body) = read_response(&mut stream, &mut buf).await;
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!((code, v["body_len"].as_u64()), (200, Some(3)));

        // Connection: close is honoured.
        stream.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await.expect("write");
        let (code, headers, body) = read_response(&mut stream, &mut buf).await;
        assert_eq!((code, body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(header(&headers, "connection"), Some("close"));
        expect_closed(&mut stream, &buf).await;

        // An oversized body gets 413 even while the client is still sending it.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut big = b"POST /big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            big.extend_from_slice(format!("{:x}\r\n", 512 * 1024).as_bytes());
            big.extend(std::iter::repeat_n(b'z', 512 * 1024));
            big.extend_from_slice(b"\r\n");
        }
        let (mut reader, mut writer) = stream.split();
        let (write_result, (code, headers, _)) =
            tokio::join!(writer.write_all(&big), read_response(&mut reader, &mut buf));
        assert_eq!(code, 413);
        assert_eq!(header(&headers, "connection"), Some("close"));
        // The server reads what we send before answering instead of resetting.
        write_result.expect("whole body written");
        expect_closed(&mut reader, &buf).await;
    }
}
