//! The graceful shutdown: not ready at once, keep serving through the drain delay, then stop
//! the API, the background work and the pools under one deadline, probes last.

use super::startup::Parts;
use actix_web::dev::{Server, ServerHandle};
use bootstrap::config::ShutdownSettings;
use bootstrap::shutdown::ShutdownDeadline;
use health::CancellationToken;
use tokio::task::{JoinHandle, JoinSet};

/// Kept from the shutdown budget for the last steps (the health scheduler, the management
/// server), which take milliseconds once nothing else runs.
pub(super) const LAST_STEPS: std::time::Duration = std::time::Duration::from_secs(1);

/// A server on a task of its own.
pub(super) struct RunningServer {
    handle: ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    pub(super) fn spawn(server: Server) -> Self {
        let handle = server.handle();
        let task = tokio::spawn(server);
        Self { handle, task }
    }

    /// A graceful stop (in-flight requests get the server's shutdown timeout), as a step of
    /// `deadline`.
    pub(super) async fn stop(self, step: &'static str, deadline: &ShutdownDeadline) {
        let stopping = async {
            self.handle.stop(true).await;
            let _ = self.task.await;
        };
        deadline.step(step, stopping).await;
    }
}

/// The service while it serves: what startup produced, with the API running.
pub(super) struct Serving {
    /// Every background task.
    workers: JoinSet<()>,
    /// One task per check; stopped last.
    scheduler: JoinSet<()>,
    /// `None` once the server ended on its own: a finished task must not be awaited again.
    api: Option<RunningServer>,
}

impl Serving {
    pub(super) fn start(workers: JoinSet<()>, scheduler: JoinSet<()>, api: Server) -> Serving {
        Serving {
            workers,
            scheduler,
            api: Some(RunningServer::spawn(api)),
        }
    }

    /// Waits for a termination signal; fails early if the API server or a background worker stops
    /// on its own (a panic), so the process exits 1 and Kubernetes restarts it.
    pub(super) async fn until_stopped(
        &mut self,
        terminate: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(api) = self.api.as_mut() else {
            return Ok(());
        };
        tokio::select! {
            _ = terminate.cancelled() => Ok(()),
            ended = &mut api.task => {
                self.api = None;
                Err(anyhow::anyhow!("the API server stopped on its own: {ended:?}"))
            }
            Some(ended) = self.workers.join_next() => {
                Err(anyhow::anyhow!("a background worker stopped on its own: {ended:?}"))
            }
        }
    }
}

/// The steps after the termination signal; returns the deadline whose remainder the trace flush
/// gets.
pub(super) async fn run(
    settings: &ShutdownSettings,
    serving: Serving,
    parts: Parts,
    management: RunningServer,
) -> ShutdownDeadline {
    let Serving {
        mut workers,
        scheduler,
        api,
    } = serving;
    // Draining: not ready from this instant, still serving while endpoints are removed.
    parts.lifecycle.draining();
    tokio::time::sleep(settings.drain_delay).await;
    tracing::info!("drain delay over: closing the API listener, finishing in-flight requests");
    // From here every step shares one budget: the chart's grace period is drain + this.
    let deadline = ShutdownDeadline::after(settings.timeout);
    // The API and the background work stop side by side, so a slow request cannot leave
    // the background work no time; both end before the last steps' reserve.
    let side_by_side = ShutdownDeadline::after(settings.timeout.saturating_sub(LAST_STEPS));
    let api = async {
        if let Some(api) = api {
            api.stop("api server", &side_by_side).await;
        }
    };
    parts.stop_workers.cancel();
    let background = async {
        side_by_side
            .step("background workers", async {
                while workers.join_next().await.is_some() {}
            })
            .await;
        let broker = parts.messaging.close(); // @rabbitmq
        side_by_side.step("broker connection", broker).await; // @rabbitmq
    };
    tokio::join!(api, background);
    parts.background_pool.close();
    parts.request_pool.close();
    parts.lifecycle.stopped();
    parts.stop_health.cancel();
    deadline
        .step("health scheduler", scheduler.join_all())
        .await;
    management.stop("management server", &deadline).await;
    tracing::info!("stopped");
    deadline
}
