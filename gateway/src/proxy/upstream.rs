//! The request's way to its upstream when targets fail or the upstream is saturated: a slot
//! first (`max_connections`, a bounded wait), then a target not tried yet and not ejected, and
//! on a failure a retry on another target when the upstream's policy, the method and the
//! budget allow it ([`crate::upstream_guard`]). Every outcome of a target feeds its ejection.

use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use policy_bundles::resilience::RetryOn;

use super::Ctx;
use crate::pool::Pool;
use crate::upstream_guard::NoSlot;

/// What the tries of one request did.
#[derive(Default)]
pub(super) struct Tries {
    /// The target of the current try (an index of its pool).
    target: Option<usize>,
    /// Targets tried, a bit each.
    tried: u64,
    /// Tries made, the current one included.
    count: u32,
    /// The request's slot to its upstream, held to its end.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Why no slot was found (answered 503 with `Retry-After`).
    pub overflow: Option<NoSlot>,
    /// The current try's target answered a response head.
    responded: bool,
}

/// The error that answers a request finding no slot: a 503.
const NO_SLOT: ErrorType = ErrorType::HTTPStatus(503);

fn pool(ctx: &Ctx) -> Result<&Pool> {
    match &ctx.active {
        Some(active) => pool_of(active, ctx.route),
        None => Error::e_explain(ErrorType::InternalError, "no route chosen before upstream_peer"),
    }
}

fn pool_of(active: &crate::active::Active, route: Option<usize>) -> Result<&Pool> {
    match route {
        Some(r) => Ok(&active.pools[active.snapshot.routes[r].upstream]),
        None => Error::e_explain(ErrorType::InternalError, "no route chosen before upstream_peer"),
    }
}

/// The peer of the request's next try: its slot taken (first try), a target chosen.
pub(super) async fn peer(ctx: &mut Ctx, metrics: &crate::metrics::Metrics) -> Result<Box<HttpPeer>> {
    // The pool is the active bundle's, held by the context for the request's life.
    let Some(active) = ctx.active.clone() else {
        return Error::e_explain(ErrorType::InternalError, "no route chosen before upstream_peer");
    };
    let pool = pool_of(&active, ctx.route)?;
    if ctx.tries.slot.is_none() {
        match pool.guard.slot().await {
            Ok(slot) => ctx.tries.slot = Some(slot),
            Err(why) => {
                let reason = if why == NoSlot::QueueFull { "queue_full" } else { "timeout" };
                metrics.upstream.pending_overflow.with_label_values(&[&pool.name, reason]).inc();
                ctx.tries.overflow = Some(why);
                return Error::e_explain(NO_SLOT, format!("upstream `{}`: no slot ({reason})", pool.name));
            }
        }
    }
    let now = crate::clock::unix_now_ms();
    if ctx.tries.count == 0 {
        pool.guard.requested(now / 1000);
    }
    let Some((i, target)) = pool.select(ctx.tries.tried, now) else {
        return Error::e_explain(ErrorType::ConnectNoRoute, format!("upstream `{}` has no target", pool.name));
    };
    let mut peer = Box::new(target.peer.clone());
    if let Some(t) = pool.guard.policy.retries.per_try_timeout {
        peer.options.read_timeout = Some(t);
    }
    ctx.upstream = Some(target.backend.addr.clone());
    ctx.tries.target = Some(i);
    ctx.tries.tried |= if i < 64 { 1 << i } else { 0 };
    ctx.tries.count += 1;
    ctx.tries.responded = false;
    Ok(peer)
}

/// Whether the request may be tried again for `on`: the policy retries it, a try is left, the
/// budget allows it (counted), and the method is idempotent unless nothing reached the target.
fn may_retry(session: &Session, ctx: &Ctx, pool: &Pool, on: RetryOn, metrics: &crate::metrics::Metrics) -> bool {
    let policy = &pool.guard.policy.retries;
    let route_says = match (&ctx.active, ctx.route) {
        (Some(a), Some(r)) => a.snapshot.routes[r].retry_non_idempotent,
        _ => false,
    };
    let nothing_reached = on == RetryOn::ConnectFailure || on == RetryOn::RefusedStream;
    let safe = nothing_reached || route_says || session.req_header().method.is_idempotent();
    if !policy.retries(on) || ctx.tries.count >= policy.attempts || !safe || session.as_ref().retry_buffer_truncated() {
        return false;
    }
    if !pool.guard.retry_allowed(crate::clock::unix_now()) {
        metrics.upstream.budget_exhausted.with_label_values(&[&pool.name]).inc();
        return false;
    }
    metrics.upstream.retries.with_label_values(&[&pool.name, on.label()]).inc();
    true
}

/// A failure of the current try's target: its ejection count.
fn target_failed(ctx: &Ctx, pool: &Pool, metrics: &crate::metrics::Metrics) {
    let Some(i) = ctx.tries.target else { return };
    if let Some(length) = pool.guard.failed(i, crate::clock::unix_now_ms(), |j| pool.healthy(j)) {
        let target = ctx.upstream.as_ref().map(|a| a.to_string()).unwrap_or_default();
        metrics.upstream.ejections.with_label_values(&[&pool.name, &target]).inc();
        tracing::warn!(upstream = %pool.name, %target, seconds = length.as_secs(), "target ejected");
    }
}

/// No connection could be made to the current try's target.
pub(super) fn connect_failed(
    session: &Session,
    ctx: &Ctx,
    mut e: Box<Error>,
    metrics: &crate::metrics::Metrics,
) -> Box<Error> {
    let Ok(pool) = pool(ctx) else { return e };
    target_failed(ctx, pool, metrics);
    e.set_retry(may_retry(session, ctx, pool, RetryOn::ConnectFailure, metrics));
    e
}

/// The try failed after its connection was made. Before any response byte it may be tried
/// again (a pooled connection the target had closed always may, as Pingora does).
pub(super) fn proxy_failed(
    session: &Session,
    ctx: &Ctx,
    mut e: Box<Error>,
    client_reused: bool,
    metrics: &crate::metrics::Metrics,
) -> Box<Error> {
    let Ok(pool) = pool(ctx) else { return e };
    if let ErrorType::HTTPStatus(code) = e.etype() {
        // A status this module asked to retry (see `response_head`): decided there.
        let retry = !ctx.tries.responded && matches!(code, 502..=504);
        e.set_retry(retry);
        return e;
    }
    let idempotent = session.req_header().method.is_idempotent();
    let intact = !session.as_ref().retry_buffer_truncated();
    if e.esource() != &ErrorSource::Upstream || ctx.tries.responded {
        e.set_retry(false);
        return e;
    }
    if client_reused && idempotent && intact {
        // A kept-alive connection the target had closed: not the target's failure.
        e.set_retry(true);
        return e;
    }
    target_failed(ctx, pool, metrics);
    // An h2 stream the target refused (`REFUSED_STREAM`: never processed, safe for any method);
    // Pingora keeps the h2 reason only in the error's text.
    let refused = e.etype() == &ErrorType::H2Error && e.to_string().contains("REFUSED_STREAM");
    let on = if refused { RetryOn::RefusedStream } else { RetryOn::Reset };
    e.set_retry(may_retry(session, ctx, pool, on, metrics));
    e
}

/// The current try's target answered a head. A gateway failure (502, 503, 504) is the
/// target's failure, and is tried again when the policy lists it and a retry may follow;
/// anything else, a 500 included, is the application answering: the target is alive. (A
/// client that can make the application fail must not be able to eject its targets.)
pub(super) fn response_head(
    session: &Session,
    ctx: &mut Ctx,
    status: u16,
    metrics: &crate::metrics::Metrics,
) -> Result<()> {
    let Ok(pool) = pool(ctx) else { return Ok(()) };
    let Some(i) = ctx.tries.target else { return Ok(()) };
    if !matches!(status, 502..=504) {
        pool.guard.succeeded(i);
        ctx.tries.responded = true;
        return Ok(());
    }
    target_failed(ctx, pool, metrics);
    if may_retry(session, ctx, pool, RetryOn::Status(status), metrics) {
        return Error::e_explain(ErrorType::HTTPStatus(status), format!("upstream answered {status}: retried"));
    }
    ctx.tries.responded = true;
    Ok(())
}
