//! Wiring: the startup phases in order ([`startup`]), the two servers ([`servers`]), and the
//! graceful shutdown ([`shutdown`]).

pub mod migrate;
mod servers;
mod shutdown;
mod startup;

use crate::settings::Settings;
use bootstrap::shutdown::ShutdownDeadline;
use bootstrap::{Lifecycle, Startup, Telemetry};
use health::CancellationToken;
use std::process::ExitCode;
use std::time::Instant;

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
    startup.record(startup::TELEMETRY, began.elapsed());
    let (outcome, deadline) = match serve(&settings, &startup).await {
        Ok((result, deadline)) => (result, Some(deadline)),
        Err(failure) => (Err(failure), None),
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Startup(error)) => {
            tracing::error!(%error, "startup failed");
            ExitCode::from(bootstrap::EXIT_STARTUP as u8)
        }
        Err(Failure::Other(error)) => {
            let error = bootstrap::config::redact(&format!("{error:#}"));
            tracing::error!(%error, "service failed");
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

/// The management server, first: /livez and /startupz answer during the whole startup.
fn start_management(
    settings: &Settings,
    startup: &Startup,
    health: &health::Health,
) -> Result<shutdown::Management, Failure> {
    let began = Instant::now();
    let server = servers::management_server(settings, health)?;
    let management = shutdown::Management {
        handle: server.handle(),
        task: tokio::spawn(server),
    };
    startup.record(startup::MANAGEMENT_SERVER, began.elapsed());
    Ok(management)
}

/// Runs until stopped: the outcome, and the shutdown deadline whose remainder the caller's
/// last steps share. An `Err` is a failure before any server ran.
async fn serve(
    settings: &Settings,
    startup: &Startup,
) -> Result<(Result<(), Failure>, ShutdownDeadline), Failure> {
    let terminate = bootstrap::shutdown::listen()
        .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))?;
    let parts = startup::parts(settings)?;
    let lifecycle = Lifecycle::new(parts.health.clone());
    // Two stop signals: background workers stop after the API; the health scheduler and the
    // watchdog keep running until the very end so probes stay truthful.
    let stop_workers = CancellationToken::new();
    let stop_health = CancellationToken::new();
    let _watchdog = parts.health.spawn_watchdog(stop_health.clone());
    // Detached: it only logs, and ends with the runtime.
    tokio::spawn(bootstrap::telemetry::report_client_protocol_errors(
        std::time::Duration::from_secs(60),
    ));

    let management = start_management(settings, startup, &parts.health)?;

    // The remaining phases race the termination signal: SIGTERM during startup stops at once.
    let started = tokio::select! {
        _ = terminate.cancelled() => None,
        result = startup::start(settings, startup, &parts, &stop_workers, &stop_health) => Some(result?),
    };
    let Some(running) = started else {
        tracing::info!("terminated during startup");
        stop_workers.cancel();
        stop_health.cancel();
        let deadline = ShutdownDeadline::after(settings.shutdown.timeout);
        let broker = parts.messaging.close(); // @rabbitmq
        deadline.step("broker connection", broker).await; // @rabbitmq
        management.stop(&deadline).await;
        return Ok((Ok(()), deadline));
    };
    let mut serving = shutdown::Serving::start(running);
    lifecycle.ready();
    tracing::info!(
        ready_after_ms = startup.elapsed().as_millis() as u64,
        "service ready"
    );
    let result = serving.until_stopped(&terminate).await;
    let shutdown = shutdown::Shutdown {
        settings: &settings.shutdown,
        lifecycle: &lifecycle,
        stop_workers: &stop_workers,
        stop_health: &stop_health,
    };
    let deadline = shutdown.run(serving, parts, management).await;
    Ok((result, deadline))
}
