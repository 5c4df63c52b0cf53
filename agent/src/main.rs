// `rewind-agent`: see `rewind_agent::cli`.
// (No inner doc comment: the tests build this file as their own program with include!.)

fn main() -> std::process::ExitCode {
    rewind_agent::quiet_library_backtraces();
    rewind_agent::cli::main()
}
