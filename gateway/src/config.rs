//! The gateway's local bootstrap configuration (`gateway --config FILE`), in two stages:
//! strict serde structs mirroring the YAML (unknown keys are errors naming the key and line),
//! then validation into the typed [`Config`] that reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config_files::{from_yaml, parse_duration, parse_size, Problems};
pub use config_files::{ConfigError, ConfigFile, FileError, Problem};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    admin: Option<String>,
    bundle: RawBundle,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    policy_timeout: Option<String>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    decision_cache_entries: Option<usize>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    path_with_escaped_slashes: Option<String>,
    #[serde(default)]
    path_params: Option<String>,
    #[serde(default)]
    headers_with_underscores: Option<String>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    plaintext_listen: Option<String>,
    #[serde(default)]
    h2c: bool,
    #[serde(default)]
    access_log: Option<RawAccessLog>,
    #[serde(default)]
    decision_logs: Option<RawDecisionLogs>,
    #[serde(default)]
    shadow_sample: Option<f64>,
    #[serde(default)]
    upgrade_sock: Option<PathBuf>,
    #[serde(default)]
    pid_file: Option<PathBuf>,
    #[serde(default)]
    quota_store: Option<RawQuotaStore>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotaStore {
    url: String,
    #[serde(default)]
    sync_interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    keys: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    path: PathBuf,
    #[serde(default)]
    queue: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecisionLogs {
    sinks: Vec<String>,
    #[serde(default)]
    buffer: Option<String>,
    #[serde(default)]
    sample: Option<f64>,
    #[serde(default)]
    upload_size_limit: Option<String>,
    #[serde(default)]
    flush_interval: Option<String>,
    #[serde(default)]
    spool: Option<PathBuf>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    compression: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificates: Vec<RawCert>,
    #[serde(default)]
    min_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_body: Option<String>,
    #[serde(default)]
    max_in_flight: Option<usize>,
    #[serde(default)]
    max_queue: Option<usize>,
    #[serde(default)]
    queue_timeout: Option<String>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    keepalive_timeout: Option<String>,
    #[serde(default)]
    max_header_bytes: Option<String>,
    #[serde(default)]
    tunnel_max_bytes: Option<String>,
    #[serde(default)]
    rate_limit_keys: Option<usize>,
    #[serde(default)]
    max_connections_per_ip: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    name: String,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    min_delay: Option<String>,
    #[serde(default)]
    max_delay: Option<String>,
    #[serde(default)]
    long_poll: Option<String>,
    #[serde(default)]
    backoff_max: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    follow_redirects: bool,
    #[serde(default)]
    report_interval: Option<String>,
    #[serde(default)]
    activation_nice: Option<i32>,
    #[serde(default)]
    max_size: Option<String>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    max_staleness: Option<String>,
    #[serde(default)]
    signing: Option<RawSigning>,
    #[serde(default)]
    budget: Option<policy_bundles::budget::RawBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    keys: Vec<RawKey>,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    algorithm: String,
    public_key_file: PathBuf,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`, `/status`, `/metrics`); default 127.0.0.1:9901.
    pub admin: SocketAddr,
    /// Worker threads of the proxy; default: the number of CPUs.
    pub threads: usize,
    /// Wall-clock bound on one policy evaluation; default 50ms. Past it the request is denied.
    pub policy_timeout: Duration,
    /// This gateway's name in status reports; default `HOSTNAME:listen-port`.
    pub instance: String,
    pub limits: Limits,
    /// Bound of each worker thread's decision cache, in entries; 0 turns it off. Default 4096.
    /// Only bundles whose decisions depend on nothing but the input they read are cached
    /// (`policy_bundles::input_reads`).
    pub decision_cache_entries: usize,
    pub bundle: BundleConfig,
    /// How client requests are made canonical and which forwarding headers are believed.
    pub requests: RequestRules,
    /// TLS on `listen` (rustls; h2 and http/1.1 by ALPN). None: `listen` is plaintext.
    pub tls: Option<TlsConfig>,
    /// With `tls`: a plaintext listener beside the TLS one.
    pub plaintext_listen: Option<SocketAddr>,
    /// HTTP/2 by prior knowledge (h2c) on the plaintext listener; default off.
    pub h2c: bool,
    /// The config file's directory: relative paths in the config, and in a bundle's upstream
    /// `tls` files, are read from here.
    pub base_dir: PathBuf,
    /// One JSON line per request, off the request path; None: no access log.
    pub access_log: Option<AccessLogConfig>,
    /// `decision_logs`: OPA-compatible decision events shipped to sinks.
    pub decision_logs: Option<DecisionLogsConfig>,
    /// `shadow_sample`: the fraction of requests on a route with a `shadow` rule whose shadow
    /// rule is evaluated too (default 1.0: every one).
    pub shadow_sample: f64,
    /// Where a new process (`--upgrade`) receives the listening sockets; default
    /// `/tmp/gateway-<listen port>.upgrade.sock`.
    pub upgrade_sock: PathBuf,
    /// This process's PID, read by `--upgrade` to signal it; default `/tmp/gateway-<listen port>.pid`.
    pub pid_file: PathBuf,
    /// `quota_store`: where the fleet's counts of `scope: global` limits are exchanged. None: a
    /// bundle with a global limit is refused.
    pub quota_store: Option<QuotaStoreConfig>,
}

/// `quota_store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaStoreConfig {
    /// `redis://[user:password@]HOST:PORT[/DB]` (Redis or Valkey).
    pub url: String,
    /// How often counts are exchanged; default 200ms, 10ms to 1s. The fleet's overshoot of a
    /// quota is bounded by how far demand moves within one interval.
    pub sync_interval: Duration,
    /// Bound of one exchange, connecting included; default 100ms.
    pub timeout: Duration,
    /// Keys each global limit counts at most (about 100 bytes each, and each one asked for in
    /// the last two windows is exchanged every interval); default 4096.
    pub keys: usize,
}

/// `decision_logs`.
#[derive(Debug, Clone)]
pub struct DecisionLogsConfig {
    /// URLs events are POSTed to (gzip JSON arrays), tried in order.
    pub sinks: Vec<String>,
    /// Bound of the buffered events, in bytes (serialized); past it the oldest are dropped.
    pub buffer: usize,
    /// Fraction of allowed decisions logged; denies and errors always are.
    pub sample: f64,
    /// Largest batch, uncompressed.
    pub upload_size_limit: usize,
    /// How often a batch is sent (sooner when the buffer holds a full batch).
    pub flush_interval: Duration,
    /// Where the buffer is kept across restarts, if anywhere.
    pub spool: Option<PathBuf>,
    /// Bearer token for the sinks (the bundle's `token_file` unless set).
    pub token: Option<String>,
    /// How batches are sent: gzip (the default) or as they are (`none`, for a sink on the same
    /// host, where compressing costs more than the bytes it saves).
    pub compression: Compression,
}

/// `decision_logs.compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    File(PathBuf),
}

/// `access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// `stdout`, or a file (appended to; reopened on SIGUSR1).
    pub sink: Sink,
    /// Lines that may wait for the writer; past it lines are dropped and counted. Default 16384.
    pub queue: usize,
}

/// `tls`: the certificates served on `listen`, chosen by SNI.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Exact name, then wildcard, then the first (the default).
    pub certificates: Vec<CertFiles>,
    /// Default 1.2.
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

/// One certificate pair of `tls.certificates`; the files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The `name` label of its metrics; default the certificate file's stem.
    pub name: String,
    /// PEM: the leaf first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

/// What the gateway accepts from clients (DESIGN.md, "What the backend receives").
#[derive(Debug, Clone, Default)]
pub struct RequestRules {
    /// Peers whose `X-Forwarded-For` / `Forwarded` / `X-Real-IP` are appended to; from any
    /// other peer they are replaced. Empty: nobody is trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How paths are made canonical: `%2F` / `%5C` (`path_with_escaped_slashes`: `reject`, the
    /// default, `unescape`, `keep`) and `;` parameters (`path_params`: `reject`, the default,
    /// `strip`, `keep`).
    pub path: http_canon::PathRules,
    /// Header names with `_`: dropped (the default, as nginx does), allowed, or refused (400).
    pub underscores: Underscores,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    #[default]
    Drop,
    Allow,
    Reject,
}

impl RequestRules {
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// Load shedding on the data plane's own terms: past these, requests get 503 at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Downstream connections held at once; past it a new one is closed at once. Default 10000.
    pub max_connections: usize,
    /// Largest request body, in bytes; past it 413. Default 10MiB.
    pub max_body: u64,
    /// Requests handled at once (routing to the end of the response); default 10000.
    pub max_in_flight: usize,
    /// Requests allowed to wait for a slot; beyond it they are shed at once. Default 1000.
    pub max_queue: usize,
    /// How long a queued request waits for a slot before it is shed; default 50ms.
    pub queue_timeout: Duration,
    /// A request head must arrive whole within this of its first byte (of the accept, for a
    /// connection's first request); past it the connection is closed (408). Default 10s.
    pub header_timeout: Duration,
    /// How long a connection may sit idle between requests; 0 turns keep-alive off. Default 60s.
    pub keepalive_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; past it 431. Default 64KiB.
    pub max_header_bytes: usize,
    /// Bytes a client may send through one upgraded connection (a WebSocket), which is not a
    /// request body (`max_body` does not apply); past it the tunnel is closed with a WebSocket
    /// close frame (1009). 0, the default: unbounded.
    pub tunnel_max_bytes: u64,
    /// Keys each of a bundle's rate limits counts at most (16 bytes each); past it the emptiest
    /// bucket makes room. Default 65536.
    pub rate_limit_keys: usize,
    /// Connections one client address (an IPv6 client's /64) may hold at once; past it a new
    /// one is closed at once. Trusted proxies are not bounded. 0, the default: unbounded.
    pub max_connections_per_ip: usize,
}

/// `limits.rate_limit_keys` unless the config says otherwise.
pub const DEFAULT_RATE_LIMIT_KEYS: usize = 65_536;

#[derive(Debug, Clone)]
pub struct BundleConfig {
    pub name: String,
    /// Where bundles come from: a local file, or control planes polled in order.
    pub source: Source,
    /// Largest bundle accepted, default 64MiB; enforced while downloading.
    pub max_size: u64,
    /// The last-known-good copy lives here; without it a restart needs a reachable source.
    pub cache_dir: Option<PathBuf>,
    /// Past this age without a confirmed sync, `gateway_bundle_stale` = 1. Default 5m.
    pub max_staleness: Duration,
    /// Keys that sign bundles (`.signatures.json`), and whether unsigned bundles are refused.
    pub signing: Option<Signing>,
    /// What one bundle may cost (`bundle.budget`); checked before anything is compiled here.
    pub budget: policy_bundles::budget::Budget,
    /// Where the budget is checked: a child of this executable (default), or in-process.
    pub validator: policy_bundles::budget::Validator,
}

#[derive(Debug, Clone)]
pub enum Source {
    /// A bundle `.tar.gz` or directory, loaded at start.
    File(PathBuf),
    Poll(Poll),
}

/// How much nicer than the gateway activations run by default (`bundle.activation_nice`; the
/// thread is `crate::sync`'s). An activation (reading, compiling and swapping a bundle, then
/// freeing the one it replaced) takes a core for tens to hundreds of milliseconds; at equal
/// priority on a small machine that lands in the request path's tail latency under churn. At 10
/// the scheduler gives a worker about nine tenths of a contended core: activations still finish
/// under full load, only later.
pub const ACTIVATION_NICE: i32 = 10;

/// How the sync loop polls its sources.
#[derive(Debug, Clone)]
pub struct Poll {
    /// Base URLs tried in order (`http://127.0.0.1:8181`); the bundle is `{url}/v1/bundles/{name}`.
    /// A URL ending in `.tar.gz` is used as is (any HTTP server honouring ETags).
    pub sources: Vec<String>,
    /// Bearer token sent to sources, read from `token_file` at start.
    pub token: Option<String>,
    /// Interval between polls is uniform in [min_delay, max_delay]; defaults 5s and 10s.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// `Prefer: wait=N` long poll; zero disables. Default 30s.
    pub long_poll: Duration,
    /// Exponential backoff cap on errors; default 60s.
    pub backoff_max: Duration,
    /// Bound on one request (beyond the long-poll wait); default 10s.
    pub timeout: Duration,
    /// Follow a source's redirects (up to 3, never from https to http); default false.
    pub follow_redirects: bool,
    /// Status reports to the control plane on a timer of their own (±10% jitter), beside the
    /// one after each poll round: a held long poll would otherwise space them `long_poll`
    /// apart. Default 10s; 0 reports after poll rounds only.
    pub report_interval: Duration,
    /// How much nicer than the gateway the thread activating a download runs (0 to 19;
    /// default [`ACTIVATION_NICE`]): on a busy machine the request path gets the
    /// CPU first, and activations finish later.
    pub activation_nice: i32,
}

#[derive(Debug, Clone)]
pub struct Signing {
    pub keys: Vec<SigningKey>,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct SigningKey {
    pub id: String,
    /// `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    /// PEM of the public key.
    pub pem: Vec<u8>,
}

impl ConfigFile for Config {
    /// Parses config text; `path` names the file in errors and anchors relative paths. Every
    /// problem is collected before failing, so one run names them all.
    fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = from_yaml(text, path)?;
        // Destructured whole, so that a new key is a compile error until it is validated.
        let RawConfig {
            listen,
            admin,
            bundle,
            threads,
            policy_timeout,
            instance,
            limits,
            decision_cache_entries,
            trusted_proxies,
            path_with_escaped_slashes,
            path_params,
            headers_with_underscores,
            tls,
            plaintext_listen,
            h2c,
            access_log,
            decision_logs,
            shadow_sample,
            upgrade_sock,
            pid_file,
            quota_store,
        } = raw;
        let mut c =
            Check { base: path.parent().unwrap_or(Path::new(".")).to_path_buf(), problems: Problems::new(text) };
        let listen = c.addr("listen", &listen);
        let admin = c.addr("admin", admin.as_deref().unwrap_or("127.0.0.1:9901"));
        let policy_timeout = c.dur("policy_timeout", &policy_timeout, Duration::from_millis(50));
        let threads = c.threads(threads);
        let limits = c.limits(limits.unwrap_or_default());
        let bundle = c.bundle(bundle);
        let (tls, plaintext_listen) = c.listeners(listen, tls, plaintext_listen);
        let access_log = access_log.map(|a| c.access_log(a));
        let bundle_token = match &bundle.source {
            Source::Poll(p) => p.token.clone(),
            Source::File(_) => None,
        };
        let decision_logs = decision_logs.map(|d| c.decision_logs(d, bundle_token));
        let shadow_sample = c.fraction("shadow_sample", shadow_sample);
        let base_dir = c.base.clone();
        let (upgrade_sock, pid_file) = c.upgrade_files(listen.port(), upgrade_sock, pid_file);
        let quota_store = quota_store.map(|q| c.quota_store(q));
        let requests = request_rules(
            &trusted_proxies,
            [&path_with_escaped_slashes, &path_params],
            &headers_with_underscores,
            &mut c.problems,
        );
        c.problems.finish(path)?;
        Ok(Config {
            listen,
            admin,
            threads,
            policy_timeout,
            instance: instance.unwrap_or_else(|| default_instance(listen.port())),
            limits,
            decision_cache_entries: decision_cache_entries
                .unwrap_or(policy_bundles::snapshot::DEFAULT_DECISION_CACHE_ENTRIES),
            bundle,
            requests,
            tls,
            plaintext_listen,
            h2c,
            base_dir,
            access_log,
            decision_logs,
            shadow_sample,
            upgrade_sock,
            pid_file,
            quota_store,
        })
    }
}

impl Check<'_> {
    /// `tls` on `listen`, and `plaintext_listen` beside it (only with `tls`, on another address).
    fn listeners(
        &mut self,
        listen: SocketAddr,
        tls: Option<RawTls>,
        plaintext_listen: Option<String>,
    ) -> (Option<TlsConfig>, Option<SocketAddr>) {
        let tls = tls.map(|t| self.tls(t));
        let plaintext_listen = plaintext_listen.map(|a| self.addr("plaintext_listen", &a));
        if plaintext_listen.is_some() && tls.is_none() {
            self.problem("`plaintext_listen` is a plain listener beside a TLS one: it needs `tls`".into());
        }
        if plaintext_listen.is_some_and(|a| a == listen) {
            self.problem("`plaintext_listen` must differ from `listen`".into());
        }
        (tls, plaintext_listen)
    }

    /// `upgrade_sock` and `pid_file`, by default named after the listen port under `/tmp`.
    fn upgrade_files(&self, port: u16, upgrade_sock: Option<PathBuf>, pid_file: Option<PathBuf>) -> (PathBuf, PathBuf) {
        let upgrade_sock = upgrade_sock
            .map(|p| self.resolve(p))
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/gateway-{port}.upgrade.sock")));
        let pid_file =
            pid_file.map(|p| self.resolve(p)).unwrap_or_else(|| PathBuf::from(format!("/tmp/gateway-{port}.pid")));
        (upgrade_sock, pid_file)
    }
}

/// `HOSTNAME:listen-port`, the instance name when the config gives none.
fn default_instance(port: u16) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}:{port}")
}

/// Validation state: where relative paths are anchored and every problem found so far. Each
/// method returns a usable value (the default) after recording a problem, so that validation
/// goes on and reports everything.
struct Check<'a> {
    base: PathBuf,
    problems: Problems<'a>,
}

impl Check<'_> {
    /// A problem; its message begins with the key it is about, in backticks.
    fn problem(&mut self, message: String) {
        self.problems.named(message);
    }

    fn addr(&mut self, key: &str, v: &str) -> SocketAddr {
        v.parse().unwrap_or_else(|_| {
            self.problem(format!("`{key}`: `{v}` is not an address such as 127.0.0.1:8080"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn dur(&mut self, key: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|m| {
                self.problem(format!("`{key}`: {m}"));
                default
            }),
        }
    }

    fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn threads(&mut self, threads: Option<usize>) -> usize {
        match threads {
            Some(0) => {
                self.problem("`threads` must be at least 1".into());
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        }
    }

    /// `tls`: at least one certificate, names unique; the files are read and checked at start
    /// (and by `--check-config`) by `crate::tls`.
    fn tls(&mut self, raw: RawTls) -> TlsConfig {
        let RawTls { certificates, min_version } = raw;
        if certificates.is_empty() {
            self.problem("`tls.certificates`: at least one certificate is needed".into());
        }
        let min_version = match min_version.as_deref() {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(v) => {
                self.problem(format!("`tls.min_version`: `{v}` is not \"1.2\" or \"1.3\""));
                TlsVersion::Tls12
            }
        };
        let mut out: Vec<CertFiles> = Vec::new();
        for (i, RawCert { cert_file, key_file, name }) in certificates.into_iter().enumerate() {
            let stem = cert_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let name = name.unwrap_or(stem);
            if name.is_empty() || out.iter().any(|c| c.name == name) {
                self.problem(format!("`tls.certificates[{i}]`: name `{name}` is empty or not unique (set `name`)"));
            }
            out.push(CertFiles { name, cert_file: self.resolve(cert_file), key_file: self.resolve(key_file) });
        }
        TlsConfig { certificates: out, min_version }
    }

    /// A fraction between 0 and 1, 1 when unset.
    fn fraction(&mut self, key: &str, v: Option<f64>) -> f64 {
        let v = v.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&v) {
            self.problem(format!("`{key}` is {v}: it must be between 0 and 1"));
        }
        v
    }

    fn decision_logs(&mut self, raw: RawDecisionLogs, bundle_token: Option<String>) -> DecisionLogsConfig {
        let RawDecisionLogs {
            sinks,
            buffer,
            sample,
            upload_size_limit,
            flush_interval,
            spool,
            token_file,
            compression,
        } = raw;
        let compression = match compression.as_deref() {
            None | Some("gzip") => Compression::Gzip,
            Some("none") => Compression::None,
            Some(other) => {
                self.problem(format!("`decision_logs.compression`: `{other}` is neither `gzip` nor `none`"));
                Compression::Gzip
            }
        };
        if sinks.is_empty() {
            self.problem("`decision_logs.sinks` needs at least one URL".into());
        }
        for s in &sinks {
            if reqwest::Url::parse(s).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                self.problem(format!("`decision_logs.sinks`: `{s}` is not an http(s) URL"));
            }
        }
        let sample = self.fraction("decision_logs.sample", sample);
        let mut size = |key: &str, v: &Option<String>, default: usize| match v {
            None => default,
            Some(s) => match parse_size(s) {
                Ok(n) if n >= 1024 => usize::try_from(n).unwrap_or(usize::MAX),
                Ok(_) => {
                    self.problem(format!("`{key}` must be at least 1KiB"));
                    default
                }
                Err(m) => {
                    self.problem(format!("`{key}`: {m}"));
                    default
                }
            },
        };
        let buffer = size("decision_logs.buffer", &buffer, 32 << 20);
        let upload_size_limit = size("decision_logs.upload_size_limit", &upload_size_limit, 1 << 20);
        let flush_interval = self.dur("decision_logs.flush_interval", &flush_interval, Duration::from_secs(1));
        let token = match token_file {
            Some(f) => {
                let f = self.resolve(f);
                match std::fs::read_to_string(&f) {
                    Ok(t) => Some(t.trim().to_owned()),
                    Err(e) => {
                        self.problem(format!("`decision_logs.token_file` {}: {e}", f.display()));
                        None
                    }
                }
            }
            None => bundle_token,
        };
        DecisionLogsConfig {
            sinks,
            buffer,
            sample,
            upload_size_limit,
            flush_interval,
            spool: spool.map(|p| self.resolve(p)),
            token,
            compression,
        }
    }

    fn quota_store(&mut self, raw: RawQuotaStore) -> QuotaStoreConfig {
        let RawQuotaStore { url, sync_interval, timeout, keys } = raw;
        if !url.starts_with("redis://") || redis::Client::open(url.as_str()).is_err() {
            self.problem(format!("`quota_store.url`: `{url}` is not a store URL such as redis://127.0.0.1:6379"));
        }
        let sync_interval = self.dur("quota_store.sync_interval", &sync_interval, Duration::from_millis(200));
        if !(Duration::from_millis(10)..=Duration::from_secs(1)).contains(&sync_interval) {
            self.problem("`quota_store.sync_interval` must be from 10ms to 1s".into());
        }
        let timeout = self.dur("quota_store.timeout", &timeout, Duration::from_millis(100));
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&timeout) {
            self.problem("`quota_store.timeout` must be from 1ms to 10s".into());
        }
        let keys = keys.unwrap_or(4096);
        if !(128..=1 << 20).contains(&keys) {
            self.problem("`quota_store.keys` must be from 128 to 1048576 (64 shards of two-way sets)".into());
        }
        QuotaStoreConfig { url, sync_interval, timeout, keys }
    }

    fn access_log(&mut self, raw: RawAccessLog) -> AccessLogConfig {
        let RawAccessLog { path, queue } = raw;
        if queue == Some(0) {
            self.problem("`access_log.queue` must be at least 1".into());
        }
        let sink = if path.as_os_str() == "stdout" { Sink::Stdout } else { Sink::File(self.resolve(path)) };
        AccessLogConfig { sink, queue: queue.unwrap_or(16_384) }
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let RawLimits {
            max_connections,
            max_body,
            max_in_flight,
            max_queue,
            queue_timeout,
            header_timeout,
            keepalive_timeout,
            max_header_bytes,
            tunnel_max_bytes,
            rate_limit_keys,
            max_connections_per_ip,
        } = raw;
        if max_in_flight == Some(0) {
            self.problem("`limits.max_in_flight` must be at least 1 (0 would refuse every request)".into());
        }
        if max_connections == Some(0) {
            self.problem("`limits.max_connections` must be at least 1 (0 would refuse every connection)".into());
        }
        let max_body = match &max_body {
            None => 10 << 20,
            Some(s) => parse_size(s).unwrap_or_else(|m| {
                self.problem(format!("`limits.max_body`: {m}"));
                0
            }),
        };
        let queue_timeout = self.dur("limits.queue_timeout", &queue_timeout, Duration::from_millis(50));
        let header_timeout = self.dur("limits.header_timeout", &header_timeout, Duration::from_secs(10));
        if header_timeout.is_zero() {
            self.problem("`limits.header_timeout` must be more than 0 (0 would close every connection)".into());
        }
        let keepalive_timeout = self.dur("limits.keepalive_timeout", &keepalive_timeout, Duration::from_secs(60));
        let max_header_bytes = match &max_header_bytes {
            None => 64 << 10,
            Some(s) => match parse_size(s) {
                Ok(n) if (1024..=1 << 20).contains(&n) => n as usize,
                Ok(n) => {
                    self.problem(format!("`limits.max_header_bytes` is {n}: it must be between 1KiB and 1MiB"));
                    0
                }
                Err(m) => {
                    self.problem(format!("`limits.max_header_bytes`: {m}"));
                    0
                }
            },
        };
        let tunnel_max_bytes = match &tunnel_max_bytes {
            None => 0,
            Some(s) => parse_size(s).unwrap_or_else(|m| {
                self.problem(format!("`limits.tunnel_max_bytes`: {m}"));
                0
            }),
        };
        let rate_limit_keys = rate_limit_keys.unwrap_or(DEFAULT_RATE_LIMIT_KEYS);
        if !(256..=1 << 26).contains(&rate_limit_keys) {
            self.problem("`limits.rate_limit_keys` must be from 256 to 67108864".into());
        }
        Limits {
            tunnel_max_bytes,
            rate_limit_keys,
            max_connections_per_ip: max_connections_per_ip.unwrap_or(0),
            max_connections: max_connections.unwrap_or(10_000),
            max_body,
            max_in_flight: max_in_flight.unwrap_or(10_000),
            max_queue: max_queue.unwrap_or(1_000),
            queue_timeout,
            header_timeout,
            keepalive_timeout,
            max_header_bytes,
        }
    }

    fn bundle(&mut self, b: RawBundle) -> BundleConfig {
        let RawBundle {
            name,
            sources,
            file,
            token_file,
            min_delay,
            max_delay,
            long_poll,
            backoff_max,
            timeout,
            follow_redirects,
            report_interval,
            activation_nice,
            max_size,
            cache_dir,
            max_staleness,
            signing,
            budget,
        } = b;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            self.problem(format!("`bundle.name`: `{name}` must be letters, digits, `-`, `_` or `.`"));
        }
        let max_size = match &max_size {
            None => 64 << 20,
            Some(s) => parse_size(s).unwrap_or_else(|m| {
                self.problem(format!("`bundle.max_size`: {m}"));
                0
            }),
        };
        let raw_poll = RawPoll {
            sources,
            token_file,
            min_delay,
            max_delay,
            long_poll,
            backoff_max,
            timeout,
            follow_redirects,
            report_interval,
            activation_nice,
        };
        let (source, poll_window) = self.source(file, raw_poll);
        let max_staleness = self.dur("bundle.max_staleness", &max_staleness, Duration::from_secs(300));
        if let Some(window) = poll_window.filter(|w| max_staleness <= *w) {
            self.problem(format!(
                "`bundle.max_staleness` ({max_staleness:?}) must exceed `long_poll` + `timeout` ({window:?}): a held long poll confirms only when it returns"
            ));
        }
        let signing = signing.map(|sg| self.signing(sg));
        let (budget, isolated) = budget.unwrap_or_default().resolve("bundle.budget", &mut self.problems);
        let validator = if isolated {
            policy_bundles::budget::Validator::current_exe()
        } else {
            policy_bundles::budget::Validator::InProcess
        };
        let cache_dir = cache_dir.map(|d| self.resolve(d));
        BundleConfig { name, source, max_size, cache_dir, max_staleness, signing, budget, validator }
    }

    /// Where bundles come from; with polling, also the longest one poll may take
    /// (`long_poll` + `timeout`), which `max_staleness` must exceed. The polling keys are
    /// validated whichever source is chosen, so that a mistake in them is never silent.
    fn source(&mut self, file: Option<PathBuf>, raw: RawPoll) -> (Source, Option<Duration>) {
        let polling = !raw.sources.is_empty();
        let poll = self.poll(raw);
        match (file, polling) {
            (Some(_), true) => {
                self.problem("`bundle.file` and `bundle.sources` are alternatives: give one".into());
                (Source::File(PathBuf::new()), None)
            }
            (Some(f), false) => (Source::File(self.resolve(f)), None),
            (None, true) => {
                let window = poll.long_poll + poll.timeout;
                (Source::Poll(poll), Some(window))
            }
            (None, false) => {
                self.problem("`bundle`: give `sources` (control planes to poll) or `file` (a local bundle)".into());
                (Source::File(PathBuf::new()), None)
            }
        }
    }

    fn poll(&mut self, raw: RawPoll) -> Poll {
        let RawPoll {
            sources,
            token_file,
            min_delay,
            max_delay,
            long_poll,
            backoff_max,
            timeout,
            follow_redirects,
            report_interval,
            activation_nice,
        } = raw;
        for (i, u) in sources.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                self.problem(format!("`bundle.sources[{i}]`: `{u}` must be an http:// or https:// URL"));
            }
        }
        let min_delay = self.dur("bundle.min_delay", &min_delay, Duration::from_secs(5));
        let max_delay = self.dur("bundle.max_delay", &max_delay, Duration::from_secs(10).max(min_delay));
        if max_delay < min_delay {
            self.problem("`bundle.max_delay` must be at least `bundle.min_delay`".into());
        }
        let timeout = self.dur("bundle.timeout", &timeout, Duration::from_secs(10));
        if timeout.is_zero() {
            self.problem("`bundle.timeout` must be more than zero".into());
        }
        Poll {
            sources: sources.iter().map(|s| s.trim_end_matches('/').to_owned()).collect(),
            token: token_file.and_then(|f| self.token(f)),
            min_delay,
            max_delay,
            long_poll: self.dur("bundle.long_poll", &long_poll, Duration::from_secs(30)),
            backoff_max: self.dur("bundle.backoff_max", &backoff_max, Duration::from_secs(60)),
            timeout,
            follow_redirects,
            report_interval: self.dur("bundle.report_interval", &report_interval, Duration::from_secs(10)),
            activation_nice: match activation_nice {
                None => ACTIVATION_NICE,
                Some(n @ 0..=19) => n,
                Some(n) => {
                    self.problem(format!("`bundle.activation_nice`: {n} is not 0 to 19"));
                    0
                }
            },
        }
    }

    fn token(&mut self, file: PathBuf) -> Option<String> {
        match std::fs::read_to_string(self.resolve(file.clone())) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            Ok(_) => {
                self.problem(format!("`bundle.token_file`: {} is empty", file.display()));
                None
            }
            Err(e) => {
                self.problem(format!("`bundle.token_file`: cannot read {}: {e}", file.display()));
                None
            }
        }
    }

    fn signing(&mut self, raw: RawSigning) -> Signing {
        let RawSigning { keys, required } = raw;
        if keys.is_empty() {
            self.problem("`bundle.signing.keys`: at least one key is needed".into());
        }
        let keys = keys.into_iter().enumerate().map(|(i, k)| self.signing_key(i, k)).collect();
        Signing { keys, required }
    }

    fn signing_key(&mut self, i: usize, raw: RawKey) -> SigningKey {
        let RawKey { id, algorithm, public_key_file } = raw;
        if !["RS256", "ES256", "EdDSA"].contains(&algorithm.as_str()) {
            self.problem(format!("`bundle.signing.keys[{i}].algorithm`: `{algorithm}` is not RS256, ES256 or EdDSA"));
        }
        let pem = std::fs::read(self.resolve(public_key_file.clone())).unwrap_or_else(|e| {
            self.problem(format!(
                "`bundle.signing.keys[{i}].public_key_file`: cannot read {}: {e}",
                public_key_file.display()
            ));
            Vec::new()
        });
        SigningKey { id, algorithm, pem }
    }
}

/// The polling keys of `bundle`, validated together.
struct RawPoll {
    sources: Vec<String>,
    token_file: Option<PathBuf>,
    min_delay: Option<String>,
    max_delay: Option<String>,
    long_poll: Option<String>,
    backoff_max: Option<String>,
    timeout: Option<String>,
    follow_redirects: bool,
    report_interval: Option<String>,
    activation_nice: Option<i32>,
}

fn request_rules(
    trusted: &[String],
    [slashes, params]: [&Option<String>; 2],
    underscores: &Option<String>,
    problems: &mut Problems<'_>,
) -> RequestRules {
    let mut rules = RequestRules::default();
    for (i, t) in trusted.iter().enumerate() {
        let net = t.parse::<ipnet::IpNet>().or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(n) => rules.trusted_proxies.push(n),
            Err(_) => {
                problems.named(format!("`trusted_proxies[{i}]`: `{t}` is not an address or CIDR such as 10.0.0.0/8"))
            }
        }
    }
    if let Some(s) = slashes {
        match http_canon::EscapedSlashes::parse(s) {
            Some(a) => rules.path.slashes = a,
            None => problems.named(format!("`path_with_escaped_slashes`: `{s}` is not reject, unescape or keep")),
        }
    }
    if let Some(s) = params {
        match http_canon::PathParams::parse(s) {
            Some(a) => rules.path.params = a,
            None => problems.named(format!("`path_params`: `{s}` is not reject, strip or keep")),
        }
    }
    if let Some(s) = underscores {
        rules.underscores = match s.as_str() {
            "drop" => Underscores::Drop,
            "allow" => Underscores::Allow,
            "reject" => Underscores::Reject,
            _ => {
                problems.named(format!("`headers_with_underscores`: `{s}` is not drop, allow or reject"));
                Underscores::Drop
            }
        };
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/gw/gateway.yaml"))
    }

    #[test]
    fn reads_a_minimal_config_with_defaults() {
        let c = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b.tar.gz\n").unwrap();
        assert_eq!(c.admin.to_string(), "127.0.0.1:9901");
        assert!(matches!(&c.bundle.source, Source::File(f) if f == &PathBuf::from("/etc/gw/b.tar.gz")));
        assert_eq!(c.policy_timeout, Duration::from_millis(50));
        assert!(c.requests.trusted_proxies.is_empty());
        assert_eq!(c.requests.path.slashes, http_canon::EscapedSlashes::Reject);
        assert_eq!(c.requests.underscores, Underscores::Drop);
    }

    #[test]
    fn decision_log_and_shadow_settings_get_defaults_and_bad_ones_are_all_named() {
        let base = "listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\n";
        let c = parse(&format!("{base}decision_logs: {{ sinks: [\"http://127.0.0.1:8181/v1/logs\"] }}\n")).unwrap();
        let d = c.decision_logs.expect("decision_logs");
        assert_eq!((d.buffer, d.upload_size_limit, d.sample), (32 << 20, 1 << 20, 1.0));
        assert_eq!((d.flush_interval, d.spool, d.token), (Duration::from_secs(1), None, None));
        assert_eq!(d.compression, Compression::Gzip);
        let none = parse(&format!(
            "{base}decision_logs: {{ sinks: [\"http://127.0.0.1:8181/v1/logs\"], compression: none }}\n"
        ));
        assert_eq!(none.unwrap().decision_logs.map(|d| d.compression), Some(Compression::None));
        let zstd = parse(&format!(
            "{base}decision_logs: {{ sinks: [\"http://127.0.0.1:8181/v1/logs\"], compression: zstd }}\n"
        ));
        assert!(zstd.is_err_and(|e| e.to_string().contains("`zstd` is neither `gzip` nor `none`")));
        assert_eq!(c.shadow_sample, 1.0);
        let bad = "decision_logs: { sinks: [\"ftp://x\"], sample: 1.5, buffer: 10, flush_interval: soon }\nshadow_sample: -1\n";
        let e = parse(&format!("{base}{bad}")).unwrap_err().to_string();
        for key in [
            "`decision_logs.sinks`",
            "`decision_logs.sample`",
            "`decision_logs.buffer`",
            "decision_logs.flush_interval",
            "`shadow_sample`",
        ] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
        let e = parse(&format!("{base}decision_logs: {{ sinks: [] }}\n")).unwrap_err().to_string();
        assert!(e.contains("at least one URL"), "{e}");
    }

    #[test]
    fn a_quota_store_gets_defaults_and_bad_settings_are_all_named() {
        let base = "listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\n";
        let c = parse(&format!("{base}quota_store: {{ url: \"redis://127.0.0.1:6379\" }}\n")).unwrap();
        let q = c.quota_store.expect("quota_store");
        assert_eq!(
            (q.sync_interval, q.timeout, q.keys),
            (Duration::from_millis(200), Duration::from_millis(100), 4096)
        );
        let bad = "quota_store: { url: \"http://127.0.0.1:6379\", sync_interval: 5s, timeout: 0s, keys: 1 }\n";
        let e = parse(&format!("{base}{bad}")).unwrap_err().to_string();
        for key in ["`quota_store.url`", "`quota_store.sync_interval`", "`quota_store.timeout`", "`quota_store.keys`"] {
            assert!(e.contains(key), "{key} not named in: {e}");
        }
    }

    #[test]
    fn request_rules_are_read_and_bad_ones_named() {
        let c = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\ntrusted_proxies: [10.0.0.0/8, \"::1\"]\npath_with_escaped_slashes: unescape\npath_params: strip\nheaders_with_underscores: allow\nlimits: { tunnel_max_bytes: 1MiB }\n").unwrap();
        assert_eq!(c.requests.path.params, http_canon::PathParams::Strip);
        assert_eq!(c.limits.tunnel_max_bytes, 1 << 20);
        assert!(c.requests.trusts("10.1.2.3".parse().unwrap()));
        assert!(c.requests.trusts("::1".parse().unwrap()));
        assert!(c.requests.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.requests.trusts("127.0.0.1".parse().unwrap()));
        assert_eq!(c.requests.path.slashes, http_canon::EscapedSlashes::Unescape);
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\ntrusted_proxies: [10.0.0.0/33]\npath_with_escaped_slashes: maybe\npath_params: drop\nheaders_with_underscores: sometimes\n").unwrap_err().to_string();
        assert!(
            e.contains("trusted_proxies[0]")
                && e.contains("path_with_escaped_slashes")
                && e.contains("`path_params`: `drop` is not reject, strip or keep")
                && e.contains("headers_with_underscores"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\n  flie: x\n").unwrap_err().to_string();
        assert!(e.contains("gateway.yaml:5"), "{e}");
        assert!(e.contains("flie"), "{e}");
    }

    #[test]
    fn polling_settings_get_defaults_and_file_excludes_sources() {
        let c = parse(
            "listen: 127.0.0.1:8080\nbundle:\n  name: main\n  sources: [\"http://127.0.0.1:8181/\"]\n  long_poll: 0s\n",
        )
        .unwrap();
        let Source::Poll(p) = &c.bundle.source else { panic!("expected polling") };
        assert_eq!(p.sources, vec!["http://127.0.0.1:8181".to_string()]);
        assert_eq!(p.long_poll, Duration::ZERO);
        assert_eq!((p.min_delay, p.max_delay), (Duration::from_secs(5), Duration::from_secs(10)));
        assert_eq!(c.bundle.max_staleness, Duration::from_secs(300));
        assert_eq!(p.activation_nice, ACTIVATION_NICE);
        let e =
            parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  sources: [\"http://x\"]\n  activation_nice: 20\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("`bundle.activation_nice`: 20 is not 0 to 19"), "{e}");
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: x\n  sources: [\"ftp://x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alternatives") && e.contains("sources[0]"), "{e}");
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  sources: [\"http://x\"]\n  long_poll: 30s\n  max_staleness: 20s\n").unwrap_err().to_string();
        assert!(e.contains("max_staleness"), "{e}");
    }

    #[test]
    fn zero_max_in_flight_is_refused_with_the_other_problems() {
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\nlimits:\n  max_in_flight: 0\n  queue_timeout: soon\nthreads: 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`limits.max_in_flight` must be at least 1"), "{e}");
        assert!(e.contains("`limits.queue_timeout`"), "{e}");
        assert!(e.contains("`threads`"), "{e}");
    }

    #[test]
    fn a_bad_queue_timeout_is_reported_not_defaulted() {
        let e =
            parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\nlimits:\n  queue_timeout: 5 parsecs\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("`limits.queue_timeout`"), "{e}");
        let c = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\nlimits:\n  queue_timeout: 200ms\n  max_in_flight: 3\n")
            .unwrap();
        assert_eq!(
            (c.limits.queue_timeout, c.limits.max_in_flight, c.limits.max_queue),
            (Duration::from_millis(200), 3, 1000)
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let e = parse("listen: nope\nbundle:\n  name: main\n  file: b\n  max_size: 12XB\n  timeout: soon\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`listen`"), "{e}");
        assert!(e.contains("bundle.max_size"), "{e}");
        assert!(e.contains("bundle.timeout"), "{e}");
    }
}
