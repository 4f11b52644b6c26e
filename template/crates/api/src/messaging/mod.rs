//! RabbitMQ: topology, the outbox relay, the consumer, and trace propagation across the broker.

pub mod consumer;
pub mod relay;
pub mod topology;
pub mod trace;
