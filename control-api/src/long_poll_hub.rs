//! The active revision of each bundle, held in memory: the tarball to serve (so 200s and 304s
//! never touch the store) and a `tokio::sync::watch` channel per bundle that long polls wait
//! on. A waiter costs one watch receiver: nothing polls the store per waiter.
//!
//! The store is the source of truth. Whenever a bundle's active revision may have changed (a
//! publish or rollback through this process, a notification from another replica, a resync
//! after a lost notification connection) [`Hub::reload`] reads the active revision from the
//! store and, if it differs, publishes it to the bundle's channel. Reloads of one bundle are
//! serialized, and each reads the store afresh, so the last one always installs the latest
//! committed state, whatever order notifications arrive in. The active revision and the canary
//! candidate are read in one statement ([`Store::heads`]): a promotion committing between two
//! reads would otherwise serve the canaries the old revision until the next reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use bytes::Bytes;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// The active revision of a bundle, ready to serve.
#[derive(Debug)]
pub struct ActiveBundle {
    pub revision: String,
    /// Lowercase hex SHA-256 of `bytes`.
    pub digest: String,
    /// `"<digest>"`: the strong ETag.
    pub etag: HeaderValue,
    pub bytes: Bytes,
}

impl ActiveBundle {
    pub fn new(revision: String, digest: String, bytes: Bytes) -> Result<ActiveBundle, StoreError> {
        let etag = HeaderValue::try_from(format!("\"{digest}\""))
            .map_err(|_| StoreError::Corrupt(format!("digest `{digest}` is not a valid ETag")))?;
        Ok(ActiveBundle { revision, digest, etag, bytes })
    }
}

/// What a bundle serves: the active revision, and during a rollout's canary phase the
/// candidate that only the canary cohort is served.
#[derive(Debug)]
pub struct Heads {
    pub stable: Arc<ActiveBundle>,
    pub canary: Option<Arc<ActiveBundle>>,
}

impl Heads {
    /// The revision served to a gateway in (or out of) the canary cohort.
    pub fn for_cohort(&self, canary: bool) -> &Arc<ActiveBundle> {
        match (&self.canary, canary) {
            (Some(c), true) => c,
            _ => &self.stable,
        }
    }
}

type Slot = Option<Arc<Heads>>;

/// One bundle's channel.
pub struct Entry {
    tx: watch::Sender<Slot>,
    /// Serializes reloads of this bundle.
    reload: tokio::sync::Mutex<()>,
    /// Whether the channel holds what the store had at some reload (not just its initial `None`).
    loaded: AtomicBool,
}

impl Entry {
    /// A receiver that sees every later change of the active revision.
    pub fn subscribe(&self) -> watch::Receiver<Slot> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Slot {
        self.tx.borrow().clone()
    }
}

pub struct Hub {
    store: Arc<dyn Store>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    shutdown: watch::Sender<bool>,
}

impl Hub {
    pub fn new(store: Arc<dyn Store>) -> Hub {
        Hub { store, entries: Mutex::new(HashMap::new()), shutdown: watch::Sender::new(false) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        // A panic while holding this lock leaves the map itself intact: keep using it.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn entry(&self, name: &str) -> Arc<Entry> {
        self.entries()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Entry {
                    tx: watch::Sender::new(None),
                    reload: tokio::sync::Mutex::new(()),
                    loaded: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// The active revision of a bundle and the entry to subscribe to for its changes; loaded
    /// from the store the first time a name is asked for.
    pub async fn current(&self, name: &str) -> Result<(Arc<Entry>, Slot), StoreError> {
        let cached = self.entries().get(name).cloned();
        if let Some(entry) = cached.filter(|e| e.loaded.load(Ordering::Acquire)) {
            let slot = entry.current();
            return Ok((entry, slot));
        }
        self.reload(name, None).await
    }

    /// Reads a bundle's active revision from the store and, if it changed, wakes its waiters.
    /// `seed` is a tarball the caller already holds (digest, bytes), used instead of reading
    /// the content back from the store when it is the active one.
    pub async fn reload(&self, name: &str, seed: Option<(&str, Bytes)>) -> Result<(Arc<Entry>, Slot), StoreError> {
        let entry = self.entry(name);
        let guard = entry.reload.lock().await;
        let Some(served) = self.store.heads(name).await? else {
            drop(guard);
            // Nothing was ever published under this name: keep no entry for it (so that asking
            // for random names costs nothing), unless someone subscribed meanwhile.
            let mut entries = self.entries();
            if entries.get(name).is_some_and(|e| Arc::ptr_eq(e, &entry) && e.tx.receiver_count() == 0) {
                entries.remove(name);
            }
            return Ok((entry, None));
        };
        let (head, candidate) = (served.stable, served.canary);
        let held = entry.current();
        let unchanged = held.as_ref().is_some_and(|h| {
            h.stable.digest == head.digest
                && h.canary.as_ref().map(|c| c.digest.as_str()) == candidate.as_ref().map(|c| c.digest.as_str())
        });
        if !unchanged {
            let mut known: Vec<Arc<ActiveBundle>> =
                held.iter().flat_map(|h| h.canary.iter().chain([&h.stable])).cloned().collect();
            let mut seed = seed;
            let mut load = async |revision: String, digest: String| -> Result<Arc<ActiveBundle>, StoreError> {
                if let Some(k) = known.iter().find(|k| k.digest == digest) {
                    return Ok(k.clone());
                }
                let bytes = match seed.take() {
                    Some((d, bytes)) if d == digest => bytes,
                    _ => match self.store.content(name, &digest).await? {
                        Some(content) => Bytes::from(content),
                        None => {
                            return Err(StoreError::Corrupt(format!(
                                "bundle `{name}`: revision `{revision}` has no content"
                            )))
                        }
                    },
                };
                let a = Arc::new(ActiveBundle::new(revision, digest, bytes)?);
                known.push(a.clone());
                Ok(a)
            };
            let stable = load(head.revision, head.digest).await?;
            let canary = match candidate {
                Some(c) => Some(load(c.revision, c.digest).await?),
                None => None,
            };
            tracing::info!(
                bundle.name = name,
                bundle.revision = %stable.revision,
                canary.revision = canary.as_ref().map(|c| c.revision.as_str()),
                "served revisions loaded"
            );
            entry.tx.send_replace(Some(Arc::new(Heads { stable, canary })));
        }
        entry.loaded.store(true, Ordering::Release);
        let slot = entry.current();
        drop(guard);
        Ok((entry, slot))
    }

    /// What each bundle held in memory is served, by name.
    pub fn served(&self) -> Vec<(String, Arc<Heads>)> {
        let entries: Vec<(String, Arc<Entry>)> = self.entries().iter().map(|(n, e)| (n.clone(), e.clone())).collect();
        entries.into_iter().filter_map(|(name, e)| e.current().map(|heads| (name, heads))).collect()
    }

    /// Reloads a bundle if this process holds it (a notification from another replica); a
    /// bundle not held is read from the store when first asked for anyway.
    pub async fn reload_if_held(&self, name: &str) -> Result<(), StoreError> {
        if self.entries().contains_key(name) {
            self.reload(name, None).await?;
        }
        Ok(())
    }

    /// Reloads every bundle held in memory (after notifications may have been lost).
    pub async fn reload_all(&self) {
        let names: Vec<String> = self.entries().keys().cloned().collect();
        for name in names {
            if let Err(e) = self.reload(&name, None).await {
                tracing::warn!(bundle.name = %name, error = %e, "reloading the active revision failed");
            }
        }
    }

    /// A receiver that turns `true` when the server shuts down: long polls end at once.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}
