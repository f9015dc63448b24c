//! What every test harness of the workspace shares, so that no harness carries its own copy:
//!
//! * [`paths`]: the repository root and the workspace's built binaries;
//! * [`process`]: child processes stopped on drop, started and waited for by their
//!   `listening on ADDR` line, started again the same way ([`process::Launch`]), and free ports;
//! * [`http`]: a blocking HTTP client that returns status, headers and body, never an error;
//! * [`metrics`]: Prometheus text read with a parser, not by string prefixes;
//! * [`wait`]: `eventually`, the one way a test waits for something to become true;
//! * [`tokens`] and [`bundles`]: demo JWTs and the example bundle, edited per test;
//! * [`archives`]: hostile tarballs written by hand (raw names, links);
//! * [`browser`]: a real headless Chromium over WebDriver (the console's browser tests);
//! * [`certs`]: a throwaway CA and the server and client certificates it signs;
//! * [`gateway`]: a real `gateway`: its config, the process, readiness, restart and upgrade;
//! * [`control_api`]: a real `control-api`: its config with hashed tokens ([`control_api::hash_token`]),
//!   the process, restart; in one call on an in-memory store with the tokens a test names;
//! * [`grpc`]: a Python gRPC upstream and a one-call gRPC client, on raw bytes;
//! * [`serve`]: a fixture server's runtime and announced listener;
//! * [`server`]: what the gateway and control-api harnesses share: a config file and a launch;
//! * [`source`]: a scriptable bundle source (ETags, long polls, faults), in-process or as the
//!   `hostile-source` binary;
//! * [`redis`]: a real Redis on a loopback port, killed and restarted at will;
//! * [`ws`]: a blocking WebSocket client: one message out, its echo back, or the refusal.
//!
//! The crate also builds the fixture servers (`echo-upstream`, `hostile-source`),
//! `demo-token` and `demo-certs` (behind `scripts/make-certs`), which the tests, the load
//! tests and the scripts start as processes; `grpc/` holds the Python gRPC fixture.

pub mod archives;
pub mod browser;
pub mod bundles;
pub mod certs;
pub mod control_api;
pub mod decision_logs;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod paths;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod relay;
pub mod serve;
pub mod server;
pub mod source;
pub mod tokens;
pub mod wait;
pub mod ws;

/// Config text: `yaml` with a final newline (none added to an empty one).
fn yaml_lines(yaml: &str) -> String {
    if yaml.is_empty() || yaml.ends_with('\n') {
        yaml.to_owned()
    } else {
        format!("{yaml}\n")
    }
}
