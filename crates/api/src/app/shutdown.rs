//! The graceful shutdown: not ready at once, keep serving through the drain delay, then stop
//! the API, the background work and the pools under one deadline, probes last.

use super::Failure;
use super::servers::stop_server;
use super::startup::{Parts, Running};
use actix_web::dev::ServerHandle;
use bootstrap::Lifecycle;
use bootstrap::config::ShutdownSettings;
use bootstrap::shutdown::ShutdownDeadline;
use health::CancellationToken;
use tokio::task::{JoinHandle, JoinSet};

/// Kept from the shutdown budget for the last steps (the health scheduler, the management
/// server), which take milliseconds once nothing else runs.
pub(super) const LAST_STEPS: std::time::Duration = std::time::Duration::from_secs(1);

/// The management server, stopped last so the probes answer until the end.
pub(super) struct Management {
    pub(super) handle: ServerHandle,
    pub(super) task: JoinHandle<std::io::Result<()>>,
}

impl Management {
    pub(super) async fn stop(self, deadline: &ShutdownDeadline) {
        deadline
            .step("management server", stop_server(self.handle, self.task))
            .await;
    }
}

/// The service while it serves: what startup produced, with the API running.
pub(super) struct Serving {
    workers: JoinSet<()>,
    scheduler: JoinSet<()>,
    api_handle: ServerHandle,
    /// `None` once the server ended on its own: a finished handle must not be awaited again.
    api_task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Serving {
    pub(super) fn start(running: Running) -> Serving {
        let Running {
            workers,
            scheduler,
            api,
        } = running;
        Serving {
            workers,
            scheduler,
            api_handle: api.handle(),
            api_task: Some(tokio::spawn(api)),
        }
    }

    /// Waits for a termination signal; fails early if the API server or a background worker stops
    /// on its own (a panic), so the process exits 1 and Kubernetes restarts it.
    pub(super) async fn until_stopped(
        &mut self,
        terminate: &CancellationToken,
    ) -> Result<(), Failure> {
        let Some(task) = self.api_task.as_mut() else {
            return Ok(());
        };
        tokio::select! {
            _ = terminate.cancelled() => Ok(()),
            ended = task => {
                self.api_task = None;
                Err(anyhow::anyhow!("the API server stopped on its own: {ended:?}").into())
            }
            Some(ended) = self.workers.join_next() => {
                Err(anyhow::anyhow!("a background worker stopped on its own: {ended:?}").into())
            }
        }
    }
}

/// The steps after the termination signal; [`Shutdown::run`] returns the deadline whose
/// remainder the trace flush gets.
pub(super) struct Shutdown<'a> {
    pub(super) settings: &'a ShutdownSettings,
    pub(super) lifecycle: &'a Lifecycle,
    pub(super) stop_workers: &'a CancellationToken,
    pub(super) stop_health: &'a CancellationToken,
}

impl Shutdown<'_> {
    pub(super) async fn run(
        self,
        serving: Serving,
        parts: Parts,
        management: Management,
    ) -> ShutdownDeadline {
        let Serving {
            mut workers,
            scheduler,
            api_handle,
            api_task,
        } = serving;
        // Draining: not ready from this instant, still serving while endpoints are removed.
        self.lifecycle.draining();
        tokio::time::sleep(self.settings.drain_delay).await;
        tracing::info!("drain delay over: closing the API listener, finishing in-flight requests");
        // From here every step shares one budget: the chart's grace period is drain + this.
        let deadline = ShutdownDeadline::after(self.settings.timeout);
        // The API and the background work stop side by side, so a slow request cannot leave
        // the background work no time; both end before the last steps' reserve.
        let side_by_side =
            ShutdownDeadline::after(self.settings.timeout.saturating_sub(LAST_STEPS));
        let api = async {
            if let Some(task) = api_task {
                side_by_side
                    .step("api server", stop_server(api_handle, task))
                    .await;
            }
        };
        self.stop_workers.cancel();
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
        self.lifecycle.stopped();
        self.stop_health.cancel();
        deadline
            .step("health scheduler", scheduler.join_all())
            .await;
        management.stop(&deadline).await;
        tracing::info!("stopped");
        deadline
    }
}
