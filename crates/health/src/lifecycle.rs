//! The process lifecycle as the probes see it. `bootstrap` drives the transitions; this crate
//! keeps the state in one atomic ([`crate::Health`]'s) so probe handlers read it without a lock.

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

    pub(crate) fn from_u8(raw: u8) -> Self {
        Self::ALL[usize::from(raw).min(Self::ALL.len() - 1)]
    }
}
