//! The gRPC fixture, for tests of the gateway's gRPC proxying: a Python `grpcio` upstream
//! (`test-support/grpc/server.py`, one unary method `/demo.Echo/Say` that answers `echo:<request>`)
//! and a one-call client (`call.py`) whose outcome is one JSON line. Both use raw bytes, so no
//! protobuf tooling is needed; `scripts/py-deps` installs `grpcio`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::process::Proc;

/// Options of one [`call`].
#[derive(Debug, Clone, Default)]
pub struct CallOpts {
    /// Call over TLS trusting this CA certificate (PEM); plaintext h2c when `None`.
    pub ca: Option<PathBuf>,
    /// The server name expected in the certificate and sent as `:authority`.
    pub authority: Option<String>,
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// A python3 that can `import grpc` (its `sys.executable`), or `None` when there is none:
/// run `scripts/py-deps`. Looked up once per process.
pub fn python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("python3").args(["-c", "import sys, grpc; print(sys.executable)"]).output().ok()?;
            let exe = String::from_utf8(out.stdout).ok()?;
            (out.status.success() && !exe.trim().is_empty()).then(|| PathBuf::from(exe.trim()))
        })
        .clone()
}

/// The folder of `server.py` and `call.py`.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grpc")
}

/// Starts `server.py` on an ephemeral loopback port (plaintext h2c) and waits for its
/// `listening on ADDR` line. Panics when there is no [`python`].
pub fn server() -> (Proc, SocketAddr) {
    spawn_server(&[])
}

/// [`server`] serving TLS with `cert` and `key` (PEM).
pub fn server_tls(cert: &Path, key: &Path) -> (Proc, SocketAddr) {
    spawn_server(&["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()])
}

fn spawn_server(extra: &[&std::ffi::OsStr]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(need_python());
    cmd.arg(scripts_dir().join("server.py")).args(["--listen", "127.0.0.1:0"]).args(extra);
    Proc::spawn_listening(&mut cmd)
}

/// Makes one unary call of `method` with `message` (UTF-8 bytes) to `target` (`HOST:PORT`)
/// and returns `call.py`'s outcome: `{"code": "OK"|"PERMISSION_DENIED"|.., "code_number": N,
/// "details": "..", "reply": ".."|null, "trailers": {..}}`. Any gRPC status is an outcome;
/// panics only when `call.py` cannot run or rejects its arguments.
pub fn call(target: &str, method: &str, message: &str, opts: &CallOpts) -> serde_json::Value {
    let mut cmd = Command::new(need_python());
    cmd.arg(scripts_dir().join("call.py")).args(["--target", target, "--method", method, "--message", message]);
    if let Some(ca) = &opts.ca {
        cmd.arg("--ca").arg(ca);
    }
    if let Some(authority) = &opts.authority {
        cmd.args(["--authority", authority]);
    }
    if let Some(token) = &opts.token {
        cmd.args(["--token", token]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("running call.py: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "call.py failed ({}): {}{stdout}", out.status, String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("call.py printed no JSON line ({e}): {stdout}"))
}

fn need_python() -> PathBuf {
    python().unwrap_or_else(|| panic!("no python3 that can `import grpc`: run scripts/py-deps"))
}
