//! The scriptable bundle source: an HTTP server whose answer to `GET` a test sets — a good
//! bundle with ETag, `304` and long polls, or a fault — and which logs what it was asked.
//!
//! Two ways to run it, one implementation:
//!
//! * in process: [`Source::start`] (or [`Source::start_on`] a port) with an [`Answer`], then
//!   [`Source::set`] and [`Source::requests`]; dropping the `Source` stops it;
//! * as the `hostile-source` process (a thin binary over [`serve`]), which fault-injection
//!   suites kill, restart on the same port and script over HTTP (below).
//!
//! # Serving
//!
//! `GET` of any path (a gateway asks for `/v1/bundles/{name}`) is answered by the current
//! answer; `POST` of any path (gateway status reports) gets `202` and is otherwise ignored.
//! The answers ([`Answer`]; the `mode` of a script):
//!
//! | mode | answer |
//! |---|---|
//! | `bundle` (`body`) | `200` with `ETag: "<sha256 of body>"`; `304` on a matching `If-None-Match`; with `Prefer: wait=N` and a matching tag the request is held up to N s (at most 300) and answered as soon as the script changes |
//! | `body` (`body`, optional `etag`) | `200` with these bytes and this `ETag`, whatever they are |
//! | `status` (`code`, optional `retry_after`) | that status (200..=599), with `Retry-After: S` when given |
//! | `hang` (optional `content_length`, default 1000) | the headers of a `200`, then nothing until the client goes away (at most 300 s) |
//! | `trickle` (`body`, optional `every_ms`, default 1000) | a `200` whose body arrives one byte per `every_ms` |
//! | `close` | reads the request and closes the connection without a byte |
//! | `tls` | answers the plain-HTTP request with a TLS ServerHello record, then closes |
//! | `redirect` (`location`) | `307` to `location` |
//!
//! Ordinary HTTP is hyper's; `close` and `tls` replace hyper's next write on the connection
//! with their own bytes (or none) and end it, `hang` and `trickle` are streaming bodies.
//!
//! # Control endpoints
//!
//! Bodies are base64 (standard alphabet) in the `body` key. Before any script the
//! `hostile-source` process answers `503`.
//!
//! * `PUT /_script` with a JSON script: `200 {"generation": N}`, or `400 {"error": ..}` naming
//!   what is wrong. A new script wakes every held long poll.
//! * `GET /_script`: `{"mode": M, "generation": N}`.
//! * `GET /_requests[?since=N]`: the request log, oldest first, as a JSON array of
//!   `{"n", "at_ms", "path", "if_none_match", "prefer_wait", "answered", "answered_ms"}`;
//!   `at_ms` is when the request arrived and `answered_ms` when it was answered (ms since the
//!   source started), `answered` the status code sent (0: no HTTP answer: `close`, `tls`).
//!   The log keeps the last 100 000 entries; `n` keeps counting.
//!
//! Request bodies over 64 MiB get `413` and a close; malformed heads get hyper's `400`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// Longest a request is held, whatever it asks for (long poll, hang).
pub const MAX_HOLD: Duration = Duration::from_secs(300);
/// Largest request body accepted (a script carrying a bundle).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Entries kept in the request log.
pub const MAX_LOG: usize = 100_000;

/// What the source answers to `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A bundle with `ETag: "<sha256>"`; honours `If-None-Match` and `Prefer: wait=N`.
    Bundle(Vec<u8>),
    /// These bytes with this ETag (if any), whatever they are.
    Body { bytes: Vec<u8>, etag: Option<String> },
    /// This status (200..=599), with `Retry-After: S` when given.
    Status { code: u16, retry_after: Option<u64> },
    /// Headers of a `200` promising `content_length` bytes, then silence.
    Hang { content_length: u64 },
    /// A `200` whose body arrives one byte per `every`.
    Trickle { bytes: Vec<u8>, every: Duration },
    /// Reads the request and closes the connection without a byte.
    Close,
    /// A TLS record where HTTP was expected.
    Tls,
    /// `307` to `location`.
    Redirect { location: String },
}

/// A script that cannot be used; the message names the key that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScriptError(String);

impl From<&str> for ScriptError {
    fn from(s: &str) -> Self {
        ScriptError(s.to_owned())
    }
}

impl Answer {
    /// The script `mode` of this answer.
    pub fn mode(&self) -> &'static str {
        match self {
            Answer::Bundle(_) => "bundle",
            Answer::Body { .. } => "body",
            Answer::Status { .. } => "status",
            Answer::Hang { .. } => "hang",
            Answer::Trickle { .. } => "trickle",
            Answer::Close => "close",
            Answer::Tls => "tls",
            Answer::Redirect { .. } => "redirect",
        }
    }

    /// Reads a script document (the body of `PUT /_script`).
    pub fn from_json(v: &Value) -> Result<Answer, ScriptError> {
        let obj = v.as_object().ok_or("a script is a JSON object")?;
        let mode = obj.get("mode").and_then(Value::as_str).ok_or("`mode` (a string) is required")?;
        let known: &[&str] = match mode {
            "bundle" => &["mode", "body"],
            "body" => &["mode", "body", "etag"],
            "status" => &["mode", "code", "retry_after"],
            "hang" => &["mode", "content_length"],
            "trickle" => &["mode", "body", "every_ms"],
            "close" | "tls" => &["mode"],
            "redirect" => &["mode", "location"],
            other => {
                return Err(ScriptError(format!(
                    "unknown mode `{other}` (bundle, body, status, hang, trickle, close, tls, redirect)"
                )))
            }
        };
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ScriptError(format!("unknown key `{k}` for mode `{mode}`")));
        }
        let keys = ScriptKeys(obj);
        Ok(match mode {
            "bundle" => Answer::Bundle(keys.body()?),
            "body" => Answer::Body { bytes: keys.body()?, etag: keys.header_value("etag")? },
            "status" => {
                let code = keys.uint("code")?.ok_or("`code` is required")?;
                let code = u16::try_from(code)
                    .ok()
                    .filter(|c| (200..=599).contains(c))
                    .ok_or("`code` must be in 200..=599")?;
                Answer::Status { code, retry_after: keys.uint("retry_after")? }
            }
            "hang" => Answer::Hang { content_length: keys.uint("content_length")?.unwrap_or(1000) },
            "trickle" => Answer::Trickle {
                bytes: keys.body()?,
                every: Duration::from_millis(keys.uint("every_ms")?.unwrap_or(1000)),
            },
            "close" => Answer::Close,
            "tls" => Answer::Tls,
            _ => match keys.header_value("location")? {
                Some(location) if !location.is_empty() => Answer::Redirect { location },
                _ => return Err("`location` must be a non-empty string without control characters".into()),
            },
        })
    }
}

/// The keys of a script document, read with errors that name them.
struct ScriptKeys<'a>(&'a serde_json::Map<String, Value>);

impl ScriptKeys<'_> {
    fn body(&self) -> Result<Vec<u8>, ScriptError> {
        let b64 = self.0.get("body").and_then(Value::as_str).ok_or("`body` (base64) is required")?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ScriptError(format!("`body` is not base64: {e}")))
    }

    fn uint(&self, key: &str) -> Result<Option<u64>, ScriptError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_u64().map(Some).ok_or_else(|| ScriptError(format!("`{key}` must be a non-negative integer")))
            }
        }
    }

    /// An optional string that can be written into a header as is.
    fn header_value(&self, key: &str) -> Result<Option<String>, ScriptError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if is_header_value(s) => Ok(Some(s.clone())),
            Some(_) => Err(ScriptError(format!("`{key}` must be a string without control characters"))),
        }
    }
}

/// A value that can be written into a header line as is.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// A TLS 1.2 record carrying a ServerHello (random fixed, no session id, TLS_AES_128_GCM_SHA256,
/// one renegotiation_info extension): what a TLS server puts on the wire first.
pub const TLS_SERVER_HELLO: &[u8] = &[
    0x16, 0x03, 0x03, 0x00, 0x31, // record: handshake, TLS 1.2, 49 bytes
    0x02, 0x00, 0x00, 0x2d, // handshake: ServerHello, 45 bytes
    0x03, 0x03, // server version
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, // random
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, //
    0x00, // session id length
    0x13, 0x01, // cipher suite
    0x00, // compression
    0x00, 0x05, 0xff, 0x01, 0x00, 0x01, 0x00, // extensions: renegotiation_info
];

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

/// One logged bundle request (control requests and `POST`s are not logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Its number; numbers keep counting when old entries are dropped.
    pub n: u64,
    /// When it arrived, in ms since the source started.
    pub at_ms: u64,
    /// The request target, query included.
    pub path: String,
    pub if_none_match: Option<String>,
    /// The `wait` of its `Prefer` header, in seconds (capped at [`MAX_HOLD`]).
    pub prefer_wait: Option<u64>,
    /// The status sent; 0 when no HTTP answer was (`close`, `tls`).
    pub answered: u16,
    /// When it was answered, in ms since the source started.
    pub answered_ms: u64,
}

impl Logged {
    fn to_json(&self) -> Value {
        json!({
            "n": self.n, "at_ms": self.at_ms, "path": self.path, "if_none_match": self.if_none_match,
            "prefer_wait": self.prefer_wait, "answered": self.answered, "answered_ms": self.answered_ms,
        })
    }
}

/// The current answer, ready to serve: its body as [`Bytes`] and, for a bundle, its ETag.
#[derive(Debug)]
struct Script {
    answer: Answer,
    body: Bytes,
    etag: Option<String>,
}

impl Script {
    fn new(answer: Answer) -> Script {
        let body = match &answer {
            Answer::Bundle(b) | Answer::Body { bytes: b, .. } | Answer::Trickle { bytes: b, .. } => {
                Bytes::copy_from_slice(b)
            }
            _ => Bytes::new(),
        };
        let etag = match &answer {
            Answer::Bundle(b) => Some(format!("\"{}\"", policy_bundles::digest(b))),
            Answer::Body { etag, .. } => etag.clone(),
            _ => None,
        };
        Script { answer, body, etag }
    }

    /// Whether a request with this `If-None-Match` already has the current bundle.
    fn is_current(&self, if_none_match: Option<&str>) -> bool {
        match (&self.answer, &self.etag, if_none_match) {
            (Answer::Bundle(_), Some(etag), Some(inm)) => etag_matches(inm, etag),
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct Log {
    next: u64,
    entries: VecDeque<Logged>,
}

/// What every connection of one source shares.
struct Shared {
    /// The script and its generation; a change wakes held long polls.
    script: watch::Sender<(u64, Arc<Script>)>,
    log: Mutex<Log>,
    started: Instant,
}

impl Shared {
    fn new(first: Answer) -> Shared {
        Shared {
            script: watch::channel((0, Arc::new(Script::new(first)))).0,
            log: Mutex::new(Log::default()),
            started: Instant::now(),
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set(&self, answer: Answer) -> u64 {
        let script = Arc::new(Script::new(answer));
        let mut generation = 0;
        self.script.send_modify(|(g, s)| {
            *g += 1;
            generation = *g;
            *s = script;
        });
        generation
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        // A poisoned lock only means another connection panicked; the log is still usable.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, mut entry: Logged) {
        entry.answered_ms = self.ms();
        let mut log = self.log();
        entry.n = log.next;
        log.next += 1;
        log.entries.push_back(entry);
        while log.entries.len() > MAX_LOG {
            log.entries.pop_front();
        }
    }

    fn requests(&self, since: u64) -> Vec<Logged> {
        self.log().entries.iter().filter(|e| e.n >= since).cloned().collect()
    }
}

// ---------------------------------------------------------------------------
// In process
// ---------------------------------------------------------------------------

/// A source served on 127.0.0.1 by a thread of its own; stopped (every connection closed)
/// when dropped.
pub struct Source {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Source {
    /// A source on an ephemeral port answering `answer`.
    pub fn start(answer: Answer) -> Source {
        Source::start_on(0, answer)
    }

    /// A source on `port` (0: ephemeral); panics if the port cannot be bound.
    pub fn start_on(port: u16, answer: Answer) -> Source {
        Source::try_start_on(port, answer).unwrap_or_else(|e| panic!("bundle source on port {port}: {e}"))
    }

    /// [`Source::start_on`] for a caller that handles a port in use.
    pub fn try_start_on(port: u16, answer: Answer) -> std::io::Result<Source> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let shared = Arc::new(Shared::new(answer));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => tokio::select! {
                        () = accept_loop(listener, serving) => {}
                        _ = stopped => {}
                    },
                    Err(e) => eprintln!("bundle source: {e}"),
                }
            });
            // Dropping the runtime drops every connection task, closing its socket.
        });
        Ok(Source { addr, shared, stop: Some(stop), thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the answer and wakes held long polls; returns the new generation.
    pub fn set(&self, answer: Answer) -> u64 {
        self.shared.set(answer)
    }

    /// Every logged bundle request, oldest first.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.requests(0)
    }

    /// The logged bundle requests numbered `since` and later.
    pub fn requests_since(&self, since: u64) -> Vec<Logged> {
        self.shared.requests(since)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// Serves a source answering `first` on `listener` until the process ends (the
/// `hostile-source` binary).
pub async fn serve(listener: TcpListener, first: Answer) {
    accept_loop(listener, Arc::new(Shared::new(first))).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let hijack = Arc::new(Hijack::default());
                let io = TokioIo::new(HijackableStream { stream, hijack: Arc::clone(&hijack), raw: None });
                let shared = Arc::clone(&shared);
                let service = hyper::service::service_fn(move |req| {
                    let (shared, hijack) = (Arc::clone(&shared), Arc::clone(&hijack));
                    async move { Ok::<_, Infallible>(route(req, &shared, &hijack).await) }
                });
                // Errors are the peer going away (or being cut on purpose): nothing to report.
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
            Err(err) => {
                eprintln!("bundle source: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Routes one request: control endpoints, status reports, or the scripted answer.
async fn route(req: Request<Incoming>, shared: &Shared, hijack: &Hijack) -> Response<Reply> {
    let (head, body) = req.into_parts();
    let path = head.uri.path();
    match (&head.method, path) {
        (&Method::PUT, "/_script") => match read_body(body).await {
            Ok(bytes) => put_script(shared, &bytes),
            Err(refusal) => refusal,
        },
        (&Method::GET, "/_script") => {
            let (generation, script) = shared.script.borrow().clone();
            json_response(StatusCode::OK, &json!({ "mode": script.answer.mode(), "generation": generation }))
        }
        (&Method::GET, "/_requests") => {
            let query = head.uri.query().unwrap_or("");
            let since = query.split('&').find_map(|p| p.strip_prefix("since=")).and_then(|v| v.parse().ok());
            let log = shared.requests(since.unwrap_or(0)).iter().map(Logged::to_json).collect();
            json_response(StatusCode::OK, &Value::Array(log))
        }
        (&Method::POST, _) => match read_body(body).await {
            Ok(_) => response(StatusCode::ACCEPTED, Reply::empty()),
            Err(refusal) => refusal,
        },
        (&Method::GET, _) => scripted(shared, hijack, &head).await,
        _ => {
            let mut resp = response(StatusCode::METHOD_NOT_ALLOWED, Reply::empty());
            resp.headers_mut().insert("allow", HeaderValue::from_static("GET, POST"));
            resp
        }
    }
}

fn put_script(shared: &Shared, body: &[u8]) -> Response<Reply> {
    let parsed = serde_json::from_slice::<Value>(body)
        .map_err(|e| ScriptError(format!("not JSON: {e}")))
        .and_then(|v| Answer::from_json(&v));
    match parsed {
        Ok(answer) => json_response(StatusCode::OK, &json!({ "generation": shared.set(answer) })),
        Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": e.to_string() })),
    }
}

/// The whole request body, or the answer refusing it (`413` past [`MAX_BODY_BYTES`]).
async fn read_body(body: Incoming) -> Result<Bytes, Response<Reply>> {
    // A declared length over the limit is refused before any of it is read.
    let too_large = if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        true
    } else {
        match http_body_util::Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => return Ok(collected.to_bytes()),
            Err(e) => e.is::<http_body_util::LengthLimitError>(),
        }
    };
    let (status, msg) = if too_large {
        (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n")
    } else {
        (StatusCode::BAD_REQUEST, "malformed request body\n")
    };
    let mut resp = response(status, Reply::full(msg));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    Err(resp)
}

fn response(status: StatusCode, body: Reply) -> Response<Reply> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response<Reply> {
    let mut resp = response(status, Reply::full(v.to_string()));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// What a bundle request asks for.
struct Asked {
    if_none_match: Option<String>,
    prefer_wait: Option<u64>,
}

impl Asked {
    fn of(headers: &hyper::HeaderMap) -> Asked {
        // The last field of each wins.
        let if_none_match = headers
            .get_all("if-none-match")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .next_back()
            .map(|v| v.trim().to_owned());
        let prefer_wait =
            headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).filter_map(prefer_wait).next_back();
        Asked { if_none_match, prefer_wait }
    }
}

/// Answers a `GET` from the script, holding it first when it is a long poll for the current
/// bundle. Logs it once answered.
async fn scripted(shared: &Shared, hijack: &Hijack, head: &hyper::http::request::Parts) -> Response<Reply> {
    let asked = Asked::of(&head.headers);
    let mut entry = Logged {
        n: 0,
        at_ms: shared.ms(),
        path: head.uri.to_string(),
        if_none_match: asked.if_none_match.clone(),
        prefer_wait: asked.prefer_wait,
        answered: 0,
        answered_ms: 0,
    };
    let script = hold(shared, &asked).await;
    let resp = answer(&script, &asked, hijack);
    entry.answered = if hijack.is_set() { 0 } else { resp.status().as_u16() };
    shared.record(entry);
    resp
}

/// The script to answer with: at once, or once it changes (or the wait ends) when the request
/// is a long poll for the current bundle.
async fn hold(shared: &Shared, asked: &Asked) -> Arc<Script> {
    let wait = asked.prefer_wait.unwrap_or(0);
    let mut rx = shared.script.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let script = rx.borrow_and_update().1.clone();
        if wait == 0 || !script.is_current(asked.if_none_match.as_deref()) {
            return script;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return script },
            () = tokio::time::sleep_until(deadline) => return script,
        }
    }
}

/// The response for `script`; for `close` and `tls` the raw bytes are armed in `hijack`.
fn answer(script: &Script, asked: &Asked, hijack: &Hijack) -> Response<Reply> {
    let mut resp = match &script.answer {
        Answer::Bundle(_) => {
            let fresh = script.is_current(asked.if_none_match.as_deref());
            let mut resp = if fresh {
                response(StatusCode::NOT_MODIFIED, Reply::empty())
            } else {
                response(StatusCode::OK, Reply::Full(Some(script.body.clone())))
            };
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
            resp
        }
        Answer::Body { .. } => response(StatusCode::OK, Reply::Full(Some(script.body.clone()))),
        Answer::Status { code, retry_after } => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = response(status, Reply::full(format!("scripted {code}\n")));
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            if let Some(seconds) = retry_after {
                resp.headers_mut().insert("retry-after", HeaderValue::from(*seconds));
            }
            resp
        }
        Answer::Hang { content_length } => {
            let mut resp = response(StatusCode::OK, Reply::Hang(Box::pin(tokio::time::sleep(MAX_HOLD))));
            resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(*content_length));
            resp
        }
        Answer::Trickle { every, .. } => {
            let sleep = Box::pin(tokio::time::sleep(*every));
            response(StatusCode::OK, Reply::Trickle { rest: script.body.clone(), every: *every, sleep })
        }
        Answer::Close => {
            hijack.arm(b"");
            response(StatusCode::OK, Reply::empty())
        }
        Answer::Tls => {
            hijack.arm(TLS_SERVER_HELLO);
            response(StatusCode::OK, Reply::empty())
        }
        Answer::Redirect { location } => {
            let mut resp = response(StatusCode::TEMPORARY_REDIRECT, Reply::empty());
            if let Ok(v) = HeaderValue::from_str(location) {
                resp.headers_mut().insert("location", v);
            }
            resp
        }
    };
    if let Some(etag) = script.etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        resp.headers_mut().insert("etag", etag);
    }
    resp
}

/// `wait=N` among the preferences of a `Prefer` header (RFC 7240), capped at [`MAX_HOLD`].
fn prefer_wait(value: &str) -> Option<u64> {
    value.split([',', ';']).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("wait") {
            return None;
        }
        v.trim().trim_matches('"').parse::<u64>().ok().map(|n| n.min(MAX_HOLD.as_secs()))
    })
}

/// Whether an `If-None-Match` value matches `etag` (lists, weak tags and `*` included).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let want = etag.trim_start_matches("W/");
    if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == want)
}

// ---------------------------------------------------------------------------
// Bodies and the raw socket
// ---------------------------------------------------------------------------

/// A response body: whole, one byte per `every`, or never (until [`MAX_HOLD`] ends the
/// connection).
enum Reply {
    Full(Option<Bytes>),
    Trickle { rest: Bytes, every: Duration, sleep: Pin<Box<tokio::time::Sleep>> },
    Hang(Pin<Box<tokio::time::Sleep>>),
}

impl Reply {
    fn empty() -> Reply {
        Reply::Full(None)
    }

    fn full(body: impl Into<Bytes>) -> Reply {
        Reply::Full(Some(body.into()))
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Reply::Full(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            Reply::Trickle { rest, every, sleep } => {
                if rest.is_empty() {
                    return Poll::Ready(None);
                }
                ready!(sleep.as_mut().poll(cx));
                sleep.as_mut().reset(tokio::time::Instant::now() + *every);
                Poll::Ready(Some(Ok(Frame::data(rest.split_to(1)))))
            }
            Reply::Hang(sleep) => {
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "held long enough"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Full(body) => body.as_ref().is_none_or(Bytes::is_empty),
            Reply::Trickle { rest, .. } => rest.is_empty(),
            Reply::Hang(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Full(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            Reply::Trickle { rest, .. } => SizeHint::with_exact(rest.len() as u64),
            // The content-length header tells.
            Reply::Hang(_) => SizeHint::default(),
        }
    }
}

/// Raw bytes that replace the next response hyper writes on one connection, which then ends.
#[derive(Default)]
struct Hijack(Mutex<Option<&'static [u8]>>);

impl Hijack {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<&'static [u8]>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, raw: &'static [u8]) {
        *self.slot() = Some(raw);
    }

    fn is_set(&self) -> bool {
        self.slot().is_some()
    }

    fn take(&self) -> Option<&'static [u8]> {
        self.slot().take()
    }
}

/// A connection whose writes are replaced by the raw bytes of its [`Hijack`] once armed.
struct HijackableStream {
    stream: TcpStream,
    hijack: Arc<Hijack>,
    /// The raw bytes still to write, once the hijack fired.
    raw: Option<&'static [u8]>,
}

impl AsyncRead for HijackableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HijackableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.raw.is_none() {
            this.raw = this.hijack.take();
        }
        let Some(raw) = &mut this.raw else {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        };
        while !raw.is_empty() {
            let n = ready!(Pin::new(&mut this.stream).poll_write(cx, raw))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *raw = &raw[n..];
        }
        ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
        // An error makes hyper drop the connection without writing anything of its own.
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "scripted close")))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn sha_etag(bytes: &[u8]) -> String {
        format!("\"{}\"", policy_bundles::digest(bytes))
    }

    const FIVE_S: Duration = Duration::from_secs(5);

    /// Sends `raw` on a fresh connection and reads until the server closes it, giving up after
    /// `limit`: (bytes received, whether the connection ended within `limit`).
    fn exchange(addr: SocketAddr, raw: &[u8], limit: Duration) -> (Vec<u8>, bool) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(raw).expect("write");
        read_until_closed(&mut s, limit)
    }

    fn read_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (out, false);
            }
            s.set_read_timeout(Some(left)).expect("timeout");
            match s.read(&mut chunk) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return (out, false)
                }
                Err(_) => return (out, true),
            }
        }
    }

    fn get(path: &str, extra: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    }

    /// `PUT /_script` over the wire; the whole answer.
    fn put_script(addr: SocketAddr, script: &Value) -> String {
        let body = script.to_string();
        let raw = format!("PUT /_script HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        String::from_utf8_lossy(&exchange(addr, raw.as_bytes(), FIVE_S).0).into_owned()
    }

    /// Head (lower-cased) and body of a response.
    fn split(out: &[u8]) -> (String, Vec<u8>) {
        let text = String::from_utf8_lossy(out);
        let at = text.find("\r\n\r\n").map(|i| i + 4).unwrap_or(out.len());
        (text[..at].to_ascii_lowercase(), out[at..].to_vec())
    }

    fn log_of(addr: SocketAddr, query: &str) -> Vec<Value> {
        let (out, _) = exchange(addr, &get(&format!("/_requests{query}"), ""), FIVE_S);
        let log: Value = serde_json::from_slice(&split(&out).1).expect("JSON log");
        log.as_array().cloned().expect("array")
    }

    fn unscripted() -> Answer {
        Answer::Status { code: 503, retry_after: None }
    }

    #[test]
    fn parses_every_mode_and_names_what_is_wrong() {
        let bundle = Answer::from_json(&json!({"mode": "bundle", "body": b64(b"abc")})).expect("bundle");
        assert_eq!(bundle, Answer::Bundle(b"abc".to_vec()));
        assert_eq!(Script::new(bundle).etag, Some(sha_etag(b"abc")));
        let ok = [
            json!({"mode": "body", "body": b64(b"x"), "etag": "\"t\""}),
            json!({"mode": "body", "body": ""}),
            json!({"mode": "status", "code": 429, "retry_after": 2}),
            json!({"mode": "hang"}),
            json!({"mode": "trickle", "body": b64(b"xy"), "every_ms": 5}),
            json!({"mode": "close"}),
            json!({"mode": "tls"}),
            json!({"mode": "redirect", "location": "http://a.invalid:1/x"}),
        ];
        for v in ok {
            let s = Answer::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(s.mode(), v["mode"]);
        }
        assert_eq!(Answer::from_json(&json!({"mode": "hang"})), Ok(Answer::Hang { content_length: 1000 }));
        let bad = [
            (json!([]), "JSON object"),
            (json!({}), "`mode`"),
            (json!({"mode": "nope"}), "unknown mode"),
            (json!({"mode": "bundle"}), "`body`"),
            (json!({"mode": "bundle", "body": "***"}), "not base64"),
            (json!({"mode": "status"}), "`code` is required"),
            (json!({"mode": "status", "code": 99}), "200..=599"),
            (json!({"mode": "status", "code": 70000}), "200..=599"),
            (json!({"mode": "status", "code": 500, "retry_after": -1}), "`retry_after`"),
            (json!({"mode": "status", "code": 500, "extra": 1}), "unknown key `extra`"),
            (json!({"mode": "body", "body": "", "etag": "a\r\nb"}), "`etag`"),
            (json!({"mode": "redirect", "location": ""}), "`location`"),
            (json!({"mode": "redirect"}), "`location`"),
        ];
        for (v, needle) in bad {
            let e = Answer::from_json(&v).expect_err(&v.to_string()).to_string();
            assert!(e.contains(needle), "{v}: {e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn reads_prefer_wait_and_matches_etags() {
        assert_eq!(prefer_wait("wait=5"), Some(5));
        assert_eq!(prefer_wait("respond-async, wait=7"), Some(7));
        assert_eq!(prefer_wait("handling=lenient; wait=\"3\""), Some(3));
        assert_eq!(prefer_wait("wait=99999"), Some(300));
        assert_eq!(prefer_wait("wait=x"), None);
        assert_eq!(prefer_wait("respond-async"), None);
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("\"b\", W/\"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }

    #[test]
    fn request_heads_are_read_or_refused_never_trusted() {
        let src = Source::start(Answer::Status { code: 500, retry_after: None });
        let raw =
            b"GET /v1/bundles/main?x=1 HTTP/1.1\r\nIf-None-Match: \"x\"\r\nPrefer: wait=2\r\nConnection: close\r\n\r\n";
        let (out, ended) = exchange(src.addr, raw, FIVE_S);
        assert!(out.starts_with(b"HTTP/1.1 500") && ended, "Connection: close is honoured");
        let seen = src.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].path.as_str(), seen[0].if_none_match.as_deref(), seen[0].prefer_wait, seen[0].answered),
            ("/v1/bundles/main?x=1", Some("\"x\""), Some(2), 500)
        );
        let (out, ended) = exchange(src.addr, b"GET / HTTP/1.0\r\n\r\n", FIVE_S);
        assert!(
            out.starts_with(b"HTTP/1.0 500") && ended,
            "HTTP/1.0 closes by default: {:?}",
            String::from_utf8_lossy(&out)
        );
        for raw in [&b"\x16\x03\x01 nonsense\r\n\r\n"[..], b"PUT /_script HTTP/1.1\r\nContent-Length: 12x\r\n\r\n"] {
            let (out, ended) = exchange(src.addr, raw, FIVE_S);
            assert!(
                out.starts_with(b"HTTP/1.1 400") && ended,
                "{:?}: {:?}",
                String::from_utf8_lossy(raw),
                String::from_utf8_lossy(&out)
            );
        }
        let huge = format!("PUT /_script HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        let (out, ended) = exchange(src.addr, huge.as_bytes(), FIVE_S);
        assert!(out.starts_with(b"HTTP/1.1 413") && ended, "{:?}", String::from_utf8_lossy(&out));
        let endless = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(512 * 1024));
        let (out, ended) = exchange(src.addr, endless.as_bytes(), FIVE_S);
        assert!(out.starts_with(b"HTTP/1.1 431") && ended, "{:?}", String::from_utf8_lossy(&out));
        assert_eq!(src.requests().len(), 2, "refused requests are not logged");
    }

    #[test]
    fn serves_a_bundle_with_its_digest_etag_and_304_and_logs_if_none_match() {
        let src = Source::start(unscripted());
        let addr = src.addr;
        let (out, _) = exchange(addr, &get("/v1/bundles/main", ""), FIVE_S);
        assert!(out.starts_with(b"HTTP/1.1 503"), "no script yet: {:?}", String::from_utf8_lossy(&out));
        assert!(put_script(addr, &json!({"mode": "bundle", "body": b64(b"tarball")})).starts_with("HTTP/1.1 200"));
        let etag = sha_etag(b"tarball");
        let (out, _) = exchange(addr, &get("/v1/bundles/main", ""), FIVE_S);
        let (head, body) = split(&out);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains(&format!("etag: {etag}")), "{head}");
        assert_eq!(body, b"tarball");
        let (out, _) = exchange(addr, &get("/v1/bundles/main", &format!("If-None-Match: {etag}\r\n")), FIVE_S);
        let (head, body) = split(&out);
        assert!(head.starts_with("http/1.1 304") && head.contains(&format!("etag: {etag}")), "{head}");
        assert!(body.is_empty());
        let log = log_of(addr, "?since=1");
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[0]["if_none_match"], Value::Null);
        assert_eq!(log[0]["answered"], 200);
        assert_eq!(log[1]["if_none_match"], etag.as_str());
        assert_eq!(log[1]["answered"], 304);
        assert_eq!(src.requests_since(2).len(), 1);
        // Status reports are accepted and not logged as bundle requests.
        let report = b"POST /v1/status HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        assert!(exchange(addr, report, FIVE_S).0.starts_with(b"HTTP/1.1 202"));
        assert_eq!(log_of(addr, "").len(), 3);
    }

    #[test]
    fn a_held_long_poll_is_answered_when_the_script_changes_or_the_wait_ends() {
        let src = Source::start(Answer::Bundle(b"one".to_vec()));
        let addr = src.addr;
        let inm = format!("If-None-Match: {}\r\nPrefer: wait=10\r\n", sha_etag(b"one"));
        let started = Instant::now();
        let held = std::thread::spawn(move || exchange(addr, &get("/v1/bundles/main", &inm), Duration::from_secs(15)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!held.is_finished(), "a long poll for the current bundle is held");
        assert!(src.requests().is_empty(), "a held request is logged once answered");
        assert_eq!(src.set(Answer::Status { code: 502, retry_after: None }), 1);
        let (out, _) = held.join().expect("join");
        assert!(out.starts_with(b"HTTP/1.1 502"), "{:?}", String::from_utf8_lossy(&out));
        assert!(started.elapsed() < FIVE_S, "woken by the change, not the wait");

        src.set(Answer::Bundle(b"two".to_vec()));
        let inm = format!("If-None-Match: {}\r\nPrefer: wait=1\r\n", sha_etag(b"two"));
        let started = Instant::now();
        let (out, _) = exchange(addr, &get("/v1/bundles/main", &inm), FIVE_S);
        assert!(out.starts_with(b"HTTP/1.1 304"), "{:?}", String::from_utf8_lossy(&out));
        assert!(started.elapsed() >= Duration::from_millis(900), "held for the wait: {:?}", started.elapsed());
        let last = src.requests().pop().expect("logged");
        assert!(last.answered_ms >= last.at_ms + 900, "{last:?}");
    }

    #[test]
    fn statuses_bodies_and_redirects_are_answered_as_scripted() {
        let src = Source::start(unscripted());
        let addr = src.addr;
        put_script(addr, &json!({"mode": "status", "code": 429, "retry_after": 2}));
        let (head, body) = split(&exchange(addr, &get("/x", ""), FIVE_S).0);
        assert!(head.starts_with("http/1.1 429") && head.contains("retry-after: 2\r\n"), "{head}");
        assert_eq!(body, b"scripted 429\n");

        put_script(addr, &json!({"mode": "body", "body": b64(b"garbage"), "etag": "\"0000\""}));
        let (head, body) = split(&exchange(addr, &get("/x", "If-None-Match: \"0000\"\r\n"), FIVE_S).0);
        assert!(head.starts_with("http/1.1 200") && head.contains("etag: \"0000\""), "raw bodies ignore ETags: {head}");
        assert_eq!(body, b"garbage");
        src.set(Answer::Body { bytes: b"plain".to_vec(), etag: None });
        let (head, body) = split(&exchange(addr, &get("/x", ""), FIVE_S).0);
        assert!(head.starts_with("http/1.1 200") && !head.contains("etag:"), "{head}");
        assert_eq!(body, b"plain");

        put_script(addr, &json!({"mode": "redirect", "location": "http://a.invalid:1/v1/bundles/main"}));
        let (head, _) = split(&exchange(addr, &get("/x", ""), FIVE_S).0);
        assert!(head.starts_with("http/1.1 307") && head.contains("location: http://a.invalid:1/v1/bundles/main"));

        let bad = b"PUT /_script HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{x}";
        let (head, body) = split(&exchange(addr, bad, FIVE_S).0);
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("not JSON"));
        let (out, _) = exchange(addr, b"NOT HTTP\r\n\r\n", FIVE_S);
        assert!(out.starts_with(b"HTTP/1.1 400"));
        let (head, _) = split(&exchange(addr, b"DELETE /x HTTP/1.1\r\nConnection: close\r\n\r\n", FIVE_S).0);
        assert!(head.starts_with("http/1.1 405") && head.contains("allow: get, post"), "{head}");
        let v: Value = serde_json::from_slice(&split(&exchange(addr, &get("/_script", ""), FIVE_S).0).1).expect("JSON");
        assert_eq!((v["mode"].as_str(), v["generation"].as_u64()), (Some("redirect"), Some(4)));
    }

    #[test]
    fn hangs_trickles_closes_and_speaks_tls_when_told() {
        let src = Source::start(Answer::Hang { content_length: 10 });
        let addr = src.addr;
        let (out, ended) = exchange(addr, &get("/x", ""), Duration::from_millis(500));
        let (head, body) = split(&out);
        assert!(head.starts_with("http/1.1 200") && head.contains("content-length: 10"), "{head}");
        assert!(body.is_empty() && !ended, "headers, then silence");

        src.set(Answer::Trickle { bytes: b"abcd".to_vec(), every: Duration::from_millis(60) });
        let started = Instant::now();
        let (out, ended) = exchange(addr, &get("/x", ""), FIVE_S);
        assert!(ended);
        let (head, body) = split(&out);
        assert!(head.contains("content-length: 4"), "{head}");
        assert_eq!(body, b"abcd");
        assert!(started.elapsed() >= Duration::from_millis(240), "one byte per 60 ms: {:?}", started.elapsed());

        src.set(Answer::Close);
        let (out, ended) = exchange(addr, &get("/x", ""), FIVE_S);
        assert!(out.is_empty() && ended, "{:?}", String::from_utf8_lossy(&out));

        src.set(Answer::Tls);
        let (out, ended) = exchange(addr, &get("/x", ""), FIVE_S);
        assert!(ended);
        assert_eq!(out, TLS_SERVER_HELLO);
        assert_eq!(usize::from(out[3]) << 8 | usize::from(out[4]), out.len() - 5, "a well-formed record");
        assert_eq!(usize::from(out[7]) << 8 | usize::from(out[8]), out.len() - 9, "a well-formed handshake");

        let answered: Vec<u16> = src.requests().iter().map(|e| e.answered).collect();
        assert_eq!(answered, [200, 200, 0, 0]);
    }

    #[test]
    fn a_kept_alive_connection_gets_the_answer_scripted_for_each_request() {
        let src = Source::start(Answer::Bundle(b"b".to_vec()));
        let mut s = std::net::TcpStream::connect(src.addr).expect("connect");
        s.set_read_timeout(Some(FIVE_S)).expect("timeout");
        s.write_all(b"GET /v1/bundles/main HTTP/1.1\r\n\r\n").expect("write");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200") && buf[..n].ends_with(b"\r\n\r\nb"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        src.set(Answer::Tls);
        s.write_all(b"GET /v1/bundles/main HTTP/1.1\r\n\r\n").expect("write");
        let (out, ended) = read_until_closed(&mut s, FIVE_S);
        assert!(ended);
        assert_eq!(out, TLS_SERVER_HELLO);
    }

    #[test]
    fn a_dropped_source_frees_its_port_for_the_next() {
        let src = Source::start(unscripted());
        let port = src.addr.port();
        let mut idle = std::net::TcpStream::connect(src.addr).expect("connect");
        drop(src);
        let (_, ended) = read_until_closed(&mut idle, FIVE_S);
        assert!(ended, "open connections are closed");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens any more");
        let again = Source::start_on(port, Answer::Status { code: 418, retry_after: None });
        assert!(exchange(again.addr, &get("/x", ""), FIVE_S).0.starts_with(b"HTTP/1.1 418"));
        assert_eq!(again.url(), format!("http://127.0.0.1:{port}"));
        assert!(Source::try_start_on(port, unscripted()).is_err(), "the port is taken");
    }
}
