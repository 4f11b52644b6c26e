// @rabbitmq-begin
//! The example domain: items and the events their changes emit.
// @rabbitmq-else
// //! The example domain: items.
// @rabbitmq-end

pub mod item;
