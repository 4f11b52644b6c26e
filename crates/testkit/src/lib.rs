//! Test-only tools: throwaway dependency servers, a TCP fault proxy, and a spawner
//! for the real `shipshape` binary. Everything is cleaned up on drop, also when a test panics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod amqp; // @rabbitmq
pub mod balancer;
pub mod kubelet;
pub mod load;
pub mod logs;
pub mod net;
pub mod otlp;
pub mod postgres;
pub mod proxy;
pub mod rabbitmq; // @rabbitmq
pub mod service;
mod system;
pub mod tls;

pub use net::{free_port, wait_until};
pub use nix::sys::signal::Signal;
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::Postgres;
pub use proxy::{Fault, FaultProxy};
pub use rabbitmq::RabbitMq; // @rabbitmq
pub use service::{LivenessWatch, Service};
pub use tls::Authority;
