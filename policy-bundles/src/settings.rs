//! The gateway's settings carried inside a bundle under the reserved root `data.gateway`:
//! upstreams, routes and JWT issuers. Parsed strictly (unknown keys are errors).

use std::collections::BTreeMap;
use std::time::Duration;

use config_files::opt_duration;
use serde::Deserialize;

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
    /// Rate limits by name; a route names those that apply to it (`crate::rate_limits`).
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitSpec>,
}

/// `rate_limits.<name>`: how much one key (a user, a client address, an API key, the route)
/// may send.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// `jwt.sub`, `jwt.claims.<name>`, `client_ip`, `header.<name>` or `route`.
    pub key: String,
    /// `N/s`, `N/min` or `N/h`.
    pub rate: String,
    /// Requests a key may send at once after being idle; default: the rate's N.
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub scope: LimitScope,
    #[serde(default)]
    pub mode: LimitMode,
    /// Applied before credentials are verified and the policy runs (a flood by `client_ip` or
    /// a header costs no JWT work); such a limit counts every request, refused or not.
    #[serde(default)]
    pub before_auth: bool,
}

/// Where a limit's counts live.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// This gateway's own.
    #[default]
    Local,
    /// Shared by the fleet through a quota store (not in this build: refused).
    Global,
}

/// What a limit does past its rate.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    /// 429.
    #[default]
    Enforce,
    /// Counted (and logged) as refused, never refused.
    Shadow,
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
    /// Which failures are tried again, how often, within what budget (`crate::resilience`).
    #[serde(default)]
    pub retries: Option<RetriesSpec>,
    /// Passive outlier ejection of failing targets.
    #[serde(default)]
    pub outlier: Option<OutlierSpec>,
    /// Requests in flight to this upstream at once, per gateway; default 1024.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests that may wait for one of `max_connections`; default 1024.
    #[serde(default)]
    pub max_pending: Option<u32>,
    /// How long a request may wait; default 1s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub pending_timeout: Option<Duration>,
}

/// `upstreams.<name>.retries`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesSpec {
    /// Tries in all, the first included; default 2.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// `connect_failure`, `reset`, `refused_stream`, `"502"`, `"503"`, `"504"`; default the first three.
    #[serde(default)]
    pub on: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
}

/// `upstreams.<name>.retries.budget`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Retries as a share of requests, over the last 10 s; default 0.2.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Retries a second allowed whatever the ratio; default 10.
    #[serde(default)]
    pub min_per_second: Option<u32>,
}

/// `upstreams.<name>.outlier`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    /// Failures in a row that eject a target; default 5, 0 turns ejection off.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length, doubled with each repeat (at most 10×); default 30s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub base_ejection: Option<Duration>,
    /// The largest share of the targets ejected at once; default 0.5.
    #[serde(default)]
    pub max_ejected: Option<f64>,
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
    #[serde(default = "on")]
    pub verify: bool,
    /// A client certificate (PEM chain) and its key, for upstreams that require mTLS.
    #[serde(default)]
    pub client_cert_file: Option<String>,
    #[serde(default)]
    pub client_key_file: Option<String>,
}

/// `true`, for a key that is on unless turned off.
fn on() -> bool {
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
    /// The `rate_limits` that apply to this route, by name.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Retries the upstream's policy allows may repeat a request of any method once it reached a
    /// target (its backend makes POST and PATCH safe to repeat, by an idempotency key say);
    /// default false: only idempotent methods.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// The headers the gateway adds for this route's upstream; each is added unless turned off.
    #[serde(default)]
    pub upstream_headers: UpstreamHeaders,
}

/// `routes[].upstream_headers`: what the gateway adds to a request for the upstream. A header
/// turned off is not added: an untrusted client's forwarding headers are still removed (they
/// are claims), while a client's `x-request-id` or `traceparent` passes as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHeaders {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, and a trusted proxy's `Forwarded` and
    /// `X-Real-IP` extended: the policy sees them as the upstream will.
    #[serde(default = "on")]
    pub forwarding: bool,
    /// `x-request-id`, the gateway's id of the request (the response carries it either way).
    #[serde(default = "on")]
    pub request_id: bool,
    /// `traceparent`, W3C trace context with the gateway's span.
    #[serde(default = "on")]
    pub traceparent: bool,
}

impl Default for UpstreamHeaders {
    fn default() -> Self {
        UpstreamHeaders { forwarding: true, request_id: true, traceparent: true }
    }
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
