//! One agent per state directory: two agents on one directory would both
//! act on the steps its ledger records. The first to start makes
//! `<state_dir>/agent.pid` a symbolic link whose target is its pid: made
//! exclusively, in one step, and with no data block, so that it is taken on
//! a full disk too (the day a rollback is needed). Another agent refuses to
//! start, naming the holder. A link left by an agent that died (its pid
//! gone, or now another program's) is taken over, as is a plain file of
//! the same name holding a pid. No descriptor is held open: a process
//! hosting many agents (the fleet benchmark) would run out.

use std::path::{Path, PathBuf};

pub struct StateLock {
    path: PathBuf,
}

/// The program a pid runs, if it is alive.
fn program_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The pid that `path` names: a link's target, or a file's text.
fn holder(path: &Path) -> Option<u32> {
    match std::fs::read_link(path) {
        Ok(target) => target.to_str()?.trim().parse().ok(),
        Err(_) => std::fs::read_to_string(path).ok()?.trim().parse().ok(),
    }
}

impl StateLock {
    /// Hold `state_dir` for this agent, or say who does.
    pub fn take(state_dir: &Path) -> Result<StateLock, String> {
        let path = state_dir.join("agent.pid");
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("state directory {}: {e}", state_dir.display()))?;
        let me = std::process::id();
        let own_program = program_of(me);
        for _ in 0..3 {
            match std::os::unix::fs::symlink(me.to_string(), &path) {
                Ok(()) => return Ok(StateLock { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = holder(&path);
                    let running = holder.and_then(program_of);
                    if let (Some(pid), Some(program)) = (holder, running)
                        && Some(&program) == own_program.as_ref()
                    {
                        return Err(format!(
                            "state directory {} is in use by another agent (pid {pid}, {}, see \
                             {}): two agents on one state directory would both act on its steps; \
                             stop that one, or give this one its own state_dir",
                            state_dir.display(),
                            program.display(),
                            path.display()
                        ));
                    }
                    // Left by an agent that is gone: take it over.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Err(format!(
            "{}: could not be taken (another agent starting at the same moment?)",
            path.display()
        ))
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        if holder(&self.path) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_a_dead_ones_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::take(dir.path()).unwrap();
        let error = StateLock::take(dir.path()).err().expect("held");
        assert!(
            error.contains("in use by another agent")
                && error.contains(&std::process::id().to_string()),
            "{error}"
        );
        drop(first);
        assert!(std::fs::symlink_metadata(dir.path().join("agent.pid")).is_err());
        // A pid that runs another program (or none) left the file: taken over.
        std::fs::write(dir.path().join("agent.pid"), "1\n").unwrap();
        let _again = StateLock::take(dir.path()).unwrap();
    }
}
