//! The access log: one JSON line per request, written off the request path.
//!
//! A request hands its [`Entry`] to a bounded queue with `try_send` and goes on: a full queue
//! drops the line and counts it in `gateway_access_log_dropped_total`, never waits. One writer
//! thread wakes every 50 ms, drains the queue, serializes and writes the lines in one buffered
//! burst (to stdout or a file) and reopens the file on `SIGUSR1`, for logrotate. The writer
//! never sleeps on the queue itself, so a request's `try_send` never has a thread to wake: no
//! futex call, no context switch per line (waking the writer per line cost a quarter of the
//! throughput on two cores; `loadtest/access-log.sh`).

pub use crate::config::Sink;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;

use crate::json_line::{self, Timestamp};

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
    pub bundle: Option<Arc<crate::active::Active>>,
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

/// Writes entries as JSON lines ([`crate::json_line`]).
#[derive(Default)]
struct LineWriter {
    line: Vec<u8>,
    time: Timestamp,
}

impl LineWriter {
    fn format(&mut self, e: &Entry) -> &[u8] {
        let bundle = e.bundle.as_deref();
        let route = bundle.zip(e.route).and_then(|(b, ix)| b.snapshot.routes.get(ix)).map(|r| r.name.as_str());
        self.line.clear();
        self.line.extend_from_slice(b"{\"time\":\"");
        self.time.write(e.at, &mut self.line);
        self.line.extend_from_slice(b"\",\"request_id\":");
        json_line::str(&mut self.line, &e.request_id);
        self.line.extend_from_slice(b",\"client_ip\":");
        json_line::str(&mut self.line, &e.client_ip);
        self.line.extend_from_slice(b",\"method\":");
        json_line::str(&mut self.line, e.method.as_str());
        self.line.extend_from_slice(b",\"path\":");
        json_line::str(&mut self.line, &e.path);
        self.line.extend_from_slice(b",\"host\":");
        json_line::str(&mut self.line, &e.host);
        self.line.extend_from_slice(b",\"route\":");
        json_line::opt_str(&mut self.line, route);
        self.line.extend_from_slice(b",\"status\":");
        json_line::uint(&mut self.line, e.status);
        self.line.extend_from_slice(b",\"decision\":");
        json_line::str(&mut self.line, e.decision);
        self.line.extend_from_slice(b",\"reason\":");
        json_line::opt_str(&mut self.line, e.reason.as_deref());
        self.line.extend_from_slice(b",\"upstream\":");
        match e.upstream {
            None => self.line.extend_from_slice(b"null"),
            Some(std::net::SocketAddr::V4(a)) => {
                // By hand: the formatting machinery cost 1,400 instructions a line.
                self.line.push(b'"');
                for (i, octet) in a.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        self.line.push(b'.');
                    }
                    json_line::uint(&mut self.line, octet);
                }
                self.line.push(b':');
                json_line::uint(&mut self.line, a.port());
                self.line.push(b'"');
            }
            Some(a) => {
                self.line.push(b'"');
                let _ = write!(self.line, "{a}");
                self.line.push(b'"');
            }
        }
        self.line.extend_from_slice(b",\"upstream_status\":");
        match e.upstream_status {
            None => self.line.extend_from_slice(b"null"),
            Some(s) => json_line::uint(&mut self.line, s),
        }
        // Milliseconds with three decimals: microsecond precision.
        let micros = e.duration.as_micros();
        self.line.extend_from_slice(b",\"duration_ms\":");
        json_line::uint(&mut self.line, micros / 1000);
        self.line.push(b'.');
        let frac = (micros % 1000) as u16;
        self.line.extend_from_slice(&[
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        self.line.extend_from_slice(b",\"bytes_in\":");
        json_line::uint(&mut self.line, e.bytes_in);
        self.line.extend_from_slice(b",\"bytes_out\":");
        json_line::uint(&mut self.line, e.bytes_out);
        self.line.extend_from_slice(b",\"bundle_revision\":");
        json_line::opt_str(&mut self.line, bundle.map(|b| b.info.revision.as_str()));
        self.line.extend_from_slice(b"}\n");
        &self.line
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
    let mut lines = LineWriter::default();
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
                    let _ = out.write_all(lines.format(&entry));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            at: SystemTime::UNIX_EPOCH + Duration::new(1_796_280_701, 906_078),
            request_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            client_ip: "2001:db8::1".into(),
            method: http::Method::GET,
            path: "/orders/8".into(),
            host: "api.example.com".into(),
            bundle: None,
            route: None,
            status: 200,
            decision: "allow",
            reason: None,
            upstream: Some("10.0.0.5:8080".parse().unwrap()),
            upstream_status: Some(200),
            duration: Duration::from_micros(1_620),
            bytes_in: 0,
            bytes_out: 187,
        }
    }

    fn parse(line: &[u8]) -> serde_json::Value {
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line: {}", String::from_utf8_lossy(line));
        serde_json::from_slice(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)))
    }

    #[test]
    fn a_line_is_json_with_every_field() {
        let mut w = LineWriter::default();
        let v = parse(w.format(&entry()));
        assert_eq!(v["time"], "2026-12-03T06:51:41.000906078Z");
        let parsed =
            time::OffsetDateTime::parse(v["time"].as_str().unwrap(), &time::format_description::well_known::Rfc3339);
        assert_eq!(parsed.map(|t| t.unix_timestamp_nanos()).ok(), Some(1_796_280_701_000_906_078));
        assert_eq!(v["client_ip"], "2001:db8::1");
        assert_eq!(v["upstream"], "10.0.0.5:8080");
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["duration_ms"], 1.62);
        assert_eq!(v["bytes_out"], 187);
        assert!(v["route"].is_null() && v["reason"].is_null() && v["bundle_revision"].is_null(), "{v}");
        // The next second is formatted afresh, not taken from the cache.
        let mut later = entry();
        later.at += Duration::from_secs(1);
        assert_eq!(parse(w.format(&later))["time"], "2026-12-03T06:51:42.000906078Z");
    }

    #[test]
    fn a_value_with_quotes_newlines_or_control_characters_cannot_forge_a_log_line() {
        let mut e = entry();
        e.path = "/x\"}\n{\"decision\":\"allow\",\"path\":\"/admin".into();
        e.host = "h\u{1b}[31m\\".into();
        e.reason = Some("line\r\nbreak \u{7f} é".into());
        e.upstream = Some("[::1]:443".parse().unwrap());
        e.upstream_status = None;
        let mut w = LineWriter::default();
        let v = parse(w.format(&e));
        assert_eq!(v["path"], e.path.as_str());
        assert_eq!(v["host"], e.host.as_str());
        assert_eq!(v["reason"], "line\r\nbreak \u{7f} é");
        assert_eq!(v["upstream"], "[::1]:443");
        assert!(v["upstream_status"].is_null());
        assert_eq!(v["decision"], "allow");
    }
}
