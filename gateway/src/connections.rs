//! Bounded downstream connections: past `limits.max_connections` a new connection is closed at
//! once (before a byte of it is read) and counted, so a flood of connections cannot exhaust the
//! gateway's memory or file descriptors. Wraps Pingora's HTTP app, which then handles the
//! connection as usual.
//!
//! Pingora serves a whole connection (every kept-alive HTTP/1.1 request, every h2 stream) within
//! one `process_new`, so a connection is counted from accept to close.
//!
//! An HTTP/1 connection is also [`Guarded`]: its request heads must arrive within
//! `limits.header_timeout` and `limits.max_header_bytes`, and it may idle `keepalive_timeout`
//! between requests. (HTTP/2 is bounded by its own layer: header list size, idle timeout.)

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A Pingora app, bounded in how many connections it holds at once.
pub struct Bounded<A> {
    pub inner: Arc<A>,
    pub max: usize,
    open: AtomicUsize,
    /// `gateway_connections`.
    pub gauge: IntGauge,
    /// `gateway_connections_refused_total`.
    pub refused: IntCounter,
    /// What bounds each HTTP/1 connection's request heads.
    pub heads: Arc<HeadLimits>,
    /// `limits.max_connections_per_ip`, when set.
    pub per_ip: Option<crate::per_ip::PerIp>,
}

impl<A> Bounded<A> {
    pub fn new(inner: A, max: usize, gauge: IntGauge, refused: IntCounter, heads: HeadLimits) -> Bounded<A> {
        Bounded {
            inner: Arc::new(inner),
            max,
            open: AtomicUsize::new(0),
            gauge,
            refused,
            heads: Arc::new(heads),
            per_ip: None,
        }
    }
}

/// One held connection; released when dropped.
struct Held<'a, A>(&'a Bounded<A>);

impl<A> Drop for Held<'_, A> {
    fn drop(&mut self) {
        let before = self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
        crate::heap_purge::connection_closed(before);
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
        let peer = session.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _per_ip = match self.per_ip.as_ref().map(|p| p.admit(peer)) {
            Some(Err(_)) => return None,
            Some(Ok(slot)) => slot,
            None => None,
        };
        if matches!(session.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(session, shutdown).await;
        }
        let mut guarded = Guarded::new(session, self.heads.clone());
        // Pingora drops a connection whose request has not arrived when a graceful shutdown
        // (an upgrade's hand-over) begins, even one it accepted a moment before: the client
        // sees its request cut. So the first request's first byte is waited for here, within
        // `header_timeout`, before Pingora's session starts (plaintext; a TLS stream cannot
        // peek). Closed or silent: nothing to answer.
        if guarded.get_ssl_digest().is_none() && guarded.try_peek(&mut [0u8; 1]).await.is_err() {
            return None;
        }
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// What bounds a connection's request heads: `limits.header_timeout`, `keepalive_timeout` and
/// `max_header_bytes`, with the counters of the connections they close.
#[derive(Clone)]
pub struct HeadLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    /// `gateway_connections_closed_total{reason="header_timeout"}`.
    pub timed_out: IntCounter,
    /// `gateway_connections_closed_total{reason="header_too_large"}`.
    pub too_large: IntCounter,
}

/// Why a guarded connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// No (whole) head within `header_timeout`: 408 if some of it came, else closed quietly.
    HeaderTimeout,
    /// More than `max_header_bytes` before the head's end: 431.
    HeaderTooLarge,
}

impl Close {
    fn answer(self) -> &'static [u8] {
        match self {
            Close::HeaderTimeout => b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            Close::HeaderTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
        }
    }

    fn error(self) -> io::Error {
        match self {
            Close::HeaderTimeout => {
                io::Error::new(io::ErrorKind::TimedOut, "request head not received within limits.header_timeout")
            }
            Close::HeaderTooLarge => {
                io::Error::new(io::ErrorKind::InvalidData, "request head larger than limits.max_header_bytes")
            }
        }
    }
}

/// What a connection's reads are for at the moment.
#[derive(Debug)]
enum Phase {
    /// Reading a request head: `seen` bytes of it so far, `tail` its last two bytes.
    Head { seen: usize, tail: [u8; 2] },
    /// The head is in: body, response, tunnel. No head deadline applies.
    Request,
    /// Between requests on a kept-alive connection, nothing of the next one read yet.
    Idle,
    /// Answering `why` (`written` bytes of its answer sent), then failing the read.
    Closing { why: Close, written: usize },
}

/// An HTTP/1 downstream connection whose request heads are bounded in time and size.
///
/// Pingora bounds each read of a head by its keep-alive value (60 s), so a client sending a
/// byte a minute holds a connection for ever; here the whole head has `header_timeout` from
/// its first byte (from the accept for the first request), and `max_header_bytes` in all.
/// The wrapper finds a head's end itself (the first empty line); the proxy tells it a response
/// is done ([`Guarded::response_done`]), which starts the keep-alive wait for the next head.
pub struct Guarded {
    inner: Stream,
    phase: Phase,
    limits: Arc<HeadLimits>,
    /// When the current phase ends the connection; `None` while a request is being served.
    deadline: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// Set by the proxy once a response is sent; the next read starts the idle phase.
    done: AtomicBool,
}

impl Guarded {
    pub fn new(inner: Stream, limits: Arc<HeadLimits>) -> Guarded {
        let deadline = Instant::now() + limits.header_timeout;
        Guarded {
            inner,
            phase: Phase::Head { seen: 0, tail: [0; 2] },
            limits,
            deadline: Some(deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            done: AtomicBool::new(false),
        }
    }

    /// The response to the current request is sent: what is read next is the next head.
    pub fn response_done(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// The guard of a Pingora downstream stream, if it has one.
    pub fn of(stream: &Stream) -> Option<&Guarded> {
        stream.as_ref().as_any().downcast_ref::<Guarded>()
    }

    fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at;
        if let Some(at) = at {
            self.timer.as_mut().reset(at);
        }
    }

    fn close(&mut self, why: Close) {
        match why {
            Close::HeaderTimeout => self.limits.timed_out.inc(),
            Close::HeaderTooLarge => self.limits.too_large.inc(),
        }
        self.phase = Phase::Closing { why, written: 0 };
        // The answer gets a second to be written; a client that does not read loses it.
        self.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
    }

    /// Follows the bytes just read: the head's end, its size, HTTP/2's preface.
    fn observe(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        let (seen, tail) = match self.phase {
            Phase::Idle => (0, [0; 2]),
            Phase::Head { seen, tail } => (seen, tail),
            Phase::Request | Phase::Closing { .. } => return,
        };
        if seen == 0 {
            if matches!(self.phase, Phase::Idle) {
                self.set_deadline(Some(Instant::now() + self.limits.header_timeout));
            }
            if new.starts_with(b"PRI * HTTP/2") {
                // h2c: the HTTP/2 layer bounds its own frames and idle time.
                self.phase = Phase::Request;
                self.set_deadline(None);
                return;
            }
        }
        match head_end(tail, new) {
            Some(end) if seen + end <= self.limits.max_header_bytes => {
                self.phase = Phase::Request;
                self.set_deadline(None);
            }
            Some(_) => self.close(Close::HeaderTooLarge),
            None if seen + new.len() > self.limits.max_header_bytes => self.close(Close::HeaderTooLarge),
            None => {
                let tail = match new {
                    [.., a, b] => [*a, *b],
                    [b] => [tail[1], *b],
                    [] => tail,
                };
                self.phase = Phase::Head { seen: seen + new.len(), tail };
            }
        }
    }

    /// The deadline passed.
    fn expire(&mut self) -> Poll<io::Result<()>> {
        match self.phase {
            // A kept-alive connection idle for `keepalive_timeout`: an ordinary end.
            Phase::Idle => Poll::Ready(Ok(())),
            Phase::Head { seen: 0, .. } => {
                self.limits.timed_out.inc();
                Poll::Ready(Ok(()))
            }
            Phase::Head { .. } => {
                self.close(Close::HeaderTimeout);
                Poll::Pending
            }
            Phase::Closing { why, .. } => Poll::Ready(Err(why.error())),
            Phase::Request => Poll::Pending,
        }
    }

    /// Writes the closing answer, then fails the read (Pingora then closes the connection).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Phase::Closing { why, written } = self.phase else {
            return Poll::Ready(Ok(()));
        };
        let answer = why.answer();
        let mut written = written;
        while written < answer.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &answer[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(why.error())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => {
                    self.phase = Phase::Closing { why, written };
                    return self.poll_timer(cx);
                }
            }
        }
        self.phase = Phase::Closing { why, written };
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.poll_timer(cx),
            Poll::Ready(_) => Poll::Ready(Err(why.error())),
        }
    }

    /// Pending until the deadline; then what it means for the phase.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.deadline.is_none() {
            return Poll::Pending;
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => self.expire(),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Where a request head ends in `new` (the index just past its empty line), given the two
/// bytes read before it. A bare LF ends a line too, as Pingora's parser accepts it.
fn head_end(tail: [u8; 2], new: &[u8]) -> Option<usize> {
    let at = |i: usize, back: usize| -> u8 {
        match i.checked_sub(back) {
            Some(j) => new[j],
            None => tail[2 + i - back],
        }
    };
    memchr::memchr_iter(b'\n', new).find_map(|i| {
        let p1 = at(i, 1);
        (p1 == b'\n' || (p1 == b'\r' && at(i, 2) == b'\n')).then_some(i + 1)
    })
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done.load(Ordering::Relaxed) {
            // Only this connection's task reads and writes it: a plain load and store suffice.
            this.done.store(false, Ordering::Relaxed);
            if matches!(this.phase, Phase::Request) {
                this.phase = Phase::Idle;
                let keepalive = this.limits.keepalive_timeout;
                this.set_deadline(Some(Instant::now() + keepalive));
            }
        }
        loop {
            if matches!(this.phase, Phase::Closing { .. }) {
                return this.poll_answer(cx);
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    this.observe(&buf.filled()[before..]);
                    if matches!(this.phase, Phase::Closing { .. }) {
                        // What was read is not handed on: the connection is being refused.
                        buf.set_filled(before);
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => match this.poll_timer(cx) {
                    Poll::Pending if matches!(this.phase, Phase::Closing { .. }) => continue,
                    other => return other,
                },
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    /// Pingora peeks for the h2c preface before reading; that wait is bounded by the head's deadline.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let Some(deadline) = self.deadline else {
            return self.inner.try_peek(buf).await;
        };
        match tokio::time::timeout_at(deadline, self.inner.try_peek(buf)).await {
            Ok(r) => r,
            Err(_) => {
                self.limits.timed_out.inc();
                Err(Close::HeaderTimeout.error())
            }
        }
    }
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded").field("inner", &self.inner).field("phase", &self.phase).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn a_head_ends_at_its_first_empty_line_across_reads() {
        assert_eq!(head_end([0; 2], b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\r\n\r\n"), Some(27));
        assert_eq!(head_end([0; 2], b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(head_end([0; 2], b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        // The empty line split over two reads, at each place it can split.
        assert_eq!(head_end(*b"\r\n", b"\r\n"), Some(2));
        assert_eq!(head_end(*b"a\r", b"\n\r\n"), Some(3));
        assert_eq!(head_end(*b"\n\r", b"\n"), Some(1));
        assert_eq!(head_end(*b"a\n", b"\n"), Some(1));
        assert_eq!(head_end(*b"\r\n", b"X\r\n"), None);
    }
}
