//! The control plane's configuration (`control-api --config FILE`), in two stages: strict serde
//! structs mirroring the YAML (unknown keys are errors naming the key and line), then validation
//! into the typed [`Config`] that reports every problem at once, each with its key and line.
//!
//! ```yaml
//! listen: 127.0.0.1:8181          # ip:port; port 0 picks a free port (printed at start)
//! store: sqlite://./control.db     # sqlite://PATH (relative to this file's directory) or postgres://...
//! max_bundle_size: 64MiB           # largest tarball accepted by PUT; default 64MiB
//! max_long_poll: 300s              # cap on `Prefer: wait=N`; default 300s
//! fleet_silent_after: 60s          # a gateway without a report for longer is `silent`; default 60s
//! max_connections: 10000          # open connections at once; past it a new one is closed at once; default 10000
//! store_stale_after: 3s            # out of reach of the store this long: /readyz and bundle GETs 503; default 3s
//! header_timeout: 10s              # a request head must arrive within this; default 10s
//! max_long_polls_per_token: 1000   # long polls one token may have held; past it answered at once; default 1000
//! fleet_retention: 24h             # a gateway's row (and its binding to a token) goes after this long without a report; default 24h
//! budget:                          # what one bundle may cost, checked in a child process
//!   max_uncompressed: 64MiB        #   every file, uncompressed; default 64MiB
//!   max_compiled: 256MiB           #   estimated compiled size (data values, rules); default 256MiB
//!   max_memory: 2GiB               #   the validating child's address space; default 2GiB
//!   max_cpu: 20s                   #   the validating child's CPU time; default 20s
//! growth_guard:                    # a publish that moves too far from the active revision is 409
//!   max_growth: 2.0                #   any size, or the compile time, more than 2x; default 2.0
//!   max_removed: 0.2               #   more than 20% of routes or upstreams gone; default 0.2
//!   min_compile_time: 1s           #   compile times below this are not compared; default 1s
//!   enabled: true                  #   default true; `?force=true&reason=...` passes it
//! rollout:                         # optional: staged rollout with automatic rollback
//!   canary: [gw-a]                 #   instance names; or canary_percent: 10 (stable hash); the
//!                                  #   cohort of every bundle `bundles` does not name; optional
//!                                  #   with `bundles` (other bundles then go to everyone at once)
//!   bundles:                       #   optional: a bundle's own cohort, instead of `canary`
//!     payments: { canary: [gw-p1] }      # or { canary_percent: 10 }
//!   bake: 60s                      #   healthy canary time before everyone gets it; default 60s
//!   silent_after: 30s              #   a canary without a report this long fails it; default 30s
//!   max_error_rate: 0.05           #   errors / requests since activation; default 0.05
//!   min_requests: 20               #   before the error rate counts; default 20
//!   max_p99: 1s                    #   optional
//! logs:                            # decision logs (POST/GET /v1/logs)
//!   max_upload: 8MiB               #   largest batch body as sent (gzip); default 8MiB
//!   max_decompressed: 64MiB        #   largest batch once decompressed; default 8x max_upload
//!   max_age: 7d                    #   events older than this (by their timestamp) go; default 7d
//!   max_count: 1000000             #   beyond this many, the oldest go; default 1000000
//! console:                         # the web console at /ui/
//!   secure_cookie: false           #   true behind TLS: the session cookie is `__Host-`, `Secure`
//! tokens:
//!   - name: ci                     # shown as `published_by`
//!     scope: publish               # publish | read | logs (publish tokens may also read; logs
//!                                  #   tokens may only query decision logs)
//!     sha256: 9f86d0...            # `control-api hash-token` (token on stdin); the token itself is never stored
//!     instance: gw-a               # optional: the only gateway this token may speak for
//!     bundles: [main]              # optional: the only bundles this token may touch
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config_files::{from_yaml, parse_size, Problems};
pub use config_files::{ConfigError, ConfigFile, FileError, Problem};
use serde::Deserialize;

use crate::auth::Scope;
pub use crate::auth::TokenConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    store: String,
    #[serde(default)]
    max_bundle_size: Option<String>,
    #[serde(default)]
    max_long_poll: Option<String>,
    #[serde(default)]
    fleet_silent_after: Option<String>,
    #[serde(default)]
    fleet_retention: Option<String>,
    #[serde(default)]
    max_connections: Option<u64>,
    #[serde(default)]
    header_timeout: Option<String>,
    #[serde(default)]
    store_stale_after: Option<String>,
    #[serde(default)]
    max_long_polls_per_token: Option<u64>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    budget: Option<policy_bundles::budget::RawBudget>,
    #[serde(default)]
    growth_guard: Option<RawGrowthGuard>,
    #[serde(default)]
    rollout: Option<RawRollout>,
    #[serde(default)]
    logs: Option<RawLogs>,
    #[serde(default)]
    console: Option<RawConsole>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    #[serde(default)]
    secure_cookie: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    #[serde(default)]
    max_upload: Option<String>,
    #[serde(default)]
    max_decompressed: Option<String>,
    #[serde(default)]
    max_age: Option<String>,
    #[serde(default)]
    max_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    #[serde(default)]
    canary: Vec<String>,
    #[serde(default)]
    canary_percent: Option<u8>,
    #[serde(default)]
    bundles: std::collections::BTreeMap<String, RawCohort>,
    #[serde(default)]
    bake: Option<String>,
    #[serde(default)]
    silent_after: Option<String>,
    #[serde(default)]
    max_error_rate: Option<f64>,
    #[serde(default)]
    min_requests: Option<u64>,
    #[serde(default)]
    max_p99: Option<String>,
}

/// One bundle's cohort under `rollout.bundles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCohort {
    #[serde(default)]
    canary: Vec<String>,
    #[serde(default)]
    canary_percent: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrowthGuard {
    #[serde(default)]
    max_growth: Option<f64>,
    #[serde(default)]
    max_removed: Option<f64>,
    #[serde(default)]
    min_compile_time: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    scope: String,
    sha256: String,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    bundles: Option<Vec<String>>,
}

/// Where bundles, revisions and fleet reports are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file, created with its schema on first start. One control-api per file.
    Sqlite(PathBuf),
    /// `sqlite::memory:` (quoted in YAML): an in-memory database that dies with the process (tests).
    SqliteMemory,
    /// A PostgreSQL URL; several replicas may share it.
    Postgres(String),
}

impl fmt::Display for StoreLocation {
    /// Never prints a PostgreSQL password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreLocation::SqliteMemory => f.write_str("sqlite::memory:"),
            StoreLocation::Postgres(url) => {
                // postgres://user:secret@host/db -> postgres://user:***@host/db
                let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
                let rest = &url[scheme_end..];
                match (rest.find('@'), rest.find(':')) {
                    (Some(at), Some(colon)) if colon < at => {
                        write!(f, "{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..])
                    }
                    _ => f.write_str(url),
                }
            }
        }
    }
}

/// Decision logs (`logs`): how large a batch may be, and how long and how many events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsConfig {
    /// Largest `POST /v1/logs` body as sent (compressed), in bytes; default 8 MiB.
    pub max_upload: u64,
    /// Largest batch once decompressed, in bytes; default 8 times `max_upload`. A gzip body
    /// that inflates past it (a bomb) is refused with 413.
    pub max_decompressed: u64,
    /// Events whose `timestamp` is older are deleted (and never listed); default 7 days.
    pub max_age: Duration,
    /// Beyond this many stored events the oldest are deleted; default 1,000,000.
    pub max_count: u64,
}

pub const DEFAULT_MAX_UPLOAD: u64 = 8 << 20;
pub const DEFAULT_LOGS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_LOGS_MAX_COUNT: u64 = 1_000_000;

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_upload: DEFAULT_MAX_UPLOAD,
            max_decompressed: 8 * DEFAULT_MAX_UPLOAD,
            max_age: DEFAULT_LOGS_MAX_AGE,
            max_count: DEFAULT_LOGS_MAX_COUNT,
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listener.
    pub listen: SocketAddr,
    pub store: StoreLocation,
    /// Largest bundle tarball accepted, in bytes; default 64 MiB. Enforced while reading.
    pub max_bundle_size: u64,
    /// Longest a `Prefer: wait=N` request is held; default 300 s.
    pub max_long_poll: Duration,
    /// A gateway whose last report is older than this is `silent` in `/v1/fleet`; default 60 s.
    pub fleet_silent_after: Duration,
    /// A gateway's row, and the binding of its instance to a token, is deleted after this long
    /// without a report; default 24 h.
    pub fleet_retention: Duration,
    /// Connections open at once; past it a new connection is closed at once and counted.
    pub max_connections: usize,
    /// A request head (line and headers) must arrive within this of the connection's last
    /// request, or the connection is closed and counted.
    pub header_timeout: Duration,
    /// How long this replica may go without reaching its store (or, on PostgreSQL, with its
    /// notification connection down) before it stops answering as current: `/readyz` and
    /// bundle GETs answer 503, so gateways ask their next source. Default 3 s.
    pub store_stale_after: Duration,
    /// Long polls one token may have held at once; past it a long poll is answered at once
    /// (304 without waiting) and counted.
    pub max_long_polls_per_token: usize,
    pub tokens: Vec<TokenConfig>,
    /// What one bundle may cost (`budget`), checked in a child process at every publish.
    pub budget: policy_bundles::budget::Budget,
    /// Where the budget is checked: a child of this executable (default), or in-process.
    pub validator: policy_bundles::budget::Validator,
    /// How far a publish may move from the active revision without `force`.
    pub growth_guard: Option<GrowthGuard>,
    /// Staged rollout; `None`: every gateway is served a publish at once.
    pub rollout: Option<RolloutConfig>,
    /// Decision-log ingest bounds and retention.
    pub logs: LogsConfig,
    /// The web console (`/ui/`).
    pub console: ConsoleConfig,
}

/// The web console's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The session cookie is `__Host-console_token` with `Secure` and `Path=/`: a browser sends
    /// it over HTTPS only, and no sibling host or path can set one. For control-api behind TLS.
    pub secure_cookie: bool,
}

/// Which gateways take a new revision first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cohort {
    /// These instance names.
    Instances(Vec<String>),
    /// Instances whose name hashes (SHA-256) below this percentage.
    Percent(u8),
}

impl Cohort {
    pub fn contains(&self, instance: &str) -> bool {
        match self {
            Cohort::Instances(list) => list.iter().any(|i| i == instance),
            Cohort::Percent(p) => {
                let h = <sha2::Sha256 as sha2::Digest>::digest(instance.as_bytes());
                u16::from_be_bytes([h[0], h[1]]) % 100 < u16::from(*p)
            }
        }
    }
}

/// Staged rollout (`rollout`): a publish goes to the canary cohort, is judged from the canaries'
/// status reports, and is promoted to everyone after `bake`, or rolled back.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// The cohort of every bundle without one of its own; `None`: such bundles are published to
    /// every gateway at once.
    pub canary: Option<Cohort>,
    /// Bundles' own cohorts (`rollout.bundles`): a cohort belongs to the bundles its gateways serve.
    pub bundles: std::collections::BTreeMap<String, Cohort>,
    /// How long every canary must serve the revision healthily before everyone gets it.
    pub bake: Duration,
    /// A canary without a report for this long fails the rollout.
    pub silent_after: Duration,
    /// Largest share of errors among a canary's requests since it activated the revision.
    pub max_error_rate: f64,
    /// Requests a canary must have served before its error rate counts.
    pub min_requests: u64,
    /// Largest p99 a canary may report, when set.
    pub max_p99: Option<Duration>,
}

impl RolloutConfig {
    /// The canary cohort of a bundle; `None`: its publishes are not staged.
    pub fn cohort(&self, bundle: &str) -> Option<&Cohort> {
        self.bundles.get(bundle).or(self.canary.as_ref())
    }

    /// Whether `instance` is a canary of `bundle`.
    pub fn is_canary(&self, bundle: &str, instance: &str) -> bool {
        self.cohort(bundle).is_some_and(|c| c.contains(instance))
    }
}

/// The growth guard's ratios (`growth_guard`): a publish past one of them is refused with 409
/// unless it is forced with a reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrowthGuard {
    /// Largest ratio of any size (compressed, uncompressed, compiled) or of the compile time,
    /// candidate over active; default 2.0.
    pub max_growth: f64,
    /// Largest share of the active revision's routes, or of its upstreams, that may disappear;
    /// default 0.2.
    pub max_removed: f64,
    /// Compile times are compared only when the candidate's is at least this (below it the
    /// figure is noise); default 1s.
    pub min_compile_time: Duration,
}

impl Default for GrowthGuard {
    fn default() -> Self {
        GrowthGuard { max_growth: 2.0, max_removed: 0.2, min_compile_time: Duration::from_secs(1) }
    }
}

pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = 64 << 20;
pub const DEFAULT_MAX_LONG_POLL: Duration = Duration::from_secs(300);
pub const DEFAULT_STORE_STALE_AFTER: Duration = Duration::from_secs(3);
pub const DEFAULT_FLEET_SILENT_AFTER: Duration = Duration::from_secs(60);
pub const DEFAULT_FLEET_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_LONG_POLLS_PER_TOKEN: usize = 1000;

impl ConfigFile for Config {
    /// Parses config text; `path` names the file in errors and anchors a relative SQLite path.
    fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = from_yaml(text, path)?;
        // Every key is taken here: a new one is a compile error until it is validated.
        let RawConfig {
            listen: raw_listen,
            store: raw_store,
            max_bundle_size: raw_bundle_size,
            max_long_poll: raw_long_poll,
            fleet_silent_after: raw_silent_after,
            fleet_retention: raw_retention,
            max_connections: raw_max_connections,
            header_timeout: raw_header_timeout,
            store_stale_after: raw_stale_after,
            max_long_polls_per_token: raw_long_polls_per_token,
            tokens: raw_tokens,
            budget: raw_budget,
            growth_guard: raw_guard,
            rollout: raw_rollout,
            logs: raw_logs,
            console: raw_console,
        } = raw;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems = Problems::new(text);

        let (listen, store) = listen_and_store(&raw_listen, &raw_store, base, &mut problems);
        let max_bundle_size = bundle_size(raw_bundle_size.as_deref(), &mut problems);
        let max_long_poll = problems.duration("max_long_poll", raw_long_poll.as_deref(), DEFAULT_MAX_LONG_POLL);
        let fleet_silent_after =
            problems.duration("fleet_silent_after", raw_silent_after.as_deref(), DEFAULT_FLEET_SILENT_AFTER);
        let fleet_retention = problems.duration("fleet_retention", raw_retention.as_deref(), DEFAULT_FLEET_RETENTION);
        let header_timeout = duration_within(
            &mut problems,
            ("header_timeout", raw_header_timeout.as_deref(), DEFAULT_HEADER_TIMEOUT),
            Duration::from_nanos(1)..=Duration::MAX,
            "must be more than 0s",
        );
        let store_stale_after = duration_within(
            &mut problems,
            ("store_stale_after", raw_stale_after.as_deref(), DEFAULT_STORE_STALE_AFTER),
            Duration::from_millis(200)..=Duration::from_secs(300),
            "must be from 200ms to 300s",
        );
        let max_connections =
            at_least_one(&mut problems, "max_connections", raw_max_connections, DEFAULT_MAX_CONNECTIONS);
        let max_long_polls_per_token = at_least_one(
            &mut problems,
            "max_long_polls_per_token",
            raw_long_polls_per_token,
            DEFAULT_MAX_LONG_POLLS_PER_TOKEN,
        );
        let tokens = parse_tokens(&raw_tokens, &mut problems);
        let (budget, validator) = parse_budget(raw_budget.unwrap_or_default(), &mut problems);
        let growth_guard = parse_growth_guard(raw_guard.unwrap_or_default(), &mut problems);
        let rollout = raw_rollout.map(|r| parse_rollout(&r, &mut problems));
        let logs = parse_logs(raw_logs.unwrap_or_default(), &mut problems);
        let console = ConsoleConfig { secure_cookie: raw_console.unwrap_or_default().secure_cookie.unwrap_or(false) };

        problems.finish(path)?;
        Ok(Config {
            listen,
            store,
            max_bundle_size,
            max_long_poll,
            fleet_silent_after,
            fleet_retention,
            max_connections,
            header_timeout,
            store_stale_after,
            max_long_polls_per_token,
            tokens,
            budget,
            validator,
            growth_guard,
            rollout,
            logs,
            console,
        })
    }
}

/// `listen` and `store`.
fn listen_and_store(
    listen: &str,
    store: &str,
    base: &Path,
    problems: &mut Problems<'_>,
) -> (SocketAddr, StoreLocation) {
    let addr = listen.parse().unwrap_or_else(|_| {
        problems.at("listen", format!("`{listen}` is not an address such as 127.0.0.1:8181"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let location = parse_store(store, base).unwrap_or_else(|m| {
        problems.at("store", m);
        StoreLocation::SqliteMemory
    });
    (addr, location)
}

/// A count key that must be at least 1.
fn at_least_one(problems: &mut Problems<'_>, key: &str, v: Option<u64>, default: usize) -> usize {
    match v {
        None => default,
        Some(0) => {
            problems.at(key, "must be at least 1".into());
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// A duration key (name, value, default) that must lie in `range` (else `message` at its line).
fn duration_within(
    problems: &mut Problems<'_>,
    (key, v, default): (&str, Option<&str>, Duration),
    range: std::ops::RangeInclusive<Duration>,
    message: &str,
) -> Duration {
    let d = problems.duration(key, v, default);
    if !range.contains(&d) {
        problems.at(key, message.into());
    }
    d
}

/// `max_bundle_size`: a size above 0.
fn bundle_size(v: Option<&str>, problems: &mut Problems<'_>) -> u64 {
    match v.map(parse_size) {
        None => DEFAULT_MAX_BUNDLE_SIZE,
        Some(Ok(0)) => {
            problems.at("max_bundle_size", "must be more than 0".into());
            DEFAULT_MAX_BUNDLE_SIZE
        }
        Some(Ok(n)) => n,
        Some(Err(m)) => {
            problems.at("max_bundle_size", m.to_string());
            DEFAULT_MAX_BUNDLE_SIZE
        }
    }
}

/// `tokens`: at least one; names and hashes each used once.
fn parse_tokens(raw: &[RawToken], problems: &mut Problems<'_>) -> Vec<TokenConfig> {
    if raw.is_empty() {
        problems.at(
            "tokens",
            "at least one token is needed (create one with `control-api hash-token`, which reads the token on \
             standard input)"
                .into(),
        );
    }
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    let mut tokens = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let key = |field: &str| format!("tokens[{i}].{field}");
        let line = |field: &str| problems.line(&format!("tokens[{i}].{field}"));
        let (name_line, scope_line, sha_line) = (line("name"), line("scope"), line("sha256"));
        if t.name.trim().is_empty() || t.name.chars().any(char::is_control) {
            problems.add(&key("name"), name_line, "must be a non-empty name without control characters".into());
        } else if !names.insert(t.name.clone()) {
            problems.add(&key("name"), name_line, format!("token name `{}` is used twice", t.name));
        }
        let scope = match t.scope.as_str() {
            "publish" => Scope::Publish,
            "read" => Scope::Read,
            "logs" => Scope::Logs,
            other => {
                let m = format!("`{other}` is not a scope: use publish, read or logs");
                problems.add(&key("scope"), scope_line, m);
                Scope::Read
            }
        };
        if let Some(list) = &t.bundles {
            let line = problems.line(&format!("tokens[{i}].{}", "bundles"));
            check_token_bundles(list, &key("bundles"), line, problems);
        }
        let mut sha256 = [0u8; 32];
        match hex::decode_to_slice(t.sha256.trim(), &mut sha256) {
            Ok(()) if !hashes.insert(sha256) => {
                problems.add(&key("sha256"), sha_line, "the same token hash is configured twice".into())
            }
            Ok(()) => {}
            Err(_) => problems.add(
                &key("sha256"),
                sha_line,
                "must be 64 hex digits: the SHA-256 of the token (`control-api hash-token` prints it)".into(),
            ),
        }
        tokens.push(TokenConfig {
            name: t.name.clone(),
            scope,
            sha256,
            instance: t.instance.clone(),
            bundles: t.bundles.clone(),
        });
    }
    tokens
}

/// `tokens[i].bundles`: at least one name (leave the key out for any bundle), each a bundle name.
fn check_token_bundles(list: &[String], key: &str, line: Option<usize>, problems: &mut Problems<'_>) {
    if list.is_empty() {
        problems.add(key, line, "give at least one bundle name, or leave `bundles` out for any bundle".into());
    }
    for b in list.iter().filter(|b| !crate::names::is_bundle_name(b)) {
        let m = format!("`{b}` is not a bundle name: letters, digits, `-`, `_` and `.` (not first)");
        problems.add(key, line, m);
    }
}

/// `logs`: sizes and counts above 0, a decompressed bound no smaller than the upload bound, an
/// age such as `7d` or `12h`.
fn parse_logs(raw: RawLogs, problems: &mut Problems<'_>) -> LogsConfig {
    let line = problems.line("logs");
    let d = LogsConfig::default();
    let mut size = |key: &str, v: &Option<String>, default: u64| match v.as_deref().map(parse_size) {
        None => default,
        Some(Ok(n)) if n > 0 => n,
        Some(Ok(_)) => {
            problems.add(key, line, "must be more than 0".into());
            default
        }
        Some(Err(m)) => {
            problems.add(key, line, m.to_string());
            default
        }
    };
    let max_upload = size("logs.max_upload", &raw.max_upload, d.max_upload);
    let max_decompressed = size("logs.max_decompressed", &raw.max_decompressed, max_upload.saturating_mul(8));
    if max_decompressed < max_upload {
        problems.add("logs.max_decompressed", line, format!("must be at least logs.max_upload ({max_upload} bytes)"));
    }
    let max_age = match raw.max_age.as_deref().map(crate::clock::parse_span) {
        None => d.max_age,
        Some(Ok(a)) if !a.is_zero() => a,
        Some(Ok(_)) => {
            problems.add("logs.max_age", line, "must be more than 0 (such as 7d or 12h)".into());
            d.max_age
        }
        Some(Err(m)) => {
            problems.add("logs.max_age", line, m);
            d.max_age
        }
    };
    let max_count = match raw.max_count {
        Some(0) => {
            problems.add("logs.max_count", line, "must be more than 0".into());
            d.max_count
        }
        Some(n) => n,
        None => d.max_count,
    };
    LogsConfig { max_upload, max_decompressed, max_age, max_count }
}

/// `budget`, and where it is checked: in a child process unless the budget says otherwise.
fn parse_budget(
    raw: policy_bundles::budget::RawBudget,
    problems: &mut Problems<'_>,
) -> (policy_bundles::budget::Budget, policy_bundles::budget::Validator) {
    let (budget, isolated) = raw.resolve("budget", problems);
    let validator = if isolated {
        policy_bundles::budget::Validator::current_exe()
    } else {
        policy_bundles::budget::Validator::InProcess
    };
    (budget, validator)
}

/// `growth_guard`; `None` when it is disabled.
fn parse_growth_guard(g: RawGrowthGuard, problems: &mut Problems<'_>) -> Option<GrowthGuard> {
    let d = GrowthGuard::default();
    let line = problems.line("growth_guard");
    let max_growth = g.max_growth.unwrap_or(d.max_growth);
    if !(max_growth.is_finite() && max_growth > 1.0) {
        problems.add("growth_guard.max_growth", line, "must be a ratio above 1 (2.0: twice as large)".into());
    }
    let max_removed = g.max_removed.unwrap_or(d.max_removed);
    if !(0.0..1.0).contains(&max_removed) {
        problems.add("growth_guard.max_removed", line, "must be a share from 0 to below 1 (0.2: a fifth)".into());
    }
    let min_compile_time =
        problems.duration("growth_guard.min_compile_time", g.min_compile_time.as_deref(), d.min_compile_time);
    g.enabled.unwrap_or(true).then_some(GrowthGuard { max_growth, max_removed, min_compile_time })
}

/// Validates `rollout`; every problem is reported at the line of `rollout`.
fn parse_rollout(r: &RawRollout, problems: &mut Problems<'_>) -> RolloutConfig {
    let line = problems.line("rollout");
    let canary = match (r.canary.is_empty(), r.canary_percent, r.bundles.is_empty()) {
        (true, None, false) => None,
        (_, _, _) => Some(parse_cohort("rollout", &r.canary, r.canary_percent, line, problems)),
    };
    let mut bundles = std::collections::BTreeMap::new();
    for (name, c) in &r.bundles {
        let key = format!("rollout.bundles.{name}");
        if !crate::names::is_bundle_name(name) {
            problems.add(&key, line, "is not a bundle name".into());
        }
        bundles.insert(name.clone(), parse_cohort(&key, &c.canary, c.canary_percent, line, problems));
    }
    let bake = problems.duration("rollout.bake", r.bake.as_deref(), Duration::from_secs(60));
    let silent_after = problems.duration("rollout.silent_after", r.silent_after.as_deref(), Duration::from_secs(30));
    let max_p99 =
        r.max_p99.as_ref().map(|_| problems.duration("rollout.max_p99", r.max_p99.as_deref(), Duration::from_secs(1)));
    let max_error_rate = r.max_error_rate.unwrap_or(0.05);
    if !(0.0..1.0).contains(&max_error_rate) {
        problems.add("rollout.max_error_rate", line, "must be a share from 0 to below 1 (0.05: 5%)".into());
    }
    let min_requests = r.min_requests.unwrap_or(20);
    RolloutConfig { canary, bundles, bake, silent_after, max_error_rate, min_requests, max_p99 }
}

/// A cohort: instance names or a percentage, one of them (`key` names it in errors).
fn parse_cohort(
    key: &str,
    names: &[String],
    percent: Option<u8>,
    line: Option<usize>,
    problems: &mut Problems<'_>,
) -> Cohort {
    match (names.is_empty(), percent) {
        (false, None) => Cohort::Instances(names.to_vec()),
        (true, Some(p)) if (1..=100).contains(&p) => Cohort::Percent(p),
        (true, Some(_)) => {
            problems.add(&format!("{key}.canary_percent"), line, "must be from 1 to 100".into());
            Cohort::Percent(1)
        }
        _ => {
            let m = "give `canary` (instance names) or `canary_percent`, one of them";
            problems.add(&format!("{key}.canary"), line, m.into());
            Cohort::Instances(Vec::new())
        }
    }
}

/// `sqlite://PATH` (relative to `base`), `sqlite::memory:`, or `postgres://...`/`postgresql://...`.
fn parse_store(v: &str, base: &Path) -> Result<StoreLocation, String> {
    let v = v.trim();
    if v == "sqlite::memory:" {
        return Ok(StoreLocation::SqliteMemory);
    }
    if let Some(path) = v.strip_prefix("sqlite://").or_else(|| v.strip_prefix("sqlite:")) {
        if path.is_empty() || path.contains('?') {
            return Err(format!("`{v}`: give a file path, as in sqlite://./control.db (no query options)"));
        }
        let path = PathBuf::from(path);
        return Ok(StoreLocation::Sqlite(if path.is_absolute() { path } else { base.join(path) }));
    }
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        return Ok(StoreLocation::Postgres(v.to_owned()));
    }
    Err(format!("`{v}` is not a store: use sqlite://PATH or postgres://USER@HOST/DB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/control/control-api.yaml"))
    }

    #[test]
    fn reads_a_minimal_config_with_defaults_and_a_relative_sqlite_path() {
        let c = parse(&format!(
            "listen: 127.0.0.1:8181\nstore: sqlite://./control.db\ntokens:\n  - name: ci\n    scope: publish\n    sha256: {HASH}\n"
        ))
        .unwrap();
        assert_eq!(c.store, StoreLocation::Sqlite(PathBuf::from("/etc/control/./control.db")));
        assert_eq!(c.max_bundle_size, 64 << 20);
        assert_eq!(c.max_long_poll, Duration::from_secs(300));
        assert_eq!(c.fleet_silent_after, Duration::from_secs(60));
        assert_eq!(c.tokens[0].scope, Scope::Publish);
        assert_eq!(hex::encode(c.tokens[0].sha256), HASH);
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = parse("listen: 127.0.0.1:8181\nstore: \"sqlite::memory:\"\nmax_bundel_size: 1MiB\n").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::File(FileError::Syntax { line: 3, .. })), "{msg}");
        assert!(msg.contains("max_bundel_size"), "{msg}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key_and_line() {
        let text = format!(
            "listen: nowhere\nstore: mysql://x\nmax_bundle_size: 12XB\nfleet_silent_after: soon\ntokens:\n  - name: ci\n    scope: publish\n    sha256: {HASH}\n  - name: ci\n    scope: admin\n    sha256: abc\n"
        );
        let ConfigError::Invalid { problems, .. } = parse(&text).unwrap_err() else { panic!("expected Invalid") };
        let got: Vec<(String, Option<usize>)> = problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        let want = [
            ("listen", 1),
            ("store", 2),
            ("max_bundle_size", 3),
            ("fleet_silent_after", 4),
            ("tokens[1].name", 9),
            ("tokens[1].scope", 10),
            ("tokens[1].sha256", 11),
        ];
        for (k, l) in want {
            assert!(got.contains(&(k.to_string(), Some(l))), "missing {k} at line {l} in {got:?}");
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
    }

    #[test]
    fn reads_the_logs_scope_token_bundles_and_logs_with_defaults() {
        let c = parse(&format!(
            "listen: 127.0.0.1:8181\nstore: \"sqlite::memory:\"\nlogs: {{ max_upload: 1MiB, max_age: 2d }}\ntokens:\n  - name: authors\n    scope: logs\n    bundles: [main, shop]\n    sha256: {HASH}\n"
        ))
        .unwrap();
        assert_eq!(c.tokens[0].scope, Scope::Logs);
        assert_eq!(c.tokens[0].bundles, Some(vec!["main".to_owned(), "shop".to_owned()]));
        let l = c.logs;
        assert_eq!((l.max_upload, l.max_decompressed, l.max_count), (1 << 20, 8 << 20, 1_000_000));
        assert_eq!(l.max_age, Duration::from_secs(2 * 86400));
        let d = parse(&format!(
            "listen: 127.0.0.1:8181\nstore: \"sqlite::memory:\"\ntokens:\n  - name: ci\n    scope: publish\n    sha256: {HASH}\n"
        ))
        .unwrap();
        assert_eq!(d.logs, LogsConfig::default());
        assert_eq!(d.tokens[0].bundles, None);
    }

    #[test]
    fn bad_logs_values_and_token_bundles_are_reported_with_key_and_line() {
        let text = format!(
            "listen: 127.0.0.1:8181\nstore: \"sqlite::memory:\"\nlogs: {{ max_upload: 2MiB, max_decompressed: 1MiB, max_age: soon, max_count: 0 }}\ntokens:\n  - name: ci\n    scope: logs\n    bundles: [\"../etc\"]\n    sha256: {HASH}\n  - name: gw\n    scope: read\n    bundles: []\n    sha256: {}\n",
            "0".repeat(64)
        );
        let ConfigError::Invalid { problems, .. } = parse(&text).unwrap_err() else { panic!("expected Invalid") };
        let got: Vec<(String, Option<usize>)> = problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        let want = [
            ("logs.max_decompressed", 3),
            ("logs.max_age", 3),
            ("logs.max_count", 3),
            ("tokens[0].bundles", 7),
            ("tokens[1].bundles", 11),
        ];
        for (k, l) in want {
            assert!(got.contains(&(k.to_string(), Some(l))), "missing {k} at line {l} in {got:?}");
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
    }

    #[test]
    fn a_config_without_tokens_is_refused() {
        let e = parse("listen: 127.0.0.1:8181\nstore: \"sqlite::memory:\"\n").unwrap_err().to_string();
        assert!(e.contains("`tokens`") && e.contains("hash-token"), "{e}");
    }

    #[test]
    fn postgres_passwords_are_not_displayed() {
        let s = StoreLocation::Postgres("postgres://gw:secret@127.0.0.1:5432/db".into()).to_string();
        assert_eq!(s, "postgres://gw:***@127.0.0.1:5432/db");
    }
}
