//! rackhand: an edge collector for network equipment.
//!
//! Data flows one way through the modules below (see ARCHITECTURE.md):
//! config → inventory → scheduler → worker pool → session → record → spool → batcher → sink.
//! The binary (`src/main.rs`) is a thin edge over this library; `sim` is the simulated rack
//! that tests, benchmarks and the demo run against.

pub(crate) mod agent;
pub mod batch;
pub mod change;
pub mod channel;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub mod console;
pub(crate) mod device_history;
pub(crate) mod durable_file;
mod hash;
pub mod inventory;
pub mod isolation;
pub(crate) mod led;
pub mod metrics;
pub(crate) mod notify;
pub(crate) mod outcome;
pub mod platform;
mod poll;
pub mod pool;
pub mod record;
pub mod scheduler;
pub(crate) mod seq;
pub mod session;
pub(crate) mod ship;
pub mod sim;
pub mod sink;
pub mod spool;
pub(crate) mod spooler;
pub(crate) mod state_dir;
pub mod status_file;
pub mod telnet_protocol;
#[cfg(test)]
mod test_support;
pub mod transport;
