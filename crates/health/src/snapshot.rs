//! The cached state of every check, read lock-free by the probe handlers.

use crate::{Alarm, Check, CheckPolicy, Observation, Status};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// The last known state of one check, after thresholds.
#[derive(Debug, Clone)]
pub(crate) struct CheckState {
    /// `Pass` or `Fail` as reported after the failure/success thresholds.
    pub(crate) status: Status,
    /// What the last run saw (latency, error text).
    pub(crate) observation: Observation,
    /// Wall-clock time of the last run, for the `time` field.
    pub(crate) time: SystemTime,
    /// Monotonic time of the last run, for staleness.
    pub(crate) at: Instant,
    pub(crate) has_run: bool,
    pub(crate) consecutive_failures: u32,
    pub(crate) consecutive_successes: u32,
}

impl CheckState {
    fn pending() -> Self {
        Self {
            status: Status::Fail,
            observation: Observation::text("not checked yet"),
            time: SystemTime::now(),
            at: Instant::now(),
            has_run: false,
            consecutive_failures: 0,
            consecutive_successes: 0,
        }
    }

    pub(crate) fn after_run(
        &self,
        policy: &CheckPolicy,
        outcome: Result<Observation, String>,
    ) -> CheckState {
        let (failures, successes) = match outcome {
            Ok(_) => (0, self.consecutive_successes.saturating_add(1)),
            Err(_) => (self.consecutive_failures.saturating_add(1), 0),
        };
        let observation = outcome.unwrap_or_else(Observation::text);
        let status = match self.status {
            Status::Pass if failures >= policy.failure_threshold() => Status::Fail,
            Status::Fail | Status::Warn if successes >= policy.success_threshold() => Status::Pass,
            unchanged => unchanged,
        };
        CheckState {
            status,
            observation,
            time: SystemTime::now(),
            at: Instant::now(),
            has_run: true,
            consecutive_failures: failures,
            consecutive_successes: successes,
        }
    }
}

/// One registered check: its identity, tuning, implementation and current state.
pub(crate) struct CheckSlot {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) policy: CheckPolicy,
    pub(crate) check: Arc<dyn Check>,
    pub(crate) alarm: Alarm,
    pub(crate) state: ArcSwap<CheckState>,
    /// Whether the current result has been reported stale (gauge and log).
    pub(crate) stale_reported: std::sync::atomic::AtomicBool,
    /// Tells [`crate::StatusListener`]s about every change of status.
    pub(crate) changes: tokio::sync::watch::Sender<Status>,
}

impl std::fmt::Debug for CheckSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckSlot")
            .field("key", &self.key)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl CheckSlot {
    pub(crate) fn new(name: String, policy: CheckPolicy, check: Arc<dyn Check>) -> Self {
        let key = format!("{name}:{}", check.measurement());
        let pending = CheckState::pending();
        Self {
            name,
            key,
            policy,
            alarm: check.alarm().unwrap_or_default(),
            check,
            changes: tokio::sync::watch::Sender::new(pending.status),
            state: ArcSwap::from_pointee(pending),
            stale_reported: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True when `selector` names this check, by name (`postgres`) or key (`postgres:connectivity`).
    pub(crate) fn is_named(&self, selector: &str) -> bool {
        self.name == selector || self.key == selector
    }

    /// Status as of `now`: a result older than the staleness bound counts as a failure.
    pub(crate) fn status_at(&self, state: &CheckState, now: Instant) -> Status {
        std::cmp::max(state.status, Status::pass_if(!self.is_stale(state, now)))
    }

    pub(crate) fn is_stale(&self, state: &CheckState, now: Instant) -> bool {
        state.has_run && now.saturating_duration_since(state.at) > self.policy.stale_after()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(failure_threshold: u32, success_threshold: u32) -> CheckPolicy {
        CheckPolicy::builder()
            .failure_threshold(failure_threshold)
            .success_threshold(success_threshold)
            .build()
            .unwrap()
    }

    #[test]
    fn a_single_failure_below_the_threshold_keeps_pass() {
        let p = policy(2, 1);
        let state = CheckState::pending().after_run(&p, Ok(Observation::default()));
        assert_eq!(state.status, Status::Pass);
        let state = state.after_run(&p, Err("boom".into()));
        assert_eq!(state.status, Status::Pass);
        let state = state.after_run(&p, Err("boom".into()));
        assert_eq!(state.status, Status::Fail);
        assert_eq!(state.observation.output.as_deref(), Some("boom"));
    }

    #[test]
    fn recovery_needs_the_success_threshold() {
        let p = policy(1, 2);
        let state = CheckState::pending().after_run(&p, Err("down".into()));
        assert_eq!(state.status, Status::Fail);
        let state = state.after_run(&p, Ok(Observation::default()));
        assert_eq!(state.status, Status::Fail);
        let state = state.after_run(&p, Ok(Observation::default()));
        assert_eq!(state.status, Status::Pass);
    }
}
