//! Wiring: the startup phases in order, the two servers, and the graceful shutdown.

use crate::messaging::consumer::Consumer;
use crate::messaging::relay::{Backlog, OutboxLagCheck, Relay};
use crate::routes::AppState;
use crate::{db, messaging, openapi, problem, routes};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, middleware, web};
use bootstrap::broker::BrokerSupervisor;
use bootstrap::shutdown::ShutdownDeadline;
use bootstrap::web::HttpMetrics;
use bootstrap::{Lifecycle, Settings, Startup, StartupPhase, Telemetry};
use health::checks::postgres::{PoolGauges, PostgresCheck};
use health::checks::rabbitmq::RabbitMqCheck;
use health::{CancellationToken, Health, ProbeQuery, Status};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing_actix_web::TracingLogger;

/// Version reported by the probes.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the service until it is told to stop; returns the process exit code.
pub async fn run(settings: Settings) -> ExitCode {
    let began = Instant::now();
    let telemetry = match Telemetry::init(&settings.service.name) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(bootstrap::EXIT_CONFIG as u8);
        }
    };
    let startup = Startup::new(settings.startup.deadline);
    startup.record(StartupPhase::Telemetry, began.elapsed());
    let (outcome, deadline) = serve(&settings, &startup).await;
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Startup(error)) => {
            tracing::error!(%error, "startup failed");
            ExitCode::from(bootstrap::EXIT_STARTUP as u8)
        }
        Err(Failure::Other(error)) => {
            tracing::error!(error = format!("{error:#}"), "service failed");
            ExitCode::FAILURE
        }
    };
    // The trace flush is the last step under the shutdown deadline (or its own budget when the
    // service never got to draining).
    let deadline = deadline.unwrap_or_else(|| ShutdownDeadline::after(settings.shutdown.timeout));
    let flush = tokio::task::spawn_blocking(move || telemetry.shutdown());
    deadline.step("trace flush", flush).await;
    code
}

enum Failure {
    Startup(bootstrap::StartupError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Other(error)
    }
}

impl From<bootstrap::StartupError> for Failure {
    fn from(error: bootstrap::StartupError) -> Self {
        Failure::Startup(error)
    }
}

/// What the process holds while it runs, created before the dependencies are reached.
struct Parts {
    health: Health,
    registry: prometheus::Registry,
    broker: BrokerSupervisor,
    backlog: Arc<Backlog>,
    /// The relay's own connections (and its lag check's).
    relay_pool: deadpool_postgres::Pool,
    outbox_written: Arc<Notify>,
}

/// What startup produced.
struct Running {
    pool: deadpool_postgres::Pool,
    /// The relay and the consumer.
    workers: JoinSet<()>,
    /// One task per check; stopped last.
    scheduler: JoinSet<()>,
    api: Server,
}

/// Runs until stopped; returns the outcome and, once draining began, the shutdown deadline
/// whose remainder the caller's last steps share.
async fn serve(
    settings: &Settings,
    startup: &Startup,
) -> (Result<(), Failure>, Option<ShutdownDeadline>) {
    match serve_inner(settings, startup).await {
        Ok((result, deadline)) => (result, Some(deadline)),
        Err(failure) => (Err(failure), None),
    }
}

async fn serve_inner(
    settings: &Settings,
    startup: &Startup,
) -> Result<(Result<(), Failure>, ShutdownDeadline), Failure> {
    let terminate = bootstrap::shutdown::listen()
        .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))?;
    let parts = parts(settings)?;
    let lifecycle = Lifecycle::new(parts.health.clone());
    // Two stop signals: workers (relay, consumer) stop after the API; the health scheduler
    // and the watchdog keep running until the very end so probes stay truthful.
    let stop_workers = CancellationToken::new();
    let stop_health = CancellationToken::new();
    let _watchdog = parts.health.spawn_watchdog(stop_health.clone());

    // Management first: /livez and /startupz answer during the whole startup.
    let began = Instant::now();
    let management = management_server(settings, &parts.health)?;
    let management_handle = management.handle();
    let management_task = tokio::spawn(management);
    startup.record(StartupPhase::ManagementServer, began.elapsed());

    // The remaining phases race the termination signal: SIGTERM during startup stops at once.
    let started = tokio::select! {
        _ = terminate.cancelled() => None,
        result = start(settings, startup, &parts, &stop_workers, &stop_health) => Some(result?),
    };
    let Some(Running {
        pool,
        mut workers,
        scheduler,
        api,
    }) = started
    else {
        tracing::info!("terminated during startup");
        stop_workers.cancel();
        stop_health.cancel();
        let deadline = ShutdownDeadline::after(settings.shutdown.timeout);
        deadline
            .step("broker connection", parts.broker.close())
            .await;
        stop_management(&deadline, management_handle, management_task).await;
        return Ok((Ok(()), deadline));
    };
    let api_handle = api.handle();
    let mut api_task = Some(tokio::spawn(api));
    lifecycle.ready();
    tracing::info!(
        ready_after_ms = startup.elapsed().as_millis() as u64,
        "service ready"
    );

    let mut result: Result<(), Failure> = Ok(());
    if let Some(task) = api_task.as_mut() {
        tokio::select! {
            _ = terminate.cancelled() => {}
            ended = task => {
                // Finished: awaiting its handle again would panic.
                api_task = None;
                result = Err(anyhow::anyhow!("the API server stopped on its own: {ended:?}").into());
            }
            // A worker ends only when told to: one that ended (a panic) leaves the service
            // without its relay or consumer, so it stops (exit 1) and Kubernetes restarts it.
            Some(ended) = workers.join_next() => {
                result = Err(anyhow::anyhow!("a background worker stopped on its own: {ended:?}").into());
            }
        }
    }

    // Draining: not ready from this instant, still serving while endpoints are removed.
    lifecycle.draining();
    tokio::time::sleep(settings.shutdown.drain_delay).await;
    tracing::info!("drain delay over: closing the API listener, finishing in-flight requests");
    // From here every step shares one budget: the chart's grace period is drain + this.
    let deadline = ShutdownDeadline::after(settings.shutdown.timeout);
    if let Some(task) = api_task {
        deadline
            .step("api server", stop_server(api_handle, task))
            .await;
    }
    // The consumer settles the delivery in hand, the relay finishes its batch.
    stop_workers.cancel();
    deadline
        .step("background workers", async {
            while workers.join_next().await.is_some() {}
        })
        .await;
    deadline
        .step("broker connection", parts.broker.close())
        .await;
    pool.close();
    parts.relay_pool.close();
    lifecycle.stopped();
    stop_health.cancel();
    deadline
        .step("health scheduler", scheduler.join_all())
        .await;
    stop_management(&deadline, management_handle, management_task).await;
    tracing::info!("stopped");
    Ok((result, deadline))
}

fn parts(settings: &Settings) -> anyhow::Result<Parts> {
    let registry = prometheus::Registry::new();
    // The supervisor exists from the start so the rabbitmq check can follow it; it connects in
    // the background and declares the topology on every connection.
    let broker = BrokerSupervisor::spawn(
        &settings.rabbitmq,
        settings.service.name.clone(),
        messaging::topology::declare(&settings.rabbitmq),
    )?;
    let backlog = Backlog::register(&registry)?;
    registry.register(Box::new(
        bootstrap::telemetry::CLIENT_PROTOCOL_ERRORS.clone(),
    ))?;
    // Detached: it only logs, and ends with the runtime.
    tokio::spawn(bootstrap::telemetry::report_client_protocol_errors(
        Duration::from_secs(60),
    ));
    let relay_pool = db::relay_pool(&settings.database)?;
    let health = Health::builder(settings.service.name.clone(), VERSION)
        .registry(registry.clone())
        .liveness_stall_after(settings.health.liveness.stall_after)
        .check("postgres", settings.health.postgres.policy(true), {
            let (config, tls) = bootstrap::tls::postgres(&settings.database)?;
            PostgresCheck::new(config, tls)
        })
        .check(
            "rabbitmq",
            // Not critical by default: the outbox absorbs broker outages.
            settings.health.rabbitmq.policy(false),
            RabbitMqCheck::new(broker.link()),
        )
        // Never critical: a lagging relay means late events, not failing requests.
        .check(
            "outbox",
            settings.health.postgres.policy(false),
            OutboxLagCheck::new(
                relay_pool.clone(),
                backlog.clone(),
                settings.outbox.lag_warn_after,
            ),
        )
        .build()?;
    Ok(Parts {
        health,
        registry,
        broker,
        backlog,
        relay_pool,
        outbox_written: Arc::new(Notify::new()),
    })
}

async fn start(
    settings: &Settings,
    startup: &Startup,
    parts: &Parts,
    stop_workers: &CancellationToken,
    stop_health: &CancellationToken,
) -> Result<Running, Failure> {
    let pool = db::pool(&settings.database)?;
    startup
        .run(StartupPhase::PostgresPool, || async {
            let client = pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    parts
        .registry
        .register(Box::new(
            PoolGauges::new(pool.clone()).map_err(anyhow::Error::from)?,
        ))
        .map_err(anyhow::Error::from)?;

    startup
        .run(StartupPhase::Migrations, || async {
            let applied = db::migrate(&settings.database).await?;
            tracing::info!(applied, "migrations");
            Ok::<_, anyhow::Error>(())
        })
        .await?;

    // A critical broker holds startup; a non-critical one is connected in the background.
    if settings.health.rabbitmq.policy(false).critical {
        startup
            .run(StartupPhase::RabbitMq, || async {
                tokio::time::timeout(Duration::from_secs(5), parts.broker.connected())
                    .await
                    .map_err(|_| anyhow::anyhow!("broker not connected yet"))
            })
            .await?;
    }

    let began = Instant::now();
    let scheduler = parts.health.spawn_scheduler(stop_health.clone());
    let mut workers = JoinSet::new();
    let relay = Relay {
        pool: parts.relay_pool.clone(),
        link: parts.broker.link(),
        exchange: settings.rabbitmq.exchange.clone(),
        settings: settings.outbox.clone(),
        written: parts.outbox_written.clone(),
        backlog: parts.backlog.clone(),
    };
    workers.spawn(relay.run(stop_workers.clone()));
    let consumer = Consumer {
        db: db::Database::new(pool.clone(), settings.database.query_timeout),
        link: parts.broker.link(),
        queue: settings.rabbitmq.queue.clone(),
        tag: format!("{}-{}", settings.service.name, std::process::id()),
    };
    workers.spawn(consumer.run(stop_workers.clone()));
    workers.spawn(crate::housekeeping::run(
        pool.clone(),
        settings.retention.clone(),
        settings.outbox.retention,
        stop_workers.clone(),
    ));
    startup.record(StartupPhase::BackgroundWorkers, began.elapsed());

    // Warm-up: wait for the first verdict of every critical check, so the pod turns ready on
    // evidence rather than on the absence of it. A service fills in its own (caches, ...).
    startup
        .run(StartupPhase::WarmUp, || async {
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
        db: db::Database::new(pool.clone(), settings.database.query_timeout),
        outbox_written: parts.outbox_written.clone(),
    };
    let api = api_server(settings, state, &parts.registry)?;
    startup.record(StartupPhase::ApiServer, began.elapsed());
    Ok(Running {
        pool,
        workers,
        scheduler,
        api,
    })
}

fn management_server(settings: &Settings, health: &Health) -> anyhow::Result<Server> {
    let health = health.clone();
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(health.clone()))
            .configure(health::http::configure)
    })
    .workers(settings.management.workers)
    .disable_signals()
    .shutdown_timeout(1)
    .bind((settings.server.host, settings.management.port))
    .map_err(|e| {
        anyhow::anyhow!(
            "binding the management port {}: {e}",
            settings.management.port
        )
    })?
    .run())
}

fn api_server(
    settings: &Settings,
    state: AppState,
    registry: &prometheus::Registry,
) -> anyhow::Result<Server> {
    let metrics = HttpMetrics::register(registry)?;
    let document = web::Data::new(openapi::document());
    let state = web::Data::new(state);
    let body_limit = settings.server.body_limit;
    let body_timeout = settings.server.body_timeout;
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let connections = api_connections(settings, workers);
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new()
            .app_data(document.clone())
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .wrap(middleware::from_fn(move |req, next| {
                bootstrap::web::body_deadline(body_timeout, req, next)
            }))
            // Innermost: a handler's panic becomes a 500 the metrics and the access log see.
            .wrap(middleware::from_fn(bootstrap::web::catch_panics))
            .wrap(middleware::from_fn(move |req, next| {
                bootstrap::web::observe(metrics.clone(), req, next)
            }))
            .wrap(TracingLogger::default())
            .route("/openapi.json", web::get().to(openapi::serve))
            .configure(|cfg| routes::configure(cfg, body_limit))
            .default_service(web::to(problem::not_found))
    })
    .disable_signals()
    .workers(workers)
    // Per worker: past it, new clients wait in the kernel's accept queue.
    .max_connections(connections.div_ceil(workers))
    // Headers must arrive within this (actix's default, said here): slow-header clients are cut.
    .client_request_timeout(Duration::from_secs(5))
    // Graceful stop waits this long for in-flight requests, then closes what is left.
    .shutdown_timeout(settings.shutdown.timeout.as_secs().max(1));
    Ok(server
        .bind((settings.server.host, settings.server.port))
        .map_err(|e| anyhow::anyhow!("binding the API port {}: {e}", settings.server.port))?
        .run())
}

/// Open API connections allowed: `APP__SERVER__MAX_CONNECTIONS`, at most what the file limit
/// (raised to its hard value first) leaves for them.
fn api_connections(settings: &Settings, workers: usize) -> usize {
    // The request pool, the relay's two connections and the check's one.
    let pooled = settings.database.pool_max_size as u64 + 3;
    let budget = match bootstrap::limits::FileLimit::raise() {
        Ok(limit) => {
            let budget = limit.api_connections(pooled, workers);
            tracing::info!(
                file_limit = limit.soft,
                api_connections = budget,
                "file limit"
            );
            budget
        }
        Err(error) => {
            tracing::warn!(%error, "reading the file limit; API connections left unbounded by it");
            usize::MAX
        }
    };
    match settings.server.max_connections {
        0 => budget,
        wanted => wanted.min(budget),
    }
}

/// The last step of every shutdown: probes answer until here.
async fn stop_management(
    deadline: &ShutdownDeadline,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    deadline
        .step("management server", stop_server(handle, task))
        .await;
}

async fn stop_server(handle: ServerHandle, task: tokio::task::JoinHandle<std::io::Result<()>>) {
    handle.stop(true).await;
    let _ = task.await;
}
