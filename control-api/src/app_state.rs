//! What every handler and background task of the control plane shares: the config, the store,
//! the long-poll hub, metrics, tokens and the bounds on concurrent work.

use std::sync::Arc;

use policy_bundles::Limits;
use tokio::sync::Semaphore;

use crate::auth::Tokens;
use crate::config::Config;
use crate::long_poll_hub::Hub;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything the handlers share.
pub struct Shared {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    /// Whether this replica's view of the store is current.
    pub store_watch: crate::store_watch::StoreWatch,
    pub metrics: Metrics,
    pub tokens: Tokens,
    /// Bounds how many bundles are validated at once (each may hold a decompressed bundle).
    pub validations: Arc<Semaphore>,
    /// Bounds how many decision-log batches are inflated and parsed at once.
    pub ingests: Arc<Semaphore>,
    /// When decision-log retention checks the count.
    pub retention: crate::logs::Retention,
    /// Long polls held per token name (`max_long_polls_per_token`).
    pub long_polls: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Bounds how many PUT bodies are read at once: each may be `max_bundle_size` in memory.
    pub uploads: Arc<Semaphore>,
    /// Publish-to-enforce times seen in status reports (the console's propagation page).
    pub propagation: crate::propagation::Propagation,
    /// The console's diffs: one at a time (each reads two bundles).
    pub diffs: Arc<Semaphore>,
    /// When fleet reads last pruned rows past `fleet_retention` (Unix ms).
    pub fleet_pruned_ms: std::sync::atomic::AtomicI64,
}

/// The router's state: cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<AppState, prometheus::Error> {
        let permits = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Ok(AppState(Arc::new(Shared {
            hub: Hub::new(store.clone()),
            store_watch: crate::store_watch::StoreWatch::new(config.store_stale_after),
            tokens: Tokens::new(config.tokens.clone()),
            metrics: Metrics::new()?,
            uploads: Arc::new(Semaphore::new(permits * 2)),
            long_polls: std::sync::Mutex::new(std::collections::HashMap::new()),
            validations: Arc::new(Semaphore::new(permits)),
            ingests: Arc::new(Semaphore::new(permits)),
            retention: crate::logs::Retention::default(),
            propagation: crate::propagation::Propagation::default(),
            fleet_pruned_ms: std::sync::atomic::AtomicI64::new(0),
            diffs: Arc::new(Semaphore::new(1)),
            config,
            store,
        })))
    }

    pub fn limits(&self) -> Limits {
        Limits { max_archive_bytes: self.0.config.max_bundle_size, ..Limits::default() }
    }
}
