//! How often a check runs and how its results turn into a status.

use std::time::Duration;

/// Tuning of one check.
///
/// A failing dependency is reported after `failure_threshold` consecutive failures, so
/// detection takes at most `failure_threshold x interval + timeout`; a recovered one after
/// `success_threshold` consecutive successes. Thresholds above 1 keep a single lost packet from
/// pulling a pod out of its Service.
///
/// ```
/// use health::CheckPolicy;
/// use std::time::Duration;
///
/// let policy = CheckPolicy::default().with_interval(Duration::from_secs(1));
/// assert_eq!(policy.stale_after(), Duration::from_secs(3));
/// assert!(policy.detection_bound() <= Duration::from_secs(4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPolicy {
    /// Time between the starts of two runs.
    pub interval: Duration,
    /// A run that takes longer counts as failed.
    pub timeout: Duration,
    /// Consecutive failures before the check reports failure.
    pub failure_threshold: u32,
    /// Consecutive successes before a failed check reports success again.
    pub success_threshold: u32,
    /// Critical checks fail readiness; the others turn the status to `warn`.
    pub critical: bool,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            failure_threshold: 2,
            success_threshold: 1,
            critical: true,
        }
    }
}

impl CheckPolicy {
    /// Sets the interval.
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets criticality.
    #[must_use]
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// A result older than this counts as failed: a stuck scheduler must not look healthy.
    pub fn stale_after(&self) -> Duration {
        self.interval.saturating_mul(3)
    }

    /// Worst-case time from a dependency dying to this check reporting it.
    pub fn detection_bound(&self) -> Duration {
        self.interval
            .saturating_mul(self.failure_threshold.max(1))
            .saturating_add(self.timeout)
    }
}
