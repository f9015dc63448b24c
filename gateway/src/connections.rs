//! Bounded downstream connections: past `limits.max_connections` a new connection is closed at
//! once (before a byte of it is read) and counted, so a flood of connections cannot exhaust the
//! gateway's memory or file descriptors. Wraps Pingora's HTTP app, which then handles the
//! connection as usual.
//!
//! Pingora serves a whole connection (every kept-alive HTTP/1.1 request, every h2 stream) within
//! one `process_new`, so a connection is counted from accept to close.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};

/// A Pingora app, bounded in how many connections it holds at once.
pub struct Bounded<A> {
    pub inner: Arc<A>,
    pub max: usize,
    open: AtomicUsize,
    /// `gateway_connections`.
    pub gauge: IntGauge,
    /// `gateway_connections_refused_total`.
    pub refused: IntCounter,
}

impl<A> Bounded<A> {
    pub fn new(inner: A, max: usize, gauge: IntGauge, refused: IntCounter) -> Bounded<A> {
        Bounded { inner: Arc::new(inner), max, open: AtomicUsize::new(0), gauge, refused }
    }
}

/// One held connection; released when dropped.
struct Held<'a, A>(&'a Bounded<A>);

impl<A> Drop for Held<'_, A> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Bounded<A> {
    async fn process_new(self: &Arc<Self>, session: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.gauge.inc();
        let _held = Held(self.as_ref());
        if now > self.max {
            self.refused.inc();
            // Dropping the stream closes it.
            return None;
        }
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
