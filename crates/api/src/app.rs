//! Wiring: the startup phases in order, the two servers, and the graceful shutdown.

use crate::{db, messaging, openapi, problem};
use actix_web::{App, HttpServer, middleware, web};
use bootstrap::broker::BrokerSupervisor;
use bootstrap::web::HttpMetrics;
use bootstrap::{Lifecycle, Settings, Startup, StartupPhase, Telemetry};
use health::checks::postgres::{PoolGauges, PostgresCheck};
use health::checks::rabbitmq::RabbitMqCheck;
use health::{CancellationToken, Health};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tracing_actix_web::TracingLogger;

/// Version reported by the probes.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the service until it is told to stop; returns the process exit code.
pub async fn run(settings: Settings) -> ExitCode {
    let config_done = Instant::now();
    let telemetry = match Telemetry::init(&settings.service_name) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(bootstrap::EXIT_CONFIG as u8);
        }
    };
    let startup = Startup::new(settings.startup.deadline);
    startup.record(StartupPhase::Telemetry, config_done.elapsed());
    let code = match serve(&settings, &startup).await {
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
    telemetry.shutdown();
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

async fn serve(settings: &Settings, startup: &Startup) -> Result<(), Failure> {
    let terminate = bootstrap::shutdown::listen()
        .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))?;
    let workers = CancellationToken::new();
    let registry = prometheus::Registry::new();

    // The supervisor exists from the start so the rabbitmq check can follow it; it connects in
    // the background and declares the topology on every connection.
    let broker = BrokerSupervisor::spawn(
        settings.rabbitmq.url.clone(),
        settings.service_name.clone(),
        settings.rabbitmq.reconnect_max_backoff,
        messaging::topology::declare(&settings.rabbitmq),
    );
    let health = Health::builder(settings.service_name.clone(), VERSION)
        .registry(registry.clone())
        .liveness_stall_after(settings.health.liveness_stall_after)
        .check(
            "postgres",
            settings.health.postgres,
            PostgresCheck::new(db::connection_config(&settings.database)?),
        )
        .check(
            "rabbitmq",
            settings.health.rabbitmq,
            RabbitMqCheck::new(broker.link()),
        )
        .build()
        .map_err(anyhow::Error::from)?;
    let lifecycle = Lifecycle::new(health.clone());
    let _watchdog = health.spawn_watchdog(workers.clone());

    // Management first: /livez and /startupz answer during the whole startup.
    let began = Instant::now();
    let management = {
        let health = health.clone();
        HttpServer::new(move || {
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
        .run()
    };
    let management_handle = management.handle();
    let management_task = tokio::spawn(management);
    startup.record(StartupPhase::ManagementServer, began.elapsed());

    // The remaining phases race the termination signal: SIGTERM during startup stops at once.
    let started = tokio::select! {
        _ = terminate.cancelled() => None,
        result = start_dependencies(settings, startup, &health, &registry, &broker, &workers) => Some(result?),
    };
    let Some((pool, scheduler, api)) = started else {
        tracing::info!("terminated during startup");
        workers.cancel();
        broker.close().await;
        management_handle.stop(true).await;
        let _ = management_task.await;
        return Ok(());
    };
    let api_handle = api.handle();
    let mut api_task = tokio::spawn(api);
    lifecycle.ready();
    tracing::info!(
        ready_after_ms = startup.elapsed().as_millis() as u64,
        "service ready"
    );

    let mut result: Result<(), Failure> = Ok(());
    tokio::select! {
        _ = terminate.cancelled() => {}
        ended = &mut api_task => {
            result = Err(anyhow::anyhow!("the API server stopped on its own: {ended:?}").into());
        }
    }

    // Draining: not ready from this instant, still serving while endpoints are removed.
    lifecycle.draining();
    tokio::time::sleep(settings.shutdown.drain_delay).await;
    tracing::info!("drain delay over: closing the API listener, finishing in-flight requests");
    // Graceful stop waits for in-flight requests up to `shutdown.timeout` (set on the server).
    api_handle.stop(true).await;
    let _ = api_task.await;
    workers.cancel();
    let mut scheduler = scheduler;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while scheduler.join_next().await.is_some() {}
    })
    .await;
    broker.close().await;
    pool.close();
    lifecycle.stopped();
    management_handle.stop(true).await;
    let _ = management_task.await;
    tracing::info!("stopped");
    result
}

type Started = (
    deadpool_postgres::Pool,
    tokio::task::JoinSet<()>,
    actix_web::dev::Server,
);

async fn start_dependencies(
    settings: &Settings,
    startup: &Startup,
    health: &Health,
    registry: &prometheus::Registry,
    broker: &BrokerSupervisor,
    workers: &CancellationToken,
) -> Result<Started, Failure> {
    let pool = db::pool(&settings.database)?;
    startup
        .run(StartupPhase::PostgresPool, || async {
            let client = pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    registry
        .register(Box::new(
            PoolGauges::new(pool.clone()).map_err(anyhow::Error::from)?,
        ))
        .map_err(anyhow::Error::from)?;

    // A critical broker holds startup; a non-critical one is connected in the background.
    if settings.health.rabbitmq.critical {
        startup
            .run(StartupPhase::RabbitMq, || async {
                tokio::time::timeout(Duration::from_secs(5), broker.connected())
                    .await
                    .map_err(|_| "broker not connected yet")
            })
            .await?;
    }

    let began = Instant::now();
    let scheduler = health.spawn_scheduler(workers.clone());
    startup.record(StartupPhase::BackgroundWorkers, began.elapsed());

    // Warm-up: wait for the first verdict of every critical check, so the pod turns ready on
    // evidence rather than on the absence of it. A service fills in its own (caches, ...).
    startup
        .run(StartupPhase::WarmUp, || async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if health.checks_status(&health::ProbeQuery::default()) != health::Status::Fail {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err("critical checks not passing yet");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await?;

    let began = Instant::now();
    let api = api_server(settings, pool.clone(), registry)?;
    startup.record(StartupPhase::ApiServer, began.elapsed());
    Ok((pool, scheduler, api))
}

fn api_server(
    settings: &Settings,
    pool: deadpool_postgres::Pool,
    registry: &prometheus::Registry,
) -> anyhow::Result<actix_web::dev::Server> {
    let metrics = HttpMetrics::register(registry)?;
    let document = web::Data::new(openapi::document());
    let pool = web::Data::new(pool);
    let body_limit = settings.server.body_limit;
    let mut server = HttpServer::new(move || {
        let metrics = metrics.clone();
        App::new()
            .app_data(document.clone())
            .app_data(pool.clone())
            .app_data(web::JsonConfig::default().limit(body_limit))
            .app_data(web::PayloadConfig::new(body_limit))
            .wrap(middleware::from_fn(move |req, next| {
                bootstrap::web::observe(metrics.clone(), req, next)
            }))
            .wrap(TracingLogger::default())
            .route("/openapi.json", web::get().to(openapi::serve))
            .default_service(web::to(problem::not_found))
    })
    .disable_signals()
    .shutdown_timeout(settings.shutdown.timeout.as_secs().max(1));
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    Ok(server
        .bind((settings.server.host, settings.server.port))
        .map_err(|e| anyhow::anyhow!("binding the API port {}: {e}", settings.server.port))?
        .run())
}
