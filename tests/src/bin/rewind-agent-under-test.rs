//! The `rewind-agent` program, built with the tests so they never run a stale one.

fn main() -> std::process::ExitCode {
    rewind_agent::cli::main()
}
