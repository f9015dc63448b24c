//! Decision logs in OPA's schema, shipped off the request path.
//!
//! A request whose decision is logged (every deny and error, every refusal of its credentials
//! before its rule was asked; allows as `decision_logs.sample` says) takes what the event needs as
//! it is (the canonical request's method, URI and headers, the verified token, the decision: by
//! reference or a plain copy) and hands a [`Pending`] to a bounded channel with `try_send`: a full
//! channel drops it and counts it, never waits. The shipper, a thread of its own that wakes every
//! 100 ms (so a `try_send` never has a thread to wake), writes each event (`event::event`: the
//! policy's full input as the gateway builds it, the bundle's own `data.system.log.drop` and
//! `data.system.log.mask` rules with OPA's semantics) and keeps the serialized events in a buffer
//! bounded in bytes (full: the oldest go, counted). Batches up to `upload_size_limit` are sent as
//! gzip JSON arrays to the first sink that takes them, with exponential backoff while none does.
//! When the server is done (its in-flight requests answered, its runtimes shut down:
//! [`DecisionLogs::finish`], called after Pingora's `run` returns) the shipper takes what is still
//! queued, tries one last send, writes what is left to the spool file if one is set (it also does
//! every 5 s while no sink takes a batch), and is joined: a restart sends the spool first. On a
//! binary upgrade the new process has read the spool before the old one finished: it takes in the
//! events of a spool that another process wrote since (checked every second). Sinks dedupe by
//! `decision_id`, so an event sent twice is not logged twice.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value as Json;

use crate::config::{Compression, DecisionLogsConfig};
use crate::metrics::DecisionLogCounters as Counters;

mod event;
pub use event::{decision_id, Answer, Extra, LimitHit, Pending, ShadowAnswer, ShortId};
use event::{event, Scratch};

/// The gzip level of batches: 1, the fastest (chosen by measurement: see the module docs).
const GZIP_LEVEL: u32 = 1;

/// Decisions waiting for the shipper; past it they are dropped (`reason="queue_full"`).
const QUEUE: usize = 16_384;

/// The request path's end: decides what is logged and queues it. Finished (or dropped) when
/// the server is done: the shipper sends or spools what it holds and is joined.
pub struct DecisionLogs {
    tx: SyncSender<Pending>,
    sample: f64,
    counters: Counters,
    closing: Arc<AtomicBool>,
    shipper: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for DecisionLogs {
    fn drop(&mut self) {
        self.finish();
    }
}

impl DecisionLogs {
    /// Starts the shipper thread.
    pub fn start(config: DecisionLogsConfig, instance: String, counters: Counters) -> std::io::Result<DecisionLogs> {
        let (tx, rx) = sync_channel(QUEUE);
        let sample = config.sample;
        let closing = Arc::new(AtomicBool::new(false));
        let shipper = Shipper { config, instance, counters: counters.clone(), closing: closing.clone() };
        let handle = std::thread::Builder::new().name("decision-logs".into()).spawn(move || shipper.run(rx))?;
        Ok(DecisionLogs { tx, sample, counters, closing, shipper: Mutex::new(Some(handle)) })
    }

    /// Once no request is left to log: the shipper takes what is queued, sends it if a sink
    /// takes it within 2 s, spools the rest, and is joined. Decisions submitted after it are
    /// dropped (`queue_full`).
    pub fn finish(&self) {
        self.closing.store(true, Ordering::Release);
        let handle = self.shipper.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Whether a decision is logged: denies and errors always, allows by `sample`.
    pub fn wants(&self, allowed: bool) -> bool {
        !allowed || self.sample >= 1.0 || (self.sample > 0.0 && rand::random::<f64>() < self.sample)
    }

    /// Queues a decision; drops and counts it when the queue is full. Never waits.
    pub fn submit(&self, pending: Pending) {
        if self.tx.try_send(pending).is_err() {
            self.counters.queue_full.inc();
        }
    }
}

/// Builds, buffers and ships the events, on its own thread.
struct Shipper {
    config: DecisionLogsConfig,
    instance: String,
    counters: Counters,
    closing: Arc<AtomicBool>,
}

/// Serialized events, oldest first, bounded in bytes, in one contiguous run: each event is
/// written straight into it and followed by a comma, so a batch is one slice (`[` + slice
/// without its last comma + `]`), compressed or sent as it is, never copied event by event.
struct Buffer {
    data: Vec<u8>,
    /// Where the oldest live event starts in `data` (the bytes before it are shipped or dropped,
    /// reclaimed when they are most of `data`).
    start: usize,
    /// The end (after its comma) of each live event in `data`, oldest first.
    ends: VecDeque<usize>,
    /// Live bytes, commas included.
    bytes: usize,
    max: usize,
}

impl Buffer {
    fn new(max: usize) -> Buffer {
        Buffer { data: Vec::new(), start: 0, ends: VecDeque::new(), bytes: 0, max }
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Writes an event at the end with `write`, which appends it to the vector it is given (and
    /// answers `false`, leaving it as it was, when there is none); then drops the oldest events
    /// past the bound, counting them.
    fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>) -> bool, c: &Counters) -> bool {
        let at = self.data.len();
        if !write(&mut self.data) || self.data.len() == at {
            self.data.truncate(at);
            return false;
        }
        self.data.push(b',');
        self.bytes += self.data.len() - at;
        self.ends.push_back(self.data.len());
        while self.bytes > self.max && self.ends.len() > 1 {
            self.drop_front(1);
            c.buffer_full.inc();
        }
        c.buffer_bytes.set(self.bytes as i64);
        true
    }

    fn push(&mut self, event: &[u8], c: &Counters) {
        self.push_with(
            |d| {
                d.extend_from_slice(event);
                true
            },
            c,
        );
    }

    /// Each live event's bytes (without its comma), oldest first.
    fn events(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut from = self.start;
        self.ends.iter().map(move |&end| {
            let e = &self.data[from..end - 1];
            from = end;
            e
        })
    }

    /// How many events from the front make a batch within `limit` bytes (at least one).
    fn batch_len(&self, limit: usize) -> usize {
        let limit = limit.saturating_sub(1) + self.start;
        let n = self.ends.iter().take_while(|&&end| end <= limit).count();
        n.max(usize::from(!self.ends.is_empty()))
    }

    /// The first `n` events as a JSON array's inside: `e1,e2,…` (no brackets).
    fn batch(&self, n: usize) -> &[u8] {
        match n.checked_sub(1).and_then(|i| self.ends.get(i)) {
            Some(&end) => &self.data[self.start..end - 1],
            None => &[],
        }
    }

    fn drop_front(&mut self, n: usize) {
        for end in self.ends.drain(..n.min(self.ends.len())) {
            self.bytes -= end - self.start;
            self.start = end;
        }
        if self.ends.is_empty() {
            self.data.clear();
            self.start = 0;
        } else if self.start * 2 >= self.data.len() {
            // Reclaim the dead front once it is most of the run: amortized, one move per byte.
            self.data.drain(..self.start);
            let moved = self.start;
            self.ends.iter_mut().for_each(|e| *e -= moved);
            self.start = 0;
        }
    }

    fn take_front(&mut self, n: usize, c: &Counters) {
        self.drop_front(n);
        c.buffer_bytes.set(self.bytes as i64);
    }
}

impl Shipper {
    fn run(self, rx: Receiver<Pending>) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            tracing::error!("decision logs: cannot start the shipper's runtime; nothing will be shipped");
            return;
        };
        let mut buffer = Buffer::new(self.config.buffer);
        let mut spool = self.config.spool.as_deref().map(Spool::new);
        if let Some(s) = &mut spool {
            s.take_in(&mut buffer, &self.counters);
        }
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        let (mut next_send, mut backoff, mut last_spool) = (Instant::now(), Duration::ZERO, Instant::now());
        let (mut last_look, mut scratch) = (Instant::now(), Scratch::default());
        let mut open = true;
        while open {
            std::thread::sleep(Duration::from_millis(100));
            open = self.drain(&rx, &mut buffer, &mut scratch) && !self.closing.load(Ordering::Acquire);
            if let Some(s) = spool.as_mut().filter(|_| last_look.elapsed() >= Duration::from_secs(1)) {
                last_look = Instant::now();
                if s.changed() {
                    s.take_in(&mut buffer, &self.counters);
                    s.write(&buffer);
                }
            }
            let full_batch = buffer.bytes >= self.config.upload_size_limit;
            let due = Instant::now() >= next_send || (full_batch && backoff.is_zero());
            if buffer.is_empty() || !due || !open {
                continue;
            }
            if rt.block_on(self.ship(&client, &mut buffer)) {
                backoff = Duration::ZERO;
                next_send = Instant::now() + self.config.flush_interval;
            } else {
                backoff = (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
                next_send = Instant::now() + backoff;
                if let Some(s) = spool.as_mut().filter(|_| last_spool.elapsed() > Duration::from_secs(5)) {
                    s.write(&buffer);
                    last_spool = Instant::now();
                }
            }
        }
        // The server is done: what is still queued, one last short try; the rest is spooled.
        self.drain(&rx, &mut buffer, &mut scratch);
        if !buffer.is_empty() {
            let quick = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap_or_default();
            rt.block_on(self.ship(&quick, &mut buffer));
        }
        if let Some(s) = &mut spool {
            if s.changed() {
                s.take_in(&mut buffer, &self.counters);
            }
            s.write(&buffer);
        }
    }

    /// Moves what the queue holds into the buffer; false once the queue is closed and empty.
    fn drain(&self, rx: &Receiver<Pending>, buffer: &mut Buffer, scratch: &mut Scratch) -> bool {
        let (mut buffered, mut dropped) = (0, 0);
        let open = loop {
            let p = match rx.try_recv() {
                Ok(p) => p,
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            };
            match buffer.push_with(|out| event(&p, &self.instance, scratch, out), &self.counters) {
                true => buffered += 1,
                false => dropped += 1,
            }
        };
        self.counters.buffered.inc_by(buffered);
        self.counters.dropped_by_policy.inc_by(dropped);
        open
    }

    /// Sends batches until the buffer is empty or no sink takes one; false on failure.
    async fn ship(&self, client: &reqwest::Client, buffer: &mut Buffer) -> bool {
        while !buffer.is_empty() {
            let n = buffer.batch_len(self.config.upload_size_limit);
            let body = match self.config.compression {
                Compression::Gzip => match gzip_array(buffer.batch(n)) {
                    Some(gz) => bytes::Bytes::from(gz),
                    None => return false,
                },
                Compression::None => bytes::Bytes::from([b"[", buffer.batch(n), b"]"].concat()),
            };
            match self.post(client, body).await {
                Delivery::Taken => self.counters.shipped.inc_by(n as u64),
                Delivery::Refused => self.counters.rejected.inc_by(n as u64),
                Delivery::Failed => return false,
            }
            buffer.take_front(n, &self.counters);
        }
        true
    }

    async fn post(&self, client: &reqwest::Client, body: bytes::Bytes) -> Delivery {
        let mut refused = false;
        for sink in &self.config.sinks {
            let mut req = client.post(sink).header("content-type", "application/json").body(body.clone());
            if self.config.compression == Compression::Gzip {
                req = req.header("content-encoding", "gzip");
            }
            if let Some(t) = &self.config.token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => return Delivery::Taken,
                // A 403 is about the batch (an event of a bundle the token may not log): sent
                // again it is refused again, and would hold back every batch behind it.
                Ok(r) if r.status().is_client_error() && !matches!(r.status().as_u16(), 401 | 408 | 429) => {
                    tracing::warn!(sink = %sink, status = %r.status(), "decision-log sink refused a batch");
                    refused = true;
                }
                Ok(r) => tracing::debug!(sink = %sink, status = %r.status(), "decision-log sink failed"),
                Err(e) => tracing::debug!(sink = %sink, error = %e, "decision-log sink unreachable"),
            }
        }
        if refused {
            Delivery::Refused
        } else {
            Delivery::Failed
        }
    }
}

/// The spool file, and what this process last made of it.
struct Spool {
    path: PathBuf,
    /// The modification time of the spool as this process last wrote or read it.
    seen: Option<SystemTime>,
}

impl Spool {
    fn new(path: &Path) -> Spool {
        Spool { path: path.to_owned(), seen: None }
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }

    /// Whether another process (the one this one took over from) wrote the spool since.
    fn changed(&self) -> bool {
        self.mtime().is_some_and(|m| Some(m) != self.seen)
    }

    /// Adds the spool's events to the buffer (it holds what the buffer did not ship).
    fn take_in(&mut self, buffer: &mut Buffer, c: &Counters) {
        self.seen = self.mtime();
        for event in read_spool(&self.path, buffer.max) {
            buffer.push(&event, c);
        }
    }

    /// Replaces the spool with the buffer's events.
    fn write(&mut self, buffer: &Buffer) {
        match write_spool(&self.path, buffer.events()) {
            Ok(()) => self.seen = self.mtime(),
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot write the decision-log spool"),
        }
    }
}

/// What became of a batch.
enum Delivery {
    Taken,
    /// A sink answered that the batch is wrong (a 4xx): retrying it would never succeed.
    Refused,
    Failed,
}

/// `[inside]`, gzipped at [`GZIP_LEVEL`].
fn gzip_array(inside: &[u8]) -> Option<Vec<u8>> {
    let level = flate2::Compression::new(GZIP_LEVEL);
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(inside.len() / 8 + 64), level);
    gz.write_all(b"[").ok()?;
    gz.write_all(inside).ok()?;
    gz.write_all(b"]").ok()?;
    gz.finish().ok()
}

/// The spool: one event per line, replaced whole (written beside, then renamed).
fn write_spool<'a>(path: &Path, events: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for e in events {
        f.write_all(e)?;
        f.write_all(b"\n")?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What a spool holds (at most `max` bytes of it, the newest); unreadable lines are skipped.
fn read_spool(path: &Path, max: usize) -> Vec<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    // Only the newest `max` bytes can be kept: a spool grown past them (written by hand, or by a
    // process with a larger buffer) is read from there on, its first partial line skipped.
    let len = file.metadata().map_or(0, |m| m.len());
    let from = len.saturating_sub(max as u64);
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.take(max as u64).read_to_end(&mut text).is_err() {
        return Vec::new();
    }
    let lines = text.split(|b| *b == b'\n').skip(usize::from(from > 0));
    let mut events: Vec<Vec<u8>> =
        lines.filter(|l| serde_json::from_slice::<Json>(l).is_ok_and(|v| v.is_object())).map(<[u8]>::to_vec).collect();
    let mut total = 0;
    let keep = events.iter().rev().take_while(|e| {
        total += e.len();
        total <= max
    });
    let skip = events.len() - keep.count();
    events.drain(..skip);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_larger_than_the_buffer_is_read_from_its_newest_bytes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!("{{\"decision_id\":\"{i:04}\"}}\n"));
        }
        text.push_str("not json\n[1]\n");
        std::fs::write(&path, &text).unwrap();
        let events = read_spool(&path, 200);
        assert!(!events.is_empty() && events.iter().map(Vec::len).sum::<usize>() <= 200);
        assert_eq!(
            events.last().map(|e| String::from_utf8_lossy(e).into_owned()),
            Some("{\"decision_id\":\"0999\"}".into())
        );
        assert!(events.iter().all(|e| e.starts_with(b"{\"decision_id\":\"")), "no partial line, nothing but objects");
        assert_eq!(read_spool(&dir.path().join("missing"), 200), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        let c = Counters {
            buffered: prometheus::IntCounter::new("a", "a").unwrap(),
            shipped: prometheus::IntCounter::new("b", "b").unwrap(),
            dropped_by_policy: prometheus::IntCounter::new("c", "c").unwrap(),
            queue_full: prometheus::IntCounter::new("d", "d").unwrap(),
            buffer_full: prometheus::IntCounter::new("e", "e").unwrap(),
            rejected: prometheus::IntCounter::new("f", "f").unwrap(),
            buffer_bytes: prometheus::IntGauge::new("g", "g").unwrap(),
        };
        // Each event takes its 10 bytes and a comma: two fit in 25.
        let mut b = Buffer::new(25);
        for i in 0..5u8 {
            b.push(&[b'0' + i; 10], &c);
        }
        let kept: Vec<&[u8]> = b.events().collect();
        assert_eq!(kept, [&[b'3'; 10][..], &[b'4'; 10][..]], "the newest kept");
        assert_eq!((b.bytes, c.buffer_full.get()), (22, 3));
        assert_eq!(b.batch_len(15), 1);
        assert_eq!(b.batch_len(100), 2);
        assert_eq!(b.batch(2), b"3333333333,4444444444");
        b.take_front(1, &c);
        assert_eq!((b.batch(1), b.bytes, b.start), (&b"4444444444"[..], 11, 0), "the dead front reclaimed");
        // An event the policy drops leaves nothing behind.
        assert!(!b.push_with(
            |d| {
                d.extend_from_slice(b"half");
                false
            },
            &c
        ));
        assert_eq!(b.batch(1), b"4444444444");
        b.take_front(1, &c);
        assert!(b.is_empty() && b.data.is_empty());
    }
}
