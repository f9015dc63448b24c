//! The gateway's local bootstrap configuration (`gateway --config FILE`), in two stages:
//! strict serde structs mirroring the YAML (unknown keys are errors naming the key and line),
//! then validation into the typed [`Config`] that reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use policy_bundles::settings::{parse_duration, parse_size};
use serde::Deserialize;

/// A configuration problem, naming the key (and line where known).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Syntax { path: String, line: usize, message: String },
    #[error("{path}: {}", .problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
}

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
    headers_with_underscores: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_in_flight: Option<usize>,
    #[serde(default)]
    max_queue: Option<usize>,
    #[serde(default)]
    queue_timeout: Option<String>,
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
    /// (`policy_bundles::reads`).
    pub decision_cache_entries: usize,
    pub bundle: BundleConfig,
    /// How client requests are made canonical and which forwarding headers are believed.
    pub requests: RequestRules,
}

/// What the gateway accepts from clients (DESIGN.md, "What the backend receives").
#[derive(Debug, Clone, Default)]
pub struct RequestRules {
    /// Peers whose `X-Forwarded-For` / `Forwarded` / `X-Real-IP` are appended to; from any
    /// other peer they are replaced. Empty: nobody is trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `%2F` / `%5C` in paths: `reject` (400, the default), `unescape`, `keep`.
    pub escaped_slashes: crate::canon::EscapedSlashes,
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
    /// Requests handled at once (routing to the end of the response); default 10000.
    pub max_in_flight: usize,
    /// Requests allowed to wait for a slot; beyond it they are shed at once. Default 1000.
    pub max_queue: usize,
    /// How long a queued request waits for a slot before it is shed; default 50ms.
    pub queue_timeout: Duration,
}

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

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let raw: RawConfig = yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax {
            path: p.clone(),
            line: e.location().map(|l| l.line()).unwrap_or(0),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        let addr = |key: &str, v: &str, problems: &mut Vec<String>| -> SocketAddr {
            v.parse().unwrap_or_else(|_| {
                problems.push(format!("`{key}`: `{v}` is not an address such as 127.0.0.1:8080"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let listen = addr("listen", &raw.listen, &mut problems);
        let admin = addr("admin", raw.admin.as_deref().unwrap_or("127.0.0.1:9901"), &mut problems);
        let dur = |key: &str, v: &Option<String>, default: Duration, problems: &mut Vec<String>| match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|m| {
                problems.push(format!("`{key}`: {m}"));
                default
            }),
        };
        let policy_timeout = dur("policy_timeout", &raw.policy_timeout, Duration::from_millis(50), &mut problems);
        let threads = match raw.threads {
            Some(0) => {
                problems.push("`threads` must be at least 1".into());
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        };

        let b = raw.bundle;
        if b.name.is_empty() || !b.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            problems.push(format!("`bundle.name`: `{}` must be letters, digits, `-`, `_` or `.`", b.name));
        }
        let max_size = match &b.max_size {
            None => 64 << 20,
            Some(s) => parse_size(s).unwrap_or_else(|m| {
                problems.push(format!("`bundle.max_size`: {m}"));
                0
            }),
        };
        let min_delay = dur("bundle.min_delay", &b.min_delay, Duration::from_secs(5), &mut problems);
        let max_delay = dur("bundle.max_delay", &b.max_delay, Duration::from_secs(10).max(min_delay), &mut problems);
        if max_delay < min_delay {
            problems.push("`bundle.max_delay` must be at least `bundle.min_delay`".into());
        }
        let long_poll = dur("bundle.long_poll", &b.long_poll, Duration::from_secs(30), &mut problems);
        let backoff_max = dur("bundle.backoff_max", &b.backoff_max, Duration::from_secs(60), &mut problems);
        let timeout = dur("bundle.timeout", &b.timeout, Duration::from_secs(10), &mut problems);
        if timeout.is_zero() {
            problems.push("`bundle.timeout` must be more than zero".into());
        }
        let max_staleness = dur("bundle.max_staleness", &b.max_staleness, Duration::from_secs(300), &mut problems);
        if !b.sources.is_empty() && max_staleness <= long_poll + timeout {
            problems.push(format!(
                "`bundle.max_staleness` ({max_staleness:?}) must exceed `long_poll` + `timeout` ({:?}): a held long poll confirms only when it returns",
                long_poll + timeout
            ));
        }
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let token = match b.token_file {
            None => None,
            Some(f) => match std::fs::read_to_string(resolve(f.clone())) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                Ok(_) => {
                    problems.push(format!("`bundle.token_file`: {} is empty", f.display()));
                    None
                }
                Err(e) => {
                    problems.push(format!("`bundle.token_file`: cannot read {}: {e}", f.display()));
                    None
                }
            },
        };
        for (i, u) in b.sources.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                problems.push(format!("`bundle.sources[{i}]`: `{u}` must be an http:// or https:// URL"));
            }
        }
        let source = match (b.file, b.sources.is_empty()) {
            (Some(_), false) => {
                problems.push("`bundle.file` and `bundle.sources` are alternatives: give one".into());
                Source::File(PathBuf::new())
            }
            (Some(f), true) => Source::File(resolve(f)),
            (None, false) => Source::Poll(Poll {
                sources: b.sources.iter().map(|s| s.trim_end_matches('/').to_owned()).collect(),
                token,
                min_delay,
                max_delay,
                long_poll,
                backoff_max,
                timeout,
            }),
            (None, true) => {
                problems.push("`bundle`: give `sources` (control planes to poll) or `file` (a local bundle)".into());
                Source::File(PathBuf::new())
            }
        };
        let signing = b.signing.map(|sg| {
            if sg.keys.is_empty() {
                problems.push("`bundle.signing.keys`: at least one key is needed".into());
            }
            let keys = sg
                .keys
                .into_iter()
                .enumerate()
                .map(|(i, k)| {
                    if !["RS256", "ES256", "EdDSA"].contains(&k.algorithm.as_str()) {
                        problems.push(format!(
                            "`bundle.signing.keys[{i}].algorithm`: `{}` is not RS256, ES256 or EdDSA",
                            k.algorithm
                        ));
                    }
                    let pem = std::fs::read(resolve(k.public_key_file.clone())).unwrap_or_else(|e| {
                        problems.push(format!(
                            "`bundle.signing.keys[{i}].public_key_file`: cannot read {}: {e}",
                            k.public_key_file.display()
                        ));
                        Vec::new()
                    });
                    SigningKey { id: k.id, algorithm: k.algorithm, pem }
                })
                .collect();
            Signing { keys, required: sg.required }
        });
        let cache_dir = b.cache_dir.map(resolve);
        let (budget, isolated) = b.budget.unwrap_or_default().resolve("bundle.budget", &mut problems);
        let validator = if isolated {
            policy_bundles::budget::Validator::current_exe()
        } else {
            policy_bundles::budget::Validator::InProcess
        };
        let requests = request_rules(
            &raw.trusted_proxies,
            &raw.path_with_escaped_slashes,
            &raw.headers_with_underscores,
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: p, problems });
        }
        let raw_limits = raw.limits.unwrap_or(RawLimits { max_in_flight: None, max_queue: None, queue_timeout: None });
        let limits = Limits {
            max_in_flight: raw_limits.max_in_flight.unwrap_or(10_000),
            max_queue: raw_limits.max_queue.unwrap_or(1_000),
            queue_timeout: dur(
                "limits.queue_timeout",
                &raw_limits.queue_timeout,
                Duration::from_millis(50),
                &mut problems,
            ),
        };
        if limits.max_in_flight == 0 {
            problems.push("`limits.max_in_flight` must be at least 1".into());
        }
        let instance = raw.instance.unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "gateway".into());
            format!("{host}:{}", listen.port())
        });
        Ok(Config {
            listen,
            admin,
            threads,
            policy_timeout,
            instance,
            limits,
            decision_cache_entries: raw
                .decision_cache_entries
                .unwrap_or(policy_bundles::snapshot::DEFAULT_DECISION_CACHE_ENTRIES),
            bundle: BundleConfig {
                name: b.name,
                source,
                max_size,
                cache_dir,
                max_staleness,
                signing,
                budget,
                validator,
            },
            requests,
        })
    }
}

fn request_rules(
    trusted: &[String],
    slashes: &Option<String>,
    underscores: &Option<String>,
    problems: &mut Vec<String>,
) -> RequestRules {
    let mut rules = RequestRules::default();
    for (i, t) in trusted.iter().enumerate() {
        let net = t.parse::<ipnet::IpNet>().or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(n) => rules.trusted_proxies.push(n),
            Err(_) => {
                problems.push(format!("`trusted_proxies[{i}]`: `{t}` is not an address or CIDR such as 10.0.0.0/8"))
            }
        }
    }
    if let Some(s) = slashes {
        match crate::canon::EscapedSlashes::parse(s) {
            Some(a) => rules.escaped_slashes = a,
            None => problems.push(format!("`path_with_escaped_slashes`: `{s}` is not reject, unescape or keep")),
        }
    }
    if let Some(s) = underscores {
        rules.underscores = match s.as_str() {
            "drop" => Underscores::Drop,
            "allow" => Underscores::Allow,
            "reject" => Underscores::Reject,
            _ => {
                problems.push(format!("`headers_with_underscores`: `{s}` is not drop, allow or reject"));
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
        assert_eq!(c.requests.escaped_slashes, crate::canon::EscapedSlashes::Reject);
        assert_eq!(c.requests.underscores, Underscores::Drop);
    }

    #[test]
    fn request_rules_are_read_and_bad_ones_named() {
        let c = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\ntrusted_proxies: [10.0.0.0/8, \"::1\"]\npath_with_escaped_slashes: unescape\nheaders_with_underscores: allow\n").unwrap();
        assert!(c.requests.trusts("10.1.2.3".parse().unwrap()));
        assert!(c.requests.trusts("::1".parse().unwrap()));
        assert!(c.requests.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.requests.trusts("127.0.0.1".parse().unwrap()));
        assert_eq!(c.requests.escaped_slashes, crate::canon::EscapedSlashes::Unescape);
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\ntrusted_proxies: [10.0.0.0/33]\npath_with_escaped_slashes: maybe\nheaders_with_underscores: sometimes\n").unwrap_err().to_string();
        assert!(
            e.contains("trusted_proxies[0]")
                && e.contains("path_with_escaped_slashes")
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
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: x\n  sources: [\"ftp://x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alternatives") && e.contains("sources[0]"), "{e}");
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  sources: [\"http://x\"]\n  long_poll: 30s\n  max_staleness: 20s\n").unwrap_err().to_string();
        assert!(e.contains("max_staleness"), "{e}");
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
