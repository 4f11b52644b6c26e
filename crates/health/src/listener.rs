//! Following a check's status from code: pause work while a dependency is known to be down.

use crate::Status;
use tokio::sync::watch;

/// Follows the status of one check; made by [`crate::Health::listen`].
///
/// The status is the check's own after thresholds, critical or not; a stale result (its
/// scheduler task stopped) reads as a failure, as readiness counts it. E.g. a background worker
/// pauses while `postgres` fails, rather than hammering a database that is away.
///
/// ```
/// use health::{Check, CheckFailure, CheckPolicy, Health, Observation, Status};
///
/// struct Down;
/// #[async_trait::async_trait]
/// impl Check for Down {
///     async fn run(&self) -> Result<Observation, CheckFailure> { Err(CheckFailure::new("refused")) }
/// }
///
/// let health = Health::builder("demo", "1.0.0")
///     .check("cache", CheckPolicy::default(), Down)
///     .build()?;
/// let listener = health.listen("cache").expect("a registered check");
/// assert_eq!(listener.status(), Status::Fail); // not checked yet
/// assert!(health.listen("nothing").is_none());
/// # Ok::<(), health::HealthError>(())
/// ```
#[derive(Debug, Clone)]
pub struct StatusListener(pub(crate) watch::Receiver<Status>);

impl StatusListener {
    /// The status now.
    pub fn status(&self) -> Status {
        *self.0.borrow()
    }

    /// Waits until the status satisfies `wanted` (at once when it already does) and returns
    /// it. Waits forever if the [`crate::Health`] it came from is gone.
    pub async fn wait_until(&mut self, wanted: impl Fn(Status) -> bool) -> Status {
        // Copied out at once: the borrow must not be held across the await below.
        if let Ok(status) = self.0.wait_for(|status| wanted(*status)).await.map(|s| *s) {
            return status;
        }
        std::future::pending().await
    }

    /// Waits until the check no longer fails.
    pub async fn until_not_failing(&mut self) -> Status {
        self.wait_until(|status| status != Status::Fail).await
    }
}
