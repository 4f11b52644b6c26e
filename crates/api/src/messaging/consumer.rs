//! The item-events consumer: manual acks, bounded prefetch, idempotent processing, and a
//! dead-letter queue for messages that cannot be parsed or keep failing.
//!
//! Two kinds of failure are told apart. The database being away (or a conflict a retry
//! resolves) is not the message's fault: the consumer holds the delivery and retries it with
//! backoff until the database answers, so an outage delays events and dead-letters none; while
//! the `postgres` health check fails it does not even try, it waits for the check to pass. Any
//! other failure is an attempt, counted in the message itself (the `x-attempts` header of a
//! republished copy, so a restart or another replica continues the count); after
//! [`MAX_ATTEMPTS`] the message goes to the dead-letter queue.

use crate::db::Database;
use crate::domain::item::ItemEvent;
use crate::problem::ApiError;
use futures_util::StreamExt;
use health::checks::rabbitmq::BrokerLink;
use health::{Status, StatusListener};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};

use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Unacknowledged deliveries the broker may push to one consumer.
const PREFETCH: u16 = 16;
/// Processing attempts before a message is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 3;
/// Header of a republished message: the attempts it has used so far.
const ATTEMPTS_HEADER: &str = "x-attempts";
/// Backoff while the database is away: from the first to the cap, doubling.
const UNAVAILABLE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));

/// Why processing an event failed.
#[derive(Debug, thiserror::Error)]
enum ProcessError {
    /// The database could not do the work now; the event is not at fault.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The event failed on its own account: an attempt.
    #[error("{0}")]
    Rejected(String),
}

impl From<ApiError> for ProcessError {
    /// The same line the API draws: what would be a 503 is the database being away.
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::Unavailable(reason) => ProcessError::Unavailable(reason),
            ApiError::Internal(cause) => ProcessError::Rejected(cause),
            other => ProcessError::Rejected(other.to_string()),
        }
    }
}

/// Everything the consumer task needs.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// PostgreSQL, each event's work bounded by the query timeout.
    pub db: Database,
    /// The `postgres` check: no attempt is made while it fails.
    pub database: StatusListener,
    pub link: BrokerLink,
    pub queue: String,
    pub tag: String,
}

impl Consumer {
    /// Consumes until `stop`. On stop it cancels the subscription, finishes the delivery in
    /// hand, and lets the broker requeue whatever it had prefetched (nothing is lost).
    pub async fn run(self, stop: CancellationToken) {
        let mut link = self.link.clone();
        while !stop.is_cancelled() {
            let Some(connection) = bootstrap::broker::next_connection(&mut link, &stop).await
            else {
                break;
            };
            let (channel, mut deliveries) = match self.subscribe(&connection).await {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "consumer: subscribing");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            tracing::info!(queue = %self.queue, "consumer subscribed");
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => None,
                    next = deliveries.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => self.handle(&channel, delivery, &stop).await,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "consumer: delivery stream failed");
                        break;
                    }
                    None => break,
                }
            }
            if stop.is_cancelled() {
                let _ = channel
                    .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                let _ = channel.close(200, "consumer stopped".into()).await;
            }
        }
        tracing::info!("consumer stopped");
    }

    /// A channel with the prefetch bound and publisher confirms, and its deliveries.
    async fn subscribe(
        &self,
        connection: &lapin::Connection,
    ) -> Result<(Channel, lapin::Consumer), lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        // Republished attempts are confirmed before the original is acknowledged.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, deliveries))
    }

    async fn handle(&self, channel: &Channel, delivery: Delivery, stop: &CancellationToken) {
        let span = tracing::info_span!(
            "consume",
            otel.kind = "consumer",
            message_id = tracing::field::Empty,
            event_type = tracing::field::Empty
        );
        super::trace::continue_trace(&span, delivery.properties.headers().as_ref());
        async {
            let event: ItemEvent = match serde_json::from_slice(&delivery.data) {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, "consumer: unparseable message, dead-lettering");
                    let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                    return;
                }
            };
            let span = tracing::Span::current();
            span.record("message_id", tracing::field::display(event.id));
            span.record("event_type", event.kind.as_str());
            match self.process_while_available(&event, stop).await {
                Some(Ok(first_time)) => {
                    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                        tracing::warn!(%error, "consumer: ack failed; the broker will redeliver (harmless)");
                    }
                    tracing::info!(event_id = %event.id, event_type = %event.kind, first_time, trace_id = %super::trace::trace_id(&span), "event consumed");
                }
                Some(Err(error)) => self.attempt_failed(channel, delivery, &event, &error).await,
                // Stopping while the database is away: back to the queue, no attempt used.
                None => {
                    let _ = delivery
                        .nack(BasicNackOptions { requeue: true, multiple: false })
                        .await;
                }
            }
        }
        .instrument(span.clone())
        .await;
    }

    /// Processes `event`, waiting out database unavailability with backoff. `None` when told
    /// to stop before the database returned.
    async fn process_while_available(
        &self,
        event: &ItemEvent,
        stop: &CancellationToken,
    ) -> Option<Result<bool, ProcessError>> {
        let (mut backoff, cap) = UNAVAILABLE_BACKOFF;
        let mut database = self.database.clone();
        let mut waited = false;
        if database.status() == Status::Fail {
            tracing::warn!(event_id = %event.id, "consumer: the postgres check fails, holding the event until it passes");
            waited = true;
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = database.until_not_failing() => {}
            }
        }
        loop {
            match process(&self.db, event).await {
                Err(ProcessError::Unavailable(reason)) => {
                    if !waited {
                        tracing::warn!(event_id = %event.id, %reason, "consumer: database unavailable, holding the event until it returns");
                        waited = true;
                    }
                    // The check may not have noticed yet: retry with backoff; once it fails,
                    // wait for it to pass instead of polling the database.
                    let failing = database.status() == Status::Fail;
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(backoff), if !failing => {}
                        _ = database.until_not_failing(), if failing => {}
                    }
                    backoff = (backoff * 2).min(cap);
                }
                outcome => {
                    if waited {
                        tracing::info!(event_id = %event.id, "consumer: database back, consuming again");
                    }
                    return Some(outcome);
                }
            }
        }
    }

    /// One attempt used: republish the message with its count (then ack the original), or
    /// dead-letter it when it has used them all.
    async fn attempt_failed(
        &self,
        channel: &Channel,
        delivery: Delivery,
        event: &ItemEvent,
        error: &ProcessError,
    ) {
        let attempt = attempts_used(delivery.properties.headers().as_ref()) + 1;
        let dead_letter = attempt >= MAX_ATTEMPTS;
        tracing::warn!(event_id = %event.id, attempt, dead_letter, error = %error, "consumer: processing failed");
        if dead_letter {
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
        match self.republish(channel, &delivery, attempt).await {
            Ok(()) => {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(error) => {
                // The copy may or may not exist: requeue the original (at worst a duplicate
                // attempt, and processing is idempotent).
                tracing::warn!(%error, "consumer: republishing a failed attempt; requeueing it");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await;
            }
        }
    }

    /// A copy of `delivery` at the back of the queue, carrying `attempt` in its headers.
    async fn republish(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        attempt: u32,
    ) -> anyhow::Result<()> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(attempt));
        let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await?;
        match tokio::time::timeout(Duration::from_secs(5), confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(other)) => anyhow::bail!("broker did not confirm the copy: {other:?}"),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => anyhow::bail!("no confirm for the copy within 5 s"),
        }
    }
}

/// Attempts a message has used, from its `x-attempts` header (0 for a first delivery).
fn attempts_used(headers: Option<&FieldTable>) -> u32 {
    let value = headers.and_then(|h| h.inner().get(ATTEMPTS_HEADER));
    match value {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u32::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(*n),
        _ => 0,
    }
}

/// Records the event once: a redelivered event finds its id already processed and changes
/// nothing. Returns whether this was the first time.
/// Bounded like a request ([`Database::run`]): a frozen database is "unavailable" (held and
/// retried), and the connection that hung is taken out of the pool rather than reused.
async fn process(db: &Database, event: &ItemEvent) -> Result<bool, ProcessError> {
    let event = event.clone();
    Ok(db
        .run(move |client| Box::pin(async move { record(client, &event).await }))
        .await?)
}

async fn record(
    client: &mut deadpool_postgres::Client,
    event: &ItemEvent,
) -> Result<bool, ApiError> {
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&event.id],
        )
        .await?;
    if inserted == 1 {
        tx.execute(
            "INSERT INTO event_counts (event_type, count) VALUES ($1, 1) \
             ON CONFLICT (event_type) DO UPDATE SET count = event_counts.count + 1",
            &[&event.kind],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(inserted == 1)
}
