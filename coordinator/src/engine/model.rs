//! The statuses of runs, stages and steps, as the engine holds them and as
//! the journal stores them (one word each). Reading a word the engine does
//! not know is a `Corrupt` error, never a default: a run resumed from a
//! journal it cannot read must stop, not guess.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the journal holds {what} `{value}`, which this coordinator does not know")]
pub struct Corrupt {
    pub what: &'static str,
    pub value: String,
}

fn corrupt(what: &'static str, value: &str) -> Corrupt {
    Corrupt {
        what,
        value: value.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    Waiting,
    Running,
    /// All steps succeeded; health gates are running.
    Gating,
    Succeeded,
    Failed,
    Paused,
    Skipped,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Waiting => "waiting",
            StageStatus::Running => "running",
            StageStatus::Gating => "gating",
            StageStatus::Succeeded => "succeeded",
            StageStatus::Failed => "failed",
            StageStatus::Paused => "paused",
            StageStatus::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Result<StageStatus, Corrupt> {
        Ok(match text {
            "waiting" => StageStatus::Waiting,
            "running" => StageStatus::Running,
            "gating" => StageStatus::Gating,
            "succeeded" => StageStatus::Succeeded,
            "failed" => StageStatus::Failed,
            "paused" => StageStatus::Paused,
            "skipped" => StageStatus::Skipped,
            other => return Err(corrupt("stage status", other)),
        })
    }

    pub fn is_settled(self) -> bool {
        matches!(
            self,
            StageStatus::Succeeded | StageStatus::Failed | StageStatus::Skipped
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Result<RunStatus, Corrupt> {
        Ok(match text {
            "running" => RunStatus::Running,
            "paused" => RunStatus::Paused,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            other => return Err(corrupt("run status", other)),
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// The journal's word for a step's status (the engine's `StepStatus` holds
/// more: the summary, the failure, when it was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepWord {
    Pending,
    Sent,
    Succeeded,
    Failed,
    Skipped,
}

impl StepWord {
    pub fn as_str(self) -> &'static str {
        match self {
            StepWord::Pending => "pending",
            StepWord::Sent => "sent",
            StepWord::Succeeded => "succeeded",
            StepWord::Failed => "failed",
            StepWord::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Result<StepWord, Corrupt> {
        Ok(match text {
            "pending" => StepWord::Pending,
            "sent" => StepWord::Sent,
            "succeeded" => StepWord::Succeeded,
            "failed" => StepWord::Failed,
            "skipped" => StepWord::Skipped,
            other => return Err(corrupt("step status", other)),
        })
    }
}

/// What a run is for: an operator's rollback, or one leg of a drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Rollback,
    /// A drill's roll back: any failure halts it (the drill then rolls
    /// forward at once; nobody is asked to approve).
    DrillBack,
    /// A drill's roll forward: any failure pauses it for an operator, since
    /// the fleet must end where it started.
    DrillForward,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Rollback => "rollback",
            RunKind::DrillBack => "drill-back",
            RunKind::DrillForward => "drill-forward",
        }
    }

    pub fn parse(text: &str) -> Result<RunKind, Corrupt> {
        Ok(match text {
            "rollback" => RunKind::Rollback,
            "drill-back" => RunKind::DrillBack,
            "drill-forward" => RunKind::DrillForward,
            other => return Err(corrupt("run kind", other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_round_trips_and_unknown_words_are_corrupt() {
        for s in [
            StageStatus::Waiting,
            StageStatus::Running,
            StageStatus::Gating,
            StageStatus::Succeeded,
            StageStatus::Failed,
            StageStatus::Paused,
            StageStatus::Skipped,
        ] {
            assert_eq!(StageStatus::parse(s.as_str()), Ok(s));
        }
        for s in [
            RunStatus::Running,
            RunStatus::Paused,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Ok(s));
        }
        for s in [
            StepWord::Pending,
            StepWord::Sent,
            StepWord::Succeeded,
            StepWord::Failed,
            StepWord::Skipped,
        ] {
            assert_eq!(StepWord::parse(s.as_str()), Ok(s));
        }
        assert_eq!(
            RunStatus::parse("haltd").unwrap_err().to_string(),
            "the journal holds run status `haltd`, which this coordinator does not know"
        );
        assert!(StageStatus::parse("").is_err());
        assert!(StepWord::parse("done").is_err());
        for k in [RunKind::Rollback, RunKind::DrillBack, RunKind::DrillForward] {
            assert_eq!(RunKind::parse(k.as_str()), Ok(k));
        }
        assert!(RunKind::parse("drill").is_err());
    }
}
