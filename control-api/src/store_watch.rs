//! Whether this replica's view of the store is current. The hub answers bundle GETs and long
//! polls from memory, so a replica cut off from its database would otherwise go on serving
//! what it last knew as if it were the latest, and the gateways on it would neither fail over
//! nor hear of publishes made through other replicas.
//!
//! [`probe`] asks the store for a trivial answer every quarter of `store_stale_after`, each
//! time within half of it. When no probe has succeeded for `store_stale_after`, or the
//! PostgreSQL notification connection (how other replicas' publishes are heard) has been down
//! that long, the replica is **cut off**: `/readyz` answers 503, bundle GETs answer 503 and held
//! long polls are released with 503, so gateways ask their next source. When both are back it
//! reloads every bundle it holds from the store and is current again, by itself.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::long_poll_hub::Hub;
use crate::store::Store;

/// This replica's standing with its store.
pub struct StoreWatch {
    /// `Some(why)` while cut off.
    state: watch::Sender<Option<String>>,
    /// When the notification connection was lost (Unix ms); 0 while it is up (or not used).
    listener_lost_at_ms: AtomicI64,
    /// How long the store may be out of reach before this replica stops answering as current.
    pub stale_after: Duration,
}

impl StoreWatch {
    pub fn new(stale_after: Duration) -> StoreWatch {
        StoreWatch { state: watch::Sender::new(None), listener_lost_at_ms: AtomicI64::new(0), stale_after }
    }

    /// Why this replica is cut off from its store; `None` while its view is current.
    pub fn cut_off(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// A receiver that sees each change between current and cut off.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }

    /// The notification connection was lost (changes made through other replicas go unheard).
    pub fn listener_lost(&self) {
        let now = crate::clock::now_ms().max(1);
        let _ = self.listener_lost_at_ms.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The notification connection is back (and a full reload was asked for).
    pub fn listener_back(&self) {
        self.listener_lost_at_ms.store(0, Ordering::Release);
    }

    /// Why the replica should count as cut off now, from the last good probe and the listener.
    fn verdict(&self, since_ok: Duration, last_error: &str) -> Option<String> {
        if since_ok > self.stale_after {
            return Some(format!(
                "this replica has not reached its store for {:.1} s ({last_error}); ask another source",
                since_ok.as_secs_f64()
            ));
        }
        let lost = self.listener_lost_at_ms.load(Ordering::Acquire);
        let down_ms = crate::clock::now_ms().saturating_sub(lost);
        if lost != 0 && down_ms > i64::try_from(self.stale_after.as_millis()).unwrap_or(i64::MAX) {
            return Some(format!(
                "this replica's PostgreSQL notification connection has been down for {:.1} s: it cannot hear \
                 publishes made through other replicas; ask another source",
                down_ms as f64 / 1000.0
            ));
        }
        None
    }
}

/// Probes `store` until `shutdown` turns true, and moves the replica between current and cut
/// off (`up`: `control_api_store_up`); on the way back, `hub` reloads what it holds.
pub async fn probe(
    w: &StoreWatch,
    store: &dyn Store,
    hub: &Hub,
    up: &prometheus::IntGauge,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = (w.stale_after / 4).max(Duration::from_millis(50));
    let mut last_ok = Instant::now();
    let mut last_error = String::new();
    up.set(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|down| *down) => return,
        }
        match tokio::time::timeout(w.stale_after / 2, store.ping()).await {
            Ok(Ok(())) => last_ok = Instant::now(),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("no answer within {} ms", (w.stale_after / 2).as_millis()),
        }
        let verdict = w.verdict(last_ok.elapsed(), &last_error);
        match (w.cut_off().is_some(), verdict) {
            (false, Some(why)) => {
                tracing::error!(why = %why, "cut off from the store: answering 503 until it is back");
                up.set(0);
                w.state.send_replace(Some(why));
            }
            (true, None) => {
                // What was published meanwhile went unheard: read everything afresh first.
                hub.reload_all().await;
                tracing::info!("the store is back: bundles reloaded, serving as current again");
                up.set(1);
                w.state.send_replace(None);
            }
            // Still cut off: the message keeps up with the time, waking nobody.
            (true, Some(why)) => {
                w.state.send_if_modified(|v| {
                    *v = Some(why);
                    false
                });
            }
            (false, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_cut_off_only_past_the_bound_and_says_why() {
        let w = StoreWatch::new(Duration::from_secs(3));
        assert_eq!(w.verdict(Duration::from_millis(2900), "x"), None);
        let why = w.verdict(Duration::from_millis(3100), "connection refused").expect("cut off");
        assert!(why.contains("3.1 s") && why.contains("connection refused"), "{why}");
        // The listener lost just now: not yet; lost long ago: cut off, whatever the probes say.
        w.listener_lost();
        assert_eq!(w.verdict(Duration::ZERO, ""), None);
        w.listener_lost_at_ms.store(crate::clock::now_ms() - 4000, Ordering::Release);
        w.listener_lost();
        let why = w.verdict(Duration::ZERO, "").expect("cut off");
        assert!(why.contains("notification connection"), "{why}");
        w.listener_back();
        assert_eq!(w.verdict(Duration::ZERO, ""), None);
    }
}
