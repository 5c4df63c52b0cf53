//! The thin async shell around the run engine: feeds it results, operator
//! requests and ticks; journals what changed in one transaction per batch;
//! only then sends the steps it dispatched; runs health gates; broadcasts
//! events to watchers. A coordinator restarted mid-run resumes every run
//! from its journal.
//!
//! A result or progress report counts only when it comes from the agent its
//! step was sent to; anything else is refused and counted (see `Fleet`).
//! While the coordinator stops (`Shared::draining`), nothing new is sent:
//! steps the engine dispatches are journaled as sent and delivered by the
//! next coordinator when their agents reconnect.

use crate::config::WebhookConfig;
use crate::engine::{
    self, Command, Corrupt, Done, Event, Failure, HookRow, HookSpec, RunKind, RunRow, RunState,
    StageSpec, StepRow, StepSpec, StepStatus,
};
use crate::fleet::{Fleet, RUN_QUEUE, RunInput};
use crate::health;
use crate::hooks;
use crate::notify::{self, Notice};
use crate::plan::OnFailure;
use crate::plan::{Gate, HookCall, Plan, StepAction, StepPlan};
use crate::store::{
    self, EventRecord, HookRecord, RunRecord, SnapshotRecord, StageRecord, StepRecord, Store,
    StoreError,
};
use crate::vocabulary::EventKind;
use rewind_proto::v1::{Action, Snapshot, StepRequest, StepResult, step_result};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

const TICK: Duration = Duration::from_millis(250);
/// How long a verify gate waits for its agent to be connected.
const GATE_PATIENCE: Duration = Duration::from_secs(60);
/// The longest a smoke check may run.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const MAX_BATCH: usize = 4096;

/// What every part of the coordinator shares.
pub struct Shared {
    pub store: Store,
    pub fleet: Arc<Fleet>,
    /// Journaled run events (and, with seq 0, progress) for watchers.
    pub events: broadcast::Sender<EventRecord>,
    /// The coordinator is stopping: no step is sent, no run starts.
    pub draining: AtomicBool,
    /// Where events are delivered (`[notifications.*]`).
    pub webhooks: Vec<WebhookConfig>,
    /// Woken when notifications were journaled.
    pub outbox_ready: tokio::sync::Notify,
    /// The drills in progress, for operators' runs that preempt them.
    pub drills: crate::drill::admit::Registry,
    /// What plans may reach and name (`[plans]`).
    pub plans: Arc<crate::config::PlanAccess>,
}

impl Shared {
    pub fn new(
        store: Store,
        webhooks: Vec<WebhookConfig>,
        plans: crate::config::PlanAccess,
    ) -> Shared {
        let (events, _) = broadcast::channel(1 << 16);
        Shared {
            store,
            fleet: Arc::new(Fleet::default()),
            events,
            draining: AtomicBool::new(false),
            webhooks,
            outbox_ready: tokio::sync::Notify::new(),
            drills: Default::default(),
            plans: Arc::new(plans),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// A random id part that cannot be guessed (64 bits, hex).
pub fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A run's fixed facts: its plan and what each step sends.
struct RunContext {
    run_id: String,
    plan: Plan,
    step_ids: Vec<String>,
    requests: Vec<StepRequest>,
    index: HashMap<String, usize>,
    /// What an agent hook sends (None for HTTP hooks), by hook index.
    hook_requests: Vec<Option<StepRequest>>,
    /// What a smoke check sends, by stage, in gate order.
    smoke_requests: Vec<Vec<StepRequest>>,
    facts: hooks::Facts,
    kind: RunKind,
}

impl RunContext {
    /// The step `step_id` names, if `from` is the agent it was sent to;
    /// anything else is refused, logged and counted.
    fn accepts(
        &self,
        fleet: &Fleet,
        state: &RunState,
        from: &str,
        step_id: &str,
        what: &str,
    ) -> Option<usize> {
        let Some(&step) = self.index.get(step_id) else {
            fleet.refuse(
                from,
                &format!("{what}-for-unknown-step"),
                &format!(
                    "a {what} for step {step_id}, which run {} does not have",
                    self.run_id
                ),
            );
            return None;
        };
        if state.steps[step].agent != from {
            fleet.refuse(
                from,
                &format!("{what}-from-other-agent"),
                &format!(
                    "a {what} for step {step_id}, which was sent to agent {}",
                    state.steps[step].agent
                ),
            );
            return None;
        }
        Some(step)
    }
}

impl RunContext {
    /// What a journaled event of this run tells subscribers, if anything:
    /// rollbacks' start, pause and end (a drill's legs are told by the
    /// drill's own events).
    fn notice(&self, event: &EventRecord) -> Option<(u64, Notice)> {
        let kind = event.kind()?;
        if self.kind != RunKind::Rollback
            || !matches!(
                kind,
                EventKind::RunStarted
                    | EventKind::RunSucceeded
                    | EventKind::RunFailed
                    | EventKind::RunPaused
            )
        {
            return None;
        }
        let summary = match kind {
            EventKind::RunStarted => format!(
                "rolling back to {} with plan {}",
                self.facts.release, self.facts.plan
            ),
            EventKind::RunSucceeded => format!(
                "rolled back to {} with plan {}",
                self.facts.release, self.facts.plan
            ),
            EventKind::RunPaused => format!(
                "the rollback to {} is paused for an operator (stage {}): {}",
                self.facts.release, event.stage, event.message
            ),
            _ => format!(
                "the rollback to {} with plan {} failed",
                self.facts.release, self.facts.plan
            ),
        };
        let details = [
            ("release", self.facts.release.clone()),
            ("plan", self.facts.plan.clone()),
            ("started_by", self.facts.started_by.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Some((
            event.seq,
            Notice {
                event: kind.as_str().into(),
                severity: kind.severity().into(),
                subject_kind: "run".into(),
                subject_id: self.run_id.clone(),
                name: self.facts.plan.clone(),
                summary,
                details,
                dedup_key: format!("rewind/plan/{}", self.facts.plan),
                unix_ms: event.unix_ms,
            },
        ))
    }
}

fn action_of(action: StepAction) -> Action {
    match action {
        StepAction::Restore => Action::Restore,
        StepAction::Restart => Action::Restart,
        StepAction::Verify => Action::Verify,
    }
}

/// A release's snapshots by agent and target (a plan of thousands of
/// steps looks each up once).
pub fn snapshot_index(
    snapshots: &[SnapshotRecord],
) -> std::collections::HashMap<(&str, &str), &SnapshotRecord> {
    snapshots
        .iter()
        .map(|s| ((s.agent.as_str(), s.target.as_str()), s))
        .collect()
}

pub fn snapshot_of(record: &SnapshotRecord) -> Snapshot {
    Snapshot {
        data: record.data.clone(),
        summary: record.summary.clone(),
        taken_at: record.taken_at,
    }
}

/// The engine's stages of a plan; a drill's legs have their own failure
/// policy whatever the plan says (see `RunKind`).
fn stage_specs(plan: &Plan, kind: RunKind) -> Vec<StageSpec> {
    let policy = |plan: OnFailure| match kind {
        RunKind::Rollback => plan,
        RunKind::DrillBack => OnFailure::Halt,
        RunKind::DrillForward => OnFailure::Pause,
    };
    plan.stages
        .iter()
        .map(|stage| StageSpec {
            name: stage.name.clone(),
            after: stage
                .after
                .iter()
                .filter_map(|a| plan.stages.iter().position(|s| &s.name == a))
                .collect(),
            max_parallel: 0,
            canary: stage.canary,
            timeout_ms: stage.timeout.as_millis() as u64,
            on_failure: policy(stage.on_failure),
            has_gates: !stage.health.is_empty(),
        })
        .collect()
}

/// Build the context and the engine's fresh state for a resolved plan. A
/// new run's step ids are made here (`ids` None): readable, with a part
/// that cannot be guessed; a resumed run's come from its journal.
fn build(
    run: &RunRecord,
    plan: &Plan,
    resolved: &[Vec<StepPlan>],
    snapshots: &[SnapshotRecord],
    ids: Option<&[String]>,
) -> Result<(RunContext, RunState), String> {
    let kind = RunKind::parse(&run.kind).map_err(|e| e.to_string())?;
    let mut stages = stage_specs(plan, kind);
    let by_target = snapshot_index(snapshots);
    let mut steps = Vec::new();
    let mut step_ids = Vec::new();
    let mut requests = Vec::new();
    for (stage_index, stage_steps) in resolved.iter().enumerate() {
        let stage = &plan.stages[stage_index];
        stages[stage_index].max_parallel = stage.max_parallel.of(stage_steps.len());
        for step in stage_steps {
            let snapshot = by_target
                .get(&(step.agent.as_str(), step.target.as_str()))
                .copied();
            if snapshot.is_none() && stage.action != StepAction::Restart {
                return Err(format!(
                    "{}:{}: stage {}: release {} has no snapshot of target {} on agent {}",
                    plan.path, stage.line, stage.name, run.release, step.target, step.agent
                ));
            }
            let id = match ids {
                Some(ids) => ids.get(step_ids.len()).cloned().ok_or_else(|| {
                    format!("run {}: the journal has fewer steps than its plan", run.id)
                })?,
                None => crate::step_id::stage_step(&run.id, &stage.name, &step.agent, &step.target),
            };
            requests.push(StepRequest {
                run_id: run.id.clone(),
                step_id: id.clone(),
                attempt: 0,
                target: step.target.clone(),
                action: action_of(stage.action) as i32,
                snapshot: snapshot.map(snapshot_of),
                confirm_data_loss: run.confirm_data_loss,
                force: run.force,
                parts: Vec::new(),
            });
            step_ids.push(id);
            steps.push(StepSpec {
                stage: stage_index,
                agent: step.agent.clone(),
                target: step.target.clone(),
            });
        }
    }
    let index = step_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i))
        .collect();
    // Smoke checks and agent hooks: a one-off request each, with the
    // release's snapshot of their target where the action needs it.
    let one_off = |agent: &str,
                   target: &str,
                   action: StepAction,
                   parts: &[String],
                   id: String,
                   line: usize,
                   what: &str|
     -> Result<StepRequest, String> {
        let snapshot = by_target.get(&(agent, target)).copied();
        if snapshot.is_none() && action == StepAction::Verify {
            return Err(format!(
                "{}:{line}: {what}: release {} has no snapshot of target {target} on agent {agent}, which its verify needs",
                plan.path, run.release
            ));
        }
        Ok(StepRequest {
            run_id: String::new(),
            step_id: id,
            attempt: 1,
            target: target.to_string(),
            action: action_of(action) as i32,
            snapshot: snapshot.map(snapshot_of),
            confirm_data_loss: false,
            force: false,
            parts: parts.to_vec(),
        })
    };
    let mut smoke_requests = Vec::new();
    for stage in &plan.stages {
        let mut requests = Vec::new();
        for gate in &stage.health {
            if let Gate::Target { agent, target } = gate {
                requests.push(one_off(
                    agent,
                    target,
                    StepAction::Verify,
                    &[],
                    crate::step_id::smoke(&run.id, &stage.name, agent, target),
                    stage.line,
                    &format!("stage {}: smoke check", stage.name),
                )?);
            }
        }
        smoke_requests.push(requests);
    }
    let mut hook_requests = Vec::new();
    for hook in &plan.hooks {
        hook_requests.push(match &hook.call {
            HookCall::Http(_) => None,
            HookCall::Agent {
                agent,
                target,
                action,
                parts,
            } => Some(one_off(
                agent,
                target,
                *action,
                parts,
                crate::step_id::hook(&run.id, &hook.name),
                hook.line,
                &format!("hook {}", hook.name),
            )?),
        });
    }
    let hook_specs = plan
        .hooks
        .iter()
        .map(|h| HookSpec {
            name: h.name.clone(),
            when: h.when,
            optional: h.optional,
        })
        .collect();
    let context = RunContext {
        run_id: run.id.clone(),
        plan: plan.clone(),
        step_ids,
        requests,
        index,
        hook_requests,
        smoke_requests,
        facts: hooks::Facts {
            run: run.id.clone(),
            release: run.release.clone(),
            plan: plan.name.clone(),
            started_by: run.started_by.clone(),
            verdict: "running".into(),
        },
        kind,
    };
    Ok((context, RunState::new(stages, steps).with_hooks(hook_specs)))
}

/// Journal a new run and start driving it.
/// `windows` gives, per step in plan order, the data-loss window its
/// preview announced (None for steps that lose no data).
pub async fn start(
    shared: Arc<Shared>,
    run: RunRecord,
    plan: Plan,
    resolved: Vec<Vec<StepPlan>>,
    snapshots: Vec<SnapshotRecord>,
    windows: Vec<Option<u64>>,
) -> Result<(), StartError> {
    let (context, state) =
        build(&run, &plan, &resolved, &snapshots, None).map_err(StartError::Plan)?;
    let stages: Vec<StageRecord> = plan
        .stages
        .iter()
        .enumerate()
        .map(|(idx, s)| StageRecord {
            idx,
            name: s.name.clone(),
            status: "waiting".into(),
            started_ms: None,
            finished_ms: None,
        })
        .collect();
    let steps: Vec<StepRecord> = state
        .steps
        .iter()
        .enumerate()
        .map(|(idx, s)| StepRecord {
            idx,
            id: context.step_ids[idx].clone(),
            stage: s.stage,
            agent: s.agent.clone(),
            target: s.target.clone(),
            action: plan.stages[s.stage].action.as_str().into(),
            status: "pending".into(),
            attempt: 0,
            summary: String::new(),
            changed: false,
            error_kind: String::new(),
            error_message: String::new(),
            started_ms: None,
            finished_ms: None,
            data_loss_window: windows.get(idx).copied().flatten(),
            details: Vec::new(),
        })
        .collect();
    let hooks: Vec<HookRecord> = plan
        .hooks
        .iter()
        .enumerate()
        .map(|(idx, h)| HookRecord {
            idx,
            name: h.name.clone(),
            phase: h.when.as_str().into(),
            status: "pending".into(),
            attempt: 0,
            answer: String::new(),
            started_ms: None,
            finished_ms: None,
        })
        .collect();
    shared
        .store
        .create_run(&run, &stages, &steps, &hooks)
        .await
        .map_err(StartError::Store)?;
    spawn_driver(shared, context, state, 0, Event::Start);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Plan(String),
    #[error(transparent)]
    Store(StoreError),
}

/// Resume every run that was running or paused when the coordinator
/// stopped. A run whose journal cannot be read is not resumed: the error is
/// logged and journaled as a `run-unreadable` event for `rewind status`.
pub async fn resume_all(shared: Arc<Shared>) -> Result<usize, StoreError> {
    let runs = shared.store.unfinished_runs().await?;
    let mut resumed = 0;
    for run in runs {
        match rebuild(&shared, &run).await? {
            Ok((context, state, seq)) => {
                tracing::info!(run = run.id, "resuming after a coordinator restart");
                spawn_driver(shared.clone(), context, state, seq, Event::Resumed);
                resumed += 1;
            }
            Err(why) => {
                tracing::error!(run = run.id, "cannot resume: {why}");
                let seq = shared
                    .store
                    .events_after(&run.id, 0)
                    .await?
                    .last()
                    .map_or(0, |e| e.seq);
                let event = EventRecord::whole(
                    &run.id,
                    seq + 1,
                    now_ms(),
                    EventKind::RunUnreadable,
                    format!("the coordinator cannot resume this run: {why}"),
                );
                shared.store.append_events(&[event]).await?;
            }
        }
    }
    Ok(resumed)
}

/// A run's context and state from its journal, or why it cannot be read.
async fn rebuild(
    shared: &Shared,
    run: &RunRecord,
) -> Result<Result<(RunContext, RunState, u64), String>, StoreError> {
    let plan = match crate::plan::parse(&run.plan_toml, &run.plan_path) {
        Ok(plan) => plan,
        Err(e) => return Ok(Err(format!("its plan no longer parses: {e}"))),
    };
    let step_records = shared.store.steps(&run.id).await?;
    let stage_records = shared.store.stages(&run.id).await?;
    let snapshots = shared.store.snapshots(&run.release).await?;
    let mut resolved = vec![Vec::new(); plan.stages.len()];
    for step in &step_records {
        let Some(stage) = resolved.get_mut(step.stage) else {
            return Ok(Err(format!(
                "step {} belongs to stage {}, which its plan does not have",
                step.id, step.stage
            )));
        };
        stage.push(StepPlan {
            agent: step.agent.clone(),
            target: step.target.clone(),
        });
    }
    let ids: Vec<String> = step_records.iter().map(|s| s.id.clone()).collect();
    let (context, fresh) = match build(run, &plan, &resolved, &snapshots, Some(&ids)) {
        Ok(built) => built,
        Err(e) => return Ok(Err(e)),
    };
    let stage_words: Vec<&str> = stage_records.iter().map(|s| s.status.as_str()).collect();
    let step_rows: Vec<StepRow<'_>> = step_records
        .iter()
        .map(|s| StepRow {
            status: &s.status,
            attempt: s.attempt,
            summary: &s.summary,
            changed: s.changed,
            error_kind: &s.error_kind,
            error_message: &s.error_message,
            details: &s.details,
        })
        .collect();
    let hook_records = shared.store.hooks(&run.id).await?;
    let hook_rows: Vec<HookRow<'_>> = hook_records
        .iter()
        .map(|h| HookRow {
            status: &h.status,
            attempt: h.attempt,
            answer: &h.answer,
        })
        .collect();
    let state = RunState::from_journal(
        fresh,
        &RunRow {
            status: &run.status,
            halting: run.halting,
            cancelling: run.cancelling,
            verdict: &run.verdict,
        },
        &stage_words,
        &step_rows,
        &hook_rows,
        now_ms(),
    );
    let state = match state {
        Ok(state) => state,
        Err(Corrupt { what, value }) => {
            return Ok(Err(format!(
                "the journal holds {what} `{value}`, which this coordinator does not know"
            )));
        }
    };
    let seq = shared
        .store
        .events_after(&run.id, 0)
        .await?
        .last()
        .map_or(0, |e| e.seq);
    Ok(Ok((context, state, seq)))
}

fn spawn_driver(shared: Arc<Shared>, context: RunContext, state: RunState, seq: u64, first: Event) {
    let (tx, rx) = mpsc::channel(RUN_QUEUE);
    shared.fleet.register_run(&context.run_id, tx.clone());
    tokio::spawn(drive(shared, context, state, seq, first, rx, tx));
}

fn outcome_of(result: &StepResult) -> Result<Done, Failure> {
    let recovered = if result.recovered {
        " (recovered after an agent restart)"
    } else {
        ""
    };
    let unchanged = |summary: String| Done {
        summary,
        changed: false,
        details: Vec::new(),
    };
    match &result.outcome {
        Some(step_result::Outcome::Done(outcome)) => Ok(Done {
            summary: format!("{}{recovered}", outcome.summary),
            changed: outcome.changed,
            details: outcome.details.clone(),
        }),
        Some(step_result::Outcome::Captured(captured)) => Ok(unchanged(captured.summary.clone())),
        Some(step_result::Outcome::Preview(preview)) => {
            Ok(unchanged(format!("{} changes", preview.changes.len())))
        }
        Some(step_result::Outcome::Error(error)) => Err(Failure {
            kind: error.kind.clone(),
            message: error.message.clone(),
            details: Vec::new(),
        }),
        None => Err(Failure {
            kind: "protocol".into(),
            message: "the agent sent a result without an outcome".into(),
            details: Vec::new(),
        }),
    }
}

async fn drive(
    shared: Arc<Shared>,
    context: RunContext,
    mut state: RunState,
    mut seq: u64,
    first: Event,
    mut rx: mpsc::Receiver<RunInput>,
    tx: mpsc::Sender<RunInput>,
) {
    let run_id = context.run_id.clone();
    let mut interval = tokio::time::interval(TICK);
    let mut events_in = vec![first];
    let mut buffered: Vec<RunInput> = Vec::new();
    loop {
        let now = now_ms();
        let mut commands = Vec::new();
        let mut reconnected = Vec::new();
        let mut progress = Vec::new();
        for event in events_in.drain(..) {
            commands.extend(engine::next(&mut state, event, now));
        }
        let mut inputs = std::mem::take(&mut buffered);
        while inputs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(input) => inputs.push(input),
                Err(_) => break,
            }
        }
        for input in inputs {
            let event = match input {
                RunInput::Result { from, result } => {
                    let Some(step) =
                        context.accepts(&shared.fleet, &state, &from, &result.step_id, "result")
                    else {
                        continue;
                    };
                    Event::StepDone {
                        step,
                        attempt: result.attempt,
                        outcome: outcome_of(&result),
                    }
                }
                RunInput::Progress { from, progress: p } => {
                    if let Some(step) =
                        context.accepts(&shared.fleet, &state, &from, &p.step_id, "progress")
                        && state.attempts[step] == p.attempt
                        && matches!(state.step_status[step], StepStatus::Sent { .. })
                    {
                        progress.push(EventRecord {
                            run_id: run_id.clone(),
                            seq: 0,
                            unix_ms: now,
                            kind: EventKind::StepProgress.as_str().into(),
                            stage: state.stages[state.steps[step].stage].name.clone(),
                            agent: state.steps[step].agent.clone(),
                            target: state.steps[step].target.clone(),
                            step_id: p.step_id.clone(),
                            message: match p.percent {
                                Some(percent) => format!("{} ({percent}%)", p.detail),
                                None => p.detail.clone(),
                            },
                        });
                    }
                    continue;
                }
                RunInput::AgentConnected(agent) => {
                    reconnected.push(agent);
                    continue;
                }
                RunInput::Cancel => Event::Cancel,
                RunInput::Approve => Event::Approve,
                RunInput::GatesDone { stage, outcome } => Event::GatesDone { stage, outcome },
                RunInput::HookDone {
                    hook,
                    attempt,
                    outcome,
                } => Event::HookDone {
                    hook,
                    attempt,
                    outcome,
                },
            };
            commands.extend(engine::next(&mut state, event, now));
        }

        let mut journal = Vec::new();
        for command in &commands {
            match command {
                Command::Note(note) => {
                    seq += 1;
                    journal.push(store::event_of(
                        &run_id,
                        seq,
                        now,
                        note,
                        &state,
                        &context.step_ids,
                    ));
                }
                Command::Send { step, attempt } => {
                    seq += 1;
                    let spec = &state.steps[*step];
                    journal.push(EventRecord {
                        run_id: run_id.clone(),
                        seq,
                        unix_ms: now,
                        kind: EventKind::StepSent.as_str().into(),
                        stage: state.stages[spec.stage].name.clone(),
                        agent: spec.agent.clone(),
                        target: spec.target.clone(),
                        step_id: context.step_ids[*step].clone(),
                        message: format!("attempt {attempt}"),
                    });
                }
                _ => {}
            }
        }
        let outbox: Vec<_> = journal
            .iter()
            .filter_map(|event| context.notice(event))
            .flat_map(|(seq, notice)| notify::rows(&shared.webhooks, seq, &notice))
            .collect();
        // Journal before anything leaves: a step is sent only once its
        // dispatch is durable.
        let mut delay = Duration::from_millis(100);
        while let Err(e) = shared
            .store
            .persist(&run_id, &mut state, &journal, &outbox, now)
            .await
        {
            tracing::error!(run = run_id, "cannot journal the run, retrying: {e}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        if !outbox.is_empty() {
            shared.outbox_ready.notify_waiters();
        }
        for event in &journal {
            crate::metrics::journaled(context.kind.as_str(), None, event);
        }
        for event in journal.into_iter().chain(progress) {
            let _ = shared.events.send(event);
        }
        let mut finished = false;
        // While the coordinator stops, nothing leaves: what the engine
        // dispatched is journaled and the next coordinator sends it.
        let draining = shared.is_draining();
        for command in commands {
            match command {
                Command::Send { step, attempt } => {
                    if draining {
                        continue;
                    }
                    let mut request = context.requests[step].clone();
                    request.attempt = attempt;
                    shared.fleet.send_step(&state.steps[step].agent, request);
                }
                Command::Cancel { step, attempt } => {
                    shared.fleet.cancel_step(
                        &state.steps[step].agent,
                        &run_id,
                        &context.step_ids[step],
                        attempt,
                    );
                }
                Command::RunGates { stage } => {
                    let gates = context.plan.stages[stage].health.clone();
                    let targets: Vec<(String, StepRequest)> = state
                        .steps
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.stage == stage)
                        .map(|(i, s)| (s.agent.clone(), context.requests[i].clone()))
                        .collect();
                    let smoke = context.smoke_requests[stage].clone();
                    let fleet = shared.fleet.clone();
                    let access = shared.plans.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let outcome = run_gates(&fleet, &access, &gates, targets, smoke).await;
                        let _ = tx.send(RunInput::GatesDone { stage, outcome }).await;
                    });
                }
                Command::RunHook { hook, attempt } => {
                    if draining {
                        // The next coordinator runs it again when it resumes the run.
                        continue;
                    }
                    let spec = context.plan.hooks[hook].clone();
                    let request = context.hook_requests[hook].clone();
                    let mut facts = context.facts.clone();
                    if let Some(verdict) = state.verdict {
                        facts.verdict = verdict.as_str().into();
                    }
                    let fleet = shared.fleet.clone();
                    let access = shared.plans.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let outcome = hooks::run(&fleet, &access, &spec, &facts, request).await;
                        let _ = tx
                            .send(RunInput::HookDone {
                                hook,
                                attempt,
                                outcome,
                            })
                            .await;
                    });
                }
                Command::Finished(_) => finished = true,
                Command::Note(_) => {}
            }
        }
        for agent in reconnected.into_iter().filter(|_| !draining) {
            for (step, spec) in state.steps.iter().enumerate() {
                if spec.agent == agent && matches!(state.step_status[step], StepStatus::Sent { .. })
                {
                    if state.cancelling {
                        // Never deliver after a cancel: ask for the outcome,
                        // which is `cancelled` if the step never reached it.
                        shared.fleet.cancel_step(
                            &agent,
                            &run_id,
                            &context.step_ids[step],
                            state.attempts[step],
                        );
                        continue;
                    }
                    let mut request = context.requests[step].clone();
                    request.attempt = state.attempts[step];
                    shared.fleet.send_step(&agent, request);
                }
            }
        }
        if finished {
            shared.fleet.unregister_run(&run_id);
            return;
        }
        tokio::select! {
            Some(input) = rx.recv() => buffered.push(input),
            _ = interval.tick() => events_in.push(Event::Tick),
        }
    }
}

/// Run a stage's health gates in order; the first failure fails them.
async fn run_gates(
    fleet: &Fleet,
    access: &crate::config::PlanAccess,
    gates: &[Gate],
    steps: Vec<(String, StepRequest)>,
    smoke: Vec<StepRequest>,
) -> Result<Vec<String>, String> {
    let mut passed = Vec::new();
    let mut smoke = smoke.into_iter();
    for gate in gates {
        match gate {
            Gate::Http {
                url,
                status,
                body,
                within,
            } => {
                // Checked again here: a run resumed after the configuration
                // changed calls only what it allows now.
                access.check_url(url)?;
                health::http_gate(url, *status, body.as_deref(), *within).await?;
                passed.push(format!("GET {url}: {status}"));
            }
            Gate::Target { agent, target } => {
                let said = format!("smoke check {target} on {agent}");
                let Some(request) = smoke.next() else {
                    return Err(format!("{said}: no request was built"));
                };
                let answer = hooks::one_off(fleet, agent, request, SMOKE_TIMEOUT)
                    .await
                    .map_err(|e| format!("{said}: {e}"))?;
                passed.push(format!("{said}: {answer}"));
            }
            Gate::Verify => {
                for (agent, request) in &steps {
                    // After a coordinator restart the gates run again at
                    // once: give the agents time to reconnect.
                    fleet.wait_for(agent, GATE_PATIENCE).await;
                    let verify = StepRequest {
                        run_id: String::new(),
                        step_id: crate::step_id::verify_of(&request.step_id),
                        attempt: 1,
                        action: Action::Verify as i32,
                        ..request.clone()
                    };
                    let result = fleet
                        .request(agent, verify, Duration::from_secs(300))
                        .await?;
                    if let Err(failure) = outcome_of(&result) {
                        return Err(format!(
                            "verify of {} on {agent}: {}: {}",
                            request.target, failure.kind, failure.message
                        ));
                    }
                    passed.push(format!("verify of {} on {agent}", request.target));
                }
            }
        }
    }
    Ok(passed)
}

/// Wait for the next journaled event of run (or drill run) `id` on the
/// live channel: by then the journal holds what it changed. True also when
/// the channel lagged (something may have been missed: read the journal
/// again); false when the channel closed (the coordinator is stopping).
pub async fn next_event_of(live: &mut broadcast::Receiver<EventRecord>, id: &str) -> bool {
    loop {
        match live.recv().await {
            // seq 0: progress, never journaled.
            Ok(e) if e.run_id == id && e.seq != 0 => return true,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

#[cfg(test)]
mod properties {
    //! Whatever an agent sends, the coordinator's handling of it never
    //! panics: decoding, reading an outcome, routing with any ids.
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use rewind_proto::v1::{AgentMessage, agent_message};

    proptest! {
        #[test]
        fn any_agent_message_is_handled_without_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            from in "[a-z0-9-]{0,8}",
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let fleet = Fleet::default();
                if let Ok(AgentMessage { body: Some(body) }) = AgentMessage::decode(bytes.as_slice()) {
                    match body {
                        agent_message::Body::Result(result) => {
                            let _ = outcome_of(&result);
                            fleet.route_result(&from, result).await;
                        }
                        agent_message::Body::Progress(progress) => fleet.route_progress(&from, progress),
                        agent_message::Body::Hello(hello) => {
                            for result in hello.finished {
                                fleet.route_result(&from, result).await;
                            }
                        }
                        agent_message::Body::Heartbeat(_) => {}
                    }
                }
            });
        }
    }
}
