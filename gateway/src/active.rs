//! The active bundle: everything a request needs, immutable once built, behind the one
//! `ArcSwapOption` that requests load without a lock and activation swaps. Beside it, what the
//! sync loop knows of how current it is ([`SyncStatus`]). How a bundle becomes active is
//! [`crate::activation`]; how it is fetched, [`crate::sync`].

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use policy_bundles::budget::Figures;
use policy_bundles::Snapshot;

use crate::metrics::RouteCounters;
use crate::pool::Pool;
use crate::sync_status::{SyncDetail, SyncStatus};

/// Identity of the active bundle, shown by `/status` and `gateway_bundle_info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleInfo {
    pub name: String,
    pub revision: String,
    pub digest: String,
    /// Unix seconds.
    pub activated_at: u64,
    /// The same moment in Unix milliseconds (what the control plane measures propagation by).
    pub activated_at_ms: u64,
    pub source: String,
    /// What the bundle cost when it was checked against `bundle.budget`.
    pub figures: Option<Figures>,
    /// Its signed identity (`metadata.gateway`), checked when `signing.required`.
    pub identity: Option<policy_bundles::signing::Identity>,
}

/// Everything a request needs, immutable once built.
pub struct Active {
    pub snapshot: Snapshot,
    /// By upstream index of the snapshot.
    pub pools: Vec<Arc<Pool>>,
    /// By route index of the snapshot.
    pub counters: Vec<RouteCounters>,
    pub info: BundleInfo,
    /// What this snapshot has served since it activated.
    pub served: crate::revision_health::Served,
    /// By rate limit of the snapshot: its buckets (kept from the previous bundle when the limit
    /// is the same).
    pub limits: Vec<Arc<crate::limiter::Limiter>>,
    /// By route, by rate limit of the snapshot: `gateway_rate_limited_total{route,limit,mode}`
    /// of the limits the route lists (`None`: a limit only a decision may name).
    pub limited: Vec<Vec<Option<prometheus::IntCounter>>>,
}

impl Active {
    /// Whether its signature is past its `expires`: an alert; it keeps serving.
    pub fn signature_expired(&self) -> bool {
        let expires = self.info.identity.as_ref().and_then(|i| i.expires);
        expires.is_some_and(|e| crate::clock::unix_now() >= e)
    }
}

/// The gateway's shared state, and only that: the active bundle and how current it is. Read
/// by the proxy (one load per request), the admin listener, the health checks and the sync
/// loop; written by activation and the sync loop. Everything else is handed to whoever needs it.
pub struct Gateway {
    active: ArcSwapOption<Active>,
    pub sync: SyncStatus,
}

impl Gateway {
    pub fn new(sync: SyncStatus) -> Gateway {
        Gateway { active: ArcSwapOption::empty(), sync }
    }

    /// The active bundle, if any (one lock-free load).
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active.load_full()
    }

    pub fn is_active(&self) -> bool {
        self.active.load().is_some()
    }

    /// Swaps `next` in and hands back what it replaced. With `etag`, the sync ETag changes in
    /// the same critical section: a reader of both ([`Gateway::read`]) never sees the new
    /// revision with the old ETag.
    pub fn swap(&self, next: Arc<Active>, etag: Option<String>) -> Option<Arc<Active>> {
        self.sync.with_detail(|detail| {
            let previous = self.active.swap(Some(next));
            if let (Some(d), Some(tag)) = (detail, etag) {
                d.etag = Some(tag);
            }
            previous
        })
    }

    /// The active bundle and the sync detail, read together (see [`Gateway::swap`]).
    pub fn read(&self) -> (Option<Arc<Active>>, SyncDetail) {
        self.sync.with_detail(|detail| (self.active.load_full(), detail.map(|d| d.clone()).unwrap_or_default()))
    }

    /// The ETag to send in `If-None-Match`: the active bundle's, kept across errors; none while
    /// nothing is active.
    pub fn etag(&self) -> Option<String> {
        self.sync.etag().filter(|_| self.is_active())
    }

    /// Whether the serving bundle's signature is past its `expires`.
    pub fn signature_expired(&self) -> bool {
        self.active.load().as_ref().is_some_and(|a| a.signature_expired())
    }
}
