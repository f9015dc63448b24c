//! Storage of bundles, their revisions, which one is active, gateways' status reports and their
//! decision-log events, behind one async [`Store`] trait with one implementation, [`SqlStore`], over two databases:
//! SQLite (the embedded default, created with its schema on first start) and PostgreSQL (several
//! replicas share it and hear each other's changes through `LISTEN/NOTIFY`). What differs
//! between them is in `backend`. Schemas are versioned migrations under
//! `control-api/migrations/{sqlite,postgres}/`, applied at start.
//!
//! Times are stored as Unix milliseconds (UTC) in both backends.

mod backend;
mod logs;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::StoreLocation;

pub use backend::CHANNEL;
pub use sql::SqlStore;

/// A storage failure: the database is unreachable, a query failed, or migrations did not apply.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the database schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the directory of the SQLite database {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// A revision to publish: already validated.
#[derive(Debug, Clone)]
pub struct NewRevision<'a> {
    pub bundle: &'a str,
    pub revision: &'a str,
    pub digest: &'a str,
    pub content: &'a [u8],
    /// The name of the token that published it.
    pub published_by: &'a str,
    pub published_at_ms: i64,
    /// What it cost ([`policy_bundles::budget::Figures`] as JSON), for the growth guard.
    pub figures: Option<&'a str>,
    /// Why it was forced past the growth guard, when it was.
    pub forced_reason: Option<&'a str>,
    /// Stage it: when the bundle has an active revision, the new one goes to the canary cohort
    /// (a rollout in state `canary`) and the active revision does not change yet.
    pub staged: bool,
}

/// One stored revision of a bundle (without its content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionInfo {
    /// Its name, from the bundle's `.manifest`.
    pub revision: String,
    /// Lowercase hex SHA-256 of the tarball: the ETag gateways poll with.
    pub digest: String,
    /// The tarball's size in bytes.
    pub size: u64,
    pub published_at_ms: i64,
    /// The name of the token that published it.
    pub published_by: String,
    /// Whether it is the bundle's active revision (what gateways outside a canary are served).
    pub active: bool,
    /// Its figures as JSON; `None` for revisions published before figures were kept.
    pub figures: Option<String>,
    pub forced_reason: Option<String>,
}

/// The active revision of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHead {
    pub revision: String,
    pub digest: String,
    pub size: u64,
    /// Its figures as JSON, when they were recorded.
    pub figures: Option<String>,
}

/// What a bundle serves ([`Store::heads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedHeads {
    /// The active revision: what every gateway outside a canary cohort is served.
    pub stable: ActiveHead,
    /// The candidate of the rollout in its canary phase, if one is.
    pub canary: Option<ActiveHead>,
}

/// What [`Store::publish`] did, decided inside its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// A new revision was stored and made active.
    Created(RevisionInfo),
    /// The revision existed with the same content but was not active (a rollback had moved
    /// away from it); it is active again.
    Reactivated(RevisionInfo),
    /// The same content is already the active revision; nothing changed.
    Identical(RevisionInfo),
    /// The revision name exists with other content; nothing changed.
    Conflict { existing_digest: String },
}

/// What [`Store::rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackOutcome {
    /// The revision is now active.
    Activated(RevisionInfo),
    /// The revision was already active; nothing changed.
    AlreadyActive(RevisionInfo),
    /// The bundle has no such revision.
    Unknown,
}

/// A gateway's report, as posted to `/v1/status`, with when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayReport {
    pub instance: String,
    pub bundle: String,
    pub revision: Option<String>,
    pub digest: Option<String>,
    /// When the gateway last confirmed its bundle was current: RFC 3339 UTC (reports may give
    /// Unix seconds or RFC 3339; they are stored normalized).
    pub last_sync: Option<String>,
    pub staleness_seconds: Option<f64>,
    pub last_report_ms: i64,
    /// What the gateway said about its health (JSON: `activation`, `served`, `activated_at`).
    pub health: Option<String>,
    /// The name of the token the instance's first report came with: only that token may report
    /// for it until the row expires (`fleet_retention`).
    pub token: String,
}

/// A staged rollout of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Increasing with each rollout started, across bundles.
    pub id: i64,
    /// The bundle it rolls out a revision of.
    pub bundle: String,
    /// The candidate, served to the canary cohort while `state` is `canary`.
    pub revision: String,
    /// The revision everyone else keeps meanwhile (the active one when it started).
    pub previous: String,
    /// `canary`, `promoted`, `rolled_back` or `superseded`.
    pub state: String,
    pub started_at_ms: i64,
    /// When it left the canary phase; `None` while it is in it.
    pub ended_at_ms: Option<i64>,
    /// Why it ended (a rollback's cause, what superseded it).
    pub reason: Option<String>,
}

pub const CANARY: &str = "canary";
pub const PROMOTED: &str = "promoted";
pub const ROLLED_BACK: &str = "rolled_back";
pub const SUPERSEDED: &str = "superseded";

/// A decision-log event to store: the whole event as JSON text, and what queries filter on,
/// taken from it (see [`crate::logs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionEvent {
    /// Unique across the store: a second event with the same id is not stored.
    pub decision_id: String,
    /// The single key of the event's `bundles` object.
    pub bundle: String,
    /// `bundles.<bundle>.revision`.
    pub revision: Option<String>,
    pub route: Option<String>,
    /// `allow`, `deny` or `error`.
    pub decision: String,
    /// The event's `timestamp` as Unix milliseconds.
    pub timestamp_ms: i64,
    /// The event, as the gateway sent it.
    pub event: String,
}

/// Which stored events to list: every given field must match. Newest first (by `timestamp`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Events of any of these bundles; empty: of any bundle.
    pub bundles: Vec<String>,
    pub route: Option<String>,
    pub decision: Option<String>,
    pub revision: Option<String>,
    /// Only events at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Only events at or before this time (Unix milliseconds).
    pub until_ms: Option<i64>,
    /// At most this many.
    pub limit: u32,
    /// Only the event with this decision id.
    pub decision_id: Option<String>,
    /// Only events whose stored text is at most this many characters (the console's bound on
    /// what one search may hold in memory).
    pub max_event_bytes: Option<u32>,
}

/// A change of a bundle's active revision committed by another process sharing the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This bundle's active revision may have changed.
    Bundle(String),
    /// The notification connection was lost: changes made through others go unheard until
    /// [`Change::Resync`].
    Lost,
    /// Changes may have been missed (the notification connection was lost and re-established):
    /// reload every bundle.
    Resync,
}

/// Storage of bundles and fleet reports. Every write that changes an active revision is one
/// transaction, and is announced to the other processes sharing the store (see [`Store::changes`]).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a revision and makes it active in one transaction; or reports that it is
    /// identical to the active one, or that its revision name is taken by other content.
    async fn publish(&self, new: &NewRevision<'_>) -> Result<PublishOutcome, StoreError>;

    /// Whether the database answers (a trivial query).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The active revision of a bundle; `None` when nothing was ever published under the name.
    async fn active(&self, bundle: &str) -> Result<Option<ActiveHead>, StoreError>;

    /// What a bundle serves, read in one statement (one snapshot, so a promotion or rollback
    /// committing meanwhile is seen whole or not at all): its active revision and, while a
    /// rollout is in its canary phase, the candidate. `None` when nothing was ever published.
    async fn heads(&self, bundle: &str) -> Result<Option<ServedHeads>, StoreError>;

    /// The tarball of a bundle's revision with this digest.
    async fn content(&self, bundle: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every revision of a bundle, newest first.
    async fn revisions(&self, bundle: &str) -> Result<Vec<RevisionInfo>, StoreError>;

    /// Makes an existing revision active again, in one transaction.
    async fn rollback(&self, bundle: &str, revision: &str) -> Result<RollbackOutcome, StoreError>;

    /// The bundle's latest rollout, whatever its state.
    async fn rollout(&self, bundle: &str) -> Result<Option<Rollout>, StoreError>;

    /// The bundle's rollouts, newest first, at most `limit`.
    async fn rollouts(&self, bundle: &str, limit: u32) -> Result<Vec<Rollout>, StoreError>;

    /// Every rollout still in its canary phase.
    async fn canaries(&self) -> Result<Vec<Rollout>, StoreError>;

    /// Ends a rollout still in its canary phase as `state` (`promoted` also makes its revision
    /// the active one, in the same transaction). `false` when it had already ended (another
    /// replica judged it first).
    async fn finish_rollout(&self, id: i64, state: &str, reason: Option<&str>, now_ms: i64)
        -> Result<bool, StoreError>;

    /// Records a gateway's report, replacing its previous one, unless the instance's row came
    /// from another token (`false`: nothing written). A row with no token yet is bound by it.
    async fn report(&self, report: &GatewayReport) -> Result<bool, StoreError>;

    /// Deletes the rows of gateways not heard from since `before_ms`; how many.
    async fn prune_fleet(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// The latest report of every gateway, ordered by instance.
    async fn fleet(&self) -> Result<Vec<GatewayReport>, StoreError>;

    /// Stores decision-log events in one transaction, skipping any whose `decision_id` is
    /// already stored (a retried batch); returns how many were new.
    async fn store_events(&self, events: &[DecisionEvent]) -> Result<u64, StoreError>;

    /// The stored events (their JSON text) that match, newest first.
    async fn events(&self, query: &EventQuery) -> Result<Vec<String>, StoreError>;

    /// Deletes events older than `before_ms`, then (when `keep` is given) all but the newest
    /// `keep`, oldest first; returns how many were deleted.
    async fn prune_events(&self, before_ms: i64, keep: Option<u64>) -> Result<u64, StoreError>;

    /// Changes made through other processes, for a store that can be shared; `None` for one that
    /// cannot (SQLite). Called once, at start; the feed runs until the store is dropped.
    async fn changes(&self) -> Result<Option<mpsc::UnboundedReceiver<Change>>, StoreError>;
}

/// What a publish does, decided from the stored revision of the same name (if any) and the
/// bundle's active revision, read inside the publishing transaction.
pub(crate) enum Decision {
    /// Insert the revision, then make it active.
    Insert(RevisionInfo),
    /// The revision exists with this content: make it active.
    Activate(RevisionInfo),
    /// Nothing to write.
    Done(PublishOutcome),
}

impl Decision {
    pub(crate) fn into_outcome(self) -> PublishOutcome {
        match self {
            Decision::Insert(i) => PublishOutcome::Created(i),
            Decision::Activate(i) => PublishOutcome::Reactivated(i),
            Decision::Done(o) => o,
        }
    }
}

pub(crate) fn decide(existing: Option<RevisionInfo>, active: Option<&str>, new: &NewRevision<'_>) -> Decision {
    match existing {
        Some(e) if e.digest != new.digest => Decision::Done(PublishOutcome::Conflict { existing_digest: e.digest }),
        Some(e) if active == Some(new.revision) => {
            Decision::Done(PublishOutcome::Identical(RevisionInfo { active: true, ..e }))
        }
        Some(e) => Decision::Activate(RevisionInfo { active: true, ..e }),
        None => Decision::Insert(RevisionInfo {
            revision: new.revision.to_owned(),
            digest: new.digest.to_owned(),
            size: new.content.len() as u64,
            published_at_ms: new.published_at_ms,
            published_by: new.published_by.to_owned(),
            active: true,
            figures: new.figures.map(str::to_owned),
            forced_reason: new.forced_reason.map(str::to_owned),
        }),
    }
}

/// Opens (creating and migrating as needed) the store a config names.
pub async fn open(location: &StoreLocation) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(SqlStore::sqlite(path).await?),
        StoreLocation::SqliteMemory => Arc::new(SqlStore::sqlite_memory().await?),
        StoreLocation::Postgres(url) => Arc::new(SqlStore::postgres(url).await?),
    })
}
