//! A bundle's rate limit as this gateway counts it: on its own ([`crate::rate_limit`], `scope:
//! local`) or against the fleet's quota ([`crate::quota`], `scope: global`), and how a new
//! bundle's limits take over the serving one's counts.

use std::sync::Arc;

use policy_bundles::rate_limits::{LimitKey, LimitScope, RateLimit};

use crate::metrics::Metrics;
use crate::quota::{Counter, Quotas};
use crate::rate_limit::{Buckets, Check};

pub enum Limiter {
    Local(Buckets),
    Global(Counter),
}

impl Limiter {
    pub fn limit(&self) -> &RateLimit {
        match self {
            Limiter::Local(b) => &b.limit,
            Limiter::Global(c) => &c.limit,
        }
    }

    /// What admitting one request of `key` would do, spending nothing (`now`: [`crate::rate_limit::now_ns`]).
    /// Asked once per request and key: a global limit counts it as this gateway's demand.
    pub fn peek(&self, key: &[u8], now: u64) -> Check {
        match self {
            Limiter::Local(b) => b.peek(key, now),
            Limiter::Global(c) => c.peek(key, now),
        }
    }

    /// Admits one request of `key` that was [peeked](Limiter::peek), if the limit allows it.
    pub fn check(&self, key: &[u8], now: u64) -> Check {
        match self {
            Limiter::Local(b) => b.check(key, now),
            Limiter::Global(c) => c.check(key, now),
        }
    }

    /// [`Limiter::peek`] and [`Limiter::check`] in one (one lookup): for a request that meets
    /// no other limit, so that nothing else can refuse it after this one admitted it.
    pub fn admit(&self, key: &[u8], now: u64) -> Check {
        match self {
            Limiter::Local(b) => b.check(key, now),
            Limiter::Global(c) => c.admit(key, now),
        }
    }
}

/// A global limit in a bundle, on a gateway without a `quota_store`.
#[derive(Debug, thiserror::Error)]
#[error(
    "rate limit `{0}` is `scope: global`, and this gateway has no `quota_store` to count the fleet's use with; \
     configure one or make the limit local"
)]
pub struct NoQuotaStore(pub String);

/// The limiters of a bundle's `limits`, over the serving bundle's (`previous`) counts where a
/// limit keeps its name and key (and, for a global one, its window), so that publishing a bundle
/// never resets a client's count.
pub fn build(
    limits: &[RateLimit],
    previous: &[Arc<Limiter>],
    keys: usize,
    quotas: Option<&Quotas>,
    metrics: &Metrics,
) -> Result<Vec<Arc<Limiter>>, NoQuotaStore> {
    let mut out = Vec::with_capacity(limits.len());
    for l in limits {
        let limiter = match l.scope {
            LimitScope::Local => {
                // One count for a whole route needs no table of keys.
                let keys = if l.key == LimitKey::Route { 1 } else { keys };
                let kept = previous.iter().find_map(|p| match &**p {
                    Limiter::Local(b) if b.serves(l) && b.capacity() >= keys => Some(b.table().clone()),
                    _ => None,
                });
                Limiter::Local(match kept {
                    Some(table) => Buckets::over(l.clone(), table),
                    None => Buckets::new(l.clone(), keys, metrics.rate_limit_evictions.with_label_values(&[&l.name])),
                })
            }
            LimitScope::Global => {
                let quotas = quotas.ok_or_else(|| NoQuotaStore(l.name.clone()))?;
                let kept = previous.iter().find_map(|p| match &**p {
                    Limiter::Global(c) if c.serves(l) => Some(c.table().clone()),
                    _ => None,
                });
                Limiter::Global(quotas.counter(l, kept.as_ref()))
            }
        };
        out.push(Arc::new(limiter));
    }
    Ok(out)
}
