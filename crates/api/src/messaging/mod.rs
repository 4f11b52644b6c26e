//! RabbitMQ: topology, the outbox relay, the consumer, and trace propagation across the broker.
//! [`Messaging`] is their wiring: the app adds it in one line per step, and a service generated
//! without the broker has neither this module nor those lines.

pub mod consumer;
pub mod relay;
pub mod settings;
pub mod topology;
pub mod trace;

use crate::db::Database;
use crate::housekeeping::Prunable;
use crate::settings::Settings;
use bootstrap::broker::BrokerSupervisor;
use bootstrap::{Startup, StartupError, StartupPhase};
use consumer::Consumer;
use health::checks::rabbitmq::RabbitMqCheck;
use health::{CancellationToken, Health, HealthBuilder};
use relay::{Backlog, OutboxLagCheck, Relay};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Broker connection and topology (only when the broker is critical).
const RABBITMQ: StartupPhase = StartupPhase::new("rabbitmq").waiting_for("rabbitmq");

/// The broker side of a running service: the connection's supervisor, the outbox's backlog
/// gauges and the signal a request gives the relay after writing to the outbox.
pub struct Messaging {
    broker: BrokerSupervisor,
    backlog: Arc<Backlog>,
    /// Notified by a request that wrote an event, so the relay need not wait for its poll.
    pub outbox_written: Arc<Notify>,
    /// The background pool: the relay's, the consumers' and the lag check's.
    pool: deadpool_postgres::Pool,
    settings: Settings,
}

impl Messaging {
    /// The supervisor, connecting in the background (it declares the topology on every
    /// connection), and the backlog's metrics in `registry`.
    pub fn new(
        settings: &Settings,
        registry: &prometheus::Registry,
        pool: &deadpool_postgres::Pool,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            broker: BrokerSupervisor::spawn(
                &settings.rabbitmq.connection(),
                settings.service.name.clone(),
                topology::declare(&settings.rabbitmq),
            )?,
            backlog: Backlog::register(registry)?,
            outbox_written: Arc::new(Notify::new()),
            pool: pool.clone(),
            settings: settings.clone(),
        })
    }

    /// The `rabbitmq` check, following the supervisor, and the `outbox` lag check.
    pub fn checks(&self, health: HealthBuilder) -> anyhow::Result<HealthBuilder> {
        let settings = &self.settings;
        Ok(health
            // Not critical by default: the outbox absorbs broker outages.
            .check(
                "rabbitmq",
                settings.health.rabbitmq.policy(false)?,
                RabbitMqCheck::new(self.broker.link()).with_alarm(self.broker.alarm()),
            )
            // Never critical: a lagging relay means late events, not failing requests.
            .check(
                "outbox",
                settings.health.postgres.policy(false)?.critical(false),
                OutboxLagCheck {
                    pool: self.pool.clone(),
                    backlog: self.backlog.clone(),
                    warn_after: settings.outbox.lag_warn_after,
                },
            ))
    }

    /// A critical broker holds startup until connected; a non-critical one connects in the
    /// background.
    pub async fn connected(&self, startup: &Startup) -> Result<(), StartupError> {
        if self.settings.health.rabbitmq.critical != Some(true) {
            return Ok(());
        }
        startup
            .run(RABBITMQ, || async {
                tokio::time::timeout(Duration::from_secs(5), self.broker.connected())
                    .await
                    .map_err(|_| anyhow::anyhow!("broker not connected yet"))
            })
            .await
    }

    /// The relay's publishers and the consumers, each stopped by `stop`.
    pub fn spawn(
        &self,
        health: &Health,
        workers: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let settings = &self.settings;
        let relay = Relay {
            pool: self.pool.clone(),
            link: self.broker.link(),
            exchange: settings.rabbitmq.exchange.clone(),
            settings: settings.outbox.clone(),
            written: self.outbox_written.clone(),
            backlog: self.backlog.clone(),
        };
        for _ in 0..settings.outbox.publishers {
            workers.spawn(relay.clone().run(stop.clone()));
        }
        let database = health
            .listen("postgres")
            .ok_or_else(|| anyhow::anyhow!("the postgres check is not registered"))?;
        for n in 0..settings.rabbitmq.consumers {
            let consumer = Consumer {
                db: Database::new(self.pool.clone(), settings.database.query_timeout),
                database: database.clone(),
                link: self.broker.link(),
                queue: settings.rabbitmq.queue.clone(),
                tag: format!("{}-{}-{n}", settings.service.name, std::process::id()),
                // Six attempts' worth of the query timeout (30 s at the defaults): longer than
                // a failover takes to show in the postgres check.
                hold_limit: settings.database.query_timeout * 6,
            };
            workers.spawn(consumer.run(stop.clone()));
        }
        Ok(())
    }

    /// The tables the broker side adds to housekeeping.
    pub fn prunable(&self) -> [Prunable; 2] {
        [
            // Pending rows have no sent_at: they are never pruned.
            Prunable {
                table: "outbox",
                age_column: "sent_at",
                retention: self.settings.outbox.retention,
            },
            Prunable {
                table: "processed_events",
                age_column: "processed_at",
                retention: self.settings.retention.processed_events,
            },
        ]
    }

    /// Closes the broker connection (after the workers have stopped).
    pub async fn close(self) {
        self.broker.close().await;
    }
}

/// A channel with publisher confirms: a message counts as sent once the broker confirmed it.
async fn confirm_channel(connection: &lapin::Connection) -> lapin::Result<lapin::Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}
