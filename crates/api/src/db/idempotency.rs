//! `Idempotency-Key`: the first response to a key, stored in the transaction that produced it.

use deadpool_postgres::GenericClient;
use serde_json::Value;

/// An `Idempotency-Key` scoped by method, route pattern and caller (`POST /v1/orders`,
/// `POST /v1/orders as alice`): one key sent to two endpoints, or by two callers, is two keys.
#[derive(Debug, Clone)]
pub struct ScopedKey {
    pub scope: String,
    pub key: String,
}

/// A response stored under a key.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The request body the key was first used with.
    pub request: Value,
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
}

/// Serialises requests with the same key until the transaction ends (20 parallel retries: one
/// item, 19 replays). It locks the unscoped key, as the previous release does, so both releases
/// share the lock during a rollout; a key sent to two routes at once merely waits.
pub async fn lock(db: &impl GenericClient, key: &ScopedKey) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await?;
    db.execute(&statement, &[&key.key]).await?;
    Ok(())
}

pub async fn find(
    db: &impl GenericClient,
    key: &ScopedKey,
) -> Result<Option<Stored>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "SELECT request, status, body, location FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .await?;
    let Some(row) = db.query_opt(&statement, &[&key.scope, &key.key]).await? else {
        return Ok(None);
    };
    Ok(Some(Stored {
        request: row.try_get("request")?,
        status: u16::try_from(row.try_get::<_, i16>("status")?).unwrap_or(500),
        body: row.try_get("body")?,
        location: row.try_get("location")?,
    }))
}

pub async fn store(
    db: &impl GenericClient,
    key: &ScopedKey,
    stored: &Stored,
) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached("INSERT INTO idempotency_keys (scope, key, request, status, body, location) VALUES ($1, $2, $3, $4, $5, $6)")
        .await?;
    let status = i16::try_from(stored.status).unwrap_or(500);
    db.execute(
        &statement,
        &[
            &key.scope,
            &key.key,
            &stored.request,
            &status,
            &stored.body,
            &stored.location,
        ],
    )
    .await?;
    Ok(())
}
