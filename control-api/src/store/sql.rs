//! The one implementation of [`Store`], over SQLite and PostgreSQL alike: every statement and
//! row mapping is written once here; what differs between the databases (opening, locking,
//! announcing changes) is asked of its [`Backend`].

use std::path::Path;

use async_trait::async_trait;
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::mpsc;

use super::backend::Backend;
use super::{
    decide, ActiveHead, Change, Decision, DecisionEvent, EventQuery, GatewayReport, NewRevision, PublishOutcome,
    RevisionInfo, RollbackOutcome, Rollout, ServedHeads, Store, StoreError, PROMOTED,
};

/// A store on a SQL database: SQLite (one process per file) or PostgreSQL (shared by replicas).
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

impl SqlStore {
    /// Opens a SQLite database file, creating it (and its directory) and applying migrations.
    pub async fn sqlite(path: &Path) -> Result<SqlStore, StoreError> {
        let (backend, pool) = Backend::sqlite_file(path).await?;
        Ok(SqlStore { pool, backend })
    }

    /// An in-memory SQLite database, empty and migrated.
    pub async fn sqlite_memory() -> Result<SqlStore, StoreError> {
        let (backend, pool) = Backend::sqlite_memory().await?;
        Ok(SqlStore { pool, backend })
    }

    /// Connects to PostgreSQL and applies migrations.
    pub async fn postgres(url: &str) -> Result<SqlStore, StoreError> {
        let (backend, pool) = Backend::postgres(url).await?;
        Ok(SqlStore { pool, backend })
    }
}

type Tx = Transaction<'static, Any>;

/// The columns of each table that rows are read as, for `concat!` into statements.
macro_rules! revision_columns {
    () => {
        "revision, digest, size, published_at_ms, published_by, figures, forced_reason"
    };
}
macro_rules! rollout_columns {
    () => {
        "id, bundle, revision, previous, state, started_at_ms, ended_at_ms, reason"
    };
}
macro_rules! gateway_columns {
    () => {
        "instance, bundle, revision, digest, last_sync, staleness_seconds, last_report_ms, health, token"
    };
}

const REVISION: &str = concat!("SELECT ", revision_columns!(), " FROM revisions WHERE bundle = $1 AND revision = $2");
const LATEST_ROLLOUT: &str =
    concat!("SELECT ", rollout_columns!(), " FROM rollouts WHERE bundle = $1 ORDER BY id DESC LIMIT 1");
const ROLLOUTS: &str =
    concat!("SELECT ", rollout_columns!(), " FROM rollouts WHERE bundle = $1 ORDER BY id DESC LIMIT $2");
const CANARIES: &str = concat!("SELECT ", rollout_columns!(), " FROM rollouts WHERE state = 'canary' ORDER BY id");
const FLEET: &str = concat!("SELECT ", gateway_columns!(), " FROM gateways ORDER BY instance");
const UPSERT_REPORT: &str = concat!(
    "INSERT INTO gateways (",
    gateway_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (instance) DO UPDATE SET bundle = excluded.bundle, revision = excluded.revision, \
     digest = excluded.digest, last_sync = excluded.last_sync, staleness_seconds = excluded.staleness_seconds, \
     last_report_ms = excluded.last_report_ms, health = excluded.health, token = excluded.token \
     WHERE gateways.token = excluded.token OR gateways.token = ''"
);

/// The active revision and the canary candidate, if any, in one statement (see [`Store::heads`]).
const HEADS: &str = "SELECT r.revision, r.digest, r.size, r.figures, c.revision, c.digest, c.size, c.figures \
                     FROM bundles b JOIN revisions r ON r.bundle = b.name AND r.revision = b.active_revision \
                     LEFT JOIN rollouts o ON o.bundle = b.name AND o.state = 'canary' \
                     LEFT JOIN revisions c ON c.bundle = b.name AND c.revision = o.revision \
                     WHERE b.name = $1 ORDER BY o.id DESC LIMIT 1";

type HeadsRow = (String, String, i64, Option<String>, Option<String>, Option<String>, Option<i64>, Option<String>);

fn head(revision: String, digest: String, size: i64, figures: Option<String>) -> Result<ActiveHead, StoreError> {
    let size = u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("negative size of {revision}")))?;
    Ok(ActiveHead { revision, digest, size, figures })
}

fn heads(row: HeadsRow) -> Result<ServedHeads, StoreError> {
    let (revision, digest, size, figures, c_revision, c_digest, c_size, c_figures) = row;
    let canary = match (c_revision, c_digest, c_size) {
        (Some(r), Some(d), Some(s)) => Some(head(r, d, s, c_figures)?),
        _ => None,
    };
    Ok(ServedHeads { stable: head(revision, digest, size, figures)?, canary })
}

type RevisionRow = (String, String, i64, i64, String, Option<String>, Option<String>);

fn info(row: RevisionRow, active: bool) -> Result<RevisionInfo, StoreError> {
    let (revision, digest, size, published_at_ms, published_by, figures, forced_reason) = row;
    let size = u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("negative size of revision {revision}")))?;
    Ok(RevisionInfo { revision, digest, size, published_at_ms, published_by, active, figures, forced_reason })
}

type RolloutRow = (i64, String, String, String, String, i64, Option<i64>, Option<String>);

fn rollout(r: RolloutRow) -> Rollout {
    let (id, bundle, revision, previous, state, started_at_ms, ended_at_ms, reason) = r;
    Rollout { id, bundle, revision, previous, state, started_at_ms, ended_at_ms, reason }
}

type GatewayRow =
    (String, String, Option<String>, Option<String>, Option<String>, Option<f64>, i64, Option<String>, String);

fn gateway(r: GatewayRow) -> GatewayReport {
    let (instance, bundle, revision, digest, last_sync, staleness_seconds, last_report_ms, health, token) = r;
    GatewayReport { instance, bundle, revision, digest, last_sync, staleness_seconds, last_report_ms, health, token }
}

const SUPERSEDE: &str = "UPDATE rollouts SET state = 'superseded', ended_at_ms = $2, reason = $3 \
                         WHERE bundle = $1 AND state = 'canary'";
const SET_ACTIVE: &str = "UPDATE bundles SET active_revision = $2, updated_at_ms = $3 WHERE name = $1";

/// Ends the bundle's rollout still in its canary phase, if any (the count of rows it ended).
async fn supersede(tx: &mut Tx, bundle: &str, now_ms: i64, why: &str) -> Result<u64, StoreError> {
    let done = sqlx::query(SUPERSEDE).bind(bundle).bind(now_ms).bind(why).execute(&mut **tx).await?;
    Ok(done.rows_affected())
}

/// Makes `revision` the bundle's active revision (the bundle row exists).
async fn set_active(tx: &mut Tx, bundle: &str, revision: &str, now_ms: i64) -> Result<(), StoreError> {
    sqlx::query(SET_ACTIVE).bind(bundle).bind(revision).bind(now_ms).execute(&mut **tx).await?;
    Ok(())
}

/// A stored revision (marked inactive) and the bundle's active revision, read in `tx`.
async fn read_for_write(
    tx: &mut Tx,
    bundle: &str,
    revision: &str,
) -> Result<(Option<RevisionInfo>, Option<String>), StoreError> {
    let row: Option<RevisionRow> =
        sqlx::query_as(REVISION).bind(bundle).bind(revision).fetch_optional(&mut **tx).await?;
    let active: Option<String> = sqlx::query_scalar("SELECT active_revision FROM bundles WHERE name = $1")
        .bind(bundle)
        .fetch_optional(&mut **tx)
        .await?;
    Ok((row.map(|r| info(r, false)).transpose()?, active))
}

async fn insert_revision(tx: &mut Tx, new: &NewRevision<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revisions (bundle, revision, digest, size, published_at_ms, published_by, content, \
         figures, forced_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(new.bundle)
    .bind(new.revision)
    .bind(new.digest)
    .bind(new.content.len() as i64)
    .bind(new.published_at_ms)
    .bind(new.published_by)
    .bind(new.content)
    .bind(new.figures)
    .bind(new.forced_reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const START_ROLLOUT: &str =
    "INSERT INTO rollouts (bundle, revision, previous, state, started_at_ms) VALUES ($1, $2, $3, 'canary', $4)";
const UPSERT_BUNDLE: &str = "INSERT INTO bundles (name, active_revision, updated_at_ms) VALUES ($1, $2, $3) \
                             ON CONFLICT (name) DO UPDATE SET active_revision = excluded.active_revision, \
                             updated_at_ms = excluded.updated_at_ms";

/// Stages the new revision: a canary rollout against `previous`, which stays active.
async fn start_rollout(tx: &mut Tx, new: &NewRevision<'_>, previous: &str) -> Result<(), StoreError> {
    let (bundle, revision, at) = (new.bundle, new.revision, new.published_at_ms);
    supersede(tx, bundle, at, &format!("superseded by {revision}")).await?;
    sqlx::query(START_ROLLOUT).bind(bundle).bind(revision).bind(previous).bind(at).execute(&mut **tx).await?;
    Ok(())
}

/// Publishes the new revision straight to everyone: a rollout still in its canary phase is over.
async fn activate_for_all(tx: &mut Tx, new: &NewRevision<'_>) -> Result<(), StoreError> {
    let (bundle, revision, at) = (new.bundle, new.revision, new.published_at_ms);
    supersede(tx, bundle, at, &format!("superseded by {revision}, published to every gateway")).await?;
    sqlx::query(UPSERT_BUNDLE).bind(bundle).bind(revision).bind(at).execute(&mut **tx).await?;
    Ok(())
}

#[async_trait]
impl Store for SqlStore {
    async fn publish(&self, new: &NewRevision<'_>) -> Result<PublishOutcome, StoreError> {
        let mut tx = self.backend.begin_write(&self.pool).await?;
        self.backend.lock_bundle(&mut tx, new.bundle).await?;
        let (existing, active) = read_for_write(&mut tx, new.bundle, new.revision).await?;
        let decision = decide(existing, active.as_deref(), new);
        match &decision {
            Decision::Insert(_) => insert_revision(&mut tx, new).await?,
            Decision::Activate(_) => {}
            Decision::Done(_) => return Ok(decision.into_outcome()),
        }
        match (new.staged, active.as_deref()) {
            (true, Some(previous)) => start_rollout(&mut tx, new, previous).await?,
            _ => activate_for_all(&mut tx, new).await?,
        }
        self.backend.announce(&mut tx, new.bundle).await?;
        tx.commit().await?;
        Ok(decision.into_outcome())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn active(&self, bundle: &str) -> Result<Option<ActiveHead>, StoreError> {
        let row: Option<(String, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT r.revision, r.digest, r.size, r.figures FROM bundles b \
             JOIN revisions r ON r.bundle = b.name AND r.revision = b.active_revision WHERE b.name = $1",
        )
        .bind(bundle)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(revision, digest, size, figures)| head(revision, digest, size, figures)).transpose()
    }

    async fn heads(&self, bundle: &str) -> Result<Option<ServedHeads>, StoreError> {
        let row: Option<HeadsRow> = sqlx::query_as(HEADS).bind(bundle).fetch_optional(&self.pool).await?;
        row.map(heads).transpose()
    }

    async fn content(&self, bundle: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT content FROM revisions WHERE bundle = $1 AND digest = $2 LIMIT 1")
            .bind(bundle)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn revisions(&self, bundle: &str) -> Result<Vec<RevisionInfo>, StoreError> {
        let rows: Vec<(String, String, i64, i64, String, Option<String>, Option<String>, Option<String>)> =
            sqlx::query_as(
                "SELECT r.revision, r.digest, r.size, r.published_at_ms, r.published_by, r.figures, \
                 r.forced_reason, b.active_revision FROM revisions r LEFT JOIN bundles b ON b.name = r.bundle \
                 WHERE r.bundle = $1 ORDER BY r.id DESC",
            )
            .bind(bundle)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(r, d, s, at, by, f, why, active)| {
                let is_active = active.as_deref() == Some(r.as_str());
                info((r, d, s, at, by, f, why), is_active)
            })
            .collect()
    }

    async fn rollback(&self, bundle: &str, revision: &str) -> Result<RollbackOutcome, StoreError> {
        let mut tx = self.backend.begin_write(&self.pool).await?;
        self.backend.lock_bundle(&mut tx, bundle).await?;
        let (existing, active) = read_for_write(&mut tx, bundle, revision).await?;
        let Some(info) = existing else { return Ok(RollbackOutcome::Unknown) };
        let info = RevisionInfo { active: true, ..info };
        let ended =
            supersede(&mut tx, bundle, crate::clock::now_ms(), &format!("manual rollback to {revision}")).await?;
        if active.as_deref() == Some(revision) {
            if ended > 0 {
                self.backend.announce(&mut tx, bundle).await?;
                tx.commit().await?;
            }
            return Ok(RollbackOutcome::AlreadyActive(info));
        }
        set_active(&mut tx, bundle, revision, crate::clock::now_ms()).await?;
        self.backend.announce(&mut tx, bundle).await?;
        tx.commit().await?;
        Ok(RollbackOutcome::Activated(info))
    }

    async fn rollout(&self, bundle: &str) -> Result<Option<Rollout>, StoreError> {
        let row: Option<RolloutRow> = sqlx::query_as(LATEST_ROLLOUT).bind(bundle).fetch_optional(&self.pool).await?;
        Ok(row.map(rollout))
    }

    async fn rollouts(&self, bundle: &str, limit: u32) -> Result<Vec<Rollout>, StoreError> {
        let rows: Vec<RolloutRow> =
            sqlx::query_as(ROLLOUTS).bind(bundle).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(rollout).collect())
    }

    async fn canaries(&self) -> Result<Vec<Rollout>, StoreError> {
        let rows: Vec<RolloutRow> = sqlx::query_as(CANARIES).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(rollout).collect())
    }

    async fn finish_rollout(
        &self,
        id: i64,
        state: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.backend.begin_write(&self.pool).await?;
        // A rollout's bundle never changes: read it to take the bundle's lock, then judge the
        // rollout under that lock (a rollback or publish of the bundle may have ended it).
        let bundle: Option<String> =
            sqlx::query_scalar("SELECT bundle FROM rollouts WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        let Some(bundle) = bundle else { return Ok(false) };
        self.backend.lock_bundle(&mut tx, &bundle).await?;
        let ended: Option<String> = sqlx::query_scalar(
            "UPDATE rollouts SET state = $2, ended_at_ms = $3, reason = $4 \
             WHERE id = $1 AND state = 'canary' RETURNING revision",
        )
        .bind(id)
        .bind(state)
        .bind(now_ms)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(revision) = ended else { return Ok(false) };
        if state == PROMOTED {
            set_active(&mut tx, &bundle, &revision, now_ms).await?;
        }
        self.backend.announce(&mut tx, &bundle).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn report(&self, r: &GatewayReport) -> Result<bool, StoreError> {
        let done = sqlx::query(UPSERT_REPORT)
            .bind(&r.instance)
            .bind(&r.bundle)
            .bind(&r.revision)
            .bind(&r.digest)
            .bind(&r.last_sync)
            .bind(r.staleness_seconds)
            .bind(r.last_report_ms)
            .bind(&r.health)
            .bind(&r.token)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn prune_fleet(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM gateways WHERE last_report_ms < $1").bind(before_ms).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn fleet(&self) -> Result<Vec<GatewayReport>, StoreError> {
        let rows: Vec<GatewayRow> = sqlx::query_as(FLEET).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(gateway).collect())
    }

    async fn store_events(&self, events: &[DecisionEvent]) -> Result<u64, StoreError> {
        super::logs::store(&self.pool, &self.backend, events).await
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<String>, StoreError> {
        super::logs::query(&self.pool, query).await
    }

    async fn prune_events(&self, before_ms: i64, keep: Option<u64>) -> Result<u64, StoreError> {
        super::logs::prune(&self.pool, &self.backend, before_ms, keep).await
    }

    async fn changes(&self) -> Result<Option<mpsc::UnboundedReceiver<Change>>, StoreError> {
        self.backend.changes().await
    }
}
