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
pub mod health;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod served;
pub mod state;
pub mod sync;
pub mod tls;
pub mod trace;
pub mod upgrade;

use std::sync::Arc;

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

/// Builds the Pingora server: proxy listener, admin listener and health checks, with the
/// configured bundle already active. Fails if the bundle cannot be activated, and, taking over
/// from a running gateway, before that gateway is touched if there is nothing to serve.
pub fn build(config: Config, start: Start) -> Result<Server, StartError> {
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
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: config.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade: start == Start::Upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);

    let mut app =
        pingora::proxy::HttpProxy::new(proxy::Proxy { gateway: gateway.clone() }, server.configuration.clone());
    app.handle_init_modules();
    if config.h2c {
        let mut options = app.server_options.take().unwrap_or_default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    let m = &gateway.metrics;
    let bounded = connections::Bounded::new(
        app,
        config.limits.max_connections,
        m.connections.clone(),
        m.connections_refused.clone(),
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
    Ok(server)
}

/// The proxy's listeners: `listen` (TLS when `tls` is set, with h2 and http/1.1 by ALPN) and
/// `plaintext_listen` beside it. Returns the TLS state, its certificates loaded and checked.
fn listeners<A: pingora::apps::ServerApp + Send + Sync + 'static>(
    proxy: &mut Service<A>,
    config: &Config,
) -> Result<Option<Arc<tls::Tls>>, StartError> {
    let Some(tls_config) = &config.tls else {
        proxy.add_tcp(&config.listen.to_string());
        return Ok(None);
    };
    let tls = Arc::new(tls::Tls::load(tls_config)?);
    let mut settings = pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(tls::Handshake(tls.clone())))
        .map_err(|e| StartError::Listener(e.to_string()))?;
    settings.set_cert_resolver(Arc::new(tls::Resolver(tls.clone())));
    settings.enable_h2();
    proxy.add_tls_with_settings(&config.listen.to_string(), None, settings);
    if let Some(plain) = config.plaintext_listen {
        proxy.add_tcp(&plain.to_string());
    }
    Ok(Some(tls))
}
