//! One decision-log event: what the request path hands over ([`Pending`]) and the OPA-schema
//! JSON the shipper makes of it ([`event`]).
//!
//! The event is written straight into bytes: the policy's full input (every header, the query,
//! the verified token's claims: the input the gateway builds, `policy_bundles::input::build`),
//! the decision in its object form, the shadow rule's answer. Only a bundle that defines
//! `data.system.log.drop` or `data.system.log.mask` pays for a parsed event: the rules read it
//! as their `input`, with OPA's semantics (JSON pointers under `/input` and `/result`; `remove`
//! and `upsert`). Credentials (`authorization`, `cookie`, `proxy-authorization`) are never
//! written, whatever the bundle says; they are listed in `erased`. A request refused for its
//! credentials before its rule was asked is an event too ([`Answer::Refused`]): the same input
//! (without a `jwt`: none verified), a deny's `result` marked `"evaluated":false`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderName, HeaderValue};
use policy_bundles::decision::Decision;
use policy_bundles::jwt::Verified;
use serde_json::{Map, Value as Json};

use crate::active::Active;

/// Headers never logged: credentials. Listed in each event's `erased`.
pub const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// What the rule answered.
pub enum Answer {
    Decided {
        decision: Arc<Decision>,
        cached: bool,
    },
    /// The rule failed (the request was denied, or allowed on a `fail_open` route).
    Failed(String),
    /// The gateway refused the request before its rule was asked (a bearer token that does not
    /// verify, a malformed `Authorization`), with the status and reason the client got.
    Refused {
        status: u16,
        reason: String,
    },
}

impl Answer {
    /// What a verdict (or a shadow rule's result) answered.
    pub fn of(result: Result<(&Arc<Decision>, bool), &policy_bundles::snapshot::EvalError>) -> Answer {
        match result {
            Ok((decision, cached)) => Answer::Decided { decision: decision.clone(), cached },
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// `"decision":…` (allow, deny or error), with `"result":…` (the decision's object form)
    /// or `"error":…`, each followed by a comma. A refusal is a deny whose result is in the
    /// same form, with `"evaluated":false`: no rule made it.
    fn write(&self, w: &mut Writer, scratch: &mut Scratch) {
        match self {
            Answer::Decided { decision, .. } => {
                w.field_str("decision", if decision.allow { "allow" } else { "deny" });
                w.lit_key("result");
                scratch.decision(w, decision);
                w.comma();
            }
            Answer::Failed(e) => {
                w.field_str("decision", "error");
                w.field_str("error", e);
            }
            Answer::Refused { status, reason } => {
                w.field_str("decision", "deny");
                w.raw("\"result\":{\"allow\":false,");
                w.field_u64("status", u64::from(*status));
                w.field_str("reason", reason);
                w.raw("\"evaluated\":false},");
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

/// An id of at most 36 ASCII bytes, kept inline (no allocation on the request path, no free on
/// the shipper's): a decision id or a trace id.
#[derive(Clone, Copy)]
pub struct ShortId {
    len: u8,
    bytes: [u8; 36],
}

impl ShortId {
    /// `s`, cut to 36 bytes (ids are ASCII).
    pub fn new(s: &str) -> ShortId {
        let mut id = ShortId { len: 0, bytes: [0; 36] };
        for (i, b) in s.bytes().take(36).enumerate() {
            id.bytes[i] = b;
            id.len = i as u8 + 1;
        }
        id
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// One logged decision, as the request path hands it over: references and cheap copies only
/// (header names and values share the request's bytes).
pub struct Pending {
    pub decision_id: ShortId,
    pub trace_id: ShortId,
    pub at: SystemTime,
    pub bundle: Arc<Active>,
    pub route: usize,
    /// The canonical request, as the policy saw it: method, path and query, headers in order.
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub host: String,
    pub scheme: &'static str,
    /// The client's address; the input's `client_ip` is its text, empty when there is none.
    pub client_ip: Option<std::net::IpAddr>,
    pub jwt: Option<Arc<Verified>>,
    pub answer: Answer,
    /// The shadow rule's answer, when the route has one and it was asked.
    pub shadow: Option<ShadowAnswer>,
    /// A rate limit the request was past: enforced (429) or in shadow mode (only counted).
    pub rate_limit: Option<LimitHit>,
    pub eval: Duration,
    /// The status the client got; set when the request ends.
    pub status: u16,
    /// What only an Envoy-format input or a route with `body` holds.
    pub extra: Option<Box<Extra>>,
}

/// A rate limit a request was past (an index into the snapshot's limits), and whether it was
/// refused for it (an enforced limit) or not (a shadow limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    pub limit: usize,
    pub refused: bool,
}

/// The parts of a request that the Envoy-format input (or a buffered body) adds.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub client_port: u16,
    pub local: Option<std::net::SocketAddr>,
    pub protocol: &'static str,
    pub body: Option<bytes::Bytes>,
}

/// A new decision id: a random UUID (version 4), as OPA's.
pub fn decision_id() -> ShortId {
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut id = ShortId { len: 36, bytes: [0; 36] };
    uuid.hyphenated().encode_lower(&mut id.bytes);
    id
}

/// What the shipper keeps between events: the buffer an event is written into, the timestamp's
/// text for the current second, and the JSON of what repeats from event to event.
#[derive(Default)]
pub struct Scratch {
    buf: Vec<u8>,
    time: crate::json_line::Timestamp,
    /// The JSON of the last few verified tokens' claims and of the last few decisions: the
    /// same `Arc` comes back for every request of a cached token or a cached decision. Holding
    /// the `Arc` keeps its address from being reused for another.
    claims: Vec<(Arc<Verified>, Vec<u8>)>,
    decisions: Vec<(Arc<Decision>, Vec<u8>)>,
    /// Per (active bundle, route): the event's fields that only they decide. A `Weak`, so that
    /// a bundle swapped out is freed (its address stays taken while the entry lives: no reuse).
    routes: Vec<(std::sync::Weak<Active>, usize, Vec<u8>)>,
}

/// How many claims and decisions [`Scratch`] remembers.
const REMEMBERED: usize = 16;

/// The bytes `write` makes of `key`, from `cache` when it has them.
fn remembered<'a, T>(cache: &'a mut Vec<(Arc<T>, Vec<u8>)>, key: &Arc<T>, write: impl FnOnce(&mut Writer)) -> &'a [u8] {
    let at = match cache.iter().position(|(k, _)| Arc::ptr_eq(k, key)) {
        Some(at) => at,
        None => {
            let mut w = Writer(Vec::new());
            write(&mut w);
            if cache.len() >= REMEMBERED {
                cache.remove(0);
            }
            cache.push((key.clone(), w.0));
            cache.len() - 1
        }
    };
    &cache[at].1
}

impl Scratch {
    /// `"labels":…,"bundles":…,"path":…,`: the same for every event of one route of one
    /// active bundle, written once.
    fn route_fields(&mut self, w: &mut Writer, p: &Pending, instance: &str) {
        let found =
            self.routes.iter().position(|(a, r, _)| std::ptr::eq(a.as_ptr(), Arc::as_ptr(&p.bundle)) && *r == p.route);
        let at = match found {
            Some(at) => at,
            None => {
                let snap = &p.bundle.snapshot;
                let policy = snap.routes.get(p.route).map_or(usize::MAX, |r| r.policy);
                let path = rule_path(snap, policy);
                let mut f = Writer(Vec::new());
                f.raw("\"labels\":{");
                f.field_str("id", instance);
                f.field_str("version", env!("CARGO_PKG_VERSION"));
                f.close(b'}');
                f.raw(",\"bundles\":{");
                f.key(&p.bundle.info.name);
                f.raw("{");
                f.field_str("revision", &p.bundle.info.revision);
                f.close(b'}');
                f.raw("},");
                f.field_str("path", &path);
                if self.routes.len() >= REMEMBERED {
                    self.routes.remove(0);
                }
                self.routes.push((Arc::downgrade(&p.bundle), p.route, f.0));
                self.routes.len() - 1
            }
        };
        w.0.extend_from_slice(&self.routes[at].2);
    }

    fn claims(&mut self, w: &mut Writer, v: &Arc<Verified>) {
        let bytes = remembered(&mut self.claims, v, |w| {
            let _ = serde_json::to_writer(&mut w.0, &v.claims);
        });
        w.0.extend_from_slice(bytes);
    }

    fn decision(&mut self, w: &mut Writer, d: &Arc<Decision>) {
        w.0.extend_from_slice(remembered(&mut self.decisions, d, |w| w.decision(d)));
    }
}

/// JSON written by hand into bytes; strings escaped by serde_json. Writing to a `Vec` cannot
/// fail, so the writes' results are ignored.
struct Writer(Vec<u8>);

impl Writer {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn comma(&mut self) {
        self.0.push(b',');
    }

    /// A JSON string ([`crate::json_line::str`]).
    fn str(&mut self, s: &str) {
        crate::json_line::str(&mut self.0, s);
    }

    fn key(&mut self, k: &str) {
        self.str(k);
        self.0.push(b':');
    }

    /// One of the schema's own keys: a literal that needs no escaping.
    fn lit_key(&mut self, k: &'static str) {
        self.0.reserve(k.len() + 3);
        self.0.push(b'"');
        self.0.extend_from_slice(k.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// `"k":"v",` for one of the schema's keys.
    fn field_str(&mut self, k: &'static str, v: &str) {
        self.lit_key(k);
        self.str(v);
        self.comma();
    }

    /// `"k":"v",` for a key from the request, the policy or the config.
    fn pair(&mut self, k: &str, v: &str) {
        self.key(k);
        self.str(v);
        self.comma();
    }

    fn field_u64(&mut self, k: &'static str, v: u64) {
        self.lit_key(k);
        let _ = serde_json::to_writer(&mut self.0, &v);
        self.comma();
    }

    /// Replaces a trailing comma by `close`.
    fn close(&mut self, close: u8) {
        match self.0.last_mut() {
            Some(last) if *last == b',' => *last = close,
            _ => self.0.push(close),
        }
    }

    fn pairs(&mut self, pairs: &[(String, String)]) {
        self.0.push(b'{');
        for (k, v) in pairs {
            self.pair(k, v);
        }
        self.close(b'}');
    }

    /// A decision as its rule's object form: what `result` holds.
    fn decision(&mut self, d: &Decision) {
        self.0.push(b'{');
        self.raw(if d.allow { "\"allow\":true," } else { "\"allow\":false," });
        if !d.allow {
            self.field_u64("status", u64::from(d.status));
        }
        if !d.headers.is_empty() {
            self.lit_key("headers");
            self.pairs(&d.headers);
            self.comma();
        }
        if !d.response_headers.is_empty() {
            self.lit_key("response_headers");
            self.pairs(&d.response_headers);
            self.comma();
        }
        if let Some(r) = &d.reason {
            self.field_str("reason", r);
        }
        if let Some(l) = &d.rate_limit {
            self.field_str("rate_limit", l);
        }
        if !d.remove_headers.is_empty() {
            self.lit_key("request_headers_to_remove");
            self.strings(&d.remove_headers);
            self.comma();
        }
        if let Some(b) = &d.body {
            self.field_str("body", b);
        }
        if !d.query_set.is_empty() {
            self.lit_key("query_parameters_to_set");
            self.0.push(b'{');
            for (k, vs) in &d.query_set {
                self.str(k);
                self.0.push(b':');
                self.strings(vs);
                self.comma();
            }
            self.close(b'}');
            self.comma();
        }
        if !d.query_remove.is_empty() {
            self.lit_key("query_parameters_to_remove");
            self.strings(&d.query_remove);
            self.comma();
        }
        self.close(b'}');
    }

    fn strings(&mut self, items: &[String]) {
        self.0.push(b'[');
        for i in items {
            self.str(i);
            self.comma();
        }
        self.close(b']');
    }

    /// The input's `headers`: names lower case, repeated names joined with ", " in order (as
    /// `policy_bundles::input::headers`), credentials left out and named in `erased`. A
    /// request's repeated names are next to each other (`HeaderMap` iterates them so).
    fn headers(&mut self, headers: &[(HeaderName, HeaderValue)], erased: &mut Vec<&'static str>) {
        self.0.push(b'{');
        let mut i = 0;
        while i < headers.len() {
            let name = &headers[i].0;
            let end = i + headers[i..].iter().take_while(|(n, _)| n == name).count();
            if let Some(c) = CREDENTIALS.iter().find(|c| **c == name.as_str()) {
                if !erased.contains(c) {
                    erased.push(c);
                }
            } else if end == i + 1 {
                self.pair(name.as_str(), &String::from_utf8_lossy(headers[i].1.as_bytes()));
            } else {
                let values: Vec<_> =
                    headers[i..end].iter().map(|(_, v)| String::from_utf8_lossy(v.as_bytes())).collect();
                self.pair(name.as_str(), &values.join(", "));
            }
            i = end;
        }
        self.close(b'}');
    }

    /// The input's `query`: `{name: [values]}`, percent-decoded (as `policy_bundles::input::query`).
    fn query(&mut self, q: Option<&str>) {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in policy_bundles::input::query_pairs(q.unwrap_or("")) {
            map.entry(k).or_default().push(v);
        }
        self.0.push(b'{');
        for (k, values) in &map {
            self.key(k);
            let _ = serde_json::to_writer(&mut self.0, values);
            self.comma();
        }
        self.close(b'}');
    }

    /// The rule's input, whole, as the gateway builds it.
    fn input(&mut self, p: &Pending, route: &str, erased: &mut Vec<&'static str>, scratch: &mut Scratch) {
        self.raw("{\"request\":{");
        self.field_str("method", p.method.as_str());
        self.field_str("path", p.uri.path());
        self.lit_key("query");
        self.query(p.uri.query());
        self.comma();
        self.lit_key("headers");
        self.headers(&p.headers, erased);
        self.comma();
        self.field_str("host", &p.host);
        self.field_str("scheme", p.scheme);
        match p.client_ip {
            Some(ip) => {
                let _ = write!(self.0, "\"client_ip\":\"{ip}\",");
            }
            None => self.raw("\"client_ip\":\"\","),
        }
        self.close(b'}');
        self.comma();
        self.field_str("route", route);
        if let Some(v) = &p.jwt {
            self.raw("\"jwt\":{");
            self.field_str("issuer", &v.issuer);
            self.lit_key("claims");
            scratch.claims(self, v);
            self.raw("},");
        }
        self.close(b'}');
    }
}

/// Where the input's headers are, as a JSON pointer prefix.
fn headers_at(envoy: bool) -> &'static str {
    if envoy {
        "/input/attributes/request/http/headers/"
    } else {
        "/input/request/headers/"
    }
}

/// The input of a route that reads the Envoy format or a body, built as the gateway built it
/// (`policy_bundles::input`), whole, with credentials left out and named in `erased`.
fn built_input(p: &Pending, route: &str, envoy: bool, erased: &mut Vec<&'static str>) -> regorus::Value {
    use policy_bundles::input;
    let pairs = p.headers.iter().filter(|(n, _)| match CREDENTIALS.iter().find(|c| **c == n.as_str()) {
        Some(c) => {
            if !erased.contains(c) {
                erased.push(c);
            }
            false
        }
        None => true,
    });
    let headers = input::headers_joined(pairs.map(|(n, v)| (n.as_str(), v.as_bytes())), if envoy { "," } else { ", " });
    let extra = p.extra.as_deref().cloned().unwrap_or_default();
    let ip = p.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let content_type =
        p.headers.iter().find(|(n, _)| n == http::header::CONTENT_TYPE).and_then(|(_, v)| v.to_str().ok());
    let parts = input::RequestParts {
        method: p.method.as_str(),
        path: p.uri.path(),
        query: p.uri.query(),
        headers,
        host: &p.host,
        scheme: p.scheme,
        client_ip: &ip,
        body: extra.body.as_deref(),
        content_type,
    };
    if !envoy {
        let jwt = p.jwt.as_deref().map(|v| &v.input);
        return input::build(parts, route, jwt);
    }
    let local = extra.local.map(|a| (a.ip().to_string(), a.port()));
    let conn = input::Connection {
        client_port: extra.client_port,
        destination: local.as_ref().map(|(ip, port)| (ip.as_str(), *port)),
        id: p.trace_id.as_str(),
        protocol: extra.protocol,
    };
    input::envoy(&parts, &conn, &input::Needs::ALL)
}

/// A rule's path in OPA's form: `http/orders/decision` for `data.http.orders.decision`.
fn rule_path(snap: &policy_bundles::Snapshot, policy: usize) -> String {
    let rule = snap.rule(policy).unwrap_or_default();
    rule.strip_prefix("data.").unwrap_or(rule).replace('.', "/")
}

/// Appends the event to `out`, after the bundle's drop and mask rules; `false` (and nothing
/// appended) when the drop rule dropped it. Without those rules the event is written straight
/// into `out` in one pass (the shipper's batch buffer); with them, into the scratch buffer that
/// the rules read.
pub fn event(p: &Pending, instance: &str, scratch: &mut Scratch, out: &mut Vec<u8>) -> bool {
    let snap = &p.bundle.snapshot;
    let ruled = snap.log_drop.is_some() || snap.log_mask.is_some();
    if !ruled {
        let mut w = Writer(std::mem::take(out));
        let at = w.0.len();
        let written = write_event(p, instance, scratch, &mut w, false);
        if !written {
            w.0.truncate(at);
        }
        *out = w.0;
        return written;
    }
    let mut w = Writer(std::mem::take(&mut scratch.buf));
    w.0.clear();
    let written = write_event(p, instance, scratch, &mut w, true);
    let ruled = written.then(|| apply_rules(p, &w.0, erased_paths(p))).flatten();
    scratch.buf = w.0;
    match ruled {
        Some(bytes) => {
            out.extend_from_slice(&bytes);
            true
        }
        None => false,
    }
}

/// The credentials the request carried, as the JSON pointers the mask rules see.
fn erased_paths(p: &Pending) -> Vec<String> {
    let envoy =
        p.bundle.snapshot.routes.get(p.route).is_some_and(|r| r.format == policy_bundles::input::InputFormat::Envoy);
    CREDENTIALS
        .iter()
        .filter(|c| p.headers.iter().any(|(n, _)| n.as_str() == **c))
        .map(|h| format!("{}{h}", headers_at(envoy)))
        .collect()
}

/// Writes the event (`ruled`: for the drop and mask rules, which list `erased` themselves).
fn write_event(p: &Pending, instance: &str, scratch: &mut Scratch, w: &mut Writer, ruled: bool) -> bool {
    let snap = &p.bundle.snapshot;
    let Some(route) = snap.routes.get(p.route) else { return false };
    let mut erased = Vec::new();
    w.0.push(b'{');
    w.field_str("decision_id", p.decision_id.as_str());
    scratch.route_fields(w, p, instance);
    w.lit_key("input");
    let envoy = route.format == policy_bundles::input::InputFormat::Envoy;
    if envoy || route.body.is_some() {
        w.raw(&built_input(p, &route.name, envoy, &mut erased).to_json_str().unwrap_or_else(|_| "{}".into()));
    } else {
        w.input(p, &route.name, &mut erased, scratch);
    }
    w.comma();
    w.lit_key("timestamp");
    w.0.push(b'"');
    scratch.time.write(p.at, &mut w.0);
    w.0.push(b'"');
    w.comma();
    w.raw("\"metrics\":{");
    w.field_u64("timer_rego_query_eval_ns", u64::try_from(p.eval.as_nanos()).unwrap_or(u64::MAX));
    w.close(b'}');
    w.comma();
    w.field_str("route", &route.name);
    w.field_u64("status", u64::from(p.status));
    w.raw(if matches!(p.answer, Answer::Decided { cached: true, .. }) {
        "\"cached\":true,"
    } else {
        "\"cached\":false,"
    });
    w.field_str("trace_id", p.trace_id.as_str());
    p.answer.write(w, scratch);
    if let Some(s) = &p.shadow {
        w.raw("\"shadow\":{");
        w.field_str("path", &rule_path(snap, s.rule));
        s.answer.write(w, scratch);
        w.field_str("agreement", s.agreement);
        w.close(b'}');
        w.comma();
    }
    if let Some(l) = p.rate_limit.filter(|l| l.limit < snap.rate_limits.len()) {
        w.raw("\"rate_limit\":{");
        w.field_str("name", &snap.rate_limits[l.limit].name);
        w.field_str("mode", if l.refused { "enforce" } else { "shadow" });
        w.close(b'}');
        w.comma();
    }
    if !erased.is_empty() && !ruled {
        w.raw("\"erased\":[");
        for h in &erased {
            // Pointers of the schema's own names: nothing to escape.
            w.0.push(b'"');
            w.raw(headers_at(envoy));
            w.raw(h);
            w.raw("\",");
        }
        w.close(b']');
    }
    w.close(b'}');
    true
}

/// The bundle's `data.system.log.drop` and `mask` rules, with the event as their input.
fn apply_rules(p: &Pending, bytes: &[u8], mut erased: Vec<String>) -> Option<Vec<u8>> {
    let snap = &p.bundle.snapshot;
    let text = std::str::from_utf8(bytes).ok()?;
    let as_input = regorus::Value::from_json_str(text).ok()?;
    if let Some(drop) = snap.log_drop {
        if matches!(snap.evaluate(drop, as_input.clone()), Ok(regorus::Value::Bool(true))) {
            return None;
        }
    }
    let mut ev: Json = serde_json::from_slice(bytes).ok()?;
    let mut masked = Vec::new();
    if let Some(mask) = snap.log_mask {
        if let Ok(ops) = snap.evaluate(mask, as_input) {
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

/// OPA's mask semantics: each element of the `mask` set is a JSON pointer under `/input` or
/// `/result` to remove (listed in `erased`), or `{"op": "remove" | "upsert", "path", "value"}`
/// (an upsert is listed in `masked`). Anything else is ignored. A shadow rule's result is
/// masked as the enforced one's is.
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
        let shadowed = path.starts_with("/result") && ev.pointer("/shadow/result").is_some();
        match (kind, value) {
            ("remove", _) => {
                if remove(ev, path) {
                    erased.push(path.to_owned());
                }
                if shadowed {
                    remove(ev, &format!("/shadow{path}"));
                }
            }
            ("upsert", Some(v)) => {
                if upsert(ev, path, v.clone()) {
                    masked.push(path.to_owned());
                }
                if shadowed {
                    upsert(ev, &format!("/shadow{path}"), v.clone());
                }
            }
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_decision_id_is_a_version_4_uuid() {
        let id = decision_id().as_str().to_owned();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
        assert!(parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]), "{id}");
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{id}");
        assert_ne!(id, decision_id().as_str());
        assert_eq!(ShortId::new("0af7651916cd43dd8448eb211c80319c").as_str(), "0af7651916cd43dd8448eb211c80319c");
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
    fn a_result_mask_masks_the_shadow_rules_result_too() {
        let mut ev = json!({"result": {"reason": "alice"}, "shadow": {"result": {"reason": "alice"}}});
        let ops =
            regorus::Value::from_json_str(r#"[{"op": "upsert", "path": "/result/reason", "value": "**"}]"#).unwrap();
        let (mut erased, mut masked) = (Vec::new(), Vec::new());
        apply_mask(&mut ev, &ops, &mut erased, &mut masked);
        assert_eq!(ev, json!({"result": {"reason": "**"}, "shadow": {"result": {"reason": "**"}}}));
        assert_eq!(masked, ["/result/reason"], "listed once");
    }

    fn written(f: impl FnOnce(&mut Writer)) -> Json {
        let mut w = Writer(Vec::new());
        f(&mut w);
        serde_json::from_slice(&w.0).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&w.0)))
    }

    #[test]
    fn a_remembered_decision_or_claims_is_what_writing_it_gives() {
        let mut scratch = Scratch::default();
        let decisions: Vec<Arc<Decision>> =
            (0..40).map(|i| Arc::new(Decision::deny(400 + i, format!("reason {i}")))).collect();
        for round in 0..2 {
            for (i, d) in decisions.iter().enumerate() {
                let got = written(|w| scratch.decision(w, d));
                assert_eq!(got, written(|w| w.decision(d)), "decision {i}, round {round}");
            }
        }
        assert!(scratch.decisions.len() <= REMEMBERED);
        let same = decisions[39].clone();
        assert_eq!(written(|w| scratch.decision(w, &same))["status"], 439, "found by the Arc, not rewritten");
    }

    #[test]
    fn logged_headers_are_the_policys_headers_without_credentials() {
        let mut map = http::HeaderMap::new();
        for (n, v) in [
            ("x-tenant", &b"acme"[..]),
            ("accept", b"text/html"),
            ("authorization", b"Bearer secret"),
            ("accept", b"application/json"),
            ("cookie", b"a=1"),
            ("x-quote", b"say \"hi\"\t\\"),
            ("x-latin1", b"caf\xe9"),
        ] {
            map.append(HeaderName::from_static(n), HeaderValue::from_bytes(v).unwrap());
        }
        // As the request path takes them: in the map's order.
        let pairs: Vec<(HeaderName, HeaderValue)> = map.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let mut erased = Vec::new();
        let got = written(|w| w.headers(&pairs, &mut erased));
        let kept: Vec<(&str, &[u8])> = pairs
            .iter()
            .filter(|(n, _)| !CREDENTIALS.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let policy = serde_json::to_value(policy_bundles::input::headers(kept)).unwrap();
        assert_eq!(got, policy, "the same headers object the policy was given");
        assert_eq!(got["accept"], "text/html, application/json");
        assert_eq!(erased, ["authorization", "cookie"]);
    }

    #[test]
    fn strings_that_need_escaping_are_escaped() {
        for text in ["plain /orders/7", "a \"quote\"", "back\\slash", "line\nbreak\u{1}", "caf\u{e9} \u{7f}"] {
            assert_eq!(written(|w| w.str(text)), Json::from(text), "{text:?}");
        }
    }

    #[test]
    fn the_logged_query_is_the_policys_query() {
        for q in ["", "page=2", "a=1&b=%20x&a=2&flag&c=+y+", "%zz=1&&=v"] {
            let got = written(|w| w.query(Some(q)));
            let policy = serde_json::to_value(policy_bundles::input::query(q)).unwrap();
            assert_eq!(got, policy, "query {q:?}");
        }
    }

    #[test]
    fn a_decision_is_written_in_its_object_form() {
        let d = Decision {
            allow: false,
            status: 451,
            headers: vec![],
            response_headers: vec![("x-why".into(), "law".into())],
            reason: Some("blocked \"here\"".into()),
            ..Decision::default()
        };
        let got = written(|w| w.decision(&d));
        assert_eq!(
            got,
            json!({"allow": false, "status": 451, "response_headers": {"x-why": "law"}, "reason": "blocked \"here\""})
        );
        let allow =
            Decision { allow: true, headers: vec![("x-user-id".into(), "alice".into())], ..Decision::default() };
        assert_eq!(written(|w| w.decision(&allow)), json!({"allow": true, "headers": {"x-user-id": "alice"}}));
    }

    #[test]
    fn a_refusal_before_evaluation_is_a_deny_in_the_decisions_form_marked_unevaluated() {
        let refused = Answer::Refused { status: 401, reason: "invalid token: \"x\"\n".into() };
        let got = written(|w| {
            w.0.push(b'{');
            refused.write(w, &mut Scratch::default());
            w.close(b'}');
        });
        assert_eq!(
            got,
            json!({"decision": "deny",
                   "result": {"allow": false, "status": 401, "reason": "invalid token: \"x\"\n", "evaluated": false}})
        );
    }
}
