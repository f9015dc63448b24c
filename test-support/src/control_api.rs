//! A real `control-api` for tests and load runs, the one harness every suite starts it with: its
//! config written to a file ([`ControlApiConfig`]: listener, store, top-level keys, tokens, each
//! token's hash from [`hash_token`]), the process started the way the suite wants it
//! ([`Launch`]), and the running control plane ([`ControlApi`]): its URL, restart, `/metrics`,
//! decision-log queries.
//!
//! The quick form for a test that only needs a sink or a source: [`ControlApi::start`], an
//! in-memory SQLite store with the tokens the test names, on an ephemeral port or one the test
//! chose (a sink that goes away and comes back on the same address).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::process::{Launch, Output, Proc};
use crate::server::{Keys, ServerConfig};

/// A token a test's control-api knows: name, scope (`publish`, `read`, `logs`) and secret.
pub type Token<'a> = (&'a str, &'a str, &'a str);

/// How long [`ControlApi::wait_healthy`] waits.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// The `sha256` a control-api config holds for `token`: SHA-256 of its bytes, lowercase hex (what
/// `control-api hash-token` prints).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A control-api's config file, written as `listen`, `store`, the
/// [`top`](ServerConfig::top) keys, then `tokens:`.
pub type ControlApiConfig = ServerConfig<ControlApiKeys>;

/// A control-api's own keys: listener, store and tokens.
#[derive(Clone, Debug)]
pub struct ControlApiKeys {
    listen: String,
    store: String,
    tokens: String,
}

impl Keys for ControlApiKeys {
    const LOG_VAR: &'static str = "CONTROL_API_LOG";

    fn yaml(&self, top: &str) -> String {
        let ControlApiKeys { listen, store, tokens } = self;
        let list = if tokens.is_empty() { " []\n" } else { "\n" };
        format!("listen: {listen}\nstore: {store}\n{top}tokens:{list}{tokens}")
    }
}

/// `$CONTROL_API_LOG` (default `warn`) to the test's stderr.
fn default_launch() -> Launch {
    let log = std::env::var(ControlApiKeys::LOG_VAR).unwrap_or_else(|_| "warn".into());
    Launch::new("control-api").env(ControlApiKeys::LOG_VAR, log).stderr(Output::Inherit)
}

impl ControlApiConfig {
    /// `dir/control-api.yaml`: any free port, an in-memory SQLite store, no tokens yet. The
    /// process logs at `$CONTROL_API_LOG` (default `warn`) to the test's stderr.
    pub fn new(dir: &Path) -> ControlApiConfig {
        let keys =
            ControlApiKeys { listen: "127.0.0.1:0".into(), store: "\"sqlite::memory:\"".into(), tokens: String::new() };
        ServerConfig::with(dir.join("control-api.yaml"), keys, default_launch())
    }

    /// `host:port` to listen on (`127.0.0.1:0`: any free port).
    pub fn listen(mut self, addr: &str) -> ControlApiConfig {
        self.keys.listen = addr.to_owned();
        self
    }

    /// The `store:` value as YAML (`sqlite://./data/control.db`, a quoted PostgreSQL URL...).
    pub fn store(mut self, yaml: &str) -> ControlApiConfig {
        self.keys.store = yaml.to_owned();
        self
    }

    /// A token: name, scope (`publish`, `read`, `logs`) and secret, stored as its hash.
    pub fn token(self, name: &str, scope: &str, secret: &str) -> ControlApiConfig {
        self.tokens_yaml(&format!("  - name: {name}\n    scope: {scope}\n    sha256: {}\n", hash_token(secret)))
    }

    /// Every token of `tokens`.
    pub fn tokens(self, tokens: &[Token]) -> ControlApiConfig {
        tokens.iter().fold(self, |c, (name, scope, secret)| c.token(name, scope, secret))
    }

    /// More token entries as YAML list items (for keys beyond name, scope and hash:
    /// `bundles`, `instance`).
    pub fn tokens_yaml(mut self, items: &str) -> ControlApiConfig {
        self.keys.tokens.push_str(&crate::yaml_lines(items));
        self
    }

    /// Writes the config, starts control-api and waits for its `listening on ADDR` line.
    pub fn try_start(self) -> anyhow::Result<ControlApi> {
        let config = self.try_write()?;
        ControlApi::try_run(&config, self.launch)
    }

    /// [`try_start`](Self::try_start); panics if control-api cannot start.
    pub fn start(self) -> ControlApi {
        self.try_start().unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// A running control-api. No `Drop` of its own: its [`Proc`] stops the process.
pub struct ControlApi {
    pub proc: Proc,
    /// `http://ADDR`, the address it printed.
    pub base: String,
    /// The config file.
    pub config: PathBuf,
    launch: Launch,
}

impl ControlApi {
    /// Starts one on an ephemeral port: an in-memory store and `tokens`.
    pub fn start(dir: &Path, tokens: &[Token]) -> ControlApi {
        Self::start_on(dir, "127.0.0.1:0", tokens)
    }

    /// Starts one on `listen` (`host:port`).
    pub fn start_on(dir: &Path, listen: &str, tokens: &[Token]) -> ControlApi {
        ControlApiConfig::new(dir).listen(listen).tokens(tokens).start()
    }

    /// Starts one on a config file written beforehand, launched as [`ControlApiConfig::new`] does.
    pub fn run(config: &Path) -> ControlApi {
        Self::try_run(config, default_launch()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn try_run(config: &Path, launch: Launch) -> anyhow::Result<ControlApi> {
        let (proc, addr) = launch.spawn_listening([Path::new("--config"), config])?;
        Ok(ControlApi { proc, base: format!("http://{addr}"), config: config.to_path_buf(), launch })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until `/healthz` answers 200; an error after `limit`, or at once if the process exits.
    pub fn try_wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let url = self.url("/healthz");
        crate::wait::until(limit, "control-api to answer /healthz", || match self.proc.exited() {
            Some(status) => Err(format!("control-api of {} exited: {status}", self.config.display())),
            None => Ok(crate::http::get(&url, &[]).status == 200),
        })
        .map(|_| ())
        .map_err(anyhow::Error::msg)
    }

    /// [`try_wait_healthy`](Self::try_wait_healthy) within [`HEALTHY_WITHIN`]; panics otherwise.
    pub fn wait_healthy(&self) {
        self.try_wait_healthy(HEALTHY_WITHIN).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Kills the process (SIGKILL): a crash, as far as the gateways can tell.
    pub fn kill9(&self) {
        self.proc.kill9();
    }

    /// Kills the process and starts another on the same config (same store; the same port
    /// when the config names one); returns once it answers `/healthz`.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let fresh = Self::try_run(&self.config, self.launch.clone()).unwrap_or_else(|e| panic!("{e:#}"));
        *self = fresh;
        self.wait_healthy();
    }

    /// The value of a series (`name{labels}` as rendered) on `/metrics`, if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        crate::metrics::metric(&self.url("/metrics"), series)
    }

    /// `GET /v1/logs?{query}` with a logs-scope `token`: the events, newest first.
    pub fn logs(&self, token: &str, query: &str) -> Vec<Value> {
        let auth = crate::http::bearer(token);
        let r = crate::http::get(&self.url(&format!("/v1/logs?{query}")), &[("authorization", auth.as_str())]);
        assert_eq!(r.status, 200, "GET /v1/logs?{query}: {}", r.text());
        match r.json() {
            Value::Array(events) => events,
            other => panic!("GET /v1/logs answered {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_tokens_as_control_api_expects() {
        // The vector control-api's own `hash-token` test pins.
        assert_eq!(hash_token("test"), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    }

    #[test]
    fn writes_listener_store_keys_and_hashed_tokens() {
        let dir = Path::new("/nowhere");
        let c = ControlApiConfig::new(dir)
            .store("sqlite://./x.db")
            .top("max_bundle_size: 8MiB")
            .token("ci", "publish", "test");
        assert_eq!(
            c.yaml(),
            "listen: 127.0.0.1:0\nstore: sqlite://./x.db\nmax_bundle_size: 8MiB\ntokens:\n  - name: ci\n    scope: publish\n    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
        );
        assert_eq!(ControlApiConfig::new(dir).yaml(), "listen: 127.0.0.1:0\nstore: \"sqlite::memory:\"\ntokens: []\n");
    }
}
