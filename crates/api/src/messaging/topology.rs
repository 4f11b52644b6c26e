//! Exchanges, queues and bindings, declared on every new broker connection.

use super::settings::RabbitMqSettings;
use bootstrap::broker::Topology;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Routing pattern of the events the consumer handles: every event on the service's exchange.
const EVERY_EVENT: &str = "#";

/// Where a failed attempt waits before its next one: a queue nobody consumes, whose messages
/// return to `queue` when their `expiration` runs out (RabbitMQ's dead-lettering, no plugin).
pub fn retry_queue(queue: &str) -> String {
    format!("{queue}.retry")
}

/// Declares the durable topic exchange, the consumer's queue with its dead-letter and retry queues,
/// and the binding; idempotent, so every replica and every reconnect runs them.
pub fn declare(settings: &RabbitMqSettings) -> Topology {
    let (exchange, queue) = (settings.exchange.clone(), settings.queue.clone());
    Arc::new(move |connection| {
        let (exchange, queue) = (exchange.clone(), queue.clone());
        Box::pin(async move { declare_on(&connection, &exchange, &queue).await })
    })
}

async fn declare_on(connection: &Connection, exchange: &str, queue: &str) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let dead_letters = format!("{queue}.dlq");
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    // Rejected (requeue=false) messages go to the DLQ; expired ones in the retry queue go back
    // to the consumer's queue.
    for (name, arguments) in [
        (dead_letters.clone(), FieldTable::default()),
        (queue.to_owned(), dead_letters_to(&dead_letters)),
        (retry_queue(queue), dead_letters_to(queue)),
    ] {
        channel
            .queue_declare(name.as_str().into(), options, arguments)
            .await?;
    }
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            EVERY_EVENT.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.close(200, "topology declared".into()).await
}

/// Queue arguments that send a queue's dead letters (rejected or expired messages) through the
/// default exchange to `queue`.
fn dead_letters_to(queue: &str) -> FieldTable {
    let text = |value: &str| AMQPValue::LongString(value.into());
    FieldTable::from(BTreeMap::from([
        ("x-dead-letter-exchange".into(), text("")),
        ("x-dead-letter-routing-key".into(), text(queue)),
    ]))
}
