//! RabbitMQ: topology (and, with the API example, the outbox relay and the consumer).

pub mod topology;
