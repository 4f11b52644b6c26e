//! The request pool.

use bootstrap::config::DatabaseSettings;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

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
    config.application_name("shipshape");
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
