//! Harness for cross-process scenarios: every component is its real binary (built by
//! `cargo build --workspace --bins`), talking over 127.0.0.1 on ephemeral ports.
//!
//! What every harness shares (the gateway and control-api harnesses, processes, ports, the HTTP
//! client, metrics, `eventually`, demo tokens and bundles) comes from `test-support`; this crate
//! adds what only cross-process scenarios need: the control plane and gateway fleets configured
//! alike (the e2e tokens, ports outside the ephemeral range, instance names, caches),
//! publishing with the real `bundlectl`, and a checked stream of traffic.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use test_support::control_api::ControlApi;
use test_support::control_api::ControlApiConfig;
pub use test_support::gateway::Gateway;
use test_support::gateway::GatewayConfig;
use test_support::http::{bearer, get};
use test_support::paths::bin;
use test_support::process::{free_port_outside_ephemeral, Output, Proc};

pub const PUBLISH_TOKEN: &str = "e2e-publisher-token";
pub const READ_TOKEN: &str = "e2e-reader-token";

/// An `echo-upstream` process answering as `name`.
pub fn echo_upstream(name: &str) -> (Proc, SocketAddr) {
    Proc::spawn_listening(
        Command::new(bin("echo-upstream")).args(["--listen", "127.0.0.1:0", "--name", name]).stderr(Stdio::null()),
    )
}

/// `GET url` with the reader token.
pub fn get_as_reader(url: &str) -> test_support::http::Resp {
    get(url, &[("authorization", &bearer(READ_TOKEN))])
}

/// control-api on `store` (default: a SQLite file in `dir`) with the e2e tokens, on a port
/// outside the ephemeral range so that a restart finds it again; returns once it answers.
pub fn start_control_api(dir: &Path, store: Option<&str>) -> ControlApi {
    start_control_api_with(dir, store, "")
}

/// [`start_control_api`] with `extra` top-level config keys.
pub fn start_control_api_with(dir: &Path, store: Option<&str>, extra: &str) -> ControlApi {
    start_control_api_with_tokens(dir, store, extra, "")
}

/// [`start_control_api_with`] and more token entries (`tokens` YAML list items).
pub fn start_control_api_with_tokens(dir: &Path, store: Option<&str>, extra: &str, tokens: &str) -> ControlApi {
    let port = free_port_outside_ephemeral();
    let store = store.map(str::to_owned).unwrap_or_else(|| format!("sqlite://{}", dir.join("control.db").display()));
    let cp = ControlApiConfig::new(dir)
        .file_name(&format!("control-api-{port}.yaml"))
        .listen(&format!("127.0.0.1:{port}"))
        .store(&store)
        .top("max_bundle_size: 8MiB\n")
        .top(extra)
        .token("ci", "publish", PUBLISH_TOKEN)
        .token("gateways", "read", READ_TOKEN)
        .tokens_yaml(tokens)
        .log("error")
        .launch(|l| l.stderr(Output::Null))
        .start();
    cp.wait_healthy();
    cp
}

/// Publishes a tarball with the real `bundlectl push`; returns its output or panics.
pub fn push(server: &str, tarball: &[u8], dir: &Path) -> String {
    let f = dir.join(format!("push-{}.tar.gz", policy_bundles::digest(tarball)));
    std::fs::write(&f, tarball).expect("write tarball");
    let out = Command::new(bin("bundlectl"))
        .arg("push")
        .arg(&f)
        .args(["--server", server, "--name", "main"])
        .env("BUNDLECTL_TOKEN", PUBLISH_TOKEN)
        .output()
        .expect("run bundlectl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bundlectl push failed: {text}");
    text
}

/// The example bundle as a tarball, upstream pointed at `upstream` (health checks every
/// 500 ms), with `revision`.
pub fn example_tarball(upstream: &str, revision: &str) -> Vec<u8> {
    test_support::bundles::tarball_with(revision, |files| test_support::bundles::retarget(files, upstream, "500ms"))
}

/// A gateway named `instance` polling `sources` with the reader token, a cache in `dir`, and
/// `extra` lines under `bundle:`; returns once it is ready.
pub fn start_gateway(dir: &Path, instance: &str, sources: &[&str], extra: &str) -> Gateway {
    let gw = spawn_gateway(dir, instance, sources, extra);
    gw.wait_ready();
    gw
}

/// Gateways named `instances`, started together (their start-ups overlap) and all ready.
pub fn gateway_fleet(dir: &Path, instances: &[&str], sources: &[&str], extra: &str) -> Vec<Gateway> {
    let gws: Vec<Gateway> = instances.iter().map(|i| spawn_gateway(dir, i, sources, extra)).collect();
    for gw in &gws {
        gw.wait_ready();
    }
    gws
}

/// [`start_gateway`] without waiting for it to be ready.
pub fn spawn_gateway(dir: &Path, instance: &str, sources: &[&str], extra: &str) -> Gateway {
    gateway_config(dir, instance, sources, extra).spawn()
}

/// The config of [`spawn_gateway`], for a caller to add to (`top` keys) before spawning.
pub fn gateway_config(dir: &Path, instance: &str, sources: &[&str], extra: &str) -> GatewayConfig {
    gateway_config_with_token(dir, instance, sources, extra, READ_TOKEN)
}

/// [`gateway_config`] with the reader token `token` (one bound to the instance, say), in a file
/// of the instance's own.
pub fn gateway_config_with_token(
    dir: &Path,
    instance: &str,
    sources: &[&str],
    extra: &str,
    token: &str,
) -> GatewayConfig {
    let token_file = if token == READ_TOKEN { dir.join("reader.token") } else { dir.join(format!("{instance}.token")) };
    // Written once: a gateway of the same folder may be reading it right now.
    if std::fs::read_to_string(&token_file).ok().as_deref() != Some(token) {
        std::fs::write(&token_file, token).expect("token");
    }
    let cache = dir.join(format!("cache-{instance}"));
    GatewayConfig::new(dir.join(format!("gateway-{instance}.yaml")))
        .ports_outside_ephemeral()
        .top(&format!("instance: {instance}\n"))
        .bundle_sources(sources)
        .bundle_keys(&format!("  token_file: {}\n  cache_dir: {}\n", token_file.display(), cache.display()))
        .bundle_keys(extra)
        .log("error")
        .launch(|l| l.stderr(Output::Null))
}

/// The reader token bound to gateway `instance` (see [`bound_tokens_yaml`]).
pub fn bound_token(instance: &str) -> String {
    format!("e2e-reader-token-of-{instance}")
}

/// control-api token entries binding a reader token to each of `instances`: with staged
/// rollouts only such a token may send status reports.
pub fn bound_tokens_yaml(instances: &[&str]) -> String {
    instances
        .iter()
        .map(|i| {
            let hash = test_support::control_api::hash_token(&bound_token(i));
            format!("  - {{ name: {i}, scope: read, sha256: {hash}, instance: {i} }}\n")
        })
        .collect()
}

/// What a steady stream of requests saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub sent: u64,
    pub failed: u64,
    pub wrong: u64,
    pub latencies_us: Vec<u64>,
    pub first_failure: Option<String>,
}

impl Tally {
    pub fn p99_us(&self) -> u64 {
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        v.get(v.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0)
    }

    /// Adds what another stream saw (its first failure only if this one had none).
    pub fn add(&mut self, t: &Tally) {
        self.sent += t.sent;
        self.failed += t.failed;
        self.wrong += t.wrong;
        self.latencies_us.extend_from_slice(&t.latencies_us);
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&t.first_failure);
        }
    }

    /// Counts one answer, `Err` naming what was wrong with it.
    fn record(&mut self, elapsed_us: u64, verdict: Result<(), String>) {
        self.sent += 1;
        self.latencies_us.push(elapsed_us);
        if let Err(msg) = verdict {
            if msg.contains("wrong answer") {
                self.wrong += 1;
            } else {
                self.failed += 1;
            }
            self.first_failure.get_or_insert(msg);
        }
    }
}

/// A bounded, steady stream of requests through gateways while a scenario runs: alternates a
/// public GET (must be 200 from the upstream), an orders GET by a reader (200 with the
/// identity header) and an orders POST by the reader (403 with its reason).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    handles: Vec<std::thread::JoinHandle<()>>,
    pub sent: Arc<AtomicU64>,
}

/// One checked request of the stream's cycle (`i % 3`): public GET, orders GET, orders POST.
fn checked_request(agent: &ureq::Agent, base: &str, auth: &str, i: u64) -> Result<(), String> {
    let (what, result) = match i % 3 {
        0 => ("public", agent.get(&format!("{base}/public/x")).call()),
        1 => ("orders GET", agent.get(&format!("{base}/orders/1")).set("authorization", auth).call()),
        _ => ("orders POST", agent.post(&format!("{base}/orders")).set("authorization", auth).call()),
    };
    let expect = |body: String, needle: &str| {
        if body.contains(needle) {
            Ok(())
        } else {
            Err(format!("{what}: wrong answer {body}"))
        }
    };
    match (i % 3, result) {
        (0, Ok(r)) => (r.status() == 200).then_some(()).ok_or(format!("{what}: {}", r.status())),
        (1, Ok(r)) => expect(r.into_string().unwrap_or_default(), "\"x-user-id\":\"alice\""),
        (2, Err(ureq::Error::Status(403, r))) => {
            expect(r.into_string().unwrap_or_default(), "alice may not post orders")
        }
        (_, Ok(r)) => Err(format!("{what}: wrong status {}", r.status())),
        (_, Err(e)) => Err(format!("{what}: {e}")),
    }
}

impl Traffic {
    pub fn start(bases: &[String], interval: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let auth = bearer(&test_support::tokens::token("alice", &["reader"]));
        let handles = bases
            .iter()
            .map(|base| {
                let (stop, tally, sent, base, auth) =
                    (stop.clone(), tally.clone(), sent.clone(), base.clone(), auth.clone());
                std::thread::spawn(move || {
                    // One keep-alive connection per stream, as a busy client would hold.
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                    let deadline = Instant::now() + Duration::from_secs(300);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let start = Instant::now();
                        let verdict = checked_request(&agent, &base, &auth, i);
                        let elapsed = start.elapsed().as_micros() as u64;
                        tally.lock().expect("tally").record(elapsed, verdict);
                        sent.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        std::thread::sleep(interval);
                    }
                })
            })
            .collect();
        Traffic { stop, tally, handles, sent }
    }

    pub fn snapshot(&self) -> Tally {
        self.tally.lock().expect("tally").clone()
    }

    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.snapshot()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
