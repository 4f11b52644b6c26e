//! Pruning of the bookkeeping tables (stored idempotency responses, and what the service adds),
//! so that none of them only grows: rows older than their table's retention go.
//!
//! Every replica prunes, in small time-bounded batches that skip rows another replica holds, so
//! pruning never competes with requests for long.

use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement.
const BATCH: i64 = 1000;
/// Bounds one batch (5 s): past it PostgreSQL cancels the batch, and the next round retries.
const BATCH_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '5s'";
/// Batches per table and round: what is left waits for the next round.
const MAX_BATCHES: usize = 100;

/// A table pruned by age: rows whose `age_column` is older than `retention` (a row where it is
/// NULL is never pruned). Both names go into the SQL as written: literals of the code, never
/// input; `age_column` wants an index (the migrations give the ones pruned here).
pub struct Prunable {
    pub table: &'static str,
    pub age_column: &'static str,
    pub retention: Duration,
}

/// Prunes `tables` every `every` until `stop`.
pub async fn run(pool: Pool, tables: Vec<Prunable>, every: Duration, stop: CancellationToken) {
    loop {
        let pause = tokio::time::sleep(every);
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
        tx.batch_execute(BATCH_STATEMENT_TIMEOUT).await?;
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
