//! The lifecycle state machine: `starting -> ready -> draining -> stopped`.

use health::{Health, LifecycleState};

/// Drives the lifecycle the probes report. Transitions only go forward; each is logged once.
///
/// ```
/// use bootstrap::Lifecycle;
/// let health = health::Health::builder("demo", "1").build()?;
/// let lifecycle = Lifecycle::new(health.clone());
/// lifecycle.ready();
/// lifecycle.draining();
/// lifecycle.ready(); // ignored: the lifecycle never goes back
/// assert_eq!(health.lifecycle(), health::LifecycleState::Draining);
/// # Ok::<(), health::HealthError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Lifecycle {
    health: Health,
}

impl Lifecycle {
    /// Follows `health`'s lifecycle cell.
    pub fn new(health: Health) -> Self {
        Self { health }
    }

    fn advance(&self, next: LifecycleState) {
        if let Some(previous) = self.health.advance(next) {
            tracing::info!(from = previous.as_str(), to = next.as_str(), "lifecycle");
        }
    }

    /// Startup finished: readiness now follows the checks.
    pub fn ready(&self) {
        self.advance(LifecycleState::Ready);
    }

    /// A termination signal arrived: readiness fails from this moment.
    pub fn draining(&self) {
        self.advance(LifecycleState::Draining);
    }

    /// Servers closed.
    pub fn stopped(&self) {
        self.advance(LifecycleState::Stopped);
    }
}
