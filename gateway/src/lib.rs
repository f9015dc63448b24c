//! The data plane: a Pingora reverse proxy that routes and authorizes every request from a
//! locally compiled policy bundle, and never waits on the control plane.

pub mod admin;
pub mod admission;
pub mod cache;
/// Request canonicalization lives beside the input it feeds, shared with the load tests' policy service.
pub use policy_bundles::canon;
pub mod config;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod served;
pub mod state;
pub mod sync;

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
    policy_bundles::set_evaluation_time_limit(config.policy_timeout);
    policy_bundles::snapshot::set_decision_cache_entries(config.decision_cache_entries);
    let gateway = Arc::new(Gateway::new(config.clone())?);
    let poll = match &config.bundle.source {
        config::Source::File(path) => {
            gateway.activate_path(path).map_err(|e| anyhow::anyhow!("cannot activate {}: {e}", path.display()))?;
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

/// Activates the persisted last-known-good bundle, verified as if it were fetched, before any
/// network call. A missing, corrupt or refused cache is logged and skipped, never fatal.
pub fn boot_from_cache(gateway: &Gateway) {
    let Some(dir) = &gateway.config.bundle.cache_dir else { return };
    match cache::load(dir, &gateway.config.bundle.name) {
        Ok(None) => tracing::info!(cache_dir = %dir.display(), "no persisted bundle; waiting for a source"),
        Err(e) => {
            tracing::warn!(error = %e, "persisted bundle unusable; skipping it");
            gateway.metrics.activation_failures.with_label_values(&["cache"]).inc();
            gateway.record_error(format!("cache: {e}"));
        }
        Ok(Some(cached)) => match gateway.activate_bytes(
            &cached.bytes,
            Some(&cached.meta.digest),
            "cache".into(),
            cached.meta.etag.clone().or_else(|| Some(format!("\"{}\"", cached.meta.digest))),
        ) {
            Ok(active) => {
                tracing::info!(bundle.revision = %active.info.revision, "serving the persisted last-known-good bundle");
                gateway.last_confirmed_ms.store(cached.meta.fetched_at * 1000, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut s) = gateway.sync.lock() {
                    s.source = Some("cache".into());
                }
            }
            Err(e) => gateway.record_failure(&e),
        },
    }
}
