//! Harness for cross-process scenarios: every component is its real binary (built by
//! `cargo build --workspace --bins`), talking over 127.0.0.1 on ephemeral ports.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub const PUBLISH_TOKEN: &str = "e2e-publisher-token";
pub const READ_TOKEN: &str = "e2e-reader-token";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A workspace binary next to the test executable (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", p.display());
    p
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build()
}

/// (status, body); status 0 when there was no HTTP answer.
pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Waits until `cond` holds; panics naming `what` after `limit`. Returns the time it took.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub proc: Proc,
}

pub fn echo_upstream(name: &str) -> Upstream {
    let mut child = Command::new(bin("echo-upstream"))
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn echo-upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
    let addr = line.trim().strip_prefix("listening on ").expect("listening line").parse().expect("addr");
    Upstream { addr, proc: Proc(child) }
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
        let port = free_port();
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
        let mut c =
            ControlApi { proc: Proc(spawn_control_api(&config)), url: format!("http://127.0.0.1:{port}"), config };
        c.wait_up();
        c
    }

    fn wait_up(&mut self) {
        let url = format!("{}/healthz", self.url);
        eventually(Duration::from_secs(30), "control-api up", || get(&url, &[]).0 == 200);
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the process again on the same config (same port and store).
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc = Proc(spawn_control_api(&self.config));
        self.wait_up();
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        metric(&format!("{}/metrics", self.url), series)
    }
}

fn spawn_control_api(config: &Path) -> Child {
    Command::new(bin("control-api"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn control-api")
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

/// The example bundle as a tarball, upstream pointed at `upstream`, with `revision`.
pub fn example_tarball(upstream: &str, revision: &str) -> Vec<u8> {
    let dir = repo_root().join("policy-bundles/examples/api-gateway");
    let mut files = policy_bundles::archive::read_dir(&dir, &policy_bundles::Limits::default()).expect("read example");
    let settings = String::from_utf8(files["gateway/data.yaml"].clone()).expect("utf8");
    let settings = settings.replace("127.0.0.1:9100", upstream).replace("interval: 2s", "interval: 500ms");
    files.insert("gateway/data.yaml".into(), settings.into_bytes());
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[".manifest"]).expect("manifest");
    manifest["revision"] = serde_json::json!(revision);
    files.insert(".manifest".into(), serde_json::to_vec(&manifest).expect("json"));
    policy_bundles::archive::write_tar_gz(&files).expect("tar")
}

pub struct Gateway {
    pub proc: Proc,
    pub base: String,
    pub admin: String,
    pub config: PathBuf,
}

impl Gateway {
    /// A gateway polling `sources` with the reader token, a cache in `dir`, and extra bundle keys.
    pub fn start(dir: &Path, instance: &str, sources: &[&str], extra: &str) -> Gateway {
        let (listen, admin) = (free_port(), free_port());
        let token = dir.join("reader.token");
        std::fs::write(&token, READ_TOKEN).expect("token");
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
        let gw = Gateway {
            proc: Proc(spawn_gateway(&config)),
            base: format!("http://127.0.0.1:{listen}"),
            admin: format!("http://127.0.0.1:{admin}"),
            config,
        };
        gw.wait_ready();
        gw
    }

    pub fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin);
        eventually(Duration::from_secs(30), "gateway ready", || get(&url, &[]).0 == 200);
    }

    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc = Proc(spawn_gateway(&self.config));
    }

    pub fn status(&self) -> serde_json::Value {
        json(&get(&format!("{}/status", self.admin), &[]).1)
    }

    pub fn revision(&self) -> String {
        self.status()["bundle"]["revision"].as_str().unwrap_or("").to_owned()
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        metric(&format!("{}/metrics", self.admin), series)
    }
}

fn spawn_gateway(config: &Path) -> Child {
    Command::new(bin("gateway"))
        .arg("--config")
        .arg(config)
        .env("GATEWAY_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gateway")
}

/// The value of a metric series as rendered (exact labels), if present.
pub fn metric(url: &str, series: &str) -> Option<f64> {
    let (_, body) = get(url, &[]);
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// A demo token for `sub` with `roles` (ES256 demo key).
pub fn token(sub: &str, roles: &[&str]) -> String {
    let pem = std::fs::read(repo_root().join("test-support/keys/demo-es256.pem")).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("demo-es256".into());
    let claims = serde_json::json!({"iss": "https://id.example.test", "aud": "orders-api", "sub": sub, "roles": roles, "exp": now() + 3600});
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("key")).expect("sign")
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

impl Traffic {
    pub fn start(bases: &[String], interval: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let auth = format!("Bearer {}", token("alice", &["reader"]));
        let handles = bases
            .iter()
            .map(|base| {
                let (stop, tally, sent, base, auth) =
                    (stop.clone(), tally.clone(), sent.clone(), base.clone(), auth.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
                    let deadline = Instant::now() + Duration::from_secs(300);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let start = Instant::now();
                        let (what, result) = match i % 3 {
                            0 => ("public", agent.get(&format!("{base}/public/x")).call()),
                            1 => (
                                "orders GET",
                                agent.get(&format!("{base}/orders/1")).set("authorization", &auth).call(),
                            ),
                            _ => (
                                "orders POST",
                                agent.post(&format!("{base}/orders")).set("authorization", &auth).call(),
                            ),
                        };
                        let elapsed = start.elapsed().as_micros() as u64;
                        let verdict = match (i % 3, result) {
                            (0, Ok(r)) => (r.status() == 200).then_some(()).ok_or(format!("{what}: {}", r.status())),
                            (1, Ok(r)) => {
                                let body = r.into_string().unwrap_or_default();
                                if body.contains("\"x-user-id\":\"alice\"") {
                                    Ok(())
                                } else {
                                    Err(format!("{what}: wrong answer {body}"))
                                }
                            }
                            (2, Err(ureq::Error::Status(403, r))) => {
                                let body = r.into_string().unwrap_or_default();
                                if body.contains("alice may not post orders") {
                                    Ok(())
                                } else {
                                    Err(format!("{what}: wrong answer {body}"))
                                }
                            }
                            (_, Ok(r)) => Err(format!("{what}: wrong status {}", r.status())),
                            (_, Err(e)) => Err(format!("{what}: {e}")),
                        };
                        let mut t = tally.lock().expect("tally");
                        t.sent += 1;
                        t.latencies_us.push(elapsed);
                        if let Err(msg) = verdict {
                            if msg.contains("wrong answer") {
                                t.wrong += 1;
                            } else {
                                t.failed += 1;
                            }
                            t.first_failure.get_or_insert(msg);
                        }
                        drop(t);
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
