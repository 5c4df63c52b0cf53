//! The operator service's drill calls: list the drills with their next run,
//! last verdict and freshness; start one now; its history; one run and its
//! report. Roles are checked by the caller (`OperatorApi`).

use crate::config::CoordinatorConfig;
use crate::drill::admit::{self, Started};
use crate::drill::{report, scheduler};
use crate::launch::internal;
use crate::runner::{Shared, now_ms};
use crate::store::DrillRunRecord;
use rewind_proto::v1::*;
use std::sync::Arc;
use tonic::Status;

fn no_drill(config: &CoordinatorConfig, name: &str) -> Status {
    let names: Vec<&str> = config.drills.keys().map(String::as_str).collect();
    Status::not_found(format!(
        "no drill {name} in {} (drills: {})",
        config.path.display(),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ))
}

pub async fn list(shared: &Shared, config: &CoordinatorConfig) -> Result<ListDrillsReply, Status> {
    let schedules = shared.store.schedules().await.map_err(internal)?;
    let active = shared
        .store
        .unfinished_drill_runs()
        .await
        .map_err(internal)?;
    let now = now_ms();
    let mut drills = Vec::new();
    for drill in config.drills.values() {
        let last = shared
            .store
            .drill_runs(&drill.name, 1)
            .await
            .map_err(internal)?
            .into_iter()
            .next();
        let pass = scheduler::last_pass(shared, &drill.name)
            .await
            .map_err(internal)?;
        let since = schedules
            .iter()
            .find(|s| s.drill == drill.name)
            .map_or(now, |s| s.since_ms);
        let next = drill
            .schedule
            .next_after(chrono::DateTime::from_timestamp_millis(now as i64).unwrap_or_default());
        drills.push(DrillSummary {
            name: drill.name.clone(),
            plan: drill.plan.name.clone(),
            env: drill.env.clone(),
            schedule: drill.pattern.clone(),
            time_zone: drill.time_zone.clone(),
            next_run_ms: next.map_or(0, |t| t.timestamp_millis() as u64),
            last_verdict: last
                .as_ref()
                .map(|r| r.status().to_string())
                .unwrap_or_default(),
            last_run_id: last.map(|r| r.id).unwrap_or_default(),
            last_pass_ms: pass.as_ref().map_or(0, |p| p.0),
            stale: scheduler::is_stale(pass.map(|p| p.0), since, drill.fresh_for, now),
            fresh_for_seconds: drill.fresh_for.as_secs(),
            rto_target_ms: drill.rto.as_millis() as u64,
            active_run_id: active
                .iter()
                .find(|r| r.drill == drill.name)
                .map(|r| r.id.clone())
                .unwrap_or_default(),
        });
    }
    Ok(ListDrillsReply { drills })
}

pub async fn start(
    shared: &Arc<Shared>,
    config: &Arc<CoordinatorConfig>,
    operator: &str,
    request: DrillRef,
) -> Result<DrillRunReply, Status> {
    let drill = config
        .drills
        .get(&request.drill)
        .ok_or_else(|| no_drill(config, &request.drill))?;
    let to = (!request.to.is_empty()).then_some(request.to);
    match admit::start(
        shared,
        config,
        drill,
        &format!("operator:{operator}"),
        None,
        to,
    )
    .await
    .map_err(internal)?
    {
        Started::Running(run_id) => Ok(DrillRunReply { run_id }),
        Started::Refused(why) => Err(Status::failed_precondition(format!(
            "drill {}: {why}",
            drill.name
        ))),
    }
}

pub async fn summary(shared: &Shared, record: DrillRunRecord) -> Result<DrillRunSummary, Status> {
    let rto = report::rto_of(&shared.store, &record)
        .await
        .map_err(internal)?;
    let back_ok = shared
        .store
        .run(&record.back_run)
        .await
        .map_err(internal)?
        .is_some_and(|r| r.status == "succeeded");
    let slower = match rto {
        Some(rto) if back_ok => {
            let earlier = report::earlier_rtos(&shared.store, &record)
                .await
                .map_err(internal)?;
            report::compare(rto, &earlier).is_some_and(|c| c.slower)
        }
        _ => false,
    };
    let ran = record.state.verdict != Some(crate::drill::Verdict::Skipped);
    Ok(DrillRunSummary {
        status: record.status().into(),
        phase: record.state.phase.as_str().into(),
        reason: if record.state.reason.is_empty() {
            record.state.abort.clone()
        } else {
            record.state.reason.clone()
        },
        run_id: record.id,
        drill: record.drill,
        trigger: record.trigger,
        started_ms: record.started_ms,
        finished_ms: record.finished_ms.unwrap_or(0),
        rto_ms: rto,
        rto_target_ms: record.rto_target_ms,
        checkpoint: if ran {
            record.checkpoint
        } else {
            String::new()
        },
        back_to: record.back_to,
        back_run: if ran { record.back_run } else { String::new() },
        forward_run: if ran {
            record.forward_run
        } else {
            String::new()
        },
        slower,
    })
}

pub async fn history(
    shared: &Shared,
    config: &CoordinatorConfig,
    request: DrillHistoryRequest,
) -> Result<DrillHistoryReply, Status> {
    if !config.drills.contains_key(&request.drill) {
        return Err(no_drill(config, &request.drill));
    }
    let limit = match request.limit {
        0 => 20,
        n => n.min(1000),
    };
    let mut runs = Vec::new();
    for record in shared
        .store
        .drill_runs(&request.drill, limit)
        .await
        .map_err(internal)?
    {
        runs.push(summary(shared, record).await?);
    }
    Ok(DrillHistoryReply { runs })
}

pub async fn existing(shared: &Shared, run_id: &str) -> Result<DrillRunRecord, Status> {
    shared
        .store
        .drill_run(run_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no drill run {run_id} (see `rewind drill history <drill>`)"
            ))
        })
}

pub async fn report(shared: &Shared, run_id: &str) -> Result<DrillReportReply, Status> {
    let report = report::gather(&shared.store, run_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "no drill run {run_id} (see `rewind drill history <drill>`)"
            ))
        })?;
    Ok(DrillReportReply {
        json: report.to_json(),
    })
}
