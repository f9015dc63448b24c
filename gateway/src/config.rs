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
    signing: Option<serde_yaml::Value>,
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
    pub bundle: BundleConfig,
}

#[derive(Debug, Clone)]
pub struct BundleConfig {
    pub name: String,
    /// A local bundle (`.tar.gz` or directory), paths relative to the config file's directory.
    pub file: PathBuf,
    /// Largest bundle accepted, default 64MiB.
    pub max_size: u64,
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
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
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
        for (key, v) in [
            ("bundle.min_delay", &b.min_delay),
            ("bundle.max_delay", &b.max_delay),
            ("bundle.long_poll", &b.long_poll),
            ("bundle.backoff_max", &b.backoff_max),
            ("bundle.timeout", &b.timeout),
            ("bundle.max_staleness", &b.max_staleness),
        ] {
            dur(key, v, Duration::ZERO, &mut problems);
        }
        // Polling a control plane (sources, token_file, cache_dir, signing) arrives with the
        // bundle-sync loop; until then a config that relies on it is refused, not ignored.
        let polling_keys = [
            ("bundle.sources", !b.sources.is_empty()),
            ("bundle.token_file", b.token_file.is_some()),
            ("bundle.cache_dir", b.cache_dir.is_some()),
            ("bundle.signing", b.signing.is_some()),
        ];
        for (key, set) in polling_keys {
            if set {
                problems.push(format!(
                    "`{key}`: polling a control plane is not supported by this build yet; use `bundle.file`"
                ));
            }
        }
        let file = match b.file {
            Some(f) if f.is_absolute() => f,
            Some(f) => base.join(f),
            None => {
                problems.push("`bundle.file`: required (the path of a bundle .tar.gz or directory)".into());
                PathBuf::new()
            }
        };
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: p, problems });
        }
        Ok(Config { listen, admin, threads, policy_timeout, bundle: BundleConfig { name: b.name, file, max_size } })
    }
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
        assert_eq!(c.bundle.file, PathBuf::from("/etc/gw/b.tar.gz"));
        assert_eq!(c.policy_timeout, Duration::from_millis(50));
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = parse("listen: 127.0.0.1:8080\nbundle:\n  name: main\n  file: b\n  flie: x\n").unwrap_err().to_string();
        assert!(e.contains("gateway.yaml:5"), "{e}");
        assert!(e.contains("flie"), "{e}");
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
