//! The data plane: a Pingora reverse proxy that routes and authorizes every request from a
//! locally compiled policy bundle, and never waits on the control plane.

pub mod access_log;
pub mod activation;
pub mod admin;
pub mod admission;
pub mod cache;
/// Request canonicalization lives beside the input it feeds, shared with the load tests' policy service.
pub use policy_bundles::canon;
pub mod config;
pub mod connections;
pub mod decision_log;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod served;
pub mod state;
pub mod sync;
pub mod tls;
pub mod trace;
pub mod upgrade;
pub mod ws_frames;

use std::sync::Arc;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub use activation::boot_from_cache;
pub use config::Config;
pub use state::{Gateway, StartError};

/// How the process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Binds its listeners.
    Fresh,
    /// Takes the listeners of the running gateway (`--upgrade`, see [`upgrade`]).
    Upgrade,
}

/// A built gateway: its Pingora server, and what is finished once the server is done.
pub struct Built {
    pub server: Server,
    gateway: Arc<Gateway>,
}

impl Built {
    /// Serves until told to stop (`SIGTERM`, `SIGINT`, or `SIGQUIT` once a new process took
    /// the listeners), in-flight requests drained; then finishes the decision log (a last send,
    /// the spool) before returning.
    pub fn run(self) {
        let Built { server, gateway } = self;
        server.run(pingora::server::RunArgs::default());
        if let Some(logs) = gateway.decision_logs.get() {
            logs.finish();
        }
    }
}

/// Builds the Pingora server: proxy listener, admin listener and health checks, with the
/// configured bundle already active. Fails if the bundle cannot be activated, and, taking over
/// from a running gateway, before that gateway is touched if there is nothing to serve.
pub fn build(config: Config, start: Start) -> Result<Built, StartError> {
    // Every policy evaluation is bounded in wall-clock time; past the bound it errors (deny).
    policy_bundles::set_evaluation_time_limit(config.policy_timeout);
    policy_bundles::snapshot::set_decision_cache_entries(config.decision_cache_entries);
    let gateway = Arc::new(Gateway::new(config.clone())?);
    let poll = match &config.bundle.source {
        config::Source::File(path) => {
            gateway
                .activate_path(path)
                .map_err(|source| StartError::Activation { path: path.display().to_string(), source })?;
            None
        }
        config::Source::Poll(poll) => {
            boot_from_cache(&gateway);
            Some(poll.clone())
        }
    };
    if start == Start::Upgrade && gateway.active().is_none() {
        return Err(upgrade::UpgradeError::NothingToServe.into());
    }
    let conf = ServerConf {
        threads: config.threads,
        // After it stops accepting, the old process waits this long before its runtimes are shut
        // down, which drops every task still running: the requests in flight get 2 s to finish
        // (with 0, one in about 5,000 was reset in the upgrade test).
        grace_period_seconds: Some(2),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: config.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade: start == Start::Upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);

    let mut app =
        pingora::proxy::HttpProxy::new(proxy::Proxy { gateway: gateway.clone() }, server.configuration.clone());
    app.handle_init_modules();
    let limits = &config.limits;
    let mut options = app.server_options.take().unwrap_or_default();
    options.h2c = config.h2c;
    options.h2_idle_timeout = Some(limits.keepalive_timeout).filter(|t| !t.is_zero());
    app.server_options = Some(options);
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    app.h2_options = Some(h2);
    let m = &gateway.metrics;
    let heads = connections::HeadLimits {
        header_timeout: limits.header_timeout,
        keepalive_timeout: limits.keepalive_timeout,
        max_header_bytes: limits.max_header_bytes,
        timed_out: m.connections_closed.with_label_values(&["header_timeout"]),
        too_large: m.connections_closed.with_label_values(&["header_too_large"]),
    };
    let bounded = connections::Bounded::new(
        app,
        config.limits.max_connections,
        m.connections.clone(),
        m.connections_refused.clone(),
        heads,
    );
    let mut proxy = Service::new("proxy".to_string(), bounded);
    let tls = listeners(&mut proxy, &config)?;
    if let Some(tls) = &tls {
        tls.export_expiry(&gateway.metrics);
        *gateway.tls.lock().map_err(|_| StartError::Poisoned)? = Some(tls.clone());
    }

    let mut admin = Service::new("admin".to_string(), admin::Admin { gateway: gateway.clone() });
    admin.add_tcp(&config.admin.to_string());
    admin.threads = Some(1);

    let health = background_service("health checks", health::HealthChecks { gateway: gateway.clone() });

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(health);
    server.add_service(background_service("memory purge", memory::Purge));
    if let Some(tls) = tls {
        let reloader = tls::Reloader { tls, gateway: gateway.clone() };
        server.add_service(background_service("certificate reload", reloader));
    }
    if let Some(poll) = poll {
        let (syncer, reporter) = sync::Syncer::new(gateway.clone(), poll, config.instance.clone())?;
        server.add_service(background_service("bundle sync", syncer));
        server.add_service(background_service("status reports", reporter));
    }
    if let Some(a) = &config.access_log {
        let log = access_log::AccessLog::start(a.sink.clone(), a.queue, gateway.metrics.access_log_dropped.clone())
            .map_err(StartError::AccessLog)?;
        let reopen = access_log::Reopen { flag: log.reopen_flag() };
        server.add_service(background_service("access log reopen", reopen));
        let _ = gateway.access_log.set(log);
    }
    if let Some(d) = &config.decision_logs {
        let logs = decision_log::DecisionLogs::start(
            d.clone(),
            config.instance.clone(),
            gateway.metrics.decision_logs.clone(),
        )
        .map_err(StartError::DecisionLogs)?;
        let _ = gateway.decision_logs.set(logs);
    }
    let phases = upgrade::PhaseWatch {
        phases: gateway.phases.clone(),
        watch: std::sync::Mutex::new(Some(server.watch_execution_phase())),
    };
    server.add_service(background_service("execution phase", phases));
    // Everything is checked and the bundle active: only now is a running gateway asked to hand over.
    if start == Start::Upgrade {
        let pid = upgrade::ask_to_hand_over(&config.pid_file)?;
        tracing::info!(pid, sock = %config.upgrade_sock.display(), "asked the running gateway to hand over its listeners");
    }
    server.bootstrap();
    upgrade::write_pid(&config.pid_file)?;
    upgrade::notify_systemd();
    Ok(Built { server, gateway })
}

/// The proxy's listeners: `listen` (TLS when `tls` is set, with h2 and http/1.1 by ALPN) and
/// `plaintext_listen` beside it. Returns the TLS state, its certificates loaded and checked.
fn listeners<A: pingora::apps::ServerApp + Send + Sync + 'static>(
    proxy: &mut Service<A>,
    config: &Config,
) -> Result<Option<Arc<tls::Tls>>, StartError> {
    let Some(tls_config) = &config.tls else {
        proxy.add_listener(plain_listener(&config.listen.to_string()));
        return Ok(None);
    };
    let tls = Arc::new(tls::Tls::load(tls_config)?);
    let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(tls::Handshake(tls.clone())))
        .map_err(|e| StartError::Listener(e.to_string()))?;
    settings.set_cert_resolver(Arc::new(tls::Resolver(tls.clone())));
    settings.enable_h2();
    let buffers = L4BufferSettings::default().read(TLS_READ_BUFFER);
    proxy.add_listener(ListenerConfig::tcp(config.listen.to_string()).tls(settings).l4_buffer(buffers));
    if let Some(plain) = config.plaintext_listen {
        proxy.add_listener(plain_listener(&plain.to_string()));
    }
    Ok(Some(tls))
}

/// Each connection's socket read buffer. Pingora's default is 64 KiB, allocated and zeroed
/// for every connection, idle or not: more than half of what a held connection cost. On
/// plaintext 4 KiB is what the HTTP/1 layer reads a head into anyway (a larger read, a body's,
/// bypasses it); over TLS 16 KiB holds a whole record.
const READ_BUFFER: usize = 4 << 10;
const TLS_READ_BUFFER: usize = 16 << 10;

fn plain_listener(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(READ_BUFFER))
}
