//! Load shedding on the data plane's own terms: at most `max_in_flight` requests are handled at
//! once; up to `max_queue` more may wait `queue_timeout` for a slot; the rest are answered 503
//! with `Retry-After` at once. The admin listener and the sync loop are outside these limits.
//!
//! A slot is one atomic compare-and-swap to take and one to give back while no request waits:
//! the lock and the queue are touched only at the limit. A request that finds every slot held
//! queues in arrival order, and a released slot is handed to the first live waiter rather than
//! freed, so newcomers cannot overtake the queue (the same fairness as a FIFO semaphore).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus::IntGauge;
use tokio::sync::oneshot;

use crate::config::Limits;

/// Set in [`Inner::state`] while the queue holds a waiter (perhaps one that gave up). While it
/// is set, the state changes only under the queue's lock: the fast paths leave it alone.
const WAITERS: usize = 1 << (usize::BITS - 1);

pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    /// Slots held, with [`WAITERS`]. Never more than `max_in_flight` slots.
    state: AtomicUsize,
    /// Waiters in arrival order; each is handed a slot by a send. The [`WAITERS`] bit is set
    /// exactly while this is not empty.
    queue: Mutex<VecDeque<oneshot::Sender<()>>>,
    /// Requests waiting now (bounded by `max_queue`).
    waiting: AtomicUsize,
    limits: Limits,
    in_flight: IntGauge,
}

/// A request's slot; released when the request's context is dropped.
pub struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.in_flight.dec();
        self.inner.release();
    }
}

/// A place in the queue. Dropped without its slot (timed out, or the request cancelled while
/// it waited), it gives back a slot that was handed to it in the meantime.
struct Waiter<'a> {
    inner: &'a Inner,
    rx: oneshot::Receiver<()>,
    served: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        if !self.served {
            // After `close`, no send can succeed: a slot was handed over exactly when it is here.
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.inner.release();
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, VecDeque<oneshot::Sender<()>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot without waiting, unless every slot is held or someone queues already.
    fn try_take(&self) -> bool {
        let max = self.limits.max_in_flight;
        let mut s = self.state.load(Ordering::Acquire);
        while s < max {
            match self.state.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }

    /// Gives a slot back, or hands it to the first waiter still waiting.
    fn release(&self) {
        let mut s = self.state.load(Ordering::Acquire);
        while s & WAITERS == 0 {
            match self.state.compare_exchange_weak(s, s - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
        let mut queue = self.lock();
        while let Some(tx) = queue.pop_front() {
            if tx.send(()).is_ok() {
                if queue.is_empty() {
                    self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                }
                return;
            }
        }
        // Nobody left to hand it to. Another release may have emptied the queue first.
        if self.state.load(Ordering::Acquire) & WAITERS != 0 {
            self.state.fetch_sub(WAITERS + 1, Ordering::AcqRel);
        } else {
            self.state.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Under the queue's lock: a slot freed since [`Inner::try_take`] looked (`Ok(())`), or a
    /// place at the end of the queue.
    fn enqueue(&self) -> Result<(), oneshot::Receiver<()>> {
        let mut queue = self.lock();
        let max = self.limits.max_in_flight;
        let mut s = self.state.load(Ordering::Acquire);
        while s & WAITERS == 0 {
            let (new, took) = if s < max { (s + 1, true) } else { (s | WAITERS, false) };
            match self.state.compare_exchange_weak(s, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if took => return Ok(()),
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // Waiters that gave up stay queued until a release passes them; keep them bounded.
        if queue.len() > self.limits.max_queue {
            queue.retain(|tx| !tx.is_closed());
        }
        let (tx, rx) = oneshot::channel();
        queue.push_back(tx);
        Err(rx)
    }
}

impl Admission {
    pub fn new(limits: Limits, in_flight: IntGauge) -> Admission {
        let inner = Inner {
            state: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            limits,
            in_flight,
        };
        Admission { inner: Arc::new(inner) }
    }

    fn slot(&self) -> Slot {
        self.inner.in_flight.inc();
        Slot { inner: self.inner.clone() }
    }

    /// A slot, or `None` when the request must be shed.
    pub async fn admit(&self) -> Option<Slot> {
        let inner = &*self.inner;
        if inner.try_take() {
            return Some(self.slot());
        }
        if inner.waiting.fetch_add(1, Ordering::Relaxed) >= inner.limits.max_queue {
            inner.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let rx = match inner.enqueue() {
            Ok(()) => {
                inner.waiting.fetch_sub(1, Ordering::Relaxed);
                return Some(self.slot());
            }
            Err(rx) => rx,
        };
        let mut waiter = Waiter { inner, rx, served: false };
        let got = tokio::time::timeout(inner.limits.queue_timeout, &mut waiter.rx).await;
        if matches!(got, Ok(Ok(()))) {
            waiter.served = true;
            return Some(self.slot());
        }
        // Timed out; a slot handed over in the same instant is still this request's.
        waiter.rx.close();
        if waiter.rx.try_recv().is_ok() {
            waiter.served = true;
            return Some(self.slot());
        }
        None
    }

    /// Slots held now (tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner.state.load(Ordering::Acquire) & !WAITERS
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
        };
        Admission::new(limits, IntGauge::new("t", "t").unwrap())
    }

    #[tokio::test]
    async fn sheds_past_the_limit_and_the_queue() {
        let a = admission(2, 0);
        let s1 = a.admit().await.unwrap();
        let _s2 = a.admit().await.unwrap();
        assert!(a.admit().await.is_none(), "no queue: the third is shed at once");
        assert_eq!(a.inner.in_flight.get(), 2);
        drop(s1);
        assert_eq!(a.inner.in_flight.get(), 1);
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
            Limits { queue_timeout: Duration::from_millis(2), ..admission(MAX, 8).inner.limits },
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
        assert_eq!(a.inner.waiting.load(Ordering::SeqCst), 0);
        let mut all = Vec::new();
        for _ in 0..MAX {
            all.extend(a.admit().await);
        }
        assert_eq!(all.len(), MAX, "all {MAX} slots can be taken again at once");
    }
}
