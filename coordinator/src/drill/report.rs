//! A drill run's report, read from the journal: the timeline (each phase,
//! stage and step with its start, end and duration), the measured RTO (the
//! roll-back phase) against its target, the data-loss window of each data
//! step, where each host was left, the verdict, and the comparison with the
//! drill's earlier passes. One structure (`DrillReport`, JSON schema
//! `rewind.drill-report/v1`) rendered three ways: JSON for scripts,
//! Markdown for the incident or compliance folder, JUnit XML for CI
//! dashboards (see `render`).

use crate::store::{DrillRunRecord, RunRecord, Store, StoreError};
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "rewind.drill-report/v1";
/// How many earlier passes a run is compared with.
pub const COMPARE_WITH: usize = 5;
/// Slower than the median of those by more than this is flagged.
pub const SLOWER_BY: f64 = 0.20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub schema: String,
    pub drill: String,
    pub run_id: String,
    /// schedule, catch-up, or operator:<name>.
    pub trigger: String,
    pub env: String,
    pub plan: String,
    pub plan_path: String,
    /// passed, failed, aborted, skipped, running or paused.
    pub status: String,
    /// What failed (phase, stage, host, target, error), or why it was
    /// aborted or skipped.
    pub reason: String,
    /// Rolling forward failed: the fleet may not be where it started.
    pub critical: bool,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub checkpoint: String,
    pub back_to: String,
    pub rto: Rto,
    pub phases: Vec<PhaseReport>,
    pub data_loss: Vec<DataLoss>,
    /// Where each host's targets were left.
    pub hosts: Vec<HostState>,
    pub comparison: Option<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rto {
    pub target_ms: u64,
    /// The roll-back run's duration, once it ended.
    pub measured_ms: Option<u64>,
    /// The roll back succeeded within the target.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// checkpoint, roll-back, roll-forward or verify.
    pub name: String,
    pub status: String,
    /// The phase's run, for roll-back and roll-forward.
    pub run_id: String,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub stages: Vec<StageTiming>,
    pub hooks: Vec<HookTiming>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub name: String,
    pub status: String,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub steps: Vec<StepTiming>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub host: String,
    pub target: String,
    pub action: String,
    pub status: String,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub summary: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookTiming {
    pub name: String,
    pub when: String,
    pub status: String,
    pub duration_ms: Option<u64>,
    pub answer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataLoss {
    pub stage: String,
    pub host: String,
    pub target: String,
    /// Writes of this window before the release rolled back to were lost
    /// (and put back by the roll forward).
    pub window_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    pub host: String,
    pub target: String,
    /// e.g. `on the checkpoint drill/...`, `on v1.4.2 (not rolled forward)`.
    pub left_on: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The RTOs of the drill's last passes before this run, newest first.
    pub earlier_ms: Vec<u64>,
    pub median_ms: u64,
    /// This run's RTO over the median (1.0: the same).
    pub ratio: f64,
    /// More than 20 % slower than the median.
    pub slower: bool,
}

impl Comparison {
    pub fn sentence(&self, rto_ms: u64) -> String {
        format!(
            "rolled back in {}, {:+.0} % against the median {} of its last {} pass(es){}",
            seconds(rto_ms),
            (self.ratio - 1.0) * 100.0,
            seconds(self.median_ms),
            self.earlier_ms.len(),
            if self.slower {
                ": slower than usual"
            } else {
                ""
            }
        )
    }
}

/// `47 ms`, `12.3 s`
pub fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

pub(super) fn span(start: Option<u64>, end: Option<u64>) -> Option<u64> {
    match (start, end) {
        (Some(s), Some(e)) if e >= s => Some(e - s),
        _ => None,
    }
}

/// How `rto_ms` compares with earlier passes' RTOs (None without any).
pub fn compare(rto_ms: u64, earlier: &[u64]) -> Option<Comparison> {
    if earlier.is_empty() {
        return None;
    }
    let mut sorted = earlier.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    };
    let ratio = rto_ms as f64 / median.max(1) as f64;
    Some(Comparison {
        earlier_ms: earlier.to_vec(),
        median_ms: median,
        ratio,
        slower: ratio > 1.0 + SLOWER_BY,
    })
}

/// The measured RTO of a drill run: its roll back's duration, once over.
pub async fn rto_of(store: &Store, record: &DrillRunRecord) -> Result<Option<u64>, StoreError> {
    Ok(store
        .run(&record.back_run)
        .await?
        .and_then(|run| span(Some(run.started_ms), run.finished_ms)))
}

/// The RTOs of the drill's last passes before `record`, newest first.
pub async fn earlier_rtos(store: &Store, record: &DrillRunRecord) -> Result<Vec<u64>, StoreError> {
    let mut rtos = Vec::new();
    for earlier in store.drill_runs(&record.drill, 200).await? {
        if rtos.len() == COMPARE_WITH {
            break;
        }
        let passed = earlier.state.verdict == Some(super::Verdict::Passed);
        if earlier.id != record.id
            && earlier.started_ms < record.started_ms
            && passed
            && let Some(rto) = rto_of(store, &earlier).await?
        {
            rtos.push(rto);
        }
    }
    Ok(rtos)
}

/// One leg's run as a phase of the timeline.
async fn leg(
    store: &Store,
    name: &str,
    run: Option<&RunRecord>,
) -> Result<PhaseReport, StoreError> {
    let Some(run) = run else {
        return Ok(PhaseReport {
            name: name.into(),
            status: "not run".into(),
            run_id: String::new(),
            started_ms: None,
            finished_ms: None,
            duration_ms: None,
            stages: Vec::new(),
            hooks: Vec::new(),
        });
    };
    let stages = store.stages(&run.id).await?;
    let steps = store.steps(&run.id).await?;
    let hooks = store.hooks(&run.id).await?;
    Ok(PhaseReport {
        name: name.into(),
        status: run.status.clone(),
        run_id: run.id.clone(),
        started_ms: Some(run.started_ms),
        finished_ms: run.finished_ms,
        duration_ms: span(Some(run.started_ms), run.finished_ms),
        stages: stages
            .iter()
            .map(|stage| StageTiming {
                name: stage.name.clone(),
                status: stage.status.clone(),
                started_ms: stage.started_ms,
                finished_ms: stage.finished_ms,
                duration_ms: span(stage.started_ms, stage.finished_ms),
                steps: steps
                    .iter()
                    .filter(|s| s.stage == stage.idx)
                    .map(|s| StepTiming {
                        host: s.agent.clone(),
                        target: s.target.clone(),
                        action: s.action.clone(),
                        status: s.status.clone(),
                        started_ms: s.started_ms,
                        finished_ms: s.finished_ms,
                        duration_ms: span(s.started_ms, s.finished_ms),
                        summary: s.summary.clone(),
                        error: (!s.error_kind.is_empty())
                            .then(|| format!("{}: {}", s.error_kind, s.error_message)),
                    })
                    .collect(),
            })
            .collect(),
        hooks: hooks
            .into_iter()
            .map(|h| HookTiming {
                name: h.name,
                when: h.phase,
                status: h.status,
                duration_ms: span(h.started_ms, h.finished_ms),
                answer: h.answer,
            })
            .collect(),
    })
}

fn phase(name: &str, status: &str, start: Option<u64>, end: Option<u64>) -> PhaseReport {
    PhaseReport {
        name: name.into(),
        status: status.into(),
        run_id: String::new(),
        started_ms: start,
        finished_ms: end,
        duration_ms: span(start, end),
        stages: Vec::new(),
        hooks: Vec::new(),
    }
}

/// A drill run's report from the journal; None if there is no such run.
pub async fn gather(store: &Store, id: &str) -> Result<Option<DrillReport>, StoreError> {
    let Some(record) = store.drill_run(id).await? else {
        return Ok(None);
    };
    let st = &record.state;
    let back = store.run(&record.back_run).await?;
    let forward = store.run(&record.forward_run).await?;
    let checkpoint_status = match (
        st.checkpoint_finished_ms,
        st.reason.starts_with("checkpoint"),
    ) {
        (_, true) => "failed",
        (Some(_), false) => "succeeded",
        (None, _) if st.checkpoint_started_ms.is_some() => "running",
        _ => "not run",
    };
    let verify_status = match (st.verify_started_ms, st.verify_finished_ms) {
        (None, _) => "not run",
        (Some(_), None) => "running",
        (Some(_), Some(_)) if st.reason.contains("verify after") => "failed",
        _ => "succeeded",
    };
    let phases = vec![
        phase(
            "checkpoint",
            checkpoint_status,
            st.checkpoint_started_ms,
            st.checkpoint_finished_ms,
        ),
        leg(store, "roll-back", back.as_ref()).await?,
        leg(store, "roll-forward", forward.as_ref()).await?,
        phase(
            "verify",
            verify_status,
            st.verify_started_ms,
            st.verify_finished_ms,
        ),
    ];
    let measured = back
        .as_ref()
        .and_then(|run| span(Some(run.started_ms), run.finished_ms));
    let back_ok = back.as_ref().is_some_and(|r| r.status == "succeeded");
    let rto = Rto {
        target_ms: record.rto_target_ms,
        measured_ms: measured,
        met: measured.map(|m| back_ok && m <= record.rto_target_ms),
    };
    let mut data_loss = Vec::new();
    if let Some(back) = &back {
        let stages = store.stages(&back.id).await?;
        for step in store.steps(&back.id).await? {
            if let Some(window) = step.data_loss_window {
                data_loss.push(DataLoss {
                    stage: stages
                        .get(step.stage)
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    host: step.agent,
                    target: step.target,
                    window_seconds: window,
                });
            }
        }
    }
    let comparison = match measured {
        Some(rto) if back_ok => compare(rto, &earlier_rtos(store, &record).await?),
        _ => None,
    };
    let hosts = hosts(&record, &phases);
    Ok(Some(DrillReport {
        schema: SCHEMA.into(),
        drill: record.drill.clone(),
        run_id: record.id.clone(),
        trigger: record.trigger.clone(),
        env: record.env.clone(),
        plan: record.plan_name.clone(),
        plan_path: record.plan_path.clone(),
        status: record.status().into(),
        reason: if st.reason.is_empty() {
            st.abort.clone()
        } else {
            st.reason.clone()
        },
        critical: st.critical,
        started_ms: record.started_ms,
        finished_ms: record.finished_ms,
        checkpoint: record.checkpoint.clone(),
        back_to: record.back_to.clone(),
        rto,
        phases,
        data_loss,
        hosts,
        comparison,
    }))
}

/// Where each target the drill touched was left: on the checkpoint, or on
/// the release rolled back to (or between) and why.
fn hosts(record: &DrillRunRecord, phases: &[PhaseReport]) -> Vec<HostState> {
    let steps = |phase: &PhaseReport| -> Vec<StepTiming> {
        phase.stages.iter().flat_map(|s| s.steps.clone()).collect()
    };
    let (back, forward) = (steps(&phases[1]), steps(&phases[2]));
    let mut out = Vec::new();
    for b in &back {
        if out
            .iter()
            .any(|h: &HostState| h.host == b.host && h.target == b.target)
        {
            continue;
        }
        let f = forward
            .iter()
            .find(|f| f.host == b.host && f.target == b.target);
        let left_on = match (b.status.as_str(), f.map(|f| f.status.as_str())) {
            (_, Some("succeeded")) => format!("on the checkpoint {}", record.checkpoint),
            (_, Some("failed")) => format!(
                "roll forward failed ({}): on {} or between it and the checkpoint",
                f.and_then(|f| f.error.clone()).unwrap_or_default(),
                record.back_to
            ),
            (_, Some("sent")) => "roll forward in progress".into(),
            ("succeeded", _) => format!("on {} (not rolled forward yet)", record.back_to),
            ("failed", _) => format!(
                "roll back failed ({}): between the checkpoint and {}",
                b.error.clone().unwrap_or_default(),
                record.back_to
            ),
            ("sent", _) => "roll back in progress".into(),
            _ => format!("untouched: on the checkpoint {}", record.checkpoint),
        };
        out.push(HostState {
            host: b.host.clone(),
            target: b.target.clone(),
            left_on,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slower_means_more_than_20_percent_over_the_median() {
        let c = compare(1300, &[1000, 900, 1100, 5000, 1000]).unwrap();
        assert_eq!(c.median_ms, 1000);
        assert!(c.slower);
        assert!(!compare(1200, &[1000, 1000]).unwrap().slower);
        assert_eq!(compare(1000, &[800, 1200]).unwrap().median_ms, 1000);
        assert!(compare(1000, &[]).is_none());
        assert!(
            c.sentence(1300).contains(
                "+30 % against the median 1.0 s of its last 5 pass(es): slower than usual"
            ),
            "{}",
            c.sentence(1300)
        );
    }
}
