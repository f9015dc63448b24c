//! Zero-downtime upgrade through the real binary: `gateway --upgrade` takes the listeners of
//! the running gateway under a steady stream of requests, three times, once with the control
//! plane down; no request fails, no decision changes, the same revision serves throughout.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use test_support::source::{Answer, Source};

/// A request stream that checks every answer: `/public/x` must be 200 from the upstream,
/// `/orders/7` without a token 401 from the gateway.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    wrong: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(base: &str) -> Stream {
        let (stop, sent, wrong) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::default());
        let threads = (0..2)
            .map(|i| {
                let (stop, sent, wrong): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<Mutex<Vec<String>>>) =
                    (stop.clone(), sent.clone(), Arc::clone(&wrong));
                let base = base.to_owned();
                std::thread::spawn(move || {
                    let (path, want) = if i == 0 { ("/public/x", 200) } else { ("/orders/7", 401) };
                    while !stop.load(Ordering::Relaxed) {
                        let r = get(&format!("{base}{path}"), &[]);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if r.status != want {
                            if let Ok(mut w) = wrong.lock() {
                                w.push(format!("{path}: {} {:?} {}", r.status, r.error, r.text()));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Stream { stop, sent, wrong, threads }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let wrong = self.wrong.lock().map(|w| w.clone()).unwrap_or_default();
        (self.sent.load(Ordering::Relaxed), wrong)
    }
}

/// `/status`, or null while nothing answers it yet.
fn status_of(admin: &str) -> serde_json::Value {
    serde_json::from_slice(&get(&format!("{admin}/status"), &[]).body).unwrap_or_default()
}

/// The keys an upgradable gateway needs.
const UPGRADABLE: &str = "pid_file: gateway.pid\nupgrade_sock: upgrade.sock\n";

/// Starts a new process with `--upgrade` and waits for the old one to exit by itself; the new
/// one becomes `gw`'s process.
fn upgrade(gw: &mut Gateway) {
    let (old, admin) = (&gw.proc, gw.admin.as_str());
    let new = gw.spawn_upgrade();
    eventually(Duration::from_secs(30), "the old gateway to hand over, drain and exit", || old.exited().is_some());
    assert!(old.exited().is_some_and(|s| s.success()), "the old gateway exits cleanly: {:?}", old.exited());
    eventually(Duration::from_secs(10), "the new gateway to answer /status", || status_of(admin)["pid"] == new.pid());
    gw.proc = new;
}

#[test]
fn three_upgrades_under_a_request_stream_fail_no_request_even_with_the_control_plane_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let src = Source::start(Answer::Bundle(bundle_tarball(&up.addr.to_string(), "r1", &[])));
    let mut gw = gateway_config(dir.path())
        .top(UPGRADABLE)
        .bundle_sources(&[src.url()])
        .bundle_keys("  cache_dir: cache\n  min_delay: 200ms\n  max_delay: 400ms\n  long_poll: 0s\n  timeout: 2s\n")
        .spawn();
    let (base, admin) = (gw.base.clone(), gw.admin.clone());
    eventually(Duration::from_secs(30), "the first gateway to serve r1", || {
        status_of(&admin)["bundle"]["revision"] == "r1"
    });
    let stream = Stream::start(&base);
    std::thread::sleep(Duration::from_millis(300));
    let mut src = Some(src);
    for round in 0..3 {
        if round == 1 {
            // The control plane goes away: the new process must boot from its cache.
            drop(src.take());
        }
        upgrade(&mut gw);
        let st = status_of(&admin);
        assert_eq!(st["bundle"]["revision"], "r1", "round {round}: {st}");
        assert_eq!(st["phase"], "running", "round {round}: {st}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (sent, wrong) = stream.finish();
    assert!(sent > 100, "the stream ran ({sent} requests)");
    assert!(wrong.is_empty(), "{} of {sent} requests failed or got a wrong answer: {:?}", wrong.len(), wrong);
}

#[test]
fn an_upgrade_with_nothing_to_serve_never_touches_the_running_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = echo_upstream("backend");
    let bundle = example_bundle(dir.path(), &up.addr.to_string(), "", "", &[]);
    let keys = UPGRADABLE;
    let gw = gateway_config(dir.path()).top(keys).bundle_file(&bundle).spawn();
    let (listen, admin_port) = (port_of(&gw.base), port_of(&gw.admin));
    let admin = gw.admin.clone();
    let old = gw.proc;
    eventually(Duration::from_secs(30), "the gateway to be ready", || {
        get(&format!("{admin}/readyz"), &[]).status == 200
    });
    // A new process whose bundle cannot be had (no cache, a source that is down).
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin_port}\n{keys}bundle:\n  name: main\n  sources: [\"http://127.0.0.1:9\"]\n"),
    )
    .expect("config");
    let out =
        Command::new(env!("CARGO_BIN_EXE_gateway")).args(["--upgrade", "--config"]).arg(&bad).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to take over"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(old.exited().is_none(), "the running gateway was not asked to leave");
    assert_eq!(get(&format!("http://127.0.0.1:{listen}/public/x"), &[]).status, 200);
    assert_eq!(status_of(&admin)["pid"], old.pid());
}
