//! PostgreSQL: the request pool, migrations, and the queries of the example.

pub mod idempotency;
pub mod items;
pub mod outbox;

use crate::problem::ApiError;
use bootstrap::config::DatabaseSettings;
use deadpool_postgres::{Client, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("src/db/migrations");
}

/// Arbitrary constant naming the migration lock among the advisory locks of the database.
const MIGRATION_LOCK: i64 = 0x5348_4950_5348_4150; // "SHIPSHAP"

/// The connection parameters in `settings`.
pub fn connection_config(settings: &DatabaseSettings) -> anyhow::Result<tokio_postgres::Config> {
    settings.url.expose().parse().map_err(|e| {
        anyhow::anyhow!(
            "APP__DATABASE__URL ({}) is not a PostgreSQL URL: {e}",
            settings.url
        )
    })
}

/// Builds the pool (no connection is opened yet).
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let mut config = connection_config(settings)?;
    config.application_name("{{project-name}}");
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // Fast: a connection that broke is noticed on use; a round trip per checkout
            // would add a query to every request.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(settings.pool_max_size)
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
    let mut config = connection_config(settings)?;
    config.application_name("{{project-name}}-migrations");
    let (mut client, connection) = config
        .connect(NoTls)
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

/// tokio-postgres errors print as "db error"; the source says why.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// Runs a request's database work on one pooled connection, bounded by `limit`.
///
/// The pool's wait timeout bounds getting a connection; this bounds using it. A connection
/// whose work timed out is in an unknown state (a black-holed network, a frozen server), so it
/// is taken out of the pool instead of going back to it.
pub async fn within<T>(
    pool: &Pool,
    limit: Duration,
    work: impl for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let mut client = pool.get().await?;
    let outcome = tokio::time::timeout(limit, work(&mut client)).await;
    match outcome {
        Ok(result) => result,
        Err(_) => {
            drop(Object::take(client));
            Err(ApiError::Unavailable(format!(
                "database work exceeded {}",
                humantime_secs(limit)
            )))
        }
    }
}

fn humantime_secs(limit: Duration) -> String {
    format!("{:.1}s", limit.as_secs_f64())
}
