//! Ready-made checks for the dependencies of the example service.

#[cfg(feature = "postgres")]
pub mod postgres;
// @rabbitmq-begin
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
// @rabbitmq-end
