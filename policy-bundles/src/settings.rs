//! The gateway's settings carried inside a bundle under the reserved root `data.gateway`:
//! upstreams, routes and JWT issuers. Parsed strictly (unknown keys are errors).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `data.gateway` as written by authors.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub jwt: Option<JwtSpec>,
    #[serde(default)]
    pub request_headers: RequestHeadersSpec,
    /// The input document every route's rule reads unless the route says otherwise.
    #[serde(default)]
    pub input_format: Option<InputFormat>,
}

/// The shape of the input document a route's rule reads, and of the result it gives.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// The gateway's own input (`input.request`, `input.jwt`) and decision (`allow`, `status`...).
    #[default]
    Gateway,
    /// The input the OPA-Envoy plugin builds for an Envoy `CheckRequest` (v3), and its result
    /// forms (`allowed`, `http_status`, `headers`, `body`...).
    Envoy,
}

/// `body` on a route: the request body is buffered, up to `max_bytes`, before the rule runs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    pub max_bytes: u64,
}

/// What happens to client request headers on every route, before any decision adds its own.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestHeadersSpec {
    /// Removed from every client request (identity headers a decision sets, such as
    /// `x-user-id`): neither the policy nor the upstream ever sees a client's copy.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Claim headers the gateway removes from clients (forwarding, client-address, host and
    /// override claims, `crate::claims`) that this bundle lets through by name.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `host:port` targets, chosen round robin among the healthy ones.
    pub targets: Vec<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheckSpec>,
    /// Default 1s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub connect_timeout: Option<Duration>,
    /// Default 30s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub read_timeout: Option<Duration>,
    /// TLS to the upstream (verified unless `verify: false` says otherwise).
    #[serde(default)]
    pub tls: Option<UpstreamTlsSpec>,
    /// HTTP/2 to the upstream (gRPC): by ALPN over TLS, by prior knowledge (h2c) without.
    #[serde(default)]
    pub http2: bool,
}

/// `upstreams.<name>.tls`. Files are on the gateway's disk, relative to its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// The name sent as SNI and verified against the upstream's certificate; default the
    /// host of the first target.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM CA certificates the upstream's chain must lead to; default the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Default true. `false` accepts any certificate: say it only for a test upstream.
    #[serde(default = "verify_default")]
    pub verify: bool,
    /// A client certificate (PEM chain) and its key, for upstreams that require mTLS.
    #[serde(default)]
    pub client_cert_file: Option<String>,
    #[serde(default)]
    pub client_key_file: Option<String>,
}

fn verify_default() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// HTTP path probed with GET; a 2xx/3xx answer is healthy. Without it, a TCP connect is the probe.
    #[serde(default)]
    pub path: Option<String>,
    /// Default 5s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: MatchSpec,
    pub upstream: String,
    /// The rule that decides, e.g. `data.http.orders.decision`.
    pub policy: String,
    #[serde(default)]
    pub strip_prefix: bool,
    /// When true an evaluation error or undefined result allows instead of denying.
    #[serde(default)]
    pub fail_open: bool,
    /// A rule evaluated beside `policy` on the same input and never enforced: its agreement
    /// with the enforced one is counted, and every disagreement logged.
    #[serde(default)]
    pub shadow: Option<String>,
    /// `gateway` (the default, or the bundle's `input_format`) or `envoy`.
    #[serde(default)]
    pub input_format: Option<InputFormat>,
    /// Buffer the request body for the rule (413 past `max_bytes`); other routes stream it.
    #[serde(default)]
    pub body: Option<BodySpec>,
    /// `Authorization` schemes other than `Bearer` (e.g. `basic`, for a legacy backend) that
    /// this route leaves to its rule and forwards; any other scheme is a 401.
    #[serde(default)]
    pub authorization_schemes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Exact host, or `*.example.com` for any subdomain.
    #[serde(default)]
    pub host: Option<String>,
    /// Matches the path itself and everything below it (`/orders` matches `/orders/7`, not `/ordersx`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    #[serde(default)]
    pub issuers: Vec<IssuerSpec>,
    /// Allowed clock skew for `exp` and `nbf`, default 30s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub leeway: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    pub issuer: String,
    /// At least one, unless `any_audience: true` says explicitly that any `aud` is accepted.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub any_audience: bool,
    pub jwks: jsonwebtoken::jwk::JwkSet,
}

/// A duration or size that could not be read; the message names the text and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid duration `{0}` (use e.g. 500ms, 5s, 2m)")]
    Duration(String),
    #[error("invalid duration unit in `{0}` (use ms, s, m or h)")]
    DurationUnit(String),
    #[error("invalid size `{0}` (use e.g. 64MiB)")]
    Size(String),
    #[error("invalid size unit in `{0}` (use B, KiB, MiB or GiB)")]
    SizeUnit(String),
    #[error("size `{0}` is too large")]
    SizeTooLarge(String),
}

/// Parses durations written as `250ms`, `5s`, `2m`, `1h` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| ValueError::Duration(s.to_owned()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(ValueError::DurationUnit(s.to_owned())),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(ValueError::Duration(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses sizes written as `512`, `64KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: u64 = num.parse().map_err(|_| ValueError::Size(s.to_owned()))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(ValueError::SizeUnit(s.to_owned())),
    };
    n.checked_mul(mult).ok_or_else(|| ValueError::SizeTooLarge(s.to_owned()))
}

/// A configuration file that could not be read, or whose YAML does not fit its schema.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    /// YAML that does not parse or does not fit the schema (unknown key, missing key, wrong
    /// type); `line` is 1-based, 0 when the parser does not know it.
    #[error("{path}:{line}: {message}")]
    Syntax { path: String, line: usize, message: String },
}

/// The text of a configuration file.
pub fn read_text(path: &std::path::Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.display().to_string(), source })
}

/// Reads YAML `text` from the file `path` (named in errors) into `T`, whose serde structs
/// should `deny_unknown_fields` so that a misspelt key is named with its line.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &std::path::Path) -> Result<T, FileError> {
    yaml_serde::from_str(text).map_err(|e| FileError::Syntax {
        path: path.display().to_string(),
        line: e.location().map(|l| l.line()).unwrap_or(0),
        message: e.to_string(),
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Text(String),
    Secs(f64),
}

/// serde helper for optional durations.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<DurationRepr>::deserialize(d)? {
        None => Ok(None),
        Some(DurationRepr::Text(s)) => parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
        Some(DurationRepr::Secs(n)) if n >= 0.0 && n.is_finite() => Ok(Some(Duration::from_secs_f64(n))),
        Some(DurationRepr::Secs(n)) => Err(serde::de::Error::custom(format!("invalid duration {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10").unwrap(), 10);
        assert!(parse_size("12XB").is_err());
    }
}
