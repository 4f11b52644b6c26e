//! [`Health`]: the shared handle to every check, the lifecycle and the liveness heartbeat.

use crate::liveness::Heartbeat;
use crate::metrics::HealthMetrics;
use crate::snapshot::{CheckSlot, CheckState};
use crate::{Alarm, Check, CheckPolicy, LifecycleState, ProbeQuery, Status, StatusListener};
use prometheus::Registry;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Error building a [`Health`].
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Two checks share a name.
    #[error("health check {0:?} is registered twice")]
    DuplicateCheck(String),
    /// The metrics could not be registered (a name clash in the registry).
    #[error("registering health metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builder for [`Health`].
#[derive(Debug)]
pub struct HealthBuilder {
    service_id: String,
    version: String,
    stall_after: Duration,
    registry: Registry,
    checks: Vec<CheckSlot>,
}

impl HealthBuilder {
    /// Adds a check under `name` (`postgres`, `redis`, ...).
    #[must_use]
    pub fn check(
        mut self,
        name: impl Into<String>,
        policy: CheckPolicy,
        check: impl Check,
    ) -> Self {
        self.checks
            .push(CheckSlot::new(name.into(), policy, Arc::new(check)));
        self
    }

    /// `/livez` fails when the runtime has not ticked for this long (default 10 s).
    #[must_use]
    pub fn liveness_stall_after(mut self, stall_after: Duration) -> Self {
        self.stall_after = stall_after;
        self
    }

    /// Registers the health metrics in `registry`, so `/metrics` shows the service's own too.
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Finishes the handle. Nothing runs until [`Health::spawn_watchdog`] and
    /// [`Health::spawn_scheduler`] are called.
    pub fn build(self) -> Result<Health, HealthError> {
        let mut names = HashSet::new();
        if let Some(twice) = self.checks.iter().find(|slot| !names.insert(&slot.name)) {
            return Err(HealthError::DuplicateCheck(twice.name.clone()));
        }
        let metrics = HealthMetrics::register(&self.registry)?;
        for slot in &self.checks {
            metrics.check_shown_as(&slot.name, slot.policy.is_critical(), Status::Fail);
        }
        Ok(Health(Arc::new(Inner {
            service_id: self.service_id,
            version: self.version,
            lifecycle: AtomicU8::new(LifecycleState::Starting as u8),
            checks: self.checks.into_boxed_slice(),
            heartbeat: Heartbeat::new(self.stall_after),
            metrics,
            registry: self.registry,
        })))
    }
}

/// Cheap-to-clone handle to the health state of the process. Probe handlers only read it: a few
/// atomic loads, no lock, no I/O.
///
/// ```
/// use health::{Check, CheckFailure, CheckPolicy, Health, LifecycleState, Observation, ProbeQuery, Status};
///
/// struct AlwaysUp;
/// #[async_trait::async_trait]
/// impl Check for AlwaysUp {
///     async fn run(&self) -> Result<Observation, CheckFailure> { Ok(Observation::default()) }
/// }
///
/// let health = Health::builder("demo", "1.0.0")
///     .check("cache", CheckPolicy::default().critical(false), AlwaysUp)
///     .build()?;
/// // Not ready while starting, whatever the checks say.
/// assert_eq!(health.readiness(&ProbeQuery::default()), Status::Fail);
/// health.advance(LifecycleState::Ready);
/// // The non-critical check has not run yet: serving, but degraded.
/// assert_eq!(health.readiness(&ProbeQuery::default()), Status::Warn);
/// # Ok::<(), health::HealthError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Health(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    service_id: String,
    version: String,
    /// A [`LifecycleState`]; only moves forward.
    lifecycle: AtomicU8,
    checks: Box<[CheckSlot]>,
    heartbeat: Heartbeat,
    metrics: HealthMetrics,
    registry: Registry,
}

impl Health {
    /// Starts a builder for a service called `service_id` at `version`.
    pub fn builder(service_id: impl Into<String>, version: impl Into<String>) -> HealthBuilder {
        HealthBuilder {
            service_id: service_id.into(),
            version: version.into(),
            stall_after: Duration::from_secs(10),
            registry: Registry::new(),
            checks: Vec::new(),
        }
    }

    /// The service name reported as `serviceId`.
    pub fn service_id(&self) -> &str {
        &self.0.service_id
    }

    /// The version reported in probe bodies.
    pub fn version(&self) -> &str {
        &self.0.version
    }

    /// The registry `/metrics` renders.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// Current lifecycle state.
    pub fn lifecycle(&self) -> LifecycleState {
        LifecycleState::from_u8(self.0.lifecycle.load(Ordering::Acquire))
    }

    /// Moves the lifecycle forward; returns the previous state, or `None` if `next` is not later.
    pub fn advance(&self, next: LifecycleState) -> Option<LifecycleState> {
        let previous = self.0.lifecycle.fetch_max(next as u8, Ordering::AcqRel);
        if previous >= next as u8 {
            return None;
        }
        self.0.metrics.lifecycle_changed(next);
        Some(LifecycleState::from_u8(previous))
    }

    /// `/livez`: pass while the runtime ticks and every check's result is fresh. A run's timeout is
    /// at most its interval, so a result goes stale only when its task is gone or stuck.
    pub fn liveness(&self) -> Status {
        let now = Instant::now();
        let fresh = |slot: &CheckSlot| !slot.is_stale(&slot.state.load(), now);
        Status::pass_if(self.0.heartbeat.alive() && self.slots().iter().all(fresh))
    }

    /// `/startupz`: pass once every startup phase has finished, and on while draining.
    pub fn startup(&self) -> Status {
        Status::pass_if(self.lifecycle() != LifecycleState::Starting)
    }

    /// `/readyz`: fail outside lifecycle `ready` or if a critical check fails; warn if others do.
    pub fn readiness(&self, query: &ProbeQuery<'_>) -> Status {
        let ready = Status::pass_if(self.lifecycle() == LifecycleState::Ready);
        ready.max(self.checks_status(query))
    }

    /// Aggregate status of the checks alone, ignoring the lifecycle.
    pub fn checks_status(&self, query: &ProbeQuery<'_>) -> Status {
        let now = Instant::now();
        let degraded = |slot: &CheckSlot| {
            if slot.policy.is_critical() {
                Status::Fail
            } else {
                Status::Warn
            }
        };
        self.slots()
            .iter()
            .filter(|slot| !query.excludes(slot))
            .filter(|slot| slot.status_at(&slot.state.load(), now) == Status::Fail)
            .map(degraded)
            .max()
            .unwrap_or(Status::Pass)
    }

    /// Status of one check by name or key; `None` when no such check exists.
    pub fn check_status(&self, selector: &str) -> Option<Status> {
        let slot = self.slot(selector)?;
        Some(slot.status_at(&slot.state.load(), Instant::now()))
    }

    pub(crate) fn slot(&self, selector: &str) -> Option<&CheckSlot> {
        self.0.checks.iter().find(|slot| slot.is_named(selector))
    }

    pub(crate) fn slots(&self) -> &[CheckSlot] {
        &self.0.checks
    }

    pub(crate) fn heartbeat(&self) -> &Heartbeat {
        &self.0.heartbeat
    }

    pub(crate) fn metrics(&self) -> &HealthMetrics {
        &self.0.metrics
    }

    /// Stale results already fail readiness; this makes the `health_check_status` gauge and the
    /// log say so once, and undoes it on a fresh result. Run by the watchdog on every beat.
    pub(crate) fn report_staleness(&self) {
        let now = Instant::now();
        for slot in self.slots() {
            let state = slot.state.load();
            let stale = slot.is_stale(&state, now);
            if stale == slot.stale_reported.swap(stale, Ordering::Relaxed) {
                continue;
            }
            let critical = slot.policy.is_critical();
            let shown = if stale {
                tracing::warn!(check = %slot.name, critical, age_ms = now.saturating_duration_since(state.at).as_millis() as u64, "health check result stale: its scheduler task is not running; counted as failing");
                Status::Fail
            } else {
                tracing::info!(check = %slot.name, critical, status = %state.status, "health check result fresh again");
                state.status
            };
            self.0.metrics.check_shown_as(&slot.name, critical, shown);
            slot.changes.send_replace(shown);
        }
    }

    /// Stores a new state for `slot`, logging and counting a change of status exactly once.
    pub(crate) fn publish(&self, slot: &CheckSlot, next: CheckState) {
        let next = Arc::new(next);
        let (from, to) = (slot.state.swap(Arc::clone(&next)).status, next.status);
        if from == to {
            return;
        }
        let critical = slot.policy.is_critical();
        if to == Status::Pass {
            tracing::info!(check = %slot.name, critical, %from, %to, "health check recovered");
        } else {
            let reason = next.observation.output.as_deref().unwrap_or("");
            tracing::warn!(check = %slot.name, critical, %from, %to, reason, "health check failing");
        }
        self.0.metrics.check_changed(&slot.name, critical, to);
        slot.changes.send_replace(to);
    }

    /// The [`Alarm`](crate::Alarm) that runs the check `selector` (name or key) at once, if any.
    pub fn alarm(&self, selector: &str) -> Option<Alarm> {
        self.slot(selector).map(|slot| slot.alarm.clone())
    }

    /// Follows the status of the check `selector` (name or key); `None` when there is none.
    pub fn listen(&self, selector: &str) -> Option<StatusListener> {
        self.slot(selector)
            .map(|slot| StatusListener(slot.changes.subscribe()))
    }
}
