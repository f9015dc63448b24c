//! Drives the `hostile-source` binary (test-support): start it, script its answer, read its
//! request log, kill it and bring it back on the same port.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use test_support::http::{get, request};
use test_support::paths::bin;
use test_support::process::Proc;

pub struct Hostile {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub url: String,
}

fn spawn(listen: &str) -> Result<(Proc, SocketAddr), String> {
    Proc::try_spawn_listening(Command::new(bin("hostile-source")).args(["--listen", listen]).stderr(Stdio::null()))
        .map_err(|e| format!("{e:#}"))
}

impl Hostile {
    pub fn start() -> Hostile {
        let (proc, addr) = spawn("127.0.0.1:0").expect("hostile-source");
        Hostile { proc, addr, url: format!("http://{addr}") }
    }

    /// SIGKILL: from now on connections to its port are refused.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// A new process on the same port (its script and request log start afresh).
    pub fn restart(&mut self) {
        self.proc.kill9();
        let mut last = String::new();
        // The port was ours a moment ago; retry briefly in case it is not free yet.
        for _ in 0..50 {
            match spawn(&self.addr.to_string()) {
                Ok((proc, _)) => {
                    self.proc = proc;
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hostile-source could not come back on {}: {last}", self.addr);
    }

    /// Sets the script; panics if the source refuses it.
    pub fn set(&self, script: &Value) {
        let body = script.to_string();
        let headers = [("content-type", "application/json")];
        let r = request("PUT", &format!("{}/_script", self.url), &headers, Some(body.as_bytes()));
        match r.status {
            200..=299 => {}
            0 => panic!("hostile-source unreachable: {}", r.error.unwrap_or_default()),
            code => panic!("hostile-source refused the script ({code}): {}", r.text()),
        }
    }

    /// The logged bundle requests numbered `since` and later.
    pub fn requests(&self, since: u64) -> Vec<Value> {
        let r = get(&format!("{}/_requests?since={since}", self.url), &[]);
        assert_eq!(r.status, 200, "hostile-source request log: {r:?}");
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// The number the next logged request will get.
    pub fn next_n(&self) -> u64 {
        self.requests(0).last().and_then(|e| e["n"].as_u64()).map_or(0, |n| n + 1)
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A bundle with `ETag: "<sha256>"`, 304 and long-poll support.
pub fn bundle(bytes: &[u8]) -> Value {
    json!({"mode": "bundle", "body": b64(bytes)})
}

/// These bytes with this ETag.
pub fn body(bytes: &[u8], etag: &str) -> Value {
    json!({"mode": "body", "body": b64(bytes), "etag": etag})
}

pub fn status(code: u16, retry_after: Option<u64>) -> Value {
    json!({"mode": "status", "code": code, "retry_after": retry_after})
}

pub fn hang() -> Value {
    json!({"mode": "hang"})
}

pub fn trickle(bytes: &[u8], every_ms: u64) -> Value {
    json!({"mode": "trickle", "body": b64(bytes), "every_ms": every_ms})
}

pub fn close() -> Value {
    json!({"mode": "close"})
}

pub fn tls() -> Value {
    json!({"mode": "tls"})
}

pub fn redirect(location: &str) -> Value {
    json!({"mode": "redirect", "location": location})
}
