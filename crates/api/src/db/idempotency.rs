//! `Idempotency-Key`: the first response to a key, stored in the transaction that produced it.

use deadpool_postgres::GenericClient;
use serde_json::Value;

/// A response stored under a key.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The request body the key was first used with.
    pub request: Value,
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
}

/// Serialises requests that carry the same key until the end of the transaction, so 20
/// parallel retries produce one item and 19 replays.
pub async fn lock(db: &impl GenericClient, key: &str) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await?;
    db.execute(&statement, &[&key]).await?;
    Ok(())
}

/// The stored response of `key`, if any.
pub async fn find(
    db: &impl GenericClient,
    key: &str,
) -> Result<Option<Stored>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "SELECT request, status, body, location FROM idempotency_keys WHERE key = $1",
        )
        .await?;
    let Some(row) = db.query_opt(&statement, &[&key]).await? else {
        return Ok(None);
    };
    Ok(Some(Stored {
        request: row.try_get("request")?,
        status: u16::try_from(row.try_get::<_, i16>("status")?).unwrap_or(500),
        body: row.try_get("body")?,
        location: row.try_get("location")?,
    }))
}

/// Stores the response of `key`.
pub async fn store(
    db: &impl GenericClient,
    key: &str,
    stored: &Stored,
) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached("INSERT INTO idempotency_keys (key, request, status, body, location) VALUES ($1, $2, $3, $4, $5)")
        .await?;
    let status = i16::try_from(stored.status).unwrap_or(500);
    db.execute(
        &statement,
        &[
            &key,
            &stored.request,
            &status,
            &stored.body,
            &stored.location,
        ],
    )
    .await?;
    Ok(())
}
