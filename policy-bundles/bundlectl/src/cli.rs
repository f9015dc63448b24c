//! The command line: every command, its arguments and what the exit status means.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// What `bundlectl`'s exit status means: shown under `--help` and in docs/src/reference/bundlectl.md.
pub const EXIT_CODES: &str = "\
Exit status:
  0  success (for `bundlectl diff`, whether or not the bundles differ; for `bundlectl eval`,
     the gateway would forward the request: allowed, or its rule failed on a fail_open route)
  1  `bundlectl test` ran and a test or decision case failed, or `bundlectl replay` found more
     changed decisions than --max-changed
  2  usage error (bad or missing arguments), I/O error (a file that cannot be read or written),
     invalid bundle (does not compile, over budget), or an error from or reaching the server
  3  `bundlectl eval`: the gateway would answer the request itself, not forward it (a deny, a
     401 for the bearer token, 404 for no route, 400 for a request it refuses, 413)";

#[derive(Parser)]
#[command(name = "bundlectl", version, about = "Build, test, sign and publish policy bundles", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Show the rollout of a bundle.
    Status {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List a bundle's rollouts, newest first, with how each ended and why.
    List {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args, Clone)]
pub struct Remote {
    /// The control-api base URL.
    #[arg(long, env = "BUNDLECTL_SERVER", default_value = "http://127.0.0.1:8181")]
    pub server: String,
    /// Bearer token (publish scope to push or roll back, logs scope for `logs`, read scope for
    /// the rest).
    #[arg(long, env = "BUNDLECTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args, Clone)]
pub struct Signer {
    /// Sign with this private key (PEM); writes `.signatures.json` into the bundle.
    #[arg(long = "sign-key", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// RS256, ES256 or EdDSA.
    #[arg(long = "sign-alg", default_value = "ES256")]
    pub alg: String,
    /// The key id gateways know the public key by (`bundle.signing.keys[].id`).
    #[arg(long = "sign-kid", default_value = "default")]
    pub kid: String,
    /// The bundle name the signature binds to (`metadata.gateway.bundle`): gateways with
    /// `signing.required` refuse it under any other name. Default: `push`'s `--name`, else `main`.
    #[arg(long = "sign-bundle")]
    pub bundle: Option<String>,
    /// The signed sequence (`metadata.gateway.sequence`); gateways refuse one lower than the
    /// highest they have activated. Default: the Unix time of signing, so that every later
    /// signature (a rollback's included) is higher.
    #[arg(long = "sign-sequence")]
    pub sequence: Option<u64>,
    /// How long the signature is good for (`30d`, `12h`): `metadata.gateway.expires`. Past it,
    /// gateways refuse the bundle as new and alert while it serves. Default: no expiry.
    #[arg(long = "sign-expires", value_name = "DURATION")]
    pub expires: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Build a bundle directory into a deterministic .tar.gz, after checking it compiles.
    Build {
        dir: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Revision written into `.manifest`; default: the one the manifest names, else the first
        /// 12 hex digits of the content hash.
        #[arg(long)]
        revision: Option<String>,
        #[command(flatten)]
        signer: Signer,
    },
    /// Check that a bundle (directory or .tar.gz) compiles exactly as the gateway would, within
    /// the default budget (measured in a child process, as control-api and the gateway do), and
    /// print what it costs: sizes, estimated compiled size, compile time.
    Check { path: PathBuf },
    /// Run a bundle's Rego `test_*` rules and its decision cases (`tests/cases.yaml`,
    /// `tests/**/*.cases.yaml`); exits non-zero when any fails.
    Test {
        path: PathBuf,
        /// Also report which lines the tests and cases evaluated, as `opa test --coverage` does:
        /// OPA's JSON on stdout (the test results go to stderr), a summary per file on stderr.
        #[arg(long)]
        coverage: bool,
        /// With --coverage: `json` (OPA's report) or `pretty` (the summary per file on stdout).
        #[arg(long, value_parser = ["json", "pretty"], default_value = "json", requires = "coverage")]
        format: String,
    },
    /// Sign a bundle .tar.gz (OPA's `.signatures.json` format).
    Sign {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        signer: Signer,
    },
    /// Publish a bundle (.tar.gz, or a directory built on the fly) as a new revision.
    Push {
        path: PathBuf,
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        /// Revision when building a directory (default: the manifest's, else the content hash).
        #[arg(long)]
        revision: Option<String>,
        /// Publish past the growth guard (a bundle much larger than the active one, or one that
        /// drops many routes); needs --reason, which the revision history keeps.
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why the publish is forced.
        #[arg(long, requires = "force")]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        signer: Signer,
    },
    /// List a bundle's revisions, newest first.
    Revisions {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Where a staged rollout stands: the revision each cohort is served, the latest rollout's
    /// state and why it ended.
    Rollout {
        #[command(subcommand)]
        what: RolloutCmd,
    },
    /// Make an earlier revision active again. With `--sign-key` (for gateways that require
    /// signatures), the revision's content is signed again with a higher sequence and published
    /// as revision `<to>-resigned-<sequence>`: gateways refuse the old signature as a replay.
    Rollback {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[arg(long = "to")]
        to: String,
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        signer: Signer,
    },
    /// What changed between two bundles: routes, upstreams and other `data.gateway` settings
    /// field by field, Rego modules as unified diffs, data documents by size. Each operand is a
    /// bundle directory or .tar.gz where such a path exists, else a revision of `--name` fetched
    /// from `--server` (read scope). Exits 0 whether or not they differ, as `git diff` does
    /// without `--exit-code`.
    Diff {
        /// The old bundle: a directory, a .tar.gz or a revision name.
        old: PathBuf,
        /// The new bundle: a directory, a .tar.gz or a revision name.
        new: PathBuf,
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        /// Print the diff as JSON (routes, upstreams, settings, rego, data).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Evaluate a request described on the command line exactly as the gateway would: request
    /// canonicalization, route matching, bearer-token verification against the bundle's `jwt`,
    /// the route's rule, the decision. Prints the route, the decision (or what the gateway
    /// answers without asking the rule) and how long the rule took. Exits 0 when the gateway
    /// would forward the request, 3 when it would answer it itself (see Exit status).
    #[command(after_help = EXIT_CODES)]
    Eval(EvalArgs),
    /// Every gateway that reported: its revision, staleness and last report.
    Fleet {
        #[command(flatten)]
        remote: Remote,
    },
    /// A bundle's decision-log events, newest first, one line each (timestamp, decision, status,
    /// route, method, path, decision id, reason); needs a token of scope `logs`.
    Logs {
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        #[command(flatten)]
        filter: LogFilter,
        /// Print the events as control-api sent them (a JSON array), not one line each.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-decide logged requests with a candidate bundle (directory or .tar.gz) exactly as a
    /// gateway would, and list what would change: allow→deny, deny→allow, deny status, headers,
    /// rule errors, routing; counts per route and examples. Needs a token of scope `logs`.
    /// Events whose masked or erased input the candidate's rule may read are reported as not
    /// replayable. The logged token claims are used as they are: the candidate's trust roots
    /// cannot check them again.
    Replay {
        candidate: PathBuf,
        #[arg(long, env = "BUNDLECTL_NAME", default_value = "main")]
        name: String,
        /// Logged decisions at or after this time: RFC 3339, or a span ago (30m, 1h, 7d).
        #[arg(long, default_value = "1h")]
        since: String,
        /// Only the decisions logged on this route.
        #[arg(long)]
        route: Option<String>,
        /// Exit with status 1 when more than this many decisions would change.
        #[arg(long)]
        max_changed: Option<usize>,
        /// At most this many logged decisions, newest first.
        #[arg(long, default_value_t = 100_000)]
        limit: usize,
        /// Print the whole report as JSON (every change and every event not replayable).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args, Clone, Default)]
pub struct LogFilter {
    /// Only events of this route.
    #[arg(long)]
    pub route: Option<String>,
    /// Only these decisions.
    #[arg(long, value_parser = ["allow", "deny", "error"])]
    pub decision: Option<String>,
    /// Only events decided by this bundle revision.
    #[arg(long)]
    pub revision: Option<String>,
    /// Only events at or after this time: RFC 3339, or a span ago (30m, 1h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events at or before this time: RFC 3339, or a span ago.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many events (control-api's default 1000, at most 10000).
    #[arg(long)]
    pub limit: Option<u32>,
}

/// `bundlectl eval`: the bundle and the request, as a client would send it.
#[derive(Args, Clone)]
pub struct EvalArgs {
    /// The bundle: a directory or a .tar.gz.
    pub bundle: PathBuf,
    /// The request method, as sent (a token: `GET`, `PURGE`).
    #[arg(long, short = 'X', default_value = "GET", value_parser = parse_method)]
    pub method: String,
    /// The request target: a path starting with `/`, with an optional `?query`, as sent (the
    /// gateway makes it canonical).
    #[arg(long, value_parser = parse_path)]
    pub path: String,
    /// A request header, `NAME: VALUE` (repeatable, in order). Without a `Host` header the
    /// request has `Host: localhost`.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The request body: a file, or `-` for stdin. The rule sees it only on a route with `body`.
    #[arg(long, value_name = "FILE|-")]
    pub body: Option<PathBuf>,
    /// The client's address (the gateway's peer; not a trusted proxy).
    #[arg(long, default_value = "127.0.0.1")]
    pub client_ip: std::net::IpAddr,
    /// The scheme the request came in on.
    #[arg(long, value_parser = ["http", "https"], default_value = "http")]
    pub scheme: String,
    /// The bound on one evaluation, as the gateway's `policy_timeout` (past it the rule fails).
    #[arg(long, value_name = "DURATION", default_value = "50ms")]
    pub policy_timeout: String,
    /// Also print the input document the rule saw (only what it reads, as the gateway builds it).
    #[arg(long)]
    pub input: bool,
    /// Print everything as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// A method is a token (RFC 9110 9.1).
fn parse_method(s: &str) -> Result<String, String> {
    if http_canon::is_token(s.as_bytes()) {
        Ok(s.to_owned())
    } else {
        Err(format!("`{}` is not a method: a method is a token (letters, digits, `!#$%&'*+-.^_`|~`)", s.escape_debug()))
    }
}

/// A request target in origin form: a path starting with `/`.
fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{}` does not start with `/`: give the path (and ?query) as sent, e.g. /orders/7",
            s.escape_debug()
        ))
    }
}

/// `NAME: VALUE`: the name a token (lower-cased, as HTTP/2 sends it), the value without the
/// spaces around it and without control characters but tab.
fn parse_header(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!("`{}` has no `:`: give a header as `NAME: VALUE`", s.escape_debug()));
    };
    if !http_canon::is_token(name.as_bytes()) {
        return Err(format!(
            "`{}` is not a header name: a token (letters, digits, `!#$%&'*+-.^_`|~`), no spaces before the `:`",
            name.escape_debug()
        ));
    }
    let value = value.trim_matches([' ', '\t']);
    if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!("the value of header `{name}` holds the control character {:?}", c));
    }
    Ok((name.to_ascii_lowercase(), value.to_owned()))
}
