//! One uploaded batch of decision events, from request bytes to rows: the body inflated within
//! its bound (a gzip bomb stops at the limit, it is never inflated whole), parsed as a JSON
//! array, and each event checked for what storage and queries rely on. Every event keeps the
//! exact text it was sent as.

use std::collections::HashSet;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::store::DecisionEvent;

/// Problems listed in one refusal, at most (the rest are counted).
const MAX_PROBLEMS: usize = 10;
/// Longest `decision_id`, `route` and `revision` kept.
const MAX_ID_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 256;

/// Why a batch was refused; nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the batch is larger than logs.max_upload ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("the batch inflates past logs.max_decompressed ({limit} bytes); refused (a decompression bomb?)")]
    Bomb { limit: u64 },
    #[error("the body is not valid gzip (Content-Encoding: gzip): {0}")]
    Gzip(String),
    #[error("Content-Encoding `{0}` is not supported: send gzip or plain JSON")]
    Encoding(String),
    #[error("the batch must be a JSON array of decision events: {0}")]
    NotArray(String),
    /// Events that are not what a decision event must be, each named by its index.
    #[error("{}", .0.join("; "))]
    Events(Vec<String>),
}

/// How the body is encoded, from `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Identity,
}

impl Encoding {
    /// `gzip` (or `x-gzip`), or none/`identity`; anything else is refused.
    pub fn from_header(value: Option<&str>) -> Result<Encoding, BatchError> {
        match value.map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(Encoding::Identity),
            Some(v) if v.is_empty() || v == "identity" => Ok(Encoding::Identity),
            Some(v) if v == "gzip" || v == "x-gzip" => Ok(Encoding::Gzip),
            Some(v) => Err(BatchError::Encoding(v)),
        }
    }
}

/// The batch's JSON bytes: inflated when gzip, reading at most `max_decompressed` bytes of it.
pub fn inflate(body: &[u8], encoding: Encoding, max_decompressed: u64) -> Result<Vec<u8>, BatchError> {
    if encoding == Encoding::Identity {
        if body.len() as u64 > max_decompressed {
            return Err(BatchError::Bomb { limit: max_decompressed });
        }
        return Ok(body.to_vec());
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(16 << 20));
    let mut reader = flate2::read::MultiGzDecoder::new(body).take(max_decompressed.saturating_add(1));
    reader.read_to_end(&mut out).map_err(|e| BatchError::Gzip(e.to_string()))?;
    if out.len() as u64 > max_decompressed {
        return Err(BatchError::Bomb { limit: max_decompressed });
    }
    Ok(out)
}

/// What is read of an event; every other field is kept in its text, unread. A field given
/// twice is refused by serde (`duplicate field`): the columns and the stored text cannot be
/// made to disagree.
#[derive(Deserialize)]
struct Head {
    decision_id: Option<Value>,
    bundles: Option<Value>,
    decision: Option<Value>,
    timestamp: Option<Value>,
    route: Option<Value>,
}

/// Parses a batch into the events to store, duplicates (by `decision_id`) removed, keeping the
/// first; returns them with the number of events in the batch.
pub fn parse(json: &[u8]) -> Result<(Vec<DecisionEvent>, usize), BatchError> {
    let raw: Vec<Box<RawValue>> = serde_json::from_slice(json).map_err(|e| BatchError::NotArray(e.to_string()))?;
    let mut problems = Vec::new();
    let mut events = Vec::with_capacity(raw.len());
    let mut seen = HashSet::with_capacity(raw.len());
    for (index, r) in raw.iter().enumerate() {
        match event(r) {
            Ok(e) => {
                if seen.insert(e.decision_id.clone()) {
                    events.push(e);
                }
            }
            Err(m) => problems.push(format!("event {index}: {m}")),
        }
    }
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(MAX_PROBLEMS);
        problems.truncate(MAX_PROBLEMS);
        if more > 0 {
            problems.push(format!("and {more} more"));
        }
        return Err(BatchError::Events(problems));
    }
    Ok((events, raw.len()))
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

/// One event, checked: every problem with it in one message.
fn event(raw: &RawValue) -> Result<DecisionEvent, String> {
    if !raw.get().trim_start().starts_with('{') {
        return Err("must be a JSON object".into());
    }
    let head: Head = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let decision_id = match &head.decision_id {
        Some(Value::String(id)) if printable(id, MAX_ID_LEN) => Some(id.clone()),
        _ => {
            problems.push(format!("`decision_id` must be a string of 1 to {MAX_ID_LEN} printable characters"));
            None
        }
    };
    let bundle = bundle_of(head.bundles.as_ref()).map_err(|m| problems.push(m)).ok();
    let decision = match head.decision.as_ref().and_then(Value::as_str) {
        Some(d @ ("allow" | "deny" | "error")) => Some(d.to_owned()),
        _ => {
            problems.push("`decision` must be \"allow\", \"deny\" or \"error\"".to_owned());
            None
        }
    };
    let timestamp_ms = head.timestamp.as_ref().and_then(Value::as_str).and_then(crate::clock::parse_rfc3339);
    if timestamp_ms.is_none() {
        problems.push("`timestamp` must be an RFC 3339 time such as 2026-12-03T09:01:02.123Z".to_owned());
    }
    let route = optional_text(head.route.as_ref(), "route").map_err(|m| problems.push(m)).ok().flatten();
    match (decision_id, bundle, decision, timestamp_ms) {
        (Some(decision_id), Some((bundle, revision)), Some(decision), Some(timestamp_ms)) if problems.is_empty() => {
            Ok(DecisionEvent {
                decision_id,
                bundle,
                revision,
                route,
                decision,
                timestamp_ms,
                event: raw.get().to_owned(),
            })
        }
        (id, ..) => {
            let named = id.map(|id| format!("(decision_id {id}) ")).unwrap_or_default();
            Err(format!("{named}{}", problems.join(", ")))
        }
    }
}

/// The event's bundle (the single key of `bundles`) and its revision.
fn bundle_of(bundles: Option<&Value>) -> Result<(String, Option<String>), String> {
    let wrong =
        || "`bundles` must be an object with exactly one bundle: {\"NAME\": {\"revision\": \"...\"}}".to_owned();
    let Some(Value::Object(map)) = bundles else { return Err(wrong()) };
    let mut entries = map.iter();
    let (Some((name, info)), None) = (entries.next(), entries.next()) else { return Err(wrong()) };
    if !crate::names::is_bundle_name(name) {
        return Err(format!("`bundles`: `{name}` is not a bundle name"));
    }
    let revision = match info {
        Value::Object(o) => optional_text(o.get("revision"), "bundles.*.revision")?,
        _ => return Err(wrong()),
    };
    Ok((name.clone(), revision))
}

/// An optional string field (null counts as absent).
fn optional_text(v: Option<&Value>, field: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if printable(s, MAX_TEXT_LEN) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{field}` must be a string of 1 to {MAX_TEXT_LEN} printable characters")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ev(id: &str, bundle: &str) -> serde_json::Value {
        serde_json::json!({
            "decision_id": id, "bundles": { bundle: { "revision": "r1" } }, "path": "http/orders/allow",
            "result": { "allow": false }, "timestamp": "2026-12-03T09:01:02.123456789Z",
            "route": "orders", "decision": "deny"
        })
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn an_event_keeps_its_text_and_yields_its_columns() {
        let text = serde_json::to_vec(&serde_json::json!([ev("a", "main")])).unwrap();
        let (events, n) = parse(&text).unwrap();
        assert_eq!(n, 1);
        let e = &events[0];
        assert_eq!((e.decision_id.as_str(), e.bundle.as_str(), e.revision.as_deref()), ("a", "main", Some("r1")));
        assert_eq!((e.route.as_deref(), e.decision.as_str()), (Some("orders"), "deny"));
        assert_eq!(e.timestamp_ms, 1_796_288_462_123);
        assert_eq!(serde_json::from_str::<Value>(&e.event).unwrap(), ev("a", "main"));
    }

    #[test]
    fn duplicates_in_one_batch_are_stored_once() {
        let text = serde_json::to_vec(&serde_json::json!([ev("a", "main"), ev("b", "main"), ev("a", "main")])).unwrap();
        let (events, n) = parse(&text).unwrap();
        assert_eq!((events.len(), n), (2, 3));
    }

    #[test]
    fn every_bad_event_is_named_by_index_and_field() {
        let mut no_id = ev("x", "main");
        no_id.as_object_mut().unwrap().remove("decision_id");
        let mut bad_time = ev("t", "main");
        bad_time["timestamp"] = "yesterday".into();
        let mut two_bundles = ev("y", "main");
        two_bundles["bundles"]["shop"] = serde_json::json!({});
        let mut bad_decision = ev("z", "main");
        bad_decision["decision"] = "maybe".into();
        let batch = serde_json::json!([ev("ok", "main"), no_id, 7, bad_time, two_bundles, bad_decision]);
        let Err(BatchError::Events(p)) = parse(&serde_json::to_vec(&batch).unwrap()) else { panic!("refused") };
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].starts_with("event 1: `decision_id`"), "{p:?}");
        assert!(p[1].starts_with("event 2: must be a JSON object"), "{p:?}");
        assert!(p[2].starts_with("event 3: (decision_id t) `timestamp`"), "{p:?}");
        assert!(p[3].starts_with("event 4: (decision_id y) `bundles`"), "{p:?}");
        assert!(p[4].starts_with("event 5: (decision_id z) `decision`"), "{p:?}");
    }

    #[test]
    fn a_field_given_twice_is_refused_so_columns_cannot_disagree_with_the_text() {
        let text = br#"[{"decision_id":"a","bundles":{"main":{}},"bundles":{"other":{}},"decision":"allow","timestamp":"2026-12-03T09:01:02Z"}]"#;
        let Err(BatchError::Events(p)) = parse(text) else { panic!("refused") };
        assert!(p[0].contains("duplicate field `bundles`"), "{p:?}");
    }

    #[test]
    fn not_an_array_is_refused() {
        assert!(matches!(parse(b"{\"decision_id\":\"a\"}"), Err(BatchError::NotArray(_))));
        assert!(matches!(parse(b"[1, 2"), Err(BatchError::NotArray(_))));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 10 << 20]);
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        assert_eq!(inflate(&bomb, Encoding::Gzip, 1 << 20), Err(BatchError::Bomb { limit: 1 << 20 }));
        assert_eq!(inflate(&gzip(b"[]"), Encoding::Gzip, 2).unwrap(), b"[]");
        assert!(matches!(inflate(b"[]", Encoding::Gzip, 1024), Err(BatchError::Gzip(_))));
        assert_eq!(inflate(b"[]", Encoding::Identity, 1024).unwrap(), b"[]");
    }

    #[test]
    fn only_gzip_and_identity_encodings_are_taken() {
        assert_eq!(Encoding::from_header(Some("GZIP")), Ok(Encoding::Gzip));
        assert_eq!(Encoding::from_header(None), Ok(Encoding::Identity));
        assert_eq!(Encoding::from_header(Some("br")), Err(BatchError::Encoding("br".into())));
    }
}
