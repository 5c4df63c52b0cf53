//! The thin async shell around a drill run's state machine: starts drill
//! runs (or records why one did not start), journals each step of the
//! machine with its events and notifications before acting on it, takes the
//! checkpoint, starts and follows the two legs' runs, verifies, and resumes
//! every unfinished drill run after a coordinator restart.
//!
//! It also keeps operators and drills apart: a drill does not start while a
//! run touches its agents, and an operator's rollback on a drill's agents
//! is refused unless it preempts the drill, which then rolls forward first.

use super::report;
use super::schedule::Schedule;
use super::{Command, DrillState, Event, Leg, Phase, Verdict, next};
use crate::config::{CoordinatorConfig, DrillConfig, Role};
use crate::engine::{RunKind, RunStatus};
use crate::launch::{self, internal};
use crate::notify::{self, Notice};
use crate::runner::{Shared, nonce, now_ms};
use crate::store::{DrillRunRecord, EventRecord, OutboxRecord, ScheduleRecord, StoreError};
use rewind_proto::v1::{Action, StepRequest};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// How often a leg's run is looked at, and a blackout window checked for.
const POLL: Duration = Duration::from_millis(200);
/// The pause before trying again to start a roll forward that was refused.
const FORWARD_RETRY: Duration = Duration::from_secs(10);
/// How long a verify waits for its agent to be connected, and may take.
const VERIFY_PATIENCE: Duration = Duration::from_secs(60);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an operator's preempting rollback waits for the drill to roll forward.
const PREEMPT_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// The drill runs this coordinator drives, by id: what to tell them.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, mpsc::Sender<String>>>,
    /// Held while a drill run starts: the checks for runs and drills in
    /// its way and its journaling are one step.
    starting: tokio::sync::Mutex<()>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<String>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask a drill run to abort (roll forward now); false if it is not driven here.
    fn abort(&self, id: &str, why: String) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|tx| tx.try_send(why).is_ok())
    }
}

/// The agents of an environment, as the coordinator last saw them.
async fn agents_of(shared: &Shared, env: &str) -> Result<Vec<String>, StoreError> {
    Ok(shared
        .store
        .agents()
        .await?
        .into_iter()
        .filter(|a| a.labels.get("env").map(String::as_str) == Some(env))
        .map(|a| a.name)
        .collect())
}

/// Before an operator's run on `agents`: refuse if a drill rehearses on
/// any of them, or, with `preempt`, have the drill roll forward and wait
/// until it has.
pub async fn clear_the_way(
    shared: &Arc<Shared>,
    agents: &[String],
    preempt: bool,
    operator: &str,
) -> Result<(), Status> {
    for drill in shared
        .store
        .unfinished_drill_runs()
        .await
        .map_err(internal)?
    {
        let theirs = agents_of(shared, &drill.env).await.map_err(internal)?;
        let shared_agents: Vec<&str> = agents
            .iter()
            .filter(|a| theirs.contains(a))
            .map(String::as_str)
            .collect();
        if shared_agents.is_empty() {
            continue;
        }
        if !preempt {
            return Err(Status::failed_precondition(format!(
                "drill {} (run {}, phase {}) is rehearsing on {}: its roll forward would undo this rollback. \
                 Wait for it (`rewind drill history {}`), or pass --preempt-drill to roll it forward first",
                drill.drill,
                drill.id,
                drill.state.phase.as_str(),
                shared_agents.join(", "),
                drill.drill
            )));
        }
        let why = format!("preempted by operator {operator}");
        if !shared.drills.abort(&drill.id, why) {
            return Err(Status::unavailable(format!(
                "drill run {} is not driven by this coordinator yet; try again in a moment",
                drill.id
            )));
        }
        tracing::info!(
            drill = drill.drill,
            run = drill.id,
            operator,
            "drill preempted"
        );
        let until = tokio::time::Instant::now() + PREEMPT_PATIENCE;
        loop {
            let now = shared.store.drill_run(&drill.id).await.map_err(internal)?;
            match now {
                Some(d) if d.state.phase != Phase::Done => {
                    if tokio::time::Instant::now() >= until {
                        return Err(Status::deadline_exceeded(format!(
                            "drill run {} has not finished rolling forward within {}; nothing was started",
                            drill.id,
                            humantime::format_duration(PREEMPT_PATIENCE)
                        )));
                    }
                    tokio::time::sleep(POLL).await;
                }
                _ => break,
            }
        }
    }
    Ok(())
}

/// Why a drill may not start now, if it may not: a blackout window, the
/// same drill still going, or a run on its agents.
async fn in_the_way(
    shared: &Shared,
    drill: &DrillConfig,
    now_ms: u64,
) -> Result<Option<String>, StoreError> {
    let now = chrono::DateTime::from_timestamp_millis(now_ms as i64).unwrap_or_default();
    if let Some(window) = drill.schedule.blackout_at(now) {
        return Ok(Some(format!("not started: {window}")));
    }
    let theirs = agents_of(shared, &drill.env).await?;
    for other in shared.store.unfinished_drill_runs().await? {
        let overlap = other.drill == drill.name
            || agents_of(shared, &other.env)
                .await?
                .iter()
                .any(|a| theirs.contains(a));
        if overlap {
            return Ok(Some(format!(
                "not started: drill {} (run {}) is still rehearsing on these agents",
                other.drill, other.id
            )));
        }
    }
    let mut busy: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in shared.store.busy_agents().await? {
        if theirs.contains(&b.agent) {
            busy.entry(format!(
                "run {} (plan {}, started by {})",
                b.run_id, b.plan, b.started_by
            ))
            .or_default()
            .push(b.agent);
        }
    }
    if let Some((run, agents)) = busy.into_iter().next() {
        return Ok(Some(format!(
            "not started: {run} is active on {}",
            agents.join(", ")
        )));
    }
    Ok(None)
}

/// The release a drill rolls back to: its `to`, or the newest release of
/// its environment (or of the whole fleet) recorded before now that is not
/// a drill's own checkpoint.
async fn release_before(
    shared: &Shared,
    drill: &DrillConfig,
    to: Option<String>,
) -> Result<Result<String, String>, StoreError> {
    if let Some(to) = to.or_else(|| drill.to.clone()) {
        return Ok(match shared.store.release(&to).await? {
            Some(_) => Ok(to),
            None => Err(format!("no release {to} (see `rewind releases`)")),
        });
    }
    let newest = shared
        .store
        .releases()
        .await?
        .into_iter()
        .filter(|r| !r.name.starts_with("drill/") && (r.env == drill.env || r.env.is_empty()))
        .max_by_key(|r| r.created_ms);
    Ok(newest.map(|r| r.name).ok_or_else(|| {
        format!(
            "no release of environment {} to roll back to: record one with `rewind checkpoint <release> --env {}`",
            drill.env, drill.env
        )
    }))
}

/// What starting a drill run came to.
pub enum Started {
    Running(String),
    /// It did not start, for this reason (a scheduled start records it as skipped).
    Refused(String),
}

pub fn record_for(
    drill: &DrillConfig,
    trigger: &str,
    due_ms: Option<u64>,
    now: u64,
) -> DrillRunRecord {
    let id = format!("drill-{now}-{}", nonce());
    let stamp = chrono::DateTime::from_timestamp_millis(now as i64)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%SZ");
    DrillRunRecord {
        back_run: format!("{id}-back"),
        forward_run: format!("{id}-forward"),
        id,
        drill: drill.name.clone(),
        trigger: trigger.to_string(),
        due_ms,
        env: drill.env.clone(),
        plan_name: drill.plan.name.clone(),
        plan_path: drill.plan_path.display().to_string(),
        plan_toml: drill.plan_toml.clone(),
        confirm_data_loss: drill.confirm_data_loss,
        rto_target_ms: drill.rto.as_millis() as u64,
        checkpoint: format!("drill/{}/{stamp}", drill.name),
        back_to: String::new(),
        state: DrillState::default(),
        started_ms: now,
        finished_ms: None,
    }
}

/// Start a drill run now, or say why not. A scheduled start passes its
/// schedule's row (with the occurrence it fires for), journaled with the
/// run or with its skip in one transaction.
pub async fn start(
    shared: &Arc<Shared>,
    config: &Arc<CoordinatorConfig>,
    drill: &DrillConfig,
    trigger: &str,
    schedule: Option<&ScheduleRecord>,
    to: Option<String>,
) -> Result<Started, StoreError> {
    let _one_at_a_time = shared.drills.starting.lock().await;
    let now = now_ms();
    let mut record = record_for(drill, trigger, schedule.and_then(|s| s.last_due_ms), now);
    let refusal = if shared.is_draining() {
        Some("not started: the coordinator is stopping".to_string())
    } else {
        match in_the_way(shared, drill, now).await? {
            Some(why) => Some(why),
            None => match release_before(shared, drill, to).await? {
                Ok(release) => {
                    record.back_to = release;
                    None
                }
                Err(why) => Some(format!("not started: {why}")),
            },
        }
    };
    if let Some(why) = refusal {
        if let Some(schedule) = schedule {
            skip(shared, record, schedule, why.clone()).await?;
        }
        return Ok(Started::Refused(why));
    }
    shared
        .store
        .create_drill_run(&record, schedule, &[], &[])
        .await?;
    let id = record.id.clone();
    tracing::info!(drill = drill.name, run = id, trigger, "drill started");
    spawn(
        shared.clone(),
        config.clone(),
        record,
        Some(drill.schedule.clone()),
        0,
        Event::Start,
    );
    Ok(Started::Running(id))
}

/// Journal a scheduled occurrence that did not run, with its reason.
pub async fn skip(
    shared: &Shared,
    mut record: DrillRunRecord,
    schedule: &ScheduleRecord,
    why: String,
) -> Result<(), StoreError> {
    record.state.phase = Phase::Done;
    record.state.verdict = Some(Verdict::Skipped);
    record.state.reason = why.clone();
    record.finished_ms = Some(record.started_ms);
    let event = EventRecord::whole(
        &record.id,
        1,
        record.started_ms,
        "drill-skipped",
        why.clone(),
    );
    let notice = drill_notice(
        &record,
        "drill-skipped",
        "warning",
        format!("drill {} skipped: {why}", record.drill),
        record.started_ms,
    );
    let outbox = notify::rows(&shared.webhooks, 1, &notice);
    tracing::warn!(drill = record.drill, "scheduled drill skipped: {why}");
    shared
        .store
        .create_drill_run(&record, Some(schedule), &[event], &outbox)
        .await?;
    shared.outbox_ready.notify_waiters();
    Ok(())
}

/// Resume every drill run left unfinished by a previous coordinator.
pub async fn resume_all(
    shared: &Arc<Shared>,
    config: &Arc<CoordinatorConfig>,
) -> Result<usize, StoreError> {
    let runs = shared.store.unfinished_drill_runs().await?;
    let count = runs.len();
    for record in runs {
        tracing::info!(
            drill = record.drill,
            run = record.id,
            "resuming a drill after a restart"
        );
        let schedule = config.drills.get(&record.drill).map(|d| d.schedule.clone());
        let seq = shared.store.next_event_seq(&record.id).await? - 1;
        spawn(
            shared.clone(),
            config.clone(),
            record,
            schedule,
            seq,
            Event::Resumed,
        );
    }
    Ok(count)
}

fn spawn(
    shared: Arc<Shared>,
    config: Arc<CoordinatorConfig>,
    record: DrillRunRecord,
    schedule: Option<Schedule>,
    seq: u64,
    first: Event,
) {
    let (tx, rx) = mpsc::channel(16);
    shared.drills.lock().insert(record.id.clone(), tx);
    tokio::spawn(drive(shared, config, record, schedule, seq, first, rx));
}

/// A notice of a drill run's event for subscribers.
fn drill_notice(
    record: &DrillRunRecord,
    event: &str,
    severity: &str,
    summary: String,
    unix_ms: u64,
) -> Notice {
    let mut details: BTreeMap<String, String> = [
        ("env", record.env.clone()),
        ("plan", record.plan_name.clone()),
        ("trigger", record.trigger.clone()),
        ("checkpoint", record.checkpoint.clone()),
        ("back_to", record.back_to.clone()),
        ("report", format!("rewind drill report {}", record.id)),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !record.state.reason.is_empty() {
        details.insert("reason".into(), record.state.reason.clone());
    }
    Notice {
        event: event.to_string(),
        severity: severity.to_string(),
        subject_kind: "drill".into(),
        subject_id: record.id.clone(),
        name: record.drill.clone(),
        summary,
        details,
        dedup_key: format!("rewind/drill/{}", record.drill),
        unix_ms,
    }
}

/// The notice a drill's own event sends, if any.
fn notice_of(record: &DrillRunRecord, kind: &str, message: &str, now: u64) -> Option<Notice> {
    let name = &record.drill;
    let (event, severity, summary) = match kind {
        "drill-started" => (
            "drill-started",
            "info",
            format!(
                "drill {name} started on {}: checkpoint, roll back to {}, roll forward",
                record.env, record.back_to
            ),
        ),
        "drill-passed" => ("drill-passed", "info", format!("drill {name} passed")),
        "drill-failed" => (
            "drill-failed",
            if record.state.critical {
                "critical"
            } else {
                "error"
            },
            format!("drill {name} failed: {message}"),
        ),
        "drill-paused" => (
            "drill-failed",
            "critical",
            format!("drill {name}: {message}"),
        ),
        "drill-slower" => (
            "drill-slower",
            "warning",
            format!("drill {name}: {message}"),
        ),
        _ => return None,
    };
    Some(drill_notice(record, event, severity, summary, now))
}

/// The failure of a run in one line: its first failed step (stage, host,
/// target, error), else its failed hook, else its status.
async fn failure_of(shared: &Shared, run_id: &str, status: &str) -> String {
    let stages = shared.store.stages(run_id).await.unwrap_or_default();
    if let Ok(steps) = shared.store.steps(run_id).await
        && let Some(step) = steps.iter().find(|s| s.status == "failed")
    {
        let stage = stages.get(step.stage).map_or("?", |s| s.name.as_str());
        return format!(
            "stage {stage} host {} target {}: {}: {}",
            step.agent, step.target, step.error_kind, step.error_message
        );
    }
    if let Ok(hooks) = shared.store.hooks(run_id).await
        && let Some(hook) = hooks.iter().find(|h| h.status == "failed")
    {
        return format!("hook {} ({}): {}", hook.name, hook.phase, hook.answer);
    }
    if let Ok(events) = shared.store.events_after(run_id, 0).await
        && let Some(e) = events.iter().rev().find(|e| e.kind == "health-failed")
    {
        return format!("stage {} health gate: {}", e.stage, e.message);
    }
    format!("the run {status}")
}

async fn drive(
    shared: Arc<Shared>,
    config: Arc<CoordinatorConfig>,
    mut record: DrillRunRecord,
    schedule: Option<Schedule>,
    mut seq: u64,
    first: Event,
    mut aborts: mpsc::Receiver<String>,
) {
    let (tx, mut rx) = mpsc::channel::<Event>(16);
    let mut events = vec![first];
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        let now = now_ms();
        let mut commands = Vec::new();
        for event in events.drain(..) {
            commands.extend(next(&mut record.state, event, now));
        }
        let mut journal = Vec::new();
        let mut outbox: Vec<OutboxRecord> = Vec::new();
        for command in &commands {
            if let Command::Note { kind, message } = command {
                seq += 1;
                journal.push(EventRecord::whole(
                    &record.id,
                    seq,
                    now,
                    kind,
                    message.clone(),
                ));
                if let Some(notice) = notice_of(&record, kind, message, now) {
                    outbox.extend(notify::rows(&shared.webhooks, seq, &notice));
                }
            }
        }
        let finished = commands.iter().any(|c| matches!(c, Command::Finished(_)));
        if finished {
            record.finished_ms = Some(now);
            // The comparison with earlier passes goes with the verdict.
            if let Some(slower) = slower(&shared, &record).await {
                seq += 1;
                journal.push(EventRecord::whole(
                    &record.id,
                    seq,
                    now,
                    "drill-slower",
                    slower.clone(),
                ));
                if let Some(notice) = notice_of(&record, "drill-slower", &slower, now) {
                    outbox.extend(notify::rows(&shared.webhooks, seq, &notice));
                }
            }
        }
        let mut delay = Duration::from_millis(100);
        while let Err(e) = shared
            .store
            .persist_drill(
                &record.id,
                &record.state,
                record.finished_ms,
                &journal,
                &outbox,
            )
            .await
        {
            tracing::error!(run = record.id, "cannot journal the drill, retrying: {e}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        if !outbox.is_empty() {
            shared.outbox_ready.notify_waiters();
        }
        for event in journal {
            let _ = shared.events.send(event);
        }
        for command in commands {
            match command {
                Command::Checkpoint => {
                    let (shared, tx, record) = (shared.clone(), tx.clone(), record.clone());
                    tokio::spawn(async move {
                        let by = format!("drill:{}", record.drill);
                        wait_for_agents(&shared, &record.env).await;
                        let outcome =
                            launch::checkpoint(&shared, &record.checkpoint, &record.env, &by, true)
                                .await
                                .map(|_| ())
                                .map_err(|s| s.message().to_string());
                        // A coordinator that stops leaves the phase to the next one.
                        if !shared.is_draining() {
                            let _ = tx.send(Event::CheckpointDone(outcome)).await;
                        }
                    });
                }
                Command::StartRun { leg, retry } => {
                    let (shared, config, tx, record) =
                        (shared.clone(), config.clone(), tx.clone(), record.clone());
                    tokio::spawn(async move {
                        if retry {
                            tokio::time::sleep(FORWARD_RETRY).await;
                        }
                        let outcome = start_leg(&shared, &config, &record, leg).await;
                        if !shared.is_draining() {
                            let _ = tx.send(Event::RunStarted { leg, outcome }).await;
                        }
                    });
                }
                Command::WatchRun(leg) => {
                    let (shared, tx) = (shared.clone(), tx.clone());
                    let run_id = leg_run(&record, leg).to_string();
                    tokio::spawn(async move { watch(&shared, &run_id, leg, tx).await });
                }
                Command::CancelBack => {
                    shared
                        .fleet
                        .to_run(&record.back_run, crate::fleet::RunInput::Cancel)
                        .await;
                }
                Command::Verify => {
                    let (shared, tx, record) = (shared.clone(), tx.clone(), record.clone());
                    tokio::spawn(async move {
                        let outcome = verify(&shared, &record).await;
                        let _ = tx.send(Event::VerifyDone(outcome)).await;
                    });
                }
                Command::Finished(verdict) => {
                    tracing::info!(
                        drill = record.drill,
                        run = record.id,
                        "drill {}",
                        verdict.as_str()
                    );
                }
                Command::Note { .. } => {}
            }
        }
        if finished {
            shared.drills.lock().remove(&record.id);
            return;
        }
        tokio::select! {
            Some(event) = rx.recv() => events.push(event),
            Some(why) = aborts.recv() => events.push(Event::Abort(why)),
            _ = interval.tick() => {
                let rolling_back = matches!(record.state.phase, Phase::Checkpoint | Phase::RollBack);
                let at = chrono::DateTime::from_timestamp_millis(now_ms() as i64).unwrap_or_default();
                if rolling_back
                    && record.state.abort.is_empty()
                    && let Some(window) = schedule.as_ref().and_then(|s| s.blackout_at(at))
                {
                    events.push(Event::Abort(format!("a blackout window began: {window}")));
                }
            }
        }
    }
}

/// Wait (bounded) for an environment's agents to be connected: after a
/// coordinator restart they take a few seconds to come back.
async fn wait_for_agents(shared: &Shared, env: &str) {
    if let Ok(agents) = agents_of(shared, env).await {
        for agent in agents {
            shared.fleet.wait_for(&agent, VERIFY_PATIENCE).await;
        }
    }
}

fn leg_run(record: &DrillRunRecord, leg: Leg) -> &str {
    match leg {
        Leg::Back => &record.back_run,
        Leg::Forward => &record.forward_run,
    }
}

/// Start a leg's run, or find it started (before a restart).
async fn start_leg(
    shared: &Arc<Shared>,
    config: &CoordinatorConfig,
    record: &DrillRunRecord,
    leg: Leg,
) -> Result<(), String> {
    let id = leg_run(record, leg);
    match shared.store.run(id).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    wait_for_agents(shared, &record.env).await;
    let (release, kind) = match leg {
        Leg::Back => (record.back_to.clone(), RunKind::DrillBack),
        Leg::Forward => (record.checkpoint.clone(), RunKind::DrillForward),
    };
    launch::start_run(
        shared,
        config,
        launch::Start {
            plan_toml: record.plan_toml.clone(),
            plan_path: record.plan_path.clone(),
            release,
            confirm_data_loss: record.confirm_data_loss,
            force: false,
            approved: HashMap::new(),
            by: format!("drill:{}", record.drill),
            role: Role::Operator,
            kind,
            id: Some(id.to_string()),
            drill_run: record.id.clone(),
            env: Some(record.env.clone()),
            preempt_drill: false,
        },
    )
    .await
    .map(|_| ())
    .map_err(|s| s.message().to_string())
}

/// Follow a leg's run: tell the drill when it pauses (each time) and when it ends.
async fn watch(shared: &Shared, run_id: &str, leg: Leg, tx: mpsc::Sender<Event>) {
    let mut paused = false;
    loop {
        let run = match shared.store.run(run_id).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                let _ = tx
                    .send(Event::RunEnded {
                        leg,
                        status: RunStatus::Failed,
                        failure: format!("run {run_id} is not in the journal"),
                    })
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(run = run_id, "cannot read the journal: {e}");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        match RunStatus::parse(&run.status) {
            Ok(status) if status.is_terminal() => {
                let failure = if status == RunStatus::Succeeded {
                    String::new()
                } else {
                    failure_of(shared, run_id, status.as_str()).await
                };
                let _ = tx
                    .send(Event::RunEnded {
                        leg,
                        status,
                        failure,
                    })
                    .await;
                return;
            }
            Ok(RunStatus::Paused) if !paused => {
                paused = true;
                let failure = failure_of(shared, run_id, "paused").await;
                let _ = tx.send(Event::RunPaused { leg, failure }).await;
            }
            Ok(RunStatus::Running) => paused = false,
            Ok(_) => {}
            Err(e) => {
                let _ = tx
                    .send(Event::RunEnded {
                        leg,
                        status: RunStatus::Failed,
                        failure: e.to_string(),
                    })
                    .await;
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every target the roll forward restored, verified against the checkpoint.
async fn verify(shared: &Shared, record: &DrillRunRecord) -> Result<(), String> {
    let steps = shared
        .store
        .steps(&record.forward_run)
        .await
        .map_err(|e| e.to_string())?;
    let snapshots = shared
        .store
        .snapshots(&record.checkpoint)
        .await
        .map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for step in steps.iter().filter(|s| s.action == "restore") {
        if seen.contains(&(&step.agent, &step.target)) {
            continue;
        }
        seen.push((&step.agent, &step.target));
        let Some(snapshot) = snapshots
            .iter()
            .find(|s| s.agent == step.agent && s.target == step.target)
        else {
            failures.push(format!(
                "{} {}: no snapshot in the checkpoint",
                step.agent, step.target
            ));
            continue;
        };
        shared.fleet.wait_for(&step.agent, VERIFY_PATIENCE).await;
        let request = StepRequest {
            step_id: format!(
                "{}/verify/{}/{}/{}",
                record.id,
                step.agent,
                step.target,
                nonce()
            ),
            attempt: 1,
            target: step.target.clone(),
            action: Action::Verify as i32,
            snapshot: Some(crate::runner::snapshot_of(snapshot)),
            ..Default::default()
        };
        let said = crate::hooks::one_off(&shared.fleet, &step.agent, request, VERIFY_TIMEOUT).await;
        if let Err(e) = said {
            failures.push(format!("host {} target {}: {e}", step.agent, step.target));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// If this run's roll back took more than 20 % longer than the median of
/// the drill's last 5 passes, a sentence saying so.
async fn slower(shared: &Shared, record: &DrillRunRecord) -> Option<String> {
    let rto = report::rto_of(&shared.store, record).await.ok().flatten()?;
    let earlier = report::earlier_rtos(&shared.store, record).await.ok()?;
    let comparison = report::compare(rto, &earlier)?;
    comparison.slower.then(|| comparison.sentence(rto))
}
