//! Several `control-api` replicas sharing one PostgreSQL database: a publish or rollback
//! through one wakes long polls held by another (LISTEN/NOTIFY). Needs
//! `CONTROL_API_TEST_POSTGRES` (scripts/pg-up); in CI its absence fails the tests.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn replica(db: &TestDb) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("\"{}\"", db.url), "");
    let server = Server::start(&config);
    (dir, server)
}

fn long_poll(server: &Server, etag: &str) -> std::thread::JoinHandle<(Resp, Instant)> {
    let url = server.url("/v1/bundles/main");
    let etag = etag.to_owned();
    std::thread::spawn(move || {
        let r = call("GET", &url, Some(READ_TOKEN), &[("if-none-match", &etag), ("prefer", "wait=30")], None);
        (r, Instant::now())
    })
}

#[test]
fn a_publish_through_one_replica_wakes_a_long_poll_on_another() {
    let Some(db) = TestDb::create() else { return };
    let (_da, a) = replica(&db);
    let (_db, b) = replica(&db);
    let v1 = bundle("v1");
    let v2 = bundle("v2");
    assert_eq!(a.publish("main", &v1).status, 201);
    let etag = b.active_etag("main").expect("replica b serves what a published");
    assert_eq!(etag, format!("\"{}\"", digest(&v1)));

    let poll = long_poll(&b, &etag);
    b.wait_for_waiters(1.0);
    let sent = Instant::now();
    let r = a.publish("main", &v2);
    let answered = Instant::now();
    assert_eq!(r.status, 201, "{}", r.text());
    let (woken, woke) = poll.join().unwrap();
    assert_eq!(woken.status, 200);
    assert_eq!(woken.body, v2);
    assert_eq!(woken.header("etag"), Some(format!("\"{}\"", digest(&v2)).as_str()));
    let after_answer = woke.saturating_duration_since(answered);
    println!(
        "replica b's long poll woke {:?} after the PUT to replica a was sent (PUT took {:?}; {:?} after its answer)",
        woke.duration_since(sent),
        answered.duration_since(sent),
        after_answer
    );
    assert!(after_answer < Duration::from_millis(500), "woke {after_answer:?} after the publish was answered");

    // And the other way round, for a rollback.
    let etag = a.active_etag("main").unwrap();
    assert_eq!(etag, format!("\"{}\"", digest(&v2)));
    let poll = long_poll(&a, &etag);
    a.wait_for_waiters(1.0);
    assert_eq!(b.rollback("main", "v1").status, 200);
    let (woken, _) = poll.join().unwrap();
    assert_eq!(woken.status, 200);
    assert_eq!(woken.body, v1);
    assert_eq!(a.revisions("main"), b.revisions("main"));

    // Fleet reports sent to one replica are seen by the other.
    let report = serde_json::json!({"instance": "gw-1", "bundle": "main", "revision": "v1", "digest": digest(&v1)});
    let r = call("POST", &a.url("/v1/status"), Some(READ_TOKEN), &[], Some(report.to_string().as_bytes()));
    assert_eq!(r.status, 202);
    let fleet = call("GET", &b.url("/v1/fleet"), Some(READ_TOKEN), &[], None).json();
    assert_eq!(fleet[0]["instance"], "gw-1");
    assert_eq!(fleet[0]["current"], true);
}

#[test]
fn a_replica_started_after_publishes_serves_the_active_revision_and_survives_restarts() {
    let Some(db) = TestDb::create() else { return };
    let v1 = bundle("v1");
    {
        let (_d, a) = replica(&db);
        assert_eq!(a.publish("main", &v1).status, 201);
        assert_eq!(a.publish("main", &bundle("v2")).status, 201);
        assert_eq!(a.rollback("main", "v1").status, 200);
    }
    let (_d, b) = replica(&db);
    let r = b.get_bundle("main", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, v1);
    assert_eq!(b.revisions("main").as_array().map(Vec::len), Some(2));
}
