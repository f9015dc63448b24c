//! Load shedding on the data plane's own terms: at most `max_in_flight` requests are handled at
//! once; up to `max_queue` more may wait `queue_timeout` for a slot; the rest are answered 503
//! with `Retry-After` at once. The admin listener and the sync loop are outside these limits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: Limits,
    in_flight: IntGauge,
}

/// A request's slot; released when the request's context is dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    in_flight: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl Admission {
    pub fn new(limits: Limits, in_flight: IntGauge) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(limits.max_in_flight)),
            waiting: AtomicUsize::new(0),
            limits,
            in_flight,
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.in_flight.inc();
        Slot { _permit: permit, in_flight: self.in_flight.clone() }
    }

    /// Slots held now (tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.limits.max_in_flight - self.slots.available_permits()
    }

    /// A slot, or `None` when the request must be shed.
    pub async fn admit(&self) -> Option<Slot> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(self.slot(p));
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.limits.max_queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        // Counted out when the wait ends however it ends: also when the request is cancelled
        // while it waits (its client hung up), or each such request would keep a place.
        let _place = Place(&self.waiting);
        let got = tokio::time::timeout(self.limits.queue_timeout, self.slots.clone().acquire_owned()).await;
        match got {
            Ok(Ok(p)) => Some(self.slot(p)),
            _ => None,
        }
    }
}

/// A place in the queue, given back when dropped.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admission(max_in_flight: usize, max_queue: usize) -> Admission {
        let limits = Limits {
            max_connections: 100,
            max_body: 1 << 20,
            max_in_flight,
            max_queue,
            queue_timeout: Duration::from_millis(50),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            tunnel_max_bytes: 0,
            rate_limit_keys: 1024,
            max_connections_per_ip: 0,
        };
        Admission::new(limits, IntGauge::new("t", "t").unwrap())
    }

    #[tokio::test]
    async fn sheds_past_the_limit_and_the_queue() {
        let a = admission(2, 0);
        let s1 = a.admit().await.unwrap();
        let _s2 = a.admit().await.unwrap();
        assert!(a.admit().await.is_none(), "no queue: the third is shed at once");
        assert_eq!(a.in_flight.get(), 2);
        drop(s1);
        assert_eq!(a.in_flight.get(), 1);
        assert!(a.admit().await.is_some(), "a released slot is reused");
    }

    #[tokio::test]
    async fn a_queued_request_gets_a_slot_freed_within_the_timeout() {
        let a = Arc::new(admission(1, 1));
        let s1 = a.admit().await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit().await.is_some() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The queue (one place) is taken by the waiter: another is shed at once.
        assert!(a.admit().await.is_none());
        drop(s1);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn a_newcomer_cannot_take_the_slot_a_queued_request_waits_for() {
        let a = Arc::new(admission(1, 1));
        let s1 = a.admit().await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(s1);
        // The slot went to the waiter: held, not free, though the waiter has not run yet.
        assert_eq!(a.held(), 1);
        assert!(a.admit().await.is_none(), "the queue's place is free again but the slot is not: shed");
        let slot = waiter.await.unwrap();
        assert!(slot.is_some(), "the queued request got the released slot");
        drop(slot);
        assert_eq!(a.held(), 0);
        assert!(a.admit().await.is_some());
    }

    #[tokio::test]
    async fn clients_hanging_up_while_queued_do_not_fill_the_queue_for_good() {
        let a = Arc::new(admission(1, 2));
        let s1 = a.admit().await.unwrap();
        for _ in 0..5 {
            let a2 = a.clone();
            let waiter = tokio::spawn(async move { a2.admit().await.map(|_| ()) });
            tokio::time::sleep(Duration::from_millis(5)).await;
            waiter.abort();
            let _ = waiter.await;
        }
        assert_eq!(a.waiting.load(Ordering::SeqCst), 0, "every cancelled waiter gave its place back");
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit().await.is_some() });
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(s1);
        assert!(waiter.await.unwrap(), "the queue still takes a request and serves it");
    }

    #[tokio::test]
    async fn a_request_cancelled_while_queued_gives_back_a_slot_handed_to_it() {
        let a = Arc::new(admission(1, 2));
        let s1 = a.admit().await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The slot is handed to the waiter, and its client goes away before the waiter ran
        // again (one thread: it cannot run in between): its request's future is dropped.
        drop(s1);
        assert_eq!(a.held(), 1, "handed over");
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(a.held(), 0, "the cancelled waiter gave the slot it was handed back");
        assert!(a.admit().await.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_storm_of_waiters_timing_out_and_cancelled_never_exceeds_the_limit_or_leaks_a_slot() {
        const MAX: usize = 3;
        let a = Arc::new(Admission::new(
            Limits { queue_timeout: Duration::from_millis(2), ..admission(MAX, 8).limits },
            IntGauge::new("t", "t").unwrap(),
        ));
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let (a, holding, most) = (a.clone(), holding.clone(), most.clone());
                tokio::spawn(async move {
                    let mut served = 0u32;
                    for i in 0..200u64 {
                        let admit = a.admit();
                        // Every seventh attempt is cancelled part-way, as a client hanging up.
                        let got = if (t + i) % 7 == 0 {
                            tokio::time::timeout(Duration::from_micros(300), admit).await.ok().flatten()
                        } else {
                            admit.await
                        };
                        if let Some(slot) = got {
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            holding.fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                            served += 1;
                        }
                    }
                    served
                })
            })
            .collect();
        let mut served = 0;
        for t in tasks {
            served += t.await.unwrap();
        }
        assert!(served > 0 && served < 64 * 200, "some served, some shed: {served}");
        assert!(most.load(Ordering::SeqCst) <= MAX, "at most {MAX} at once, saw {}", most.load(Ordering::SeqCst));
        assert_eq!(a.held(), 0, "every slot came back");
        assert_eq!(a.waiting.load(Ordering::SeqCst), 0);
        let mut all = Vec::new();
        for _ in 0..MAX {
            all.extend(a.admit().await);
        }
        assert_eq!(all.len(), MAX, "all {MAX} slots can be taken again at once");
    }
}
