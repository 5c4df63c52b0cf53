//! `rewind:plugin/process`: run an allow-listed program with allow-listed
//! arguments, without a shell, with an empty environment (plus the grant's
//! variables and those the plugin sets from the grant's allow-list), in the
//! target's state directory, killed with its whole process group when its
//! timeout or the call's deadline passes.

use crate::host::bindings::rewind::plugin::process::{Command, Host, Output, ProcessError};
use crate::host::state::CallState;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const MAX_OUTPUT: usize = 16 << 20;

impl Host for CallState {
    async fn run(&mut self, cmd: Command) -> Result<Output, ProcessError> {
        use crate::host::state::{Effect, Fault, INJECTED, INTERRUPTED, Verdict};
        let subject = format!("{} {}", cmd.program, cmd.args.join(" "));
        let half = match self.record("process", "run", subject.trim(), Effect::MayWrite) {
            Verdict::Go => false,
            Verdict::Stop => {
                return Err(ProcessError::Io(format!("{}: {INTERRUPTED}", cmd.program)));
            }
            Verdict::Fault(Fault::Timeout) => {
                let limit = self.target.grant.process_timeout.as_millis();
                return Err(ProcessError::TimedOut(limit.min(u32::MAX as u128) as u32));
            }
            Verdict::Fault(Fault::Refuse) => {
                return Err(ProcessError::Denied(format!("{}: {INJECTED}", cmd.program)));
            }
            Verdict::Fault(Fault::HalfWrite) => true,
        };
        // Killed half-way: half its output, no exit status.
        let cut = |mut output: Output| {
            if half {
                output.stdout.truncate(output.stdout.len() / 2);
                output.stderr.truncate(output.stderr.len() / 2);
                output.status = None;
                output.truncated = true;
            }
            output
        };
        if let Some(answer) = self.scripted_run(&cmd.program, &cmd.args) {
            let run = answer.map_err(ProcessError::Denied)?;
            return Ok(cut(Output {
                status: Some(run.exit),
                stdout: run.stdout.into_bytes(),
                stderr: run.stderr.into_bytes(),
                truncated: false,
            }));
        }
        let target = &self.target;
        let grant = &target.grant;
        let (name, program) = grant
            .process
            .get_key_value(&cmd.program)
            .or_else(|| {
                grant
                    .process
                    .iter()
                    .find(|(_, p)| p.path.as_path() == Path::new(&cmd.program))
            })
            .ok_or_else(|| {
                let allowed: Vec<String> = grant
                    .process
                    .iter()
                    .map(|(name, p)| format!("{name} ({})", p.path.display()))
                    .collect();
                ProcessError::Denied(format!(
                    "target {}: program `{}` is not on the grant.process allow-list ({})",
                    target.name,
                    cmd.program,
                    if allowed.is_empty() {
                        "empty".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ))
            })?;
        if !program.allows(&cmd.args) {
            let forms: Vec<String> = program
                .args
                .iter()
                .flatten()
                .map(|form| format!("[{}]", form.join(" ")))
                .collect();
            return Err(ProcessError::Denied(format!(
                "target {}: `{name}` ({}) may not run with the arguments [{}]; grant.process allows {}",
                target.name,
                program.path.display(),
                cmd.args.join(" "),
                forms.join(" or ")
            )));
        }
        let program = program.path.clone();

        if let Some((name, _)) = cmd
            .env
            .iter()
            .find(|(name, _)| !grant.process_env_allow.iter().any(|a| a == name))
        {
            return Err(ProcessError::Denied(format!(
                "target {}: a plugin may not set the environment variable `{name}` (grant.process_env_allow: {})",
                target.name,
                grant.process_env_allow.join(", ")
            )));
        }
        let requested = cmd
            .timeout_ms
            .map_or(grant.process_timeout, |ms| Duration::from_millis(ms.into()));
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let timeout = requested.min(grant.process_timeout).min(remaining);

        let dir = match &grant.process_dir {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(ProcessError::SpawnFailed(format!(
                        "target {}: grant.process_dir {} is not a directory",
                        target.name,
                        dir.display()
                    )));
                }
                dir.clone()
            }
            None => {
                std::fs::create_dir_all(&target.state_dir).map_err(|e| {
                    ProcessError::Io(format!(
                        "state directory {}: {e}",
                        target.state_dir.display()
                    ))
                })?;
                target.state_dir.clone()
            }
        };
        let mut child = tokio::process::Command::new(&program)
            .args(&cmd.args)
            .env_clear()
            .envs(&grant.process_env)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProcessError::SpawnFailed(format!("{}: {e}", program.display())))?;
        let pid = child.id();

        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let input = cmd.stdin.unwrap_or_default();
        let started = Instant::now();
        let finished = tokio::time::timeout(timeout, async {
            let feed = async {
                if let Some(mut stdin) = stdin {
                    // A program that exits without reading its input is not an error.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let (_, out, err, status) =
                tokio::join!(feed, read_capped(stdout), read_capped(stderr), child.wait());
            (out, err, status)
        })
        .await;

        let Ok((out, err, status)) = finished else {
            if let Some(pid) = pid {
                // SAFETY: killpg only sends a signal to the group we created.
                unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
            }
            tracing::warn!(plugin = self.plugin, target = target.name, program = %program.display(), "killed after {timeout:?}");
            return Err(ProcessError::TimedOut(
                timeout.as_millis().min(u32::MAX as u128) as u32,
            ));
        };
        let status = status.map_err(|e| ProcessError::Io(e.to_string()))?;
        let (stdout, out_cut) = out.map_err(|e| ProcessError::Io(format!("stdout: {e}")))?;
        let (stderr, err_cut) = err.map_err(|e| ProcessError::Io(format!("stderr: {e}")))?;
        tracing::info!(
            plugin = self.plugin,
            target = target.name,
            program = %program.display(),
            status = ?status.code(),
            "ran in {:?}",
            started.elapsed()
        );
        Ok(cut(Output {
            status: status.code(),
            stdout,
            stderr,
            truncated: out_cut || err_cut,
        }))
    }
}

/// Read a stream to its end, keeping at most MAX_OUTPUT bytes (and draining
/// the rest, so the program never blocks on a full pipe).
async fn read_capped(stream: Option<impl AsyncRead + Unpin>) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(mut stream) = stream else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        let room = MAX_OUTPUT - kept.len();
        kept.extend_from_slice(&chunk[..n.min(room)]);
        truncated |= n > room;
    }
}
