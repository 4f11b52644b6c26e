//! How many connections the API may hold, from the process's open-file limit.
//!
//! When slow clients take the last descriptor, `accept` fails on every port and failed probes
//! restart the pod. So the API holds what the limit leaves; more clients wait in the accept queue.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for all but API connections, on top of the database pools: 256 for management
/// connections (kubelet, Prometheus; the example's cap), 128 for other dependencies, the health
/// checks' connections, runtimes (epoll, eventfd per worker), listeners and exporters.
pub const RESERVED_FILES: u64 = 384;

/// Raises the soft open-file limit to the hard one (container runtimes often start processes at
/// 1024 soft with a much higher hard limit) and returns it: the limit `accept` runs into.
///
/// ```
/// use nix::sys::resource::{Resource, getrlimit};
/// let limit = bootstrap::limits::raise_file_limit()?;
/// assert_eq!(getrlimit(Resource::RLIMIT_NOFILE)?, (limit, limit));
/// # Ok::<(), nix::Error>(())
/// ```
pub fn raise_file_limit() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// API connections `file_limit` affords, all workers together, after [`RESERVED_FILES`] and
/// `pooled` database connections; at least one per worker.
///
/// ```
/// use bootstrap::limits::api_connections;
/// assert_eq!(api_connections(1024, 18, 2), 622);
/// assert_eq!(api_connections(100, 18, 2), 2);
/// ```
pub fn api_connections(file_limit: u64, pooled: u64, workers: usize) -> usize {
    let spare = file_limit.saturating_sub(RESERVED_FILES + pooled);
    usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .max(workers.max(1))
}
