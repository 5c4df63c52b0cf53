//! The run engine: a pure state machine. Events (results, ticks, operator
//! requests) go in with the current time; commands (send this step, run
//! these health gates, the run finished) and notes for the journal come out.
//! No I/O, no clock, no network: the async shell in `runner` does those.
//!
//! Ordering: a stage starts when every stage in its `after` has succeeded (or
//! failed under `on_failure = "continue"`). Within a stage, at most
//! `max_parallel` steps are in flight; with a canary, the first `canary`
//! steps run alone and must succeed before the others start. A stage
//! succeeds when all its steps succeeded and its health gates passed.
//!
//! Failures: `halt` stops dispatching everywhere, lets in-flight steps
//! finish, then fails the run and skips what did not start; `continue`
//! records the failure and goes on; `pause` waits for an operator, whose
//! approval retries the failed steps as a new attempt.
//!
//! Attempts: each dispatch of a step has an attempt number; a result counts
//! only for the step's current attempt, so a late result of a superseded
//! attempt is ignored. A step that times out, or is in flight when the run
//! is cancelled, is also cancelled on its agent (which drops it if it has
//! not started acting).
//!
//! Hooks: `before` hooks run one after another ahead of the first stage; a
//! failing one stops the run before any step is sent. `after` hooks run once
//! every stage passed. `finally` hooks always run at the end (success,
//! failure, cancel), each of them even when one before it failed. A hook
//! that is not `optional` and fails makes the run fail. The run's verdict
//! (what its stages and hooks decided) is journaled before the `finally`
//! hooks run, so they see it, and a restart resumes them.
//!
//! Resume: a coordinator restarted mid-run rebuilds the state from the
//! journal (`RunState::from_journal`) and feeds `Event::Resumed`, which
//! restarts the clocks of steps in flight and re-runs the health gates of a
//! stage that was gating.

mod model;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

pub use model::{Corrupt, RunKind, RunStatus, StageStatus, StepWord};

use crate::plan::{HookWhen, OnFailure};
use crate::vocabulary::EventKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    /// Further lines, e.g. a failed smoke test's last output.
    pub details: Vec<String>,
}

/// What a step that succeeded reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub summary: String,
    /// Whether the step changed its target (a restore that found the target
    /// already in place did not).
    pub changed: bool,
    /// Further lines for the report.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStatus {
    Pending,
    Sent { at_ms: u64 },
    Succeeded(Done),
    Failed(Failure),
    Skipped,
}

impl StepStatus {
    pub fn word(&self) -> StepWord {
        match self {
            StepStatus::Pending => StepWord::Pending,
            StepStatus::Sent { .. } => StepWord::Sent,
            StepStatus::Succeeded(_) => StepWord::Succeeded,
            StepStatus::Failed(_) => StepWord::Failed,
            StepStatus::Skipped => StepWord::Skipped,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.word().as_str()
    }

    fn is_terminal(&self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded(_) | StepStatus::Failed(_) | StepStatus::Skipped
        )
    }
}

/// What the engine needs to know about a stage.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    /// Indexes of the stages this one runs after.
    pub after: Vec<usize>,
    pub max_parallel: usize,
    pub canary: usize,
    pub timeout_ms: u64,
    pub on_failure: OnFailure,
    pub has_gates: bool,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub stage: usize,
    pub agent: String,
    pub target: String,
}

#[derive(Debug, Clone)]
pub struct HookSpec {
    pub name: String,
    pub when: HookWhen,
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookStatus {
    Pending,
    Running,
    /// With the hook's answer, e.g. `HTTP 200: {"ok":true}`.
    Succeeded(String),
    Failed(String),
    /// Never run: a `before` hook after a failure, an `after` hook of a run
    /// that did not succeed.
    Skipped,
}

impl HookStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            HookStatus::Pending => "pending",
            HookStatus::Running => "running",
            HookStatus::Succeeded(_) => "succeeded",
            HookStatus::Failed(_) => "failed",
            HookStatus::Skipped => "skipped",
        }
    }

    pub fn answer(&self) -> &str {
        match self {
            HookStatus::Succeeded(a) | HookStatus::Failed(a) => a,
            _ => "",
        }
    }

    fn parse(word: &str, answer: &str) -> Result<HookStatus, Corrupt> {
        Ok(match word {
            "pending" => HookStatus::Pending,
            "running" => HookStatus::Running,
            "succeeded" => HookStatus::Succeeded(answer.to_string()),
            "failed" => HookStatus::Failed(answer.to_string()),
            "skipped" => HookStatus::Skipped,
            other => {
                return Err(Corrupt {
                    what: "hook status",
                    value: other.to_string(),
                });
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct RunState {
    pub stages: Vec<StageSpec>,
    pub steps: Vec<StepSpec>,
    pub stage_status: Vec<StageStatus>,
    pub step_status: Vec<StepStatus>,
    /// The attempt number of each step's latest dispatch (0: never sent).
    pub attempts: Vec<u32>,
    pub status: RunStatus,
    /// A halt-policy failure happened: dispatch nothing more.
    pub halting: bool,
    pub cancelling: bool,
    pub hooks: Vec<HookSpec>,
    pub hook_status: Vec<HookStatus>,
    pub hook_attempts: Vec<u32>,
    /// What the stages decided, once they are over; the `after` and
    /// `finally` hooks run with it, and a failing hook may still turn a
    /// success into a failure.
    pub verdict: Option<RunStatus>,
    /// Steps, stages and hooks changed since the shell last journaled them.
    pub dirty_steps: Vec<usize>,
    pub dirty_stages: Vec<usize>,
    pub dirty_hooks: Vec<usize>,
    /// Each stage's steps, in plan order.
    stage_steps: Vec<Vec<usize>>,
}

pub enum Event {
    /// The run starts (or resumes after a coordinator restart).
    Start,
    StepDone {
        step: usize,
        attempt: u32,
        outcome: Result<Done, Failure>,
    },
    /// A hook's answer, or why it failed (after its retries).
    HookDone {
        hook: usize,
        attempt: u32,
        outcome: Result<String, String>,
    },
    GatesDone {
        stage: usize,
        /// What each passed gate said, or why one failed.
        outcome: Result<Vec<String>, String>,
    },
    /// Time passed: check step timeouts.
    Tick,
    Cancel,
    Approve,
    /// The coordinator restarted and rebuilt this run from its journal.
    Resumed,
}

/// A run as its journal row has it.
pub struct RunRow<'a> {
    pub status: &'a str,
    pub halting: bool,
    pub cancelling: bool,
    /// The journaled verdict, empty while the stages are not over.
    pub verdict: &'a str,
}

/// A hook as its journal row has it.
pub struct HookRow<'a> {
    pub status: &'a str,
    pub attempt: u32,
    pub answer: &'a str,
}

/// A step as its journal row has it.
pub struct StepRow<'a> {
    pub status: &'a str,
    pub attempt: u32,
    pub summary: &'a str,
    pub changed: bool,
    pub error_kind: &'a str,
    pub error_message: &'a str,
    pub details: &'a [String],
}

/// Something worth journaling and showing, e.g. `stage-started`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: EventKind,
    pub stage: Option<usize>,
    pub step: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Journal, then send this attempt of the step to its agent.
    Send {
        step: usize,
        attempt: u32,
    },
    RunGates {
        stage: usize,
    },
    /// Tell the step's agent to drop this attempt if it has not started.
    Cancel {
        step: usize,
        attempt: u32,
    },
    /// Journal, then make this attempt of the hook's call.
    RunHook {
        hook: usize,
        attempt: u32,
    },
    Note(Note),
    Finished(RunStatus),
}

impl RunState {
    pub fn new(stages: Vec<StageSpec>, steps: Vec<StepSpec>) -> RunState {
        let mut stage_steps = vec![Vec::new(); stages.len()];
        for (i, step) in steps.iter().enumerate() {
            stage_steps[step.stage].push(i);
        }
        RunState {
            stage_steps,
            stage_status: vec![StageStatus::Waiting; stages.len()],
            step_status: vec![StepStatus::Pending; steps.len()],
            attempts: vec![0; steps.len()],
            stages,
            steps,
            status: RunStatus::Running,
            halting: false,
            cancelling: false,
            hooks: Vec::new(),
            hook_status: Vec::new(),
            hook_attempts: Vec::new(),
            verdict: None,
            dirty_steps: Vec::new(),
            dirty_stages: Vec::new(),
            dirty_hooks: Vec::new(),
        }
    }

    pub fn with_hooks(mut self, hooks: Vec<HookSpec>) -> RunState {
        self.hook_status = vec![HookStatus::Pending; hooks.len()];
        self.hook_attempts = vec![0; hooks.len()];
        self.hooks = hooks;
        self
    }

    /// Rebuild a run's state from its journal rows. Every status must be
    /// one the engine knows and the rows must fit the plan; steps in flight
    /// get a fresh clock (`now_ms`), since their agents must reconnect first.
    pub fn from_journal(
        fresh: RunState,
        run: &RunRow<'_>,
        stage_rows: &[&str],
        step_rows: &[StepRow<'_>],
        hook_rows: &[HookRow<'_>],
        now_ms: u64,
    ) -> Result<RunState, Corrupt> {
        let RunState {
            stages,
            steps,
            hooks,
            ..
        } = fresh;
        let shape = |what: &'static str, found: usize, wanted: usize| Corrupt {
            what,
            value: format!("{found} rows for {wanted} in the plan"),
        };
        if stage_rows.len() != stages.len() {
            return Err(shape("stage count", stage_rows.len(), stages.len()));
        }
        if step_rows.len() != steps.len() {
            return Err(shape("step count", step_rows.len(), steps.len()));
        }
        if hook_rows.len() != hooks.len() {
            return Err(shape("hook count", hook_rows.len(), hooks.len()));
        }
        let mut state = RunState::new(stages, steps).with_hooks(hooks);
        state.status = RunStatus::parse(run.status)?;
        state.halting = run.halting;
        state.cancelling = run.cancelling;
        state.verdict = match run.verdict {
            "" => None,
            word => Some(RunStatus::parse(word)?),
        };
        for (i, row) in hook_rows.iter().enumerate() {
            state.hook_attempts[i] = row.attempt;
            state.hook_status[i] = HookStatus::parse(row.status, row.answer)?;
        }
        for (i, word) in stage_rows.iter().enumerate() {
            state.stage_status[i] = StageStatus::parse(word)?;
        }
        for (i, row) in step_rows.iter().enumerate() {
            state.attempts[i] = row.attempt;
            state.step_status[i] = match StepWord::parse(row.status)? {
                StepWord::Pending => StepStatus::Pending,
                StepWord::Sent => StepStatus::Sent { at_ms: now_ms },
                StepWord::Succeeded => StepStatus::Succeeded(Done {
                    summary: row.summary.to_string(),
                    changed: row.changed,
                    details: row.details.to_vec(),
                }),
                StepWord::Failed => StepStatus::Failed(Failure {
                    kind: row.error_kind.to_string(),
                    message: row.error_message.to_string(),
                    details: row.details.to_vec(),
                }),
                StepWord::Skipped => StepStatus::Skipped,
            };
        }
        Ok(state)
    }

    fn set_step(&mut self, step: usize, status: StepStatus) {
        self.step_status[step] = status;
        self.dirty_steps.push(step);
    }

    fn set_hook(&mut self, hook: usize, status: HookStatus) {
        self.hook_status[hook] = status;
        self.dirty_hooks.push(hook);
    }

    /// Steps in flight or a hook running: the run cannot end yet.
    fn busy(&self) -> bool {
        self.in_flight() > 0 || self.hook_status.contains(&HookStatus::Running)
    }

    fn set_stage(&mut self, stage: usize, status: StageStatus) {
        self.stage_status[stage] = status;
        self.dirty_stages.push(stage);
    }

    fn steps_of(&self, stage: usize) -> impl Iterator<Item = usize> + '_ {
        self.stage_steps[stage].iter().copied()
    }

    fn in_flight(&self) -> usize {
        self.step_status
            .iter()
            .filter(|s| matches!(s, StepStatus::Sent { .. }))
            .count()
    }
}

fn note(kind: EventKind, stage: Option<usize>, step: Option<usize>, message: String) -> Command {
    Command::Note(Note {
        kind,
        stage,
        step,
        message,
    })
}

/// Apply one event at time `now_ms`; return what the shell must do.
pub fn next(state: &mut RunState, event: Event, now_ms: u64) -> Vec<Command> {
    let mut out = Vec::new();
    if state.status.is_terminal() {
        return out;
    }
    match event {
        Event::Start => out.push(note(EventKind::RunStarted, None, None, String::new())),
        Event::StepDone {
            step,
            attempt,
            outcome,
        } => {
            let current = matches!(state.step_status[step], StepStatus::Sent { .. })
                && state.attempts[step] == attempt;
            if !current {
                // A late or repeated result of an attempt that no longer counts.
                return out;
            }
            let stage = state.steps[step].stage;
            match outcome {
                Ok(done) => {
                    out.push(note(
                        EventKind::StepSucceeded,
                        Some(stage),
                        Some(step),
                        done.summary.clone(),
                    ));
                    state.set_step(step, StepStatus::Succeeded(done));
                }
                Err(failure) => {
                    out.push(note(
                        EventKind::StepFailed,
                        Some(stage),
                        Some(step),
                        format!("{}: {}", failure.kind, failure.message),
                    ));
                    state.set_step(step, StepStatus::Failed(failure));
                }
            }
        }
        Event::HookDone {
            hook,
            attempt,
            outcome,
        } => {
            if state.hook_status[hook] != HookStatus::Running
                || state.hook_attempts[hook] != attempt
            {
                return out;
            }
            let spec = &state.hooks[hook];
            let said = format!("hook {} ({})", spec.name, spec.when.as_str());
            match outcome {
                Ok(answer) => {
                    out.push(note(
                        EventKind::HookSucceeded,
                        None,
                        None,
                        format!("{said}: {answer}"),
                    ));
                    state.set_hook(hook, HookStatus::Succeeded(answer));
                }
                Err(why) => {
                    let optional = if spec.optional { " (optional)" } else { "" };
                    out.push(note(
                        EventKind::HookFailed,
                        None,
                        None,
                        format!("{said}{optional}: {why}"),
                    ));
                    state.set_hook(hook, HookStatus::Failed(why));
                }
            }
        }
        Event::GatesDone { stage, outcome } => {
            if state.stage_status[stage] == StageStatus::Gating {
                match outcome {
                    Ok(passed) => {
                        out.push(note(
                            EventKind::HealthPassed,
                            Some(stage),
                            None,
                            passed.join("\n"),
                        ));
                        out.push(note(
                            EventKind::StageSucceeded,
                            Some(stage),
                            None,
                            String::new(),
                        ));
                        state.set_stage(stage, StageStatus::Succeeded);
                    }
                    Err(message) => {
                        out.push(note(EventKind::HealthFailed, Some(stage), None, message));
                        stage_failed(state, stage, &mut out);
                    }
                }
            }
        }
        Event::Tick => {
            for step in 0..state.steps.len() {
                if let StepStatus::Sent { at_ms } = state.step_status[step] {
                    let stage = state.steps[step].stage;
                    let timeout = state.stages[stage].timeout_ms;
                    if now_ms.saturating_sub(at_ms) > timeout {
                        let failure = Failure {
                            kind: "timeout".into(),
                            message: format!(
                                "no result from agent {} within {}",
                                state.steps[step].agent,
                                humantime::format_duration(std::time::Duration::from_millis(
                                    timeout
                                ))
                            ),
                            details: Vec::new(),
                        };
                        out.push(note(
                            EventKind::StepFailed,
                            Some(stage),
                            Some(step),
                            format!("timeout: {}", failure.message),
                        ));
                        state.set_step(step, StepStatus::Failed(failure));
                        out.push(Command::Cancel {
                            step,
                            attempt: state.attempts[step],
                        });
                    }
                }
            }
        }
        Event::Cancel => {
            if !state.cancelling {
                state.cancelling = true;
                out.push(note(
                    EventKind::RunCancelling,
                    None,
                    None,
                    "no new steps start; steps in flight finish unless their agent has not started them"
                        .into(),
                ));
                for step in 0..state.steps.len() {
                    if matches!(state.step_status[step], StepStatus::Sent { .. }) {
                        out.push(Command::Cancel {
                            step,
                            attempt: state.attempts[step],
                        });
                    }
                }
            }
        }
        Event::Resumed => {
            out.push(note(
                EventKind::RunRecovered,
                None,
                None,
                "resumed from the journal after a coordinator restart".into(),
            ));
            for step in 0..state.steps.len() {
                if let StepStatus::Sent { at_ms } = &mut state.step_status[step] {
                    *at_ms = now_ms;
                }
            }
            for stage in 0..state.stages.len() {
                if state.stage_status[stage] == StageStatus::Gating {
                    out.push(Command::RunGates { stage });
                }
            }
            // A hook cut off by the restart runs again (hooks must be safe
            // to repeat; HTTP hooks carry an idempotency key).
            for hook in 0..state.hooks.len() {
                if state.hook_status[hook] == HookStatus::Running {
                    out.push(Command::RunHook {
                        hook,
                        attempt: state.hook_attempts[hook],
                    });
                }
            }
        }
        Event::Approve => {
            if state.status == RunStatus::Paused {
                for stage in 0..state.stages.len() {
                    if state.stage_status[stage] != StageStatus::Paused {
                        continue;
                    }
                    let failed: Vec<usize> = state
                        .steps_of(stage)
                        .filter(|&s| matches!(state.step_status[s], StepStatus::Failed(_)))
                        .collect();
                    for step in failed {
                        state.set_step(step, StepStatus::Pending);
                    }
                    state.set_stage(stage, StageStatus::Running);
                }
                state.status = RunStatus::Running;
                out.push(note(
                    EventKind::RunResumed,
                    None,
                    None,
                    "retrying the failed steps".into(),
                ));
            }
        }
    }
    pump(state, now_ms, &mut out);
    out
}

/// Start what can start, dispatch what can run, settle what is done.
fn pump(state: &mut RunState, now_ms: u64, out: &mut Vec<Command>) {
    if state.status.is_terminal() {
        return;
    }
    if state.verdict.is_some() {
        return end_hooks(state, out);
    }
    if state.cancelling || (state.halting && state.status == RunStatus::Running) {
        if !state.busy() {
            let status = if state.cancelling {
                RunStatus::Cancelled
            } else {
                RunStatus::Failed
            };
            skip_the_rest(state);
            conclude(state, status, out);
        }
        return;
    }
    if state.status == RunStatus::Paused {
        return;
    }
    match hook_phase(state, HookWhen::Before, out) {
        Phase::Busy => return,
        Phase::Failed => {
            out.push(note(
                EventKind::RunHalting,
                None,
                None,
                "a before hook failed: no stage starts".into(),
            ));
            state.halting = true;
            return pump(state, now_ms, out);
        }
        Phase::Done => {}
    }
    // Start stages whose dependencies are done and run them, until nothing
    // changes (a stage that settles may let the next one start).
    loop {
        let before = state.stage_status.clone();
        start_ready_stages(state, out);
        for stage in 0..state.stages.len() {
            if state.stage_status[stage] == StageStatus::Running {
                run_stage(state, stage, now_ms, out);
                if state.status != RunStatus::Running {
                    return;
                }
            }
        }
        if state.stage_status == before || state.halting {
            break;
        }
    }
    if state.halting {
        // A failure just happened; settle once in-flight steps are done.
        return pump(state, now_ms, out);
    }
    let settled = state.stage_status.iter().all(|s| s.is_settled());
    if settled && state.in_flight() == 0 {
        let failed = state.stage_status.contains(&StageStatus::Failed);
        skip_the_rest(state);
        conclude(
            state,
            if failed {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            },
            out,
        );
    }
}

enum Phase {
    /// A hook of the phase is running (or was just started).
    Busy,
    /// A hook that is not optional failed; the phase's others are skipped.
    Failed,
    Done,
}

/// Run the hooks of one phase one after another. `finally` hooks all run,
/// whatever the ones before them did.
fn hook_phase(state: &mut RunState, when: HookWhen, out: &mut Vec<Command>) -> Phase {
    let mut failed = false;
    for hook in 0..state.hooks.len() {
        if state.hooks[hook].when != when {
            continue;
        }
        match &state.hook_status[hook] {
            HookStatus::Running => return Phase::Busy,
            HookStatus::Failed(_) if !state.hooks[hook].optional => {
                if when != HookWhen::Finally {
                    skip_hooks(state, when);
                    return Phase::Failed;
                }
                failed = true;
            }
            HookStatus::Pending => {
                state.hook_attempts[hook] += 1;
                let attempt = state.hook_attempts[hook];
                state.set_hook(hook, HookStatus::Running);
                out.push(note(
                    EventKind::HookStarted,
                    None,
                    None,
                    format!("hook {} ({})", state.hooks[hook].name, when.as_str()),
                ));
                out.push(Command::RunHook { hook, attempt });
                return Phase::Busy;
            }
            _ => {}
        }
    }
    if failed { Phase::Failed } else { Phase::Done }
}

/// Skip the pending hooks of a phase; whether there were any.
fn skip_hooks(state: &mut RunState, when: HookWhen) -> bool {
    let mut skipped = false;
    for hook in 0..state.hooks.len() {
        if state.hooks[hook].when == when && state.hook_status[hook] == HookStatus::Pending {
            state.set_hook(hook, HookStatus::Skipped);
            skipped = true;
        }
    }
    skipped
}

/// The stages are over: journal the verdict, then run the closing hooks.
fn conclude(state: &mut RunState, verdict: RunStatus, out: &mut Vec<Command>) {
    state.verdict = Some(verdict);
    skip_hooks(state, HookWhen::Before);
    if verdict != RunStatus::Succeeded {
        skip_hooks(state, HookWhen::After);
    }
    end_hooks(state, out);
}

/// `after` hooks (a succeeded run), then every `finally` hook, then the end.
fn end_hooks(state: &mut RunState, out: &mut Vec<Command>) {
    if state.hook_status.contains(&HookStatus::Running) {
        return;
    }
    let mut verdict = state.verdict.unwrap_or(RunStatus::Failed);
    if verdict == RunStatus::Succeeded {
        if state.cancelling && skip_hooks(state, HookWhen::After) {
            verdict = RunStatus::Cancelled;
            state.verdict = Some(verdict);
        }
        match hook_phase(state, HookWhen::After, out) {
            Phase::Busy => return,
            Phase::Failed => {
                verdict = RunStatus::Failed;
                state.verdict = Some(verdict);
            }
            Phase::Done => {}
        }
    }
    match hook_phase(state, HookWhen::Finally, out) {
        Phase::Busy => return,
        Phase::Failed if verdict == RunStatus::Succeeded => verdict = RunStatus::Failed,
        Phase::Failed => {}
        Phase::Done => {}
    }
    finish(state, verdict, out);
}

fn start_ready_stages(state: &mut RunState, out: &mut Vec<Command>) {
    for stage in 0..state.stages.len() {
        if state.stage_status[stage] != StageStatus::Waiting {
            continue;
        }
        let ready = state.stages[stage]
            .after
            .iter()
            .all(|&dep| match state.stage_status[dep] {
                StageStatus::Succeeded => true,
                StageStatus::Failed => state.stages[dep].on_failure == OnFailure::Continue,
                _ => false,
            });
        if ready {
            state.set_stage(stage, StageStatus::Running);
            out.push(note(
                EventKind::StageStarted,
                Some(stage),
                None,
                String::new(),
            ));
        }
    }
}

fn run_stage(state: &mut RunState, stage: usize, now_ms: u64, out: &mut Vec<Command>) {
    let steps: Vec<usize> = state.steps_of(stage).collect();
    let (max_parallel, canary, on_failure) = {
        let spec = &state.stages[stage];
        (spec.max_parallel, spec.canary, spec.on_failure)
    };
    let failed = steps
        .iter()
        .any(|&s| matches!(state.step_status[s], StepStatus::Failed(_)));
    let blocking_failure = failed && on_failure != OnFailure::Continue;
    // A halt that an earlier stage began in this same pass sends nothing more.
    if !blocking_failure && !state.halting {
        let canaries = &steps[..canary.min(steps.len())];
        let canaries_done = canaries
            .iter()
            .all(|&s| matches!(state.step_status[s], StepStatus::Succeeded(_)));
        let eligible: Vec<usize> = if canaries_done {
            steps.clone()
        } else {
            canaries.to_vec()
        };
        let mut in_flight = steps
            .iter()
            .filter(|&&s| matches!(state.step_status[s], StepStatus::Sent { .. }))
            .count();
        for step in eligible {
            if in_flight >= max_parallel {
                break;
            }
            if state.step_status[step] == StepStatus::Pending {
                state.attempts[step] += 1;
                let attempt = state.attempts[step];
                state.set_step(step, StepStatus::Sent { at_ms: now_ms });
                out.push(Command::Send { step, attempt });
                in_flight += 1;
            }
        }
    }
    let in_flight = steps
        .iter()
        .any(|&s| matches!(state.step_status[s], StepStatus::Sent { .. }));
    if in_flight {
        return;
    }
    let all_done = steps.iter().all(|&s| state.step_status[s].is_terminal());
    if !(all_done || blocking_failure) {
        return;
    }
    if failed {
        stage_failed(state, stage, out);
    } else if state.stages[stage].has_gates {
        state.set_stage(stage, StageStatus::Gating);
        out.push(Command::RunGates { stage });
    } else {
        state.set_stage(stage, StageStatus::Succeeded);
        out.push(note(
            EventKind::StageSucceeded,
            Some(stage),
            None,
            String::new(),
        ));
    }
}

fn stage_failed(state: &mut RunState, stage: usize, out: &mut Vec<Command>) {
    match state.stages[stage].on_failure {
        OnFailure::Halt => {
            state.set_stage(stage, StageStatus::Failed);
            out.push(note(
                EventKind::StageFailed,
                Some(stage),
                None,
                "halting the run".into(),
            ));
            state.halting = true;
        }
        OnFailure::Continue => {
            state.set_stage(stage, StageStatus::Failed);
            out.push(note(
                EventKind::StageFailed,
                Some(stage),
                None,
                "continuing (on_failure = continue)".into(),
            ));
        }
        OnFailure::Pause => {
            state.set_stage(stage, StageStatus::Paused);
            state.status = RunStatus::Paused;
            out.push(note(
                EventKind::RunPaused,
                Some(stage),
                None,
                "waiting for `rewind approve` (retry) or `rewind cancel`".into(),
            ));
        }
    }
}

fn skip_the_rest(state: &mut RunState) {
    skip_hooks(state, HookWhen::Before);
    for step in 0..state.steps.len() {
        if state.step_status[step] == StepStatus::Pending {
            state.set_step(step, StepStatus::Skipped);
        }
    }
    for stage in 0..state.stages.len() {
        if matches!(
            state.stage_status[stage],
            StageStatus::Waiting | StageStatus::Running | StageStatus::Paused
        ) {
            state.set_stage(stage, StageStatus::Skipped);
        }
    }
}

fn finish(state: &mut RunState, status: RunStatus, out: &mut Vec<Command>) {
    state.status = status;
    let kind = match status {
        RunStatus::Succeeded => EventKind::RunSucceeded,
        RunStatus::Cancelled => EventKind::RunCancelled,
        _ => EventKind::RunFailed,
    };
    out.push(note(kind, None, None, String::new()));
    out.push(Command::Finished(status));
}
