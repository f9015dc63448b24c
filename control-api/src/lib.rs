//! `control-api`: the control plane. It validates policy bundles by compiling them exactly as
//! the gateway does (and running their own tests), keeps every revision, serves the active one
//! with a strong ETag and long polls, rolls back, collects gateways' status reports, and takes
//! and serves their decision logs.
//!
//! * [`config`]: the YAML config, strictly parsed and validated.
//! * [`api`]: the HTTP API ([`app`] builds the router), one file per resource, its one error
//!   type and the extractor that checks a bundle call's token, name and access.
//! * [`app_state`]: what the handlers and background tasks share.
//! * [`auth`]: bearer tokens by SHA-256, publish, read and logs scopes, bundles a token may touch.
//! * [`store`]: one store over SQLite or PostgreSQL behind one trait, with versioned migrations.
//! * [`growth_guard`]: comparing a publish with the active revision.
//! * [`long_poll_hub`]: the active revision of each bundle in memory, and the channels long
//!   polls wait on.
//! * [`validate`]: the gateway's own loading and compiling code, plus the bundle's tests.
//! * [`logs`]: decision-log ingest (`POST /v1/logs`), query (`GET /v1/logs`) and retention.
//! * [`rollout`]: staged rollout to a canary cohort, judged from status reports, promoted or rolled back.
//! * [`store_watch`]: whether this replica's view of the store is current (else 503s, so that
//!   gateways ask another source).
//! * [`console`]: the web console at `/ui/` (fleet, bundles, diffs, rollouts, decisions,
//!   propagation), over the same state as the API, with its own session and security headers.
//! * [`propagation`]: publish-to-enforce times per revision, from status reports, for the console.
//! * [`metrics`]: every exported metric.
//! * [`clock`] and [`names`]: time as the API writes and reads it; what a bundle may be called.

pub mod api;
pub mod app_state;
pub mod auth;
pub mod clock;
pub mod config;
pub mod console;
pub mod growth_guard;
pub mod logs;
pub mod long_poll_hub;
pub mod metrics;
pub mod names;
pub mod propagation;
pub mod rollout;
pub mod store;
pub mod store_watch;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::mpsc;

pub use api::{app, ApiError};
pub use app_state::AppState;
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
    let listener = listen(config.listen).map_err(|source| Error::Listen { addr: config.listen, source })?;
    let state = AppState::new(config, store)?;
    Ok(App { state, listener, changes })
}

/// Binds the listener with a deep accept queue (4096, capped by the kernel's `somaxconn`): a burst
/// of connections (a fleet reconnecting at once) waits in the queue rather than having its SYNs
/// dropped and retried a second later.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
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
                        Change::Lost => state.0.store_watch.listener_lost(),
                        Change::Resync => {
                            hub.reload_all().await;
                            state.0.store_watch.listener_back();
                        }
                    }
                }
            })
        });
        let supervisor = tokio::spawn(rollout::supervise(state.clone(), state.0.hub.shutdown_signal()));
        let retention = tokio::spawn(prune_periodically(state.clone()));
        let probe = tokio::spawn({
            let s = state.0.clone();
            async move {
                let shutdown = s.hub.shutdown_signal();
                store_watch::probe(&s.store_watch, s.store.as_ref(), &s.hub, &s.metrics.store_up, shutdown).await
            }
        });
        serve(listener, state, shutdown).await;
        if let Some(task) = feed {
            task.abort();
        }
        supervisor.abort();
        retention.abort();
        probe.abort();
        Ok(())
    }
}

/// The accept loop: at most `max_connections` open at once (past it a new connection is closed
/// at once, counted as `control_api_limited_total{limit="connections"}`), each request head
/// within `header_timeout` (else the connection is closed, counted as `header_timeout`). On
/// `shutdown`: no new connection, held long polls answered at once, requests in flight drained.
async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use tower::ServiceExt as _;
    let config = &state.0.config;
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let header_timeout = config.header_timeout;
    let router = app(state.clone()).merge(console::router(state.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            state.0.metrics.limited("connections");
            drop(tcp);
            continue;
        };
        // Answers are small and latency matters (a woken long poll): no Nagle delay.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
        let conn = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service));
        let metrics_state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    metrics_state.0.metrics.limited("header_timeout");
                }
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down: releasing long polls, draining requests");
    state.0.hub.shut_down();
    graceful.shutdown().await;
}

/// Runs decision-log retention every minute (age and count), for a store not being written to.
async fn prune_periodically(state: AppState) {
    let mut tick = tokio::time::interval(logs::PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = &state.0;
        logs::prune(&*s.store, &s.config.logs, &s.metrics, Some(s.config.logs.max_count)).await;
    }
}
