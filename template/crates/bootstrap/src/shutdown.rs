//! Termination signals.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code when a second signal cuts the graceful shutdown short (128 + SIGINT, by convention).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Listens for SIGTERM and SIGINT.
///
/// The first signal cancels the returned token: the service starts draining. A second signal
/// exits the process at once, for the operator who does not want to wait.
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
