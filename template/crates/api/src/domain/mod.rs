//! The example domain: items and the events their changes emit.

pub mod item;
