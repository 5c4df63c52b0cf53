//! Whether a drill run starts, and keeping operators and drills apart: a
//! drill does not start in a blackout window, while the same drill still
//! goes on, or while a run touches its agents (a scheduled one is then
//! journaled as skipped, with the reason); an operator's rollback on a
//! drill's agents is refused unless it preempts the drill, which then
//! rolls forward first.

use super::driver::{drill_notice, spawn};
use super::{DrillState, Event, Phase, Verdict};
use crate::config::{CoordinatorConfig, DrillConfig};
use crate::launch::internal;
use crate::notify;
use crate::runner::{Shared, nonce, now_ms};
use crate::store::{DrillRunRecord, EventRecord, ScheduleRecord, StoreError};
use crate::vocabulary::EventKind;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<String>>> {
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
pub(super) async fn agents_of(shared: &Shared, env: &str) -> Result<Vec<String>, StoreError> {
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
        if drill.status() == "paused" {
            // Its roll forward waits for an operator: preempting would wait
            // for the waiting drill.
            return Err(Status::failed_precondition(format!(
                "drill {} (run {}) could not roll forward and waits for an operator on {}: `rewind approve {}` retries its roll forward, `rewind cancel {}` gives it up; then roll back",
                drill.drill,
                drill.id,
                shared_agents.join(", "),
                drill.forward_run,
                drill.forward_run
            )));
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
        // The drill run is read again at each of its journaled events
        // (subscribed before the first read, so that none falls between).
        let mut live = shared.events.subscribe();
        let until = tokio::time::Instant::now() + PREEMPT_PATIENCE;
        loop {
            let now = shared.store.drill_run(&drill.id).await.map_err(internal)?;
            match now {
                Some(d) if d.state.phase != Phase::Done => {
                    let next = crate::runner::next_event_of(&mut live, &drill.id);
                    if !matches!(tokio::time::timeout_at(until, next).await, Ok(true)) {
                        return Err(Status::deadline_exceeded(format!(
                            "drill run {} has not finished rolling forward within {}; nothing was started",
                            drill.id,
                            humantime::format_duration(PREEMPT_PATIENCE)
                        )));
                    }
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
        EventKind::DrillSkipped,
        why.clone(),
    );
    let notice = drill_notice(
        &record,
        EventKind::DrillSkipped,
        false,
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
