//! The shared store: PostgreSQL, for several control-api replicas. Every publish or rollback
//! sends `NOTIFY control_api_bundles, '<bundle>'` inside its transaction (delivered on commit);
//! each replica `LISTEN`s and reloads that bundle's active revision, so a long poll on any
//! replica wakes when a revision is activated through another.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    decide, rollout_sql, ActiveHead, Change, Decision, GatewayReport, NewRevision, PublishOutcome, RevisionInfo,
    RollbackOutcome, Rollout, Store, StoreError,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The notification channel; the payload is the bundle's name.
pub const CHANNEL: &str = "control_api_bundles";

pub struct PostgresStore {
    pool: PgPool,
    url: String,
    /// The `LISTEN` task, stopped when the store is dropped.
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl PostgresStore {
    /// Connects and applies migrations (under the migrator's advisory lock, so replicas starting
    /// together do not race).
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let pool =
            PgPoolOptions::new().max_connections(10).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStore { pool, url: url.to_owned(), listener: Mutex::new(None) })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().ok().and_then(|mut l| l.take()) {
            task.abort();
        }
    }
}

type Row = (String, String, i64, i64, String, Option<String>, Option<String>);

fn info(row: Row, active: bool) -> Result<RevisionInfo, StoreError> {
    let (revision, digest, size, published_at_ms, published_by, figures, forced_reason) = row;
    let size = u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("negative size of revision {revision}")))?;
    Ok(RevisionInfo { revision, digest, size, published_at_ms, published_by, active, figures, forced_reason })
}

/// Serializes writers of one bundle until the transaction ends.
const LOCK_BUNDLE: &str = "SELECT pg_advisory_xact_lock(hashtext('control_api_bundle'), hashtext($1))";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

#[async_trait]
impl Store for PostgresStore {
    async fn publish(&self, new: &NewRevision<'_>) -> Result<PublishOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_BUNDLE).bind(new.bundle).execute(&mut *tx).await?;
        let existing: Option<Row> = sqlx::query_as(
            "SELECT revision, digest, size, published_at_ms, published_by, figures, forced_reason FROM revisions \
             WHERE bundle = $1 AND revision = $2",
        )
        .bind(new.bundle)
        .bind(new.revision)
        .fetch_optional(&mut *tx)
        .await?;
        let active: Option<String> = sqlx::query_scalar("SELECT active_revision FROM bundles WHERE name = $1")
            .bind(new.bundle)
            .fetch_optional(&mut *tx)
            .await?;
        let existing = existing.map(|r| info(r, false)).transpose()?;
        let decision = decide(existing, active.as_deref(), new);
        match &decision {
            Decision::Insert(_) => {
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
                .execute(&mut *tx)
                .await?;
            }
            Decision::Activate(_) => {}
            Decision::Done(_) => return Ok(decision.into_outcome()),
        }
        if let (true, Some(previous)) = (new.staged, active.as_deref()) {
            let why = format!("superseded by {}", new.revision);
            sqlx::query(rollout_sql::SUPERSEDE)
                .bind(new.bundle)
                .bind(new.published_at_ms)
                .bind(&why)
                .execute(&mut *tx)
                .await?;
            sqlx::query(rollout_sql::START)
                .bind(new.bundle)
                .bind(new.revision)
                .bind(previous)
                .bind(new.published_at_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query(NOTIFY).bind(CHANNEL).bind(new.bundle).execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(decision.into_outcome());
        }
        // Published straight to everyone: a rollout still in its canary phase is over.
        sqlx::query(rollout_sql::SUPERSEDE)
            .bind(new.bundle)
            .bind(new.published_at_ms)
            .bind(format!("superseded by {}, published to every gateway", new.revision))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO bundles (name, active_revision, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET active_revision = excluded.active_revision, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(new.bundle)
        .bind(new.revision)
        .bind(new.published_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(NOTIFY).bind(CHANNEL).bind(new.bundle).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(decision.into_outcome())
    }

    async fn active(&self, bundle: &str) -> Result<Option<ActiveHead>, StoreError> {
        let row: Option<(String, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT r.revision, r.digest, r.size, r.figures FROM bundles b \
             JOIN revisions r ON r.bundle = b.name AND r.revision = b.active_revision WHERE b.name = $1",
        )
        .bind(bundle)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(revision, digest, size, figures)| {
            let size = u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("negative size of {revision}")))?;
            Ok(ActiveHead { revision, digest, size, figures })
        })
        .transpose()
    }

    async fn content(&self, bundle: &str, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT content FROM revisions WHERE bundle = $1 AND digest = $2 LIMIT 1")
            .bind(bundle)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn revisions(&self, bundle: &str) -> Result<Vec<RevisionInfo>, StoreError> {
        type RevRow = (String, String, i64, i64, String, bool, Option<String>, Option<String>);
        let rows: Vec<RevRow> = sqlx::query_as(
            "SELECT r.revision, r.digest, r.size, r.published_at_ms, r.published_by, \
             COALESCE(b.active_revision = r.revision, false), r.figures, r.forced_reason \
             FROM revisions r LEFT JOIN bundles b ON b.name = r.bundle \
             WHERE r.bundle = $1 ORDER BY r.id DESC",
        )
        .bind(bundle)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|(r, d, s, at, by, active, f, why)| info((r, d, s, at, by, f, why), active)).collect()
    }

    async fn rollback(&self, bundle: &str, revision: &str) -> Result<RollbackOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_BUNDLE).bind(bundle).execute(&mut *tx).await?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT revision, digest, size, published_at_ms, published_by, figures, forced_reason FROM revisions \
             WHERE bundle = $1 AND revision = $2",
        )
        .bind(bundle)
        .bind(revision)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(RollbackOutcome::Unknown) };
        let active: Option<String> = sqlx::query_scalar("SELECT active_revision FROM bundles WHERE name = $1")
            .bind(bundle)
            .fetch_optional(&mut *tx)
            .await?;
        let info = info(row, true)?;
        let why = format!("manual rollback to {revision}");
        let ended = sqlx::query(rollout_sql::SUPERSEDE)
            .bind(bundle)
            .bind(super::now_ms())
            .bind(&why)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if active.as_deref() == Some(revision) {
            if ended > 0 {
                sqlx::query(NOTIFY).bind(CHANNEL).bind(bundle).execute(&mut *tx).await?;
                tx.commit().await?;
            }
            return Ok(RollbackOutcome::AlreadyActive(info));
        }
        sqlx::query("UPDATE bundles SET active_revision = $2, updated_at_ms = $3 WHERE name = $1")
            .bind(bundle)
            .bind(revision)
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query(NOTIFY).bind(CHANNEL).bind(bundle).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(RollbackOutcome::Activated(info))
    }

    async fn report(&self, r: &GatewayReport) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateways (instance, bundle, revision, digest, last_sync, staleness_seconds, last_report_ms, \
             health) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (instance) DO UPDATE SET \
             bundle = excluded.bundle, revision = excluded.revision, digest = excluded.digest, \
             last_sync = excluded.last_sync, staleness_seconds = excluded.staleness_seconds, \
             last_report_ms = excluded.last_report_ms, health = excluded.health",
        )
        .bind(&r.instance)
        .bind(&r.bundle)
        .bind(&r.revision)
        .bind(&r.digest)
        .bind(&r.last_sync)
        .bind(r.staleness_seconds)
        .bind(r.last_report_ms)
        .bind(&r.health)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn fleet(&self) -> Result<Vec<GatewayReport>, StoreError> {
        type FleetRow =
            (String, String, Option<String>, Option<String>, Option<String>, Option<f64>, i64, Option<String>);
        let rows: Vec<FleetRow> = sqlx::query_as(
            "SELECT instance, bundle, revision, digest, last_sync, staleness_seconds, last_report_ms, health \
             FROM gateways ORDER BY instance",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(instance, bundle, revision, digest, last_sync, staleness_seconds, last_report_ms, health)| {
                GatewayReport {
                    instance,
                    bundle,
                    revision,
                    digest,
                    last_sync,
                    staleness_seconds,
                    last_report_ms,
                    health,
                }
            })
            .collect())
    }

    async fn rollout(&self, bundle: &str) -> Result<Option<Rollout>, StoreError> {
        let row: Option<rollout_sql::Row> =
            sqlx::query_as(&rollout_sql::latest()).bind(bundle).fetch_optional(&self.pool).await?;
        Ok(row.map(rollout_sql::rollout))
    }

    async fn canaries(&self) -> Result<Vec<Rollout>, StoreError> {
        let rows: Vec<rollout_sql::Row> = sqlx::query_as(&rollout_sql::canaries()).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(rollout_sql::rollout).collect())
    }

    async fn finish_rollout(
        &self,
        id: i64,
        state: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ended: Option<(String, String)> = sqlx::query_as(rollout_sql::FINISH)
            .bind(id)
            .bind(state)
            .bind(now_ms)
            .bind(reason)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((bundle, revision)) = ended else { return Ok(false) };
        if state == super::PROMOTED {
            sqlx::query(rollout_sql::PROMOTE).bind(&bundle).bind(&revision).bind(now_ms).execute(&mut *tx).await?;
        }
        sqlx::query(NOTIFY).bind(CHANNEL).bind(&bundle).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn changes(&self) -> Result<Option<mpsc::UnboundedReceiver<Change>>, StoreError> {
        // Its own connection (PgListener::connect keeps a pool of one), so that listening never
        // takes a connection from the query pool.
        let mut listener = PgListener::connect(&self.url).await?;
        listener.listen(CHANNEL).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(feed(listener, tx));
        if let Ok(mut slot) = self.listener.lock() {
            if let Some(old) = slot.replace(task) {
                old.abort();
            }
        }
        Ok(Some(rx))
    }
}

/// Forwards notifications until the receiver is dropped. When the connection is lost,
/// reconnects with backoff and asks for a full reload: notifications sent meanwhile are lost.
async fn feed(mut listener: PgListener, tx: mpsc::UnboundedSender<Change>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if tx.send(Change::Bundle(n.payload().to_owned())).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
                let mut delay = Duration::from_millis(100);
                loop {
                    if tx.is_closed() {
                        return;
                    }
                    // Any statement makes the listener reconnect and LISTEN again.
                    match sqlx::query("SELECT 1").execute(&mut listener).await {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL notification reconnect failed");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                tracing::info!("PostgreSQL notification connection re-established; reloading every bundle");
                if tx.send(Change::Resync).is_err() {
                    return;
                }
            }
        }
    }
}
