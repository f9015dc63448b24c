//! Decision logs in OPA's schema, shipped off the request path.
//!
//! A request whose decision is logged (every deny and error; allows as `decision_logs.sample`
//! says) takes what the event needs as it is (the canonical request head, the verified token,
//! the decision, all by reference or a plain copy) and hands a [`Pending`] to a bounded
//! channel with `try_send`: a full channel drops it and counts it, never waits. The shipper,
//! a thread of its own that wakes every 100 ms (so a `try_send` never has a thread to wake),
//! builds each event (the policy's full input, rebuilt as
//! the gateway builds it), applies the bundle's own `data.system.log.drop` and
//! `data.system.log.mask` rules with OPA's semantics, and keeps the serialized events in a
//! buffer bounded in bytes (full: the oldest go, counted). Batches up to
//! `upload_size_limit` are sent as gzip JSON arrays to the first sink that takes them, with
//! exponential backoff while none does. When the server is done (its in-flight requests
//! answered, its runtimes shut down: [`DecisionLogs::finish`], called after Pingora's `run`
//! returns) the shipper takes what is still queued, tries one last send, writes what is left to
//! the spool file if one is set (it also does every 5 s while no sink takes a batch), and is
//! joined: a restart sends the spool first. On a binary upgrade the new process has read the
//! spool before the old one finished: it takes in the events of a spool that another process
//! wrote since (checked every second). Sinks dedupe by `decision_id`, so an event sent twice is
//! not logged twice.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pingora::http::RequestHeader;
use policy_bundles::decision::Decision;
use policy_bundles::jwt::Verified;
use prometheus::{IntCounter, IntGauge};
use serde_json::{json, Map, Value as Json};

use crate::config::DecisionLogsConfig;
use crate::state::Active;

/// Headers never logged: credentials. Listed in each event's `erased`.
const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];
/// Decisions waiting for the shipper; past it they are dropped (`reason="queue_full"`).
const QUEUE: usize = 16_384;

/// What the rule answered.
pub enum Answer {
    Decided {
        decision: Arc<Decision>,
        cached: bool,
    },
    /// The rule failed (the request was denied, or allowed on a `fail_open` route).
    Failed(String),
}

impl Answer {
    /// What a verdict (or a shadow rule's result) answered.
    pub fn of(result: Result<(&Arc<Decision>, bool), &policy_bundles::snapshot::EvalError>) -> Answer {
        match result {
            Ok((decision, cached)) => Answer::Decided { decision: decision.clone(), cached },
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// `decision` (allow, deny or error), with `result` (the decision's object form) or `error`.
    fn fields(&self, into: &mut Map<String, Json>) {
        match self {
            Answer::Decided { decision, .. } => {
                into.insert("decision".into(), Json::from(if decision.allow { "allow" } else { "deny" }));
                into.insert("result".into(), decision_json(decision));
            }
            Answer::Failed(e) => {
                into.insert("decision".into(), Json::from("error"));
                into.insert("error".into(), Json::from(e.as_str()));
            }
        }
    }
}

/// A route's shadow rule's answer for the same input, logged beside the enforced one.
pub struct ShadowAnswer {
    /// The shadow rule (index into the snapshot's policies).
    pub rule: usize,
    pub answer: Answer,
    /// `same`, `differ` or `error` ([`policy_bundles::authorize::Agreement`]).
    pub agreement: &'static str,
}

/// One logged decision, as the request path hands it over.
pub struct Pending {
    pub decision_id: String,
    pub trace_id: String,
    pub at: SystemTime,
    pub bundle: Arc<Active>,
    pub route: usize,
    /// The canonical request head, as the policy saw it.
    pub request: Box<RequestHeader>,
    pub host: String,
    pub scheme: &'static str,
    pub client_ip: String,
    pub jwt: Option<Arc<Verified>>,
    pub answer: Answer,
    /// The shadow rule's answer, when the route has one and it was asked.
    pub shadow: Option<ShadowAnswer>,
    pub eval: Duration,
    /// The status the client got; set when the request ends.
    pub status: u16,
}

/// A new decision id: a random UUID (version 4), as OPA's.
pub fn decision_id() -> String {
    let b: u128 = (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{b:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The metrics of the decision log.
#[derive(Clone)]
pub struct Counters {
    /// `gateway_decision_logs_total{result="buffered|shipped|dropped_by_policy"}`.
    pub buffered: IntCounter,
    pub shipped: IntCounter,
    pub dropped_by_policy: IntCounter,
    /// `gateway_decision_logs_dropped_total{reason="queue_full|buffer_full|rejected"}`.
    pub queue_full: IntCounter,
    pub buffer_full: IntCounter,
    pub rejected: IntCounter,
    /// `gateway_decision_logs_buffer_bytes`.
    pub buffer_bytes: IntGauge,
}

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

/// Serialized events, oldest first, bounded in bytes.
struct Buffer {
    events: VecDeque<Vec<u8>>,
    bytes: usize,
    max: usize,
}

impl Buffer {
    fn push(&mut self, event: Vec<u8>, c: &Counters) {
        self.bytes += event.len();
        self.events.push_back(event);
        while self.bytes > self.max {
            match self.events.pop_front() {
                Some(old) => {
                    self.bytes -= old.len();
                    c.buffer_full.inc();
                }
                None => break,
            }
        }
        c.buffer_bytes.set(self.bytes as i64);
    }

    /// How many events from the front make a batch within `limit` bytes (at least one).
    fn batch_len(&self, limit: usize) -> usize {
        let mut size = 2;
        let mut n = 0;
        for e in &self.events {
            size += e.len() + 1;
            if n > 0 && size > limit {
                break;
            }
            n += 1;
        }
        n
    }

    fn take_front(&mut self, n: usize, c: &Counters) {
        for e in self.events.drain(..n) {
            self.bytes -= e.len();
        }
        c.buffer_bytes.set(self.bytes as i64);
    }
}

impl Shipper {
    fn run(self, rx: Receiver<Pending>) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            tracing::error!("decision logs: cannot start the shipper's runtime; nothing will be shipped");
            return;
        };
        let mut buffer = Buffer { events: VecDeque::new(), bytes: 0, max: self.config.buffer };
        let mut spool = self.config.spool.as_deref().map(Spool::new);
        if let Some(s) = &mut spool {
            s.take_in(&mut buffer, &self.counters);
        }
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        let (mut next_send, mut backoff, mut last_spool) = (Instant::now(), Duration::ZERO, Instant::now());
        let mut last_look = Instant::now();
        let mut open = true;
        while open {
            std::thread::sleep(Duration::from_millis(100));
            open = self.drain(&rx, &mut buffer) && !self.closing.load(Ordering::Acquire);
            if let Some(s) = spool.as_mut().filter(|_| last_look.elapsed() >= Duration::from_secs(1)) {
                last_look = Instant::now();
                if s.changed() {
                    s.take_in(&mut buffer, &self.counters);
                    s.write(&buffer);
                }
            }
            let full_batch = buffer.bytes >= self.config.upload_size_limit;
            let due = Instant::now() >= next_send || (full_batch && backoff.is_zero());
            if buffer.events.is_empty() || !due || !open {
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
        self.drain(&rx, &mut buffer);
        if !buffer.events.is_empty() {
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
    fn drain(&self, rx: &Receiver<Pending>, buffer: &mut Buffer) -> bool {
        loop {
            let p = match rx.try_recv() {
                Ok(p) => p,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            match event(&p, &self.instance) {
                Some(e) => {
                    self.counters.buffered.inc();
                    buffer.push(e, &self.counters);
                }
                None => self.counters.dropped_by_policy.inc(),
            }
        }
    }

    /// Sends batches until the buffer is empty or no sink takes one; false on failure.
    async fn ship(&self, client: &reqwest::Client, buffer: &mut Buffer) -> bool {
        while !buffer.events.is_empty() {
            let n = buffer.batch_len(self.config.upload_size_limit);
            let Some(body) = gzip_array(buffer.events.iter().take(n)) else { return false };
            match self.post(client, body).await {
                Delivery::Taken => self.counters.shipped.inc_by(n as u64),
                Delivery::Refused => self.counters.rejected.inc_by(n as u64),
                Delivery::Failed => return false,
            }
            buffer.take_front(n, &self.counters);
        }
        true
    }

    async fn post(&self, client: &reqwest::Client, body: Vec<u8>) -> Delivery {
        let mut refused = false;
        for sink in &self.config.sinks {
            let mut req = client
                .post(sink)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(body.clone());
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
            buffer.push(event, c);
        }
    }

    /// Replaces the spool with the buffer's events.
    fn write(&mut self, buffer: &Buffer) {
        match write_spool(&self.path, &buffer.events) {
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

fn gzip_array<'a>(events: impl Iterator<Item = &'a Vec<u8>>) -> Option<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"[").ok()?;
    for (i, e) in events.enumerate() {
        if i > 0 {
            gz.write_all(b",").ok()?;
        }
        gz.write_all(e).ok()?;
    }
    gz.write_all(b"]").ok()?;
    gz.finish().ok()
}

/// The spool: one event per line, replaced whole (written beside, then renamed).
fn write_spool(path: &Path, events: &VecDeque<Vec<u8>>) -> std::io::Result<()> {
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
    let Ok(text) = std::fs::read(path) else { return Vec::new() };
    let mut events: Vec<Vec<u8>> = text
        .split(|b| *b == b'\n')
        .filter(|l| serde_json::from_slice::<Json>(l).is_ok_and(|v| v.is_object()))
        .map(<[u8]>::to_vec)
        .collect();
    let mut total = 0;
    let keep = events.iter().rev().take_while(|e| {
        total += e.len();
        total <= max
    });
    let skip = events.len() - keep.count();
    events.drain(..skip);
    events
}

/// Builds the event, applies the bundle's drop and mask rules, serializes it; `None` when the
/// drop rule dropped it.
fn event(p: &Pending, instance: &str) -> Option<Vec<u8>> {
    let snap = &p.bundle.snapshot;
    let route = snap.routes.get(p.route)?;
    let mut erased: Vec<String> = Vec::new();
    let mut input = serde_json::to_value(full_input(p, &route.name)).unwrap_or(Json::Null);
    if let Some(headers) = input.pointer_mut("/request/headers").and_then(Json::as_object_mut) {
        for h in CREDENTIALS {
            if headers.remove(h).is_some() {
                erased.push(format!("/input/request/headers/{h}"));
            }
        }
    }
    let mut ev = json!({
        "decision_id": p.decision_id,
        "labels": { "id": instance, "version": env!("CARGO_PKG_VERSION") },
        "bundles": { p.bundle.info.name.clone(): { "revision": p.bundle.info.revision } },
        "path": rule_path(snap, route.policy),
        "input": input,
        "timestamp": rfc3339(p.at),
        "metrics": { "timer_rego_query_eval_ns": u64::try_from(p.eval.as_nanos()).unwrap_or(u64::MAX) },
        "route": route.name,
        "status": p.status,
        "cached": matches!(p.answer, Answer::Decided { cached: true, .. }),
        "trace_id": p.trace_id,
    });
    let obj = ev.as_object_mut()?;
    p.answer.fields(obj);
    if let Some(s) = &p.shadow {
        let mut shadow = Map::new();
        shadow.insert("path".into(), Json::from(rule_path(snap, s.rule)));
        s.answer.fields(&mut shadow);
        shadow.insert("agreement".into(), Json::from(s.agreement));
        obj.insert("shadow".into(), Json::Object(shadow));
    }
    if let Some(drop) = snap.log_drop {
        if matches!(snap.evaluate(drop, rego_value(&ev)), Ok(regorus::Value::Bool(true))) {
            return None;
        }
    }
    let mut masked = Vec::new();
    if let Some(mask) = snap.log_mask {
        if let Ok(ops) = snap.evaluate(mask, rego_value(&ev)) {
            apply_mask(&mut ev, &ops, &mut erased, &mut masked);
        }
    }
    let obj = ev.as_object_mut()?;
    if !erased.is_empty() {
        obj.insert("erased".into(), Json::from(erased));
    }
    if !masked.is_empty() {
        obj.insert("masked".into(), Json::from(masked));
    }
    serde_json::to_vec(&ev).ok()
}

/// A rule's path in OPA's form: `http/orders/decision` for `data.http.orders.decision`.
fn rule_path(snap: &policy_bundles::Snapshot, policy: usize) -> String {
    let rule = snap.rule(policy).unwrap_or_default();
    rule.strip_prefix("data.").unwrap_or(rule).replace('.', "/")
}

/// The rule's input, rebuilt whole as the gateway builds it (every header, the query).
fn full_input(p: &Pending, route: &str) -> regorus::Value {
    let req = &p.request;
    let headers = policy_bundles::input::headers(req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let parts = policy_bundles::input::RequestParts {
        method: req.method.as_str(),
        path: req.uri.path(),
        query: req.uri.query(),
        headers,
        host: &p.host,
        scheme: p.scheme,
        client_ip: &p.client_ip,
    };
    let jwt = p.jwt.as_deref().map(|v| (v.issuer.as_str(), &v.claims_value));
    policy_bundles::input::build(parts, route, jwt)
}

/// A decision as its rule's object form: what `result` holds.
fn decision_json(d: &Decision) -> Json {
    let pairs =
        |h: &[(String, String)]| Json::Object(h.iter().map(|(k, v)| (k.clone(), Json::from(v.as_str()))).collect());
    let mut m = Map::new();
    m.insert("allow".into(), Json::from(d.allow));
    if !d.allow {
        m.insert("status".into(), Json::from(d.status));
    }
    if !d.headers.is_empty() {
        m.insert("headers".into(), pairs(&d.headers));
    }
    if !d.response_headers.is_empty() {
        m.insert("response_headers".into(), pairs(&d.response_headers));
    }
    if let Some(r) = &d.reason {
        m.insert("reason".into(), Json::from(r.as_str()));
    }
    Json::Object(m)
}

fn rego_value(v: &Json) -> regorus::Value {
    serde_json::to_string(v)
        .ok()
        .and_then(|s| regorus::Value::from_json_str(&s).ok())
        .unwrap_or(regorus::Value::Undefined)
}

/// OPA's mask semantics: each element of the `mask` set is a JSON pointer under `/input` or
/// `/result` to remove (listed in `erased`), or `{"op": "remove" | "upsert", "path", "value"}`
/// (an upsert is listed in `masked`). Anything else is ignored.
fn apply_mask(ev: &mut Json, ops: &regorus::Value, erased: &mut Vec<String>, masked: &mut Vec<String>) {
    let Ok(ops) = serde_json::to_value(ops) else { return };
    let Some(ops) = ops.as_array() else { return };
    for op in ops {
        let (kind, path, value) = match op {
            Json::String(p) => ("remove", p.as_str(), None),
            Json::Object(o) => match (o.get("op").and_then(Json::as_str), o.get("path").and_then(Json::as_str)) {
                (Some(kind), Some(path)) => (kind, path, o.get("value")),
                _ => continue,
            },
            _ => continue,
        };
        if !(path.starts_with("/input/") || path.starts_with("/result/") || path == "/result") {
            continue;
        }
        match (kind, value) {
            ("remove", _) if remove(ev, path) => erased.push(path.to_owned()),
            ("upsert", Some(v)) if upsert(ev, path, v.clone()) => masked.push(path.to_owned()),
            _ => {}
        }
        // A shadow rule's result is masked as the enforced one's is (not listed twice).
        if path.starts_with("/result") && ev.get("shadow").is_some_and(|s| s.get("result").is_some()) {
            let shadowed = format!("/shadow{path}");
            match (kind, value) {
                ("remove", _) => {
                    remove(ev, &shadowed);
                }
                ("upsert", Some(v)) => {
                    upsert(ev, &shadowed, v.clone());
                }
                _ => {}
            }
        }
    }
}

/// A JSON pointer's parent and last segment (`~1` is `/`, `~0` is `~`).
fn split_pointer(path: &str) -> Option<(&str, String)> {
    let (parent, last) = path.rsplit_once('/')?;
    Some((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn remove(ev: &mut Json, path: &str) -> bool {
    let Some((parent, key)) = split_pointer(path) else { return false };
    match ev.pointer_mut(parent) {
        Some(Json::Object(o)) => o.remove(&key).is_some(),
        _ => false,
    }
}

/// Sets the value at `path`, creating the objects on the way.
fn upsert(ev: &mut Json, path: &str, value: Json) -> bool {
    let mut at = ev;
    let segments: Vec<String> = path.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
    let Some((last, within)) = segments.split_last() else { return false };
    for s in within {
        let Some(o) = at.as_object_mut() else { return false };
        at = o.entry(s.clone()).or_insert_with(|| Json::Object(Map::new()));
    }
    match at.as_object_mut() {
        Some(o) => {
            o.insert(last.clone(), value);
            true
        }
        None => false,
    }
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_id_is_a_version_4_uuid() {
        let id = decision_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
        assert!(parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]), "{id}");
        assert_ne!(id, decision_id());
    }

    #[test]
    fn mask_removes_and_upserts_only_under_input_and_result() {
        let mut ev = json!({"decision_id": "d", "input": {"a": {"b": 1, "c/d": 2}}, "result": {"allow": true}});
        let ops = regorus::Value::from_json_str(
            r#"["/input/a/b", "/decision_id", {"op": "upsert", "path": "/input/x/y", "value": "**"},
                {"op": "remove", "path": "/input/a/c~1d"}, {"op": "remove", "path": "/input/missing"}]"#,
        )
        .unwrap();
        let (mut erased, mut masked) = (Vec::new(), Vec::new());
        apply_mask(&mut ev, &ops, &mut erased, &mut masked);
        assert_eq!(ev, json!({"decision_id": "d", "input": {"a": {}, "x": {"y": "**"}}, "result": {"allow": true}}));
        assert_eq!(erased, ["/input/a/b", "/input/a/c~1d"]);
        assert_eq!(masked, ["/input/x/y"]);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts_them() {
        let c = Counters {
            buffered: IntCounter::new("a", "a").unwrap(),
            shipped: IntCounter::new("b", "b").unwrap(),
            dropped_by_policy: IntCounter::new("c", "c").unwrap(),
            queue_full: IntCounter::new("d", "d").unwrap(),
            buffer_full: IntCounter::new("e", "e").unwrap(),
            rejected: IntCounter::new("f", "f").unwrap(),
            buffer_bytes: IntGauge::new("g", "g").unwrap(),
        };
        let mut b = Buffer { events: VecDeque::new(), bytes: 0, max: 25 };
        for i in 0..5u8 {
            b.push(vec![b'0' + i; 10], &c);
        }
        assert_eq!(b.events.len(), 2);
        assert_eq!(b.events[0], vec![b'3'; 10], "the newest kept");
        assert_eq!(c.buffer_full.get(), 3);
        assert_eq!(b.batch_len(15), 1);
        assert_eq!(b.batch_len(100), 2);
    }
}
