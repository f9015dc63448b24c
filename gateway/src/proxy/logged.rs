//! What the logs take from a request: the decision log's pending event (built into an event off
//! the request path) and the access log's entry.

use std::sync::Arc;

use pingora::prelude::*;
use policy_bundles::authorize::Verdict;

use super::canonical::Link;
use super::Ctx;
use crate::active::Active;
use crate::decision_log::Answer;
use crate::metrics::Outcome;

/// What the log says the route's rule answered.
pub(super) fn answer(verdict: &Verdict) -> Answer {
    match verdict {
        Verdict::Allow(d, how) | Verdict::Deny(d, how) => {
            Answer::of(Ok((d, matches!(how, policy_bundles::snapshot::CacheOutcome::Hit))))
        }
        Verdict::FailedOpen(e) | Verdict::Failed(e) => Answer::of(Err(e)),
    }
}

/// What the decision log will need of this decision (the event is built off the request path):
/// the rule's `answer`, or the gateway's refusal before the rule was asked
/// ([`Answer::Refused`], with no `jwt` and no time taken).
pub(super) fn pending(
    session: &Session,
    ctx: &Ctx,
    active: &Arc<Active>,
    route: usize,
    answer: Answer,
    took: std::time::Duration,
    jwt: Option<Arc<policy_bundles::jwt::Verified>>,
) -> crate::decision_log::Pending {
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
        rate_limit: None,
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
pub(super) fn protocol(session: &Session) -> &'static str {
    if session.is_http2() {
        "HTTP/2"
    } else if session.req_header().version == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

/// The access-log line of a request that has been answered.
pub(super) fn access_entry(
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
