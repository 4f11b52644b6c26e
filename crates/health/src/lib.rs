#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod check;
pub mod checks;
#[cfg(feature = "actix")]
pub mod http;
mod lifecycle;
mod listener;
mod liveness;
mod metrics;
mod policy;
mod registry;
mod report;
mod scheduler;
mod snapshot;
mod status;

pub use check::{Alarm, Check, CheckFailure, Observation};
pub use lifecycle::LifecycleState;
pub use listener::StatusListener;
pub use policy::{CheckPolicy, CheckPolicyBuilder, PolicyError};
pub use registry::{Health, HealthBuilder, HealthError};
pub use report::{HEALTH_JSON, ProbeQuery, minimal_body};
pub use status::Status;
pub use tokio_util::sync::CancellationToken;
