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

/// Counts the request against `route`'s limits of one kind: those applied before
/// authentication, or (with the verified token, if any) those after the policy allowed. A shadow
/// limit's refusal is counted, never enforced; a limit whose key the request lacks (no token, no
/// such header) does not apply. `named` is a limit the allowing decision named (`rate_limit`),
/// checked after the route's own.
pub(super) fn check(
    active: &Active,
    route: usize,
    before_auth: bool,
    session: &Session,
    ctx: &Ctx,
    (jwt, named): (Option<&Verified>, Option<usize>),
) -> Checked {
    let snapshot = &active.snapshot;
    let r = &snapshot.routes[route];
    let mut out = Checked::default();
    let now = now_ns();
    let extra = named.filter(|i| !r.rate_limits.contains(i));
    for &i in r.rate_limits.iter().chain(extra.iter()) {
        let limit = &snapshot.rate_limits[i];
        if limit.before_auth != before_auth && extra != Some(i) {
            continue;
        }
        let Some(key) = key(&limit.key, session, ctx, &r.name, jwt) else { continue };
        if let Check::Limited { retry_after } = active.limits[i].check(&key, now) {
            active.limited[route][i].inc();
            match limit.mode {
                LimitMode::Enforce if out.over.is_none() => out.over = Some(Over { limit: i, retry_after }),
                LimitMode::Shadow if out.shadow.is_none() => out.shadow = Some(i),
                _ => {}
            }
        }
    }
    out
}

/// The route's limits after its policy answered: only a request the policy allowed spends its
/// key's quota.
pub(super) fn after_policy(
    active: &Active,
    route: usize,
    verdict: &Verdict,
    session: &Session,
    ctx: &Ctx,
    jwt: Option<&Verified>,
) -> Checked {
    let snapshot = &active.snapshot;
    // A limit the decision names (a tier from a claim); a name the bundle does not define
    // limits nothing (`bundlectl test` cases can check a rule's answers).
    let named = match verdict {
        Verdict::Allow(d, _) => {
            d.rate_limit.as_deref().and_then(|n| snapshot.rate_limits.iter().position(|l| l.name == n))
        }
        _ => None,
    };
    match verdict {
        Verdict::Allow(..) | Verdict::FailedOpen(_)
            if named.is_some() || !snapshot.routes[route].rate_limits.is_empty() =>
        {
            check(active, route, false, session, ctx, (jwt, named))
        }
        _ => Checked::default(),
    }
}

/// What `key` counts this request by.
fn key<'a>(
    key: &LimitKey,
    session: &'a Session,
    ctx: &'a Ctx,
    route: &'a str,
    jwt: Option<&'a Verified>,
) -> Option<Cow<'a, [u8]>> {
    let claim = |name: &str| match jwt?.claims.get(name)? {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_bytes())),
        other => Some(Cow::Owned(other.to_string().into_bytes())),
    };
    match key {
        LimitKey::JwtSub => claim("sub"),
        LimitKey::JwtClaim(name) => claim(name),
        LimitKey::ClientIp => Some(Cow::Borrowed(ctx.client_ip.as_bytes())).filter(|k| !k.is_empty()),
        LimitKey::Header(name) => session.req_header().headers.get(name.as_str()).map(|v| Cow::Borrowed(v.as_bytes())),
        LimitKey::Route => Some(Cow::Borrowed(route.as_bytes())),
    }
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
