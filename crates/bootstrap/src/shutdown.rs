//! Termination signals.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code when a second signal cuts the graceful shutdown short (128 + SIGINT, by convention).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Listens for SIGTERM and SIGINT: the first cancels the returned token (the service drains), a
/// second exits at once, for an operator who does not want to wait.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let terminate = bootstrap::shutdown::listen()?;
/// terminate.cancelled().await;
/// # Ok(()) }
/// ```
pub fn listen() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let first = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "termination signal: draining");
        first.cancel();
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second termination signal: exiting at once");
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(token)
}

/// The budget (`shutdown.timeout`) shared by every step after the drain delay: stopping the API,
/// the workers, dependency connections, the trace flush. Each step gets only what is left, so the
/// total stays within the budget the chart's `terminationGracePeriodSeconds` is derived from.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use bootstrap::shutdown::ShutdownDeadline;
/// use std::time::Duration;
///
/// let deadline = ShutdownDeadline::after(Duration::from_millis(50));
/// assert_eq!(deadline.step("quick", async { 1 }).await, Some(1));
/// // A step that would outlive the budget is cut short.
/// assert_eq!(deadline.step("stuck", std::future::pending::<()>()).await, None);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ShutdownDeadline(tokio::time::Instant);

impl ShutdownDeadline {
    /// A deadline `budget` from now.
    pub fn after(budget: std::time::Duration) -> Self {
        Self(tokio::time::Instant::now() + budget)
    }

    /// Runs `work` until it finishes or the deadline passes; `None`, logged by step name, when cut
    /// short. Work already finished completes even after the deadline.
    pub async fn step<T>(&self, name: &'static str, work: impl Future<Output = T>) -> Option<T> {
        let output = tokio::time::timeout_at(self.0, work).await.ok();
        if output.is_none() {
            tracing::warn!(
                step = name,
                "shutdown step cut short: the shutdown timeout is spent"
            );
        }
        output
    }
}
