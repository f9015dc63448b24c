//! The control plane's HTTP API, driven through the real `control-api` binary over loopback on
//! its embedded SQLite store.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn start_sqlite(dir: &Path, extra: &str) -> Server {
    Server::start(&write_config(dir, "sqlite://./data/control.db", extra))
}

fn errors_of(r: &Resp) -> Vec<serde_json::Value> {
    r.json()["errors"].as_array().cloned().unwrap_or_else(|| panic!("no errors list: {}", r.text()))
}

/// The active bundle is still `digest`, and the history still has `count` revisions.
fn assert_untouched(s: &Server, digest: &str, count: usize) {
    assert_eq!(s.active_etag("main").as_deref(), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(s.revisions("main").as_array().map(Vec::len), Some(count));
}

#[test]
fn publishes_a_bundle_with_201_then_answers_200_for_identical_content() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let tarball = bundle("v1");
    let r = s.publish("main", &tarball);
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert_eq!(body["name"], "main");
    assert_eq!(body["revision"], "v1");
    assert_eq!(body["digest"], digest(&tarball));
    assert_eq!(body["size"], tarball.len());

    let again = s.publish("main", &tarball);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["revision"], "v1");
    assert_eq!(s.revisions("main").as_array().map(Vec::len), Some(1), "an identical publish adds no revision");
}

#[test]
fn the_revision_defaults_to_the_digest_prefix_when_the_manifest_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let tarball = policy_bundles::archive::write_tar_gz(&example_files()).unwrap();
    let r = s.publish("main", &tarball);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["revision"], digest(&tarball)[..12]);
}

#[test]
fn serves_the_active_bundle_with_a_strong_etag_and_304_on_if_none_match() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    assert_eq!(s.get_bundle("main", None, None).status, 404, "nothing published yet");
    let tarball = bundle("v1");
    assert_eq!(s.publish("main", &tarball).status, 201);
    let etag = format!("\"{}\"", digest(&tarball));

    let r = s.get_bundle("main", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, tarball, "the exact published bytes are served");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("content-type"), Some("application/gzip"));
    assert_eq!(r.header("x-bundle-revision"), Some("v1"));

    for inm in [etag.clone(), format!("\"other\", {etag}"), "*".to_string(), format!("W/{etag}")] {
        let r = s.get_bundle("main", Some(&inm), None);
        assert_eq!(r.status, 304, "If-None-Match: {inm}");
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert!(r.body.is_empty());
    }
    let r = s.get_bundle("main", Some("\"0000\""), None);
    assert_eq!(r.status, 200, "a stale ETag gets the bundle");
    assert_eq!(s.metric("control_api_bundle_downloads_total{code=\"304\"}"), 4.0);
}

#[test]
fn refuses_bad_rego_naming_the_file_and_line_and_keeps_the_active_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let good = bundle("v1");
    assert_eq!(s.publish("main", &good).status, 201);

    let bad = bundle_with("v2", |f| {
        f.insert("http/broken.rego".into(), b"package http.broken\n\nallow if {\n  input.x ==\n".to_vec());
    });
    let r = s.publish("main", &bad);
    assert_eq!(r.status, 422, "{}", r.text());
    let errors = errors_of(&r);
    let e = errors.iter().find(|e| e["file"] == "http/broken.rego").unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!(e["kind"], "rego");
    assert!(e["line"].as_u64().is_some_and(|l| l >= 3), "{e}");
    assert!(!e["message"].as_str().unwrap_or("").is_empty());
    assert_untouched(&s, &digest(&good), 1);
    assert_eq!(s.metric("control_api_rejections_total{reason=\"rego\"}"), 1.0);
}

#[test]
fn refuses_a_path_traversal_archive_and_keeps_the_active_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let good = bundle("v1");
    assert_eq!(s.publish("main", &good).status, 201);

    let r = s.publish("main", &tarball_with_raw_entry("../evil.rego", b"package http.evil\n"));
    assert_eq!(r.status, 422, "{}", r.text());
    let errors = errors_of(&r);
    assert_eq!(errors[0]["kind"], "archive");
    assert_eq!(errors[0]["file"], "../evil.rego");
    assert!(errors[0]["message"].as_str().unwrap_or("").contains("traversal"), "{errors:?}");

    let r = s.publish("main", b"this is not a gzip file");
    assert_eq!(r.status, 422);
    assert_eq!(errors_of(&r)[0]["kind"], "archive");
    assert_untouched(&s, &digest(&good), 1);
}

#[test]
fn refuses_a_bundle_whose_decision_case_fails_naming_the_case() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let good = bundle("v1");
    assert_eq!(s.publish("main", &good).status, 201);

    // A case that expects what the policy does not do.
    let bad = bundle_with("v2", |f| {
        let cases = String::from_utf8(f["tests/cases.yaml"].clone()).unwrap();
        let cases = cases.replacen("  expect:\n    allow: false\n    status: 403", "  expect:\n    allow: true", 1);
        f.insert("tests/cases.yaml".into(), cases.into_bytes());
    });
    let r = s.publish("main", &bad);
    assert_eq!(r.status, 422, "{}", r.text());
    let errors = errors_of(&r);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["kind"], "tests");
    assert_eq!(errors[0]["file"], "tests/cases.yaml");
    assert!(errors[0]["line"].as_u64().is_some());
    let msg = errors[0]["message"].as_str().unwrap_or("");
    assert!(msg.contains("public POST is denied") && msg.contains("allow: expected true, got false"), "{msg}");
    assert_untouched(&s, &digest(&good), 1);
    assert!(s.metric("control_api_rejections_total{reason=\"tests\"}") >= 1.0);
}

#[test]
fn refuses_the_same_revision_with_other_content_with_409() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let good = bundle("v1");
    assert_eq!(s.publish("main", &good).status, 201);
    let other = bundle_with("v1", |f| {
        f.insert("http/extra/data.json".into(), br#"{"note": "changed"}"#.to_vec());
    });
    let r = s.publish("main", &other);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap_or("").contains("`v1`"), "{}", r.text());
    assert_untouched(&s, &digest(&good), 1);
    assert_eq!(s.metric("control_api_rejections_total{reason=\"conflict\"}"), 1.0);
}

/// Sends a PUT by hand: `head` is the request head (without the final blank line), then `body`,
/// then reads the status line without closing the request.
fn raw_put(base: &str, head: &str, body: &[u8]) -> String {
    let addr = base.strip_prefix("http://").unwrap();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(format!("{head}\r\n\r\n").as_bytes()).unwrap();
    // The server may answer (and stop reading) before all of it is written.
    let _ = conn.write_all(body);
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer: {e} (got {:?})", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).lines().next().unwrap_or("").to_owned()
}

#[test]
fn refuses_an_oversize_bundle_with_413_while_reading_and_keeps_the_active_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "max_bundle_size: 64KiB");
    let good = bundle("v1");
    assert_eq!(s.publish("main", &good).status, 201);
    let auth = format!("authorization: Bearer {PUBLISH_TOKEN}");

    // Declared too large: refused from the header, before a byte of the body is sent.
    let head = format!("PUT /v1/bundles/main HTTP/1.1\r\nhost: x\r\n{auth}\r\ncontent-length: 1000000000");
    let status = raw_put(&s.base, &head, b"");
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    // Chunked, no length: refused once more than the limit has arrived, while the request
    // is still open (the final chunk is never sent).
    let chunk = vec![b'x'; 16 * 1024];
    let mut body = Vec::new();
    for _ in 0..5 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    let head = format!("PUT /v1/bundles/main HTTP/1.1\r\nhost: x\r\n{auth}\r\ntransfer-encoding: chunked");
    let status = raw_put(&s.base, &head, &body);
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    assert_untouched(&s, &digest(&good), 1);
    assert_eq!(s.metric("control_api_rejections_total{reason=\"too_large\"}"), 2.0);
}

#[test]
fn a_long_poll_wakes_as_soon_as_a_new_revision_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    assert_eq!(s.publish("main", &bundle("v1")).status, 201);
    let etag = s.active_etag("main").unwrap();
    let base = s.base.clone();

    let poll = std::thread::spawn(move || {
        let url = format!("{base}/v1/bundles/main");
        let r = call("GET", &url, Some(READ_TOKEN), &[("if-none-match", &etag), ("prefer", "wait=30")], None);
        (r, Instant::now())
    });
    s.wait_for_waiters(1.0);
    let v2 = bundle("v2");
    let sent = Instant::now();
    assert_eq!(s.publish("main", &v2).status, 201);
    let answered = Instant::now();
    let (r, woke) = poll.join().unwrap();

    assert_eq!(r.status, 200);
    assert_eq!(r.body, v2);
    assert_eq!(r.header("etag"), Some(format!("\"{}\"", digest(&v2)).as_str()));
    assert_eq!(r.header("preference-applied"), Some("wait=30"));
    let after_answer = woke.saturating_duration_since(answered);
    println!(
        "long poll woke {:?} after the PUT was sent (PUT took {:?}; {:?} after its answer)",
        woke.duration_since(sent),
        answered.duration_since(sent),
        after_answer
    );
    assert!(after_answer < Duration::from_millis(500), "woke {after_answer:?} after the publish was answered");
    s.wait_for_waiters(0.0);
}

#[test]
fn a_long_poll_answers_304_when_nothing_changes_within_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "max_long_poll: 2s");
    assert_eq!(s.publish("main", &bundle("v1")).status, 201);
    let etag = s.active_etag("main").unwrap();

    let t = Instant::now();
    let r = s.get_bundle("main", Some(&etag), Some(1));
    let took = t.elapsed();
    assert_eq!(r.status, 304);
    assert_eq!(r.header("preference-applied"), Some("wait=1"));
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(5), "{took:?}");

    // The wait is capped at max_long_poll.
    let t = Instant::now();
    let r = s.get_bundle("main", Some(&etag), Some(3600));
    let took = t.elapsed();
    assert_eq!(r.status, 304);
    assert_eq!(r.header("preference-applied"), Some("wait=2"));
    assert!(took >= Duration::from_millis(1950) && took < Duration::from_secs(6), "{took:?}");

    // A stale ETag is answered at once, whatever the wait.
    let t = Instant::now();
    assert_eq!(s.get_bundle("main", Some("\"stale\""), Some(30)).status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn rollback_activates_an_earlier_revision_and_wakes_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let v1 = bundle("v1");
    let v2 = bundle("v2");
    assert_eq!(s.publish("main", &v1).status, 201);
    assert_eq!(s.publish("main", &v2).status, 201);
    let etag = s.active_etag("main").unwrap();
    assert_eq!(etag, format!("\"{}\"", digest(&v2)));

    let base = s.base.clone();
    let poll = std::thread::spawn(move || {
        let url = format!("{base}/v1/bundles/main");
        call("GET", &url, Some(READ_TOKEN), &[("if-none-match", &etag), ("prefer", "wait=30")], None)
    });
    s.wait_for_waiters(1.0);
    let r = s.rollback("main", "v1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revision"], "v1");
    assert_eq!(r.json()["digest"], digest(&v1));
    let woken = poll.join().unwrap();
    assert_eq!(woken.status, 200);
    assert_eq!(woken.body, v1);

    let revs = s.revisions("main");
    let actives: Vec<_> = revs.as_array().unwrap().iter().filter(|r| r["active"] == true).collect();
    assert_eq!(actives.len(), 1);
    assert_eq!(actives[0]["revision"], "v1");

    // Publishing v2 again makes it active again (it is not the active one, so not "identical").
    let r = s.publish("main", &v2);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.active_etag("main"), Some(format!("\"{}\"", digest(&v2))));
    assert_eq!(s.revisions("main").as_array().map(Vec::len), Some(2));
}

#[test]
fn rollback_to_an_unknown_revision_is_404_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let v1 = bundle("v1");
    assert_eq!(s.publish("main", &v1).status, 201);
    let r = s.rollback("main", "v9");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap_or("").contains("v9"));
    assert_eq!(s.rollback("other", "v1").status, 404);
    let bad = call("POST", &s.url("/v1/bundles/main/rollback"), Some(PUBLISH_TOKEN), &[], Some(b"{\"to\": \"v1\"}"));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_untouched(&s, &digest(&v1), 1);
}

#[test]
fn revisions_are_listed_newest_first_with_publisher_time_and_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    assert_eq!(s.publish("main", &bundle("v1")).status, 201);
    assert_eq!(s.publish("main", &bundle("v2")).status, 201);
    let v3 = bundle("v3");
    assert_eq!(s.publish("main", &v3).status, 201);
    let revs = s.revisions("main");
    let revs = revs.as_array().unwrap();
    let names: Vec<_> = revs.iter().map(|r| r["revision"].as_str().unwrap()).collect();
    assert_eq!(names, ["v3", "v2", "v1"]);
    assert_eq!(revs[0]["active"], true);
    assert_eq!(revs[1]["active"], false);
    assert_eq!(revs[0]["digest"], digest(&v3));
    assert_eq!(revs[0]["size"], v3.len());
    assert_eq!(revs[0]["published_by"], "ci");
    let at = revs[0]["published_at"].as_str().unwrap();
    assert!(at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T', "{at}");
    let r = call("GET", &s.url("/v1/bundles/nothing/revisions"), Some(READ_TOKEN), &[], None);
    assert_eq!(r.status, 404);
}

#[test]
fn a_restart_keeps_revisions_the_active_revision_and_fleet_reports() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "sqlite://./data/control.db", "");
    let v1 = bundle("v1");
    {
        let s = Server::start(&config);
        assert_eq!(s.publish("main", &v1).status, 201);
        assert_eq!(s.publish("main", &bundle("v2")).status, 201);
        assert_eq!(s.rollback("main", "v1").status, 200);
        let report = serde_json::json!({"instance": "gw-1", "bundle": "main", "revision": "v1", "digest": digest(&v1),
            "last_sync": "2026-11-25T12:00:00Z", "staleness_seconds": 1.5});
        let r = call("POST", &s.url("/v1/status"), Some(READ_TOKEN), &[], Some(report.to_string().as_bytes()));
        assert_eq!(r.status, 202);
        s.kill();
    }
    assert!(dir.path().join("data/control.db").exists(), "the SQLite file is beside the config");
    let s = Server::start(&config);
    let r = s.get_bundle("main", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, v1);
    let revs = s.revisions("main");
    let names: Vec<_> = revs.as_array().unwrap().iter().map(|r| (r["revision"].clone(), r["active"].clone())).collect();
    assert_eq!(names, [("v2".into(), false.into()), ("v1".into(), true.into())]);
    let fleet = call("GET", &s.url("/v1/fleet"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(fleet[0]["instance"], "gw-1");
    assert_eq!(fleet[0]["current"], true);
}

#[test]
fn refuses_missing_and_unknown_tokens_with_401_and_wrong_scopes_with_403() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let url = s.url("/v1/bundles/main");
    let tarball = bundle("v1");

    let r = call("PUT", &url, None, &[], Some(&tarball));
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(call("GET", &url, None, &[], None).status, 401);
    assert_eq!(call("GET", &url, Some("not-a-token"), &[], None).status, 401);
    assert_eq!(call("GET", &url, None, &[("authorization", "Basic eDp5")], None).status, 401);
    assert_eq!(call("GET", &s.url("/v1/fleet"), None, &[], None).status, 401);
    assert_eq!(call("POST", &s.url("/v1/status"), None, &[], Some(b"{}")).status, 401);

    let r = call("PUT", &url, Some(READ_TOKEN), &[], Some(&tarball));
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap_or("").contains("publish"));
    assert_eq!(s.rollback("main", "v1").status, 404, "publish token: allowed, but no such revision");
    let body = br#"{"revision": "v1"}"#;
    let r = call("POST", &s.url("/v1/bundles/main/rollback"), Some(READ_TOKEN), &[], Some(body));
    assert_eq!(r.status, 403);
    assert_eq!(s.get_bundle("main", None, None).status, 404, "nothing was published by the refused calls");

    // A publish token may also read.
    assert_eq!(s.publish("main", &tarball).status, 201);
    assert_eq!(call("GET", &url, Some(PUBLISH_TOKEN), &[], None).status, 200);
    assert_eq!(call("GET", &s.url("/v1/fleet"), Some(PUBLISH_TOKEN), &[], None).status, 200);
    // Liveness and metrics need no token.
    assert_eq!(call("GET", &s.url("/healthz"), None, &[], None).status, 200);
    assert_eq!(call("GET", &s.url("/metrics"), None, &[], None).status, 200);
}

#[test]
fn status_reports_build_the_fleet_marking_silent_and_out_of_date_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "fleet_silent_after: 2s");
    let v1 = bundle("v1");
    let v2 = bundle("v2");
    assert_eq!(s.publish("main", &v1).status, 201);
    assert_eq!(s.publish("main", &v2).status, 201);
    let report = |instance: &str, revision: &str, d: &str| {
        let body = serde_json::json!({"instance": instance, "bundle": "main", "revision": revision, "digest": d,
            "last_sync": "2026-11-25T12:00:00Z", "staleness_seconds": 3.0});
        call("POST", &s.url("/v1/status"), Some(READ_TOKEN), &[], Some(body.to_string().as_bytes()))
    };
    assert_eq!(report("gw-a", "v2", &digest(&v2)).status, 202);
    assert_eq!(report("gw-b", "v1", &digest(&v1)).status, 202);

    let fleet = || call("GET", &s.url("/v1/fleet"), Some(READ_TOKEN), &[], None).json();
    let f = fleet();
    assert_eq!(f.as_array().map(Vec::len), Some(2));
    assert_eq!(f[0]["instance"], "gw-a");
    assert_eq!(f[0]["current"], true);
    assert_eq!(f[0]["silent"], false);
    assert_eq!(f[0]["revision"], "v2");
    assert_eq!(f[0]["staleness_seconds"], 3.0);
    assert_eq!(f[0]["last_sync"], "2026-11-25T12:00:00.000Z", "normalized to RFC 3339 UTC");
    assert!(f[0]["last_report"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(f[1]["instance"], "gw-b");
    assert_eq!(f[1]["current"], false, "gw-b runs v1 while v2 is active");

    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(report("gw-a", "v2", &digest(&v2)).status, 202, "a report replaces the previous one");
    let f = fleet();
    assert_eq!(f.as_array().map(Vec::len), Some(2));
    assert_eq!(f[0]["silent"], false);
    assert_eq!(f[1]["silent"], true, "gw-b has not reported for over 2s");

    // Bad reports are refused, naming what is wrong.
    let post = |body: &[u8]| call("POST", &s.url("/v1/status"), Some(READ_TOKEN), &[], Some(body));
    assert_eq!(post(b"{not json").status, 400);
    let r = post(br#"{"bundle": "main"}"#);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("instance"), "{}", r.text());
    let r = post(br#"{"instance": "gw-c", "bundle": "main", "digest": "xyz"}"#);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("digest"), "{}", r.text());
    let r = post(br#"{"instance": "gw-c", "bundle": "main", "last_sync": "yesterday"}"#);
    assert!(r.status == 400 && r.text().contains("last_sync"), "{}", r.text());
    assert_eq!(fleet().as_array().map(Vec::len), Some(2));

    // What the gateway sends: Unix seconds, and empty strings before it has a bundle.
    let r = post(br#"{"instance": "gw-c", "bundle": "main", "revision": "", "digest": "", "last_sync": 1795608000, "staleness_seconds": 0}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    let f = fleet();
    assert_eq!(f[2]["instance"], "gw-c");
    assert_eq!(f[2]["last_sync"], "2026-11-25T12:00:00.000Z");
    assert_eq!(f[2]["revision"], serde_json::Value::Null);
    assert_eq!(f[2]["current"], false);
}

#[test]
fn metrics_count_publishes_rejections_downloads_and_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let v1 = bundle("v1");
    assert_eq!(s.publish("main", &v1).status, 201);
    assert_eq!(s.publish("main", &v1).status, 200);
    assert_eq!(s.publish("main", b"garbage").status, 422);
    let etag = s.active_etag("main").unwrap();
    assert_eq!(s.get_bundle("main", Some(&etag), None).status, 304);

    assert_eq!(s.metric("control_api_publishes_total{result=\"created\"}"), 1.0);
    assert_eq!(s.metric("control_api_publishes_total{result=\"identical\"}"), 1.0);
    assert_eq!(s.metric("control_api_publishes_total{result=\"rejected\"}"), 1.0);
    assert_eq!(s.metric("control_api_rejections_total{reason=\"archive\"}"), 1.0);
    assert_eq!(s.metric("control_api_bundle_downloads_total{code=\"200\"}"), 1.0);
    assert_eq!(s.metric("control_api_bundle_downloads_total{code=\"304\"}"), 1.0);

    let base = s.base.clone();
    let polls: Vec<_> = (0..3)
        .map(|_| {
            let (base, etag) = (base.clone(), etag.clone());
            std::thread::spawn(move || {
                let url = format!("{base}/v1/bundles/main");
                call("GET", &url, Some(READ_TOKEN), &[("if-none-match", &etag), ("prefer", "wait=30")], None)
            })
        })
        .collect();
    s.wait_for_waiters(3.0);
    assert_eq!(s.publish("main", &bundle("v2")).status, 201);
    for p in polls {
        assert_eq!(p.join().unwrap().status, 200);
    }
    s.wait_for_waiters(0.0);
}

#[test]
fn bundle_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    let r = s.publish(".hidden", &bundle("v1"));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.publish("a%20b", &bundle("v1"));
    assert_eq!(r.status, 400, "{}", r.text());
}

/// Runs `control-api ARGS` with `stdin` on its standard input.
fn run_with_stdin(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_token_reads_the_token_on_stdin_and_prints_the_sha256_the_config_expects() {
    let secret = "a long random token from standard input";
    for input in [secret.to_owned(), format!("{secret}\n"), format!("{secret}\r\n")] {
        let out = run_with_stdin(&["hash-token"], input.as_bytes());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), control_api::auth::hash_token(secret), "{input:?}");
    }
    let out = run_with_stdin(&["hash-token"], b"test\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn hash_token_refuses_an_empty_token_and_a_token_on_the_command_line() {
    for input in [&b""[..], b"\n"] {
        let out = run_with_stdin(&["hash-token"], input);
        assert_eq!(out.status.code(), Some(2), "{input:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the token is empty") && err.contains("standard input"), "{err}");
    }
    let out = run_with_stdin(&["hash-token", "secret-on-the-command-line"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "nothing is hashed from the command line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard input"), "{err}");
}

#[test]
fn version_prints_the_name_and_the_crate_version() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("control-api {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_accepts_a_good_config_and_names_key_and_line_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "sqlite://./control.db", "max_bundle_size: 8MiB");
    let out = Command::new(bin()).arg("--check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("control.db").exists(), "checking a config creates no database");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:0\nstore: sqlite://./x.db\nmax_bundle_size: lots\ntokens: []\n").unwrap();
    let out = Command::new(bin()).arg("--check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: `max_bundle_size`"), "{err}");
    assert!(err.contains("line 4: `tokens`"), "{err}");

    std::fs::write(&bad, "listen: 127.0.0.1:0\nstore: sqlite://./x.db\ntokens: []\nlisten_on: x\n").unwrap();
    let out = Command::new(bin()).arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4") && err.contains("listen_on"), "{err}");
}

#[test]
fn sigterm_answers_held_long_polls_at_once_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_sqlite(dir.path(), "");
    assert_eq!(s.publish("main", &bundle("v1")).status, 201);
    let etag = s.active_etag("main").unwrap();
    let url = s.url("/v1/bundles/main");
    let poll = std::thread::spawn(move || {
        let r = call("GET", &url, Some(READ_TOKEN), &[("if-none-match", &etag), ("prefer", "wait=60")], None);
        (r, Instant::now())
    });
    s.wait_for_waiters(1.0);
    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &s.proc.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    let (r, answered) = poll.join().unwrap();
    assert_eq!(r.status, 304);
    assert!(answered.duration_since(signalled) < Duration::from_secs(5), "{:?}", answered.duration_since(signalled));
    let mut status = None;
    eventually(Duration::from_secs(10), "control-api to exit after SIGTERM", || {
        status = s.proc.exited();
        status.is_some()
    });
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
}

/// One gateway's read token cannot forge another gateway's fleet row: the first report binds an
/// instance to its token's name, another token's report for it is 403 and counted, the row shows
/// its token, and a token limited to some bundles cannot report on others.
#[test]
fn a_status_report_for_an_instance_another_token_reports_for_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    const OTHER: &str = "another-gateways-read-token";
    let tokens = format!(
        "  - name: gw-other\n    scope: read\n    sha256: {}\n  - name: gw-main\n    scope: read\n    bundles: [main]\n    sha256: {}\n",
        hash(OTHER),
        hash(MAIN_READ_TOKEN)
    );
    let s = Server::start(&write_config_with_tokens(dir.path(), "sqlite://./data/control.db", "", &tokens));
    let v1 = bundle("v1");
    assert_eq!(s.publish("main", &v1).status, 201);
    let report = |token: &str, instance: &str, bundle: &str, staleness: f64| {
        let body = serde_json::json!({"instance": instance, "bundle": bundle, "revision": "v1", "digest": digest(&v1),
            "last_sync": "2026-11-25T12:00:00Z", "staleness_seconds": staleness});
        call("POST", &s.url("/v1/status"), Some(token), &[], Some(body.to_string().as_bytes()))
    };
    assert_eq!(report(READ_TOKEN, "gw-a", "main", 900.0).status, 202);
    // gw-other tries to make gw-a look fresh.
    let r = report(OTHER, "gw-a", "main", 0.0);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("another token"), "{}", r.text());
    assert_eq!(report(OTHER, "gw-b", "main", 1.0).status, 202, "its own instance is fine");
    assert_eq!(report(MAIN_READ_TOKEN, "gw-c", "other-bundle", 1.0).status, 403);
    let fleet = call("GET", &s.url("/v1/fleet"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(fleet[0]["instance"], "gw-a");
    assert_eq!(fleet[0]["staleness_seconds"], 900.0, "the forged report changed nothing");
    assert_eq!(fleet[0]["token"], "gateways");
    assert_eq!(fleet[1]["token"], "gw-other");
    let metrics = call("GET", &s.url("/metrics"), None, &[], None).text();
    assert!(metrics.contains("control_api_status_refused_total{reason=\"instance_bound\"} 1"), "{metrics}");
    assert!(metrics.contains("control_api_status_refused_total{reason=\"bundle\"} 1"), "{metrics}");
}

/// Rows expire after `fleet_retention`, and with them their binding: a gateway that moved to a
/// new token can report again once its old row is gone.
#[test]
fn fleet_rows_expire_after_the_retention_and_release_their_instance() {
    let dir = tempfile::tempdir().unwrap();
    const OTHER: &str = "another-gateways-read-token";
    let tokens = format!("  - name: gw-other\n    scope: read\n    sha256: {}\n", hash(OTHER));
    let s = Server::start(&write_config_with_tokens(
        dir.path(),
        "sqlite://./data/control.db",
        "fleet_retention: 1s",
        &tokens,
    ));
    let report = |token: &str| {
        let body = serde_json::json!({"instance": "gw-a", "bundle": "main", "revision": "", "digest": ""});
        call("POST", &s.url("/v1/status"), Some(token), &[], Some(body.to_string().as_bytes())).status
    };
    assert_eq!(report(READ_TOKEN), 202);
    assert_eq!(report(OTHER), 403);
    std::thread::sleep(Duration::from_millis(1300));
    let fleet = call("GET", &s.url("/v1/fleet"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(fleet.as_array().map(Vec::len), Some(0), "expired: {fleet}");
    assert_eq!(report(OTHER), 202);
}

/// A token limited to some bundles sees the gateways of those bundles only in `GET /v1/fleet`
/// (the console's fleet page reads the same list): another bundle's gateways, revisions and
/// token names stay hidden.
#[test]
fn a_bundle_scoped_token_sees_only_its_bundles_gateways_in_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let tokens =
        format!("  - name: gw-main\n    scope: read\n    bundles: [main]\n    sha256: {}\n", hash(MAIN_READ_TOKEN));
    let s = Server::start(&write_config_with_tokens(dir.path(), "sqlite://./data/control.db", "", &tokens));
    for (instance, bundle) in [("gw-a", "main"), ("gw-secret", "secret-bundle")] {
        let body = serde_json::json!({"instance": instance, "bundle": bundle, "revision": "", "digest": ""});
        let r = call("POST", &s.url("/v1/status"), Some(READ_TOKEN), &[], Some(body.to_string().as_bytes()));
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let all = call("GET", &s.url("/v1/fleet"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(all.as_array().map(Vec::len), Some(2), "an unscoped token sees both: {all}");
    let scoped = call("GET", &s.url("/v1/fleet"), Some(MAIN_READ_TOKEN), &[], None).json();
    let bundles: Vec<&str> = scoped.as_array().into_iter().flatten().filter_map(|m| m["bundle"].as_str()).collect();
    assert_eq!(bundles, vec!["main"], "{scoped}");
}

/// A token limited to some bundles (`bundles: [...]`) is 403 on every call for any other:
/// publish, rollback, download (active or a revision), history, status.
#[test]
fn bundle_scoped_tokens_are_refused_outside_their_bundles() {
    let dir = tempfile::tempdir().unwrap();
    const CI_MAIN: &str = "ci-main-only-token";
    let tokens = format!(
        "  - name: ci-main\n    scope: publish\n    bundles: [main]\n    sha256: {}\n  - name: gw-main\n    scope: read\n    bundles: [main]\n    sha256: {}\n",
        hash(CI_MAIN),
        hash(MAIN_READ_TOKEN)
    );
    let s = Server::start(&write_config_with_tokens(dir.path(), "sqlite://./data/control.db", "", &tokens));
    let put = |name: &str, token: &str, b: &[u8]| {
        call("PUT", &s.url(&format!("/v1/bundles/{name}")), Some(token), &[], Some(b))
    };
    assert_eq!(put("main", CI_MAIN, &bundle("m1")).status, 201);
    assert_eq!(put("staging", PUBLISH_TOKEN, &bundle("s1")).status, 201, "an unscoped token may");
    assert_eq!(put("staging", PUBLISH_TOKEN, &bundle("s2")).status, 201);
    let r = put("staging", CI_MAIN, &bundle("s3"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("may touch bundles [main] only"), "{}", r.text());
    let rollback = |token: &str| {
        call(
            "POST",
            &s.url("/v1/bundles/staging/rollback"),
            Some(token),
            &[("content-type", "application/json")],
            Some(br#"{"revision": "s1"}"#),
        )
        .status
    };
    assert_eq!(rollback(CI_MAIN), 403);
    for path in ["/v1/bundles/staging", "/v1/bundles/staging/revisions", "/v1/bundles/staging/revisions/s1"] {
        assert_eq!(call("GET", &s.url(path), Some(MAIN_READ_TOKEN), &[], None).status, 403, "{path}");
        assert_eq!(call("GET", &s.url(path), Some(READ_TOKEN), &[], None).status, 200, "{path} for an unscoped token");
    }
    assert_eq!(call("GET", &s.url("/v1/bundles/main/revisions/m1"), Some(MAIN_READ_TOKEN), &[], None).status, 200);
    let status = serde_json::json!({"instance": "gw-x", "bundle": "staging", "revision": "s2", "digest": ""});
    let r = call("POST", &s.url("/v1/status"), Some(MAIN_READ_TOKEN), &[], Some(status.to_string().as_bytes()));
    assert_eq!(r.status, 403);
    assert_eq!(s.revisions("staging").as_array().map(Vec::len), Some(2), "nothing changed");
    assert_eq!(rollback(PUBLISH_TOKEN), 200);
}
