//! What the active bundle has served since it activated: requests, denies, errors and a latency
//! histogram, kept per snapshot (a new bundle starts from zero) and reported to the control plane
//! with the outcome of the last activation attempt, so that it can judge a canary: a revision
//! that fails to activate, or whose error rate or p99 jumps, is rolled back.
//!
//! The request path adds to a few relaxed atomics of the snapshot it already holds; nothing here
//! takes a lock on that path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics::Outcome;

/// Upper bounds of the latency buckets, in milliseconds; the last bucket is unbounded.
const BUCKETS_MS: [u64; 14] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000];

/// Counters of one snapshot.
#[derive(Default)]
pub struct Served {
    requests: AtomicU64,
    denies: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS_MS.len() + 1],
}

/// What [`Served`] holds at one moment, as reported in `/status` and to the control plane.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ServedReport {
    pub requests: u64,
    /// Denied by the policy or for a failed bearer token.
    pub denies: u64,
    /// Policy errors (fail closed) and answers of 500 or more (upstream failures), except
    /// requests shed under load.
    pub errors: u64,
    /// The bucket bound under which 99% of the requests were answered; `None` without requests.
    pub p99_ms: Option<u64>,
}

impl Served {
    /// Counts one answered request.
    pub fn observe(&self, outcome: Outcome, status: u16, took: Duration) {
        if matches!(outcome, Outcome::Shed | Outcome::Unavailable) {
            return;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Deny | Outcome::Unauthenticated => {
                self.denies.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Error => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ if status >= 500 => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let ms = took.as_millis() as u64;
        let i = BUCKETS_MS.iter().position(|b| ms < *b).unwrap_or(BUCKETS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> ServedReport {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let p99_ms = (total > 0).then(|| {
            let want = total - total / 100;
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX);
                }
            }
            u64::MAX
        });
        ServedReport {
            requests: self.requests.load(Ordering::Relaxed),
            denies: self.denies.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            p99_ms,
        }
    }
}

/// The last activation attempt, whatever its outcome: what a canary's judge needs first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActivationAttempt {
    /// SHA-256 of the tarball tried.
    pub digest: String,
    /// `activated`, or `failed`.
    pub outcome: &'static str,
    /// The failure's reason label (`budget`, `rego`, ...), when it failed.
    pub reason: Option<&'static str>,
    pub message: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_denies_errors_and_a_p99_bucket() {
        let s = Served::default();
        for _ in 0..98 {
            s.observe(Outcome::Allow, 200, Duration::from_millis(3));
        }
        s.observe(Outcome::Deny, 403, Duration::from_millis(3));
        s.observe(Outcome::Allow, 502, Duration::from_millis(700));
        s.observe(Outcome::Shed, 503, Duration::ZERO);
        let r = s.report();
        assert_eq!((r.requests, r.denies, r.errors), (100, 1, 1));
        assert_eq!(r.p99_ms, Some(5));
        for _ in 0..5 {
            s.observe(Outcome::Error, 403, Duration::from_millis(700));
        }
        let r = s.report();
        assert_eq!(r.errors, 6);
        assert_eq!(r.p99_ms, Some(1_000));
        assert_eq!(Served::default().report().p99_ms, None);
    }
}
