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

    /// A slot, or `None` when the request must be shed.
    pub async fn admit(&self) -> Option<Slot> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(self.slot(p));
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.limits.max_queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let got = tokio::time::timeout(self.limits.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(p)) => Some(self.slot(p)),
            _ => None,
        }
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
}
