//! Host capabilities granted to plugins, one module per WIT interface. Each
//! checks the call's target grant itself; nothing here reaches beyond it.

mod beneath;
pub mod docker;
pub mod files;
pub mod http;
pub mod log;
mod pg_admin;
pub mod postgres;
pub mod process;
pub mod progress;
pub mod secrets;

use crate::host::bindings::rewind::plugin::types;
use crate::host::state::CallState;

impl types::Host for CallState {}
