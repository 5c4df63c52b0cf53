//! The thin async shell around a drill run's state machine: journals each
//! step of the machine with its events and notifications before acting on
//! it, takes the checkpoint, starts and follows the two legs' runs,
//! verifies, and resumes every unfinished drill run after a coordinator
//! restart. Whether a drill run may start is `admit`'s.

use super::admit::agents_of;
use super::report;
use super::schedule::Schedule;
use super::{Command, Event, Leg, Phase, next};
use crate::config::{CoordinatorConfig, Role};
use crate::engine::{RunKind, RunStatus};
use crate::launch;
use crate::notify::{self, Notice};
use crate::runner::{Shared, now_ms};
use crate::store::{DrillRunRecord, EventRecord, OutboxRecord, StoreError};
use crate::vocabulary::EventKind;
use rewind_proto::v1::{Action, StepRequest};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often a leg's run is looked at, and a blackout window checked for.
/// The pause before reading a journal that failed to answer again.
const RETRY: Duration = Duration::from_millis(200);
/// The pause before trying again to start a roll forward that was refused.
const FORWARD_RETRY: Duration = Duration::from_secs(10);
/// How long a verify waits for its agent to be connected, and may take.
const VERIFY_PATIENCE: Duration = Duration::from_secs(60);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);

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

pub(super) fn spawn(
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

/// A notice of a drill run's event for subscribers, with the event's own
/// severity unless `critical`.
pub(super) fn drill_notice(
    record: &DrillRunRecord,
    event: EventKind,
    critical: bool,
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
        severity: if critical {
            "critical"
        } else {
            event.severity()
        }
        .to_string(),
        subject_kind: "drill".into(),
        subject_id: record.id.clone(),
        name: record.drill.clone(),
        summary,
        details,
        dedup_key: format!("rewind/drill/{}", record.drill),
        unix_ms,
    }
}

/// The notice a drill's own event sends, if any. A drill paused because its
/// roll forward cannot start, or failed after that, is `critical`.
fn notice_of(record: &DrillRunRecord, kind: EventKind, message: &str, now: u64) -> Option<Notice> {
    let name = &record.drill;
    let (event, critical, summary) = match kind {
        EventKind::DrillStarted => (
            kind,
            false,
            format!(
                "drill {name} started on {}: checkpoint, roll back to {}, roll forward",
                record.env, record.back_to
            ),
        ),
        EventKind::DrillPassed => (kind, false, format!("drill {name} passed")),
        EventKind::DrillFailed => (
            kind,
            record.state.critical,
            format!("drill {name} failed: {message}"),
        ),
        EventKind::DrillPaused => (
            EventKind::DrillFailed,
            true,
            format!("drill {name}: {message}"),
        ),
        EventKind::DrillSlower => (kind, false, format!("drill {name}: {message}")),
        _ => return None,
    };
    Some(drill_notice(record, event, critical, summary, now))
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
        && let Some(e) = events
            .iter()
            .rev()
            .find(|e| e.kind() == Some(EventKind::HealthFailed))
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
                    *kind,
                    message.clone(),
                ));
                if let Some(notice) = notice_of(&record, *kind, message, now) {
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
                    EventKind::DrillSlower,
                    slower.clone(),
                ));
                if let Some(notice) = notice_of(&record, EventKind::DrillSlower, &slower, now) {
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
            crate::metrics::journaled("drill", Some(&record.drill), &event);
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
pub(super) async fn wait_for_agents(shared: &Shared, env: &str) {
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

/// Follow a leg's run: tell the drill when it pauses (each time) and when
/// it ends. The run's record is read again at each of its journaled events
/// (subscribed before the first read, so that none falls between).
async fn watch(shared: &Shared, run_id: &str, leg: Leg, tx: mpsc::Sender<Event>) {
    let mut live = shared.events.subscribe();
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
                // Not a poll: a pause before reading a failing journal again.
                tracing::warn!(run = run_id, "cannot read the journal: {e}");
                tokio::time::sleep(RETRY).await;
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
        if !crate::runner::next_event_of(&mut live, run_id).await {
            return;
        }
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
            step_id: crate::step_id::drill_verify(&record.id, &step.agent, &step.target),
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
