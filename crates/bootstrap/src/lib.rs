#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backoff;
pub mod broker; // @rabbitmq
pub mod config;
pub mod lifecycle;
pub mod limits;
pub mod phases;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use backoff::Backoff;
pub use config::{ConfigError, SecretUrl};
pub use lifecycle::Lifecycle;
pub use phases::{Startup, StartupError, StartupPhase};
pub use telemetry::Telemetry;

/// Exit code for a configuration error (before any port is bound).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code when startup could not finish before its deadline.
pub const EXIT_STARTUP: i32 = 1;
