//! The request path. Pingora calls these phases in order for every request:
//!
//! 1. [`request_filter`](ProxyHttp::request_filter): take the active snapshot (one `ArcSwap`
//!    load), match the route (404 if none), verify a bearer JWT (401 on failure, before any
//!    policy runs), evaluate the route's rule in-process and apply a deny (its status, reason
//!    and response headers). Policy errors and undefined results deny (fail closed) unless the
//!    route says `fail_open`.
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
use policy_bundles::jwt::Verified;
use policy_bundles::snapshot::EvalError;
use policy_bundles::Decision;

use crate::canon::{self, Refusal};
use crate::metrics::Outcome;
use crate::state::{Active, Gateway};
use policy_bundles::input;

pub struct Proxy {
    pub gateway: Arc<Gateway>,
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
}

/// Makes the request canonical in place (`crate::canon`), before routing: the path and host
/// the route table matches, the policy sees and the upstream receives; identity headers
/// (`request_headers.remove`) and header names with `_` removed; forwarding headers replaced
/// unless the peer is a trusted proxy. Returns the host name routes match (`""` for an
/// HTTP/1.0 request without one).
fn canonicalize(
    session: &mut Session,
    removals: &[String],
    rules: &crate::config::RequestRules,
    client_ip: Option<std::net::IpAddr>,
) -> std::result::Result<String, Refusal> {
    let req = session.req_header_mut();
    framing(&req.headers)?;
    if req.headers.get_all(http::header::AUTHORIZATION).iter().nth(1).is_some() {
        return Err(Refusal::DuplicateAuthorization);
    }
    // HTTP/2's `:authority` is the URI's; HTTP/1.1's absolute form is kept only in the raw target.
    let absolute = match req.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => canon::target_authority(req.raw_path())?,
    };
    let absolute_form = absolute.is_some();
    let host = {
        let values: Vec<&[u8]> = req.headers.get_all(http::header::HOST).iter().map(|v| v.as_bytes()).collect();
        let http11 = req.version != http::Version::HTTP_10 && req.version != http::Version::HTTP_09;
        canon::host(&values, absolute, http11, 80)?
    };
    let path = canon::path(req.uri.path(), rules.escaped_slashes)?;
    // Origin form, canonical path: also drops an absolute-form target's scheme and authority.
    if matches!(path, std::borrow::Cow::Owned(_)) || absolute_form {
        let target = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let uri = target.parse::<http::Uri>().map_err(|_| Refusal::BadPathChar)?;
        req.set_uri(uri);
    }
    if let Some(h) = &host {
        if req.headers.get(http::header::HOST).map(|v| v.as_bytes()) != Some(h.authority.as_bytes()) {
            req.insert_header(http::header::HOST, h.authority.as_str()).map_err(|_| Refusal::BadHost)?;
        }
    }
    if rules.underscores != crate::config::Underscores::Allow {
        let underscored: Vec<http::HeaderName> =
            req.headers.keys().filter(|n| n.as_str().contains('_')).cloned().collect();
        if !underscored.is_empty() && rules.underscores == crate::config::Underscores::Reject {
            return Err(Refusal::UnderscoreHeader);
        }
        for n in &underscored {
            req.remove_header(n);
        }
    }
    for n in removals {
        if req.headers.contains_key(n.as_str()) {
            req.remove_header(n.as_str());
        }
    }
    forwarding(req, rules, client_ip);
    Ok(host.map(|h| h.name).unwrap_or_default())
}

/// Refuses requests whose body length has two readings (request smuggling): more than one
/// `Content-Length` value, or one that is not a number; `Transfer-Encoding` beside
/// `Content-Length`; a `Transfer-Encoding` other than exactly `chunked`.
fn framing(headers: &http::HeaderMap) -> std::result::Result<(), Refusal> {
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(Refusal::Framing);
    }
    if let Some(l) = length {
        if l.is_empty() || !l.as_bytes().iter().all(u8::is_ascii_digit) {
            return Err(Refusal::Framing);
        }
    }
    let mut te = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(t) = te.next() {
        if length.is_some() || te.next().is_some() || !t.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::Framing);
        }
    }
    Ok(())
}

/// `X-Forwarded-For`, `X-Real-IP`, `Forwarded`, `X-Forwarded-Proto`: from a trusted proxy,
/// the client's address is appended to what the proxy says; from anyone else, what the
/// client says is replaced, never appended to.
fn forwarding(req: &mut RequestHeader, rules: &crate::config::RequestRules, client_ip: Option<std::net::IpAddr>) {
    let trusted = client_ip.is_some_and(|ip| rules.trusts(ip));
    let ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let joined = |req: &RequestHeader, name: &str| -> Option<String> {
        let all: Vec<&str> = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!all.is_empty()).then(|| all.join(", "))
    };
    let (xff, fwd) = if trusted { (joined(req, "x-forwarded-for"), joined(req, "forwarded")) } else { (None, None) };
    if !trusted {
        req.remove_header("x-real-ip");
        req.remove_header("forwarded");
        req.remove_header("x-forwarded-proto");
        req.remove_header("x-forwarded-host");
    }
    if ip.is_empty() {
        req.remove_header("x-forwarded-for");
    } else {
        let xff = match xff {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        let _ = req.insert_header("x-forwarded-for", xff);
        if let Some(prev) = fwd {
            let node = if ip.contains(':') { format!("for=\"[{ip}]\"") } else { format!("for={ip}") };
            let _ = req.insert_header("forwarded", format!("{prev}, {node}"));
        }
        if req.headers.get("x-real-ip").is_none() {
            let _ = req.insert_header("x-real-ip", ip.as_str());
        }
    }
    if req.headers.get("x-forwarded-proto").is_none() {
        let _ = req.insert_header("x-forwarded-proto", "http");
    }
}

/// Writes a small JSON response and ends the request.
async fn respond(
    session: &mut Session,
    status: u16,
    error: &str,
    reason: Option<&str>,
    extra: &[(String, String)],
) -> Result<()> {
    let body = match reason {
        Some(r) => serde_json::json!({ "error": error, "reason": r }),
        None => serde_json::json!({ "error": error }),
    };
    let body = Bytes::from(body.to_string());
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if status == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    for (k, v) in extra {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

fn bearer(session: &Session) -> Option<&str> {
    let v = session.req_header().headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn error_reason(e: &EvalError) -> &'static str {
    match e {
        EvalError::Decision(policy_bundles::decision::DecisionError::Undefined) => "policy result undefined",
        _ => "policy error",
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    /// No downstream modules. Pingora's default adds a response-compression module, disabled,
    /// that still costs a context per request; the gateway does not compress.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            slot: None,
            active: None,
            route: None,
            outcome: None,
            decision: None,
            client_ip: String::new(),
        }
    }

    /// Routes, authenticates and authorizes. Returns `Ok(true)` when it has answered the
    /// request itself (404, 401, a deny, 503 with no bundle), `Ok(false)` to proxy it.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.gateway.admission.admit().await {
            Some(slot) => ctx.slot = Some(slot),
            None => {
                ctx.outcome = Some(Outcome::Shed);
                let retry = [("retry-after".to_string(), "1".to_string())];
                respond(session, 503, "overloaded: the gateway is at its in-flight limit", None, &retry).await?;
                return Ok(true);
            }
        }
        let Some(active) = self.gateway.active.load_full() else {
            ctx.outcome = Some(Outcome::Unavailable);
            respond(session, 503, "no policy bundle is active yet", None, &[]).await?;
            return Ok(true);
        };
        let client_ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let host =
            match canonicalize(session, &active.snapshot.header_removals, &self.gateway.config.requests, client_ip) {
                Ok(h) => h,
                Err(r) => {
                    ctx.outcome = Some(Outcome::Refused);
                    self.gateway.metrics.count_refusal(r);
                    tracing::debug!(reason = r.reason(), "request refused before routing");
                    respond(session, 400, "bad request", Some(r.message()), &[]).await?;
                    return Ok(true);
                }
            };
        ctx.client_ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let req = session.req_header();
        let path = req.uri.path();
        let Some(route_ix) = active.snapshot.table.lookup(&host, path, req.method.as_str()) else {
            ctx.outcome = Some(Outcome::NoRoute);
            respond(session, 404, "no route matches this request", None, &[]).await?;
            return Ok(true);
        };
        ctx.route = Some(route_ix);
        let route = &active.snapshot.routes[route_ix];

        let verified: Option<Arc<Verified>> = match bearer(session) {
            None => None,
            Some(token) => {
                let result = match &active.snapshot.jwt {
                    Some(roots) => roots.verify_cached(token),
                    None => Err(policy_bundles::jwt::JwtError::UnknownIssuer),
                };
                match result {
                    Ok(v) => Some(v),
                    Err(e) => {
                        ctx.outcome = Some(Outcome::Unauthenticated);
                        tracing::debug!(route = %route.name, error = %e, "bearer token refused");
                        respond(session, 401, "invalid bearer token", Some(&e.to_string()), &[]).await?;
                        ctx.active = Some(active);
                        return Ok(true);
                    }
                }
            }
        };

        let eval_start = Instant::now();
        let req = session.req_header();
        let jwt = verified.as_deref().map(|v| (v.issuer.as_str(), &v.claims_value));
        let request = policy_bundles::snapshot::Request {
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query(),
            host: &host,
            scheme: "http",
            client_ip: &ctx.client_ip,
        };
        // Only what the rule can read goes into its input (`policy_bundles::input::Needs`); the
        // cache key is read from the request, and the input is built only if the rule must run.
        let result = active.snapshot.decide_request(
            route.policy,
            &route.name,
            request,
            |needs| {
                input::headers(
                    req.headers
                        .iter()
                        .filter(|(n, _)| needs.header(n.as_str()))
                        .map(|(n, v)| (n.as_str(), v.as_bytes())),
                )
            },
            jwt,
        );
        self.gateway.metrics.policy_eval_duration.observe(eval_start.elapsed().as_secs_f64());

        let decision = match result {
            Ok((d, how)) => {
                self.gateway.metrics.count_decision(how);
                d
            }
            Err(e) if route.fail_open => {
                tracing::warn!(route = %route.name, error = %e, "policy failed; route is fail_open, allowing");
                Arc::new(Decision { allow: true, ..Decision::default() })
            }
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "policy failed; denying (fail closed)");
                ctx.outcome = Some(Outcome::Error);
                respond(session, 403, "forbidden", Some(error_reason(&e)), &[]).await?;
                ctx.active = Some(active);
                return Ok(true);
            }
        };
        if !decision.allow {
            ctx.outcome = Some(Outcome::Deny);
            respond(session, decision.status, "forbidden", decision.reason.as_deref(), &decision.response_headers)
                .await?;
            ctx.active = Some(active);
            return Ok(true);
        }
        ctx.outcome = Some(Outcome::Allow);
        ctx.decision = Some(decision);
        ctx.active = Some(active);
        Ok(false)
    }

    /// Picks a healthy target of the route's upstream, round robin.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(active), Some(route_ix)) = (&ctx.active, ctx.route) else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen before upstream_peer");
        };
        let pool = &active.pools[active.snapshot.routes[route_ix].upstream];
        // When every target fails its health check, try them anyway (as Envoy's panic mode
        // does): a false negative must not turn into an outage; a truly dead target is a 502.
        let Some(backend) = pool.lb.select(b"", 256).or_else(|| pool.lb.select_with(b"", 256, |_, _| true)) else {
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("upstream `{}` has no healthy target", pool.name),
            );
        };
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.total_connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        Ok(Box::new(peer))
    }

    /// Rewrites the request for the upstream: prefix stripping and the decision's headers.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(active), Some(route_ix)) = (&ctx.active, ctx.route) {
            if let Some(prefix) = &active.snapshot.routes[route_ix].strip {
                let path = upstream_request.uri.path();
                let rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
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
            for (k, v) in &d.headers {
                upstream_request.insert_header(k.clone(), v.as_str())?;
            }
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if let Some(d) = &ctx.decision {
            for (k, v) in &d.response_headers {
                resp.insert_header(k.clone(), v.as_str())?;
            }
        }
        Ok(())
    }

    /// Answers a failed proxy attempt: 502 (JSON) when the upstream could not be reached.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
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
            self.gateway.metrics.upstream_errors.inc();
        }
        if code > 0 {
            let msg = if code == 502 { "upstream unavailable" } else { "request failed" };
            if let Err(err) = respond(session, code, msg, None, &[]).await {
                tracing::debug!(error = %err, "cannot send the error response");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// Counts the request; runs once for every request, answered here or proxied.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let m = &self.gateway.metrics;
        m.request_duration.observe(ctx.start.elapsed().as_secs_f64());
        let outcome = ctx.outcome.unwrap_or(Outcome::Unavailable);
        match (&ctx.active, ctx.route) {
            (Some(active), Some(ix)) => active.counters[ix].inc(outcome),
            _ => m.count_unrouted(outcome),
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
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
