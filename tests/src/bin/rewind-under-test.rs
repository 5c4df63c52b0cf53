//! The `rewind` program, built with the tests so they never run a stale one:
//! its `main` is the shipped program's own.

include!("../../../coordinator/src/main.rs");
