//! The data plane: a Pingora reverse proxy that routes and authorizes every request from a
//! locally compiled policy bundle, and never waits on the control plane.
//!
//! * [`proxy`]: the request's phases (canonical request, decision, forwarding, the gateway's own
//!   answers); [`admission`] and [`connections`] bound what clients may hold.
//! * [`active`]: the one shared state, the active bundle behind an `ArcSwap` and its
//!   [`sync_status`]; [`activation`]: how bytes become that bundle (digest, budget, signature,
//!   compile, swap, persist to [`persisted`]); [`sync`]: the transport that fetches them.
//! * [`admin`], [`metrics`], [`access_log`], [`decision_log`] ([`json_line`] writes both logs),
//!   [`revision_health`]: what operators and the control plane see.
//! * [`config`], [`tls`], [`pool`] and [`health_checks`] (upstreams), [`upgrade`], [`heap_purge`].

pub mod access_log;
pub mod activation;
pub mod active;
pub mod admin;
pub mod admission;
pub mod clock;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod decision_log;
pub mod health_checks;
pub mod heap_purge;
pub mod json_line;
pub mod limiter;
pub mod metrics;
pub mod per_ip;
pub mod persisted;
pub mod pool;
pub mod proxy;
pub mod quota;
pub mod quota_store;
pub mod rate_limit;
pub mod revision_health;
pub mod sync;
pub mod sync_status;
pub mod tls;
pub mod trace;
pub mod upgrade;
pub mod upstream_guard;
pub mod ws_frames;

use std::sync::Arc;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub use activation::Activator;
pub use active::{Active, Gateway};
pub use config::Config;

use metrics::Metrics;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    SigningKey(#[from] activation::KeyError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP client for bundle sources: {0}")]
    Client(#[from] reqwest::Error),
    #[error("`tls.certificates`: {0}")]
    Certificate(#[from] tls::CertError),
    #[error("listener: {0}")]
    Listener(String),
    #[error("`access_log`: {0}")]
    AccessLog(std::io::Error),
    #[error("`decision_logs`: cannot start the shipper: {0}")]
    DecisionLogs(std::io::Error),
    #[error("upgrade: {0}")]
    Upgrade(#[from] upgrade::UpgradeError),
    #[error("`quota_store`: {0}")]
    QuotaStore(#[from] quota_store::StoreError),
    #[error("cannot activate {path}: {source}")]
    Activation { path: String, source: activation::ActivationError },
}

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
    decision_logs: Option<Arc<decision_log::DecisionLogs>>,
}

impl Built {
    /// Serves until told to stop (`SIGTERM`, `SIGINT`, or `SIGQUIT` once a new process took
    /// the listeners), in-flight requests drained; then finishes the decision log (a last send,
    /// the spool) before returning.
    pub fn run(self) {
        let Built { server, decision_logs } = self;
        server.run(pingora::server::RunArgs::default());
        if let Some(logs) = decision_logs {
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
    let (gateway, metrics, activator) = state(&config)?;
    let quotas = activator.quotas();
    let poll = match &config.bundle.source {
        config::Source::File(path) => {
            activator
                .activate_path(path)
                .map_err(|source| StartError::Activation { path: path.display().to_string(), source })?;
            None
        }
        config::Source::Poll(poll) => {
            activator.boot_from_persisted();
            Some(poll.clone())
        }
    };
    if start == Start::Upgrade && !gateway.is_active() {
        return Err(upgrade::UpgradeError::NothingToServe.into());
    }
    let mut server = server(&config, start);

    let (access_log, decision_logs) = logs(&config, &metrics, &mut server)?;
    let proxy = proxy::Proxy {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        admission: admission::Admission::new(config.limits, metrics.in_flight.clone()),
        requests: config.requests.clone(),
        limits: config.limits,
        shadow_sample: config.shadow_sample,
        access_log,
        decision_logs: decision_logs.clone(),
    };
    let (service, tls) = proxy_service(proxy, &config, &metrics, &server)?;
    let phases = Arc::new(upgrade::Phases::default());
    let admin = admin::Admin {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        bundle_name: config.bundle.name.clone(),
        phases: phases.clone(),
        tls: tls.clone(),
        quotas: quotas.as_ref().map(|q| q.fleet.clone()),
    };
    server.add_service(service);
    server.add_service(admin_service(admin, &config));
    server.add_service(background_service("health checks", health_checks::HealthChecks { gateway: gateway.clone() }));
    server.add_service(background_service("memory purge", heap_purge::Purge));
    if let Some(quotas) = quotas {
        server.add_service(background_service("quota exchanges", quota::Exchanges(quotas)));
    }
    if let Some(tls) = tls {
        let reloader = tls::Reloader { tls, metrics: metrics.clone() };
        server.add_service(background_service("certificate reload", reloader));
    }
    if let Some(poll) = poll {
        let on_bundle: sync::OnBundle = Arc::new(move |url, bytes, etag| activator.activate_download(url, bytes, etag));
        let (syncer, reporter) =
            sync::Syncer::new(gateway, metrics, on_bundle, &config.bundle, poll, config.instance.clone())?;
        if let Some(timer) = syncer.report_timer() {
            server.add_service(background_service("status report timer", timer));
        }
        server.add_service(background_service("bundle sync", syncer));
        server.add_service(background_service("status reports", reporter));
    }
    let phases = upgrade::PhaseWatch { phases, watch: std::sync::Mutex::new(Some(server.watch_execution_phase())) };
    server.add_service(background_service("execution phase", phases));
    // Everything is checked and the bundle active: only now is a running gateway asked to hand over.
    if start == Start::Upgrade {
        let pid = upgrade::ask_to_hand_over(&config.pid_file)?;
        tracing::info!(pid, sock = %config.upgrade_sock.display(), "asked the running gateway to hand over its listeners");
    }
    server.bootstrap();
    upgrade::write_pid(&config.pid_file)?;
    upgrade::notify_systemd();
    Ok(Built { server, decision_logs })
}

/// The Pingora server: its worker threads, the upgrade socket, and how long a drain may take.
fn server(config: &Config, start: Start) -> Server {
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
    Server::new_with_opt_and_conf(Some(opt), conf)
}

/// The admin listener, on one thread of its own so it answers when the proxy is busy.
fn admin_service(admin: admin::Admin, config: &Config) -> Service<admin::Admin> {
    let mut service = Service::new("admin".to_string(), admin);
    service.add_tcp(&config.admin.to_string());
    service.threads = Some(1);
    service
}

/// The gateway's shared state, its metrics and its activation pipeline, nothing active yet.
pub fn state(config: &Config) -> Result<(Arc<Gateway>, Arc<Metrics>, Activator), StartError> {
    let local = matches!(config.bundle.source, config::Source::File(_));
    let gateway = Arc::new(Gateway::new(sync_status::SyncStatus::new(local, config.bundle.max_staleness)));
    let metrics = Arc::new(Metrics::new()?);
    let quotas = match &config.quota_store {
        Some(q) => Some(Arc::new(quota::Quotas::new(q, &config.bundle.name, &config.instance, &metrics)?)),
        None => None,
    };
    let activator = Activator::new(config, gateway.clone(), metrics.clone(), quotas)?;
    Ok((gateway, metrics, activator))
}

/// The access log and the decision log, when configured, started.
fn logs(
    config: &Config,
    metrics: &Metrics,
    server: &mut Server,
) -> Result<(Option<access_log::AccessLog>, Option<Arc<decision_log::DecisionLogs>>), StartError> {
    let access_log = match &config.access_log {
        None => None,
        Some(a) => {
            let log = access_log::AccessLog::start(a.sink.clone(), a.queue, metrics.access_log_dropped.clone())
                .map_err(StartError::AccessLog)?;
            let reopen = access_log::Reopen { flag: log.reopen_flag() };
            server.add_service(background_service("access log reopen", reopen));
            Some(log)
        }
    };
    let decision_logs = match &config.decision_logs {
        None => None,
        Some(d) => Some(Arc::new(
            decision_log::DecisionLogs::start(d.clone(), config.instance.clone(), metrics.decision_logs.clone())
                .map_err(StartError::DecisionLogs)?,
        )),
    };
    Ok((access_log, decision_logs))
}

/// The proxy as a Pingora service: HTTP options from the config's limits, the connection bound
/// and header deadlines around it, and its listeners. Returns the TLS state when `tls` is set.
fn proxy_service(
    proxy: proxy::Proxy,
    config: &Config,
    metrics: &Metrics,
    server: &Server,
) -> Result<(Service<impl pingora::apps::ServerApp + Send + Sync + 'static>, Option<Arc<tls::Tls>>), StartError> {
    let mut app = pingora::proxy::HttpProxy::new(proxy, server.configuration.clone());
    app.handle_init_modules();
    let limits = &config.limits;
    let mut options = app.server_options.take().unwrap_or_default();
    options.h2c = config.h2c;
    options.h2_idle_timeout = Some(limits.keepalive_timeout).filter(|t| !t.is_zero());
    app.server_options = Some(options);
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    app.h2_options = Some(h2);
    let heads = connections::HeadLimits {
        header_timeout: limits.header_timeout,
        keepalive_timeout: limits.keepalive_timeout,
        max_header_bytes: limits.max_header_bytes,
        timed_out: metrics.connections_closed.with_label_values(&["header_timeout"]),
        too_large: metrics.connections_closed.with_label_values(&["header_too_large"]),
    };
    let mut bounded = connections::Bounded::new(
        app,
        limits.max_connections,
        metrics.connections.clone(),
        metrics.connections_refused.clone(),
        heads,
    );
    if limits.max_connections_per_ip > 0 {
        let refused = metrics.connections_per_ip_refused.clone();
        bounded.per_ip = Some(per_ip::PerIp::new(limits.max_connections_per_ip, config.requests.clone(), refused));
    }
    let mut service = Service::new("proxy".to_string(), bounded);
    let tls = listeners(&mut service, config)?;
    if let Some(tls) = &tls {
        tls.export_expiry(metrics);
    }
    Ok((service, tls))
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
    tracing::info!(provider = crypto::provider_name(), "TLS crypto provider");
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
