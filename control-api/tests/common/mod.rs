//! Harness for the control plane's integration tests: the real `control-api` binary over
//! loopback on ephemeral ports, its config written per test with this suite's tokens, the calls
//! the tests make as those tokens, bundles built from the example bundle with their `.manifest`
//! revision set, and a fresh PostgreSQL database per test when `CONTROL_API_TEST_POSTGRES` is
//! set. The control-api harness itself (config, hashed tokens, process) and everything generic
//! (processes, HTTP, metrics, waiting, paths, bundles) are `test_support`'s.

#![allow(dead_code, unused_imports)]

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use policy_bundles::digest;
pub use test_support::bundles::{example_files, set_revision, tarball_with as bundle_with};
pub use test_support::control_api::{hash_token as hash, ControlApi, ControlApiConfig};
pub use test_support::http::{bearer, Resp};
pub use test_support::postgres::{TestDb, PG_ENV};
pub use test_support::process::Proc;
pub use test_support::wait::eventually;

pub const PUBLISH_TOKEN: &str = "publish-token-for-tests";
pub const READ_TOKEN: &str = "read-token-for-tests";
/// Scope `logs`: may query decision logs, nothing else.
pub const LOGS_TOKEN: &str = "logs-token-for-tests";
/// Scope `read`, limited to bundle `main` (`bundles: [main]`).
pub const MAIN_READ_TOKEN: &str = "main-read-token-for-tests";
/// The `control-api` binary under test.
pub fn bin() -> PathBuf {
    test_support::paths::bin("control-api")
}

/// The example bundle as a tarball with this revision.
pub fn bundle(revision: &str) -> Vec<u8> {
    bundle_with(revision, |_| {})
}

/// A tarball holding the example's files plus one entry written with a raw (unchecked) name,
/// which no archive writer would produce.
pub fn tarball_with_raw_entry(raw_name: &str, data: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, content) in example_files() {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, content.as_slice()).expect("append");
    }
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..raw_name.len()].copy_from_slice(raw_name.as_bytes());
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).expect("append raw");
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// A call to the API as the holder of `token` (`None`: anonymous), through the shared client;
/// a transport failure (no response at all) fails the test.
pub fn call(method: &str, url: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let auth = token.map(bearer);
    let mut all: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    all.extend_from_slice(headers);
    let r = test_support::http::request(method, url, &all, body);
    assert_ne!(r.status, 0, "{}", r.error.as_deref().unwrap_or("no response"));
    r
}

/// Writes `control-api.yaml` in `dir` with the test tokens and `extra` top-level keys.
pub fn write_config(dir: &Path, store: &str, extra: &str) -> PathBuf {
    write_config_with_tokens(dir, store, extra, "")
}

/// [`write_config`] plus the decision-log tokens: `authors` ([`LOGS_TOKEN`]) and `gw-main`
/// ([`MAIN_READ_TOKEN`]).
pub fn write_logs_config(dir: &Path, store: &str, extra: &str) -> PathBuf {
    let tokens = format!(
        "  - name: authors\n    scope: logs\n    sha256: {}\n  - name: gw-main\n    scope: read\n    bundles: [main]\n    sha256: {}\n",
        hash(LOGS_TOKEN),
        hash(MAIN_READ_TOKEN)
    );
    write_config_with_tokens(dir, store, extra, &tokens)
}

/// [`write_config`] with more token entries (YAML list items under `tokens:`).
pub fn write_config_with_tokens(dir: &Path, store: &str, extra: &str, more_tokens: &str) -> PathBuf {
    ControlApiConfig::new(dir)
        .store(store)
        .top(extra)
        .token("ci", "publish", PUBLISH_TOKEN)
        .token("gateways", "read", READ_TOKEN)
        .tokens_yaml(more_tokens)
        .write()
}

/// A running `control-api` (the shared [`ControlApi`]) with the calls this suite makes as its
/// tokens.
pub struct Server(pub ControlApi);

impl Deref for Server {
    type Target = ControlApi;

    fn deref(&self) -> &ControlApi {
        &self.0
    }
}

impl Server {
    /// Starts the binary on a config and waits for its `listening on ADDR` line.
    pub fn start(config: &Path) -> Server {
        Server(ControlApi::run(config))
    }

    pub fn publish(&self, name: &str, tarball: &[u8]) -> Resp {
        call("PUT", &self.url(&format!("/v1/bundles/{name}")), Some(PUBLISH_TOKEN), &[], Some(tarball))
    }

    pub fn get_bundle(&self, name: &str, if_none_match: Option<&str>, wait: Option<u64>) -> Resp {
        let prefer = wait.map(|n| format!("wait={n}"));
        let mut headers = Vec::new();
        if let Some(tag) = if_none_match {
            headers.push(("if-none-match", tag));
        }
        if let Some(p) = &prefer {
            headers.push(("prefer", p.as_str()));
        }
        call("GET", &self.url(&format!("/v1/bundles/{name}")), Some(READ_TOKEN), &headers, None)
    }

    pub fn active_etag(&self, name: &str) -> Option<String> {
        let r = self.get_bundle(name, None, None);
        (r.status == 200).then(|| r.header("etag").expect("etag").to_owned())
    }

    pub fn revisions(&self, name: &str) -> serde_json::Value {
        let r = call("GET", &self.url(&format!("/v1/bundles/{name}/revisions")), Some(READ_TOKEN), &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    pub fn rollback(&self, name: &str, revision: &str) -> Resp {
        let body = serde_json::json!({ "revision": revision }).to_string();
        call(
            "POST",
            &self.url(&format!("/v1/bundles/{name}/rollback")),
            Some(PUBLISH_TOKEN),
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    /// The value of a series (`name{labels}` as rendered), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.0.metric(series).unwrap_or(0.0)
    }

    /// Waits until `control_api_long_poll_waiters` reaches `n`.
    pub fn wait_for_waiters(&self, n: f64) {
        let what = format!("control_api_long_poll_waiters to reach {n}");
        eventually(Duration::from_secs(10), &what, || self.metric("control_api_long_poll_waiters") == n);
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn kill(self) {
        drop(self);
    }
}
