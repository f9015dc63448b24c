//! The embedded store: one SQLite file (WAL), created with its schema on first start. One
//! control-api process per file: it announces no changes to other processes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::mpsc;

use super::{
    decide, rollout_sql, ActiveHead, Change, Decision, GatewayReport, NewRevision, PublishOutcome, RevisionInfo,
    RollbackOutcome, Rollout, Store, StoreError,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the database file, creating it (and its directory) and applying migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::CreateDir { path: path.display().to_string(), source })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// An in-memory database (one connection, so that every query sees the same data).
    pub async fn memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

type Row = (String, String, i64, i64, String, Option<String>, Option<String>);

fn info(row: Row, active: bool) -> Result<RevisionInfo, StoreError> {
    let (revision, digest, size, published_at_ms, published_by, figures, forced_reason) = row;
    let size = u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("negative size of revision {revision}")))?;
    Ok(RevisionInfo { revision, digest, size, published_at_ms, published_by, active, figures, forced_reason })
}

#[async_trait]
impl Store for SqliteStore {
    async fn publish(&self, new: &NewRevision<'_>) -> Result<PublishOutcome, StoreError> {
        // IMMEDIATE takes the write lock up front: two publishes never interleave their reads.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<Row> = sqlx::query_as(
            "SELECT revision, digest, size, published_at_ms, published_by, figures, forced_reason FROM revisions \
             WHERE bundle = ?1 AND revision = ?2",
        )
        .bind(new.bundle)
        .bind(new.revision)
        .fetch_optional(&mut *tx)
        .await?;
        let active: Option<String> = sqlx::query_scalar("SELECT active_revision FROM bundles WHERE name = ?1")
            .bind(new.bundle)
            .fetch_optional(&mut *tx)
            .await?;
        let existing = existing.map(|r| info(r, false)).transpose()?;
        let decision = decide(existing, active.as_deref(), new);
        match &decision {
            Decision::Insert(_) => {
                sqlx::query(
                    "INSERT INTO revisions (bundle, revision, digest, size, published_at_ms, published_by, content, \
                     figures, forced_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
            "INSERT INTO bundles (name, active_revision, updated_at_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET active_revision = excluded.active_revision, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(new.bundle)
        .bind(new.revision)
        .bind(new.published_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(decision.into_outcome())
    }

    async fn active(&self, bundle: &str) -> Result<Option<ActiveHead>, StoreError> {
        let row: Option<(String, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT r.revision, r.digest, r.size, r.figures FROM bundles b \
             JOIN revisions r ON r.bundle = b.name AND r.revision = b.active_revision WHERE b.name = ?1",
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
        Ok(sqlx::query_scalar("SELECT content FROM revisions WHERE bundle = ?1 AND digest = ?2 LIMIT 1")
            .bind(bundle)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn revisions(&self, bundle: &str) -> Result<Vec<RevisionInfo>, StoreError> {
        type RevRow = (String, String, i64, i64, String, bool, Option<String>, Option<String>);
        let rows: Vec<RevRow> = sqlx::query_as(
            "SELECT r.revision, r.digest, r.size, r.published_at_ms, r.published_by, \
             COALESCE(b.active_revision = r.revision, 0), r.figures, r.forced_reason \
             FROM revisions r LEFT JOIN bundles b ON b.name = r.bundle \
             WHERE r.bundle = ?1 ORDER BY r.id DESC",
        )
        .bind(bundle)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|(r, d, s, at, by, active, f, why)| info((r, d, s, at, by, f, why), active)).collect()
    }

    async fn rollback(&self, bundle: &str, revision: &str) -> Result<RollbackOutcome, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT revision, digest, size, published_at_ms, published_by, figures, forced_reason FROM revisions \
             WHERE bundle = ?1 AND revision = ?2",
        )
        .bind(bundle)
        .bind(revision)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(RollbackOutcome::Unknown) };
        let active: Option<String> = sqlx::query_scalar("SELECT active_revision FROM bundles WHERE name = ?1")
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
                tx.commit().await?;
            }
            return Ok(RollbackOutcome::AlreadyActive(info));
        }
        sqlx::query("UPDATE bundles SET active_revision = ?2, updated_at_ms = ?3 WHERE name = ?1")
            .bind(bundle)
            .bind(revision)
            .bind(super::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RollbackOutcome::Activated(info))
    }

    async fn report(&self, r: &GatewayReport) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO gateways (instance, bundle, revision, digest, last_sync, staleness_seconds, last_report_ms, \
             health) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (instance) DO UPDATE SET \
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        tx.commit().await?;
        Ok(true)
    }

    async fn changes(&self) -> Result<Option<mpsc::UnboundedReceiver<Change>>, StoreError> {
        Ok(None)
    }
}
