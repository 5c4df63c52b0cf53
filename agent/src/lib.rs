//! rewind-agent: runs sandboxed WASM rollback plugins for the targets of one
//! host, locally (`rewind-agent plugin run`) or for a coordinator.

pub mod cli;
pub mod config;
pub mod conformance;
pub mod daemon;
pub mod docker;
pub mod host;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod scaffold;
pub mod signing;
pub mod testkit;
pub mod units;
