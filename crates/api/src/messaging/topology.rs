//! Exchanges, queues and bindings, declared on every new broker connection.

use crate::settings::RabbitMqSettings;
use bootstrap::broker::Topology;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::sync::Arc;

/// Routing pattern of the events the consumer handles.
pub const ITEM_EVENTS: &str = "item.*";

/// Declares the durable topic exchange, the consumer's queue with its dead-letter queue, and
/// the binding. Declarations are idempotent, so every replica and every reconnect runs them.
pub fn declare(settings: &RabbitMqSettings) -> Topology {
    let exchange = settings.exchange.clone();
    let queue = settings.queue.clone();
    Arc::new(move |connection| {
        let exchange = exchange.clone();
        let queue = queue.clone();
        Box::pin(async move {
            let channel = connection.create_channel().await?;
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            let dead_letters = format!("{queue}.dlq");
            let queue_options = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(
                    dead_letters.as_str().into(),
                    queue_options,
                    FieldTable::default(),
                )
                .await?;
            let mut arguments = FieldTable::default();
            // Rejected (requeue=false) messages go to the default exchange, routed to the DLQ.
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(dead_letters.as_str().into()),
            );
            channel
                .queue_declare(queue.as_str().into(), queue_options, arguments)
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    ITEM_EVENTS.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel.close(200, "topology declared".into()).await?;
            Ok(())
        })
    })
}
