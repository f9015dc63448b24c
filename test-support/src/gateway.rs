//! A real `gateway` for tests and load runs, the one harness every suite starts it with: its
//! config written to a file ([`GatewayConfig`]: ports, threads, top-level keys, the `bundle:`
//! block), the process started the way the suite wants it ([`Launch`]: binary, environment,
//! outputs), and the running gateway ([`Gateway`]): readiness, restart, upgrade, `/status` and
//! `/metrics`.
//!
//! ```no_run
//! # use test_support::gateway::GatewayConfig;
//! # let (dir, bundle) = (std::path::Path::new("/tmp"), std::path::Path::new("/tmp/bundle"));
//! let gw = GatewayConfig::new(dir.join("gateway.yaml"))
//!     .top("limits: { max_in_flight: 2 }\n")
//!     .bundle_file(bundle)
//!     .start();
//! assert_eq!(test_support::http::get(&format!("{}/public/x", gw.base), &[]).status, 200);
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::http::get;
use crate::process::{free_port, free_port_outside_ephemeral, Launch, Output, Proc};
use crate::server::{Keys, ServerConfig};

/// How long [`Gateway::wait_ready`] waits.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// A gateway's config file, written as `listen`, `admin`, `threads`, the
/// [`top`](ServerConfig::top) keys, then the `bundle:` block last (so that
/// [`bundle_keys`](Self::bundle_keys) may end with more top-level keys).
pub type GatewayConfig = ServerConfig<GatewayKeys>;

/// A gateway's own keys: its ports and threads, and the `bundle:` block.
#[derive(Clone, Debug)]
pub struct GatewayKeys {
    listen: u16,
    admin: u16,
    threads: usize,
    tls: bool,
    bundle: String,
    /// `bundle.activation_nice` written for a polling gateway whose keys do not set it.
    activation_nice: Option<i32>,
}

impl Keys for GatewayKeys {
    const LOG_VAR: &'static str = "GATEWAY_LOG";

    fn yaml(&self, top: &str) -> String {
        let GatewayKeys { listen, admin, threads, tls: _, bundle, activation_nice } = self;
        let nice = match activation_nice {
            Some(n) if bundle.contains("\n  sources:") && !bundle.contains("activation_nice:") => {
                format!("  activation_nice: {n}\n")
            }
            _ => String::new(),
        };
        format!(
            "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nthreads: {threads}\n{top}bundle:\n{bundle}{nice}"
        )
    }
}

impl GatewayConfig {
    /// A config at `path`: ports free now (see [`free_port`]), two threads, no bundle yet. The
    /// process logs at `$TEST_GATEWAY_LOG` (default `error`) to the test's stderr.
    ///
    /// A polling gateway activates at its workers' priority (`activation_nice: 0`) unless its
    /// keys say otherwise or [`default_activation_priority`](Self::default_activation_priority)
    /// is called: a test run starts dozens of busy processes on two cores, where an activation
    /// 10 nicer than all of them gets a few hundredths of a core and takes seconds, past the
    /// timing bounds of tests that are about something else. The niceness itself is tested in
    /// `gateway::sync`, and what it does for serving by the fault suite's storm trials.
    pub fn new(path: impl Into<PathBuf>) -> GatewayConfig {
        let log = std::env::var("TEST_GATEWAY_LOG").unwrap_or_else(|_| "error".into());
        let keys = GatewayKeys {
            listen: free_port(),
            admin: free_port(),
            threads: 2,
            tls: false,
            bundle: String::new(),
            activation_nice: Some(0),
        };
        ServerConfig::with(path.into(), keys, Launch::new("gateway").stderr(Output::Inherit)).log(&log)
    }

    /// Ports below the ephemeral range ([`free_port_outside_ephemeral`]): for many gateways
    /// started at once, and for restarts that must find their ports again.
    pub fn ports_outside_ephemeral(mut self) -> GatewayConfig {
        (self.keys.listen, self.keys.admin) = (free_port_outside_ephemeral(), free_port_outside_ephemeral());
        self
    }

    /// Activations at the gateway's own default priority (`bundle.activation_nice` unset), as
    /// a benchmark or a latency trial measures them.
    pub fn default_activation_priority(mut self) -> GatewayConfig {
        self.keys.activation_nice = None;
        self
    }

    pub fn threads(mut self, threads: usize) -> GatewayConfig {
        self.keys.threads = threads;
        self
    }

    /// The proxy listener speaks TLS (the config's `tls:` keys are the caller's): the
    /// gateway's [`base`](Gateway::base) is `https://`.
    pub fn tls(mut self) -> GatewayConfig {
        self.keys.tls = true;
        self
    }

    /// The bundle `main` from a folder or file.
    pub fn bundle_file(mut self, bundle: &Path) -> GatewayConfig {
        self.keys.bundle = format!("  name: main\n  file: {}\n", bundle.display());
        self
    }

    /// The bundle `main` polled from `sources` (URLs).
    pub fn bundle_sources<S: AsRef<str>>(mut self, sources: &[S]) -> GatewayConfig {
        let list = sources.iter().map(|s| format!("\"{}\"", s.as_ref())).collect::<Vec<_>>().join(", ");
        self.keys.bundle = format!("  name: main\n  sources: [{list}]\n");
        self
    }

    /// More lines under `bundle:` (each indented by two spaces and ending in a newline).
    pub fn bundle_keys(mut self, yaml: &str) -> GatewayConfig {
        self.keys.bundle.push_str(&crate::yaml_lines(yaml));
        self
    }

    /// Writes the config and starts the gateway, without waiting for it.
    pub fn try_spawn(self) -> anyhow::Result<Gateway> {
        let config = self.try_write()?;
        let GatewayKeys { listen, admin, tls, .. } = self.keys;
        let scheme = if tls { "https" } else { "http" };
        let proc = self.launch.spawn([Path::new("--config"), config.as_path()])?;
        Ok(Gateway {
            proc,
            base: format!("{scheme}://127.0.0.1:{listen}"),
            admin: format!("http://127.0.0.1:{admin}"),
            config,
            listen,
            admin_port: admin,
            launch: self.launch,
        })
    }

    /// [`try_spawn`](Self::try_spawn); panics if the gateway cannot start.
    pub fn spawn(self) -> Gateway {
        self.try_spawn().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Writes the config, starts the gateway and waits until it is ready
    /// ([`Gateway::wait_ready`]).
    pub fn start(self) -> Gateway {
        let gw = self.spawn();
        gw.wait_ready();
        gw
    }
}

/// A running gateway. No `Drop` of its own: its [`Proc`] stops the process, and a test may
/// take the `proc` out (to watch an old process hand over to a new one).
pub struct Gateway {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT` (`https://` with [`GatewayConfig::tls`]): the proxy listener.
    pub base: String,
    /// `http://127.0.0.1:PORT`: the admin listener (`/readyz`, `/status`, `/metrics`).
    pub admin: String,
    /// The config file.
    pub config: PathBuf,
    listen: u16,
    admin_port: u16,
    launch: Launch,
}

impl Gateway {
    /// The proxy listener's `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.listen)
    }

    /// The admin listener's `127.0.0.1:PORT`.
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        get(&format!("{}/readyz", self.admin), &[]).status == 200
    }

    /// Whether the proxy listener accepts connections (a bare connect: no request is counted).
    fn accepts(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_ok()
    }

    /// Waits up to `limit` for `done`; an error at once, naming the config, if the process exits.
    fn try_wait(&self, what: &str, limit: Duration, done: impl Fn(&Gateway) -> bool) -> anyhow::Result<()> {
        let config = self.config.display();
        crate::wait::until(limit, &format!("the gateway of {config} {what}"), || match self.proc.exited() {
            Some(status) => Err(format!("the gateway of {config} exited before it {what}: {status}")),
            None => Ok(done(self)),
        })
        .map(|_| ())
        .map_err(anyhow::Error::msg)
    }

    /// Waits until `/readyz` answers 200 and the proxy port accepts connections; an error
    /// after `limit`, or at once if the process exits.
    pub fn try_wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        self.try_wait("to become ready", limit, |gw| gw.ready() && gw.accepts())
    }

    /// [`try_wait_ready`](Self::try_wait_ready) within [`READY_WITHIN`]; panics otherwise.
    pub fn wait_ready(&self) {
        self.try_wait_ready(READY_WITHIN).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until `/healthz` answers 200 (up, though perhaps without a bundle yet).
    pub fn try_wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        self.try_wait("to answer /healthz", limit, |gw| get(&format!("{}/healthz", gw.admin), &[]).status == 200)
    }

    /// Kills the process (SIGKILL) and starts another on the same config and ports; does not
    /// wait for it.
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc =
            self.launch.spawn([Path::new("--config"), self.config.as_path()]).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Starts a new process with `--upgrade` on the same config: it takes the listeners over
    /// from this one, which drains and exits by itself.
    pub fn spawn_upgrade(&self) -> Proc {
        let args = [Path::new("--upgrade"), Path::new("--config"), self.config.as_path()];
        self.launch.spawn(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Value {
        get(&format!("{}/status", self.admin), &[]).json()
    }

    /// The active bundle's revision ("" when there is none).
    pub fn revision(&self) -> String {
        self.status()["bundle"]["revision"].as_str().unwrap_or("").to_owned()
    }

    /// The value of a series (`name{label="value",...}`) on `/metrics`, if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        crate::metrics::metric(&format!("{}/metrics", self.admin), series)
    }

    /// The sum of `name` over the label sets that include `labels`; `None` when `/metrics`
    /// does not answer.
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        crate::metrics::Scrape::fetch(&format!("{}/metrics", self.admin)).map(|s| s.sum(name, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ports_threads_and_keys_then_the_bundle_block() {
        let c = GatewayConfig::new("/nowhere/gateway.yaml")
            .threads(4)
            .top("instance: gw-a")
            .bundle_sources(&["http://127.0.0.1:9"])
            .bundle_keys("  long_poll: 1s\n");
        let (listen, admin) = (c.keys.listen, c.keys.admin);
        assert_eq!(
            c.yaml(),
            format!(
                "listen: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nthreads: 4\ninstance: gw-a\nbundle:\n  name: main\n  sources: [\"http://127.0.0.1:9\"]\n  long_poll: 1s\n  activation_nice: 0\n"
            )
        );
        // Keys that set it, a benchmark's default priority, and a bundle file: nothing added.
        let own = c.clone().bundle_keys("  activation_nice: 5\n").yaml();
        assert_eq!(own.matches("activation_nice").count(), 1, "{own}");
        assert!(!c.clone().default_activation_priority().yaml().contains("activation_nice"));
        let file = GatewayConfig::new("/nowhere/gateway.yaml").bundle_file(Path::new("/b.tar.gz")).yaml();
        assert!(!file.contains("activation_nice"), "{file}");
    }
}
