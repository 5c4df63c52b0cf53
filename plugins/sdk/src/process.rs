//! Run allow-listed programs on the host, without a shell.

use crate::PluginError;
use crate::bindings::rewind::plugin::process as host;
pub use crate::bindings::rewind::plugin::process::{Command, Output, ProcessError};

/// Run a program to completion. A non-zero exit is an error that carries the
/// program's stderr; use [`run_command`] to inspect the status yourself.
pub fn run(program: &str, args: &[&str]) -> Result<Output, PluginError> {
    let output = run_command(&Command {
        program: program.to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: None,
        timeout_ms: None,
        env: Vec::new(),
    })?;
    match output.status {
        Some(0) => Ok(output),
        status => Err(PluginError::Failed(format!(
            "{program} exited with {}: {}",
            status.map_or("a signal".to_string(), |s| format!("status {s}")),
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

/// Run a command and return its status and output, whatever the status.
pub fn run_command(cmd: &Command) -> Result<Output, PluginError> {
    host::run(cmd).map_err(|e| match e {
        ProcessError::Denied(t) => PluginError::Denied(t),
        ProcessError::SpawnFailed(t) => {
            PluginError::Failed(format!("{} could not be started: {t}", cmd.program))
        }
        ProcessError::TimedOut(ms) => {
            PluginError::Failed(format!("{} was killed after {ms} ms", cmd.program))
        }
        ProcessError::Io(t) => PluginError::Failed(format!("{}: {t}", cmd.program)),
    })
}

/// The last `n` non-empty lines a run printed, stdout's then stderr's: what
/// a report shows of a command.
pub fn last_lines(output: &Output, n: usize) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
