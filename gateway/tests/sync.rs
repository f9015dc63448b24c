//! The sync loop through the real `gateway` binary against a scriptable bundle source:
//! activation by long poll, fail static on every kind of bad answer, the persisted
//! last-known-good, staleness signals, and signatures.

mod common;

use common::*;
use std::time::Duration;
use test_support::source::{Answer, Source};

/// Fast polling so that tests take seconds: every bundle key but `sources`.
const FAST: &str = "  min_delay: 100ms\n  max_delay: 200ms\n  backoff_max: 300ms\n  timeout: 1s\n  long_poll: 5s\n";

fn sync_errors(gw: &Gateway) -> f64 {
    metric(&gw.admin, "gateway_bundle_sync_total{result=\"error\"}").unwrap_or(0.0)
}

fn public_ok(gw: &Gateway) -> bool {
    get(&format!("{}/public/x", gw.base), &[]).status == 200
}

#[test]
fn activates_a_new_revision_from_a_long_poll_long_before_the_next_poll_would() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], "  long_poll: 30s\n  timeout: 2s\n");
    gw.wait_ready();
    assert_eq!(revision(&gw), "r1");
    // Let the gateway settle into its held long poll, then publish.
    std::thread::sleep(Duration::from_millis(300));
    src.set(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r2", &[])));
    let took = eventually(Duration::from_secs(5), "r2 active", || revision(&gw) == "r2");
    println!("publish to activation under long poll: {took:?}");
    // The next poll would come 5-10 s after the last answer (min_delay, max_delay): the held
    // long poll answers at once. Activation itself (a child process checks the budget, then a
    // compile) takes ~0.3 s idle; the bound leaves room for a loaded machine, not a timing claim.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(public_ok(&gw));
    let st = status(&gw);
    assert_eq!(st["sync"]["source"], src.url());
    assert_eq!(st["sync"]["stale"], false);
}

#[test]
fn status_never_shows_a_revision_with_another_bundles_etag() {
    // The source's ETag is the body's digest, and so is the gateway's `bundle.digest`: every
    // `/status` read while revisions change must pair them. (The ETag used to be stored just
    // after the swap, so a read in between saw the new revision with the previous ETag.)
    let up = echo_upstream("u");
    let addr = up.addr.to_string();
    let src = Source::start(Answer::Bundle(bundle_tarball(&addr, "r0", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], FAST);
    gw.wait_ready();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, admin) = (stop.clone(), gw.admin.clone());
        std::thread::spawn(move || {
            let (mut reads, mut mismatches) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let st = get(&format!("{admin}/status"), &[]).json();
                let want = format!("\"{}\"", st["bundle"]["digest"].as_str().unwrap_or_default());
                if st["sync"]["etag"].as_str() != Some(want.as_str()) {
                    mismatches.push(format!("{} with etag {}", st["bundle"]["revision"], st["sync"]["etag"]));
                }
                reads += 1;
            }
            (reads, mismatches)
        })
    };
    for i in 1..=8 {
        let rev = format!("r{i}");
        src.set(Answer::Bundle(bundle_tarball(&addr, &rev, &[])));
        eventually(Duration::from_secs(5), &format!("{rev} active"), || revision(&gw) == rev);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, mismatches) = reader.join().expect("status reader");
    assert!(reads > 20, "only {reads} status reads");
    assert!(
        mismatches.is_empty(),
        "{} of {reads} reads paired a revision with another ETag: {mismatches:?}",
        mismatches.len()
    );
}

#[test]
fn keeps_last_known_good_when_the_source_serves_bad_bundles() {
    let up = echo_upstream("u");
    let good = bundle_tarball(&up.addr.to_string(), "r1", &[]);
    let src = Source::start(Answer::Bundle(good.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}  max_size: 1MiB\n"));
    gw.wait_ready();
    let good_etag = format!("\"{}\"", policy_bundles::digest(&good));

    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let other = bundle_tarball(&up.addr.to_string(), "r-other", &[]);
    let bad_rego =
        bundle_tarball(&up.addr.to_string(), "r-bad", &[("http/bad.rego", "package http.bad\nallow if {\n")]);
    let missing_rule = {
        let d = tempfile::tempdir().expect("tempdir");
        let b = example_bundle(
            d.path(),
            &up.addr.to_string(),
            "",
            "  - name: ghost\n    match: { path_prefix: /ghost }\n    upstream: backend\n    policy: data.http.ghost.allow\n",
            &[],
        );
        let files = policy_bundles::archive::read_dir(&b, &policy_bundles::Limits::default()).expect("read");
        policy_bundles::archive::write_tar_gz(&files).expect("tar")
    };
    // An OPA bundle for another service, pushed under this name: no `data.gateway` at all.
    let foreign = {
        let mut files = policy_bundles::archive::Files::new();
        files.insert(".manifest".into(), br#"{"revision": "r-foreign"}"#.to_vec());
        files.insert(
            "authz/policy.rego".into(),
            b"package authz
import rego.v1
allow := true
"
            .to_vec(),
        );
        policy_bundles::archive::write_tar_gz(&files).expect("tar")
    };
    let mut huge = vec![0u8; 2 << 20];
    huge[0] = 0x1f;
    let faults: Vec<(&str, Answer, &str)> = vec![
        ("garbage", Answer::Body { bytes: b"definitely not a bundle".to_vec(), etag: Some("\"x\"".into()) }, "gzip"),
        ("truncated gzip", Answer::Body { bytes: truncated, etag: Some("\"t\"".into()) }, "bundle refused"),
        (
            "digest mismatch",
            Answer::Body { bytes: other, etag: Some(format!("\"{}\"", "0".repeat(64))) },
            "digest mismatch",
        ),
        ("rego that does not compile", Answer::Bundle(bad_rego), "http/bad.rego"),
        ("route naming a missing rule", Answer::Bundle(missing_rule), "data.http.ghost.allow"),
        ("a bundle with no routing table", Answer::Bundle(foreign), "empty routing table"),
        ("over max_size", Answer::Body { bytes: huge, etag: Some("\"h\"".into()) }, "max_size"),
        ("500", Answer::Status { code: 500, retry_after: None }, "HTTP 500"),
        ("404", Answer::Status { code: 404, retry_after: None }, "HTTP 404"),
        ("403", Answer::Status { code: 403, retry_after: None }, "HTTP 403"),
        ("connection closed", Answer::Close, "request failed"),
    ];
    for (what, answer, expect) in faults {
        let before = sync_errors(&gw);
        src.set(answer);
        eventually(Duration::from_secs(10), what, || sync_errors(&gw) > before);
        let st = status(&gw);
        assert_eq!(st["bundle"]["revision"], "r1", "{what}: last-known-good must keep serving");
        let err = st["sync"]["last_error"].as_str().unwrap_or("");
        assert!(err.contains(expect), "{what}: last_error {err:?} should mention {expect:?}");
        assert!(public_ok(&gw), "{what}: serving must not notice");
        assert_eq!(get(&format!("{}/readyz", gw.admin), &[]).status, 200, "{what}");
    }
    for reason in ["archive", "digest", "rego", "settings"] {
        let series = format!("gateway_bundle_activation_failures_total{{reason=\"{reason}\"}}");
        assert!(metric(&gw.admin, &series).unwrap_or(0.0) >= 1.0, "missing {series}");
    }
    // The ETag of the active bundle was kept through every failure: recovery costs a 304.
    let seen = src.requests();
    assert_eq!(seen.last().and_then(|r| r.if_none_match.as_deref()), Some(good_etag.as_str()), "{seen:?}");
    src.set(Answer::Bundle(good));
    let before = metric(&gw.admin, "gateway_bundle_sync_total{result=\"not_modified\"}").unwrap_or(0.0);
    eventually(Duration::from_secs(10), "recovery by 304", || {
        metric(&gw.admin, "gateway_bundle_sync_total{result=\"not_modified\"}").unwrap_or(0.0) > before
    });
}

#[test]
fn a_source_that_hangs_or_trickles_is_cut_by_the_timeout() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], FAST);
    gw.wait_ready();
    let next = bundle_tarball(&up.addr.to_string(), "r2", &[]);
    for (what, answer) in [
        ("hang after headers", Answer::Hang { content_length: 1000 }),
        ("trickle", Answer::Trickle { bytes: next, every: Duration::from_millis(200) }),
    ] {
        let before = sync_errors(&gw);
        src.set(answer);
        let took = eventually(Duration::from_secs(8), what, || sync_errors(&gw) > before);
        assert!(took < Duration::from_secs(5), "{what}: cut after {took:?}");
        assert_eq!(revision(&gw), "r1");
        assert!(public_ok(&gw));
        let err = status(&gw)["sync"]["last_error"].as_str().unwrap_or("").to_owned();
        assert!(err.contains("not received within"), "{what}: {err}");
    }
}

#[test]
fn falls_over_to_the_next_source() {
    let up = echo_upstream("u");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[dead, src.url()], FAST);
    gw.wait_ready();
    assert_eq!(revision(&gw), "r1");
    assert_eq!(status(&gw)["sync"]["source"], src.url());
}

#[test]
fn without_a_cache_or_a_source_it_is_not_ready_and_answers_503_until_a_bundle_arrives() {
    let up = echo_upstream("u");
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[format!("http://127.0.0.1:{port}")], FAST);
    eventually(Duration::from_secs(10), "admin up", || get(&format!("{}/healthz", gw.admin), &[]).status == 200);
    assert_eq!(get(&format!("{}/readyz", gw.admin), &[]).status, 503);
    eventually(Duration::from_secs(10), "proxy up", || get(&format!("{}/public/x", gw.base), &[]).status == 503);
    assert_eq!(status(&gw)["ready"], false);
    // The source comes up on the configured port.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port));
    drop(listener);
    let src = Source::start_on(port, Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    eventually(Duration::from_secs(10), "ready", || get(&format!("{}/readyz", gw.admin), &[]).status == 200);
    assert!(public_ok(&gw));
    drop(src);
}

#[test]
fn restarts_from_its_cache_while_the_source_is_down() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let mut gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}  cache_dir: {}\n", cache.display()));
    gw.wait_ready();
    eventually(Duration::from_secs(5), "persisted", || cache.join("main.json").exists());
    drop(src);
    gw.restart();
    gw.wait_ready();
    assert_eq!(revision(&gw), "r1");
    assert_eq!(status(&gw)["bundle"]["source"], "cache");
    assert!(public_ok(&gw));

    // A corrupt cache is skipped, never fatal: the gateway comes up, not ready, and says why.
    let tarball = std::fs::read_dir(&cache)
        .expect("cache dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
        .expect("cached tarball");
    std::fs::write(tarball.path(), b"corrupted").expect("corrupt");
    gw.restart();
    eventually(Duration::from_secs(10), "admin up", || get(&format!("{}/healthz", gw.admin), &[]).status == 200);
    assert_eq!(get(&format!("{}/readyz", gw.admin), &[]).status, 503);
    assert_eq!(metric(&gw.admin, "gateway_bundle_activation_failures_total{reason=\"cache\"}"), Some(1.0));
}

#[test]
fn staleness_grows_and_the_stale_flag_flips_while_ready_stays() {
    let up = echo_upstream("u");
    let good = bundle_tarball(&up.addr.to_string(), "r1", &[]);
    let src = Source::start(Answer::Bundle(good.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(
        dir.path(),
        &[src.url()],
        &format!("{}  max_staleness: 2s\n", FAST.replace("long_poll: 5s", "long_poll: 500ms")),
    );
    gw.wait_ready();
    assert_eq!(metric(&gw.admin, "gateway_bundle_stale"), Some(0.0));
    src.set(Answer::Status { code: 503, retry_after: None });
    std::thread::sleep(Duration::from_millis(1200));
    let age = metric(&gw.admin, "gateway_bundle_age_seconds").unwrap_or(0.0);
    assert!(age >= 0.8, "age should grow while the source fails: {age}");
    eventually(Duration::from_secs(5), "stale flag", || metric(&gw.admin, "gateway_bundle_stale") == Some(1.0));
    assert_eq!(get(&format!("{}/readyz", gw.admin), &[]).status, 200, "stale is an alert, not an outage");
    assert!(public_ok(&gw));
    assert_eq!(status(&gw)["sync"]["stale"], true);
    src.set(Answer::Bundle(good));
    eventually(Duration::from_secs(5), "stale cleared", || metric(&gw.admin, "gateway_bundle_stale") == Some(0.0));
    assert!(metric(&gw.admin, "gateway_bundle_age_seconds").unwrap_or(99.0) < 1.5);
}

#[test]
fn honours_retry_after() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], &FAST.replace("long_poll: 5s", "long_poll: 0s"));
    gw.wait_ready();
    src.set(Answer::Status { code: 429, retry_after: Some(2) });
    let before = src.requests().len();
    std::thread::sleep(Duration::from_millis(1500));
    let during = src.requests().len() - before;
    // One request got the 429; the next waits at least 2 s (without it, ~0.3 s backoff).
    assert!(during <= 1, "{during} requests within 1.5 s of a 429 with Retry-After: 2");
}

#[test]
fn an_unwritable_cache_dir_keeps_serving_and_reports_the_error() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}  cache_dir: {}\n", not_a_dir.display()));
    gw.wait_ready();
    assert!(public_ok(&gw));
    eventually(Duration::from_secs(5), "persist failure counted", || {
        metric(&gw.admin, "gateway_bundle_activation_failures_total{reason=\"persist\"}").unwrap_or(0.0) >= 1.0
    });
    let err = status(&gw)["sync"]["last_error"].as_str().unwrap_or("").to_owned();
    assert!(err.contains("cannot persist"), "{err}");
}

#[test]
fn requires_signed_bundles_when_signing_is_configured() {
    let up = echo_upstream("u");
    let keys = repo_root().join("test-support/keys");
    let sequence = std::sync::atomic::AtomicU64::new(1);
    let sign = |revision: &str, key: &str, alg: &str| {
        let bytes = bundle_tarball(&up.addr.to_string(), revision, &[]);
        let mut files = policy_bundles::archive::read_tar_gz(&bytes, &policy_bundles::Limits::default()).expect("read");
        let seq = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = policy_bundles::signing::Identity { bundle: "main".into(), sequence: seq, expires: None };
        policy_bundles::signing::bind(&mut files, &id).expect("bind");
        let pem = std::fs::read(keys.join(key)).expect("key");
        let sig = policy_bundles::signing::sign(&files, &pem, alg, "k1").expect("sign");
        files.insert(".signatures.json".into(), sig);
        policy_bundles::archive::write_tar_gz(&files).expect("tar")
    };
    let src = Source::start(Answer::Bundle(sign("r1", "demo-es256.pem", "ES256")));
    let dir = tempfile::tempdir().expect("tempdir");
    let signing = format!(
        "  signing:\n    required: true\n    keys: [{{ id: k1, algorithm: ES256, public_key_file: {} }}]\n",
        keys.join("demo-es256.pub.pem").display()
    );
    let gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}{signing}"));
    gw.wait_ready();
    assert_eq!(revision(&gw), "r1");
    for (what, bytes, expect) in [
        ("unsigned", bundle_tarball(&up.addr.to_string(), "r2", &[]), "not signed"),
        ("signed by another key", sign("r3", "demo-rs256.pem", "RS256"), "signature"),
    ] {
        let before = sync_errors(&gw);
        src.set(Answer::Bundle(bytes));
        eventually(Duration::from_secs(10), what, || sync_errors(&gw) > before);
        assert_eq!(revision(&gw), "r1", "{what}");
        let err = status(&gw)["sync"]["last_error"].as_str().unwrap_or("").to_owned();
        assert!(err.contains(expect), "{what}: {err}");
    }
    assert!(metric(&gw.admin, "gateway_bundle_activation_failures_total{reason=\"signature\"}").unwrap_or(0.0) >= 2.0);
    src.set(Answer::Bundle(sign("r4", "demo-es256.pem", "ES256")));
    eventually(Duration::from_secs(10), "signed r4", || revision(&gw) == "r4");
}

#[test]
fn kill_9_while_persisting_never_leaves_a_cache_that_cannot_boot() {
    let up = echo_upstream("u");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r0", &[])));
    let mut gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}  cache_dir: {}\n", cache.display()));
    gw.wait_ready();
    // Publish new revisions continuously while killing the gateway at varying moments.
    for round in 1..=8u64 {
        src.set(Answer::Bundle(bundle_tarball(&up.addr.to_string(), &format!("r{round}"), &[])));
        std::thread::sleep(Duration::from_millis(15 * round));
        let pid = gw.proc.pid();
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        let _ = gw.proc.wait();
        gw.restart();
    }
    drop(src);
    gw.restart();
    gw.wait_ready();
    assert_eq!(status(&gw)["bundle"]["source"], "cache");
    assert!(public_ok(&gw));
}

#[test]
fn status_reports_the_last_activation_attempt_and_what_the_bundle_served_since() {
    let up = echo_upstream("u");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], FAST);
    gw.wait_ready();
    for _ in 0..5 {
        assert!(public_ok(&gw));
    }
    assert_eq!(get(&format!("{}/orders/7", gw.base), &[]).status, 401);
    // Counted in the logging phase, just after the answer is written.
    eventually(Duration::from_secs(2), "six requests counted", || status(&gw)["bundle"]["served"]["requests"] == 6);
    let st = status(&gw);
    assert_eq!(st["last_activation"]["outcome"], "activated", "{st}");
    assert_eq!(st["last_activation"]["digest"], st["bundle"]["digest"], "{st}");
    let served = &st["bundle"]["served"];
    assert_eq!(served["requests"], 6, "{st}");
    assert_eq!(served["denies"], 1, "{st}");
    assert_eq!(served["errors"], 0, "{st}");
    assert!(served["p99_ms"].as_u64().is_some(), "{st}");
    assert!(st["bundle"]["figures"]["compiled_bytes"].as_u64().unwrap_or(0) > 0, "{st}");

    let broken = bundle_tarball(&up.addr.to_string(), "r2", &[("http/bad.rego", "package http.bad\nallow if {\n")]);
    src.set(Answer::Bundle(broken.clone()));
    eventually(Duration::from_secs(5), "the failed attempt recorded", || {
        status(&gw)["last_activation"]["outcome"] == "failed"
    });
    let st = status(&gw);
    assert_eq!(st["last_activation"]["reason"], "rego", "{st}");
    assert_eq!(st["last_activation"]["digest"], policy_bundles::digest(&broken), "{st}");
    assert_eq!(revision(&gw), "r1");
    assert!(st["bundle"]["served"]["requests"].as_u64().unwrap_or(0) >= 6, "counters belong to the serving bundle");
}
