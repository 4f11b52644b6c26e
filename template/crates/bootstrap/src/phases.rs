//! Ordered startup: named phases, each timed and logged, retried until a shared deadline.

use crate::Backoff;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The startup phases, in the order the service runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupPhase {
    /// Settings loaded and validated.
    Config,
    /// Logs and traces installed.
    Telemetry,
    /// `/livez` and `/startupz` answering.
    ManagementServer,
    /// First PostgreSQL connection of the request pool.
    PostgresPool,
    /// Schema migrations applied.
    Migrations,
    /// Broker connection and topology.
    RabbitMq,
    /// Relay, consumers, health scheduler.
    BackgroundWorkers,
    /// The service's own warm-up hook.
    WarmUp,
    /// The API port bound.
    ApiServer,
}

impl StartupPhase {
    /// Name used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            StartupPhase::Config => "config",
            StartupPhase::Telemetry => "telemetry",
            StartupPhase::ManagementServer => "management server",
            StartupPhase::PostgresPool => "postgres pool",
            StartupPhase::Migrations => "migrations",
            StartupPhase::RabbitMq => "rabbitmq",
            StartupPhase::BackgroundWorkers => "background workers",
            StartupPhase::WarmUp => "warm-up",
            StartupPhase::ApiServer => "api server",
        }
    }

    /// The dependency a phase waits on, named when the deadline passes.
    pub const fn dependency(self) -> Option<&'static str> {
        match self {
            StartupPhase::PostgresPool | StartupPhase::Migrations => Some("postgres"),
            StartupPhase::RabbitMq => Some("rabbitmq"),
            _ => None,
        }
    }
}

impl Display for StartupPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A required phase did not finish before the startup deadline.
#[derive(Debug, thiserror::Error)]
#[error("startup deadline of {} exceeded in phase \"{phase}\"{} after {attempts} attempt(s): {last_error}", humantime::format_duration(*deadline), dependency.map(|d| format!(" waiting for {d}")).unwrap_or_default())]
pub struct StartupError {
    /// The phase that did not finish.
    pub phase: StartupPhase,
    /// The dependency it waited on.
    pub dependency: Option<&'static str>,
    /// The deadline that passed.
    pub deadline: Duration,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, redacted.
    pub last_error: String,
}

/// Runs the phases of one startup against one deadline.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use bootstrap::{Startup, StartupPhase};
/// use std::time::Duration;
///
/// let startup = Startup::new(Duration::from_secs(5));
/// let mut tries = 0;
/// let value = startup
///     .run(StartupPhase::WarmUp, || {
///         tries += 1;
///         let ready = tries >= 2;
///         async move { if ready { Ok(42) } else { Err(anyhow::anyhow!("cache not ready")) } }
///     })
///     .await
///     .unwrap();
/// assert_eq!((value, tries), (42, 2));
/// # }
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

    /// Runs `attempt` until it succeeds, backing off between failures, each attempt bounded by
    /// the time left; fails when the deadline passes.
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
            let remaining = self.remaining();
            match tokio::time::timeout(remaining, attempt()).await {
                Ok(Ok(value)) => {
                    tracing::info!(
                        phase = phase.as_str(),
                        duration_ms = began.elapsed().as_millis() as u64,
                        attempts,
                        "startup phase done"
                    );
                    return Ok(value);
                }
                Ok(Err(error)) => {
                    // The whole chain: "creating a connection: TLS handshake: unknown issuer".
                    last_error = crate::config::redact(&causes(&error.into()));
                    tracing::warn!(phase = phase.as_str(), attempt = attempts, error = %last_error, "startup phase failed, retrying");
                }
                Err(_) => {
                    last_error = format!("{last_error} (last attempt cut off by the deadline)")
                }
            }
            let delay = backoff.next_delay().min(self.remaining());
            if delay.is_zero() {
                return Err(StartupError {
                    phase,
                    dependency: phase.dependency(),
                    deadline: self.deadline,
                    attempts,
                    last_error,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Logs a phase that cannot fail (config, telemetry) with its duration.
    pub fn record(&self, phase: StartupPhase, took: Duration) {
        tracing::info!(
            phase = phase.as_str(),
            duration_ms = took.as_millis() as u64,
            attempts = 1,
            "startup phase done"
        );
    }
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
