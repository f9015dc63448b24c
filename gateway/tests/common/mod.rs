//! Test harness: real processes over loopback. An `echo-upstream` (loadtest/fixtures) stands in
//! for the upstream, the real `gateway` binary runs on a bundle written to a temp directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod source;

pub const ISSUER: &str = "https://id.example.test";
pub const AUDIENCE: &str = "orders-api";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A binary of another workspace crate, built by `cargo build --workspace --bins`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let gw = PathBuf::from(env!("CARGO_BIN_EXE_gateway"));
    let p = gw.with_file_name(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", p.display());
    p
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub proc: Proc,
}

/// Starts an echo upstream on an ephemeral port.
pub fn echo_upstream(name: &str) -> Upstream {
    let mut child = Command::new(workspace_bin("echo-upstream"))
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn echo-upstream");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read listening line");
    let addr = line.trim().strip_prefix("listening on ").expect("listening line").parse().expect("addr");
    Upstream { addr, proc: Proc(child) }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy");
        }
    }
}

/// The example bundle copied into `dir/bundle`, its upstream pointed at `upstream`, plus extra
/// routes (YAML list items), upstreams (YAML map entries) and modules.
pub fn example_bundle(
    dir: &Path,
    upstream: &str,
    extra_upstreams: &str,
    extra_routes: &str,
    modules: &[(&str, &str)],
) -> PathBuf {
    let b = dir.join("bundle");
    copy_dir(&repo_root().join("policy-bundles/examples/api-gateway"), &b);
    let settings = b.join("gateway/data.yaml");
    let mut text = std::fs::read_to_string(&settings).expect("settings");
    text = text.replace("127.0.0.1:9100", upstream);
    text = text.replace("interval: 2s", "interval: 200ms");
    if !extra_upstreams.is_empty() {
        text = text.replace("\nroutes:", &format!("{extra_upstreams}\nroutes:"));
    }
    if !extra_routes.is_empty() {
        // Extra routes go first so that they win over the example's own.
        text = text.replace(
            "routes:                       # matched in order; the first match wins\n",
            &format!("routes:\n{extra_routes}"),
        );
    }
    std::fs::write(&settings, text).expect("write settings");
    for (path, src) in modules {
        let p = b.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, src).expect("write module");
    }
    b
}

pub struct Gateway {
    pub proc: Proc,
    pub base: String,
    pub admin: String,
    pub config: PathBuf,
}

pub fn write_config(dir: &Path, bundle: &Path, listen: u16, admin: u16) -> PathBuf {
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nthreads: 2\nbundle:\n  name: main\n  file: {}\n",
            bundle.display()
        ),
    )
    .expect("write config");
    config
}

/// Starts the gateway on `bundle` and waits until `/readyz` answers 200.
pub fn start_gateway(dir: &Path, bundle: &Path) -> Gateway {
    let (listen, admin) = (free_port(), free_port());
    let config = write_config(dir, bundle, listen, admin);
    let gw = spawn_gateway(&config, listen, admin);
    wait_ready(&gw);
    gw
}

/// Starts the gateway with a polling config (`bundle_keys` are extra lines under `bundle:`,
/// indented by two spaces); does not wait for readiness.
pub fn start_polling_gateway(dir: &Path, sources: &[String], bundle_keys: &str) -> Gateway {
    let (listen, admin) = (free_port(), free_port());
    let config = dir.join("gateway.yaml");
    let list = sources.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nthreads: 2\nbundle:\n  name: main\n  sources: [{list}]\n{bundle_keys}"
        ),
    )
    .expect("write config");
    spawn_gateway(&config, listen, admin)
}

/// Restarts a gateway process on the same config and ports.
pub fn restart(gw: &mut Gateway) {
    let (listen, admin) = (port_of(&gw.base), port_of(&gw.admin));
    let _ = gw.proc.0.kill();
    let _ = gw.proc.0.wait();
    let fresh = spawn_gateway(&gw.config, listen, admin);
    *gw = fresh;
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
}

pub fn spawn_gateway(config: &Path, listen: u16, admin: u16) -> Gateway {
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(config)
        .env("GATEWAY_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gateway");
    Gateway {
        proc: Proc(child),
        base: format!("http://127.0.0.1:{listen}"),
        admin: format!("http://127.0.0.1:{admin}"),
        config: config.to_path_buf(),
    }
}

/// Waits until `/readyz` answers 200 and the proxy port accepts connections.
pub fn wait_ready(gw: &Gateway) {
    let listen = port_of(&gw.base);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The proxy port is probed with a bare connect so that no request is counted.
        if get(&format!("{}/readyz", gw.admin), &[]).0 == 200
            && std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "gateway did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).redirects(0).build()
}

/// (status, headers as lower-case (name, value), body); status 0 when no answer.
pub type Resp = (u16, Vec<(String, String)>, String);

fn read(r: ureq::Response) -> Resp {
    let status = r.status();
    let headers = r
        .headers_names()
        .iter()
        .flat_map(|n| r.all(n).into_iter().map(move |v| (n.to_ascii_lowercase(), v.to_owned())))
        .collect::<Vec<_>>();
    let body = r.into_string().unwrap_or_default();
    (status, headers, body)
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) => read(r),
        Err(ureq::Error::Status(_, r)) => read(r),
        Err(_) => (0, Vec::new(), String::new()),
    }
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers)
}

pub fn header<'a>(resp: &'a Resp, name: &str) -> Option<&'a str> {
    resp.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn json(resp: &Resp) -> serde_json::Value {
    serde_json::from_str(&resp.2).unwrap_or_else(|e| panic!("not JSON ({e}): {}", resp.2))
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// Signs a token with one of the demo keys (`es256`, `rs256`, `ed25519`).
pub fn token_with(key: &str, claims: serde_json::Value) -> String {
    let pem = std::fs::read(repo_root().join(format!("test-support/keys/demo-{key}.pem"))).expect("demo key");
    let (alg, enc) = match key {
        "es256" => (jsonwebtoken::Algorithm::ES256, jsonwebtoken::EncodingKey::from_ec_pem(&pem)),
        "rs256" => (jsonwebtoken::Algorithm::RS256, jsonwebtoken::EncodingKey::from_rsa_pem(&pem)),
        _ => (jsonwebtoken::Algorithm::EdDSA, jsonwebtoken::EncodingKey::from_ed_pem(&pem)),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(format!("demo-{key}"));
    jsonwebtoken::encode(&header, &claims, &enc.expect("key")).expect("sign")
}

/// A valid token for `sub` with `roles`.
pub fn token(sub: &str, roles: &[&str]) -> String {
    token_with(
        "es256",
        serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles, "iat": now(), "exp": now() + 600}),
    )
}

/// Waits until `cond` holds, polling every 50 ms; panics with `what` after `limit`.
pub fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The example bundle as a tarball with `revision`, its upstream at `upstream`, plus modules.
pub fn bundle_tarball(upstream: &str, revision: &str, modules: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = example_bundle(dir.path(), upstream, "", "", modules);
    let mut files = policy_bundles::archive::read_dir(&b, &policy_bundles::Limits::default()).expect("read");
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[".manifest"]).expect("manifest");
    manifest["revision"] = serde_json::json!(revision);
    files.insert(".manifest".into(), serde_json::to_vec(&manifest).expect("json"));
    policy_bundles::archive::write_tar_gz(&files).expect("tar")
}

/// `/status` as JSON.
pub fn status(gw: &Gateway) -> serde_json::Value {
    json(&get(&format!("{}/status", gw.admin), &[]))
}

pub fn revision(gw: &Gateway) -> String {
    status(gw)["bundle"]["revision"].as_str().unwrap_or("").to_owned()
}

/// A metric's value once it reaches `want` (requests are counted just after their response is
/// written, so a test may look before the count lands), or its last value after 5 s.
pub fn metric_settled(admin: &str, series: &str, want: f64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(admin, series);
        if v.is_some_and(|v| v >= want) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of a metric line (exact label set as rendered), if present.
pub fn metric(admin: &str, series: &str) -> Option<f64> {
    let (_, _, body) = get(&format!("{admin}/metrics"), &[]);
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}
