//! The events consumer (docs/api.md, "Consumer"). Deliveries already arrived are one batch: one
//! transaction records them (each event id once, so a redelivery changes nothing) and one
//! `multiple` ack after the commit settles them.

use crate::db::Database;
use crate::problem::ApiError;
use bootstrap::Backoff;
use futures_util::StreamExt;
use health::checks::rabbitmq::BrokerLink;
use health::{Status, StatusListener};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Unacknowledged deliveries the broker may push to one consumer: also the largest batch.
const PREFETCH: u16 = 64;
/// Processing attempts before a message is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 3;
/// Wait before the next attempt: 1 s after the first, four times longer after each next one,
/// at most a minute. A message is only as late as the one ahead of it in the retry queue.
pub fn retry_delay(attempts_used: u32) -> Duration {
    let factor = 4u64.saturating_pow(attempts_used.saturating_sub(1));
    Duration::from_secs(factor.min(60))
}
/// Header of a republished message: the attempts it has used so far.
const ATTEMPTS_HEADER: &str = "x-attempts";

/// What the consumer reads of any event, whatever the resource: its own id (also the AMQP
/// `message_id`: a redelivery is recognised by it) and its type (the routing key). The rest of
/// the body is the resource's.
#[derive(Debug, Clone, serde::Deserialize)]
struct Event {
    id: uuid::Uuid,
    #[serde(rename = "type")]
    kind: String,
}

/// The consumer task. The database being away (or a conflict a retry resolves) is not the
/// message's fault: deliveries are held and retried with backoff (while the `postgres` check
/// fails, until it passes), so an outage delays events and dead-letters none. Any other failure
/// is an attempt, counted in the `x-attempts` header of a copy that waits in the retry queue
/// ([`retry_delay`]), so a restart or another replica continues the count; after
/// [`MAX_ATTEMPTS`] it is dead-lettered. A failing batch is taken apart, so one bad event costs
/// no other an attempt.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// PostgreSQL, each event's work bounded by the query timeout.
    pub db: Database,
    /// The `postgres` check: no attempt is made while it fails.
    pub database: StatusListener,
    pub link: BrokerLink,
    pub queue: String,
    pub tag: String,
    /// How long work may fail as "unavailable" while the `postgres` check passes before it counts
    /// as an attempt: the database is up, so the events are at fault (e.g. a lock never granted).
    pub hold_limit: Duration,
}

impl Consumer {
    /// Consumes until `stop`, then cancels the subscription and settles the batch in hand
    /// (committed and acked, or requeued); the broker requeues what it had prefetched.
    pub async fn run(self, stop: CancellationToken) {
        let mut link = self.link.clone();
        while !stop.is_cancelled() {
            let Some(connection) = bootstrap::broker::next_connection(&mut link, &stop).await
            else {
                break;
            };
            let (channel, deliveries) = match self.subscribe(&connection).await {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "consumer: subscribing");
                    let pause = tokio::time::sleep(Duration::from_secs(1));
                    stop.run_until_cancelled(pause).await;
                    continue;
                }
            };
            tracing::info!(queue = %self.queue, "consumer subscribed");
            // The first delivery and whatever else has already arrived.
            let mut arrived = deliveries.ready_chunks(usize::from(PREFETCH));
            loop {
                let next = tokio::select! {
                    // Once stopping, no new batch is taken even if one is ready.
                    biased;
                    _ = stop.cancelled() => None,
                    next = arrived.next() => next,
                };
                let Some(next) = next else { break };
                let mut batch = Vec::with_capacity(next.len());
                let mut failed = None;
                for delivery in next {
                    match delivery {
                        Ok(delivery) => batch.push(delivery),
                        Err(error) => failed = Some(error),
                    }
                }
                self.handle(&channel, batch, &stop).await;
                if let Some(error) = failed {
                    tracing::warn!(%error, "consumer: delivery stream failed");
                    break;
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
        // Republished attempts are confirmed before the original is acknowledged.
        let channel = super::confirm_channel(connection).await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
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

    /// Settles `deliveries`: one transaction and one ack, or one by one if an event fails.
    async fn handle(&self, channel: &Channel, deliveries: Vec<Delivery>, stop: &CancellationToken) {
        let received: Vec<Received> = futures_util::stream::iter(deliveries)
            .filter_map(Received::parse)
            .collect()
            .await;
        let Some(last) = received.last().map(|r| r.delivery.acker.clone()) else {
            return;
        };
        let events: Vec<Event> = received.iter().map(|r| r.event.clone()).collect();
        match self.process_while_available(&events, stop).await {
            Some(Ok(first_times)) => {
                // Every earlier delivery of this channel is settled: one ack covers the batch.
                acknowledged(last.ack(BasicAckOptions { multiple: true }).await);
                for (received, first_time) in received.iter().zip(first_times) {
                    received.consumed(first_time);
                }
            }
            Some(Err(error)) => match <[Received; 1]>::try_from(received) {
                Ok([received]) => self.failed(channel, received, &error).await,
                Err(received) => {
                    tracing::warn!(events = received.len(), %error, "consumer: a batch failed; processing its events one by one");
                    for received in received {
                        // Once stopping, back to the queue, no attempt used: the shutdown budget
                        // is not theirs.
                        if stop.is_cancelled() {
                            requeue(&received.delivery, false).await;
                        } else {
                            self.handle_one(channel, received, stop).await;
                        }
                    }
                }
            },
            // Stopping while the database is away: back to the queue, no attempt used.
            None => requeue(&last, true).await,
        }
    }

    /// One event of a batch that failed, on its own.
    async fn handle_one(&self, channel: &Channel, received: Received, stop: &CancellationToken) {
        let events = std::slice::from_ref(&received.event);
        match self.process_while_available(events, stop).await {
            Some(Ok(first_times)) => {
                acknowledged(received.delivery.ack(BasicAckOptions::default()).await);
                received.consumed(first_times.first().copied().unwrap_or(false));
            }
            Some(Err(error)) => self.failed(channel, received, &error).await,
            None => requeue(&received.delivery, false).await,
        }
    }

    /// One attempt used, in the event's span: a copy with its count goes to the retry queue (then
    /// the original is acked), or the message is dead-lettered when it has used them all.
    async fn failed(&self, channel: &Channel, received: Received, error: &str) {
        let delivery = &received.delivery;
        async {
            let attempt = attempts_used(delivery.properties.headers().as_ref()) + 1;
            let dead_letter = attempt >= MAX_ATTEMPTS;
            tracing::warn!(event_id = %received.event.id, attempt, dead_letter, error = %error, "consumer: processing failed");
            if dead_letter {
                let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            } else if let Err(error) = self.republish(channel, delivery, attempt).await {
                // The copy may or may not exist: requeue the original (at worst a duplicate
                // attempt, and processing is idempotent).
                tracing::warn!(%error, "consumer: republishing a failed attempt; requeueing it");
                requeue(delivery, false).await;
            } else {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
        .instrument(received.span.clone())
        .await;
    }

    /// Processes `events` (whether each was new), waiting out database outages; `None` if stopped.
    /// An error is an attempt used, and says why.
    async fn process_while_available(
        &self,
        events: &[Event],
        stop: &CancellationToken,
    ) -> Option<Result<Vec<bool>, String>> {
        let first = events.first().map(|event| event.id).unwrap_or_default();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut database = self.database.clone();
        let mut waited = false;
        // Since when the work has failed while the check passed.
        let mut check_passing_since = None;
        loop {
            if database.status() == Status::Fail {
                if !waited {
                    tracing::warn!(event_id = %first, events = events.len(), "consumer: the postgres check fails, holding the events until it passes");
                    waited = true;
                }
                stop.run_until_cancelled(database.until_not_failing())
                    .await?;
            }
            let work = self.db.run(async |client| record(client, events).await);
            match work.await {
                // The same line the API draws: what would be a 503 is the database being away.
                Err(ApiError::Unavailable(reason)) => {
                    if !waited {
                        tracing::warn!(event_id = %first, events = events.len(), %reason, "consumer: database unavailable, holding the events until it returns");
                        waited = true;
                    }
                    // The check may not have noticed yet: retry with backoff; once it fails,
                    // wait for it to pass (above) instead of polling the database.
                    if database.status() == Status::Fail {
                        check_passing_since = None;
                    } else if check_passing_since
                        .get_or_insert_with(tokio::time::Instant::now)
                        .elapsed()
                        >= self.hold_limit
                    {
                        return Some(Err(reason));
                    } else {
                        stop.run_until_cancelled(tokio::time::sleep(backoff.next_delay()))
                            .await?;
                    }
                }
                outcome => {
                    if waited {
                        tracing::info!(event_id = %first, "consumer: database back, consuming again");
                    }
                    return Some(outcome.map_err(|error| match error {
                        ApiError::Internal(cause) => cause,
                        other => other.to_string(),
                    }));
                }
            }
        }
    }

    /// A copy of `delivery` in the retry queue, carrying `attempt`, back after [`retry_delay`].
    async fn republish(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        attempt: u32,
    ) -> anyhow::Result<()> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(attempt));
        let delay_ms = retry_delay(attempt).as_millis().to_string();
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_expiration(delay_ms.into());
        let confirm = channel
            .basic_publish(
                "".into(),
                super::topology::retry_queue(&self.queue).into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            )
            .await?;
        let confirmation = tokio::time::timeout(Duration::from_secs(5), confirm)
            .await
            .map_err(|_| anyhow::anyhow!("no confirm for the copy within 5 s"))??;
        anyhow::ensure!(
            confirmation.is_ack(),
            "broker did not confirm the copy: {confirmation:?}"
        );
        Ok(())
    }
}

/// Back to the queue with no attempt used (`multiple`: every earlier delivery of the channel too).
async fn requeue(acker: &lapin::Acker, multiple: bool) {
    let options = BasicNackOptions {
        requeue: true,
        multiple,
    };
    let _ = acker.nack(options).await;
}

/// Logs an ack that did not reach the broker: it redelivers, and the redelivery changes nothing.
fn acknowledged(outcome: Result<bool, lapin::Error>) {
    match outcome {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "consumer: ack not sent, the channel closed; the broker will redeliver (harmless)"
        ),
        Err(error) => {
            tracing::warn!(%error, "consumer: ack failed; the broker will redeliver (harmless)");
        }
    }
}

/// Attempts a message has used, from its `x-attempts` header (0 for a first delivery).
fn attempts_used(headers: Option<&FieldTable>) -> u32 {
    match headers.and_then(|h| h.inner().get(ATTEMPTS_HEADER)) {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u32::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(*n),
        _ => 0,
    }
}

/// Per event, whether its id was recorded now (a redelivery finds it and changes nothing). Bounded
/// by [`Database::run`]: a frozen database is "unavailable", its hung connection dropped.
async fn record(
    client: &mut deadpool_postgres::Client,
    events: &[Event],
) -> Result<Vec<bool>, ApiError> {
    let ids: Vec<uuid::Uuid> = events.iter().map(|event| event.id).collect();
    // Inserted in id order: two consumers holding the same redelivered ids lock them in one
    // order and cannot deadlock.
    let mut ordered = ids.clone();
    ordered.sort_unstable();
    ordered.dedup();
    let tx = client.transaction().await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO processed_events (event_id) SELECT unnest($1::uuid[]) \
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .await?;
    let mut inserted = tx
        .query(&insert, &[&ordered])
        .await?
        .iter()
        .map(|row| row.try_get::<_, uuid::Uuid>(0))
        .collect::<Result<HashSet<_>, _>>()?;
    // A batch may hold an event twice (a redelivery): only its first copy is new.
    let first_times: Vec<bool> = ids.iter().map(|id| inserted.remove(id)).collect();
    // Sorted, so concurrent consumers lock the counters in one order.
    let mut counts = BTreeMap::<&str, i64>::new();
    for (event, _) in events.iter().zip(&first_times).filter(|(_, first)| **first) {
        *counts.entry(event.kind.as_str()).or_default() += 1;
    }
    if !counts.is_empty() {
        let (kinds, added): (Vec<&str>, Vec<i64>) = counts.into_iter().unzip();
        let count = tx
            .prepare_cached(
                "INSERT INTO event_counts (event_type, count) \
                 SELECT * FROM unnest($1::text[], $2::bigint[]) \
                 ON CONFLICT (event_type) DO UPDATE SET count = event_counts.count + EXCLUDED.count",
            )
            .await?;
        tx.execute(&count, &[&kinds, &added]).await?;
    }
    tx.commit().await?;
    Ok(first_times)
}

/// A parsed delivery and the span that continues its producer's trace.
struct Received {
    delivery: Delivery,
    event: Event,
    span: tracing::Span,
}

impl Received {
    /// The delivery's event; an unparseable message is dead-lettered at once (no attempt can fix
    /// it).
    async fn parse(delivery: Delivery) -> Option<Received> {
        let span = tracing::info_span!(
            "consume",
            otel.kind = "consumer",
            message_id = tracing::field::Empty,
            event_type = tracing::field::Empty
        );
        super::trace::continue_trace(&span, delivery.properties.headers().as_ref());
        let event = match serde_json::from_slice::<Event>(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                span.in_scope(|| {
                    tracing::warn!(%error, "consumer: unparseable message, dead-lettering");
                });
                let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                return None;
            }
        };
        span.record("message_id", tracing::field::display(event.id));
        span.record("event_type", event.kind.as_str());
        Some(Received {
            delivery,
            event,
            span,
        })
    }

    fn consumed(&self, first_time: bool) {
        self.span.in_scope(|| {
            tracing::info!(event_id = %self.event.id, event_type = %self.event.kind, first_time, "event consumed");
        });
    }
}
