//! Harness for cross-process scenarios: every component is its real binary (built by
//! `cargo build --workspace --bins`), talking over 127.0.0.1 on ephemeral ports.
//!
//! What every harness shares (processes, ports, the HTTP client, metrics, `eventually`, demo
//! tokens and bundles) comes from `test-support`; this crate adds what only cross-process
//! scenarios need: the control plane and gateway fleets as processes, publishing with the real
//! `bundlectl`, and a checked stream of traffic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use test_support::http::{bearer, get};
use test_support::paths::bin;
use test_support::process::{free_port_outside_ephemeral, Proc};
use test_support::wait::eventually;

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

pub struct ControlApi {
    pub proc: Proc,
    pub url: String,
    pub config: PathBuf,
}

impl ControlApi {
    /// Starts control-api on `store` (default: a SQLite file in `dir`).
    pub fn start(dir: &Path, store: Option<&str>) -> ControlApi {
        ControlApi::start_with(dir, store, "")
    }

    /// Starts control-api on `store` with `extra` top-level config keys.
    pub fn start_with(dir: &Path, store: Option<&str>, extra: &str) -> ControlApi {
        let port = free_port_outside_ephemeral();
        let config = dir.join(format!("control-api-{port}.yaml"));
        let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
        let store =
            store.map(str::to_owned).unwrap_or_else(|| format!("sqlite://{}", dir.join("control.db").display()));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nstore: {store}\nmax_bundle_size: 8MiB\n{extra}\ntokens:\n  - {{ name: ci, scope: publish, sha256: {} }}\n  - {{ name: gateways, scope: read, sha256: {} }}\n",
                hash(PUBLISH_TOKEN),
                hash(READ_TOKEN)
            ),
        )
        .expect("write config");
        let c = ControlApi { proc: spawn_control_api(&config), url: format!("http://127.0.0.1:{port}"), config };
        c.wait_up();
        c
    }

    fn wait_up(&self) {
        let url = format!("{}/healthz", self.url);
        eventually(Duration::from_secs(30), "control-api up", || get(&url, &[]).status == 200);
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the process again on the same config (same port and store).
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc = spawn_control_api(&self.config);
        self.wait_up();
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        test_support::metrics::metric(&format!("{}/metrics", self.url), series)
    }
}

/// Starts control-api and waits for its `listening on` line.
fn spawn_control_api(config: &Path) -> Proc {
    let mut cmd = Command::new(bin("control-api"));
    cmd.arg("--config").arg(config).env("RUST_LOG", "error").stderr(Stdio::null());
    Proc::spawn_listening(&mut cmd).0
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

pub struct Gateway {
    pub proc: Proc,
    pub base: String,
    pub admin: String,
    pub config: PathBuf,
}

impl Gateway {
    /// A gateway polling `sources` with the reader token, a cache in `dir`, and extra bundle
    /// keys; returns once it is ready.
    pub fn start(dir: &Path, instance: &str, sources: &[&str], extra: &str) -> Gateway {
        let mut gw = Gateway::spawn(dir, instance, sources, extra);
        gw.wait_ready();
        gw
    }

    /// Gateways named `instances`, started together (their start-ups overlap) and all ready.
    pub fn fleet(dir: &Path, instances: &[&str], sources: &[&str], extra: &str) -> Vec<Gateway> {
        let mut gws: Vec<Gateway> = instances.iter().map(|i| Gateway::spawn(dir, i, sources, extra)).collect();
        for gw in &mut gws {
            gw.wait_ready();
        }
        gws
    }

    /// Writes the gateway's config and starts it, without waiting for it to be ready.
    pub fn spawn(dir: &Path, instance: &str, sources: &[&str], extra: &str) -> Gateway {
        let (listen, admin) = (free_port_outside_ephemeral(), free_port_outside_ephemeral());
        let token = dir.join("reader.token");
        // Written once: a gateway of the same folder may be reading it right now.
        if std::fs::read_to_string(&token).ok().as_deref() != Some(READ_TOKEN) {
            std::fs::write(&token, READ_TOKEN).expect("token");
        }
        let config = dir.join(format!("gateway-{instance}.yaml"));
        let list = sources.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nthreads: 2\ninstance: {instance}\nbundle:\n  name: main\n  sources: [{list}]\n  token_file: {}\n  cache_dir: {}\n{extra}",
                token.display(),
                dir.join(format!("cache-{instance}")).display()
            ),
        )
        .expect("write config");
        Gateway {
            proc: spawn_gateway(&config),
            base: format!("http://127.0.0.1:{listen}"),
            admin: format!("http://127.0.0.1:{admin}"),
            config,
        }
    }

    /// Waits for `/readyz` 200; panics at once, with its exit status, if the gateway exits.
    pub fn wait_ready(&mut self) {
        let config = self.config.display().to_string();
        eventually(Duration::from_secs(30), "gateway ready", || {
            if let Some(status) = self.proc.exited() {
                panic!("the gateway of {config} exited before it was ready: {status}");
            }
            self.ready()
        });
    }

    /// `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        get(&format!("{}/readyz", self.admin), &[]).status == 200
    }

    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc = spawn_gateway(&self.config);
    }

    pub fn status(&self) -> serde_json::Value {
        get(&format!("{}/status", self.admin), &[]).json()
    }

    pub fn revision(&self) -> String {
        self.status()["bundle"]["revision"].as_str().unwrap_or("").to_owned()
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        test_support::metrics::metric(&format!("{}/metrics", self.admin), series)
    }
}

fn spawn_gateway(config: &Path) -> Proc {
    Proc::spawn(
        Command::new(bin("gateway"))
            .arg("--config")
            .arg(config)
            .env("GATEWAY_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
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
