//! Health of a service, told truthfully to Kubernetes.
//!
//! - A [`Check`] probes one dependency; a [`CheckPolicy`] says how often, under which timeout,
//!   after how many failures it counts, and whether it is critical.
//! - The scheduler ([`Health::spawn_scheduler`]) runs every check in the background and stores
//!   the result in a lock-free snapshot. Probe handlers only read that snapshot, so a thousand
//!   probes a second cost a dependency nothing more than one check per interval.
//! - Readiness = lifecycle `ready` and every critical check passing; a failing non-critical check
//!   turns the status to `warn` (still 200). Liveness depends on no dependency at all: it fails
//!   only when the runtime stops ticking ([`Health::spawn_watchdog`]).
//! - [`http::configure`] (feature `actix`) mounts `/livez`, `/readyz`, `/readyz/{check}`,
//!   `/startupz` and `/metrics`.

mod check;
pub mod checks;
#[cfg(feature = "actix")]
pub mod http;
mod lifecycle;
mod liveness;
mod metrics;
mod policy;
mod registry;
mod report;
mod scheduler;
mod snapshot;
mod status;

pub use check::{Check, CheckFailure, Observation};
pub use lifecycle::LifecycleState;
pub use policy::CheckPolicy;
pub use registry::{Health, HealthBuilder, HealthError};
pub use report::{HEALTH_JSON, ProbeQuery, minimal_body};
pub use snapshot::CheckState;
pub use status::Status;
pub use tokio_util::sync::CancellationToken;
