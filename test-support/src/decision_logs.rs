//! Decision-log events as gateways send them (OPA's schema plus `route`, `status`, `decision`,
//! `cached`, `trace_id`), and the gzip JSON arrays they are shipped in, for tests of sinks and
//! of what reads them back.

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

/// A decision id shaped as a gateway's (a version 4 UUID), distinct for each `n`.
pub fn decision_id(n: u64) -> String {
    let h = format!("{:016x}{:016x}", 0x6f1c_0000_0000_0000_u64 | (n >> 32), n);
    format!("{}-{}-4{}-8{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// RFC 3339 UTC with nanoseconds (as the gateway writes it), `ago` before now.
pub fn timestamp_ago(ago: Duration) -> String {
    let at = SystemTime::now() - ago;
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).expect("format time")
}

/// A deny of `GET /orders/7` on route `orders` of `bundle` at revision `r1`, decided now:
/// change its fields (`event["route"] = ...`) for other cases.
pub fn event(id: &str, bundle: &str) -> Value {
    json!({
        "decision_id": id,
        "labels": { "id": "gw-1", "version": "0.1.0" },
        "bundles": { bundle: { "revision": "r1" } },
        "path": "http/orders/allow",
        "input": {
            "request": {
                "method": "GET", "path": "/orders/7", "host": "api.example.com",
                "headers": { "x-tenant": "acme" }, "query": {}, "scheme": "http", "client_ip": "127.0.0.1"
            },
            "route": "orders",
            "token": { "sub": "bob" }
        },
        "result": { "allow": false, "status": 403, "reason": "not your order" },
        "timestamp": timestamp_ago(Duration::ZERO),
        "metrics": { "timer_rego_query_eval_ns": 81234 },
        "erased": ["/input/request/headers/authorization"],
        "masked": ["/input/token/sub"],
        "route": "orders",
        "status": 403,
        "decision": "deny",
        "cached": false,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"
    })
}

/// An event of a rule that failed: no `result`, `decision: error`, an `error` string.
pub fn error_event(id: &str, bundle: &str) -> Value {
    let mut e = event(id, bundle);
    let o = e.as_object_mut().expect("an object");
    o.remove("result");
    o.insert("decision".into(), json!("error"));
    o.insert("status".into(), json!(403));
    o.insert("error".into(), json!("rego_type_error: undefined function"));
    e
}

/// Gzip-compressed bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// A batch as gateways ship it: the events as one gzip JSON array.
pub fn gzip_batch(events: &[Value]) -> Vec<u8> {
    gzip(&serde_json::to_vec(events).expect("JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_distinct_uuids() {
        let (a, b) = (decision_id(1), decision_id(2));
        assert_ne!(a, b);
        assert_eq!(a.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{a}");
    }
}
