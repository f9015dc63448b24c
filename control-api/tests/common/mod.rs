//! Test harness: the real `control-api` binary over loopback on ephemeral ports, bundles built
//! from the example bundle (`policy-bundles/examples/api-gateway`) with their `.manifest`
//! revision set, and a fresh PostgreSQL database per test when `CONTROL_API_TEST_POSTGRES` is set.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use policy_bundles::archive::{read_dir, write_tar_gz, Files};
use policy_bundles::Limits;

pub const PUBLISH_TOKEN: &str = "publish-token-for-tests";
pub const READ_TOKEN: &str = "read-token-for-tests";
/// A PostgreSQL URL whose role may create databases (`scripts/pg-up` prints one).
pub const PG_ENV: &str = "CONTROL_API_TEST_POSTGRES";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The example bundle's files.
pub fn example_files() -> Files {
    read_dir(&repo_root().join("policy-bundles/examples/api-gateway"), &Limits::default()).expect("example bundle")
}

/// Sets the `.manifest` revision of a bundle's files.
pub fn set_revision(files: &mut Files, revision: &str) {
    let mut manifest: serde_json::Value = match files.get(".manifest") {
        Some(m) => serde_json::from_slice(m).expect("manifest JSON"),
        None => serde_json::json!({}),
    };
    manifest["revision"] = serde_json::Value::String(revision.to_owned());
    files.insert(".manifest".into(), serde_json::to_vec_pretty(&manifest).expect("manifest"));
}

/// The example bundle as a tarball with this revision.
pub fn bundle(revision: &str) -> Vec<u8> {
    bundle_with(revision, |_| {})
}

/// The example bundle with this revision, edited by `edit`.
pub fn bundle_with(revision: &str, edit: impl FnOnce(&mut Files)) -> Vec<u8> {
    let mut files = example_files();
    set_revision(&mut files, revision);
    edit(&mut files);
    write_tar_gz(&files).expect("tarball")
}

/// A tarball holding the example's files plus one entry written with a raw (unchecked) name.
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

pub fn digest(bytes: &[u8]) -> String {
    policy_bundles::digest(bytes)
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_control-api"))
}

pub fn hash(token: &str) -> String {
    control_api::auth::hash_token(token)
}

/// Writes `control-api.yaml` in `dir` with the test tokens and `extra` top-level keys.
pub fn write_config(dir: &Path, store: &str, extra: &str) -> PathBuf {
    let path = dir.join("control-api.yaml");
    let text = format!(
        "listen: 127.0.0.1:0\nstore: {store}\n{extra}\ntokens:\n  - name: ci\n    scope: publish\n    sha256: {}\n  - name: gateways\n    scope: read\n    sha256: {}\n",
        hash(PUBLISH_TOKEN),
        hash(READ_TOKEN)
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running `control-api`.
pub struct Server {
    pub proc: Proc,
    pub base: String,
    pub config: PathBuf,
}

impl Server {
    /// Starts the binary on a config and waits for its `listening on ADDR` line.
    pub fn start(config: &Path) -> Server {
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .env("CONTROL_API_LOG", std::env::var("CONTROL_API_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn control-api");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let proc = Proc(child);
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("control-api did not start within 60 s");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("control-api did not start; first line: {line:?}"))
            .to_owned();
        Server { proc, base: format!("http://{addr}"), config: config.to_path_buf() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn publish(&self, name: &str, tarball: &[u8]) -> Resp {
        request("PUT", &self.url(&format!("/v1/bundles/{name}")), Some(PUBLISH_TOKEN), &[], Some(tarball))
    }

    pub fn get_bundle(&self, name: &str, if_none_match: Option<&str>, wait: Option<u64>) -> Resp {
        let mut headers = Vec::new();
        let inm;
        if let Some(tag) = if_none_match {
            inm = tag.to_owned();
            headers.push(("if-none-match", inm.as_str()));
        }
        let prefer;
        if let Some(n) = wait {
            prefer = format!("wait={n}");
            headers.push(("prefer", prefer.as_str()));
        }
        request("GET", &self.url(&format!("/v1/bundles/{name}")), Some(READ_TOKEN), &headers, None)
    }

    pub fn active_etag(&self, name: &str) -> Option<String> {
        let r = self.get_bundle(name, None, None);
        (r.status == 200).then(|| r.header("etag").expect("etag").to_owned())
    }

    pub fn revisions(&self, name: &str) -> serde_json::Value {
        let r = request("GET", &self.url(&format!("/v1/bundles/{name}/revisions")), Some(READ_TOKEN), &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    pub fn rollback(&self, name: &str, revision: &str) -> Resp {
        let body = serde_json::json!({ "revision": revision }).to_string();
        request(
            "POST",
            &self.url(&format!("/v1/bundles/{name}/rollback")),
            Some(PUBLISH_TOKEN),
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    /// The value of a metric line (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = request("GET", &self.url("/metrics"), None, &[], None).text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().expect("metric value"))
            .unwrap_or(0.0)
    }

    /// Waits until `control_api_long_poll_waiters` reaches `n`.
    pub fn wait_for_waiters(&self, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metric("control_api_long_poll_waiters") != n {
            assert!(Instant::now() < deadline, "long_poll_waiters never reached {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn kill(self) {
        drop(self);
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP request; any status is a response (never a panic), a transport error panics.
pub fn request(method: &str, url: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build();
    let mut req = agent.request(method, url);
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers =
        resp.headers_names().into_iter().filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_owned()))).collect();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).expect("read body");
    Resp { status, headers, body }
}

/// The PostgreSQL URL for tests; `None` (the test then returns early) when unset outside CI.
/// In CI (`CI` set) a missing URL fails the test: the PostgreSQL tests must run there.
pub fn postgres_url() -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{PG_ENV} is not set: CI must run the PostgreSQL tests (scripts/pg-up starts PostgreSQL and prints the URL)")
        }
        _ => {
            eprintln!("note: {PG_ENV} is not set; not running this PostgreSQL test (see scripts/pg-up)");
            None
        }
    }
}

/// A database created for one test and dropped after it.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

impl TestDb {
    pub fn create() -> Option<TestDb> {
        let admin = postgres_url()?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
        let name = format!(
            "control_api_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos.unwrap_or(0) % 1_000_000
        );
        run_sql(&admin, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        Some(TestDb { url: with_database(&admin, &name), admin, name })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = run_sql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("warning: dropping test database {}: {e}", self.name);
        }
    }
}

/// `postgres://u:p@h:5432/db?x=y` with another database name.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let prefix = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    }
}

/// Runs one statement on its own thread and runtime (callable from sync and async tests).
fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.map_err(|e| e.to_string())?;
            sqlx::query(&sql).execute(&mut conn).await.map_err(|e| e.to_string())?;
            conn.close().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_string())?
}
