//! The access log: one JSON line per request, written off the request path.
//!
//! A request hands its [`Entry`] to a bounded queue with `try_send` and goes on: a full queue
//! drops the line and counts it in `gateway_access_log_dropped_total`, never waits. One writer
//! thread wakes every 50 ms, drains the queue, serializes and writes the lines in one buffered
//! burst (to stdout or a file) and reopens the file on `SIGUSR1`, for logrotate. The writer
//! never sleeps on the queue itself, so a request's `try_send` never has a thread to wake: no
//! futex call, no context switch per line (waking the writer per line cost a quarter of the
//! throughput on two cores; `loadtest/access-log.sh`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    File(PathBuf),
}

/// One request, as the access log records it. What is cheap to take on the request path is
/// taken as is (the bundle by reference, the upstream as an address); the writer thread formats
/// the time and the address and looks up the route's name and the bundle's revision.
pub struct Entry {
    /// When the request started; written as `time` (RFC 3339).
    pub at: SystemTime,
    pub request_id: String,
    pub client_ip: String,
    pub method: http::Method,
    /// The canonical path: what was matched, decided and forwarded (before `strip_prefix`).
    pub path: String,
    pub host: String,
    /// The bundle that handled the request (its revision is logged), and the route it matched.
    pub bundle: Option<Arc<crate::state::Active>>,
    pub route: Option<usize>,
    pub status: u16,
    /// `allow`, `deny`, `unauthenticated`, `error`, `no_route`, `unavailable`, `shed`, `refused`.
    pub decision: &'static str,
    pub reason: Option<String>,
    pub upstream: Option<std::net::SocketAddr>,
    pub upstream_status: Option<u16>,
    pub duration: Duration,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// The line an [`Entry`] is written as.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: &'a str,
    request_id: &'a str,
    client_ip: &'a str,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    route: Option<&'a str>,
    status: u16,
    decision: &'a str,
    reason: Option<&'a str>,
    upstream: Option<std::net::SocketAddr>,
    upstream_status: Option<u16>,
    duration_ms: f64,
    bytes_in: usize,
    bytes_out: usize,
    bundle_revision: Option<&'a str>,
}

impl Entry {
    fn line<'a>(&'a self, time: &'a str) -> Line<'a> {
        let bundle = self.bundle.as_deref();
        Line {
            time,
            request_id: &self.request_id,
            client_ip: &self.client_ip,
            method: self.method.as_str(),
            path: &self.path,
            host: &self.host,
            route: bundle.zip(self.route).and_then(|(b, ix)| b.snapshot.routes.get(ix)).map(|r| r.name.as_str()),
            status: self.status,
            decision: self.decision,
            reason: self.reason.as_deref(),
            upstream: self.upstream,
            upstream_status: self.upstream_status,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            bundle_revision: bundle.map(|b| b.info.revision.as_str()),
        }
    }
}

/// The request path's end of the queue. Dropped when the server is done (after its in-flight
/// requests), it closes the queue and waits for the writer to write and flush what is queued,
/// so a shutdown or an upgrade loses no line.
pub struct AccessLog {
    tx: Option<SyncSender<Entry>>,
    dropped: IntCounter,
    reopen: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl AccessLog {
    /// Opens the sink and starts the writer thread with a queue of `capacity` lines.
    pub fn start(sink: Sink, capacity: usize, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let out = open(&sink)?;
        let (tx, rx) = sync_channel(capacity.max(1));
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        let writer =
            std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(rx, out, sink, flag))?;
        Ok(AccessLog { tx: Some(tx), dropped, reopen, writer: Some(writer) })
    }

    /// Queues a line; drops and counts it when the queue is full. Never blocks.
    pub fn log(&self, entry: Entry) {
        let queued = match &self.tx {
            Some(tx) => tx.try_send(entry).is_ok(),
            None => false,
        };
        if !queued {
            self.dropped.inc();
        }
    }

    /// The flag the `SIGUSR1` watcher sets.
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
    }
}

fn open(sink: &Sink) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    })
}

/// The writer thread: until every sender is gone.
fn write_lines(rx: Receiver<Entry>, out: Box<dyn Write + Send>, sink: Sink, reopen: Arc<AtomicBool>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match open(&sink) {
                Ok(fresh) => out = std::io::BufWriter::with_capacity(64 * 1024, fresh),
                Err(e) => tracing::warn!(error = %e, "access log: cannot reopen; writing to the old file"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(entry) => {
                    write_one(&mut out, &entry);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
    }
}

fn write_one(out: &mut impl Write, entry: &Entry) {
    let time =
        time::OffsetDateTime::from(entry.at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    if serde_json::to_writer(&mut *out, &entry.line(&time)).is_ok() {
        let _ = out.write_all(b"\n");
    }
}

/// Sets the reopen flag on `SIGUSR1`.
pub struct Reopen {
    pub flag: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for Reopen {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut usr1) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) else {
            tracing::warn!("access log: cannot watch SIGUSR1; the file will not be reopened");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = usr1.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.flag.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}
