//! Ordered startup: named phases, each timed and logged, retried until a shared deadline.

use crate::Backoff;
use std::fmt::Display;
use std::time::Duration;
use tokio::time::Instant;

/// One step of a service's startup: its name in logs and the dependency it waits for. A service
/// declares its phases and runs them in order through [`Startup`].
///
/// ```
/// use bootstrap::StartupPhase;
/// const MIGRATIONS: StartupPhase = StartupPhase::new("migrations").waiting_for("postgres");
/// assert_eq!(MIGRATIONS.to_string(), "migrations");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupPhase {
    name: &'static str,
    dependency: Option<&'static str>,
}

impl StartupPhase {
    /// A phase called `name`, waiting on no dependency.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            dependency: None,
        }
    }

    /// The same phase, waiting for `dependency` (as the health check names it).
    #[must_use]
    pub const fn waiting_for(mut self, dependency: &'static str) -> Self {
        self.dependency = Some(dependency);
        self
    }
}

impl Display for StartupPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A required phase did not finish before the startup deadline; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(String);

/// Runs the phases of one startup against one deadline.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
/// use bootstrap::{Startup, StartupPhase};
/// let startup = Startup::new(std::time::Duration::from_secs(5));
/// let mut tries = 0;
/// let value = startup
///     .run(StartupPhase::new("warm-up"), || {
///         tries += 1;
///         let ready = tries >= 2;
///         async move { if ready { Ok(42) } else { Err(anyhow::anyhow!("cache not ready")) } }
///     })
///     .await?;
/// assert_eq!((value, tries), (42, 2));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Startup {
    began: Instant,
    deadline: Duration,
}

impl Startup {
    /// A startup that must finish within `deadline`.
    pub fn new(deadline: Duration) -> Self {
        Self {
            began: Instant::now(),
            deadline,
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_sub(self.began.elapsed())
    }

    /// Time since startup began.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }

    /// Runs `attempt` until it succeeds, each bounded by the time left, retried after 100 ms
    /// doubling (with jitter) to 5 s.
    pub async fn run<T, E, F, Fut>(
        &self,
        phase: StartupPhase,
        mut attempt: F,
    ) -> Result<T, StartupError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<anyhow::Error>,
    {
        let began = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempts = 0;
        let mut last_error = String::from("no attempt finished");
        loop {
            attempts += 1;
            match tokio::time::timeout(self.remaining(), attempt()).await {
                Ok(Ok(value)) => {
                    done(phase, began.elapsed(), attempts);
                    return Ok(value);
                }
                Ok(Err(error)) => {
                    // The whole chain: "creating a connection: TLS handshake: unknown issuer".
                    last_error = crate::config::redact(&causes(&error.into()));
                    tracing::warn!(phase = %phase, attempt = attempts, error = %last_error, "startup phase failed, retrying");
                }
                Err(_) => {
                    last_error = format!("{last_error} (last attempt cut off by the deadline)")
                }
            }
            let delay = backoff.next_delay().min(self.remaining());
            if delay.is_zero() {
                let waiting = phase.dependency.map(|d| format!(" waiting for {d}"));
                return Err(StartupError(format!(
                    "startup deadline of {} exceeded in phase \"{phase}\"{} after {attempts} attempt(s): {last_error}",
                    humantime::format_duration(self.deadline),
                    waiting.unwrap_or_default()
                )));
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Logs a phase that cannot fail (config, telemetry) with its duration.
    pub fn record(&self, phase: StartupPhase, took: Duration) {
        done(phase, took, 1);
    }
}

fn done(phase: StartupPhase, took: Duration, attempts: u32) {
    let duration_ms = took.as_millis() as u64;
    tracing::info!(phase = %phase, duration_ms, attempts, "startup phase done");
}

/// An error and its causes, each said once: drivers often repeat their cause in their text.
fn causes(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
