//! The transactional outbox: events written with the change, published later by the relay.

use crate::problem::ApiError;
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// Stores `event` (with trace headers) in the caller's transaction. An event is a JSON object
/// with its own `id` (a UUID: the AMQP `message_id`, and what the consumer recognises a
/// redelivery by) and its `type` (the routing key); the rest is the resource's.
pub async fn enqueue(
    db: &impl GenericClient,
    event: &impl Serialize,
    headers: &Value,
) -> Result<(), ApiError> {
    let payload = serde_json::to_value(event).map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = payload["id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok());
    let (Some(id), Some(kind)) = (id, payload["type"].as_str()) else {
        return Err(ApiError::Internal(format!(
            "an event needs a UUID `id` and a `type`: {payload}"
        )));
    };
    let statement = db
        .prepare_cached(
            "INSERT INTO outbox (event_id, routing_key, payload, headers) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    db.execute(&statement, &[&id, &kind, &payload, headers])
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    pub payload: Value,
    pub headers: Value,
}

/// Claims up to `limit` pending rows for `lease`, oldest first, skipping rows another relay
/// loop holds or claimed (so events go out unordered, even within one replica). One statement,
/// so no lock outlives it; a dead relay's rows go to the next loop once the lease ends.
pub async fn claim(
    db: &impl GenericClient,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Pending>, tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "UPDATE outbox SET claimed_until = now() + make_interval(secs => $2) \
             WHERE seq IN (SELECT seq FROM outbox \
                 WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < now()) \
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, event_id, routing_key, payload, headers",
        )
        .await?;
    let mut rows = db
        .query(&statement, &[&limit, &lease.as_secs_f64()])
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
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    rows.sort_unstable_by_key(|row| row.seq);
    Ok(rows)
}

/// Marks rows sent (after the broker confirmed them).
pub async fn mark_sent(db: &impl GenericClient, seqs: &[i64]) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1)")
        .await?;
    db.execute(&statement, &[&seqs]).await.map(|_| ())
}

/// Gives up a claim on rows that were not published, so the next loop takes them at once.
pub async fn release(db: &impl GenericClient, seqs: &[i64]) -> Result<(), tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "UPDATE outbox SET claimed_until = NULL WHERE seq = ANY($1) AND sent_at IS NULL",
        )
        .await?;
    db.execute(&statement, &[&seqs]).await.map(|_| ())
}

/// Pending rows counted one by one up to this; past it, estimated.
const EXACT_BACKLOG: i64 = 10_000;

/// Pending rows and the oldest one's age in seconds, at bounded cost however long an outage makes
/// the backlog (polled every few seconds): exact up to [`EXACT_BACKLOG`], past it the seq span of
/// the oldest and newest pending rows (exact while sent in order, else an upper bound).
pub async fn backlog(db: &impl GenericClient) -> Result<(i64, f64), tokio_postgres::Error> {
    let statement = db
        .prepare_cached(
            "WITH oldest AS (SELECT seq, created_at FROM outbox WHERE sent_at IS NULL \
                             ORDER BY seq LIMIT 1), \
                  newest AS (SELECT seq FROM outbox WHERE sent_at IS NULL \
                             ORDER BY seq DESC LIMIT 1), \
                  counted AS (SELECT count(*) AS n FROM (SELECT FROM outbox \
                              WHERE sent_at IS NULL LIMIT $1) AS capped) \
             SELECT CASE WHEN counted.n < $1 THEN counted.n \
                         ELSE (SELECT newest.seq FROM newest) - oldest.seq + 1 END AS pending, \
                    COALESCE(EXTRACT(EPOCH FROM now() - oldest.created_at)::float8, 0) AS oldest \
             FROM counted LEFT JOIN oldest ON true",
        )
        .await?;
    let row = db.query_one(&statement, &[&EXACT_BACKLOG]).await?;
    Ok((row.try_get("pending")?, row.try_get("oldest")?))
}
