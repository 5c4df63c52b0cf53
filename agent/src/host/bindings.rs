//! Host bindings generated from the WIT contract in `wit/`.
//!
//! Every import is async so that host calls (processes, HTTP, files) run on
//! the tokio runtime with their own timeouts; `wasi:*` interfaces come from
//! wasmtime-wasi and wasmtime-wasi-http.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rewind:plugin/rollback-plugin",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
    additional_derives: [serde::Serialize, serde::Deserialize],
});

pub use exports::rewind::plugin::rollback;
pub use rewind::plugin::types::{
    Action as ActionName, Captured, Change, Outcome, PluginError, PluginInfo, Preview,
    RestoreOptions, Risk, SnapshotRecord, Target,
};
