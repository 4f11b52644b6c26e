//! PostgreSQL: the request pool, migrations, and the queries of the example.

pub mod idempotency;
pub mod items;
pub mod outbox; // @rabbitmq

use crate::problem::ApiError;
use bootstrap::config::DatabaseSettings;
use deadpool_postgres::{
    Client, Connect, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio_postgres_rustls::MakeRustlsConnect;

mod embedded {
    refinery::embed_migrations!("src/db/migrations");
}

/// Arbitrary constant naming the migration lock among the advisory locks of the database.
const MIGRATION_LOCK: i64 = 0x5348_4950_5348_4150; // "SHIPSHAP"

/// Opens pool connections on the main runtime, wherever the pool is used.
///
/// A connection's socket and its driver task belong to the runtime that opened them. Opened
/// from a handler, that is an actix worker's runtime, which stops first at shutdown: every
/// connection it opened dies with it, and in-flight writes (and the background workers, which
/// share the pool) fail with "connection closed". Opening them on the main runtime, which lives
/// until the process ends, keeps them independent of the API workers.
struct MainRuntimeConnect {
    runtime: Handle,
    tls: MakeRustlsConnect,
}

impl Connect for MainRuntimeConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = config.clone();
        let runtime = self.runtime.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let opened = runtime.spawn(async move {
                let (client, connection) = config.connect(tls).await?;
                let driver = tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(error = %describe(&error), "pool connection closed");
                    }
                });
                Ok((client, driver))
            });
            match opened.await {
                Ok(result) => result,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                // The main runtime is shutting down: never resolve, and let the pool's create
                // timeout turn this into an error the caller maps to 503.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

/// Builds the request pool (no connection is opened yet). Call it on the main runtime: its
/// connections are opened there (see [`MainRuntimeConnect`]).
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    build_pool(settings, "shipshape", settings.pool_max_size)
}

// @rabbitmq-begin
/// The outbox relay's own connections (one per publishing loop, one for its lag check): a
/// batch's row locks and a stalled publish never hold a connection a request needs.
pub fn relay_pool(settings: &DatabaseSettings, publishers: usize) -> anyhow::Result<Pool> {
    build_pool(settings, "shipshape-relay", publishers + 1)
}
// @rabbitmq-end

fn build_pool(
    settings: &DatabaseSettings,
    application: &str,
    max_size: usize,
) -> anyhow::Result<Pool> {
    let (mut config, tls) = bootstrap::tls::postgres(settings)?;
    config.application_name(application);
    let connect = MainRuntimeConnect {
        runtime: Handle::try_current()
            .map_err(|e| anyhow::anyhow!("building the pool outside a runtime: {e}"))?,
        tls,
    };
    let manager = Manager::from_connect(
        config,
        connect,
        ManagerConfig {
            // Fast: a connection that broke is noticed on use; a round trip per checkout
            // would add a query to every request.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(max_size)
        // A request never hangs on a saturated or dead database: it gets a 503 instead.
        .wait_timeout(Some(settings.pool_wait_timeout))
        .create_timeout(Some(settings.pool_wait_timeout))
        .recycle_timeout(Some(settings.pool_wait_timeout))
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// Applies the embedded migrations on a connection of its own, under an advisory lock, so
/// replicas starting together on an empty database take turns instead of racing.
pub async fn migrate(settings: &DatabaseSettings) -> anyhow::Result<usize> {
    let (mut config, tls) = bootstrap::tls::postgres(settings)?;
    config.application_name("shipshape-migrations");
    let (mut client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| anyhow::anyhow!("connecting for migrations: {}", describe(&e)))?;
    let driver = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| anyhow::anyhow!("taking the migration lock: {}", describe(&e)))?;
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await;
    // The lock also ends with the session; unlock explicitly to let the next replica in now.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    let applied = report
        .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))?
        .applied_migrations()
        .len();
    Ok(applied)
}

/// Whether `error` says nothing about the work itself, only that the database could not do it
/// now: lost connections and the server going away (shutdown, restart, failover, too many
/// clients), and the conflicts a retry resolves (serialization failures, deadlocks).
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    let Some(db) = error.as_db_error() else {
        // No SQLSTATE: an I/O failure on the way to the server is transient; a row that does
        // not convert (a column changed under a running replica) is not.
        return std::error::Error::source(error)
            .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
    };
    let code = db.code().code();
    // 08 connection exception, 53 insufficient resources, 57 operator intervention (but not
    // 57014, a statement cancelled by its own timeout: retrying the same work times out again);
    // 40001 serialization failure, 40P01 deadlock detected.
    (matches!(&code[..2], "08" | "53" | "57") && code != "57014")
        || matches!(code, "40001" | "40P01")
}

/// tokio-postgres errors print as "db error"; the source says why.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// The request path's only way to PostgreSQL: every use runs on one pooled connection and is
/// bounded by the query timeout, so a frozen or black-holed database costs a request at most
/// that long (then 503), never a connection held for the TCP timeout.
///
/// Handlers get this, not the pool: an unbounded query is not something they can write.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    limit: Duration,
}

impl Database {
    /// Wraps the request pool; each [`Database::run`] is bounded by `limit`.
    pub fn new(pool: Pool, limit: Duration) -> Self {
        Self { pool, limit }
    }

    /// Runs `work` on one pooled connection within the limit.
    ///
    /// The pool's wait timeout bounds getting a connection; this bounds using it. A connection
    /// whose work timed out is in an unknown state (a black-holed network, a frozen server), so
    /// it is taken out of the pool instead of going back to it.
    pub async fn run<T>(
        &self,
        work: impl for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let mut client = self.pool.get().await?;
        match tokio::time::timeout(self.limit, work(&mut client)).await {
            Ok(result) => result,
            Err(_) => {
                drop(Object::take(client));
                Err(ApiError::Unavailable(format!(
                    "database work exceeded {:.1}s",
                    self.limit.as_secs_f64()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::ApiError;

    fn settings() -> DatabaseSettings {
        DatabaseSettings {
            pool_max_size: 2,
            pool_wait_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(2),
            ..DatabaseSettings::from_url("postgres://postgres@127.0.0.1:5432/postgres").unwrap()
        }
    }

    /// An actix worker is a runtime of its own that stops before the process does. A pool
    /// connection it opened must outlive it: the background workers and other API workers reuse it.
    #[test]
    fn pool_connections_outlive_the_runtime_that_first_used_them() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let pool = main.block_on(async { pool(&settings()) }).unwrap();
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        worker.block_on(async {
            let client = pool.get().await.unwrap();
            client.simple_query("SELECT 1").await.unwrap();
        });
        // In use elsewhere (a background worker, another API worker) when the first worker stops.
        let client = main.block_on(pool.get()).unwrap();
        drop(worker);
        main.block_on(client.simple_query("SELECT 1"))
            .expect("the connection died with the worker's runtime");
    }

    /// A real error with SQLSTATE `code`, raised by the machine's PostgreSQL.
    async fn raised(code: &str) -> tokio_postgres::Error {
        let (client, connection) = tokio_postgres::connect(
            "host=127.0.0.1 user=postgres dbname=postgres",
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'raised for a test' USING ERRCODE = '{code}'; END $$"
            ))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn conflicts_and_an_absent_server_are_transient_and_answered_503() {
        for code in ["40001", "40P01", "57P01", "53300", "08006"] {
            let error = raised(code).await;
            assert!(is_transient(&error), "{code}");
            assert!(
                matches!(ApiError::from(error), ApiError::Unavailable(_)),
                "{code}"
            );
        }
    }

    #[tokio::test]
    async fn errors_of_the_work_itself_are_not_transient() {
        for code in ["23505", "22P02", "42P01"] {
            let error = raised(code).await;
            assert!(!is_transient(&error), "{code}");
            assert!(
                matches!(ApiError::from(error), ApiError::Internal(_)),
                "{code}"
            );
        }
    }
}
