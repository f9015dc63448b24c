//! What differs between the two databases behind [`super::SqlStore`], and nothing else:
//! how a connection pool is opened and migrated, how writers of one bundle are serialized, and
//! how a committed change is announced to the other processes sharing the store.
//!
//! * **SQLite** (the embedded default): one file in WAL mode, one control-api process per file.
//!   A write transaction starts with `BEGIN IMMEDIATE`, which takes the database's write lock up
//!   front, so two writers never interleave their reads. Nothing is announced: no other process
//!   shares the file.
//! * **PostgreSQL** (several replicas share it): a writer of a bundle takes a transaction-scoped
//!   advisory lock on the bundle's name. Every write that changes what is served sends
//!   `NOTIFY control_api_bundles, '<bundle>'` inside its transaction (delivered on commit); each
//!   replica `LISTEN`s and reloads that bundle, so a long poll on any replica wakes when a
//!   revision is activated through another.
//!
//! Both go through sqlx's `Any` driver, so the statements in [`super::sql`] are written once
//! (`$n` parameters work in both dialects).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgListener;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Change, StoreError};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL notification channel; the payload is the bundle's name.
pub const CHANNEL: &str = "control_api_bundles";

/// Serializes PostgreSQL writers of one bundle until their transaction ends.
const LOCK_BUNDLE: &str = "SELECT pg_advisory_xact_lock(hashtext('control_api_bundle'), hashtext($1))";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Settings of every SQLite connection (the journal mode is kept by the file itself).
const SQLITE_PRAGMAS: [&str; 3] =
    ["PRAGMA foreign_keys = ON", "PRAGMA synchronous = NORMAL", "PRAGMA busy_timeout = 10000"];

/// The database behind a store, and what it needs to do its part of a write.
pub(crate) enum Backend {
    Sqlite,
    Postgres {
        url: String,
        /// The `LISTEN` task, stopped when the store is dropped.
        listener: Mutex<Option<JoinHandle<()>>>,
    },
}

impl Backend {
    /// Opens the SQLite file, creating it (and its directory) in WAL mode, and applies migrations.
    pub(crate) async fn sqlite_file(path: &Path) -> Result<(Backend, AnyPool), StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::CreateDir { path: path.display().to_string(), source })?;
        }
        // Absolute: the options go through a URL for the `Any` driver, which does not keep a
        // relative path such as `config/../run/control.db` intact.
        let path = &std::path::absolute(path)
            .map_err(|source| StoreError::CreateDir { path: path.display().to_string(), source })?;
        let options = SqliteConnectOptions::new().filename(path).create_if_missing(true);
        // WAL is a property of the file: set once here, every later connection finds it.
        options.clone().journal_mode(SqliteJournalMode::Wal).connect().await?.close().await?;
        let pool = sqlite_pool(AnyConnectOptions::from_url(&options.to_url_lossy())?, 4).await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok((Backend::Sqlite, pool))
    }

    /// An in-memory SQLite database (one connection, so that every query sees the same data).
    pub(crate) async fn sqlite_memory() -> Result<(Backend, AnyPool), StoreError> {
        let pool = sqlite_pool("sqlite::memory:".parse()?, 1).await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok((Backend::Sqlite, pool))
    }

    /// Connects to PostgreSQL and applies migrations (under the migrator's advisory lock, so
    /// replicas starting together do not race).
    pub(crate) async fn postgres(url: &str) -> Result<(Backend, AnyPool), StoreError> {
        sqlx::any::install_default_drivers();
        let pool =
            AnyPoolOptions::new().max_connections(10).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok((Backend::Postgres { url: url.to_owned(), listener: Mutex::new(None) }, pool))
    }

    /// Begins a transaction that writes: on SQLite it holds the database's write lock from the
    /// start; on PostgreSQL writers are serialized per bundle by [`Backend::lock_bundle`].
    pub(crate) async fn begin_write(&self, pool: &AnyPool) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self {
            Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres { .. } => pool.begin().await?,
        })
    }

    /// Waits until no other transaction writes `bundle`, and keeps it so until this one ends.
    /// Every writer of a bundle calls it before reading what it decides on.
    pub(crate) async fn lock_bundle(&self, tx: &mut Transaction<'static, Any>, bundle: &str) -> Result<(), StoreError> {
        if let Backend::Postgres { .. } = self {
            tx.execute(sqlx::query(LOCK_BUNDLE).bind(bundle)).await?;
        }
        Ok(())
    }

    /// Announces, on commit, that what `bundle` serves may have changed.
    pub(crate) async fn announce(&self, tx: &mut Transaction<'static, Any>, bundle: &str) -> Result<(), StoreError> {
        if let Backend::Postgres { .. } = self {
            tx.execute(sqlx::query(NOTIFY).bind(CHANNEL).bind(bundle)).await?;
        }
        Ok(())
    }

    /// The feed of changes announced by other processes; `None` for SQLite.
    pub(crate) async fn changes(&self) -> Result<Option<mpsc::UnboundedReceiver<Change>>, StoreError> {
        let Backend::Postgres { url, listener: slot } = self else { return Ok(None) };
        // Its own connection (PgListener::connect keeps a pool of one), so that listening never
        // takes a connection from the query pool.
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(feed(listener, tx));
        if let Ok(mut slot) = slot.lock() {
            if let Some(old) = slot.replace(task) {
                old.abort();
            }
        }
        Ok(Some(rx))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Postgres { listener, .. } = self {
            if let Some(task) = listener.get_mut().ok().and_then(Option::take) {
                task.abort();
            }
        }
    }
}

/// A pool of `max` connections to the SQLite database `options` names, each with
/// [`SQLITE_PRAGMAS`].
async fn sqlite_pool(options: AnyConnectOptions, max: u32) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .idle_timeout(None)
        .max_lifetime(None)
        .after_connect(|conn, _| {
            Box::pin(async move {
                for pragma in SQLITE_PRAGMAS {
                    conn.execute(pragma).await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
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
                if tx.send(Change::Lost).is_err() {
                    return;
                }
                if !reconnect(&mut listener, &tx).await {
                    return;
                }
                tracing::info!("PostgreSQL notification connection re-established; reloading every bundle");
                if tx.send(Change::Resync).is_err() {
                    return;
                }
            }
        }
    }
}

/// Retries until the listener is connected again (`true`) or nobody listens any more (`false`).
async fn reconnect(listener: &mut PgListener, tx: &mpsc::UnboundedSender<Change>) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return false;
        }
        // Any statement makes the listener reconnect and LISTEN again.
        match sqlx::query("SELECT 1").execute(&mut *listener).await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL notification reconnect failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
