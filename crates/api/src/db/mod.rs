//! PostgreSQL: the request pools and the background pool, migrations, and the queries of the
//! example.

pub mod idempotency;
pub mod items;
pub mod outbox; // @rabbitmq

use crate::problem::ApiError;
use bootstrap::config::DatabaseSettings;
use deadpool_postgres::{
    Client, Connect, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

mod embedded {
    refinery::embed_migrations!("src/db/migrations");
}

/// Arbitrary constant naming the migration lock among the advisory locks of the database.
const MIGRATION_LOCK: i64 = 0x5348_4950_5348_4150; // "SHIPSHAP"

/// Opens a pool connection on the runtime that asks for it, with its driver task there too.
///
/// deadpool-postgres' own connector does the same but logs a closed connection as a warning;
/// a connection ending is routine here (a recycled broken one, a runtime stopping).
struct Connector {
    tls: MakeRustlsConnect,
}

impl Connect for Connector {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = config.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let (client, connection) = config.connect(tls).await?;
            let driver = tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %describe(&error), "pool connection closed");
                }
            });
            Ok((client, driver))
        })
    }
}

/// The request pool, split into one pool per API worker.
///
/// An actix worker is a single-threaded runtime, and a connection's socket and driver task
/// belong to the runtime that opened it. Shared, a pool hands a worker connections driven by
/// another thread (or by the main runtime): every query then wakes a second thread, which on
/// two busy cores costs a fifth of the request path's throughput. A worker's own pool keeps a
/// request on one thread; it dies with its worker, after the worker's in-flight requests, and
/// nothing else uses it (background tasks have [`background_pool`]).
#[derive(Debug, Clone)]
pub struct RequestPools {
    pools: Arc<[Pool]>,
    handed_out: Arc<AtomicUsize>,
    limit: Duration,
}

impl RequestPools {
    /// `settings.pool_max_size` connections shared out among `workers` pools (at least one
    /// each); no connection is opened yet. Each [`Database::run`] is bounded by the query
    /// timeout.
    pub fn new(settings: &DatabaseSettings, workers: usize) -> anyhow::Result<Self> {
        let workers = workers.max(1);
        let (base, extra) = (
            settings.pool_max_size / workers,
            settings.pool_max_size % workers,
        );
        let pools = (0..workers)
            .map(|n| {
                build_pool(
                    settings,
                    "shipshape",
                    (base + usize::from(n < extra)).max(1),
                )
            })
            .collect::<anyhow::Result<Arc<[Pool]>>>()?;
        Ok(Self {
            pools,
            handed_out: Arc::new(AtomicUsize::new(0)),
            limit: settings.query_timeout,
        })
    }

    /// The next worker's pool: call it once in each worker, from the app factory. A worker
    /// that actix restarts gets a pool whose connections died with its predecessor; they are
    /// found closed on checkout and replaced.
    pub fn for_worker(&self) -> Database {
        let n = self.handed_out.fetch_add(1, Ordering::Relaxed) % self.pools.len();
        Database::new(self.pools[n].clone(), self.limit)
    }

    /// API workers served: one pool each.
    pub fn workers(&self) -> usize {
        self.pools.len()
    }

    /// Connections all the pools together may open.
    pub fn connections(&self) -> usize {
        self.pools.iter().map(|pool| pool.status().max_size).sum()
    }

    /// Each worker's pool, for the gauges.
    pub fn pools(&self) -> impl Iterator<Item = Pool> + '_ {
        self.pools.iter().cloned()
    }

    /// Closes every pool: idle connections end, none is opened again.
    pub fn close(&self) {
        self.pools.iter().for_each(Pool::close);
    }
}

// @rabbitmq-begin
/// The background tasks' pool, one connection per task that holds one (housekeeping; the
/// relay's publishing loops, its lag check and the consumers): a relay batch's row locks or a
/// consumer's transaction never wait for a request's connection, nor hold one. Build and use
/// it on the main runtime, which outlives the API workers.
// @rabbitmq-else
// /// The background tasks' pool, one connection per task that holds one (housekeeping): their
// /// work never waits for a request's connection, nor holds one. Build and use it on the main
// /// runtime, which outlives the API workers.
// @rabbitmq-end
pub fn background_pool(settings: &DatabaseSettings, tasks: usize) -> anyhow::Result<Pool> {
    build_pool(settings, "shipshape-background", tasks.max(1))
}

fn build_pool(
    settings: &DatabaseSettings,
    application: &str,
    max_size: usize,
) -> anyhow::Result<Pool> {
    let (mut config, tls) = bootstrap::tls::postgres(settings)?;
    config.application_name(application);
    let manager = Manager::from_connect(
        config,
        Connector { tls },
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

    /// The configured connections are shared out among the workers (the first ones take the
    /// remainder), each worker at least one; workers are handed their pools in turn.
    #[test]
    fn the_request_pool_is_shared_out_among_the_workers() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let settings = DatabaseSettings {
            pool_max_size: 5,
            ..settings()
        };
        let pools = RequestPools::new(&settings, 2).unwrap();
        assert_eq!((pools.workers(), pools.connections()), (2, 5));
        let handed: Vec<usize> = (0..3)
            .map(|_| pools.for_worker().pool.status().max_size)
            .collect();
        assert_eq!(handed, [3, 2, 3]);
        let settings = DatabaseSettings {
            pool_max_size: 1,
            ..settings
        };
        assert_eq!(RequestPools::new(&settings, 3).unwrap().connections(), 3);
    }

    /// An actix worker is a runtime of its own, stopped at shutdown before the process ends
    /// and restarted by actix after a panic. Another worker's requests must not be using a
    /// connection that died with it.
    #[test]
    fn a_worker_stopping_leaves_the_other_workers_connections_alone() {
        let main = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let settings = DatabaseSettings {
            pool_max_size: 4,
            ..settings()
        };
        let pools = main
            .block_on(async { RequestPools::new(&settings, 2) })
            .unwrap();
        let worker = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let (first, second) = (worker(), worker());
        let (first_db, second_db) = (pools.for_worker(), pools.for_worker());
        let query = |db: &Database| {
            let pool = db.pool.clone();
            async move {
                // Both connections of the pool, so a shared pool would hold the other's.
                let (a, b) = (pool.get().await?, pool.get().await?);
                a.simple_query("SELECT 1").await?;
                b.simple_query("SELECT 1").await?;
                Ok::<_, anyhow::Error>(())
            }
        };
        first.block_on(query(&first_db)).unwrap();
        second.block_on(query(&second_db)).unwrap();
        drop(first);
        second
            .block_on(query(&second_db))
            .expect("a connection died with another worker's runtime");
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
