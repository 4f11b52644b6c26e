//! PostgreSQL: the request and background pools, migrations, and the example's queries.

pub mod items;
pub mod outbox; // @rabbitmq

use crate::problem::ApiError;
use bootstrap::Backoff;
use bootstrap::config::DatabaseSettings;
use bootstrap::schema::Schema;
use deadpool_postgres::{
    Client, Connect, Manager, ManagerConfig, Object, Pool, PoolError, Runtime, TimeoutType,
};
use futures_util::future::BoxFuture;
use health::Alarm;
pub use health::checks::postgres::describe;
use prometheus::IntCounter;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

mod embedded {
    refinery::embed_migrations!("src/db/migrations");
}

/// Opens a pool connection, its driver task on the calling runtime. Unlike deadpool-postgres'
/// connector it does not warn on a close (routine: recycling, a runtime stopping); a close with an
/// error raises `lost`, so the postgres check runs now rather than at its next poll.
struct Connector {
    tls: MakeRustlsConnect,
    lost: Alarm,
}

type Connected = Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>;

impl Connect for Connector {
    fn connect(&self, config: &tokio_postgres::Config) -> BoxFuture<'_, Connected> {
        let config = config.clone();
        let tls = self.tls.clone();
        let lost = self.lost.clone();
        Box::pin(async move {
            let (client, connection) = config.connect(tls).await?;
            let driver = tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %describe(&error), "pool connection closed");
                    lost.raise();
                }
            });
            Ok((client, driver))
        })
    }
}

/// A pool of `max_size` connections, named `application` in `pg_stat_activity`.
pub fn pool(
    settings: &DatabaseSettings,
    application: &str,
    max_size: usize,
    lost: &Alarm,
) -> anyhow::Result<Pool> {
    let (mut config, tls) = bootstrap::tls::postgres(settings)?;
    config.application_name(application);
    // Fast recycling (the default): a broken connection is noticed on use; verifying it would
    // cost a query per checkout.
    let lost = lost.clone();
    let manager = Manager::from_connect(config, Connector { tls, lost }, ManagerConfig::default());
    Ok(Pool::builder(manager)
        .max_size(max_size)
        // A request never hangs on a saturated or dead database: it gets a 503 instead.
        .wait_timeout(Some(settings.pool_wait_timeout))
        .create_timeout(Some(settings.pool_wait_timeout))
        .recycle_timeout(Some(settings.pool_wait_timeout))
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// The schema this release needs: the migrations in `src/db/migrations`, embedded.
pub fn schema() -> Schema {
    Schema::new(embedded::migrations::runner().get_migrations().clone())
}

/// Whether `error` says only that the database could not do the work now (connection lost,
/// server away or full, a conflict), not that the work is wrong: a retry may succeed.
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
    // 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown, or
    // a statement timeout while the server was slow); 40001 serialization failure, 40P01
    // deadlock; 25006 write in a read-only transaction (after a failover); 55P03 lock timeout.
    matches!(&code[..2], "08" | "53" | "57")
        || matches!(code, "40001" | "40P01" | "25006" | "55P03")
}

/// Connections PostgreSQL refused because it was full (SQLSTATE 53300, `too many clients`).
pub static CONNECTIONS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "db_connections_refused_total",
        "Connections PostgreSQL refused as too many clients; the work waited for a pooled one.",
    )
    .unwrap_or_else(|_| unreachable!("the metric's name and help are valid"))
});

/// First pause between two checkouts while the server is full (then doubling, jittered).
const FULL_SERVER_RETRY: Duration = Duration::from_millis(20);

/// The request path's only way to PostgreSQL (handlers never get the pool): every use runs on
/// one pooled connection bounded by the query timeout, so a frozen or black-holed database
/// costs a request at most that long (then 503), not the TCP timeout.
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

    /// Runs `work` on one pooled connection within the limit; one whose work timed out is in an
    /// unknown state, so it is dropped rather than returned to the pool.
    pub async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut Client) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut client = self.checkout().await?;
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

    /// A pooled connection. A full server (other clients hold every slot) is pressure, not an
    /// outage: retry with backoff, within the pool's wait timeout, until a request returns one.
    async fn checkout(&self) -> Result<Object, PoolError> {
        let wait = self.pool.timeouts().wait.unwrap_or(FULL_SERVER_RETRY);
        let mut backoff = Backoff::new(FULL_SERVER_RETRY, FULL_SERVER_RETRY * 10);
        let retrying = async {
            loop {
                match self.pool.get().await {
                    Err(PoolError::Backend(error))
                        if error.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) =>
                    {
                        CONNECTIONS_REFUSED.inc();
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    other => return other,
                }
            }
        };
        tokio::time::timeout(wait, retrying)
            .await
            .unwrap_or(Err(PoolError::Timeout(TimeoutType::Wait)))
    }
}

#[cfg(test)]
pub(crate) use tests::admin as test_admin;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::ApiError;

    /// A superuser session on the machine's PostgreSQL (127.0.0.1:5432, trust), for tests.
    pub(crate) async fn admin() -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            "host=127.0.0.1 user=postgres dbname=postgres",
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
    }

    /// A real error with SQLSTATE `code`, raised by the machine's PostgreSQL.
    async fn raised(code: &str) -> tokio_postgres::Error {
        admin()
            .await
            .batch_execute(&format!(
                "DO $$ BEGIN RAISE EXCEPTION 'raised for a test' USING ERRCODE = '{code}'; END $$"
            ))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn what_a_retry_can_fix_is_transient_and_answered_503() {
        // Conflicts, the server away or full, and what a failover or a slow moment looks like:
        // a read-only transaction, a lock not granted, a statement cancelled by its timeout.
        for code in [
            "40001", "40P01", "57P01", "53300", "08006", "25006", "55P03", "57014",
        ] {
            let error = raised(code).await;
            assert!(is_transient(&error), "{code}");
            assert!(
                matches!(ApiError::from(error), ApiError::Unavailable(_)),
                "{code}"
            );
        }
    }

    #[tokio::test]
    async fn text_postgresql_cannot_store_is_the_clients_mistake() {
        // 22021: a NUL in a text value (a field a team adds without the domain's NUL rule).
        for code in ["22021", "22P05"] {
            let error = ApiError::from(raised(code).await);
            assert!(
                matches!(&error, ApiError::Unprocessable(detail) if !detail.contains("raised for a test")),
                "{code}: {error:?}"
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
