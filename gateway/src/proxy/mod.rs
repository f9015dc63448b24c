//! The request path. Pingora calls these phases in order for every request:
//!
//! 1. [`request_filter`](ProxyHttp::request_filter): take the active snapshot (one `ArcSwap`
//!    load), make the request canonical, then [`authorize`] it: match the route (404 if none),
//!    verify a bearer JWT (401 on failure, before any policy runs; decision-logged as a deny),
//!    evaluate the route's rule in-process and apply a deny (its status, reason and response
//!    headers). Policy errors and undefined results deny (fail closed) unless the route says
//!    `fail_open`.
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
use policy_bundles::authorize::{self, Agreement, RequestView, Verdict};
use policy_bundles::snapshot::{EvalError, Request};
use policy_bundles::Decision;

use crate::active::{Active, Gateway};
use crate::metrics::Outcome;
use http_canon::{self as canon, Refusal};

mod answer;
mod canonical;
mod forwarding;
mod limits;
mod logged;
mod upstream;

use answer::{close_tunnel, linger, respond, respond_body, TUNNEL_LIMIT};
use canonical::{canonicalize, Link};
use forwarding::{ip_text, with_query, without_prefix};
use logged::{access_entry, pending, protocol};

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
    /// The tries to the upstream: targets, retries, the slot.
    tries: upstream::Tries,
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
        route: Option<usize>,
    ) -> Result<Option<bool>> {
        let req = session.req_header();
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

    /// Answers a request refused for its form (`http_canon::Refusal`): 400, 421, or 401 for a
    /// credential in a place the gateway does not verify. Counted by reason, and as
    /// `decision="refused"` (no route's counters: no route's rule was asked).
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Result<()> {
        ctx.outcome = Some(Outcome::Refused);
        self.metrics.count_refusal(r);
        tracing::debug!(reason = r.reason(), "request refused");
        respond(session, ctx, r.status(), r.error(), Some(r.message()), &[]).await
    }

    /// Whether this request's route has a shadow rule that is asked this time (`shadow_sample`).
    fn shadows(&self, active: &Active, route: usize) -> bool {
        let sample = self.shadow_sample;
        active.snapshot.routes.get(route).is_some_and(|r| r.shadow.is_some())
            && (sample >= 1.0 || (sample > 0.0 && rand::random::<f64>() < sample))
    }

    /// Past the in-flight limit, 503 at once; a declared body over `limits.max_body`, 413.
    /// True when it answered.
    async fn shed_or_refuse_body(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
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
        Ok(false)
    }

    /// The path routes and the policy see: under `path_params: keep`, without its parameters.
    fn routed_path<'r>(&self, req: &'r RequestHeader) -> std::borrow::Cow<'r, str> {
        match self.requests.path.params {
            canon::PathParams::Keep => canon::without_params(req.uri.path()),
            _ => std::borrow::Cow::Borrowed(req.uri.path()),
        }
    }

    /// The route's limits applied before authentication (when the bundle has any): true when
    /// the request was refused with 429.
    async fn limited_before_auth(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        active: &Arc<Active>,
        route: Option<usize>,
    ) -> Result<bool> {
        let Some(route) = route else { return Ok(false) };
        let over = {
            let asking =
                limits::Asking { session, rules: &self.requests, metrics: &self.metrics, jwt: None, named: None };
            limits::check(active, route, true, &asking).over
        };
        match over {
            Some(over) => self.rate_limited(session, ctx, active.clone(), route, over).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Answers 429 for `route`'s limit `over`.
    async fn rate_limited(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        active: Arc<Active>,
        route: usize,
        over: limits::Over,
    ) -> Result<()> {
        ctx.outcome = Some(Outcome::RateLimited);
        ctx.route = Some(route);
        limits::refuse(session, ctx, over.limit(&active), &over).await?;
        ctx.active = Some(active);
        Ok(())
    }

    /// Routes, authenticates and evaluates the canonical request ([`authorize`]), and the
    /// route's shadow rule on the same request when it is sampled (`shadow_sample`): its answer
    /// is counted and logged, never enforced.
    fn decide(
        &self,
        session: &Session,
        ctx: &Ctx,
        active: &Arc<Active>,
        route: Option<usize>,
        host: &str,
        scheme: &'static str,
    ) -> (authorize::Outcome, Option<Result<Arc<Decision>, EvalError>>) {
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
        let path = self.routed_path(req);
        let view = || RequestView {
            parts: Request {
                method: req.method.as_str(),
                path: &path,
                query: req.uri.query(),
                host,
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
        let outcome = match route {
            Some(route) => authorize::authorize_route(&active.snapshot, route, view()),
            None => authorize::Outcome::NoRoute,
        };
        // The route's shadow rule, on the same request, before anything is answered (sampled by
        // `shadow_sample`); its answer is counted and logged, never enforced.
        let shadow = match &outcome {
            authorize::Outcome::Evaluated { route, jwt, .. } if self.shadows(active, *route) => {
                authorize::shadow(&active.snapshot, *route, view(), jwt.as_deref())
            }
            _ => None,
        };
        (outcome, shadow)
    }

    /// Answers an outcome that never reached the policy: no route (404), a refusal (400 and
    /// kin), credentials refused (401).
    async fn answer_unevaluated(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        active: Arc<Active>,
        outcome: authorize::Outcome,
    ) -> Result<()> {
        match outcome {
            authorize::Outcome::NoRoute => {
                ctx.outcome = Some(Outcome::NoRoute);
                respond(session, ctx, 404, "no route matches this request", None, &[]).await?;
            }
            authorize::Outcome::Refused { route, refusal } => {
                // The route is named in the access log; `active` stays unset, so the request is
                // counted as refused rather than as one of the route's decisions.
                ctx.route = Some(route);
                self.refuse(session, ctx, refusal).await?;
            }
            authorize::Outcome::Unauthenticated { route, error } => {
                self.unauthenticated(session, ctx, active, route, error).await?;
            }
            authorize::Outcome::Evaluated { .. } => {}
        }
        Ok(())
    }

    /// Answers 401 for credentials refused before `route`'s rule was asked (a malformed
    /// `Authorization`, a scheme the route does not accept, a bearer token that does not verify).
    /// Logged as a deny, as OPA-Envoy logs its policy's refusal of a bad token: its id goes to
    /// the client in `x-decision-id`, its reason is the one the client gets, and the token itself
    /// is never written (credentials are erased from every event).
    async fn unauthenticated(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        active: Arc<Active>,
        route: usize,
        error: authorize::AuthError,
    ) -> Result<()> {
        ctx.route = Some(route);
        ctx.outcome = Some(Outcome::Unauthenticated);
        if let Some(r) = error.refusal() {
            self.metrics.count_refusal(r);
        }
        tracing::debug!(route = %active.snapshot.routes[route].name, error = %error, "credentials refused");
        let reason = error.to_string();
        // A deny: always logged, whatever `sample` says.
        if self.decision_logs.is_some() {
            let refused = crate::decision_log::Answer::Refused { status: 401, reason: reason.clone() };
            let p = pending(session, ctx, &active, route, refused, std::time::Duration::ZERO, None);
            ctx.decision_log = Some(Box::new(p));
        }
        respond(session, ctx, 401, "invalid bearer token", Some(&reason), &[]).await?;
        ctx.active = Some(active);
        Ok(())
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
            authorize::Outcome::Evaluated { route, verdict, took, jwt } => (route, verdict, took, jwt),
            unevaluated => {
                self.answer_unevaluated(session, ctx, active, unevaluated).await?;
                return Ok(true);
            }
        };
        ctx.route = Some(route_ix);
        self.metrics.policy_eval_duration.observe(took.as_secs_f64());
        let route = &active.snapshot.routes[route_ix];
        let limited = {
            let (rules, metrics) = (&self.requests, &*self.metrics);
            let mut asking = limits::Asking { session, rules, metrics, jwt: jwt.as_deref(), named: None };
            limits::after_policy(&active, route_ix, &verdict, &mut asking)
        };
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
                let mut p = pending(session, ctx, &active, route_ix, logged::answer(&verdict), took, jwt);
                p.shadow = shadow;
                p.rate_limit = limited.hit();
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
        if let Some(over) = limited.over {
            return self.rate_limited(session, ctx, active, route_ix, over).await.map(|()| true);
        }
        ctx.outcome = Some(Outcome::Allow);
        ctx.decision = Some(decision);
        ctx.active = Some(active);
        Ok(false)
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
            tries: Default::default(),
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
        if self.shed_or_refuse_body(session, ctx).await? {
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
        let link = Link::of(session);
        let scheme = link.scheme();
        let canonical = match canonicalize(session, &active.snapshot, &self.requests, client_ip, &link) {
            Ok(c) => c,
            Err(r) => {
                self.refuse(session, ctx, r).await?;
                return Ok(true);
            }
        };
        let host = canonical.host.as_str();
        if ctx.logging || self.decision_logs.as_deref().is_some() {
            ctx.host.clear();
            ctx.host.push_str(host);
        }
        let route = {
            let req = session.req_header();
            active.snapshot.table.lookup(host, &self.routed_path(req), req.method.as_str())
        };
        // The gateway's forwarding headers, for a route whose upstream wants them: its rule
        // reads the request as the upstream will receive it.
        if client_ip.is_some() && route.is_some_and(|r| active.snapshot.routes[r].adds.forwarding) {
            canonical.forward(session, &ctx.client_ip, &link);
        }
        // Limits before authentication come before anything else costs: the body, the token.
        if active.snapshot.limits_before_auth && self.limited_before_auth(session, ctx, &active, route).await? {
            return Ok(true);
        }
        if active.snapshot.reads_bodies() {
            if let Some(answered) = self.read_body(session, ctx, &active, route).await? {
                return Ok(answered);
            }
        }
        let (outcome, shadow) = self.decide(session, ctx, &active, route, host, scheme);
        self.carry_out(session, ctx, active, outcome, shadow).await
    }

    /// A slot to the route's upstream (first try), then a target not tried yet, not ejected and
    /// healthy, round robin ([`upstream`]).
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Box<Ctx>) -> Result<Box<HttpPeer>> {
        upstream::peer(ctx, &self.metrics).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::connect_failed(session, ctx, e, &self.metrics)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        upstream::proxy_failed(session, ctx, e, client_reused, &self.metrics)
    }

    /// The target's answer feeds its ejection; a status the upstream retries is tried again.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        upstream::response_head(session, ctx, upstream_response.status.as_u16(), &self.metrics)
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
            // The gateway's ids, for an upstream that wants them (`upstream_headers`).
            let adds = match (&ctx.active, ctx.route) {
                (Some(active), Some(r)) => active.snapshot.routes[r].adds,
                _ => Default::default(),
            };
            if adds.traceparent {
                upstream_request.insert_header("traceparent", id.traceparent())?;
            }
            if adds.request_id {
                upstream_request.insert_header("x-request-id", id.id())?;
            }
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
            let (msg, headers) = match (code, ctx.tries.overflow) {
                (502, _) => ("upstream unavailable", vec![]),
                (503, Some(_)) => ("upstream saturated", vec![("retry-after".to_owned(), "1".to_owned())]),
                _ => ("request failed", vec![]),
            };
            if let Err(err) = respond(session, ctx, code, msg, None, &headers).await {
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
