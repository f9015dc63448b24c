//! What a bundle source, mirror or network path can do to a gateway, through the real binary
//! against scriptable sources: serve an older signed revision, another bundle's signed tarball,
//! an expired one, a signed bundle bound to nothing, or redirect it (not followed unless
//! configured, never from https to http). Each refusal is counted and the last-known-good keeps
//! serving a steady request stream with no failure; the highest signed sequence survives a
//! restart; a rollback is the old content signed again with a higher sequence; two keys are
//! trusted during a key change-over.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use policy_bundles::signing::{self, Identity};
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
    gw.wait_ready();
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
    gw.wait_ready();
    src.set(Answer::Redirect { location: format!("{}/v1/bundles/main", moved.url()) });
    eventually(Duration::from_secs(10), "r2 through the redirect", || revision(&gw) == "r2");
    assert_eq!(failures(&gw, "redirect"), 0.0);
}

/// The example bundle at `revision`, signed with demo key `key` (`alg`) as key id `kid`, bound
/// to `identity` when given.
fn signed(up: &str, revision: &str, key: &str, alg: &str, kid: &str, identity: Option<Identity>) -> Vec<u8> {
    let bytes = bundle_tarball(up, revision, &[]);
    let mut files = policy_bundles::archive::read_tar_gz(&bytes, &policy_bundles::Limits::default()).expect("read");
    if let Some(id) = &identity {
        signing::bind(&mut files, id).expect("bind");
    }
    let pem = std::fs::read(repo_root().join("test-support/keys").join(key)).expect("key");
    files.insert(".signatures.json".into(), signing::sign(&files, &pem, alg, kid).expect("sign"));
    policy_bundles::archive::write_tar_gz(&files).expect("tar")
}

fn id(bundle: &str, sequence: u64, expires: Option<u64>) -> Option<Identity> {
    Some(Identity { bundle: bundle.into(), sequence, expires })
}

fn signing_config(keys: &[(&str, &str, &str)]) -> String {
    let dir = repo_root().join("test-support/keys");
    let list: Vec<String> = keys
        .iter()
        .map(|(kid, alg, public)| {
            format!("{{ id: {kid}, algorithm: {alg}, public_key_file: {} }}", dir.join(public).display())
        })
        .collect();
    format!("  signing:\n    required: true\n    keys: [{}]\n", list.join(", "))
}

const ES: (&str, &str, &str) = ("k1", "ES256", "demo-es256.pub.pem");
const ED: (&str, &str, &str) = ("k2", "EdDSA", "demo-ed25519.pub.pem");

/// Serves `bytes` until the refusal of `reason` is counted, then checks nothing changed.
fn refused(gw: &Gateway, src: &Source, bytes: Vec<u8>, reason: &str, serving: &str) {
    let before = failures(gw, reason);
    src.set(Answer::Bundle(bytes));
    // The failure is counted, then recorded for /status: wait for both.
    let mut err = String::new();
    eventually(Duration::from_secs(10), &format!("a {reason} refusal counted and shown"), || {
        err = status(gw)["sync"]["last_error"].as_str().unwrap_or("").to_owned();
        failures(gw, reason) > before && err.contains("signature refused")
    });
    assert_eq!(revision(gw), serving, "{reason}: the last-known-good keeps serving: {err}");
}

#[test]
fn older_foreign_expired_and_unbound_signed_bundles_are_refused_and_a_restart_remembers() {
    let up = echo_upstream("u");
    let u = up.addr.to_string();
    let now = now();
    let src = Source::start(Answer::Bundle(signed(&u, "s10", "demo-es256.pem", "ES256", "k1", id("main", 10, None))));
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let extra = format!("{FAST}  cache_dir: {}\n{}", cache.display(), signing_config(&[ES]));
    let mut gw = start_polling_gateway(dir.path(), &[src.url()], &extra);
    gw.wait_ready();
    assert_eq!(revision(&gw), "s10");
    let stream = Stream::start(&gw.base);
    let older = signed(&u, "s5", "demo-es256.pem", "ES256", "k1", id("main", 5, None));
    refused(&gw, &src, older.clone(), "replay", "s10");
    refused(
        &gw,
        &src,
        signed(&u, "staging", "demo-es256.pem", "ES256", "k1", id("staging", 20, None)),
        "foreign",
        "s10",
    );
    refused(
        &gw,
        &src,
        signed(&u, "s30", "demo-es256.pem", "ES256", "k1", id("main", 30, Some(now - 60))),
        "expired",
        "s10",
    );
    let before = failures(&gw, "foreign");
    refused(&gw, &src, signed(&u, "unbound", "demo-es256.pem", "ES256", "k1", None), "foreign", "s10");
    assert!(failures(&gw, "foreign") > before);
    let (sent, failed) = stream.finish();
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    assert_eq!(status(&gw)["bundle"]["signature"]["sequence"], 10);

    // A restart boots from the cache and still refuses the older signed revision.
    src.set(Answer::Bundle(older));
    gw.restart();
    gw.wait_ready();
    assert_eq!(revision(&gw), "s10");
    eventually(Duration::from_secs(10), "the replay refused after the restart", || failures(&gw, "replay") >= 1.0);
    assert_eq!(std::fs::read_to_string(cache.join("main.sequence")).expect("persisted").trim(), "10");

    // A rollback: s5's content signed again with a higher sequence activates.
    src.set(Answer::Bundle(signed(&u, "s5", "demo-es256.pem", "ES256", "k1", id("main", 11, None))));
    eventually(Duration::from_secs(10), "the signed rollback", || revision(&gw) == "s5");
    // Persisted right after the swap.
    eventually(Duration::from_secs(5), "sequence 11 persisted", || {
        std::fs::read_to_string(cache.join("main.sequence")).is_ok_and(|t| t.trim() == "11")
    });
}

#[test]
fn a_serving_bundle_past_its_expiry_raises_the_alert_and_keeps_serving() {
    let up = echo_upstream("u");
    let u = up.addr.to_string();
    let expires = now() + 3;
    let src =
        Source::start(Answer::Bundle(signed(&u, "s1", "demo-es256.pem", "ES256", "k1", id("main", 1, Some(expires)))));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}{}", signing_config(&[ES])));
    gw.wait_ready();
    assert_eq!(metric(&gw.admin, "gateway_bundle_signature_expired"), Some(0.0));
    eventually(Duration::from_secs(10), "the expiry alert", || {
        metric(&gw.admin, "gateway_bundle_signature_expired") == Some(1.0)
    });
    assert_eq!(status(&gw)["bundle"]["signature"]["expired"], true);
    assert_eq!(revision(&gw), "s1");
    assert_eq!(get(&format!("{}/public/x", gw.base), &[]).status, 200, "an alert, not an outage");
    // A freshly signed bundle clears it.
    src.set(Answer::Bundle(signed(&u, "s2", "demo-es256.pem", "ES256", "k1", id("main", 2, Some(now() + 3600)))));
    eventually(Duration::from_secs(10), "s2", || revision(&gw) == "s2");
    assert_eq!(metric(&gw.admin, "gateway_bundle_signature_expired"), Some(0.0));
}

/// A key change-over: the gateway trusts the old key (k1) and the new one (k2) while bundles
/// move to k2; once only k2 is trusted, a bundle signed with the old key is refused.
#[test]
fn two_keys_are_trusted_during_a_key_rotation_and_the_old_one_is_refused_after() {
    let up = echo_upstream("u");
    let u = up.addr.to_string();
    let src =
        Source::start(Answer::Bundle(signed(&u, "old-key", "demo-es256.pem", "ES256", "k1", id("main", 1, None))));
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir.path(), &[src.url()], &format!("{FAST}{}", signing_config(&[ES, ED])));
    gw.wait_ready();
    assert_eq!(revision(&gw), "old-key");
    src.set(Answer::Bundle(signed(&u, "new-key", "demo-ed25519.pem", "EdDSA", "k2", id("main", 2, None))));
    eventually(Duration::from_secs(10), "the bundle signed with the new key", || revision(&gw) == "new-key");
    drop(gw);
    let dir2 = tempfile::tempdir().expect("tempdir");
    let gw = start_polling_gateway(dir2.path(), &[src.url()], &format!("{FAST}{}", signing_config(&[ED])));
    gw.wait_ready();
    assert_eq!(revision(&gw), "new-key");
    let before = failures(&gw, "signature");
    src.set(Answer::Bundle(signed(&u, "old-again", "demo-es256.pem", "ES256", "k1", id("main", 3, None))));
    eventually(Duration::from_secs(10), "the old key refused", || failures(&gw, "signature") > before);
    assert_eq!(revision(&gw), "new-key");
}
