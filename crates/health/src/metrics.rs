//! Prometheus metrics of the health subsystem.

use crate::{LifecycleState, Status};
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::time::Duration;

/// Gauges and histograms the scheduler and the lifecycle write to.
#[derive(Debug, Clone)]
pub(crate) struct HealthMetrics {
    status: GaugeVec,
    duration: HistogramVec,
    transitions: IntCounterVec,
    panics: IntCounterVec,
    lifecycle: GaugeVec,
}

impl HealthMetrics {
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let status = GaugeVec::new(
            Opts::new(
                "health_check_status",
                "Reported status of a check after thresholds (1 pass, 0 fail).",
            ),
            &["check", "critical"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "health_check_duration_seconds",
                "Time one run of a check took, timeouts included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["check"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "health_check_transitions_total",
                "Times a check changed its reported status.",
            ),
            &["check", "to"],
        )?;
        let panics = IntCounterVec::new(
            Opts::new(
                "health_check_panics_total",
                "Runs of a check that panicked (each counted as a failed run).",
            ),
            &["check"],
        )?;
        let lifecycle = GaugeVec::new(
            Opts::new(
                "service_lifecycle_state",
                "1 for the lifecycle state the process is in, 0 for the others.",
            ),
            &["state"],
        )?;
        registry.register(Box::new(status.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(panics.clone()))?;
        registry.register(Box::new(lifecycle.clone()))?;
        let metrics = Self {
            status,
            duration,
            transitions,
            panics,
            lifecycle,
        };
        metrics.lifecycle_changed(LifecycleState::Starting);
        Ok(metrics)
    }

    pub(crate) fn check_registered(&self, check: &str, critical: bool) {
        self.status
            .with_label_values(&[check, bool_label(critical)])
            .set(Status::Fail.as_gauge());
    }

    pub(crate) fn check_ran(&self, check: &str, took: Duration) {
        self.duration
            .with_label_values(&[check])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn check_panicked(&self, check: &str) {
        self.panics.with_label_values(&[check]).inc();
    }

    /// Sets the status gauge only (staleness is not a transition of the check itself).
    pub(crate) fn check_shown_as(&self, check: &str, critical: bool, status: Status) {
        self.status
            .with_label_values(&[check, bool_label(critical)])
            .set(status.as_gauge());
    }

    pub(crate) fn check_changed(&self, check: &str, critical: bool, to: Status) {
        self.status
            .with_label_values(&[check, bool_label(critical)])
            .set(to.as_gauge());
        self.transitions
            .with_label_values(&[check, to.as_str()])
            .inc();
    }

    pub(crate) fn lifecycle_changed(&self, now: LifecycleState) {
        for state in LifecycleState::ALL {
            let value = if state == now { 1.0 } else { 0.0 };
            self.lifecycle
                .with_label_values(&[state.as_str()])
                .set(value);
        }
    }
}

fn bool_label(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}
