//! The agent's step ledger: one record per step id, written with fsync
//! before a step acts and after it finishes. A step delivered twice returns
//! its recorded result instead of acting twice; a step that was running when
//! the agent died is found at the next start and settled without acting
//! again (see `daemon::recover`).
//!
//! It fails closed: a record that exists but cannot be read never means
//! "act": the step is settled by asking the plugin's verify instead.

use prost::Message;
use rewind_proto::v1::{StepRequest, StepResult};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Finished records older than this are pruned at start.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many finished results are re-announced to the coordinator.
const ANNOUNCE: usize = 1000;

#[derive(Clone)]
pub struct Ledger {
    dir: PathBuf,
}

/// What the ledger says about a step that was just delivered.
pub enum Begin {
    /// Never seen (or a new attempt): it is now recorded as running; act.
    Act,
    /// Already finished: here is its result; do not act again.
    Done(StepResult),
    /// It may have acted already (a previous agent process was running it,
    /// or its record cannot be read): settle it without acting again.
    Unsure(String),
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Ledger {
    pub fn open(state_dir: &Path) -> std::io::Result<Ledger> {
        let dir = state_dir.join("ledger");
        std::fs::create_dir_all(&dir)?;
        let ledger = Ledger { dir };
        ledger.prune()?;
        Ok(ledger)
    }

    fn key(step_id: &str) -> String {
        hex::encode(&Sha256::digest(step_id.as_bytes())[..16])
    }

    fn running_path(&self, step_id: &str) -> PathBuf {
        self.dir.join(format!("{}.running", Self::key(step_id)))
    }

    fn done_path(&self, step_id: &str) -> PathBuf {
        self.dir.join(format!("{}.done", Self::key(step_id)))
    }

    /// A step's recorded result: none when there is no record, an error
    /// when there is one that cannot be read.
    pub fn result(&self, step_id: &str) -> Result<Option<StepResult>, String> {
        let path = self.done_path(step_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        StepResult::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// What is known of a step before it may act: its recorded result (for
    /// this attempt or a later one), or a doubt, or nothing.
    pub fn check(&self, request: &StepRequest) -> Option<Begin> {
        match self.result(&request.step_id) {
            // A later attempt is a deliberate retry; anything else gets the record.
            Ok(Some(done)) if request.attempt <= done.attempt => Some(Begin::Done(done)),
            Ok(_) => {
                let running = self.running_path(&request.step_id);
                running.exists().then(|| {
                    Begin::Unsure(format!(
                        "a previous agent process was running this step ({})",
                        running.display()
                    ))
                })
            }
            Err(e) => Some(Begin::Unsure(format!(
                "its ledger record cannot be read ({e})"
            ))),
        }
    }

    /// Record that a step is about to act, unless it already did (or may have).
    pub fn begin(&self, request: &StepRequest) -> std::io::Result<Begin> {
        if let Some(known) = self.check(request) {
            return Ok(known);
        }
        write_durably(
            &self.running_path(&request.step_id),
            &request.encode_to_vec(),
        )?;
        Ok(Begin::Act)
    }

    /// Record a step's result; it replaces the running record.
    pub fn finish(&self, result: &StepResult) -> std::io::Result<()> {
        write_durably(&self.done_path(&result.step_id), &result.encode_to_vec())?;
        match std::fs::remove_file(self.running_path(&result.step_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Steps that were running when the agent stopped.
    pub fn interrupted(&self) -> std::io::Result<Vec<StepRequest>> {
        let mut steps = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "running") {
                let bytes = std::fs::read(&path)?;
                match StepRequest::decode(bytes.as_slice()) {
                    Ok(step) => steps.push(step),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "unreadable ledger record: {e}")
                    }
                }
            }
        }
        Ok(steps)
    }

    /// The most recent finished results, to announce after (re)connecting.
    pub fn recent_results(&self) -> std::io::Result<Vec<StepResult>> {
        let mut done = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "done") {
                let modified = entry
                    .metadata()?
                    .modified()
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                done.push((modified, path));
            }
        }
        done.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        Ok(done
            .into_iter()
            .take(ANNOUNCE)
            .filter_map(|(_, path)| std::fs::read(path).ok())
            .filter_map(|bytes| StepResult::decode(bytes.as_slice()).ok())
            // Results of runs only: checkpoints and previews are not waited for after a restart.
            .filter(|r| !r.run_id.is_empty())
            .collect())
    }

    fn prune(&self) -> std::io::Result<()> {
        let now = SystemTime::now();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let old = entry
                .metadata()?
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > KEEP);
            if old && path.extension().is_some_and(|e| e == "done") {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(step: &str, attempt: u32) -> StepRequest {
        StepRequest {
            step_id: step.into(),
            attempt,
            ..Default::default()
        }
    }

    #[test]
    fn a_record_that_cannot_be_read_never_means_act() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(matches!(
            ledger.begin(&request("s", 1)).unwrap(),
            Begin::Act
        ));
        ledger
            .finish(&StepResult {
                step_id: "s".into(),
                attempt: 1,
                ..Default::default()
            })
            .unwrap();
        assert!(matches!(
            ledger.check(&request("s", 1)),
            Some(Begin::Done(_))
        ));
        // The finished record is damaged: the step is not run again.
        std::fs::write(ledger.done_path("s"), b"\xff\xff\xff garbage").unwrap();
        assert!(matches!(
            ledger.begin(&request("s", 1)).unwrap(),
            Begin::Unsure(_)
        ));
        // A running record left by a previous process: not run again either.
        std::fs::write(ledger.running_path("t"), b"\x00").unwrap();
        let Begin::Unsure(why) = ledger.begin(&request("t", 1)).unwrap() else {
            panic!("a step a previous process was running must not act")
        };
        assert!(why.contains("previous agent process"), "{why}");
        // A later attempt of a finished step is a deliberate retry.
        ledger
            .finish(&StepResult {
                step_id: "u".into(),
                attempt: 1,
                ..Default::default()
            })
            .unwrap();
        assert!(matches!(
            ledger.begin(&request("u", 2)).unwrap(),
            Begin::Act
        ));
    }
}
