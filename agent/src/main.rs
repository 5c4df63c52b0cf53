//! `rewind-agent`: see `rewind_agent::cli`.

fn main() -> std::process::ExitCode {
    rewind_agent::cli::main()
}
