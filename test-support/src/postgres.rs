//! A real PostgreSQL for tests: a database created per test and dropped after it, on the server
//! `CONTROL_API_TEST_POSTGRES` names (scripts/pg-up starts one and prints its URL).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The variable naming a PostgreSQL URL whose role may create databases (`scripts/pg-up` prints one).
pub const PG_ENV: &str = "CONTROL_API_TEST_POSTGRES";

/// The PostgreSQL URL for tests; `None` (the test then returns early) when unset outside CI.
/// In CI (`CI` set) a missing URL fails the test: the PostgreSQL tests must run there.
pub fn postgres_url() -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{PG_ENV} is not set: CI must run the PostgreSQL tests (scripts/pg-up starts PostgreSQL and prints the URL)")
        }
        _ => {
            eprintln!("note: {PG_ENV} is not set; not running this PostgreSQL test (see scripts/pg-up)");
            None
        }
    }
}

/// A database created for one test and dropped after it.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

impl TestDb {
    pub fn create() -> Option<TestDb> {
        let admin = postgres_url()?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos());
        let name = format!(
            "control_api_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos.unwrap_or(0) % 1_000_000
        );
        run_sql(&admin, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        Some(TestDb { url: with_database(&admin, &name), admin, name })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = run_sql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("warning: dropping test database {}: {e}", self.name);
        }
    }
}

/// `postgres://u:p@h:5432/db?x=y` with another database name.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let prefix = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    }
}

/// Runs one statement on its own thread and runtime (callable from sync and async tests).
fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.map_err(|e| e.to_string())?;
            sqlx::query(&sql).execute(&mut conn).await.map_err(|e| e.to_string())?;
            conn.close().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_string())?
}

impl TestDb {
    /// The address of its server.
    pub fn addr(&self) -> SocketAddr {
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
        let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
        host_port.to_socket_addrs().ok().and_then(|mut a| a.next()).expect("the database's address resolves")
    }

    /// Its URL with the server's address replaced by `addr` (a relay in front of it).
    pub fn url_through(&self, addr: SocketAddr) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
        let path = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
        let at = if userinfo.is_empty() { String::new() } else { format!("{userinfo}@") };
        format!("{scheme}://{at}{addr}{path}")
    }
}
