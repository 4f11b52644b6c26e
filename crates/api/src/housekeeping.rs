// @rabbitmq-begin
//! Pruning of the bookkeeping tables, so that none of them only grows: stored idempotency
//! responses (`APP__RETENTION__IDEMPOTENCY_KEYS`), and sent outbox rows and the ids of processed
//! events (`APP__OUTBOX__RETENTION`, `APP__RETENTION__PROCESSED_EVENTS`), each older than its
//! retention.
// @rabbitmq-else
// //! Pruning of the bookkeeping tables, so that none of them only grows: stored idempotency
// //! responses older than their retention (`APP__RETENTION__IDEMPOTENCY_KEYS`).
// @rabbitmq-end
//!
//! Every replica prunes, in small time-bounded batches that skip rows another replica holds.

use crate::settings::RetentionSettings;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement.
const BATCH: i64 = 1000;
/// Bound on one batch (`statement_timeout`).
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches per table and round: what is left waits for the next round.
const MAX_BATCHES: usize = 100;

/// A table pruned by age.
struct Prunable {
    table: &'static str,
    age_column: &'static str,
    retention: Duration,
}

// @rabbitmq-begin
/// Prunes every `settings.prune_every` until `stop`; `outbox` is the retention of sent rows.
// @rabbitmq-else
// /// Prunes every `settings.prune_every` until `stop`.
// @rabbitmq-end
pub async fn run(
    pool: Pool,
    settings: RetentionSettings,
    outbox: Duration, // @rabbitmq
    stop: CancellationToken,
) {
    let tables = [
        // @rabbitmq-begin
        // Pending rows have no sent_at: the comparison leaves them alone.
        Prunable {
            table: "outbox",
            age_column: "sent_at",
            retention: outbox,
        },
        // @rabbitmq-end
        Prunable {
            table: "idempotency_keys",
            age_column: "created_at",
            retention: settings.idempotency_keys,
        },
        // @rabbitmq-begin
        Prunable {
            table: "processed_events",
            age_column: "processed_at",
            retention: settings.processed_events,
        },
        // @rabbitmq-end
    ];
    loop {
        let pause = tokio::time::sleep(settings.prune_every);
        if stop.run_until_cancelled(pause).await.is_none() {
            return;
        }
        for table in &tables {
            match prune(&pool, table, &stop).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(
                    table = table.table,
                    pruned,
                    "pruned rows past their retention"
                ),
                Err(error) => tracing::warn!(
                    table = table.table,
                    error = format!("{error:#}"),
                    "pruning failed; next round retries"
                ),
            }
        }
    }
}

async fn prune(pool: &Pool, table: &Prunable, stop: &CancellationToken) -> anyhow::Result<u64> {
    let sql = format!(
        "WITH doomed AS (SELECT ctid FROM {t} WHERE {c} < now() - make_interval(secs => $1) \
         LIMIT $2 FOR UPDATE SKIP LOCKED) DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM doomed)",
        t = table.table,
        c = table.age_column,
    );
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        if stop.is_cancelled() {
            break;
        }
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            BATCH_TIMEOUT.as_millis()
        ))
        .await?;
        let deleted = tx
            .execute(&sql, &[&table.retention.as_secs_f64(), &BATCH])
            .await?;
        tx.commit().await?;
        total += deleted;
        if deleted < BATCH as u64 {
            break;
        }
    }
    Ok(total)
}
