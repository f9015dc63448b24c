//! Decision logs through the real `control-api` binary over loopback: gateways' batches in
//! (`POST /v1/logs`, gzip or plain JSON, idempotent by `decision_id`), authors' queries out
//! (`GET /v1/logs`, `logs` tokens only), retention by count and by age, and the attacks on
//! ingest: a gzip bomb, forged events of another bundle, malformed batches. On SQLite, and the
//! ingest/query round trip on PostgreSQL too (`CONTROL_API_TEST_POSTGRES`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use test_support::decision_logs::{decision_id, error_event, event, gzip, gzip_batch, timestamp_ago};

fn start(dir: &Path, extra: &str) -> Server {
    Server::start(&write_logs_config(dir, "sqlite://./data/control.db", extra))
}

/// `POST /v1/logs` as gateways send it (gzip), or as plain JSON.
fn post_logs(s: &Server, token: &str, body: &[u8], gzipped: bool) -> Resp {
    let mut headers = vec![("content-type", "application/json")];
    if gzipped {
        headers.push(("content-encoding", "gzip"));
    }
    call("POST", &s.url("/v1/logs"), Some(token), &headers, Some(body))
}

fn ship(s: &Server, events: &[Value]) -> Resp {
    let r = post_logs(s, READ_TOKEN, &gzip_batch(events), true);
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// `GET /v1/logs?{query}` with the logs token; the events, or the failure.
fn query(s: &Server, q: &str) -> Vec<Value> {
    let r = call("GET", &s.url(&format!("/v1/logs?{q}")), Some(LOGS_TOKEN), &[], None);
    assert_eq!(r.status, 200, "GET /v1/logs?{q}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json().as_array().cloned().unwrap_or_else(|| panic!("not an array: {}", r.text()))
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["decision_id"].as_str().expect("decision_id").to_owned()).collect()
}

/// An event `ago` in the past, with `edit` applied.
fn at(n: u64, ago: Duration, edit: impl FnOnce(&mut Value)) -> Value {
    let mut e = event(&decision_id(n), "main");
    e["timestamp"] = json!(timestamp_ago(ago));
    edit(&mut e);
    e
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

#[test]
fn ingests_a_gzip_batch_and_a_plain_json_batch_keeping_each_event_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let (a, b, c) = (at(1, mins(3), |_| {}), at(2, mins(2), |_| {}), error_event(&decision_id(3), "main"));
    let r = ship(&s, &[a.clone(), b.clone()]);
    assert_eq!(r.json(), json!({ "accepted": 2, "stored": 2, "duplicates": 0 }));
    let plain = serde_json::to_vec(std::slice::from_ref(&c)).unwrap();
    let r = post_logs(&s, READ_TOKEN, &plain, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stored"], 1);

    let listed = query(&s, "bundle=main");
    assert_eq!(listed, vec![c, b, a], "every event as sent, newest first");
}

#[test]
fn a_retried_batch_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let batch = [at(1, mins(2), |_| {}), at(2, mins(1), |_| {})];
    ship(&s, &batch);
    let again = ship(&s, &batch);
    assert_eq!(again.json(), json!({ "accepted": 2, "stored": 0, "duplicates": 2 }));
    let overlapping = ship(&s, &[batch[1].clone(), at(3, Duration::ZERO, |_| {}), batch[1].clone()]);
    assert_eq!(overlapping.json(), json!({ "accepted": 3, "stored": 1, "duplicates": 2 }));
    assert_eq!(ids(&query(&s, "")), [decision_id(3), decision_id(2), decision_id(1)]);
    assert_eq!(s.metric("control_api_decision_logs_events_total{result=\"stored\"}"), 3.0);
    assert_eq!(s.metric("control_api_decision_logs_events_total{result=\"duplicate\"}"), 4.0);
}

#[test]
fn queries_filter_by_bundle_route_decision_revision_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    ship(
        &s,
        &[
            at(1, mins(120), |_| {}),
            at(2, mins(50), |e| e["route"] = json!("public")),
            at(3, mins(40), |e| {
                e["decision"] = json!("allow");
                e["status"] = json!(200);
            }),
            at(4, mins(30), |e| e["bundles"] = json!({ "main": { "revision": "r2" } })),
            at(5, mins(20), |e| e["bundles"] = json!({ "shop": { "revision": "r1" } })),
        ],
    );
    let got = |q: &str| ids(&query(&s, q));
    let id = decision_id;
    assert_eq!(got(""), [id(5), id(4), id(3), id(2), id(1)]);
    assert_eq!(got("bundle=main"), [id(4), id(3), id(2), id(1)]);
    assert_eq!(got("bundle=shop"), [id(5)]);
    assert_eq!(got("bundle=main&route=public"), [id(2)]);
    assert_eq!(got("decision=allow"), [id(3)]);
    assert_eq!(got("decision=deny&bundle=main&route=orders"), [id(4), id(1)]);
    assert_eq!(got("revision=r2"), [id(4)]);
    assert_eq!(got("since=60m"), [id(5), id(4), id(3), id(2)], "since: a span ago");
    assert_eq!(got("since=1h&until=35m"), [id(3), id(2)]);
    let t = timestamp_ago(mins(45));
    assert_eq!(got(&format!("until={t}")), [id(2), id(1)], "until: RFC 3339");
    assert_eq!(got("bundle=main&since=2026-01-01T00:00:00Z&limit=2"), [id(4), id(3)]);
    assert!(got("route=nothing").is_empty());
}

#[test]
fn the_default_limit_is_1000_and_a_limit_past_10000_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let events: Vec<Value> = (0..1005).map(|n| at(n, Duration::from_millis(10 * n), |_| {})).collect();
    ship(&s, &events);
    let all = query(&s, "");
    assert_eq!(all.len(), 1000);
    assert_eq!(all[0]["decision_id"], decision_id(0), "the newest first");
    assert_eq!(query(&s, "limit=10000").len(), 1005);
    for bad in ["limit=0", "limit=10001", "limit=many"] {
        let r = call("GET", &s.url(&format!("/v1/logs?{bad}")), Some(LOGS_TOKEN), &[], None);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("`limit`"), "{}", r.text());
    }
}

#[test]
fn bad_query_parameters_are_400_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let r = call("GET", &s.url("/v1/logs?decision=maybe&since=3600&until=later"), Some(LOGS_TOKEN), &[], None);
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("`decision`") && e.contains("`since`") && e.contains("unit") && e.contains("`until`"), "{e}");
    let r = call("GET", &s.url("/v1/logs?bundel=main"), Some(LOGS_TOKEN), &[], None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("bundel"), "{}", r.text());
}

#[test]
fn retention_keeps_the_newest_max_count_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "logs: { max_count: 3 }");
    ship(&s, &[at(1, mins(5), |_| {}), at(2, mins(4), |_| {})]);
    // The newest event arrives first: retention goes by timestamp, not by arrival.
    ship(&s, &[at(5, mins(1), |_| {}), at(3, mins(3), |_| {}), at(4, mins(2), |_| {})]);
    assert_eq!(ids(&query(&s, "")), [decision_id(5), decision_id(4), decision_id(3)]);
    assert_eq!(s.metric("control_api_decision_logs_pruned_total"), 2.0);
}

#[test]
fn retention_drops_events_older_than_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "logs: { max_age: 1h }");
    let r = ship(&s, &[at(1, mins(90), |_| {}), at(2, mins(10), |_| {})]);
    assert_eq!(r.json()["stored"], 2);
    assert_eq!(ids(&query(&s, "")), [decision_id(2)]);
    assert_eq!(ids(&query(&s, "since=2h")), [decision_id(2)], "a query never reaches past max_age");
    assert_eq!(s.metric("control_api_decision_logs_pruned_total"), 1.0, "deleted, not only hidden");
}

#[test]
fn neither_a_read_nor_a_publish_token_may_query_logs() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    ship(&s, &[at(1, Duration::ZERO, |_| {})]);
    for (token, name) in [(READ_TOKEN, "gateways"), (PUBLISH_TOKEN, "ci"), (MAIN_READ_TOKEN, "gw-main")] {
        let r = call("GET", &s.url("/v1/logs"), Some(token), &[], None);
        assert_eq!(r.status, 403, "{name}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("`logs`"), "{}", r.text());
    }
    let r = call("GET", &s.url("/v1/logs"), None, &[], None);
    assert_eq!(r.status, 401);
}

#[test]
fn a_logs_token_can_neither_publish_nor_fetch_bundles_nor_ship_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    assert_eq!(s.publish("main", &bundle("v1")).status, 201);
    let auth = Some(LOGS_TOKEN);
    assert_eq!(call("PUT", &s.url("/v1/bundles/main"), auth, &[], Some(&bundle("v2"))).status, 403);
    assert_eq!(call("GET", &s.url("/v1/bundles/main"), auth, &[], None).status, 403);
    assert_eq!(call("GET", &s.url("/v1/bundles/main/revisions"), auth, &[], None).status, 403);
    assert_eq!(call("GET", &s.url("/v1/fleet"), auth, &[], None).status, 403);
    let r = post_logs(&s, LOGS_TOKEN, &gzip_batch(&[at(1, Duration::ZERO, |_| {})]), true);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(query(&s, "").is_empty());
    assert_eq!(s.revisions("main").as_array().map(Vec::len), Some(1));
}

#[test]
fn forged_events_for_another_bundle_are_refused_and_nothing_of_the_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let forged = at(2, Duration::ZERO, |e| e["bundles"] = json!({ "shop": { "revision": "r9" } }));
    let r = post_logs(&s, MAIN_READ_TOKEN, &gzip_batch(&[at(1, Duration::ZERO, |_| {}), forged]), true);
    assert_eq!(r.status, 403, "{}", r.text());
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("gw-main") && e.contains("`shop`") && e.contains(&decision_id(2)), "{e}");
    assert!(query(&s, "").is_empty(), "a refused batch stores nothing");
    assert_eq!(s.metric("control_api_decision_logs_refused_total{reason=\"forbidden\"}"), 1.0);

    let r = post_logs(&s, MAIN_READ_TOKEN, &gzip_batch(&[at(1, Duration::ZERO, |_| {})]), true);
    assert_eq!(r.status, 200, "its own bundle's events are taken: {}", r.text());
    // The same token is limited to `main` for bundles too.
    assert_eq!(s.publish("shop", &bundle("v1")).status, 201);
    assert_eq!(call("GET", &s.url("/v1/bundles/shop"), Some(MAIN_READ_TOKEN), &[], None).status, 403);
}

#[test]
fn a_logs_token_limited_to_one_bundle_reads_that_bundles_events_only() {
    let dir = tempfile::tempdir().unwrap();
    let tokens =
        format!("  - name: main-authors\n    scope: logs\n    bundles: [main]\n    sha256: {}\n", hash("main-authors"));
    let s = Server::start(&write_config_with_tokens(dir.path(), "sqlite://./control.db", "", &tokens));
    ship(&s, &[at(1, mins(1), |_| {}), at(2, Duration::ZERO, |e| e["bundles"] = json!({ "shop": {} }))]);
    let get = |q: &str| call("GET", &s.url(&format!("/v1/logs{q}")), Some("main-authors"), &[], None);
    assert_eq!(ids(get("").json().as_array().unwrap()), [decision_id(1)], "no bundle given: its bundles only");
    assert_eq!(ids(get("?bundle=main").json().as_array().unwrap()), [decision_id(1)]);
    let r = get("?bundle=shop");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("`shop`"), "{}", r.text());
}

#[test]
fn a_gzip_bomb_is_refused_with_413_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "logs: { max_upload: 64KiB, max_decompressed: 1MiB }");
    // 40 MiB of JSON whitespace inside an array: about 40 KB compressed, under max_upload.
    let mut json = vec![b'['];
    json.resize(40 << 20, b' ');
    json.push(b']');
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &json).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 << 10, "the bomb is {} bytes", bomb.len());
    let r = post_logs(&s, READ_TOKEN, &bomb, true);
    assert_eq!(r.status, 413, "{}", r.text());
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("logs.max_decompressed") && e.contains("1048576"), "{e}");
    assert_eq!(s.metric("control_api_decision_logs_refused_total{reason=\"decompressed_too_large\"}"), 1.0);
    assert_eq!(call("GET", &s.url("/healthz"), None, &[], None).status, 200);
}

/// Sends a POST /v1/logs by hand (`extra` header lines, then `body`) and reads the whole
/// answer; the server may answer, and stop reading, before all of the body is written.
fn raw_post(s: &Server, extra: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(s.base.strip_prefix("http://").unwrap()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {READ_TOKEN}\r\nconnection: close\r\n{extra}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).unwrap();
    let _ = conn.write_all(body);
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn an_upload_over_max_upload_is_refused_with_413_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "logs: { max_upload: 64KiB }");
    // Declared too large: refused from the header, before a byte of the body is read.
    let answer = raw_post(&s, "content-length: 1000000000", b"");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("logs.max_upload (65536 bytes)"), "{answer}");
    // Chunked: refused once more than the limit has arrived (the last chunk is never sent).
    let chunk = vec![b' '; 16 << 10];
    let mut body = Vec::new();
    for _ in 0..5 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    let answer = raw_post(&s, "transfer-encoding: chunked", &body);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(s.metric("control_api_decision_logs_refused_total{reason=\"too_large\"}"), 2.0);

    let events: Vec<Value> = (0..100).map(|n| at(n, Duration::ZERO, |_| {})).collect();
    let plain = serde_json::to_vec(&events).unwrap();
    assert!(plain.len() > 64 << 10);
    assert_eq!(post_logs(&s, READ_TOKEN, &gzip(&plain), true).status, 200, "the same events gzipped fit");
}

#[test]
fn a_malformed_batch_is_refused_naming_each_bad_event_and_field_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let mut no_id = at(2, Duration::ZERO, |_| {});
    no_id.as_object_mut().unwrap().remove("decision_id");
    let late = at(3, Duration::ZERO, |e| e["timestamp"] = json!("last tuesday"));
    let r = post_logs(&s, READ_TOKEN, &gzip_batch(&[at(1, Duration::ZERO, |_| {}), no_id, late]), true);
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("event 1: `decision_id`"), "{e}");
    assert!(e.contains(&format!("event 2: (decision_id {}) `timestamp`", decision_id(3))), "{e}");
    assert!(query(&s, "").is_empty(), "the good event of a refused batch is not stored either");

    for (body, gzipped, needle) in [
        (gzip(br#"{"decision_id":"a"}"#), true, "JSON array"),
        (b"[{".to_vec(), false, "JSON array"),
        (b"not gzip".to_vec(), true, "gzip"),
        (gzip(br#"[{"decision_id": 7}]"#), true, "event 0: `decision_id`"),
    ] {
        let r = post_logs(&s, READ_TOKEN, &body, gzipped);
        assert_eq!(r.status, 400, "{needle}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains(needle), "{needle}: {}", r.text());
    }
    assert_eq!(s.metric("control_api_decision_logs_refused_total{reason=\"malformed\"}"), 5.0);
}

#[test]
fn an_unknown_content_encoding_is_415() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let headers = [("content-encoding", "br")];
    let r = call("POST", &s.url("/v1/logs"), Some(READ_TOKEN), &headers, Some(b"[]"));
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("`br`"), "{}", r.text());
}

#[test]
fn refused_batches_are_counted_by_reason_including_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "");
    let batch = gzip_batch(&[at(1, Duration::ZERO, |_| {})]);
    assert_eq!(post_logs(&s, "no-such-token", &batch, true).status, 401);
    assert_eq!(call("POST", &s.url("/v1/logs"), None, &[], Some(&batch)).status, 401);
    assert_eq!(post_logs(&s, LOGS_TOKEN, &batch, true).status, 403);
    assert_eq!(s.metric("control_api_decision_logs_refused_total{reason=\"token\"}"), 3.0);
    assert_eq!(s.metric("control_api_decision_logs_events_total{result=\"stored\"}"), 0.0);
}

#[test]
fn postgres_ingest_is_idempotent_and_queries_filter_and_order() {
    let Some(db) = TestDb::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&write_logs_config(dir.path(), &format!("\"{}\"", db.url), "logs: { max_count: 3 }"));
    let batch = [at(1, mins(4), |_| {}), at(2, mins(3), |e| e["decision"] = json!("allow")), at(3, mins(2), |_| {})];
    ship(&s, &batch);
    assert_eq!(ship(&s, &batch).json()["duplicates"], 3);
    ship(&s, &[at(4, mins(1), |e| e["route"] = json!("public"))]);
    assert_eq!(ids(&query(&s, "")), [decision_id(4), decision_id(3), decision_id(2)], "max_count 3");
    assert_eq!(ids(&query(&s, "decision=deny&route=orders")), [decision_id(3)]);
    assert_eq!(ids(&query(&s, "since=150s")), [decision_id(4), decision_id(3)]);
    assert_eq!(query(&s, "decision=allow")[0], batch[1], "the event as sent");
}
