//! The `Check` trait: one async probe of one dependency.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

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

    /// An observation with only a text.
    pub(crate) fn text(output: impl Into<String>) -> Self {
        Self {
            output: Some(output.into()),
            ..Self::default()
        }
    }
}

/// Why a check failed. Shown in the verbose probe body and in logs: never put credentials in it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CheckFailure(pub String);

impl CheckFailure {
    /// Wraps any displayable error.
    pub fn new(reason: impl std::fmt::Display) -> Self {
        Self(reason.to_string())
    }
}

/// An async probe of one dependency, run by the scheduler (never by a probe handler). Do the
/// cheapest real round trip that proves the dependency works (e.g. `SELECT 1`), on a connection
/// of its own, never one from the request pool.
///
/// ```
/// use health::{Check, CheckFailure, Observation};
///
/// struct DiskSpace;
/// #[async_trait::async_trait]
/// impl Check for DiskSpace {
///     async fn run(&self) -> Result<Observation, CheckFailure> { Ok(Observation::default()) }
/// }
/// ```
#[async_trait]
pub trait Check: Send + Sync + 'static {
    /// The measurement name after the colon in the health+json key (`postgres:connectivity`).
    fn measurement(&self) -> &'static str {
        "connectivity"
    }

    /// The alarm that runs this check at once when its connection sees a failure between runs.
    /// `None`: the handle makes one, which [`Health::alarm`](crate::Health::alarm) hands out.
    fn alarm(&self) -> Option<Alarm> {
        None
    }

    /// Runs the probe once.
    async fn run(&self) -> Result<Observation, CheckFailure>;
}

/// A signal that a dependency may have just failed (a driver's connection ended, a client library
/// reported its link down): the check runs at once and, until the failure is confirmed or cleared,
/// every [`CheckPolicy::recheck_after`](crate::CheckPolicy::recheck_after); ignored while the
/// check is failing (docs/health.md, the event path). An alarm belongs to one check: share it
/// among whatever can see that dependency fail, not among checks.
///
/// ```
/// use health::{Alarm, Check, CheckFailure, CheckPolicy, Health, Observation};
///
/// struct Cache(Alarm);
/// #[async_trait::async_trait]
/// impl Check for Cache {
///     fn alarm(&self) -> Option<Alarm> { Some(self.0.clone()) }
///     async fn run(&self) -> Result<Observation, CheckFailure> { Ok(Observation::default()) }
/// }
///
/// // Whatever sees the cache's connection die holds a clone and raises it.
/// let on_disconnect = Alarm::default();
/// let health = Health::builder("demo", "1.0.0")
///     .check("cache", CheckPolicy::default(), Cache(on_disconnect.clone()))
///     .build()?;
/// on_disconnect.raise(); // the check's scheduler task runs it now
/// # Ok::<(), health::HealthError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Alarm(Arc<Notify>);

impl Alarm {
    /// Asks for a run of the check now (one pending request at most); never waits.
    pub fn raise(&self) {
        self.0.notify_one();
    }

    /// Resolves once the alarm has been raised (at once if it was raised since the last time).
    pub(crate) async fn raised(&self) {
        self.0.notified().await;
    }
}
