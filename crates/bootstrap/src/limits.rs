//! How many connections the API may hold, from the process's open-file limit.
//!
//! When slow clients take the last descriptor, `accept` fails on every port and failed probes
//! restart the pod. So the API holds what the limit leaves; more clients wait in the accept queue.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for all but API connections, on top of the database pools: 256 for management
/// connections (kubelet, Prometheus; the example's cap), 128 for other dependencies, the health
/// checks' connections, runtimes (epoll, eventfd per worker), listeners and exporters.
pub const RESERVED_FILES: u64 = 384;

/// The open-file limit of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit: what `accept` runs into.
    pub soft: u64,
    /// The hard limit: how far the process may raise the soft one.
    pub hard: u64,
}

impl FileLimit {
    /// Raises the soft limit to the hard one (container runtimes often start processes at
    /// 1024 soft with a much higher hard limit) and returns the result.
    ///
    /// ```
    /// let limit = bootstrap::limits::FileLimit::raise()?;
    /// assert_eq!(limit.soft, limit.hard);
    /// # Ok::<(), nix::Error>(())
    /// ```
    pub fn raise() -> nix::Result<FileLimit> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        if soft < hard {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        }
        Ok(FileLimit { soft: hard, hard })
    }

    /// API connections this limit affords, all workers together, after [`RESERVED_FILES`]
    /// and `pooled` database connections; at least one per worker.
    ///
    /// ```
    /// use bootstrap::limits::FileLimit;
    /// let limit = FileLimit { soft: 1024, hard: 1024 };
    /// assert_eq!(limit.api_connections(18, 2), 622);
    /// assert_eq!(FileLimit { soft: 100, hard: 100 }.api_connections(18, 2), 2);
    /// ```
    pub fn api_connections(&self, pooled: u64, workers: usize) -> usize {
        let spare = self.soft.saturating_sub(RESERVED_FILES + pooled);
        usize::try_from(spare)
            .unwrap_or(usize::MAX)
            .max(workers.max(1))
    }
}
