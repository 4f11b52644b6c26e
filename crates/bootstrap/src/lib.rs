//! Everything a service does before and after it handles requests.
//!
//! - [`config`]: layered settings, validated at start, secrets redacted.
//! - [`telemetry`]: JSON logs, optional OTLP traces.
//! - [`phases`]: ordered startup phases with backoff and one deadline.
//! - [`lifecycle`]: `starting -> ready -> draining -> stopped`, as the probes report it.
//! - [`shutdown`]: SIGTERM/SIGINT handling.
//! - [`broker`]: the RabbitMQ connection supervisor.
//! - [`web`]: request telemetry for the API server.

mod backoff;
pub mod broker;
pub mod config;
pub mod lifecycle;
pub mod limits;
pub mod phases;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use backoff::Backoff;
pub use config::{ConfigError, SecretUrl, Settings};
pub use lifecycle::Lifecycle;
pub use phases::{Startup, StartupError, StartupPhase};
pub use telemetry::Telemetry;

/// Exit code for a configuration error (before any port is bound).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code when startup could not finish before its deadline.
pub const EXIT_STARTUP: i32 = 1;
