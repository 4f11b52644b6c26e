//! The outbox relay: publishes pending outbox rows with publisher confirms and marks them sent only
//! after the broker confirmed them. A broker outage only delays events: the rows wait, and the
//! relay resumes when the supervised connection is back.

use super::settings::OutboxSettings;
use crate::db;
use bootstrap::Backoff;
use deadpool_postgres::Pool;
use health::checks::rabbitmq::BrokerLink;
use health::{Check, CheckFailure, Observation};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use prometheus::{Gauge, IntCounter, IntGauge, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often an idle relay looks for rows written by other replicas.
const POLL: Duration = Duration::from_secs(1);

/// The outbox backlog as last measured from the table: metrics the lag check keeps current.
#[derive(Debug)]
pub struct Backlog {
    pending: IntGauge,
    oldest: Gauge,
    published: IntCounter,
}

impl Backlog {
    /// Registers `outbox_pending_events`, `outbox_oldest_pending_seconds` and
    /// `outbox_published_total` in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Arc<Self>> {
        let backlog = Self {
            pending: IntGauge::new(
                "outbox_pending_events",
                "Outbox rows not yet confirmed by the broker (the whole table, every replica's).",
            )?,
            oldest: Gauge::new(
                "outbox_oldest_pending_seconds",
                "Age of the oldest unsent outbox row (relay lag).",
            )?,
            published: IntCounter::new(
                "outbox_published_total",
                "Events published and confirmed by the broker.",
            )?,
        };
        registry.register(Box::new(backlog.pending.clone()))?;
        registry.register(Box::new(backlog.oldest.clone()))?;
        registry.register(Box::new(backlog.published.clone()))?;
        Ok(Arc::new(backlog))
    }
}

/// Non-critical check: measures the backlog from the table (not from what the relay reports, so
/// a stuck relay shows) and warns when the oldest pending event is older than the configured lag.
#[derive(Debug)]
pub struct OutboxLagCheck {
    /// The relay's pool: the check reads the table the relay drains.
    pub pool: Pool,
    /// The metrics each run keeps current.
    pub backlog: Arc<Backlog>,
    /// The oldest pending event's age past which the check warns (`APP__OUTBOX__LAG_WARN_AFTER`).
    pub warn_after: Duration,
}

#[async_trait::async_trait]
impl Check for OutboxLagCheck {
    fn measurement(&self) -> &'static str {
        "lag"
    }

    async fn run(&self) -> Result<Observation, CheckFailure> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| CheckFailure::new(format!("outbox: {e}")))?;
        let (pending, oldest) = db::outbox::backlog(&client)
            .await
            .map_err(|e| CheckFailure::new(format!("outbox: {}", db::describe(&e))))?;
        self.backlog.pending.set(pending);
        self.backlog.oldest.set(oldest);
        let lag = Duration::from_secs_f64(oldest.max(0.0));
        if lag > self.warn_after {
            return Err(CheckFailure::new(format!(
                "oldest unsent event is {}s old ({pending} pending)",
                lag.as_secs()
            )));
        }
        Ok(Observation {
            observed_value: Some(lag.as_secs_f64()),
            observed_unit: Some("s"),
            output: None,
        })
    }
}

/// The relay task. The guarantee is **at least once, unordered** (docs/api.md): each publishing
/// loop claims the oldest rows nobody else has claimed (`FOR UPDATE SKIP LOCKED`, then a lease),
/// so loops and replicas publish interleaved batches, and a crash between the confirm and the mark
/// publishes a batch again once its lease ends. It holds a background pool connection only for the
/// claim and the mark, never while the broker confirms: its loops share a few connections with the
/// other background tasks, whatever their number.
#[derive(Debug, Clone)]
pub struct Relay {
    pub pool: Pool,
    pub link: BrokerLink,
    pub exchange: String,
    pub settings: OutboxSettings,
    pub written: Arc<Notify>,
    pub backlog: Arc<Backlog>,
}

impl Relay {
    /// Runs until `stop`; the batch in progress is finished first (within the publish timeout).
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut link = self.link.clone();
        while !stop.is_cancelled() {
            let Some(connection) = bootstrap::broker::next_connection(&mut link, &stop).await
            else {
                break;
            };
            let channel = match super::confirm_channel(&connection).await {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay: opening a channel");
                    stop.run_until_cancelled(tokio::time::sleep(backoff.next_delay()))
                        .await;
                    continue;
                }
            };
            while !stop.is_cancelled() {
                match self.bounded_batch(&channel).await {
                    Ok(0) => {
                        backoff.reset();
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = self.written.notified() => {}
                            _ = tokio::time::sleep(POLL) => {}
                        }
                    }
                    Ok(_) => backoff.reset(),
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "outbox relay: batch not published, will retry"
                        );
                        stop.run_until_cancelled(tokio::time::sleep(backoff.next_delay()))
                            .await;
                        break;
                    }
                }
            }
            let _ = channel.close(200, "relay done".into()).await;
        }
        tracing::info!("outbox relay stopped");
    }

    /// Claims a batch, publishes it and awaits every confirm within the publish timeout, then marks
    /// it sent; a batch not confirmed is released for the next attempt.
    async fn bounded_batch(&self, channel: &Channel) -> anyhow::Result<usize> {
        let limit = i64::try_from(self.settings.batch_size).unwrap_or(100);
        // Longer than a publish may take, so a slow batch is not claimed twice.
        let lease = self.settings.publish_timeout * 2;
        let rows = db::outbox::claim(&self.pool.get().await?, limit, lease).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let seqs: Vec<i64> = rows.iter().map(|row| row.seq).collect();
        let published = tokio::time::timeout(
            self.settings.publish_timeout,
            self.publish_batch(channel, &rows),
        )
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no confirms within {}",
                humantime::format_duration(self.settings.publish_timeout)
            ))
        });
        if let Err(error) = published {
            if let Err(release) = self.release(&seqs).await {
                tracing::debug!(
                    error = format!("{release:#}"),
                    "outbox relay: claim kept until its lease ends"
                );
            }
            return Err(error);
        }
        db::outbox::mark_sent(&self.pool.get().await?, &seqs).await?;
        self.backlog.published.inc_by(seqs.len() as u64);
        Ok(seqs.len())
    }

    async fn release(&self, seqs: &[i64]) -> anyhow::Result<()> {
        Ok(db::outbox::release(&self.pool.get().await?, seqs).await?)
    }

    /// Publishes `rows` and awaits every confirm.
    async fn publish_batch(
        &self,
        channel: &Channel,
        rows: &[db::outbox::Pending],
    ) -> anyhow::Result<()> {
        let mut confirms = Vec::with_capacity(rows.len());
        for row in rows {
            // A producer span in the request's trace; the message carries its context, so the
            // consumer's span is its child.
            let span = tracing::info_span!(
                "publish",
                otel.kind = "producer",
                otel.name = %format_args!("{} publish", self.exchange),
                messaging.system = "rabbitmq",
                messaging.destination.name = %self.exchange,
                messaging.message.id = %row.event_id,
            );
            super::trace::continue_stored_trace(&span, &row.headers);
            let properties = BasicProperties::default()
                .with_message_id(row.event_id.to_string().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_type(row.routing_key.as_str().into())
                .with_headers(super::trace::amqp_headers(&span));
            let body = serde_json::to_vec(&row.payload)?;
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    row.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .instrument(span)
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await?;
            anyhow::ensure!(
                confirmation.is_ack(),
                "broker did not confirm a message: {confirmation:?}"
            );
        }
        Ok(())
    }
}
