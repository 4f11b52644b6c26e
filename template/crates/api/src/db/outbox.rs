//! The transactional outbox: events written with the change, published later by the relay.

use crate::domain::item::ItemEvent;
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

/// Stores `event` (with trace headers) in the caller's transaction.
pub async fn enqueue(
    db: &impl GenericClient,
    event: &ItemEvent,
    headers: &Value,
) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "INSERT INTO outbox (event_id, routing_key, payload, headers) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    let payload = serde_json::to_value(event).unwrap_or(Value::Null);
    db.execute(&statement, &[&event.id, &event.kind, &payload, headers])
        .await?;
    Ok(())
}

/// A pending row.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: Value,
    pub headers: Value,
}

/// Locks up to `limit` pending rows, oldest first, skipping rows another replica's relay holds
/// (so across replicas, events are published unordered).
pub async fn claim(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<Pending>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "SELECT seq, event_id, routing_key, payload, headers \
             FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    db.query(&statement, &[&limit])
        .await?
        .iter()
        .map(|row| {
            Ok(Pending {
                seq: row.try_get("seq")?,
                event_id: row.try_get("event_id")?,
                routing_key: row.try_get("routing_key")?,
                payload: row.try_get("payload")?,
                headers: row.try_get("headers")?,
            })
        })
        .collect()
}

/// Marks rows sent (after the broker confirmed them).
pub async fn mark_sent(db: &impl GenericClient, seqs: &[i64]) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1)")
        .await?;
    db.execute(&statement, &[&seqs]).await?;
    Ok(())
}

/// Pending rows and the age of the oldest, in seconds.
pub async fn backlog(db: &impl GenericClient) -> Result<(i64, f64), tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "SELECT count(*) AS pending, \
                    COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS oldest \
             FROM outbox WHERE sent_at IS NULL",
        )
        .await?;
    let row = db.query_one(&statement, &[]).await?;
    Ok((row.try_get("pending")?, row.try_get("oldest")?))
}
