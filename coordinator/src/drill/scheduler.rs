//! The drills' scheduler: a loop that asks each drill's schedule what to do
//! now (`Schedule::decide`, pure), starts the drill or journals why it was
//! skipped, and notices when a drill's evidence went stale. Each occurrence
//! is fired or skipped once: the occurrence is journaled with the drill run
//! (or its skip) in one transaction, and a restarted coordinator reads it
//! back before it decides anything.

use super::Verdict;
use super::admit::{self, Started};
use crate::config::{CoordinatorConfig, DrillConfig};
use crate::notify::{self, Notice};
use crate::runner::{Shared, now_ms};
use crate::store::{EventRecord, ScheduleRecord, StoreError};
use crate::vocabulary::EventKind;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often schedules are looked at (patterns may name seconds).
const TICK: Duration = Duration::from_millis(250);
/// How often each drill's freshness is looked at.
const STALE_CHECK: Duration = Duration::from_secs(5);

fn utc(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// Whether a drill's evidence is stale at `now_ms`: its last pass (or, if
/// it never passed, the time it was first scheduled) is older than
/// `fresh_for`.
pub fn is_stale(
    last_pass_ms: Option<u64>,
    since_ms: u64,
    fresh_for: Duration,
    now_ms: u64,
) -> bool {
    now_ms.saturating_sub(last_pass_ms.unwrap_or(since_ms)) > fresh_for.as_millis() as u64
}

/// The end of a drill's newest passing run, and that run's id.
pub async fn last_pass(shared: &Shared, drill: &str) -> Result<Option<(u64, String)>, StoreError> {
    Ok(shared
        .store
        .drill_runs(drill, 1000)
        .await?
        .into_iter()
        .find(|r| r.state.verdict == Some(Verdict::Passed))
        .and_then(|r| Some((r.finished_ms?, r.id))))
}

/// Each drill's journaled schedule, recorded now for drills seen for the
/// first time (or whose pattern changed): their past occurrences were
/// never missed.
pub async fn schedules(
    shared: &Shared,
    config: &CoordinatorConfig,
) -> Result<BTreeMap<String, ScheduleRecord>, StoreError> {
    let mut known: BTreeMap<String, ScheduleRecord> = shared
        .store
        .schedules()
        .await?
        .into_iter()
        .map(|s| (s.drill.clone(), s))
        .collect();
    for drill in config.drills.values() {
        let fresh = known
            .get(&drill.name)
            .is_none_or(|s| s.pattern != drill.pattern);
        if fresh {
            let record = ScheduleRecord {
                drill: drill.name.clone(),
                pattern: drill.pattern.clone(),
                since_ms: now_ms(),
                last_due_ms: None,
                stale_notified: known
                    .get(&drill.name)
                    .map(|s| s.stale_notified.clone())
                    .unwrap_or_default(),
            };
            shared.store.save_schedule(&record, &[], &[]).await?;
            known.insert(drill.name.clone(), record);
        }
    }
    Ok(known)
}

/// Run the scheduler until the coordinator stops.
pub async fn run(shared: Arc<Shared>, config: Arc<CoordinatorConfig>) {
    if config.drills.is_empty() {
        return;
    }
    let mut known = loop {
        match schedules(&shared, &config).await {
            Ok(known) => break known,
            Err(e) => {
                tracing::error!("drill scheduler: cannot read the schedules, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut stale_checked = tokio::time::Instant::now() - STALE_CHECK;
    let mut interval = tokio::time::interval(TICK);
    loop {
        interval.tick().await;
        if shared.is_draining() {
            return;
        }
        for drill in config.drills.values() {
            let Some(record) = known.get(&drill.name).cloned() else {
                continue;
            };
            match fire_or_skip(&shared, &config, drill, record).await {
                Ok(Some(updated)) => {
                    known.insert(drill.name.clone(), updated);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(drill = drill.name, "drill scheduler: {e}"),
            }
        }
        if stale_checked.elapsed() >= STALE_CHECK {
            stale_checked = tokio::time::Instant::now();
            for drill in config.drills.values() {
                let Some(record) = known.get(&drill.name).cloned() else {
                    continue;
                };
                match notice_stale(&shared, drill, record).await {
                    Ok(Some(updated)) => {
                        known.insert(drill.name.clone(), updated);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(drill = drill.name, "drill scheduler: {e}"),
                }
            }
        }
    }
}

/// Start, or journal as skipped, the occurrence that is due; the schedule
/// as journaled then (None: nothing was due).
async fn fire_or_skip(
    shared: &Arc<Shared>,
    config: &Arc<CoordinatorConfig>,
    drill: &DrillConfig,
    record: ScheduleRecord,
) -> Result<Option<ScheduleRecord>, StoreError> {
    use super::schedule::Decision;
    let decision = drill.schedule.decide(
        Utc::now(),
        record.last_due_ms.map(utc),
        utc(record.since_ms),
    );
    let (due, trigger) = match decision {
        Decision::Wait { .. } => return Ok(None),
        Decision::Fire { due, catch_up } => (due, if catch_up { "catch-up" } else { "schedule" }),
        Decision::Skip { due, reason } => {
            let updated = ScheduleRecord {
                last_due_ms: Some(due.timestamp_millis() as u64),
                ..record
            };
            admit::skip(
                shared,
                admit::record_for(drill, "schedule", updated.last_due_ms, now_ms()),
                &updated,
                reason,
            )
            .await?;
            return Ok(Some(updated));
        }
    };
    let updated = ScheduleRecord {
        last_due_ms: Some(due.timestamp_millis() as u64),
        ..record
    };
    match admit::start(shared, config, drill, trigger, Some(&updated), None).await? {
        Started::Running(id) => tracing::info!(
            drill = drill.name,
            run = id,
            trigger,
            "scheduled drill started"
        ),
        Started::Refused(why) => {
            tracing::warn!(drill = drill.name, "scheduled drill skipped: {why}")
        }
    }
    Ok(Some(updated))
}

/// Journal (and notify) once per pass that a drill's evidence went stale.
async fn notice_stale(
    shared: &Shared,
    drill: &DrillConfig,
    record: ScheduleRecord,
) -> Result<Option<ScheduleRecord>, StoreError> {
    let pass = last_pass(shared, &drill.name).await?;
    let now = now_ms();
    if !is_stale(
        pass.as_ref().map(|p| p.0),
        record.since_ms,
        drill.fresh_for,
        now,
    ) {
        return Ok(None);
    }
    let key = pass.as_ref().map_or("never".to_string(), |p| p.1.clone());
    if record.stale_notified == key {
        return Ok(None);
    }
    let fresh_for = humantime::format_duration(drill.fresh_for);
    let message = match &pass {
        Some((at, id)) => format!(
            "the last pass ({id}, {} ago) is older than {fresh_for}",
            humantime::format_duration(Duration::from_secs((now - at) / 1000))
        ),
        None => format!("no pass within {fresh_for} of the drill being scheduled"),
    };
    let subject = format!("drill/{}", drill.name);
    let seq = shared.store.next_event_seq(&subject).await?;
    let event = EventRecord::whole(&subject, seq, now, EventKind::DrillStale, message.clone());
    let notice = Notice {
        event: EventKind::DrillStale.as_str().into(),
        severity: EventKind::DrillStale.severity().into(),
        subject_kind: "drill".into(),
        subject_id: subject,
        name: drill.name.clone(),
        summary: format!("drill {} is stale: {message}", drill.name),
        details: [
            ("env".to_string(), drill.env.clone()),
            ("fresh_for".to_string(), fresh_for.to_string()),
        ]
        .into(),
        dedup_key: format!("rewind/drill/{}", drill.name),
        unix_ms: now,
    };
    let outbox = notify::rows(&shared.webhooks, seq, &notice);
    let updated = ScheduleRecord {
        stale_notified: key,
        ..record
    };
    shared
        .store
        .save_schedule(&updated, &[event], &outbox)
        .await?;
    shared.outbox_ready.notify_waiters();
    tracing::warn!(drill = drill.name, "drill is stale: {message}");
    Ok(Some(updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_goes_stale_after_its_freshness() {
        let day = 24 * 3600 * 1000;
        let fresh = Duration::from_secs(35 * 24 * 3600);
        assert!(!is_stale(Some(10 * day), 0, fresh, 44 * day));
        assert!(is_stale(Some(10 * day), 0, fresh, 46 * day));
        // Never passed: counted from when it was first scheduled.
        assert!(!is_stale(None, 20 * day, fresh, 50 * day));
        assert!(is_stale(None, 20 * day, fresh, 56 * day));
    }
}
