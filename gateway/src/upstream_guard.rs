//! What protects an upstream from the gateway, and the gateway from an upstream: passive outlier
//! ejection of failing targets, the retry budget, and the bound on requests in flight with its
//! queue (`policy_bundles::resilience` says how much of each). One [`Guard`] per pool.
//!
//! * **Ejection**: `consecutive_failures` failures in a row (a connect error, a reset or
//!   timeout, a 502, 503 or 504; a 500 is the application answering)
//!   eject a target for `base_ejection`, doubled with each repeat (at most ten times); never
//!   more than `max_ejected` of the targets at once, and never the last one that is neither
//!   ejected nor failing its health check. A success resets the count; a target back from an
//!   ejection that stays healthy for a base period starts its repeats afresh.
//! * **Retry budget** (Linkerd's and Envoy's idea): retries may be at most `ratio` of the
//!   upstream's requests over the last ten seconds, plus `min_per_second`; past it a failure is
//!   the client's answer. A failing upstream sees at most (1 + ratio) of the offered load plus
//!   the floor, never a multiple of it.
//! * **Slots**: at most `max_connections` requests in flight to the upstream (an HTTP/1.1
//!   connection or an h2 stream each), at most `max_pending` waiting for one, each for at most
//!   `pending_timeout`; past either, 503 with `Retry-After` at once, before a connection is
//!   attempted: the circuit breaker that stops a connect storm.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use policy_bundles::resilience::Resilience;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The failure state of one target.
#[derive(Default)]
pub struct TargetState {
    consecutive: AtomicU32,
    /// Unix millis until which it is ejected (0: never was).
    ejected_until_ms: AtomicU64,
    /// Ejections in a row (the next one lasts longer).
    ejections: AtomicU32,
}

/// Ten one-second buckets of requests and retries.
struct Window {
    buckets: [Bucket; 10],
}

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Window {
    fn bucket(&self, now_s: u64) -> &Bucket {
        let b = &self.buckets[(now_s % 10) as usize];
        let was = b.second.load(Ordering::Relaxed);
        if was != now_s && b.second.compare_exchange(was, now_s, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Requests and retries over the ten seconds up to `now_s`.
    fn totals(&self, now_s: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| now_s.saturating_sub(b.second.load(Ordering::Relaxed)) < 10)
            .fold((0, 0), |(q, r), b| (q + b.requests.load(Ordering::Relaxed), r + b.retries.load(Ordering::Relaxed)))
    }
}

/// Why a request found no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// `max_pending` requests were waiting already.
    QueueFull,
    /// It waited `pending_timeout`.
    Timeout,
}

pub struct Guard {
    pub policy: Resilience,
    pub targets: Vec<TargetState>,
    window: Window,
    slots: Arc<Semaphore>,
    pending: AtomicU32,
}

impl Guard {
    pub fn new(policy: Resilience, targets: usize) -> Guard {
        let slots = Arc::new(Semaphore::new(policy.max_connections as usize));
        Guard {
            policy,
            targets: (0..targets).map(|_| TargetState::default()).collect(),
            window: Window { buckets: Default::default() },
            slots,
            pending: AtomicU32::new(0),
        }
    }

    /// Whether target `i` is ejected at `now_ms`.
    pub fn ejected(&self, i: usize, now_ms: u64) -> bool {
        self.targets.get(i).is_some_and(|t| t.ejected_until_ms.load(Ordering::Relaxed) > now_ms)
    }

    /// Unix millis until which target `i` is ejected, if it is.
    pub fn ejected_until(&self, i: usize, now_ms: u64) -> Option<u64> {
        let until = self.targets.get(i)?.ejected_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    pub fn consecutive_failures(&self, i: usize) -> u32 {
        self.targets.get(i).map_or(0, |t| t.consecutive.load(Ordering::Relaxed))
    }

    /// A success of target `i` (the clock is read only if the target has failed before).
    pub fn succeeded(&self, i: usize) {
        let Some(t) = self.targets.get(i) else { return };
        if t.consecutive.load(Ordering::Relaxed) != 0 {
            t.consecutive.store(0, Ordering::Relaxed);
        }
        if t.ejections.load(Ordering::Relaxed) == 0 {
            return;
        }
        let until = t.ejected_until_ms.load(Ordering::Relaxed);
        let base = self.policy.outlier.base_ejection.as_millis() as u64;
        if crate::clock::unix_now_ms() > until + base {
            t.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A failure of target `i`; `healthy(j)` says whether target `j` passes its health check.
    /// Returns the ejection's length when this failure ejected it.
    pub fn failed(&self, i: usize, now_ms: u64, healthy: impl Fn(usize) -> bool) -> Option<Duration> {
        let o = &self.policy.outlier;
        let t = self.targets.get(i)?;
        let n = t.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if o.consecutive_failures == 0 || n < o.consecutive_failures || self.ejected(i, now_ms) {
            return None;
        }
        let total = self.targets.len();
        let ejected = (0..total).filter(|&j| self.ejected(j, now_ms)).count();
        let allowed = ((total as f64) * o.max_ejected).floor() as usize;
        let others_serving = (0..total).any(|j| j != i && !self.ejected(j, now_ms) && healthy(j));
        if ejected + 1 > allowed || !others_serving {
            return None;
        }
        let repeat = t.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = o.ejection(repeat);
        t.ejected_until_ms.store(now_ms + length.as_millis() as u64, Ordering::Relaxed);
        t.consecutive.store(0, Ordering::Relaxed);
        Some(length)
    }

    /// Counts a request to the upstream (its first try).
    pub fn requested(&self, now_s: u64) {
        self.window.bucket(now_s).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a retry fits the budget; if it does, it is counted.
    pub fn retry_allowed(&self, now_s: u64) -> bool {
        let r = &self.policy.retries;
        let (requests, retries) = self.window.totals(now_s);
        let allowed = (requests as f64 * r.budget_ratio) as u64 + u64::from(r.budget_min_per_second) * 10;
        if retries >= allowed {
            return false;
        }
        self.window.bucket(now_s).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A slot for one request in flight: at once if one is free, else after waiting in the
    /// bounded queue.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, NoSlot> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.policy.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(NoSlot::QueueFull);
        }
        let got = tokio::time::timeout(self.policy.pending_timeout, self.slots.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(NoSlot::Timeout),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.policy.max_connections as usize - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(yaml: &str, targets: usize) -> Guard {
        let spec: policy_bundles::settings::UpstreamSpec =
            yaml_serde::from_str(&format!("targets: [\"127.0.0.1:1\"]\n{yaml}")).expect("spec");
        Guard::new(policy_bundles::resilience::compile(&spec).expect("compiles"), targets)
    }

    #[test]
    fn five_failures_in_a_row_eject_a_target_for_longer_each_time_but_never_the_last_one() {
        let g = guard("outlier: { consecutive_failures: 5, base_ejection: 1s, max_ejected: 0.5 }", 3);
        let all = |_| true;
        for _ in 0..4 {
            assert_eq!(g.failed(0, 1000, all), None);
        }
        g.succeeded(0);
        assert_eq!(g.failed(0, 1000, all), None, "a success resets the count");
        for _ in 0..3 {
            g.failed(0, 1000, all);
        }
        assert_eq!(g.failed(0, 1000, all), Some(Duration::from_secs(1)));
        assert!(g.ejected(0, 1500) && !g.ejected(0, 2001));
        // Half of three is one: a second target is not ejected while the first is.
        for _ in 0..5 {
            assert_eq!(g.failed(1, 1500, all), None);
        }
        // Back, failing again: two seconds this time.
        for _ in 0..5 {
            g.failed(0, 2100, all);
        }
        assert_eq!(g.ejected_until(0, 2100), Some(4100));
        // The last target serving is never ejected.
        let g = guard("outlier: { max_ejected: 1.0 }", 2);
        for _ in 0..5 {
            g.failed(0, 0, all);
        }
        assert!(g.ejected(0, 1));
        for _ in 0..10 {
            assert_eq!(g.failed(1, 1, all), None);
        }
    }

    #[test]
    fn retries_stay_within_their_share_of_requests_plus_the_floor() {
        let g = guard("retries: { budget: { ratio: 0.2, min_per_second: 1 } }", 1);
        for _ in 0..1000 {
            g.requested(100);
        }
        let allowed = (0..1000).filter(|_| g.retry_allowed(100)).count();
        assert_eq!(allowed, 200 + 10, "20% of 1000, plus one a second over ten seconds");
        // Ten seconds later the window has moved on.
        assert!(g.retry_allowed(111));
    }

    #[tokio::test]
    async fn past_its_slots_and_its_queue_a_request_is_refused_at_once() {
        let g = guard("max_connections: 2\nmax_pending: 1\npending_timeout: 50ms", 1);
        let a = g.slot().await.expect("one");
        let _b = g.slot().await.expect("two");
        assert_eq!(g.in_flight(), 2);
        let started = std::time::Instant::now();
        assert_eq!(g.slot().await.err(), Some(NoSlot::Timeout));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(a);
        assert!(g.slot().await.is_ok(), "a slot freed is taken");
    }
}
