//! Harness for the gateway's integration tests: the real `gateway` binary (this crate's build) on
//! a bundle written to a temp directory, with an `echo-upstream` (test-support) as its upstream.
//! The gateway harness itself (config, process, readiness, restart) and everything generic
//! (processes, ports, HTTP, metrics, waiting, tokens, bundles) are `test_support`'s; what is here
//! are this suite's shorthands for it.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use test_support::bundles::{example_folder as example_bundle, tarball as bundle_tarball};
pub use test_support::gateway::{Gateway, GatewayConfig};
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

/// A gateway config in `dir` (`gateway.yaml`) for this crate's own build of the binary.
pub fn gateway_config(dir: &Path) -> GatewayConfig {
    GatewayConfig::new(dir.join("gateway.yaml")).launch(|l| l.bin(env!("CARGO_BIN_EXE_gateway")))
}

/// Writes `gateway.yaml` in `dir` on the bundle folder or file `bundle` (ports free now).
pub fn write_config(dir: &Path, bundle: &Path) -> PathBuf {
    gateway_config(dir).bundle_file(bundle).write()
}

/// Starts a gateway on the bundle folder or file `bundle` with `extra` config lines (top-level
/// keys, each ending in a newline) and waits until it is ready.
pub fn start_gateway_with(dir: &Path, bundle: &Path, extra: &str) -> Gateway {
    gateway_config(dir).top(extra).bundle_file(bundle).start()
}

/// Starts the gateway on `bundle` and waits until `/readyz` answers 200.
pub fn start_gateway(dir: &Path, bundle: &Path) -> Gateway {
    start_gateway_with(dir, bundle, "")
}

/// Starts the gateway with a polling config (`bundle_keys` are extra lines under `bundle:`,
/// indented by two spaces); does not wait for readiness.
pub fn start_polling_gateway(dir: &Path, sources: &[String], bundle_keys: &str) -> Gateway {
    gateway_config(dir).bundle_sources(sources).bundle_keys(bundle_keys).spawn()
}

/// `/status` as JSON.
pub fn status(gw: &Gateway) -> serde_json::Value {
    gw.status()
}

pub fn revision(gw: &Gateway) -> String {
    gw.revision()
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
