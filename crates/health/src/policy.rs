//! How often a check runs and how its results turn into a status.

use std::num::NonZeroU32;
use std::time::Duration;

/// Tuning of one check, valid by construction: [`CheckPolicy::builder`] refuses a zero interval,
/// a timeout longer than the interval, or a zero threshold. Thresholds above 1 keep a single lost
/// packet from pulling a pod out of its Service.
///
/// ```
/// use health::CheckPolicy;
/// use std::time::Duration;
///
/// let policy = CheckPolicy::builder().interval(Duration::from_secs(1)).build()?;
/// assert_eq!(policy.stale_after(), Duration::from_secs(3));
/// let refused = CheckPolicy::builder().interval(Duration::from_secs(1)).timeout(Duration::from_secs(2)).build();
/// assert!(refused.is_err());
/// # Ok::<(), health::PolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPolicy {
    interval: Duration,
    timeout: Duration,
    failure_threshold: NonZeroU32,
    success_threshold: NonZeroU32,
    critical: bool,
}

/// Why a [`CheckPolicy`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The interval or the timeout is zero.
    #[error("the check interval and timeout must be above zero")]
    Zero,
    /// The timeout is longer than the interval: runs would overlap.
    #[error("the check timeout ({timeout:?}) must not exceed its interval ({interval:?})")]
    TimeoutAboveInterval {
        /// The interval asked for.
        interval: Duration,
        /// The timeout asked for.
        timeout: Duration,
    },
    /// A threshold of zero would report a status before any run.
    #[error("check thresholds must be at least 1")]
    ZeroThreshold,
}

impl Default for CheckPolicy {
    /// Every 2 s, 1 s timeout, failing after 2 failures, passing after 1 success, critical.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            failure_threshold: NonZeroU32::MIN.saturating_add(1),
            success_threshold: NonZeroU32::MIN,
            critical: true,
        }
    }
}

impl CheckPolicy {
    /// A builder starting from [`CheckPolicy::default`].
    pub fn builder() -> CheckPolicyBuilder {
        CheckPolicyBuilder {
            policy: CheckPolicy::default(),
            failure_threshold: 2,
            success_threshold: 1,
        }
    }

    /// The same policy, critical or not (criticality has no invariant to keep).
    #[must_use]
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// Time between the starts of two runs.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A run that takes longer counts as failed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Consecutive failures before the check reports failure.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.get()
    }

    /// Consecutive successes before a failed check reports success again.
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.get()
    }

    /// Critical checks fail readiness; the others turn the status to `warn`.
    pub fn is_critical(&self) -> bool {
        self.critical
    }

    /// A result older than this counts as failed: a stuck scheduler must not look healthy.
    pub fn stale_after(&self) -> Duration {
        self.interval.saturating_mul(3)
    }

    /// After an [`Alarm`](crate::Alarm), the spacing (interval / 8) of the runs that confirm or
    /// clear the failure; thresholds still count runs (docs/health.md, the event path).
    pub fn recheck_after(&self) -> Duration {
        self.interval / 8
    }
}

/// Builds a [`CheckPolicy`]; [`CheckPolicyBuilder::build`] checks the invariants.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct CheckPolicyBuilder {
    policy: CheckPolicy,
    failure_threshold: u32,
    success_threshold: u32,
}

impl CheckPolicyBuilder {
    /// Time between the starts of two runs (2 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.policy.interval = interval;
        self
    }

    /// Bound on one run, at most the interval (1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.policy.timeout = timeout;
        self
    }

    /// Consecutive failures before the check fails (2).
    pub fn failure_threshold(mut self, runs: u32) -> Self {
        self.failure_threshold = runs;
        self
    }

    /// Consecutive successes before a failed check passes again (1).
    pub fn success_threshold(mut self, runs: u32) -> Self {
        self.success_threshold = runs;
        self
    }

    /// Whether a failure makes the pod unready (true).
    pub fn critical(mut self, critical: bool) -> Self {
        self.policy.critical = critical;
        self
    }

    /// The policy, or why it cannot exist.
    pub fn build(self) -> Result<CheckPolicy, PolicyError> {
        let (interval, timeout) = (self.policy.interval, self.policy.timeout);
        if interval.is_zero() || timeout.is_zero() {
            return Err(PolicyError::Zero);
        }
        if timeout > interval {
            return Err(PolicyError::TimeoutAboveInterval { interval, timeout });
        }
        let threshold = |runs| NonZeroU32::new(runs).ok_or(PolicyError::ZeroThreshold);
        Ok(CheckPolicy {
            failure_threshold: threshold(self.failure_threshold)?,
            success_threshold: threshold(self.success_threshold)?,
            ..self.policy
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_policies_cannot_be_built() {
        let second = Duration::from_secs(1);
        assert_eq!(
            CheckPolicy::builder().interval(Duration::ZERO).build(),
            Err(PolicyError::Zero)
        );
        assert!(matches!(
            CheckPolicy::builder()
                .interval(second)
                .timeout(2 * second)
                .build(),
            Err(PolicyError::TimeoutAboveInterval { .. })
        ));
        assert_eq!(
            CheckPolicy::builder().failure_threshold(0).build(),
            Err(PolicyError::ZeroThreshold)
        );
        assert_eq!(CheckPolicy::builder().build(), Ok(CheckPolicy::default()));
    }
}
