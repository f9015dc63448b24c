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

/// A replica whose every database connection (the query pool and the LISTEN connection) is
/// cut for 5 s must not go on answering from what it last knew as if it were current: within
/// `store_stale_after` (3 s by default) its held long polls are released with 503, bundle GETs
/// and /readyz answer 503 (gateways ask their next source), and once the database is back it
/// reloads and serves what was published meanwhile through another replica, by itself.
#[test]
fn a_replica_cut_off_from_postgresql_stops_answering_as_current_and_recovers_by_itself() {
    let Some(db) = TestDb::create() else { return };
    let relay = test_support::relay::Relay::start(db.addr());
    let dir_a = tempfile::tempdir().unwrap();
    let a = Server::start(&write_config(dir_a.path(), &format!("\"{}\"", db.url_through(relay.addr)), ""));
    let (_db, b) = replica(&db);
    assert_eq!(b.publish("main", &bundle("v1")).status, 201);
    let etag = a.active_etag("main").expect("replica a serves v1");
    assert_eq!(call("GET", &a.url("/readyz"), None, &[], None).status, 200);

    let poll = long_poll(&a, &etag);
    a.wait_for_waiters(1.0);
    let cut_at = Instant::now();
    relay.cut();
    std::thread::sleep(Duration::from_millis(300));
    // Published through the other replica while a is cut off: a cannot hear of it.
    assert_eq!(b.publish("main", &bundle("v2")).status, 201);
    let (released, at) = poll.join().unwrap();
    let after = at.duration_since(cut_at);
    println!("replica a released its held long poll {after:?} after the cut: {} {}", released.status, released.text());
    assert_eq!(released.status, 503, "{}", released.text());
    assert!(released.text().contains("has not reached its store"), "{}", released.text());
    assert!(after < Duration::from_secs(5), "released {after:?} after the cut");
    let ready = call("GET", &a.url("/readyz"), None, &[], None);
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(a.get_bundle("main", None, None).status, 503, "a GET from memory while cut off");
    assert_eq!(a.metric("control_api_store_up"), 0.0);

    std::thread::sleep(Duration::from_secs(5).saturating_sub(cut_at.elapsed()));
    relay.restore();
    let restored = Instant::now();
    eventually(Duration::from_secs(15), "replica a ready again", || {
        call("GET", &a.url("/readyz"), None, &[], None).status == 200
    });
    println!("replica a ready again {:?} after the database came back", restored.elapsed());
    let r = a.get_bundle("main", None, None);
    assert_eq!((r.status, r.header("x-bundle-revision")), (200, Some("v2")), "what was published meanwhile");
    assert_eq!(a.metric("control_api_store_up"), 1.0);
}
