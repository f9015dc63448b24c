//! A real `control-api` for tests (its binary, built by `cargo build --workspace --bins`): an
//! in-memory SQLite store, the tokens a test names, on an ephemeral port or one the test chose
//! (a sink that goes away and comes back on the same address).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::process::Proc;

/// A token a test's control-api knows: name, scope (`publish`, `read`, `logs`) and secret.
pub type Token<'a> = (&'a str, &'a str, &'a str);

/// A running control-api and its base URL.
pub struct ControlApi {
    pub proc: Proc,
    pub base: String,
}

/// The hash control-api expects for `token`, from `control-api hash-token` itself.
pub fn hash(token: &str) -> String {
    let mut child = Command::new(crate::paths::bin("control-api"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run control-api hash-token");
    child.stdin.take().expect("stdin").write_all(token.as_bytes()).expect("write the token");
    let out = child.wait_with_output().expect("hash-token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("hex").trim().to_owned()
}

/// Writes `dir/control-api.yaml` listening on `listen` (`127.0.0.1:0` for any port).
fn write_config(dir: &Path, listen: &str, tokens: &[Token]) -> std::path::PathBuf {
    let mut text = format!("listen: {listen}\nstore: \"sqlite::memory:\"\ntokens:\n");
    for (name, scope, secret) in tokens {
        text.push_str(&format!("  - name: {name}\n    scope: {scope}\n    sha256: {}\n", hash(secret)));
    }
    let config = dir.join("control-api.yaml");
    std::fs::write(&config, text).expect("write the control-api config");
    config
}

impl ControlApi {
    /// Starts one on an ephemeral port.
    pub fn start(dir: &Path, tokens: &[Token]) -> ControlApi {
        Self::start_on(dir, "127.0.0.1:0", tokens)
    }

    /// Starts one on `listen` (`host:port`).
    pub fn start_on(dir: &Path, listen: &str, tokens: &[Token]) -> ControlApi {
        let config = write_config(dir, listen, tokens);
        let (proc, addr) = Proc::spawn_listening(
            Command::new(crate::paths::bin("control-api")).arg("--config").arg(&config).env("CONTROL_API_LOG", "warn"),
        );
        ControlApi { proc, base: format!("http://{addr}") }
    }

    /// `GET /v1/logs?{query}` with a logs-scope `token`: the events, newest first.
    pub fn logs(&self, token: &str, query: &str) -> Vec<Value> {
        let auth = crate::http::bearer(token);
        let r = crate::http::get(&format!("{}/v1/logs?{query}", self.base), &[("authorization", auth.as_str())]);
        assert_eq!(r.status, 200, "GET /v1/logs?{query}: {}", r.text());
        match r.json() {
            Value::Array(events) => events,
            other => panic!("GET /v1/logs answered {other}"),
        }
    }
}
