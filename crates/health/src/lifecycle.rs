//! The process lifecycle as the probes see it. `bootstrap` drives the transitions; this crate
//! keeps the state in one atomic so probe handlers read it without a lock.

use std::sync::atomic::{AtomicU8, Ordering};

/// Where the process is in its life: `starting -> ready -> draining -> stopped`.
///
/// ```
/// use health::LifecycleState;
/// assert!(LifecycleState::Starting < LifecycleState::Ready);
/// assert_eq!(LifecycleState::Draining.as_str(), "draining");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LifecycleState {
    /// Startup phases are running; not ready, not started.
    Starting = 0,
    /// Startup finished; readiness follows the checks.
    Ready = 1,
    /// A termination signal arrived: readiness fails while in-flight work finishes.
    Draining = 2,
    /// Servers closed; the process is about to exit.
    Stopped = 3,
}

impl LifecycleState {
    /// Every state, in order.
    pub const ALL: [LifecycleState; 4] = [
        LifecycleState::Starting,
        LifecycleState::Ready,
        LifecycleState::Draining,
        LifecycleState::Stopped,
    ];

    /// Lower-case name used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Starting => "starting",
            LifecycleState::Ready => "ready",
            LifecycleState::Draining => "draining",
            LifecycleState::Stopped => "stopped",
        }
    }

    const fn from_u8(raw: u8) -> Self {
        match raw {
            0 => LifecycleState::Starting,
            1 => LifecycleState::Ready,
            2 => LifecycleState::Draining,
            _ => LifecycleState::Stopped,
        }
    }

    /// `/startupz` passes once startup has finished, and keeps passing while draining.
    pub const fn startup_done(self) -> bool {
        !matches!(self, LifecycleState::Starting)
    }
}

/// Lock-free cell holding the current [`LifecycleState`]; only moves forward.
#[derive(Debug)]
pub(crate) struct LifecycleCell(AtomicU8);

impl LifecycleCell {
    pub(crate) fn new() -> Self {
        Self(AtomicU8::new(LifecycleState::Starting as u8))
    }

    pub(crate) fn get(&self) -> LifecycleState {
        LifecycleState::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves forward to `next`; returns the previous state, or `None` when `next` is not later.
    pub(crate) fn advance(&self, next: LifecycleState) -> Option<LifecycleState> {
        let previous = self.0.fetch_max(next as u8, Ordering::AcqRel);
        (previous < next as u8).then(|| LifecycleState::from_u8(previous))
    }
}
