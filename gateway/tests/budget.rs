//! Resource budgets through the real `gateway` binary: a bundle that is small on the wire but
//! huge once inflated and parsed (12 MB of gzip, 119 MB of JSON in eight files, each under the
//! per-file limit) is measured in a child process and refused with reason `budget`, while the
//! last-known-good serves every request and the gateway's own memory never grows with it.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use test_support::process::peak_rss;
use test_support::source::{Answer, Source};

const FAST: &str = "  min_delay: 100ms\n  max_delay: 200ms\n  backoff_max: 500ms\n  timeout: 20s\n  long_poll: 0s\n";

/// The example bundle's files plus eight `http/blobN/data.json` of about 15 MB each (12 MB packed).
fn inflating_bundle(upstream: &str) -> Vec<u8> {
    let good = bundle_tarball(upstream, "huge", &[]);
    let files = policy_bundles::archive::read_tar_gz(&good, &policy_bundles::Limits::default()).expect("example");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data).expect("append");
    };
    for (path, data) in &files {
        add(path, data);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..8 {
        let mut json = Vec::with_capacity(15_500_000);
        json.push(b'{');
        let mut i = 0u64;
        while json.len() < 14_900_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i > 0 {
                json.push(b',');
            }
            write!(json, "\"k{i}\":{{\"owner\":\"user-{}\",\"tags\":[\"a\",\"b\",{}]}}", x % 100, x % 3)
                .expect("write");
            i += 1;
        }
        json.push(b'}');
        add(&format!("http/blob{n}/data.json"), &json);
    }
    tar.into_inner().and_then(|gz| gz.finish()).expect("gzip")
}

/// Public GETs every few milliseconds until stopped: (sent, failed).
fn traffic(base: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (sent, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        while !stop.load(Ordering::Relaxed) {
            sent.fetch_add(1, Ordering::Relaxed);
            if get(&format!("{base}/public/x"), &[]).status != 200 {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent.into_inner(), failed.into_inner())
    })
}

/// Serves the inflating bundle to a gateway whose budget is `budget` (lines under `bundle:`);
/// checks the refusal, the traffic and the gateway's memory; returns `/status` `last_error`.
fn refused_while_serving(huge: &[u8], budget: &str) -> String {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}{budget}"));
    gw.wait_ready();
    let stop = Arc::new(AtomicBool::new(false));
    let stream = traffic(gw.base.clone(), stop.clone());
    let before = peak_rss(gw.proc.pid());
    src.set(Answer::Bundle(huge.to_vec()));
    let series = "gateway_bundle_activation_failures_total{reason=\"budget\"}";
    eventually(Duration::from_secs(120), "the budget refusal counted", || {
        metric(&gw.admin, series).unwrap_or(0.0) >= 1.0
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = stream.join().expect("traffic");
    let after = peak_rss(gw.proc.pid());
    println!(
        "gateway peak RSS {} MiB before, {} MiB after; {sent} requests, {failed} failed",
        before >> 20,
        after >> 20
    );
    assert_eq!(revision(&gw), "r1", "last-known-good is still active");
    assert!(sent > 20, "traffic flowed: {sent}");
    assert_eq!(failed, 0, "every request during the refusal was served");
    // The tarball itself is held a few times; its 119 MB of JSON never is.
    assert!(after < before + (64 << 20), "peak RSS grew from {before} to {after} bytes");
    status(&gw)["sync"]["last_error"].as_str().unwrap_or("").to_owned()
}

#[test]
fn an_inflating_bundle_is_refused_by_its_uncompressed_size_while_last_known_good_serves() {
    let up = echo_upstream("gen");
    let huge = inflating_bundle(&up.addr.to_string());
    println!("inflating bundle: {} bytes compressed", huge.len());
    assert!(huge.len() < 16 << 20, "{}", huge.len());
    let err = refused_while_serving(&huge, "");
    assert!(
        err.contains("uncompressed is 11") && err.contains("over the budget of 64.0 MiB (max_uncompressed)"),
        "{err}"
    );
}

#[test]
fn a_bundle_within_the_size_budget_whose_compile_outgrows_memory_is_stopped_in_the_child() {
    let up = echo_upstream("gen");
    let huge = inflating_bundle(&up.addr.to_string());
    let err = refused_while_serving(&huge, "  budget: { max_uncompressed: 256MiB, max_memory: 768MiB }\n");
    assert!(err.contains("memory budget of 768.0 MiB (max_memory)"), "{err}");
}
