//! rewind's coordinator: the fleet registry, plans, the durable run engine,
//! releases, and the operator CLI that talks to it.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod drill;
pub mod engine;
pub mod fleet;
pub mod health;
pub mod hooks;
pub mod launch;
pub mod leader;
pub mod localfleet;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod runner;
pub mod server;
pub mod step_id;
pub mod store;
pub mod ui;
pub mod vocabulary;
