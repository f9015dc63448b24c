//! What a bundle source, mirror or network path can do to a gateway, through the real binary
//! against scriptable sources: redirect it (not followed unless configured, never from https to
//! http). Each refusal is counted and the last-known-good keeps serving a steady request stream
//! with no failure.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use test_support::source::{Answer, Source};

const FAST: &str = "  min_delay: 100ms\n  max_delay: 200ms\n  backoff_max: 300ms\n  timeout: 1s\n  long_poll: 2s\n";

/// A steady stream of public requests until dropped: (sent, failed).
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(base: &str) -> Stream {
        let (stop, sent, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, n, f, url) = (stop.clone(), sent.clone(), failed.clone(), format!("{base}/public/x"));
        let handle = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                if get(&url, &[]).status != 200 {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Stream { stop, sent, failed, handle: Some(handle) }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

fn failures(gw: &Gateway, reason: &str) -> f64 {
    metric(&gw.admin, &format!("gateway_bundle_activation_failures_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
}

#[test]
fn a_source_that_redirects_is_not_followed_and_last_known_good_serves() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let elsewhere = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r-elsewhere", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], FAST);
    wait_ready(&gw);
    let stream = Stream::start(&gw.base);
    src.set(Answer::Redirect { location: format!("{}/v1/bundles/main", elsewhere.url()) });
    eventually(Duration::from_secs(10), "the redirect refused and counted", || failures(&gw, "redirect") >= 2.0);
    let st = status(&gw);
    assert_eq!(st["bundle"]["revision"], "r1");
    let err = st["sync"]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("HTTP 307") && err.contains("not followed"), "{err}");
    assert!(elsewhere.requests().is_empty(), "the redirect's target was never asked");
    // Serving carries on through more refused polls.
    let before = failures(&gw, "redirect");
    eventually(Duration::from_secs(10), "more refused polls", || {
        failures(&gw, "redirect") >= before + 2.0 && stream.sent.load(Ordering::Relaxed) >= 50
    });
    let (sent, failed) = stream.finish();
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
}

#[test]
fn with_follow_redirects_a_redirect_to_plain_http_from_plain_http_is_followed() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let moved = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r2", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}  follow_redirects: true\n"));
    wait_ready(&gw);
    src.set(Answer::Redirect { location: format!("{}/v1/bundles/main", moved.url()) });
    eventually(Duration::from_secs(10), "r2 through the redirect", || revision(&gw) == "r2");
    assert_eq!(failures(&gw, "redirect"), 0.0);
}
