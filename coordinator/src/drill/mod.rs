//! Drills: rollback rehearsals. A drill run checkpoints its environment now,
//! rolls back to the release before (or a named one) with its plan, gates
//! and hooks, rolls forward to the checkpoint with the same plan, verifies
//! every target against the checkpoint, and leaves a report with the
//! measured RTO (the roll-back phase) against its target.
//!
//! This module is the drill's pure state machine: events in (a checkpoint
//! taken, a run ended, an operator preempting), commands out (take the
//! checkpoint, start or watch a phase's run, verify, finish), no I/O. The
//! shell in `driver` journals the state before it acts on the commands, so a
//! coordinator killed at any point resumes the drill where it was: taking a
//! checkpoint and starting a phase's run are idempotent (fixed names), and
//! the phases' runs resume as every run does.
//!
//! Whatever fails while rolling back, the drill rolls forward at once: the
//! fleet ends where it started. If rolling forward fails, the forward run is
//! left paused for an operator (its stages pause on failure) and the failure
//! is critical.

pub mod admit;
pub mod driver;
pub mod render;
pub mod report;
pub mod schedule;
pub mod scheduler;

use crate::engine::{Corrupt, RunStatus};
use crate::vocabulary::EventKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Checkpoint,
    RollBack,
    RollForward,
    Verify,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checkpoint => "checkpoint",
            Phase::RollBack => "roll-back",
            Phase::RollForward => "roll-forward",
            Phase::Verify => "verify",
            Phase::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Result<Phase, Corrupt> {
        Ok(match text {
            "checkpoint" => Phase::Checkpoint,
            "roll-back" => Phase::RollBack,
            "roll-forward" => Phase::RollForward,
            "verify" => Phase::Verify,
            "done" => Phase::Done,
            other => {
                return Err(Corrupt {
                    what: "drill phase",
                    value: other.to_string(),
                });
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rolled back within the plan's gates, rolled forward, verified.
    Passed,
    /// Something failed; the reason says what and where.
    Failed,
    /// Stopped early and rolled forward: an operator's rollback preempted
    /// it, or a blackout window began.
    Aborted,
    /// Never started (another run on its agents, a blackout, a missed start).
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Aborted => "aborted",
            Verdict::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Result<Option<Verdict>, Corrupt> {
        Ok(Some(match text {
            "" => return Ok(None),
            "passed" => Verdict::Passed,
            "failed" => Verdict::Failed,
            "aborted" => Verdict::Aborted,
            "skipped" => Verdict::Skipped,
            other => {
                return Err(Corrupt {
                    what: "drill verdict",
                    value: other.to_string(),
                });
            }
        }))
    }
}

/// Which of a drill's two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Back,
    Forward,
}

impl Leg {
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Back => "roll back",
            Leg::Forward => "roll forward",
        }
    }
}

/// A drill run's state, as journaled in its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillState {
    pub phase: Phase,
    pub verdict: Option<Verdict>,
    /// What went wrong, in order (empty for a pass).
    pub reason: String,
    /// Why the drill is rolling forward early (empty unless aborting).
    pub abort: String,
    /// Rolling forward failed: the fleet may not be where it started.
    pub critical: bool,
    pub checkpoint_started_ms: Option<u64>,
    pub checkpoint_finished_ms: Option<u64>,
    pub verify_started_ms: Option<u64>,
    pub verify_finished_ms: Option<u64>,
}

impl Default for DrillState {
    fn default() -> DrillState {
        DrillState {
            phase: Phase::Checkpoint,
            verdict: None,
            reason: String::new(),
            abort: String::new(),
            critical: false,
            checkpoint_started_ms: None,
            checkpoint_finished_ms: None,
            verify_started_ms: None,
            verify_finished_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start,
    /// The coordinator restarted and rebuilt this drill from its journal.
    Resumed,
    CheckpointDone(Result<(), String>),
    /// A leg's run exists (created now or before a restart), or it was
    /// refused before anything ran.
    RunStarted {
        leg: Leg,
        outcome: Result<(), String>,
    },
    /// The leg's run paused on a failure; `failure` says where.
    RunPaused {
        leg: Leg,
        failure: String,
    },
    RunEnded {
        leg: Leg,
        status: RunStatus,
        failure: String,
    },
    VerifyDone(Result<(), String>),
    /// Roll forward now: an operator preempted the drill, or a blackout began.
    Abort(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Take (or, after a restart, find) the checkpoint release.
    Checkpoint,
    /// Start (or find) the leg's run; `retry` says it failed to start before.
    StartRun {
        leg: Leg,
        retry: bool,
    },
    /// Follow the leg's run until it pauses or ends.
    WatchRun(Leg),
    /// Cancel the roll-back run (an abort).
    CancelBack,
    /// Verify every target of the plan against the checkpoint.
    Verify,
    /// Journal this event (and notify its subscribers).
    Note {
        kind: EventKind,
        message: String,
    },
    Finished(Verdict),
}

fn note(kind: EventKind, message: impl Into<String>) -> Command {
    Command::Note {
        kind,
        message: message.into(),
    }
}

impl DrillState {
    fn fail(&mut self, why: String) {
        if !self.reason.is_empty() {
            self.reason.push_str("; ");
        }
        self.reason.push_str(&why);
    }

    fn finish(&mut self, verdict: Verdict, out: &mut Vec<Command>) {
        self.phase = Phase::Done;
        self.verdict = Some(verdict);
        let (kind, message) = match verdict {
            Verdict::Passed => (EventKind::DrillPassed, String::new()),
            Verdict::Failed => (EventKind::DrillFailed, self.reason.clone()),
            Verdict::Aborted => (EventKind::DrillAborted, self.abort.clone()),
            Verdict::Skipped => (EventKind::DrillSkipped, self.reason.clone()),
        };
        out.push(note(kind, message));
        out.push(Command::Finished(verdict));
    }

    fn roll_forward(&mut self, out: &mut Vec<Command>) {
        self.phase = Phase::RollForward;
        out.push(note(EventKind::DrillRollingForward, "to the checkpoint"));
        out.push(Command::StartRun {
            leg: Leg::Forward,
            retry: false,
        });
    }
}

/// Apply one event at `now_ms`; return what the shell must do.
pub fn next(state: &mut DrillState, event: Event, now_ms: u64) -> Vec<Command> {
    let mut out = Vec::new();
    if state.phase == Phase::Done {
        return out;
    }
    match event {
        Event::Start => {
            state.phase = Phase::Checkpoint;
            state.checkpoint_started_ms = Some(now_ms);
            out.push(note(EventKind::DrillStarted, ""));
            out.push(Command::Checkpoint);
        }
        Event::Resumed => {
            out.push(note(
                EventKind::DrillRecovered,
                "resumed from the journal after a coordinator restart",
            ));
            match state.phase {
                Phase::Checkpoint => out.push(Command::Checkpoint),
                Phase::RollBack => out.push(Command::StartRun {
                    leg: Leg::Back,
                    retry: false,
                }),
                Phase::RollForward => out.push(Command::StartRun {
                    leg: Leg::Forward,
                    retry: false,
                }),
                Phase::Verify => out.push(Command::Verify),
                Phase::Done => {}
            }
        }
        Event::CheckpointDone(outcome) => {
            if state.phase != Phase::Checkpoint {
                return out;
            }
            state.checkpoint_finished_ms = Some(now_ms);
            match outcome {
                Err(why) => {
                    state.fail(format!("checkpoint: {why}"));
                    state.finish(Verdict::Failed, &mut out);
                }
                // Nothing changed yet: an abort ends the drill here.
                Ok(()) if !state.abort.is_empty() => state.finish(Verdict::Aborted, &mut out),
                Ok(()) => {
                    state.phase = Phase::RollBack;
                    out.push(note(EventKind::DrillRollingBack, ""));
                    out.push(Command::StartRun {
                        leg: Leg::Back,
                        retry: false,
                    });
                }
            }
        }
        Event::RunStarted { leg, outcome } => match (leg, outcome, state.phase) {
            (Leg::Back, Ok(()), Phase::RollBack) => {
                out.push(Command::WatchRun(Leg::Back));
                if !state.abort.is_empty() {
                    out.push(Command::CancelBack);
                }
            }
            (Leg::Back, Err(why), Phase::RollBack) => {
                // Refused before anything ran: there is nothing to undo.
                state.fail(format!("roll back did not start: {why}"));
                state.finish(Verdict::Failed, &mut out);
            }
            (Leg::Forward, Ok(()), Phase::RollForward) => out.push(Command::WatchRun(Leg::Forward)),
            (Leg::Forward, Err(why), Phase::RollForward) => {
                // The fleet is rolled back and cannot be rolled forward yet
                // (e.g. an agent is away): say so loudly, keep trying.
                if !state.critical {
                    state.critical = true;
                    out.push(note(
                        EventKind::DrillPaused,
                        format!(
                            "the roll forward cannot start: {why}; the fleet stays on the release rolled back to until it does (retrying)"
                        ),
                    ));
                }
                out.push(Command::StartRun {
                    leg: Leg::Forward,
                    retry: true,
                });
            }
            _ => {}
        },
        Event::RunPaused { leg, failure } => match leg {
            Leg::Forward if state.phase == Phase::RollForward => {
                state.critical = true;
                if !state.reason.contains("roll forward") {
                    state.fail(format!("roll forward: {failure}"));
                }
                out.push(note(
                    EventKind::DrillPaused,
                    format!(
                        "the roll forward failed and is paused for an operator (`rewind approve` retries it): {failure}"
                    ),
                ));
            }
            // A roll-back run halts on failure rather than pause; if one
            // pauses anyway, the drill does not wait for an operator.
            Leg::Back if state.phase == Phase::RollBack => out.push(Command::CancelBack),
            _ => {}
        },
        Event::RunEnded {
            leg,
            status,
            failure,
        } => match leg {
            Leg::Back if state.phase == Phase::RollBack => {
                if status != RunStatus::Succeeded && state.abort.is_empty() {
                    state.fail(format!("roll back {}: {failure}", status.as_str()));
                }
                state.roll_forward(&mut out);
            }
            Leg::Forward if state.phase == Phase::RollForward => {
                if status == RunStatus::Succeeded {
                    state.phase = Phase::Verify;
                    state.verify_started_ms = Some(now_ms);
                    out.push(Command::Verify);
                } else {
                    state.critical = true;
                    state.fail(format!("roll forward {}: {failure}", status.as_str()));
                    state.finish(Verdict::Failed, &mut out);
                }
            }
            _ => {}
        },
        Event::VerifyDone(outcome) => {
            if state.phase != Phase::Verify {
                return out;
            }
            state.verify_finished_ms = Some(now_ms);
            match outcome {
                Ok(()) => {
                    out.push(note(
                        EventKind::DrillVerified,
                        "every target is on the checkpoint",
                    ));
                    let verdict = if !state.reason.is_empty() {
                        Verdict::Failed
                    } else if !state.abort.is_empty() {
                        Verdict::Aborted
                    } else {
                        Verdict::Passed
                    };
                    state.finish(verdict, &mut out);
                }
                Err(why) => {
                    state.critical = true;
                    state.fail(format!("verify after the roll forward: {why}"));
                    state.finish(Verdict::Failed, &mut out);
                }
            }
        }
        Event::Abort(why) => {
            let early = matches!(state.phase, Phase::Checkpoint | Phase::RollBack);
            if early && state.abort.is_empty() {
                state.abort = why.clone();
                out.push(note(
                    EventKind::DrillAborting,
                    format!("{why}: rolling forward"),
                ));
                if state.phase == Phase::RollBack {
                    out.push(Command::CancelBack);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
