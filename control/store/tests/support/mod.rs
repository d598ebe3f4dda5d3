//! The test harness shared by the conformance and crash tests: a fresh database of either
//! backend per test.
//!
//! SQLite: a file in a new temporary directory. PostgreSQL: a new database on the server named
//! by `COMMUCAT_TEST_POSTGRES_URL` (`scripts/test.sh` starts one with `scripts/postgres.sh`);
//! without that variable the harness starts a private server for the test itself through the
//! same script and stops it when the test ends, so the suite never silently skips PostgreSQL.

#![allow(dead_code, unreachable_pub, clippy::disallowed_methods)] // test code: env reads and threads are fine

use control_store::{Backend, Store, StoreConfig};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Which backend a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// The variable naming a running PostgreSQL server for the tests.
pub const POSTGRES_URL_VAR: &str = "COMMUCAT_TEST_POSTGRES_URL";

/// A private PostgreSQL server, stopped on drop.
pub struct PgServer {
    url: String,
}

impl PgServer {
    fn start() -> Self {
        let output = Command::new(script())
            .arg("start")
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/postgres.sh: {e}"));
        assert!(
            output.status.success(),
            "{POSTGRES_URL_VAR} is not set and starting a private PostgreSQL failed.\n\
             Start one with `export {POSTGRES_URL_VAR}=$(scripts/postgres.sh start)` \
             (stop it with `scripts/postgres.sh stop \"${POSTGRES_URL_VAR}\"`).\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let url = String::from_utf8(output.stdout).unwrap().trim().to_string();
        Self { url }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.url).status();
    }
}

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres.sh").to_string()
}

/// What keeps a test database alive: the temporary directory or the private server.
pub enum Guard {
    Dir(tempfile::TempDir),
    Server(Option<PgServer>),
}

/// Replaces the database name in a `postgres://` URL.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{dbname}{query}")
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// A configuration for a fresh, empty database of `kind`.
pub async fn fresh(kind: Kind) -> (StoreConfig, Guard) {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (StoreConfig::in_data_dir(dir.path()), Guard::Dir(dir))
        }
        Kind::Postgres => {
            let (base, server) = match std::env::var(POSTGRES_URL_VAR) {
                Ok(url) if !url.is_empty() => (url, None),
                _ => {
                    let server = PgServer::start();
                    (server.url.clone(), Some(server))
                }
            };
            let name = format!(
                "t_{}_{}",
                std::process::id(),
                DATABASES.fetch_add(1, Ordering::Relaxed)
            );
            let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}={base}: {e}"));
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            drop(client);
            let _ = driver.await;
            let url = with_dbname(&base, &name);
            (
                StoreConfig::with_backend(Backend::Postgres { url }),
                Guard::Server(server),
            )
        }
    }
}

/// A fresh store of `kind`, opened (migrated).
pub struct TestStore {
    pub store: Store,
    pub config: StoreConfig,
    pub guard: Guard,
}

pub async fn open(kind: Kind) -> TestStore {
    open_with(kind, |_| {}).await
}

pub async fn open_with(kind: Kind, adjust: impl FnOnce(&mut StoreConfig)) -> TestStore {
    let (mut config, guard) = fresh(kind).await;
    adjust(&mut config);
    let store = Store::open(&config).await.unwrap();
    TestStore {
        store,
        config,
        guard,
    }
}

/// Runs raw SQL against the store's database, bypassing the store (to plant a future schema
/// version, or to read what is really on disk). Returns the first column of every row as
/// bytes (BLOB/BYTEA columns only) when `sql` is a query.
pub async fn raw_blobs(config: &StoreConfig, sql: &str) -> Vec<Vec<u8>> {
    match &config.backend {
        Backend::Sqlite { path } => {
            let conn = rusqlite::Connection::open(path).unwrap();
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        }
        Backend::Postgres { url } => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(connection);
            let rows = client.query(sql, &[]).await.unwrap();
            let out = rows.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect();
            drop(client);
            let _ = driver.await;
            out
        }
    }
}

/// Executes raw SQL statements (no result).
pub async fn raw_execute(config: &StoreConfig, sql: &str) {
    match &config.backend {
        Backend::Sqlite { path } => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch(sql).unwrap();
        }
        Backend::Postgres { url } => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(connection);
            client.batch_execute(sql).await.unwrap();
            drop(client);
            let _ = driver.await;
        }
    }
}

/// Runs each named async test function once per backend: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Kind::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Kind::Postgres).await;
                }
            )*
        }
    };
}

/// A write lock held on the store's database from outside the store, until released.
pub enum WriteLock {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client, tokio::task::JoinHandle<()>),
}

/// Takes the database's write lock: SQLite `BEGIN IMMEDIATE`; PostgreSQL an exclusive lock on
/// the envelope and counter tables.
pub async fn hold_write_lock(config: &StoreConfig) -> WriteLock {
    match &config.backend {
        Backend::Sqlite { path } => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            WriteLock::Sqlite(conn)
        }
        Backend::Postgres { url } => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            client
                .batch_execute("BEGIN; LOCK TABLE envelopes, inbox_counts IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            WriteLock::Postgres(client, driver)
        }
    }
}

impl WriteLock {
    pub async fn release(self) {
        match self {
            Self::Sqlite(conn) => conn.execute_batch("ROLLBACK").unwrap(),
            Self::Postgres(client, driver) => {
                client.batch_execute("ROLLBACK").await.unwrap();
                drop(client);
                let _ = driver.await;
            }
        }
    }
}
