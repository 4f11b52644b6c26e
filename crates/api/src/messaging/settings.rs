//! The broker's settings: `APP__RABBITMQ__*` and `APP__OUTBOX__*`, sections of
//! [`crate::settings::Settings`].

use bootstrap::broker::BrokerConnection;
use bootstrap::config::value::{count, name, optional_file, positive_duration};
use bootstrap::config::{ConfigError, SecretUrl, check_ca_file, constant_url, require_scheme};
use serde::Deserialize;
use smart_default::SmartDefault;
use std::path::PathBuf;
use std::time::Duration;

/// `APP__OUTBOX__*`.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Rows a relay loop claims and publishes at once (100).
    #[serde(deserialize_with = "count::<_, 1, 10_000>")]
    #[default(100)]
    pub batch_size: usize,
    /// Relay loops publishing at once, each on its own channel (4): one loop waiting for its
    /// confirms falls behind a write load. They claim disjoint batches and share the
    /// background pool's connections, so they add none.
    #[serde(deserialize_with = "count::<_, 1, 16>")]
    #[default(4)]
    pub publishers: usize,
    /// How long sent rows are kept before they are pruned (24 h).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(24 * 3600))]
    pub retention: Duration,
    /// The outbox check warns when the oldest pending event is older than this (30 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(30))]
    pub lag_warn_after: Duration,
    /// Bound on publishing one batch and receiving its confirms (10 s): a stalled broker
    /// makes the relay give the batch up and retry, instead of holding its row locks.
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(10))]
    pub publish_timeout: Duration,
}

/// `APP__RABBITMQ__*`: the broker connection, and the exchange and queue of the example.
#[derive(Debug, Clone, Deserialize, SmartDefault)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqSettings {
    /// Connection URL; `amqps://` for TLS.
    #[default(constant_url("amqp://guest:guest@127.0.0.1:5672/%2f"))]
    pub url: SecretUrl,
    /// PEM bundle added to the system roots to verify the broker (`amqps://` only).
    #[serde(deserialize_with = "optional_file")]
    pub ca_file: Option<PathBuf>,
    /// Topic exchange the events go to.
    #[serde(deserialize_with = "name")]
    #[default("shipshape.events".into())]
    pub exchange: String,
    /// The consumer's durable queue.
    #[serde(deserialize_with = "name")]
    #[default("shipshape.items".into())]
    pub queue: String,
    /// Consumers of the queue in this replica, each on its own channel with its own prefetch
    /// (4): one alone falls behind the relay under write load. Each batch is one transaction
    /// on a connection of the background pool, so they add no connections.
    #[serde(deserialize_with = "count::<_, 1, 16>")]
    #[default(4)]
    pub consumers: usize,
    /// Longest pause between two reconnection attempts (10 s).
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(10))]
    pub reconnect_max_backoff: Duration,
    /// Bound on one connection attempt, handshake and topology included (5 s): a black-holed
    /// broker accepts TCP and never answers.
    #[serde(deserialize_with = "positive_duration")]
    #[default(Duration::from_secs(5))]
    pub connect_timeout: Duration,
}

impl RabbitMqSettings {
    /// What one value cannot say: a CA file needs `amqps://`, and must be a PEM bundle.
    pub fn validate(&self) -> Result<(), ConfigError> {
        require_scheme("rabbitmq.url", &self.url, &["amqp", "amqps"])?;
        if let Some(path) = &self.ca_file {
            let plain = self.url.url().scheme() == "amqp";
            let off = plain.then_some("an amqp:// URL (use amqps:// for TLS)");
            check_ca_file("rabbitmq.ca_file", path, off)?;
        }
        Ok(())
    }

    /// What the connection supervisor needs.
    pub fn connection(&self) -> BrokerConnection {
        BrokerConnection {
            url: self.url.clone(),
            ca_file: self.ca_file.clone(),
            reconnect_max_backoff: self.reconnect_max_backoff,
            connect_timeout: self.connect_timeout,
        }
    }
}
