//! Prometheus metrics of the health subsystem.

use crate::{LifecycleState, Status};
use prometheus::core::Collector;
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
        let status = Opts::new(
            "health_check_status",
            "Reported status of a check after thresholds (1 pass, 0 fail).",
        );
        let duration = HistogramOpts::new(
            "health_check_duration_seconds",
            "Time one run of a check took, timeouts included.",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        let transitions = Opts::new(
            "health_check_transitions_total",
            "Times a check changed its reported status.",
        );
        let panics = Opts::new(
            "health_check_panics_total",
            "Runs of a check that panicked (each counted as a failed run).",
        );
        let lifecycle = Opts::new(
            "service_lifecycle_state",
            "1 for the lifecycle state the process is in, 0 for the others.",
        );
        let metrics = Self {
            status: registered(registry, GaugeVec::new(status, &["check", "critical"])?)?,
            duration: registered(registry, HistogramVec::new(duration, &["check"])?)?,
            transitions: registered(registry, IntCounterVec::new(transitions, &["check", "to"])?)?,
            panics: registered(registry, IntCounterVec::new(panics, &["check"])?)?,
            lifecycle: registered(registry, GaugeVec::new(lifecycle, &["state"])?)?,
        };
        metrics.lifecycle_changed(LifecycleState::Starting);
        Ok(metrics)
    }

    pub(crate) fn check_ran(&self, check: &str, took: Duration) {
        self.duration
            .with_label_values(&[check])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn check_panicked(&self, check: &str) {
        self.panics.with_label_values(&[check]).inc();
    }

    /// Sets the status gauge only (staleness is not a transition of the check itself). A check's
    /// status is `pass` or `fail` (a check never warns).
    pub(crate) fn check_shown_as(&self, check: &str, critical: bool, status: Status) {
        let critical = if critical { "true" } else { "false" };
        let value = if status == Status::Pass { 1.0 } else { 0.0 };
        self.status.with_label_values(&[check, critical]).set(value);
    }

    pub(crate) fn check_changed(&self, check: &str, critical: bool, to: Status) {
        self.check_shown_as(check, critical, to);
        self.transitions
            .with_label_values(&[check, to.as_str()])
            .inc();
    }

    pub(crate) fn lifecycle_changed(&self, now: LifecycleState) {
        for state in LifecycleState::ALL {
            let gauge = self.lifecycle.with_label_values(&[state.as_str()]);
            gauge.set(if state == now { 1.0 } else { 0.0 });
        }
    }
}

fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
