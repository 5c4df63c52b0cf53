//! `rewind`: see `rewind_coordinator::cli::app`.

fn main() -> std::process::ExitCode {
    rewind_coordinator::cli::app::main()
}
