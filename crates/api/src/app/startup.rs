//! Startup: the phases of this service, in order, under one deadline.

use super::servers::api_server;
use super::shutdown::Serving;
use crate::db;
use crate::housekeeping::{self, Prunable};
use crate::messaging::Messaging; // @rabbitmq
use crate::routes::AppState;
use crate::settings::Settings;
use bootstrap::config::{ConnectionBudget, DatabaseSettings, SslMode};
use bootstrap::schema::Version;
use bootstrap::telemetry::{CLIENT_PROTOCOL_ERRORS, SPANS_DROPPED};
use bootstrap::tls::Verification;
use bootstrap::{Lifecycle, Startup, StartupPhase};
use health::checks::postgres::{PoolGauges, PostgresCheck};
use health::{Alarm, CancellationToken, Health, ProbeQuery, Status};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Logs and traces installed.
pub const TELEMETRY: StartupPhase = StartupPhase::new("telemetry");
/// `/livez` and `/startupz` answering.
pub const MANAGEMENT_SERVER: StartupPhase = StartupPhase::new("management server");
/// First PostgreSQL connection (the background pool's; the request pool opens on first use).
const POSTGRES_POOL: StartupPhase = StartupPhase::new("postgres pool").waiting_for("postgres");
/// Schema migrations applied (or, when a release step applies them, waited for).
const MIGRATIONS: StartupPhase = StartupPhase::new("migrations").waiting_for("postgres");
/// The background tasks and the health scheduler.
const BACKGROUND_WORKERS: StartupPhase = StartupPhase::new("background workers");
/// The first verdict of every critical check.
const WARM_UP: StartupPhase = StartupPhase::new("warm-up");
/// The API port bound.
const API_SERVER: StartupPhase = StartupPhase::new("api server");

/// What the process holds while it runs, created before the dependencies are reached.
pub(super) struct Parts {
    pub(super) health: Health,
    pub(super) lifecycle: Lifecycle,
    /// Stops the background workers, after the API.
    pub(super) stop_workers: CancellationToken,
    /// Stops the health scheduler and the watchdog at the very end, so probes stay truthful.
    pub(super) stop_health: CancellationToken,
    pub(super) messaging: Messaging, // @rabbitmq
    /// Shared by the background tasks: few connections, as a task holds one only for a statement
    /// or short transaction, never across a call out. Used on the main runtime, which outlives
    /// the workers.
    pub(super) background_pool: deadpool_postgres::Pool,
    /// Shared by every API worker, so no request waits while a connection is idle. Driver tasks
    /// live on the worker that opened them (docs/architecture.md): a stopped worker's connections
    /// close and are discarded at next checkout. Known limit: at shutdown, a worker that stops
    /// first fails a slower worker's request using one of its connections.
    pub(super) request_pool: deadpool_postgres::Pool,
}

pub(super) fn parts(settings: &Settings) -> anyhow::Result<Parts> {
    let registry = prometheus::Registry::new();
    registry.register(Box::new(CLIENT_PROTOCOL_ERRORS.clone()))?;
    registry.register(Box::new(SPANS_DROPPED.clone()))?;
    // Raised by every connection to PostgreSQL that ends with an error, the check's own and
    // the pools': readiness follows a dead server within a second, not a poll interval.
    let postgres_lost = Alarm::default();
    let (background_pool, request_pool) = database_pools(settings, &registry, &postgres_lost)?;
    let health = Health::builder(settings.service.name.clone(), env!("CARGO_PKG_VERSION"))
        .registry(registry.clone())
        .liveness_stall_after(settings.health.liveness.stall_after)
        .check("postgres", settings.health.postgres.policy(true)?, {
            let (config, tls) = bootstrap::tls::postgres(&settings.database)?;
            PostgresCheck::new(config, tls).with_alarm(postgres_lost)
        });
    let messaging = Messaging::new(settings, &registry, &background_pool)?; // @rabbitmq
    let health = messaging.checks(health)?; // @rabbitmq
    let health = health.build()?;
    Ok(Parts {
        lifecycle: Lifecycle::new(health.clone()),
        stop_workers: CancellationToken::new(),
        stop_health: CancellationToken::new(),
        health,
        messaging, // @rabbitmq
        background_pool,
        request_pool,
    })
}

/// Says once, at startup, that the database's identity is not checked (docs/configuration.md):
/// libpq's default `prefer` takes any certificate and falls back to plain TCP without a word.
fn warn_if_unverified(database: &DatabaseSettings) {
    let verification = Verification::for_postgres(database.ssl_mode, database.ca_file.is_some());
    if database.ssl_mode == SslMode::Disable || verification == Verification::EncryptOnly {
        tracing::warn!(
            sslmode = ?database.ssl_mode,
            "PostgreSQL server not verified: anyone between here and the database can read or change the traffic; use sslmode=verify-full (and APP__DATABASE__CA_FILE for a private authority)"
        );
    }
}

/// The background and request pools, sized by the replica's one connection budget, which is
/// logged once and exported (`db_connections_budget{part}`) with the pools' gauges.
fn database_pools(
    settings: &Settings,
    registry: &prometheus::Registry,
    lost: &Alarm,
) -> anyhow::Result<(deadpool_postgres::Pool, deadpool_postgres::Pool)> {
    let budget = settings.connection_budget()?;
    tracing::info!(
        max_connections = budget.total(),
        requests = budget.requests,
        background = budget.background,
        check = ConnectionBudget::CHECK,
        "database connections"
    );
    warn_if_unverified(&settings.database);
    let gauges = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "db_connections_budget",
            "PostgreSQL connections this replica may hold, by use (APP__DATABASE__MAX_CONNECTIONS split).",
        ),
        &["part"],
    )?;
    for (part, size) in [
        ("requests", budget.requests),
        ("background", budget.background),
        ("check", ConnectionBudget::CHECK),
    ] {
        gauges
            .with_label_values(&[part])
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }
    registry.register(Box::new(gauges))?;
    registry.register(Box::new(db::CONNECTIONS_REFUSED.clone()))?;
    let request_pool = db::pool(&settings.database, "shipshape", budget.requests, lost)?;
    registry.register(Box::new(PoolGauges::new(request_pool.clone())?))?;
    let background = "shipshape-background";
    let background_pool = db::pool(&settings.database, background, budget.background, lost)?;
    Ok((background_pool, request_pool))
}

pub(super) async fn start(
    settings: &Settings,
    startup: &Startup,
    parts: &Parts,
) -> anyhow::Result<Serving> {
    database(settings, startup, parts).await?;
    parts.messaging.connected(startup).await?; // @rabbitmq
    let began = Instant::now();
    let scheduler = parts.health.spawn_scheduler(parts.stop_health.clone());
    let workers = background_workers(settings, parts)?;
    startup.record(BACKGROUND_WORKERS, began.elapsed());

    // Warm-up: wait for the first verdict of every critical check, so the pod turns ready on
    // evidence rather than on the absence of it. A service fills in its own (caches, ...).
    startup
        .run(WARM_UP, || async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while parts.health.checks_status(&ProbeQuery::default()) == Status::Fail {
                if tokio::time::Instant::now() >= deadline {
                    return Err(anyhow::anyhow!("critical checks not passing yet"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        })
        .await?;

    let began = Instant::now();
    let state = AppState {
        db: db::Database::new(parts.request_pool.clone(), settings.database.query_timeout),
        outbox_written: parts.messaging.outbox_written.clone(), // @rabbitmq
    };
    let api = api_server(settings, state, parts.health.registry())?;
    startup.record(API_SERVER, began.elapsed());
    // Spawned last, with no await after it: `serve` races this future against SIGTERM, and one
    // dropped after the spawn would leave the API serving with nobody to stop it.
    Ok(Serving::start(workers, scheduler, api))
}

/// A first connection working, and the schema migrated.
async fn database(settings: &Settings, startup: &Startup, parts: &Parts) -> anyhow::Result<()> {
    startup
        .run(POSTGRES_POOL, || async {
            let client = parts.background_pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    let schema = &db::schema();
    let status = startup
        .run(MIGRATIONS, move || async move {
            if settings.migrations.at_startup {
                let log = |version: &Version, took: Duration| {
                    let duration_ms = took.as_millis() as u64;
                    tracing::info!(migration = %version, duration_ms, "migration applied");
                };
                return schema
                    .migrate(&settings.database, &settings.migrations, log)
                    .await;
            }
            // A release step applies them (`shipshape migrate`, the chart's Job): wait for it.
            let status = schema.status(&settings.database).await?;
            match status.pending.first() {
                None => Ok(status),
                Some(first) => Err(anyhow::anyhow!(
                    "waiting for {} pending migration(s) from {first} on (`shipshape migrate`)",
                    status.pending.len()
                )),
            }
        })
        .await?;
    if !status.unknown.is_empty() {
        let unknown: Vec<String> = status.unknown.iter().map(Version::to_string).collect();
        tracing::info!(
            migrations = %unknown.join(", "),
            "the schema has migrations of a later release; serving on it (expand/contract keeps it compatible)"
        );
    }
    Ok(())
}

/// The background tasks, each stopped by `parts.stop_workers`.
fn background_workers(settings: &Settings, parts: &Parts) -> anyhow::Result<JoinSet<()>> {
    let mut workers = JoinSet::new();
    let stop = &parts.stop_workers;
    parts.messaging.spawn(&parts.health, &mut workers, stop)?; // @rabbitmq
    let idempotency_keys = Prunable {
        table: "idempotency_keys",
        age_column: "created_at",
        retention: settings.retention.idempotency_keys,
    };
    let prunable = std::iter::once(idempotency_keys)
        .chain(parts.messaging.prunable()) // @rabbitmq
        .collect();
    let pool = parts.background_pool.clone();
    let every = settings.retention.prune_every;
    workers.spawn(housekeeping::run(pool, prunable, every, stop.clone()));
    Ok(workers)
}
