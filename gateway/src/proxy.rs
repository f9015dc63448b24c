//! The request path. Pingora calls these phases in order for every request:
//!
//! 1. [`request_filter`](ProxyHttp::request_filter): take the active snapshot (one `ArcSwap`
//!    load), make the request canonical, then [`authorize`] it: match the route (404 if none),
//!    verify a bearer JWT (401 on failure, before any policy runs), evaluate the route's rule
//!    in-process and apply a deny (its status, reason and response headers). Policy errors and
//!    undefined results deny (fail closed) unless the route says `fail_open`.
//! 2. [`upstream_peer`](ProxyHttp::upstream_peer): round robin among the pool's healthy targets.
//! 3. [`upstream_request_filter`](ProxyHttp::upstream_request_filter): `strip_prefix`, the
//!    decision's headers, `x-forwarded-*`.
//! 4. [`response_filter`](ProxyHttp::response_filter): the decision's response headers.
//! 5. [`fail_to_proxy`](ProxyHttp::fail_to_proxy): an unreachable upstream is a 502.
//! 6. [`logging`](ProxyHttp::logging): metrics, once per request, whatever happened.
//!
//! Nothing here waits on the control plane, a disk, or any network but the upstream.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use policy_bundles::authorize::{self, authorize, Agreement, RequestView, Verdict};
use policy_bundles::snapshot::{EvalError, Request};
use policy_bundles::Decision;

use crate::active::{Active, Gateway};
use crate::canon::{self, Refusal};
use crate::metrics::Outcome;

/// The proxy's phases, with what they need: the active bundle (through the gateway's state),
/// the request rules and limits of the config, the admission gate, metrics and the logs.
pub struct Proxy {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub admission: crate::admission::Admission,
    pub requests: crate::config::RequestRules,
    pub limits: crate::config::Limits,
    /// `shadow_sample`.
    pub shadow_sample: f64,
    pub access_log: Option<crate::access_log::AccessLog>,
    pub decision_logs: Option<Arc<crate::decision_log::DecisionLogs>>,
}

/// Per-request state, alive from the first phase to `logging`.
pub struct Ctx {
    start: Instant,
    /// The request's admission slot, held until the context is dropped after `logging`.
    slot: Option<crate::admission::Slot>,
    active: Option<Arc<Active>>,
    route: Option<usize>,
    outcome: Option<Outcome>,
    /// The allowing decision: its headers go upstream and to the client.
    decision: Option<Arc<Decision>>,
    /// The client's IP as text (empty when not an IP socket): in the input.
    client_ip: String,
    /// A gRPC request (`content-type: application/grpc*`): the gateway's own answers are gRPC
    /// statuses, not JSON bodies.
    grpc: bool,
    /// The request's id (its trace id) and the `traceparent` the upstream gets.
    id: Option<crate::trace::RequestId>,
    /// For the access log: why the gateway answered as it did, the canonical host, the chosen
    /// target and what it answered.
    reason: Option<String>,
    host: String,
    upstream: Option<pingora::protocols::l4::socket::SocketAddr>,
    upstream_status: Option<u16>,
    /// The decision, when it is logged (`decision_logs`): handed to the log as the request ends.
    /// Boxed: the context lives in Pingora's per-request future, copied whole as it starts.
    decision_log: Option<Box<crate::decision_log::Pending>>,
    /// The bundle that handled the request, whatever its outcome (its revision is logged;
    /// `active` is set for a routed request only).
    bundle: Option<Arc<Active>>,
    /// Request body bytes passed on so far (`limits.max_body`).
    body_bytes: u64,
    /// An upgraded WebSocket's server-to-client stream, read for frame boundaries (boxed: only
    /// tunnels have one).
    frames: Option<Box<crate::ws_frames::Frames>>,
    /// The request body, read before the decision on a route with `body` (the rule reads it;
    /// Pingora sends it upstream from its retry buffer).
    body: Option<Bytes>,
    /// An access log is on: only then are the fields above that only it reads filled in.
    logging: bool,
}

/// What the connection under a request is: TLS (with the certificate its SNI chose) or not.
struct Link {
    /// The certificate the connection's SNI chose; None on plaintext.
    tls: Option<Arc<crate::tls::Certificate>>,
}

impl Link {
    fn of(session: &Session) -> Link {
        let conn =
            session.digest().and_then(|d| d.ssl_digest.as_ref()).and_then(|s| s.extension.get::<crate::tls::Conn>());
        Link { tls: conn.map(|c| c.certificate.clone()) }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls.is_some() {
            443
        } else {
            80
        }
    }
}

/// Makes the request canonical in place (`crate::canon`), before routing: the path and host
/// the route table matches, the policy sees and the upstream receives; identity headers
/// (`request_headers.remove`) and header names with `_` removed; forwarding headers replaced
/// unless the peer is a trusted proxy. Returns the host name routes match (`""` for an
/// HTTP/1.0 request without one).
fn canonicalize(
    session: &mut Session,
    bundle: &policy_bundles::Snapshot,
    rules: &crate::config::RequestRules,
    peer: Option<(std::net::IpAddr, &str)>,
    link: &Link,
) -> std::result::Result<String, Refusal> {
    let req = session.req_header_mut();
    canon::method(req.method.as_str())?;
    if let Some(q) = req.uri.query() {
        canon::query(q)?;
    }
    let trusted = peer.is_some_and(|(ip, _)| rules.trusts(ip));
    let headers = HeaderRules { removals: &bundle.header_removals, allowed: &bundle.header_allowed, rules, trusted };
    let seen = Scan::of(&req.headers, &headers)?;
    // HTTP/2's `:authority` is the URI's; HTTP/1.1's absolute form is kept only in the raw target.
    let absolute = match req.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => canon::target_authority(req.raw_path())?,
    };
    let absolute_form = absolute.is_some();
    let http11 = req.version != http::Version::HTTP_10 && req.version != http::Version::HTTP_09;
    let host = canon::host(seen.host.as_slice(), absolute, http11, link.default_port())?;
    // On TLS the host must be one the connection's certificate covers: no fronting one
    // tenant's name through a connection made (SNI) for another's.
    if let (Some(cert), Some(h)) = (&link.tls, &host) {
        if !cert.covers(&h.name) {
            return Err(Refusal::Misdirected);
        }
    }
    let set_host = host.as_ref().filter(|h| !seen.host.is_some_and(|raw| h.is(raw))).map(canon::Host::authority);
    let (doomed_any, real_ip) = (seen.doomed, seen.real_ip);
    let path = canon::path(req.uri.path(), rules.path)?;
    // Origin form, canonical path: also drops an absolute-form target's scheme and authority.
    if matches!(path, std::borrow::Cow::Owned(_)) || absolute_form {
        let target = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let uri = target.parse::<http::Uri>().map_err(|_| Refusal::BadPathChar)?;
        req.set_uri(uri);
    }
    if let Some(authority) = set_host {
        req.insert_header(http::header::HOST, authority).map_err(|_| Refusal::BadHost)?;
    }
    if doomed_any {
        let doomed: Vec<http::HeaderName> =
            req.headers.keys().filter(|n| headers.doomed(n.as_str())).cloned().collect();
        for n in &doomed {
            req.remove_header(n);
        }
    }
    if let Some((_, ip)) = peer {
        forwarding(req, ip, trusted, real_ip, link.scheme());
    }
    Ok(host.map(|h| h.name).unwrap_or_default())
}

/// What one pass over the request's headers found.
struct Scan<'a> {
    host: Option<&'a [u8]>,
    /// Some header must be removed ([`HeaderRules::doomed`]).
    doomed: bool,
    real_ip: bool,
}

impl<'a> Scan<'a> {
    /// Reads every header once. Refuses what has two readings: more than one `Host` or
    /// `Authorization`; more than one `Content-Length`, or one that is not a number; a
    /// `Transfer-Encoding` other than exactly `chunked`, or beside a length (request
    /// smuggling). `Content-Length` beside `Transfer-Encoding` rarely gets here: Pingora
    /// removes the length and closes the connection after the response, as RFC 9112 6.3 says.
    fn of(headers: &'a http::HeaderMap, rules: &HeaderRules) -> std::result::Result<Scan<'a>, Refusal> {
        let mut scan = Scan { host: None, doomed: false, real_ip: false };
        let (mut hosts, mut auths, mut lengths, mut encodings) = (0u8, 0u8, 0u8, 0u8);
        for (name, value) in headers {
            match name.as_str() {
                "host" => {
                    hosts += 1;
                    scan.host = Some(value.as_bytes());
                }
                "authorization" => {
                    auths += 1;
                    // A bundle may keep credentials from its backends: removed before anything reads them.
                    scan.doomed |= rules.removals.iter().any(|r| r == "authorization");
                }
                "content-length" => {
                    lengths += 1;
                    if value.is_empty() || !value.as_bytes().iter().all(u8::is_ascii_digit) {
                        return Err(Refusal::Framing);
                    }
                }
                "transfer-encoding" => {
                    encodings += 1;
                    if !value.as_bytes().eq_ignore_ascii_case(b"chunked") {
                        return Err(Refusal::Framing);
                    }
                }
                n => {
                    scan.real_ip |= n == "x-real-ip";
                    if rules.doomed(n) {
                        if rules.rules.underscores == crate::config::Underscores::Reject && n.contains('_') {
                            return Err(Refusal::UnderscoreHeader);
                        }
                        scan.doomed = true;
                    }
                }
            }
        }
        if hosts > 1 {
            Err(Refusal::DuplicateHost)
        } else if auths > 1 {
            Err(Refusal::DuplicateAuthorization)
        } else if lengths > 1 || encodings > 1 || (lengths > 0 && encodings > 0) {
            Err(Refusal::Framing)
        } else {
            Ok(scan)
        }
    }
}

/// Which client headers never reach the policy or the upstream as sent: the gateway config's
/// rules, the bundle's `request_headers`, and whether the peer is a trusted proxy.
struct HeaderRules<'a> {
    removals: &'a [String],
    allowed: &'a [String],
    rules: &'a crate::config::RequestRules,
    trusted: bool,
}

impl HeaderRules<'_> {
    /// Whether header `n` must go: a name with `_` (unless allowed), one of the bundle's
    /// `request_headers.remove`, a forwarding or client-address claim from a peer that is not a
    /// trusted proxy (the gateway sets its own), or a target or method override from anyone
    /// (`policy_bundles::claims`), unless the bundle's `request_headers.allow` names it.
    fn doomed(&self, n: &str) -> bool {
        let claimed = match policy_bundles::claims::claim(n) {
            None => false,
            Some(claim) => {
                (claim == policy_bundles::claims::Claim::Override || !self.trusted)
                    && !self.allowed.iter().any(|a| a == n)
            }
        };
        claimed
            || (self.rules.underscores != crate::config::Underscores::Allow && n.contains('_'))
            || self.removals.iter().any(|r| r == n)
    }
}

/// `X-Forwarded-For` and the rest, after [`HeaderRules::doomed`] removed a client's copies: from a trusted
/// proxy the peer is appended to `X-Forwarded-For` and `Forwarded` and the proxy's
/// `X-Real-IP` and `X-Forwarded-Proto` are kept; from anyone else they are the gateway's own.
/// A client's `X-Real-IP` is replaced with the peer; none is added where none was sent.
fn forwarding(req: &mut RequestHeader, ip: &str, trusted: bool, real_ip: bool, scheme: &str) {
    let append = |req: &RequestHeader, name: &str, node: &str| -> Option<String> {
        let mut all = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).peekable();
        all.peek()?;
        Some(all.chain([node]).collect::<Vec<_>>().join(", "))
    };
    let xff = if trusted { append(req, "x-forwarded-for", ip) } else { None };
    let _ = req.insert_header("x-forwarded-for", xff.as_deref().unwrap_or(ip));
    if trusted {
        let node = if ip.contains(':') { format!("for=\"[{ip}]\"") } else { format!("for={ip}") };
        if let Some(fwd) = append(req, "forwarded", &node) {
            let _ = req.insert_header("forwarded", fwd);
        }
    } else if real_ip {
        let _ = req.insert_header("x-real-ip", ip);
    }
    if !trusted || !req.headers.contains_key("x-forwarded-proto") {
        let _ = req.insert_header("x-forwarded-proto", scheme);
    }
}

/// How much of a refused body is read and thrown away after a 413, and for how long.
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// After answering before the body was read (a 413), reads and discards what the client is
/// still sending, up to [`LINGER_BYTES`] within [`LINGER_TIME`] (nginx's lingering close): a
/// socket closed with unread data sends a reset, and a client still writing its body then loses
/// the 413 to `connection reset` or `broken pipe`. Past either bound the connection just closes.
async fn linger(session: &mut Session) {
    let drain = async {
        let mut read = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Writes the gateway's own answer (a small JSON body; for gRPC, a gRPC status) and ends the request.
async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    error: &str,
    reason: Option<&str>,
    extra: &[(String, String)],
) -> Result<()> {
    if ctx.logging {
        ctx.reason = reason.map(str::to_owned);
    }
    let id = ctx.id.as_ref().map(crate::trace::RequestId::id).unwrap_or_default();
    let decision_id = ctx.decision_log.as_ref().map(|p| p.decision_id.as_str());
    if ctx.grpc {
        return respond_grpc(session, status, reason.unwrap_or(error), id, decision_id, extra).await;
    }
    let body = match reason {
        Some(r) => serde_json::json!({ "error": error, "reason": r }),
        None => serde_json::json!({ "error": error }),
    };
    let body = Bytes::from(body.to_string());
    let mut resp = ResponseHeader::build(status, Some(5 + extra.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", id)?;
    if let Some(d) = decision_id {
        resp.insert_header("x-decision-id", d)?;
    }
    if status == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    for (k, v) in extra {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Answers with a deny's own body (OPA-Envoy's `body`): `text/plain` unless the decision's
/// headers say otherwise.
async fn respond_body(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: &str,
    extra: &[(String, String)],
) -> Result<()> {
    let id = ctx.id.as_ref().map(crate::trace::RequestId::id).unwrap_or_default();
    let decision_id = ctx.decision_log.as_ref().map(|p| p.decision_id.as_str());
    let body = Bytes::from(body.to_owned());
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", id)?;
    if let Some(d) = decision_id {
        resp.insert_header("x-decision-id", d)?;
    }
    for (k, v) in extra {
        resp.append_header(k.clone(), v.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Answers a gRPC call: a gRPC client reads `grpc-status`, not the HTTP status, so the answer
/// is "trailers-only" (HTTP 200, one header block that ends the stream) with the status the
/// HTTP one maps to and the reason as `grpc-message`.
async fn respond_grpc(
    session: &mut Session,
    status: u16,
    message: &str,
    id: &str,
    decision_id: Option<&str>,
    extra: &[(String, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(6 + extra.len()))?;
    resp.insert_header("x-request-id", id)?;
    if let Some(d) = decision_id {
        resp.insert_header("x-decision-id", d)?;
    }
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", grpc_status(status).to_string())?;
    resp.insert_header("grpc-message", grpc_message(message))?;
    for (k, v) in extra {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    if session.req_header().version != http::Version::HTTP_2 {
        resp.insert_header("content-length", "0")?;
    }
    // Not `write_response_header`: on h2 it never ends the stream with the headers, and a
    // gRPC client reads a status in headers only from a block that does.
    let header = pingora::protocols::http::HttpTask::Header(Box::new(resp), true);
    session.response_duplex_vec(vec![header]).await.map(|_| ())
}

/// gRPC's mapping of HTTP statuses (doc/http-grpc-status-mapping.md), with 401 and 403 as the
/// statuses they mean: UNAUTHENTICATED and PERMISSION_DENIED.
fn grpc_status(http: u16) -> u8 {
    match http {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        413 => 8,              // RESOURCE_EXHAUSTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%`.
fn grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An IP address as text, as `Display` writes it; IPv4 by hand (the formatting machinery cost
/// about 1,300 instructions a request).
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push((b'0' + octet / 100) as char);
        }
        if octet >= 10 {
            out.push((b'0' + octet / 10 % 10) as char);
        }
        out.push((b'0' + octet % 10) as char);
    }
    out
}

/// What the decision log will need of this decision (the event is built off the request path).
fn pending(
    session: &Session,
    ctx: &Ctx,
    active: &Arc<Active>,
    route: usize,
    verdict: &Verdict,
    took: std::time::Duration,
    jwt: Option<Arc<policy_bundles::jwt::Verified>>,
) -> crate::decision_log::Pending {
    use crate::decision_log::Answer;
    let answer = match verdict {
        Verdict::Allow(d, how) | Verdict::Deny(d, how) => {
            Answer::of(Ok((d, matches!(how, policy_bundles::snapshot::CacheOutcome::Hit))))
        }
        Verdict::FailedOpen(e) | Verdict::Failed(e) => Answer::of(Err(e)),
    };
    let req = session.req_header();
    crate::decision_log::Pending {
        decision_id: crate::decision_log::decision_id(),
        trace_id: crate::decision_log::ShortId::new(ctx.id.as_ref().map_or("", crate::trace::RequestId::id)),
        at: std::time::SystemTime::now(),
        bundle: active.clone(),
        route,
        method: req.method.clone(),
        uri: req.uri.clone(),
        headers: req.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        host: ctx.host.clone(),
        scheme: Link::of(session).scheme(),
        client_ip: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        jwt,
        answer,
        shadow: None,
        eval: took,
        status: 0,
        extra: {
            let r = &active.snapshot.routes[route];
            (r.format == policy_bundles::input::InputFormat::Envoy || r.body.is_some()).then(|| {
                Box::new(crate::decision_log::Extra {
                    client_port: session.client_addr().and_then(|a| a.as_inet()).map_or(0, |a| a.port()),
                    local: session.server_addr().and_then(|a| a.as_inet()).copied(),
                    protocol: protocol(session),
                    body: ctx.body.clone(),
                })
            })
        },
    }
}

/// The request's protocol as Envoy names it in `attributes.request.http.protocol`.
fn protocol(session: &Session) -> &'static str {
    if session.is_http2() {
        "HTTP/2"
    } else if session.req_header().version == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

impl Proxy {
    /// On a route with `body`, reads the request body before the decision, up to the route's
    /// `max_bytes` (413 past it, or when `Content-Length` says so). Pingora keeps what was read
    /// in its retry buffer and sends it upstream from there. `Some(true)` when it answered.
    async fn read_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        active: &Active,
        host: &str,
    ) -> Result<Option<bool>> {
        let req = session.req_header();
        let path = match self.requests.path.params {
            canon::PathParams::Keep => canon::without_params(req.uri.path()),
            _ => std::borrow::Cow::Borrowed(req.uri.path()),
        };
        let route = active.snapshot.table.lookup(host, &path, req.method.as_str());
        let Some(max) = route.and_then(|r| active.snapshot.routes[r].body) else { return Ok(None) };
        let too_large = |ctx: &mut Ctx| {
            ctx.outcome = Some(Outcome::Refused);
            format!("the request body is larger than {max} bytes (the route's body.max_bytes)")
        };
        let declared = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        if declared.and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > max) {
            let why = too_large(ctx);
            respond(session, ctx, 413, "payload too large", Some(&why), &[]).await?;
            linger(session).await;
            return Ok(Some(true));
        }
        session.enable_retry_buffering();
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > max as usize {
                let why = too_large(ctx);
                respond(session, ctx, 413, "payload too large", Some(&why), &[]).await?;
                linger(session).await;
                return Ok(Some(true));
            }
            body.extend_from_slice(&chunk);
        }
        ctx.body = Some(Bytes::from(body));
        Ok(None)
    }

    /// Answers a request refused for its form (`crate::canon::Refusal`): 400, 421, or 401 for a
    /// credential in a place the gateway does not verify. Counted by reason, and as
    /// `decision="refused"` (no route's counters: no route's rule was asked).
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Result<()> {
        ctx.outcome = Some(Outcome::Refused);
        self.metrics.count_refusal(r);
        tracing::debug!(reason = r.reason(), "request refused");
        let error = match r.status() {
            421 => "misdirected request",
            401 => "invalid credentials",
            _ => "bad request",
        };
        respond(session, ctx, r.status(), error, Some(r.message()), &[]).await
    }

    /// Whether this request's route has a shadow rule that is asked this time (`shadow_sample`).
    fn shadows(&self, active: &Active, route: usize) -> bool {
        let sample = self.shadow_sample;
        active.snapshot.routes.get(route).is_some_and(|r| r.shadow.is_some())
            && (sample >= 1.0 || (sample > 0.0 && rand::random::<f64>() < sample))
    }

    /// Answers what [`authorize`] made of the request (404, 401, a deny, a policy failure) or
    /// keeps the allowing decision for the later phases; `Ok(false)` to proxy the request.
    async fn carry_out(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        active: Arc<Active>,
        outcome: authorize::Outcome,
        shadow: Option<Result<Arc<Decision>, EvalError>>,
    ) -> Result<bool> {
        let (route_ix, verdict, took, jwt) = match outcome {
            authorize::Outcome::NoRoute => {
                ctx.outcome = Some(Outcome::NoRoute);
                respond(session, ctx, 404, "no route matches this request", None, &[]).await?;
                return Ok(true);
            }
            authorize::Outcome::Refused { route, refusal } => {
                // The route is named in the access log; `active` stays unset, so the request is
                // counted as refused rather than as one of the route's decisions.
                ctx.route = Some(route);
                self.refuse(session, ctx, refusal).await?;
                return Ok(true);
            }
            authorize::Outcome::Unauthenticated { route, error } => {
                ctx.route = Some(route);
                ctx.outcome = Some(Outcome::Unauthenticated);
                if let Some(r) = error.refusal() {
                    self.metrics.count_refusal(r);
                }
                tracing::debug!(route = %active.snapshot.routes[route].name, error = %error, "credentials refused");
                respond(session, ctx, 401, "invalid bearer token", Some(&error.to_string()), &[]).await?;
                ctx.active = Some(active);
                return Ok(true);
            }
            authorize::Outcome::Evaluated { route, verdict, took, jwt } => (route, verdict, took, jwt),
        };
        ctx.route = Some(route_ix);
        self.metrics.policy_eval_duration.observe(took.as_secs_f64());
        let route = &active.snapshot.routes[route_ix];
        let shadow = shadow.map(|s| {
            let agreement = Agreement::of(&verdict, &s);
            self.metrics.shadow.with_label_values(&[route.name.as_str(), agreement.label()]).inc();
            (s, agreement)
        });
        if let Some(logs) = self.decision_logs.as_deref() {
            // A shadow rule's disagreement is always logged, with both answers.
            let disagrees = shadow.as_ref().is_some_and(|(_, a)| *a != Agreement::Same);
            if disagrees || logs.wants(matches!(verdict, Verdict::Allow(..))) {
                let shadow = shadow.zip(route.shadow).map(|((s, a), rule)| crate::decision_log::ShadowAnswer {
                    rule,
                    answer: crate::decision_log::Answer::of(s.as_ref().map(|d| (d, false))),
                    agreement: a.label(),
                });
                let mut p = pending(session, ctx, &active, route_ix, &verdict, took, jwt);
                p.shadow = shadow;
                ctx.decision_log = Some(Box::new(p));
            }
        }
        let decision = match verdict {
            Verdict::Allow(d, how) => {
                self.metrics.count_decision(how);
                d
            }
            Verdict::Deny(d, how) => {
                self.metrics.count_decision(how);
                ctx.outcome = Some(Outcome::Deny);
                match &d.body {
                    Some(body) if !ctx.grpc => respond_body(session, ctx, d.status, body, &d.response_headers).await?,
                    _ => respond(session, ctx, d.status, "forbidden", d.reason.as_deref(), &d.response_headers).await?,
                }
                ctx.active = Some(active);
                return Ok(true);
            }
            Verdict::FailedOpen(e) => {
                tracing::warn!(route = %route.name, error = %e, "policy failed; route is fail_open, allowing");
                Arc::new(Decision { allow: true, ..Decision::default() })
            }
            Verdict::Failed(e) => {
                tracing::warn!(route = %route.name, error = %e, "policy failed; denying (fail closed)");
                ctx.outcome = Some(Outcome::Error);
                respond(session, ctx, 403, "forbidden", Some(authorize::error_reason(&e)), &[]).await?;
                ctx.active = Some(active);
                return Ok(true);
            }
        };
        ctx.outcome = Some(Outcome::Allow);
        ctx.decision = Some(decision);
        ctx.active = Some(active);
        Ok(false)
    }
}

/// The access-log line of a request that has been answered.
fn access_entry(
    session: &Session,
    ctx: &mut Ctx,
    outcome: Outcome,
    status: u16,
    took: std::time::Duration,
) -> crate::access_log::Entry {
    let req = session.req_header();
    crate::access_log::Entry {
        at: std::time::SystemTime::now() - took,
        request_id: ctx.id.take().map(crate::trace::RequestId::into_id).unwrap_or_default(),
        client_ip: std::mem::take(&mut ctx.client_ip),
        method: req.method.clone(),
        path: req.uri.path().to_owned(),
        host: std::mem::take(&mut ctx.host),
        bundle: ctx.bundle.take(),
        route: ctx.route,
        status,
        decision: outcome.label(),
        reason: ctx.reason.take(),
        upstream: ctx.upstream.as_ref().and_then(|a| a.as_inet()).copied(),
        upstream_status: ctx.upstream_status,
        duration: took,
        bytes_in: session.body_bytes_read(),
        bytes_out: session.body_bytes_sent(),
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Box<Ctx>;

    /// No downstream modules. Pingora's default adds a response-compression module, disabled,
    /// that still costs a context per request; the gateway does not compress.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx {
            start: Instant::now(),
            slot: None,
            active: None,
            route: None,
            outcome: None,
            decision: None,
            client_ip: String::new(),
            grpc: false,
            id: None,
            reason: None,
            host: String::new(),
            upstream: None,
            upstream_status: None,
            bundle: None,
            decision_log: None,
            body_bytes: 0,
            frames: None,
            body: None,
            logging: false,
        })
    }

    /// Routes, authenticates and authorizes ([`authorize`]). Returns `Ok(true)` when it has
    /// answered the request itself (404, 401, a deny, 503 with no bundle), `Ok(false)` to proxy it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        let headers = &session.req_header().headers;
        ctx.grpc =
            headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        ctx.id = Some(crate::trace::RequestId::of(headers.get("traceparent").map(|v| v.as_bytes())));
        ctx.logging = self.access_log.as_ref().is_some();
        match self.admission.admit().await {
            Some(slot) => ctx.slot = Some(slot),
            None => {
                ctx.outcome = Some(Outcome::Shed);
                let retry = [("retry-after".to_string(), "1".to_string())];
                respond(session, ctx, 503, "overloaded: the gateway is at its in-flight limit", None, &retry).await?;
                return Ok(true);
            }
        }
        let max_body = self.limits.max_body;
        let declared = session.req_header().headers.get(http::header::CONTENT_LENGTH);
        if declared.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > max_body) {
            ctx.outcome = Some(Outcome::Refused);
            let why = format!("the request body is larger than {max_body} bytes (limits.max_body)");
            respond(session, ctx, 413, "payload too large", Some(&why), &[]).await?;
            linger(session).await;
            return Ok(true);
        }
        let Some(active) = self.gateway.active() else {
            ctx.outcome = Some(Outcome::Unavailable);
            respond(session, ctx, 503, "no policy bundle is active yet", None, &[]).await?;
            return Ok(true);
        };
        if ctx.logging {
            ctx.bundle = Some(active.clone());
        }
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        ctx.client_ip = client_ip.map(ip_text).unwrap_or_default();
        let peer = client_ip.map(|ip| (ip, ctx.client_ip.as_str()));
        let link = Link::of(session);
        let scheme = link.scheme();
        let rules = &self.requests;
        let host = match canonicalize(session, &active.snapshot, rules, peer, &link) {
            Ok(h) => h,
            Err(r) => {
                self.refuse(session, ctx, r).await?;
                return Ok(true);
            }
        };
        if ctx.logging || self.decision_logs.as_deref().is_some() {
            ctx.host.clone_from(&host);
        }
        if active.snapshot.reads_bodies() {
            if let Some(answered) = self.read_body(session, ctx, &active, &host).await? {
                return Ok(answered);
            }
        }
        let envoy = active.snapshot.has_envoy_routes();
        let client_port =
            if envoy { session.client_addr().and_then(|a| a.as_inet()).map_or(0, |a| a.port()) } else { 0 };
        let local = if envoy {
            session.server_addr().and_then(|a| a.as_inet()).map(|a| (a.ip().to_string(), a.port()))
        } else {
            None
        };
        let protocol = if envoy { protocol(session) } else { "" };
        let req = session.req_header();
        let client_ip = ctx.client_ip.as_str();
        let request_id = ctx.id.as_ref().map_or("", crate::trace::RequestId::id);
        let body = ctx.body.as_deref();
        // Under `path_params: keep` routes and the policy see the path without its parameters.
        let path = match rules.path.params {
            canon::PathParams::Keep => canon::without_params(req.uri.path()),
            _ => std::borrow::Cow::Borrowed(req.uri.path()),
        };
        let view = || RequestView {
            parts: Request {
                method: req.method.as_str(),
                path: &path,
                query: req.uri.query(),
                host: &host,
                scheme,
                client_ip,
                body,
                content_type: req.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                conn: policy_bundles::input::Connection {
                    client_port,
                    destination: local.as_ref().map(|(ip, port)| (ip.as_str(), *port)),
                    id: request_id,
                    protocol,
                },
            },
            authorization: req.headers.get(http::header::AUTHORIZATION).map(http::HeaderValue::as_bytes),
            headers: req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        };
        let outcome = authorize(&active.snapshot, view());
        // The route's shadow rule, on the same request, before anything is answered (sampled by
        // `shadow_sample`); its answer is counted and logged, never enforced.
        let shadow = match &outcome {
            authorize::Outcome::Evaluated { route, jwt, .. } if self.shadows(&active, *route) => {
                authorize::shadow(&active.snapshot, *route, view(), jwt.as_deref())
            }
            _ => None,
        };
        self.carry_out(session, ctx, active, outcome, shadow).await
    }

    /// Picks a healthy target of the route's upstream, round robin.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Box<Ctx>) -> Result<Box<HttpPeer>> {
        let (Some(active), Some(route_ix)) = (&ctx.active, ctx.route) else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen before upstream_peer");
        };
        let pool = &active.pools[active.snapshot.routes[route_ix].upstream];
        let Some(target) = pool.select() else {
            return Error::e_explain(ErrorType::ConnectNoRoute, format!("upstream `{}` has no target", pool.name));
        };
        ctx.upstream = Some(target.backend.addr.clone());
        Ok(Box::new(target.peer.clone()))
    }

    /// Counts the request body as it goes upstream; past `limits.max_body` (a chunked body
    /// that did not say its length) the request fails with 413. The bytes of an upgraded
    /// connection (a WebSocket) are no request body: they count against
    /// `limits.tunnel_max_bytes` instead, past which the tunnel is closed ([`TUNNEL_LIMIT`]).
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if session.was_upgraded() {
                let max = self.limits.tunnel_max_bytes;
                if max > 0 && ctx.body_bytes > max {
                    return Error::e_explain(TUNNEL_LIMIT, format!("tunnel past {max} bytes"));
                }
                return Ok(());
            }
            let max = self.limits.max_body;
            if ctx.body_bytes > max {
                return Error::e_explain(ErrorType::HTTPStatus(413), format!("request body past {max} bytes"));
            }
        }
        Ok(())
    }

    /// Rewrites the request for the upstream: prefix stripping and the decision's headers.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let (Some(active), Some(route_ix)) = (&ctx.active, ctx.route) {
            if let Some(prefix) = &active.snapshot.routes[route_ix].strip {
                let rest = without_prefix(upstream_request.uri.path(), prefix);
                let rest = if rest.is_empty() { "/" } else { rest };
                let new = match upstream_request.uri.query() {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.to_owned(),
                };
                let uri = new.parse::<http::Uri>().or_err(ErrorType::InternalError, "rewriting the path")?;
                upstream_request.set_uri(uri);
            }
        }
        if let Some(d) = &ctx.decision {
            for name in &d.remove_headers {
                upstream_request.remove_header(name.as_str());
            }
            for (k, v) in &d.headers {
                upstream_request.insert_header(k.clone(), v.as_str())?;
            }
            if !d.query_set.is_empty() || !d.query_remove.is_empty() {
                let uri = with_query(&upstream_request.uri, &d.query_set, &d.query_remove)
                    .or_err(ErrorType::InternalError, "rewriting the query")?;
                upstream_request.set_uri(uri);
            }
        }
        if let Some(id) = &ctx.id {
            upstream_request.insert_header("traceparent", id.traceparent())?;
            upstream_request.insert_header("x-request-id", id.id())?;
        }
        // The decision id is the gateway's: a client's own is replaced, or removed when this
        // decision is not logged, so the backend never records a forged one.
        match &ctx.decision_log {
            Some(p) => upstream_request.insert_header("x-decision-id", p.decision_id.as_str())?,
            None => {
                upstream_request.remove_header("x-decision-id");
            }
        }
        Ok(())
    }

    /// Reads an upgraded WebSocket's server-to-client bytes for frame boundaries
    /// ([`crate::ws_frames`]), so that a close frame of the gateway's own never lands inside one
    /// of the upstream's. Other responses pass untouched.
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(b), true) = (body.as_ref(), session.was_upgraded()) {
            ctx.frames.get_or_insert_with(Default::default).feed(b);
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        if let Some(id) = &ctx.id {
            resp.insert_header("x-request-id", id.id())?;
        }
        if let Some(d) = &ctx.decision {
            for (k, v) in &d.response_headers {
                resp.insert_header(k.clone(), v.as_str())?;
            }
        }
        Ok(())
    }

    /// Answers a failed proxy attempt: 502 (JSON) when the upstream could not be reached. Once a
    /// response head has gone out (a 101 included) nothing HTTP is written: a WebSocket tunnel
    /// is closed with a close frame ([`close_tunnel`]), anything else just closed.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Box<Ctx>) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                    ErrorType::ConnectNoRoute => 502,
                    _ => 500,
                },
            },
        };
        if code == 502 {
            self.metrics.upstream_errors.inc();
            if e.esource() == &ErrorSource::Upstream
                && matches!(
                    e.etype(),
                    ErrorType::TLSHandshakeFailure | ErrorType::TLSHandshakeTimedout | ErrorType::InvalidCert
                )
            {
                self.metrics.upstream_tls_errors.inc();
            }
        }
        if let Some(sent) = session.response_written().map(|r| r.status.as_u16()) {
            if session.was_upgraded() && ctx.frames.as_ref().is_none_or(|f| f.at_boundary()) {
                close_tunnel(session, e).await;
            }
            return FailToProxy { error_code: sent, can_reuse_downstream: false };
        }
        if code > 0 {
            let msg = if code == 502 { "upstream unavailable" } else { "request failed" };
            if let Err(err) = respond(session, ctx, code, msg, None, &[]).await {
                tracing::debug!(error = %err, "cannot send the error response");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// Counts the request; runs once for every request, answered here or proxied.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        let m = &self.metrics;
        let took = ctx.start.elapsed();
        m.request_duration.observe(took.as_secs_f64());
        let outcome = ctx.outcome.unwrap_or(Outcome::Unavailable);
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        match (&ctx.active, ctx.route) {
            (Some(active), Some(ix)) => active.counters[ix].inc(outcome),
            _ => m.count_unrouted(outcome),
        }
        if let Some(active) = &ctx.active {
            active.served.observe(outcome, status, took);
        }
        if let (Some(logs), Some(mut pending)) = (self.decision_logs.as_deref(), ctx.decision_log.take()) {
            pending.status = status;
            logs.submit(*pending);
        }
        if let Some(log) = self.access_log.as_ref() {
            log.log(access_entry(session, ctx, outcome, status, took));
        }
        end_of_response(session, self.limits.keepalive_timeout);
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                method = %session.req_header().method,
                path = %session.req_header().uri.path(),
                status,
                decision = outcome.label(),
                error = e.map(|e| e.to_string()),
                "request"
            );
        }
    }
}

/// The error a tunnel past `limits.tunnel_max_bytes` fails with.
const TUNNEL_LIMIT: ErrorType = ErrorType::Custom("tunnel_max_bytes");

/// Closes a failed WebSocket tunnel the way its client understands: a close frame (RFC 6455
/// 5.5.1, unmasked from the server side) with 1009 "message too big" past
/// `limits.tunnel_max_bytes`, 1011 "internal error" when the upstream side failed. Called only
/// between two of the upstream's frames (`ws_frames`); a tunnel of another protocol, or one cut
/// inside a frame, is closed without a word.
async fn close_tunnel(session: &mut Session, e: &Error) {
    let websocket = session
        .req_header()
        .headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return;
    }
    let (code, reason): (u16, &[u8]) =
        if e.etype() == &TUNNEL_LIMIT { (1009, b"tunnel byte limit") } else { (1011, b"upstream failed") };
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    if let Err(err) = session.write_response_body(Some(Bytes::from(frame)), true).await {
        tracing::debug!(error = %err, "cannot send the WebSocket close frame");
    }
}

/// `path` without the route's `strip_prefix`. The route table matched the prefix on whole
/// segments; under `path_params: keep` those segments may carry parameters (`/orders;v=1/7`
/// for the prefix `/orders`), and are then dropped by count, parameters and all.
fn without_prefix<'p>(path: &'p str, prefix: &str) -> &'p str {
    match path.strip_prefix(prefix) {
        Some(rest) if !path.contains(';') => rest,
        _ => {
            let segments = prefix.split('/').filter(|s| !s.is_empty()).count();
            path.match_indices('/').nth(segments).map_or("", |(i, _)| &path[i..])
        }
    }
}

/// The URI with the decision's query changes: parameters named in `remove` dropped, those in
/// `set` replaced (every earlier value of the name goes) and appended, percent-encoded.
fn with_query(
    uri: &http::Uri,
    set: &[(String, Vec<String>)],
    remove: &[String],
) -> std::result::Result<http::Uri, http::uri::InvalidUri> {
    let replaced = |name: &str| remove.iter().any(|r| r == name) || set.iter().any(|(k, _)| k == name);
    let mut out = uri.path().to_owned();
    let mut sep = '?';
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !replaced(&policy_bundles::input::decode(name)) {
            out.push(sep);
            out.push_str(pair);
            sep = '&';
        }
    }
    for (k, values) in set {
        for v in values {
            out.push(sep);
            out.push_str(&query_escape(k));
            out.push('=');
            out.push_str(&query_escape(v));
            sep = '&';
        }
    }
    out.parse()
}

/// Percent-encodes everything but the unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Keep-alive after a response: a connection whose request body was not read to its end is
/// closed (what is left of the body must not be read as the next request's head), and the
/// guard of an HTTP/1 connection starts its `keepalive_timeout` wait for the next head.
fn end_of_response(session: &mut Session, keepalive: std::time::Duration) {
    if session.as_downstream().get_keepalive().is_none() {
        return;
    }
    if keepalive.is_zero() || !session.as_downstream_mut().is_body_done() {
        session.as_downstream_mut().set_keepalive(None);
        return;
    }
    if keepalive.as_secs() != 60 {
        // Pingora's own bound on each idle read (60 s unless told), kept at ours or beyond.
        session.as_downstream_mut().set_keepalive(Some(keepalive.as_secs().max(1)));
    }
    if let Some(guard) = session.as_downstream().stream().and_then(crate::connections::Guarded::of) {
        guard.response_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_stripped_by_whole_segments_parameters_and_all() {
        assert_eq!(without_prefix("/orders/7", "/orders"), "/7");
        assert_eq!(without_prefix("/orders", "/orders"), "");
        assert_eq!(without_prefix("/orders;v=1/7", "/orders"), "/7");
        assert_eq!(without_prefix("/api;x/v1;y/items", "/api/v1"), "/items");
        assert_eq!(without_prefix("/orders;v=1", "/orders"), "");
    }

    #[test]
    fn ip_text_writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.0.100.9",
            "192.168.1.100",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("an IP");
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in (0..=u32::MAX).step_by(7_919_993) {
            let ip = std::net::IpAddr::V4(n.into());
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
