//! The two HTTP servers: the API, and the management port that the kubelet and Prometheus use.

use crate::routes::AppState;
use crate::settings::Settings;
use crate::{openapi, problem, routes};
use actix_web::dev::Server;
use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use bootstrap::web::{AdmissionLimit, ApiConnections, HttpMetrics};
use health::Health;
use std::time::Duration;
use tracing_actix_web::TracingLogger;

pub(super) fn management_server(settings: &Settings, health: &Health) -> anyhow::Result<Server> {
    let health = health.clone();
    let workers = settings.management.workers;
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(health.clone()))
            .configure(health::http::configure)
    })
    .workers(workers)
    // Inside the descriptors kept from the API (bootstrap::limits::RESERVED_FILES): a flood of
    // this port cannot take the file limit, and with it the API and the dependencies.
    .max_connections((MANAGEMENT_CONNECTIONS / workers).max(1))
    // Probes and scrapes send their request with the connection; an idle one is cut after the
    // probes' own timeout (the chart's timeoutSeconds, 1 s; shorter would fail probes of a briefly
    // CPU-starved worker), so a flood of them frees its slots within seconds.
    .client_request_timeout(Duration::from_secs(1))
    .disable_signals()
    .shutdown_timeout(1)
    .bind((settings.server.host, settings.management.port))
    .with_context(|| format!("binding the management port {}", settings.management.port))?
    .run())
}

/// Open management connections, all workers together: probes and scrapes need a few.
const MANAGEMENT_CONNECTIONS: usize = 256;

/// Most API workers chosen by default: past a few, a replica's requests wait on its database
/// connections, not on CPU; more replicas (or `APP__SERVER__WORKERS`) scale further.
const DEFAULT_MAX_WORKERS: usize = 4;

/// API workers: `APP__SERVER__WORKERS`, or one per CPU the process may use (the standard
/// library counts the cgroup's CPU quota), at most [`DEFAULT_MAX_WORKERS`].
fn api_workers(settings: &Settings) -> usize {
    match settings.server.workers {
        0 => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(DEFAULT_MAX_WORKERS),
        n => n,
    }
}

/// The API server; every worker shares `state` (and so the request pool).
pub(super) fn api_server(
    settings: &Settings,
    state: AppState,
    registry: &prometheus::Registry,
) -> anyhow::Result<Server> {
    let metrics = HttpMetrics::register(registry)?;
    let document = web::Data::new(openapi::document());
    let body_limit = settings.server.body_limit;
    let body_timeout = settings.server.body_timeout;
    let workers = api_workers(settings);
    let connections = api_connections(settings, workers)?;
    // Per worker: past it, new clients wait in the kernel's accept queue.
    let per_worker = (connections / workers).max(1);
    let accepted = ApiConnections::register(
        registry,
        per_worker * workers,
        settings.server.write_timeout,
    )?;
    let admission = AdmissionLimit::register(registry, max_in_flight(settings)?, &metrics)?;
    let state = web::Data::new(state);
    let proxies = bootstrap::web::TrustedProxies::new(settings.server.trusted_proxies.clone());
    let server = HttpServer::new(move || {
        let (metrics, admission) = (metrics.clone(), admission.clone());
        App::new()
            .app_data(proxies.clone())
            .app_data(document.clone())
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            // Innermost: a handler's panic becomes a 500 the metrics and the access log see.
            .wrap(middleware::from_fn(bootstrap::web::catch_panics))
            .wrap(middleware::from_fn(move |req, next| {
                bootstrap::web::observe(metrics.clone(), req, next)
            }))
            .wrap(TracingLogger::<bootstrap::web::RequestSpan>::new())
            // Outside the telemetry: a refusal must cost next to nothing, or refusing takes the
            // capacity that the admitted requests need.
            .wrap(middleware::from_fn(move |req, next| {
                admission.clone().admit(req, next)
            }))
            // Outermost: a body still on its way takes no place, span or connection.
            .wrap(middleware::from_fn(move |req, next| {
                bootstrap::web::receive_body(body_timeout, body_limit, req, next)
            }))
            .route("/openapi.json", web::get().to(openapi::serve))
            .configure(|cfg| routes::configure(cfg, body_limit))
            .default_service(web::to(problem::not_found))
    })
    .disable_signals()
    .workers(workers)
    .max_connections(per_worker)
    .on_connect(move |connection, data| accepted.on_connect(connection, data))
    // Headers must arrive within this (actix's default, said here): slow-header clients are cut.
    .client_request_timeout(Duration::from_secs(5))
    .shutdown_timeout(drain_seconds(settings));
    Ok(server
        .bind((settings.server.host, settings.server.port))
        .with_context(|| format!("binding the API port {}", settings.server.port))?
        .run())
}

/// How long a graceful stop waits for in-flight requests before it closes what is left: the
/// shutdown budget less the last steps' reserve (app/shutdown.rs).
fn drain_seconds(settings: &Settings) -> u64 {
    settings
        .shutdown
        .timeout
        .saturating_sub(super::shutdown::LAST_STEPS)
        .as_secs()
        .max(1)
}

/// Default requests in flight per request connection: a request holds a connection only for its
/// queries, so somewhat more than the pool keep it busy; more would only queue. At the default
/// pool, 8 admits the 64 requests a 64-connection client keeps in flight (docs/benchmarks.md,
/// "Overload").
const IN_FLIGHT_PER_CONNECTION: usize = 8;

/// `APP__SERVER__MAX_IN_FLIGHT`, or [`IN_FLIGHT_PER_CONNECTION`] per request connection.
fn max_in_flight(settings: &Settings) -> anyhow::Result<usize> {
    Ok(match settings.server.max_in_flight {
        0 => settings.connection_budget()?.requests * IN_FLIGHT_PER_CONNECTION,
        n => n,
    })
}

/// Open API connections allowed: `APP__SERVER__MAX_CONNECTIONS`, at most what the file limit
/// (raised to its hard value first) leaves for them.
fn api_connections(settings: &Settings, workers: usize) -> anyhow::Result<usize> {
    let pooled = settings.connection_budget()?.total() as u64;
    let budget = match bootstrap::limits::raise_file_limit() {
        Ok(limit) => {
            let budget = bootstrap::limits::api_connections(limit, pooled, workers);
            tracing::info!(file_limit = limit, api_connections = budget, "file limit");
            budget
        }
        Err(error) => {
            tracing::warn!(%error, "reading the file limit; API connections left unbounded by it");
            usize::MAX
        }
    };
    Ok(match settings.server.max_connections {
        0 => budget,
        wanted => wanted.min(budget),
    })
}
