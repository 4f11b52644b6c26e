//! Wiring: the startup phases in order ([`startup`]), the two servers ([`servers`]), and the
//! graceful shutdown ([`shutdown`]).

pub mod migrate;
mod servers;
mod shutdown;
mod startup;

use crate::settings::Settings;
use anyhow::Context;
use bootstrap::shutdown::ShutdownDeadline;
use bootstrap::{Startup, Telemetry};
use shutdown::RunningServer;
use std::process::ExitCode;
use std::time::Instant;

/// Runs the service until it is told to stop; returns the process exit code.
pub async fn run(settings: Settings) -> ExitCode {
    let began = Instant::now();
    let telemetry = match Telemetry::init(&settings.service.name) {
        Ok(telemetry) => telemetry,
        Err(error) => return crate::config_error(error),
    };
    let startup = Startup::new(settings.startup.deadline);
    startup.record(startup::TELEMETRY, began.elapsed());
    // The trace flush is the last step under the shutdown deadline (or its own budget when the
    // service never got to draining).
    let (outcome, deadline) = serve(&settings, &startup).await.unwrap_or_else(|error| {
        let own_budget = ShutdownDeadline::after(settings.shutdown.timeout);
        (Err(error), own_budget)
    });
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<bootstrap::StartupError>() => {
            tracing::error!(%error, "startup failed");
            ExitCode::from(bootstrap::EXIT_STARTUP as u8)
        }
        Err(error) => {
            let error = bootstrap::config::redact(&format!("{error:#}"));
            tracing::error!(%error, "service failed");
            ExitCode::FAILURE
        }
    };
    let flush = tokio::task::spawn_blocking(move || telemetry.shutdown());
    deadline.step("trace flush", flush).await;
    code
}

/// Runs until stopped: the outcome, and the shutdown deadline whose remainder the caller's
/// last steps share. An `Err` is a failure before any server ran.
async fn serve(
    settings: &Settings,
    startup: &Startup,
) -> anyhow::Result<(anyhow::Result<()>, ShutdownDeadline)> {
    let terminate = bootstrap::shutdown::listen().context("installing signal handlers")?;
    let parts = startup::parts(settings)?;
    let _watchdog = parts.health.spawn_watchdog(parts.stop_health.clone());
    // Detached: it only logs, and ends with the runtime.
    let every = std::time::Duration::from_secs(60);
    tokio::spawn(bootstrap::telemetry::report_client_protocol_errors(every));

    // The management server, first: /livez and /startupz answer during the whole startup;
    // stopped last, so the probes answer until the end.
    let began = Instant::now();
    let management = RunningServer::spawn(servers::management_server(settings, &parts.health)?);
    startup.record(startup::MANAGEMENT_SERVER, began.elapsed());

    // The remaining phases race the termination signal: SIGTERM during startup stops at once.
    let started = tokio::select! {
        _ = terminate.cancelled() => None,
        result = startup::start(settings, startup, &parts) => Some(result?),
    };
    let Some(mut serving) = started else {
        tracing::info!("terminated during startup");
        parts.stop_workers.cancel();
        parts.stop_health.cancel();
        let deadline = ShutdownDeadline::after(settings.shutdown.timeout);
        let broker = parts.messaging.close(); // @rabbitmq
        deadline.step("broker connection", broker).await; // @rabbitmq
        management.stop("management server", &deadline).await;
        return Ok((Ok(()), deadline));
    };
    parts.lifecycle.ready();
    tracing::info!(
        ready_after_ms = startup.elapsed().as_millis() as u64,
        "service ready"
    );
    let result = serving.until_stopped(&terminate).await;
    let deadline = shutdown::run(&settings.shutdown, serving, parts, management).await;
    Ok((result, deadline))
}
