//! The event pipeline against its floors: the outbox relay against a minimal lapin publisher
//! sending the same payloads with confirms to the same broker, the consumer against the relay,
//! and the end-to-end latency of an event (POST answered -> consumer committed).
//!
//! Progress is read from the tables, not from the service: `outbox` (pending and total rows)
//! and `processed_events` (what the consumer committed), sampled by a connection of the driver.

use crate::RABBITMQ_URL;
use anyhow::Context;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::Service;
use testkit::load::{LoadReport, wrk_scripted};

/// Events in the pre-filled outbox the relay drains, and the raw publisher sends.
const EVENTS: usize = 20_000;
/// The relay's batch: the raw publisher awaits its confirms per this many messages too.
const CONFIRM_BATCH: usize = 100;
/// The sustained write load of the issue that measured the pipeline first.
const LOAD_CONNECTIONS: u32 = 32;
const LOAD: Duration = Duration::from_secs(20);
/// A steady write rate well below saturation, for the end-to-end latency.
const STEADY_RATE: u32 = 200;
const STEADY: Duration = Duration::from_secs(10);
/// Progress is sampled this often.
const SAMPLE: Duration = Duration::from_millis(100);

/// What the pipeline measurements found.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Minimal lapin publisher, confirms awaited per [`CONFIRM_BATCH`] messages (events/s).
    pub raw_batched: f64,
    /// Minimal lapin publisher, each confirm awaited before the next publish (events/s).
    pub raw_each: f64,
    /// The relay draining [`EVENTS`] pre-filled outbox rows (events/s).
    pub relay_drain: f64,
    /// The consumers committing those events, over the same drain (events/s).
    pub consumer_drain: f64,
    /// The consumers committing [`EVENTS`] events queued while no service ran, the relay idle.
    pub consumer_alone: f64,
    /// POST /v1/items at [`LOAD_CONNECTIONS`] for [`LOAD`].
    pub load: LoadReport,
    /// Events the relay published per second during that load.
    pub relay_under_load: f64,
    /// Events the consumer committed per second during that load.
    pub consumer_under_load: f64,
    /// The largest outbox backlog seen during the load.
    pub peak_backlog: i64,
    /// From the end of the load to an empty outbox.
    pub relay_drained_after: Duration,
    /// From the end of the load to the consumer having committed every event.
    pub consumer_caught_up_after: Duration,
    /// End-to-end latency at [`STEADY_RATE`] POST/s.
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_events: usize,
}

impl Pipeline {
    pub fn relay_vs_raw(&self) -> f64 {
        self.relay_drain / self.raw_batched.max(1e-9)
    }

    /// The consumers' capacity (a queued backlog, the relay idle) against the relay's.
    pub fn consumer_vs_relay(&self) -> f64 {
        self.consumer_alone / self.relay_drain.max(1e-9)
    }

    pub const fn steady_rate() -> u32 {
        STEADY_RATE
    }

    pub const fn load_shape() -> (u32, Duration) {
        (LOAD_CONNECTIONS, LOAD)
    }
}

/// One reading of the tables.
#[derive(Debug, Clone, Copy)]
struct Progress {
    at: Instant,
    pending: i64,
    written: i64,
    processed: i64,
}

impl Progress {
    fn published(&self) -> i64 {
        self.written - self.pending
    }
}

/// The driver's own connection to the bench database.
struct Tables {
    client: tokio_postgres::Client,
}

impl Tables {
    async fn connect(url: &str) -> anyhow::Result<Tables> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("connecting to the bench database")?;
        tokio::spawn(connection);
        Ok(Tables { client })
    }

    async fn read(&self) -> anyhow::Result<Progress> {
        let row = bounded(
            "reading the pipeline's progress",
            self.client.query_one(
                "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL), \
                        (SELECT count(*) FROM outbox), (SELECT count(*) FROM processed_events)",
                &[],
            ),
        )
        .await?;
        Ok(Progress {
            at: Instant::now(),
            pending: row.try_get(0)?,
            written: row.try_get(1)?,
            processed: row.try_get(2)?,
        })
    }

    /// Samples until `done` holds for a reading (every reading kept), within `deadline`.
    async fn sample_until(
        &self,
        deadline: Duration,
        samples: &mut Vec<Progress>,
        done: impl Fn(&Progress) -> bool,
    ) -> anyhow::Result<()> {
        let began = Instant::now();
        loop {
            let progress = self.read().await?;
            samples.push(progress);
            if done(&progress) {
                return Ok(());
            }
            anyhow::ensure!(
                began.elapsed() < deadline,
                "the pipeline did not settle within {deadline:?}: {progress:?}"
            );
            tokio::time::sleep(SAMPLE).await;
        }
    }
}

/// Anything the driver waits for, bounded: a stuck broker or database fails the run instead of
/// hanging it.
async fn bounded<T, E>(
    what: &str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .with_context(|| format!("{what}: no answer within 30 s"))?
        .with_context(|| what.to_owned())
}

/// Measures the pipeline. No service may be running on the bench database when called.
pub fn measure(
    service_binary: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Pipeline> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(service_binary, database, env))
}

async fn run(
    service_binary: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Pipeline> {
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let tables = Tables::connect(&database_url).await?;
    let queue = setting(env, "APP__RABBITMQ__QUEUE")?;

    eprintln!("bench: a minimal lapin publisher with confirms");
    let raw_batched = raw_publish(EVENTS, CONFIRM_BATCH).await?;
    let raw_each = raw_publish(EVENTS / 10, 1).await?;

    // A clean start: nothing pending from earlier sections, nothing queued for the consumer.
    tables
        .client
        .batch_execute("UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL")
        .await?;
    purge(queue).await?;
    tables
        .client
        .execute(
            "INSERT INTO outbox (event_id, routing_key, payload) \
             SELECT e, 'item.created', jsonb_build_object('id', e, 'type', 'item.created', \
                    'item_id', gen_random_uuid(), 'occurred_at', now()) \
             FROM (SELECT gen_random_uuid() AS e FROM generate_series(1, $1::int)) fresh",
            &[&i32::try_from(EVENTS)?],
        )
        .await?;
    let start = tables.read().await?;

    eprintln!("bench: the relay and the consumer draining {EVENTS} events");
    let service = Service::spawn_untuned(service_binary, env);
    let mut drain = vec![start];
    tables
        .sample_until(Duration::from_secs(180), &mut drain, |p| {
            p.pending == 0 && p.processed - start.processed >= EVENTS as i64
        })
        .await?;
    let (relay_drain, consumer_drain) = drain_rates(&drain, start);
    drop(service);

    eprintln!("bench: the consumers alone on {EVENTS} queued events (the relay idle)");
    let exchange = setting(env, "APP__RABBITMQ__EXCHANGE")?;
    publish(EVENTS, CONFIRM_BATCH, exchange).await?;
    let start = tables.read().await?;
    let service = Service::spawn_untuned(service_binary, env);
    let mut alone = vec![start];
    tables
        .sample_until(Duration::from_secs(180), &mut alone, |p| {
            p.processed - start.processed >= EVENTS as i64
        })
        .await?;
    let consumer_alone = rate(&alone, &|p| p.processed > start.processed, &|p| {
        p.processed - start.processed >= EVENTS as i64
    });
    service.wait_for("/readyz", 200, Duration::from_secs(30));

    eprintln!("bench: POST load with the relay and the consumer keeping up");
    let url = service.api_url("/v1/items");
    let before = tables.read().await?;
    let load = tokio::task::spawn_blocking(move || {
        let report = wrk_scripted(
            &url,
            LOAD_CONNECTIONS,
            LOAD,
            Some(crate::request_path::WRITE),
        );
        (report, Instant::now())
    });
    let mut during = vec![before];
    while !load.is_finished() {
        tokio::time::sleep(SAMPLE).await;
        during.push(tables.read().await?);
    }
    let (load, ended) = load.await?;
    // The last reading before wrk stopped: rates are not spread over time without load.
    let load_end = *during
        .iter()
        .rev()
        .find(|p| p.at <= ended)
        .context("no sample during the load")?;
    let mut after: Vec<Progress> = during.iter().copied().filter(|p| p.at > ended).collect();
    tables
        .sample_until(Duration::from_secs(300), &mut after, |p| {
            p.pending == 0 && p.processed - before.processed >= p.written - before.written
        })
        .await?;
    let seconds = load_end.at.duration_since(before.at).as_secs_f64();
    let relay_under_load = (load_end.published() - before.published()) as f64 / seconds;
    let consumer_under_load = (load_end.processed - before.processed) as f64 / seconds;
    let peak_backlog = during.iter().map(|p| p.pending).max().unwrap_or(0);
    let first = |done: &dyn Fn(&Progress) -> bool| {
        after
            .iter()
            .find(|p| done(p))
            .map_or(Duration::MAX, |p| p.at.saturating_duration_since(ended))
    };
    let relay_drained_after = first(&|p| p.pending == 0);
    let consumer_caught_up_after =
        first(&|p| p.processed - before.processed >= p.written - before.written);

    eprintln!("bench: end-to-end event latency at {STEADY_RATE} POST/s");
    let (latency_p50, latency_p99, latency_events) = latency(&service, &tables).await?;
    drop(service);

    Ok(Pipeline {
        raw_batched,
        raw_each,
        relay_drain,
        consumer_drain,
        consumer_alone,
        load,
        relay_under_load,
        consumer_under_load,
        peak_backlog,
        relay_drained_after,
        consumer_caught_up_after,
        latency_p50,
        latency_p99,
        latency_events,
    })
}

/// Events per second between the first reading where `moved` holds and the first where `done`
/// holds.
fn rate(
    samples: &[Progress],
    moved: &dyn Fn(&Progress) -> bool,
    done: &dyn Fn(&Progress) -> bool,
) -> f64 {
    let first = samples.iter().find(|p| moved(p)).map(|p| p.at);
    let last = samples.iter().find(|p| done(p)).map(|p| p.at);
    match (first, last) {
        // The first movement was seen up to one sample after it began.
        (Some(first), Some(last)) => EVENTS as f64 / (last - first + SAMPLE).as_secs_f64(),
        _ => 0.0,
    }
}

/// Rates of the relay and of the consumers over the drain of the pre-filled outbox.
fn drain_rates(samples: &[Progress], start: Progress) -> (f64, f64) {
    let relay = rate(samples, &|p| p.pending < start.pending, &|p| p.pending == 0);
    let consumer = rate(samples, &|p| p.processed > start.processed, &|p| {
        p.processed - start.processed >= EVENTS as i64
    });
    (relay, consumer)
}

fn setting<'a>(env: &[(&str, &'a str)], key: &str) -> anyhow::Result<&'a str> {
    env.iter()
        .find(|(name, _)| *name == key)
        .map(|(_, value)| *value)
        .with_context(|| format!("the bench env sets {key}"))
}

/// POSTs at a steady rate, then reads when the consumer committed each event.
async fn latency(
    service: &Service,
    tables: &Tables,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = service.api_url("/v1/items");
    let interval = Duration::from_secs(1) / STEADY_RATE;
    let mut ticks = tokio::time::interval(interval);
    let mut answered = std::collections::HashMap::new();
    let began = Instant::now();
    while began.elapsed() < STEADY {
        ticks.tick().await;
        let response = client
            .post(&url)
            .json(&serde_json::json!({"name": "latency"}))
            .send()
            .await?;
        let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
        anyhow::ensure!(
            response.status() == 201,
            "POST answered {}",
            response.status()
        );
        let item: serde_json::Value = response.json().await?;
        let id = item["id"].as_str().context("no item id")?.to_owned();
        answered.insert(id, at);
    }
    let ids: Vec<String> = answered.keys().cloned().collect();
    let mut committed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed.len() < ids.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} events not consumed within 60 s",
            ids.len() - committed.len(),
            ids.len()
        );
        tokio::time::sleep(SAMPLE).await;
        committed = bounded(
            "reading when the events were recorded",
            tables.client.query(
                "SELECT o.payload->>'item_id', EXTRACT(EPOCH FROM p.processed_at)::float8 \
                 FROM outbox o JOIN processed_events p USING (event_id) \
                 WHERE o.payload->>'item_id' = ANY($1)",
                &[&ids],
            ),
        )
        .await?;
    }
    let mut latencies: Vec<Duration> = committed
        .iter()
        .filter_map(|row| {
            let id: String = row.try_get(0).ok()?;
            let at: f64 = row.try_get(1).ok()?;
            answered
                .get(&id)
                .map(|answered| Duration::from_secs_f64((at - answered).max(0.0)))
        })
        .collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok((at(0.50), at(0.99), latencies.len()))
}

/// A minimal confirmed publisher: the relay's payloads and properties, persistent, on a durable
/// topic exchange and queue of its own, confirms awaited per `confirm_every` messages.
async fn raw_publish(events: usize, confirm_every: usize) -> anyhow::Result<f64> {
    let name = format!("bench.raw.{}", std::process::id());
    let connection = bounded(
        "connecting to RabbitMQ",
        Connection::connect(RABBITMQ_URL, ConnectionProperties::default()),
    )
    .await?;
    let channel = bounded("opening a channel", connection.create_channel()).await?;
    declare(&channel, &name).await?;
    let rate = publish_on(&channel, events, confirm_every, &name).await?;
    bounded(
        "deleting the raw queue",
        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
    )
    .await?;
    bounded(
        "deleting the raw exchange",
        channel.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await?;
    bounded("closing", connection.close(200, "bench done".into())).await?;
    Ok(rate)
}

/// Publishes `events` events to `exchange` (it exists) as [`raw_publish`] does.
async fn publish(events: usize, confirm_every: usize, exchange: &str) -> anyhow::Result<f64> {
    let connection = bounded(
        "connecting to RabbitMQ",
        Connection::connect(RABBITMQ_URL, ConnectionProperties::default()),
    )
    .await?;
    let channel = bounded("opening a channel", connection.create_channel()).await?;
    let rate = publish_on(&channel, events, confirm_every, exchange).await?;
    bounded("closing", connection.close(200, "bench done".into())).await?;
    Ok(rate)
}

/// Events per second published on `channel` with confirms, awaited per `confirm_every`.
async fn publish_on(
    channel: &Channel,
    events: usize,
    confirm_every: usize,
    exchange: &str,
) -> anyhow::Result<f64> {
    bounded(
        "enabling confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let began = Instant::now();
    let mut confirms = Vec::with_capacity(confirm_every);
    for _ in 0..events {
        let id = uuid::Uuid::now_v7();
        let body = serde_json::to_vec(&serde_json::json!({
            "id": id,
            "type": "item.created",
            "item_id": uuid::Uuid::now_v7(),
            "occurred_at": chrono::Utc::now(),
        }))?;
        let properties = BasicProperties::default()
            .with_message_id(id.to_string().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_type("item.created".into());
        let confirm = bounded(
            "publishing",
            channel.basic_publish(
                exchange.into(),
                "item.created".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            ),
        )
        .await?;
        confirms.push(confirm);
        if confirms.len() == confirm_every {
            await_confirms(&mut confirms).await?;
        }
    }
    await_confirms(&mut confirms).await?;
    Ok(events as f64 / began.elapsed().as_secs_f64())
}

async fn declare(channel: &Channel, name: &str) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "item.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

async fn await_confirms(confirms: &mut Vec<lapin::PublisherConfirm>) -> anyhow::Result<()> {
    for confirm in confirms.drain(..) {
        anyhow::ensure!(
            matches!(
                bounded("awaiting a confirm", confirm).await?,
                Confirmation::Ack(_)
            ),
            "the broker did not confirm a message"
        );
    }
    Ok(())
}

async fn purge(queue: &str) -> anyhow::Result<()> {
    let connection = bounded(
        "connecting to RabbitMQ",
        Connection::connect(RABBITMQ_URL, ConnectionProperties::default()),
    )
    .await?;
    let channel = bounded("opening a channel", connection.create_channel()).await?;
    // The queue exists: the service declared it when it ran for the earlier sections.
    bounded(
        "purging the consumer's queue",
        channel.queue_purge(queue.into(), QueuePurgeOptions::default()),
    )
    .await?;
    bounded("closing", connection.close(200, "purged".into())).await?;
    Ok(())
}
