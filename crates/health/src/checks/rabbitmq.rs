//! RabbitMQ: the state of the supervised connection, proven with one round trip.

use crate::{Alarm, Check, CheckFailure, Observation};
use async_trait::async_trait;
use lapin::options::BasicQosOptions;
use lapin::{Channel, Connection};
use std::sync::Arc;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

/// The broker connection a connection supervisor publishes; `None` while it (re)connects.
pub type BrokerLink = watch::Receiver<Option<Arc<Connection>>>;

/// Passes when the supervised connection is open and a channel on it answers a `basic.qos` round
/// trip (a black-holed broker looks "open" until heartbeats time out). The supervisor publishing
/// the link raises the check's [`Alarm`] when the connection drops.
///
/// ```
/// use health::Alarm;
/// use health::checks::rabbitmq::RabbitMqCheck;
/// let (_tx, link) = tokio::sync::watch::channel(None);
/// let dropped = Alarm::default(); // raised by the connection supervisor
/// let _check = RabbitMqCheck::new(link).with_alarm(dropped);
/// ```
#[derive(Debug)]
pub struct RabbitMqCheck {
    link: BrokerLink,
    channel: Mutex<Option<Channel>>,
    alarm: Alarm,
}

impl RabbitMqCheck {
    /// A check that follows `link`.
    pub fn new(link: BrokerLink) -> Self {
        Self {
            link,
            channel: Mutex::new(None),
            alarm: Alarm::default(),
        }
    }

    /// The same check, run at once whenever `alarm` is raised.
    #[must_use]
    pub fn with_alarm(mut self, alarm: Alarm) -> Self {
        self.alarm = alarm;
        self
    }
}

/// A short reason (the broker's text can name users and vhosts); the full error is logged at debug.
fn failure(step: &str, error: &lapin::Error) -> CheckFailure {
    tracing::debug!(step, %error, "rabbitmq check failed");
    CheckFailure::new(format!("{step} failed"))
}

#[async_trait]
impl Check for RabbitMqCheck {
    fn alarm(&self) -> Option<Alarm> {
        Some(self.alarm.clone())
    }

    async fn run(&self) -> Result<Observation, CheckFailure> {
        let connection = self
            .link
            .borrow()
            .clone()
            .ok_or_else(|| CheckFailure::new("not connected (supervisor is reconnecting)"))?;
        let status = connection.status();
        if !status.connected() {
            return Err(CheckFailure::new("connection is not open"));
        }
        // A resource alarm (memory, disk): the broker answers round trips but holds every publish.
        if status.blocked() {
            return Err(CheckFailure::new(
                "blocked by the broker (a resource alarm): publishes wait",
            ));
        }
        let mut slot = self.channel.lock().await;
        let channel = match slot.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => connection
                .create_channel()
                .await
                .map_err(|e| failure("opening a channel", &e))?,
        };
        let started = Instant::now();
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .map_err(|e| failure("channel round trip", &e))?;
        let observation = Observation::latency(started.elapsed());
        *slot = Some(channel);
        Ok(observation)
    }
}
