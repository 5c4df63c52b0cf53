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
pub mod lock;
pub mod metrics;
pub mod scaffold;
pub mod signing;
pub mod testkit;
pub mod units;

/// Keep library backtraces off unless `RUST_LIB_BACKTRACE` asks for them:
/// with `RUST_BACKTRACE` set (as it often is where one debugs), every error
/// the plugin host makes and handles in each plugin call (wasmtime's own,
/// when it tears a call's store down) would walk the stack, a tenth of a
/// busy agent's time. Panics keep their backtraces. Call before any thread
/// starts.
pub fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any other thread
        // exists that could read the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}
