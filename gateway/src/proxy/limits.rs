//! Rate limits on the request path: the key each of a route's limits counts by, the check of
//! its bucket ([`crate::rate_limit`]), and the 429 with `Retry-After`, `RateLimit-Policy` and
//! `RateLimit` (IETF httpapi draft) past an enforced one.

use std::borrow::Cow;
use std::time::Duration;

use pingora::prelude::*;
use policy_bundles::authorize::Verdict;
use policy_bundles::jwt::Verified;
use policy_bundles::rate_limits::{LimitKey, LimitMode, RateLimit};

use super::answer::respond;
use super::Ctx;
use crate::active::Active;
use crate::rate_limit::{now_ns, Check};

/// What the route's limits made of a request: the first enforced limit it is past, and the
/// first shadow limit it is past (for the decision log).
#[derive(Default)]
pub(super) struct Checked {
    pub over: Option<Over>,
    pub shadow: Option<usize>,
}

impl Checked {
    /// The request is past limit `i`: the first enforced one refuses it, the first shadow one
    /// is logged.
    fn past(&mut self, i: usize, mode: LimitMode, retry_after: Duration) {
        match mode {
            LimitMode::Enforce if self.over.is_none() => self.over = Some(Over { limit: i, retry_after }),
            LimitMode::Shadow if self.shadow.is_none() => self.shadow = Some(i),
            _ => {}
        }
    }

    /// What the decision log says of it.
    pub fn hit(&self) -> Option<crate::decision_log::LimitHit> {
        match (&self.over, self.shadow) {
            (Some(o), _) => Some(crate::decision_log::LimitHit { limit: o.limit, refused: true }),
            (None, Some(limit)) => Some(crate::decision_log::LimitHit { limit, refused: false }),
            (None, None) => None,
        }
    }
}

/// An enforced limit the request is past.
pub(super) struct Over {
    /// Index into the snapshot's limits.
    limit: usize,
    retry_after: Duration,
}

/// What a limit check needs of the request beyond the active bundle.
pub(super) struct Asking<'a> {
    pub session: &'a Session,
    /// `trusted_proxies`: behind one, a client's address is the right-most untrusted one it
    /// forwarded.
    pub rules: &'a crate::config::RequestRules,
    pub metrics: &'a crate::metrics::Metrics,
    pub jwt: Option<&'a Verified>,
    /// A limit the allowing decision named (`rate_limit`).
    pub named: Option<usize>,
}

/// Counts the request against `route`'s limits of one kind: those applied before
/// authentication, or (with the verified token, if any) those after the policy allowed. Every
/// limit is first asked without spending: past an enforced one, the request spends none of the
/// others' quota. A shadow limit's refusal is counted, never enforced (and spends nothing, as it
/// would not if enforced); a limit whose key the request lacks (no token, no such header) does
/// not apply.
pub(super) fn check(active: &Active, route: usize, before_auth: bool, a: &Asking<'_>) -> Checked {
    let snapshot = &active.snapshot;
    let r = &snapshot.routes[route];
    let now = now_ns();
    let extra = a.named.filter(|i| !r.rate_limits.contains(i));
    let applies = |i: &usize| snapshot.rate_limits[*i].before_auth == before_auth || extra == Some(*i);
    let mut keyed = Vec::with_capacity(r.rate_limits.len() + 1);
    for &i in r.rate_limits.iter().chain(extra.iter()).filter(|i| applies(i)) {
        match &snapshot.rate_limits[i].key {
            // Each copy of the header is counted: a second copy cannot hide behind a first.
            LimitKey::Header(name) => {
                let values = a.session.req_header().headers.get_all(name.as_str());
                keyed.extend(values.iter().map(|v| (i, Cow::Borrowed(v.as_bytes()))));
            }
            other => keyed.extend(key(other, a, &r.name).map(|k| (i, k))),
        }
    }
    let mut out = Checked::default();
    // One limit: asked and counted in one lookup.
    if let [(i, key)] = &keyed[..] {
        if let Check::Limited { retry_after } = active.limits[*i].admit(key, now) {
            count(active, route, *i, a);
            out.past(*i, snapshot.rate_limits[*i].mode, retry_after);
        }
        return out;
    }
    for (i, key) in &keyed {
        if let Check::Limited { retry_after } = active.limits[*i].peek(key, now) {
            count(active, route, *i, a);
            out.past(*i, snapshot.rate_limits[*i].mode, retry_after);
        }
    }
    if out.over.is_none() {
        for (i, key) in &keyed {
            if out.shadow != Some(*i) {
                active.limits[*i].check(key, now);
            }
        }
    }
    out
}

/// Counts a refusal (or, in shadow mode, a would-be refusal) of `route`'s limit `i`.
fn count(active: &Active, route: usize, i: usize, a: &Asking<'_>) {
    match &active.limited[route][i] {
        Some(c) => c.inc(),
        None => {
            let r = &active.snapshot.routes[route];
            crate::activation::limited_counter(a.metrics, &r.name, &active.snapshot.rate_limits[i]).inc();
        }
    }
}

/// The route's limits after its policy answered: only a request the policy allowed spends its
/// key's quota.
pub(super) fn after_policy(active: &Active, route: usize, verdict: &Verdict, a: &mut Asking<'_>) -> Checked {
    let snapshot = &active.snapshot;
    // A limit the decision names (a tier from a claim); a name the bundle does not define
    // limits nothing more, and is counted (`gateway_rate_limit_unknown_total`).
    a.named = match verdict {
        Verdict::Allow(d, _) => d.rate_limit.as_deref().and_then(|n| {
            let found = snapshot.rate_limits.iter().position(|l| l.name == n);
            if found.is_none() {
                a.metrics.rate_limit_unknown.with_label_values(&[&snapshot.routes[route].name]).inc();
            }
            found
        }),
        _ => None,
    };
    match verdict {
        Verdict::Allow(..) | Verdict::FailedOpen(_)
            if a.named.is_some() || !snapshot.routes[route].rate_limits.is_empty() =>
        {
            check(active, route, false, a)
        }
        _ => Checked::default(),
    }
}

/// What `key` counts this request by.
fn key<'a>(key: &LimitKey, a: &Asking<'a>, route: &'a str) -> Option<Cow<'a, [u8]>> {
    let claim = |name: &str| {
        let jwt = a.jwt?;
        policy_bundles::rate_limits::claim_key(&jwt.issuer, jwt.claims.get(name)?).map(Cow::Owned)
    };
    match key {
        LimitKey::JwtSub => claim("sub"),
        LimitKey::JwtClaim(name) => claim(name),
        LimitKey::ClientIp => client(a).map(|ip| match crate::per_ip::client_key(ip) {
            std::net::IpAddr::V4(v4) => Cow::Owned(v4.octets().to_vec()),
            std::net::IpAddr::V6(v6) => Cow::Owned(v6.octets().to_vec()),
        }),
        LimitKey::Header(name) => {
            a.session.req_header().headers.get(name.as_str()).map(|v| Cow::Borrowed(v.as_bytes()))
        }
        LimitKey::Route => Some(Cow::Borrowed(route.as_bytes())),
    }
}

/// The client's address for a limit: the peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not a trusted proxy (the one that proxy saw
/// connect; anything left of it is the client's own writing).
fn client(a: &Asking<'_>) -> Option<std::net::IpAddr> {
    let peer = a.session.client_addr().and_then(|s| s.as_inet()).map(|s| s.ip())?;
    if !a.rules.trusts(peer) {
        return Some(peer);
    }
    let forwarded = a.session.req_header().headers.get_all("x-forwarded-for");
    let hops: Vec<&str> = forwarded.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    let untrusted =
        hops.iter().rev().filter_map(|h| h.trim().parse::<std::net::IpAddr>().ok()).find(|ip| !a.rules.trusts(*ip));
    Some(untrusted.unwrap_or(peer))
}

/// The 429: when to come back, and the limit's policy and state.
pub(super) async fn refuse(session: &mut Session, ctx: &mut Ctx, limit: &RateLimit, over: &Over) -> Result<()> {
    let headers = headers(limit, over.retry_after);
    let why = format!("rate limit `{}`: {} per {}s", limit.name, limit.quota, limit.window.as_secs());
    respond(session, ctx, 429, "too many requests", Some(&why), &headers).await
}

/// `Retry-After` (whole seconds, rounded up), `RateLimit-Policy` (`"name";q=quota;w=window`)
/// and `RateLimit` (`"name";r=remaining;t=seconds until a request is admitted`).
fn headers(limit: &RateLimit, retry_after: Duration) -> Vec<(String, String)> {
    let secs = retry_after.as_nanos().div_ceil(1_000_000_000).max(1);
    vec![
        ("retry-after".into(), secs.to_string()),
        ("ratelimit-policy".into(), format!("\"{}\";q={};w={}", limit.name, limit.quota, limit.window.as_secs())),
        ("ratelimit".into(), format!("\"{}\";r=0;t={secs}", limit.name)),
    ]
}

impl Over {
    pub(super) fn limit<'a>(&self, active: &'a Active) -> &'a RateLimit {
        &active.snapshot.rate_limits[self.limit]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_says_when_to_come_back_and_which_policy_refused() {
        let limit = policy_bundles::rate_limits::compile(
            "per_user",
            &policy_bundles::settings::RateLimitSpec {
                key: "jwt.sub".into(),
                rate: "100/s".into(),
                burst: Some(20),
                scope: Default::default(),
                mode: Default::default(),
                before_auth: false,
            },
        )
        .expect("limit");
        let h = headers(&limit, Duration::from_millis(1));
        assert_eq!(h[0], ("retry-after".into(), "1".into()));
        assert_eq!(h[1], ("ratelimit-policy".into(), "\"per_user\";q=100;w=1".into()));
        assert_eq!(h[2], ("ratelimit".into(), "\"per_user\";r=0;t=1".into()));
        assert_eq!(headers(&limit, Duration::from_millis(2500))[0].1, "3");
    }
}
