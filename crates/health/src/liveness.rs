//! The liveness watchdog: fails only when the async runtime stops ticking (a deadlock, a blocked
//! thread, a runaway loop), never for a dependency: restarting all pods makes a blip an outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Last time the runtime proved it was alive, as milliseconds since `base`.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    base: Instant,
    last_ms: AtomicU64,
    stall_after: Duration,
}

impl Heartbeat {
    pub(crate) fn new(stall_after: Duration) -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0), // a beat now
            stall_after,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn beat(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Release);
    }

    pub(crate) fn age(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    pub(crate) fn alive(&self) -> bool {
        self.age() <= self.stall_after
    }

    /// How often the watchdog task beats: well inside the stall bound.
    pub(crate) fn period(&self) -> Duration {
        (self.stall_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}
