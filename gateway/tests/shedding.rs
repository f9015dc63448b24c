//! Load shedding: past `limits.max_in_flight` (and a full queue) requests get 503 with
//! Retry-After at once, counted in `gateway_shed_total`, while the admin listener answers.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn requests_past_the_in_flight_limit_are_shed_at_once_and_admin_keeps_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("slow");
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), "", "", &[]);
    let gw =
        start_gateway_with(dir.path(), &bundle, "limits: { max_in_flight: 2, max_queue: 1, queue_timeout: 100ms }\n");

    let started = Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}/public/x?sleep_ms=1500", gw.base);
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = get(&url, &[]);
                (r.status, r.header("retry-after").map(str::to_owned), t.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    // While the slots are taken, the admin listener answers at once.
    let t = Instant::now();
    assert_eq!(get(&format!("{}/metrics", gw.admin), &[]).status, 200);
    assert!(t.elapsed() < Duration::from_millis(500), "admin answered in {:?}", t.elapsed());
    let results: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    let served = results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(served, 2, "{results:?}");
    assert_eq!(shed.len(), 4, "{results:?}");
    for r in &shed {
        assert_eq!(r.1.as_deref(), Some("1"), "shed answers carry Retry-After");
        assert!(r.2 < Duration::from_millis(1000), "shed at once, not after the slow request: {:?}", r.2);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(metric_settled(&gw.admin, "gateway_shed_total", 4.0), Some(4.0));
    eventually(Duration::from_secs(5), "every slot released", || {
        metric(&gw.admin, "gateway_requests_in_flight") == Some(0.0)
    });
}
