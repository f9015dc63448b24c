//! The data plane: a Pingora reverse proxy that routes and authorizes every request from a
//! locally compiled policy bundle, and never waits on the control plane.

pub mod admin;
pub mod config;
pub mod health;
pub mod input;
pub mod metrics;
pub mod proxy;
pub mod state;

use std::num::NonZeroU32;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub use config::Config;
pub use state::Gateway;

/// Builds the Pingora server: proxy listener, admin listener and health checks, with the
/// configured bundle already active. Fails if the bundle cannot be activated.
pub fn build(config: Config) -> anyhow::Result<Server> {
    // Every policy evaluation is bounded in wall-clock time; past the bound it errors (deny).
    regorus::utils::limits::set_fallback_execution_timer_config(Some(regorus::utils::limits::ExecutionTimerConfig {
        limit: config.policy_timeout,
        check_interval: NonZeroU32::MIN.saturating_add(99),
    }));
    let gateway = Arc::new(Gateway::new(config.clone())?);
    gateway
        .activate_path(&config.bundle.file)
        .map_err(|e| anyhow::anyhow!("cannot activate {}: {e}", config.bundle.file.display()))?;

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, proxy::Proxy { gateway: gateway.clone() });
    proxy.add_tcp(&config.listen.to_string());

    let mut admin = Service::new("admin".to_string(), admin::Admin { gateway: gateway.clone() });
    admin.add_tcp(&config.admin.to_string());
    admin.threads = Some(1);

    let health = background_service("health checks", health::HealthChecks { gateway });

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(health);
    Ok(server)
}
