//! The `Check` trait: one async probe of one dependency.

use async_trait::async_trait;
use std::time::Duration;

/// What a successful check observed.
///
/// ```
/// use health::Observation;
/// let seen = Observation::latency(std::time::Duration::from_millis(3));
/// assert_eq!(seen.observed_unit, Some("ms"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// A number worth showing next to the status (latency, lag, ...).
    pub observed_value: Option<f64>,
    /// Its unit (`ms`, `s`, ...).
    pub observed_unit: Option<&'static str>,
    /// Free text for humans; keep it short and free of secrets.
    pub output: Option<String>,
}

impl Observation {
    /// An observation that reports a round-trip time in milliseconds.
    pub fn latency(elapsed: Duration) -> Self {
        Self {
            observed_value: Some(elapsed.as_secs_f64() * 1000.0),
            observed_unit: Some("ms"),
            output: None,
        }
    }
}

/// Why a check failed. The message ends up in `output` of the verbose probe body and in logs,
/// so it must never contain credentials.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CheckFailure(pub String);

impl CheckFailure {
    /// Wraps any displayable error.
    pub fn new(reason: impl std::fmt::Display) -> Self {
        Self(reason.to_string())
    }
}

/// An async probe of one dependency.
///
/// The scheduler runs it on its own interval and under its own timeout; probe handlers never
/// call it. An implementation should do the cheapest real round trip that proves the
/// dependency can do its job (e.g. `SELECT 1`), and must not borrow capacity from the request
/// path (its own connection, not one from the request pool).
///
/// ```
/// use health::{Check, CheckFailure, Observation};
///
/// struct DiskSpace;
///
/// #[async_trait::async_trait]
/// impl Check for DiskSpace {
///     async fn run(&self) -> Result<Observation, CheckFailure> {
///         Ok(Observation::default())
///     }
/// }
/// ```
#[async_trait]
pub trait Check: Send + Sync + 'static {
    /// The measurement name after the colon in the health+json key (`postgres:connectivity`).
    fn measurement(&self) -> &'static str {
        "connectivity"
    }

    /// Runs the probe once.
    async fn run(&self) -> Result<Observation, CheckFailure>;
}
