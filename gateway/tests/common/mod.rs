//! Harness for the gateway's integration tests: the real `gateway` binary on a bundle written to
//! a temp directory, with an `echo-upstream` (test-support) as its upstream. Everything generic
//! (processes, ports, HTTP, metrics, waiting, tokens, bundles) is `test_support`'s.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use test_support::bundles::{example_folder as example_bundle, tarball as bundle_tarball};
pub use test_support::http::{get, request, Resp};
pub use test_support::paths::{bin as workspace_bin, copy_dir, repo_root};
pub use test_support::process::{free_port, port_of, Proc};
pub use test_support::tokens::{now, token, token_with, AUDIENCE, ISSUER};
pub use test_support::wait::eventually;

pub struct Upstream {
    pub addr: std::net::SocketAddr,
    pub proc: Proc,
}

/// Starts an echo upstream on an ephemeral port.
pub fn echo_upstream(name: &str) -> Upstream {
    let (proc, addr) = Proc::spawn_listening(Command::new(workspace_bin("echo-upstream")).args([
        "--listen",
        "127.0.0.1:0",
        "--name",
        name,
    ]));
    Upstream { addr, proc }
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

/// Starts a gateway on the bundle folder or file `bundle` with `extra` config lines (top-level
/// keys, each ending in a newline) and waits until it is ready.
pub fn start_gateway_with(dir: &Path, bundle: &Path, extra: &str) -> Gateway {
    let (listen, admin) = (free_port(), free_port());
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nthreads: 2\n{extra}bundle:\n  name: main\n  file: {}\n",
            bundle.display()
        ),
    )
    .expect("write config");
    let gw = spawn_gateway(&config, listen, admin);
    wait_ready(&gw);
    gw
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
    gw.proc.kill9();
    let fresh = spawn_gateway(&gw.config, listen, admin);
    *gw = fresh;
}

pub fn spawn_gateway(config: &Path, listen: u16, admin: u16) -> Gateway {
    let proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--config")
            .arg(config)
            // TEST_GATEWAY_LOG=debug shows a test's gateway at work.
            .env("GATEWAY_LOG", std::env::var("TEST_GATEWAY_LOG").unwrap_or_else(|_| "error".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    Gateway {
        proc,
        base: format!("http://127.0.0.1:{listen}"),
        admin: format!("http://127.0.0.1:{admin}"),
        config: config.to_path_buf(),
    }
}

/// Waits until `/readyz` answers 200 and the proxy port accepts connections.
pub fn wait_ready(gw: &Gateway) {
    let listen = port_of(&gw.base);
    // The proxy port is probed with a bare connect so that no request is counted.
    eventually(Duration::from_secs(30), "the gateway to become ready", || {
        get(&format!("{}/readyz", gw.admin), &[]).status == 200
            && std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
    });
}

/// `/status` as JSON.
pub fn status(gw: &Gateway) -> serde_json::Value {
    get(&format!("{}/status", gw.admin), &[]).json()
}

pub fn revision(gw: &Gateway) -> String {
    status(gw)["bundle"]["revision"].as_str().unwrap_or("").to_owned()
}

/// A metric's value once it reaches `want` (requests are counted just after their response is
/// written, so a test may look before the count lands), or its last value after 5 s.
pub fn metric_settled(admin: &str, series: &str, want: f64) -> Option<f64> {
    test_support::wait::settle(Duration::from_secs(5), || metric(admin, series), |v| v.is_some_and(|v| v >= want))
}

/// The value of a series (`name{label="value",...}`) on the gateway's `/metrics`, if present.
pub fn metric(admin: &str, series: &str) -> Option<f64> {
    test_support::metrics::metric(&format!("{admin}/metrics"), series)
}
