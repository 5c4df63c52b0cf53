// `rewind`: see `rewind_coordinator::cli::app`.
// (No inner doc comment: the tests build this file as their own program with include!.)

/// mimalloc: a coordinator's work is many small allocations (messages,
/// journal rows, events) that glibc's allocator serves more slowly (15%
/// less CPU in the fleet benchmark). Not in the agent: it costs an idle
/// agent 12 MiB of resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rewind_coordinator::cli::app::main()
}
