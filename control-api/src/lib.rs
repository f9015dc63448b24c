//! `control-api`: the control plane. It validates policy bundles by compiling them exactly as
//! the gateway does (and running their own tests), keeps every revision, serves the active one
//! with a strong ETag and long polls, rolls back, collects gateways' status reports, and takes
//! and serves their decision logs.
//!
//! * [`config`]: the YAML config, strictly parsed and validated.
//! * [`api`]: the HTTP API ([`app`] builds the router) and its one error type.
//! * [`auth`]: bearer tokens by SHA-256, publish, read and logs scopes, bundles a token may touch.
//! * [`store`]: one store over SQLite or PostgreSQL behind one trait, with versioned migrations.
//! * [`guard`]: the growth guard, comparing a publish with the active revision.
//! * [`hub`]: the active revision of each bundle in memory, and the channels long polls wait on.
//! * [`validate`]: the gateway's own loading and compiling code, plus the bundle's tests.
//! * [`logs`]: decision-log ingest (`POST /v1/logs`), query (`GET /v1/logs`) and retention.
//! * [`rollout`]: staged rollout to a canary cohort, judged from status reports, promoted or rolled back.
//! * [`metrics`]: every exported metric.

pub mod api;
pub mod auth;
pub mod config;
pub mod guard;
pub mod hub;
pub mod logs;
pub mod metrics;
pub mod rollout;
pub mod store;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use tokio::sync::mpsc;

pub use api::{app, ApiError, AppState};
pub use config::{Config, ConfigError};
use store::Change;

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store {location}: {source}")]
    Store { location: String, source: store::StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A control plane ready to serve: its store is open and migrated, its socket bound.
pub struct App {
    state: AppState,
    listener: tokio::net::TcpListener,
    changes: Option<mpsc::UnboundedReceiver<Change>>,
}

/// Opens the store (creating and migrating it as needed), subscribes to other replicas'
/// changes (PostgreSQL) and binds the listener.
pub async fn build(config: Config) -> Result<App, Error> {
    // A bundle's own Rego tests and decision cases run at publish: bound each evaluation so a
    // looping test cannot hold a blocking thread.
    policy_bundles::set_evaluation_time_limit(std::time::Duration::from_secs(2));
    let location = config.store.to_string();
    let store =
        store::open(&config.store).await.map_err(|source| Error::Store { location: location.clone(), source })?;
    let changes = store.changes().await.map_err(|source| Error::Store { location, source })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen { addr: config.listen, source })?;
    let state = AppState::new(config, store)?;
    Ok(App { state, listener, changes })
}

impl App {
    /// The bound address (the real port when the config says port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then held long polls answer at once (304) and the
    /// server drains the requests in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let App { state, listener, changes } = self;
        let feed = changes.map(|mut rx| {
            let state = state.clone();
            tokio::spawn(async move {
                while let Some(change) = rx.recv().await {
                    let hub = &state.0.hub;
                    match change {
                        Change::Bundle(name) => {
                            if let Err(e) = hub.reload_if_held(&name).await {
                                tracing::warn!(bundle.name = %name, error = %e, "reloading after a notification failed");
                            }
                        }
                        Change::Resync => hub.reload_all().await,
                    }
                }
            })
        });
        // Answers are small and latency matters (a woken long poll): no Nagle delay.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let supervisor = tokio::spawn(rollout::supervise(state.clone(), state.0.hub.shutdown_signal()));
        let retention = tokio::spawn(logs::prune_periodically(state.clone()));
        let hub_state = state.clone();
        let result = axum::serve(listener, app(state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: releasing long polls, draining requests");
                hub_state.0.hub.shut_down();
            })
            .await
            .map_err(Error::Serve);
        if let Some(task) = feed {
            task.abort();
        }
        supervisor.abort();
        retention.abort();
        result
    }
}
