//! The item-events consumer: manual acks, bounded prefetch, idempotent processing, and a
//! dead-letter queue for messages that cannot be parsed or keep failing.

use crate::domain::item::ItemEvent;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use health::checks::rabbitmq::BrokerLink;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Unacknowledged deliveries the broker may push to one consumer.
const PREFETCH: u16 = 16;
/// Processing attempts before a message is dead-lettered.
const MAX_ATTEMPTS: u32 = 3;

/// Everything the consumer task needs.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub pool: Pool,
    pub link: BrokerLink,
    pub queue: String,
    pub tag: String,
}

impl Consumer {
    /// Consumes until `stop`. On stop it cancels the subscription, finishes the delivery in
    /// hand, and lets the broker requeue whatever it had prefetched (nothing is lost).
    pub async fn run(self, stop: CancellationToken) {
        let mut attempts: HashMap<Uuid, u32> = HashMap::new();
        while !stop.is_cancelled() {
            let connection = self.link.borrow().clone();
            let Some(connection) = connection else {
                let mut link = self.link.clone();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = link.changed() => {}
                }
                continue;
            };
            let subscription = async {
                let channel = connection.create_channel().await?;
                channel
                    .basic_qos(PREFETCH, BasicQosOptions::default())
                    .await?;
                let consumer = channel
                    .basic_consume(
                        self.queue.as_str().into(),
                        self.tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok::<_, lapin::Error>((channel, consumer))
            };
            let (channel, mut deliveries) = match subscription.await {
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
                    Some(Ok(delivery)) => self.handle(delivery, &mut attempts).await,
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

    async fn handle(&self, delivery: Delivery, attempts: &mut HashMap<Uuid, u32>) {
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
            match process(&self.pool, &event).await {
                Ok(first_time) => {
                    attempts.remove(&event.id);
                    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                        tracing::warn!(%error, "consumer: ack failed; the broker will redeliver (harmless)");
                    }
                    tracing::info!(event_id = %event.id, event_type = %event.kind, first_time, trace_id = %super::trace::trace_id(&span), "event consumed");
                }
                Err(error) => {
                    let count = attempts.entry(event.id).or_insert(0);
                    *count += 1;
                    let requeue = *count < MAX_ATTEMPTS;
                    tracing::warn!(event_id = %event.id, attempt = *count, requeue, error = format!("{error:#}"), "consumer: processing failed");
                    if !requeue {
                        attempts.remove(&event.id);
                    }
                    let _ = delivery.nack(BasicNackOptions { requeue, multiple: false }).await;
                }
            }
        }
        .instrument(span.clone())
        .await;
    }
}

/// Records the event once: a redelivered event finds its id already processed and changes
/// nothing. Returns whether this was the first time.
async fn process(pool: &Pool, event: &ItemEvent) -> anyhow::Result<bool> {
    let mut client = pool.get().await?;
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
