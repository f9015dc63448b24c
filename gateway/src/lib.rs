//! The data plane: a Pingora reverse proxy that routes and authorizes every request from a
//! locally compiled policy bundle, and never waits on the control plane.

pub mod activation;
pub mod admin;
pub mod admission;
pub mod cache;
/// Request canonicalization lives beside the input it feeds, shared with the load tests' policy service.
pub use policy_bundles::canon;
pub mod config;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod served;
pub mod state;
pub mod sync;

use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub use activation::boot_from_cache;
pub use config::Config;
pub use state::{Gateway, StartError};

/// Builds the Pingora server: proxy listener, admin listener and health checks, with the
/// configured bundle already active. Fails if the bundle cannot be activated.
pub fn build(config: Config) -> Result<Server, StartError> {
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

    let health = background_service("health checks", health::HealthChecks { gateway: gateway.clone() });

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(health);
    if let Some(poll) = poll {
        let (syncer, reporter) = sync::Syncer::new(gateway, poll, config.instance.clone())?;
        server.add_service(background_service("bundle sync", syncer));
        server.add_service(background_service("status reports", reporter));
    }
    Ok(server)
}
