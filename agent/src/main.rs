//! `rewind-agent`: see `rewind_agent::cli`.

fn main() -> std::process::ExitCode {
    rewind_agent::quiet_library_backtraces();
    rewind_agent::cli::main()
}
