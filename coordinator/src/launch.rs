//! What operators and drills share: taking a checkpoint of a fleet, and
//! starting a run of a plan to a release once its preview passed and the
//! run is admitted (data loss confirmed, roles, approvals, no drill in the
//! way). The operator API and the drill driver both call these, so a drill
//! rehearses exactly what an operator's rollback would do.

use crate::config::{CoordinatorConfig, Role};
use crate::engine::{RunKind, RunStatus};
use crate::plan::{self, AgentView, Plan, StepAction, StepPlan};
use crate::runner::{self, Shared, nonce, now_ms, snapshot_of};
use crate::store::{ReleaseRecord, RunRecord, SnapshotRecord, StoreError};
use rewind_proto::v1::*;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Status;

const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub fn internal(e: StoreError) -> Status {
    Status::internal(format!("coordinator journal: {e}"))
}

pub async fn agent_views(shared: &Shared) -> Result<Vec<AgentView>, Status> {
    Ok(shared
        .store
        .agents()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|a| AgentView {
            name: a.name,
            labels: a.labels,
            targets: a.targets.into_iter().map(|t| t.name).collect(),
        })
        .collect())
}

/// A plan resolved against the fleet and a release, in one environment.
pub struct Prepared {
    pub plan: Plan,
    pub resolved: Vec<Vec<StepPlan>>,
    pub snapshots: Vec<SnapshotRecord>,
    /// The environment whose agents the plan selected (None: the fleet's
    /// agents have no `env` label, or all share one).
    pub env: Option<String>,
    /// Each selected agent's environment.
    pub envs: HashMap<String, String>,
}

/// The environment a plan acts on: the one asked for, else the plan's
/// `env`, else the fleet's only one. Refused when the two disagree, or when
/// the fleet has several and none is named: a plan never selects agents of
/// two environments.
fn environment(
    asked: Option<&str>,
    plan: &Plan,
    agents: &[AgentView],
) -> Result<Option<String>, Status> {
    let asked = asked.filter(|e| !e.is_empty());
    let env = match (asked, &plan.env) {
        (Some(asked), Some((own, line))) if asked != own => {
            return Err(Status::invalid_argument(format!(
                "{}:{line}: the plan is for environment {own}, not {asked}",
                plan.path
            )));
        }
        (Some(asked), _) => Some(asked.to_string()),
        (None, Some((own, _))) => Some(own.clone()),
        (None, None) => None,
    };
    let known: std::collections::BTreeSet<Option<&str>> = agents
        .iter()
        .map(|a| a.labels.get("env").map(String::as_str))
        .collect();
    let names = || {
        known
            .iter()
            .map(|e| e.unwrap_or("(no env label)"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match env {
        Some(env) if !known.contains(&Some(env.as_str())) => {
            Err(Status::failed_precondition(format!(
                "no agent has the label env = {env} (environments: {})",
                names()
            )))
        }
        Some(env) => Ok(Some(env)),
        None if known.len() > 1 => Err(Status::failed_precondition(format!(
            "the fleet has agents of several environments ({}): name one with --env NAME, or \
             env = \"NAME\" in {}; a plan acts on one environment at a time",
            names(),
            plan.path
        ))),
        None => Ok(known.into_iter().next().flatten().map(str::to_string)),
    }
}

/// Parse and resolve a plan against the fleet and a release, in the
/// environment asked for (see [`environment`]).
pub async fn prepare(
    shared: &Shared,
    toml: &str,
    path: &str,
    release: &str,
    env: Option<&str>,
) -> Result<Prepared, Status> {
    let plan = plan::parse(toml, path).map_err(|e| Status::invalid_argument(e.to_string()))?;
    plan.check_access(&shared.plans)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    // Both lists are as long as the fleet: read at once.
    let (agents, snapshots) = tokio::join!(agent_views(shared), shared.store.snapshots(release));
    let (mut agents, snapshots) = (agents?, snapshots.map_err(internal)?);
    let env = environment(env, &plan, &agents)?;
    if let Some(env) = &env {
        if let Some((line, what)) = plan.outside(env) {
            return Err(Status::invalid_argument(format!(
                "{path}:{line}: {what}, not {env}: a plan acts on one environment at a time"
            )));
        }
        // An agent the plan names itself must be of the same environment.
        for (agent, line, what) in plan.named_agents() {
            if let Some(other) = agents
                .iter()
                .find(|a| a.name == agent)
                .and_then(|a| a.labels.get("env"))
                .filter(|e| *e != env)
            {
                return Err(Status::invalid_argument(format!(
                    "{path}:{line}: {what}: agent {agent} is of environment {other}, not {env}: a \
                     plan acts on one environment at a time"
                )));
            }
        }
        agents.retain(|a| a.labels.get("env") == Some(env));
    }
    let resolved = plan
        .resolve(&agents)
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    if shared
        .store
        .release(release)
        .await
        .map_err(internal)?
        .is_none()
    {
        return Err(Status::not_found(format!(
            "no release {release} (see `rewind releases`)"
        )));
    }
    let by_target = crate::runner::snapshot_index(&snapshots);
    for (stage, steps) in plan.stages.iter().zip(&resolved) {
        for step in steps {
            if stage.action != StepAction::Restart
                && !by_target.contains_key(&(step.agent.as_str(), step.target.as_str()))
            {
                return Err(Status::failed_precondition(format!(
                    "{path}:{}: stage {}: release {release} has no snapshot of target {} on agent {}",
                    stage.target_line, stage.name, step.target, step.agent
                )));
            }
        }
    }
    let envs = agents
        .into_iter()
        .filter_map(|a| a.labels.get("env").cloned().map(|e| (a.name, e)))
        .collect();
    Ok(Prepared {
        plan,
        resolved,
        snapshots,
        env,
        envs,
    })
}

/// Ask every plugin of a resolved plan what it would change.
pub async fn preview(shared: &Shared, prepared: &Prepared) -> PreviewReply {
    let Prepared {
        plan,
        resolved,
        snapshots,
        envs,
        ..
    } = prepared;
    let mut tasks = tokio::task::JoinSet::new();
    let by_target = crate::runner::snapshot_index(snapshots);
    for (stage_index, (stage, steps)) in plan.stages.iter().zip(resolved).enumerate() {
        for (step_index, step) in steps.iter().enumerate() {
            let snapshot = by_target
                .get(&(step.agent.as_str(), step.target.as_str()))
                .map(|s| snapshot_of(s));
            let fleet = shared.fleet.clone();
            let (agent, target, action) = (step.agent.clone(), step.target.clone(), stage.action);
            tasks.spawn(async move {
                let preview = match action {
                    StepAction::Restart => Ok(Preview {
                        changes: vec![Change {
                            subject: target.clone(),
                            summary: "restart".into(),
                            detail: String::new(),
                            risk: Risk::Restart as i32,
                        }],
                        risk: Risk::Restart as i32,
                        data_loss_window_seconds: None,
                    }),
                    StepAction::Verify => Ok(Preview {
                        changes: vec![],
                        risk: Risk::None as i32,
                        data_loss_window_seconds: None,
                    }),
                    StepAction::Restore => {
                        let request = StepRequest {
                            run_id: String::new(),
                            step_id: crate::step_id::preview(&agent, &target),
                            attempt: 1,
                            target: target.clone(),
                            action: Action::Plan as i32,
                            snapshot,
                            ..Default::default()
                        };
                        match fleet.request(&agent, request, PREVIEW_TIMEOUT).await {
                            Ok(StepResult {
                                outcome: Some(step_result::Outcome::Preview(p)),
                                ..
                            }) => Ok(p),
                            Ok(StepResult {
                                outcome: Some(step_result::Outcome::Error(e)),
                                ..
                            }) => Err(e),
                            Ok(_) => Err(StepError {
                                kind: "protocol".into(),
                                message: "the agent answered without a preview".into(),
                            }),
                            Err(message) => Err(StepError {
                                kind: "unavailable".into(),
                                message,
                            }),
                        }
                    }
                };
                (stage_index, step_index, agent, target, action, preview)
            });
        }
    }
    let mut stages: Vec<StagePreview> = plan
        .stages
        .iter()
        .zip(resolved)
        .map(|(s, steps)| StagePreview {
            stage: s.name.clone(),
            after: s.after.clone(),
            steps: vec![StepPreview::default(); steps.len()],
        })
        .collect();
    let mut risk = Risk::None as i32;
    while let Some(Ok((stage, step, agent, target, action, preview))) = tasks.join_next().await {
        let (preview, error) = match preview {
            Ok(p) => {
                risk = risk.max(p.risk);
                (Some(p), None)
            }
            Err(e) => (None, Some(e)),
        };
        let fingerprint = fingerprint(preview.as_ref(), error.as_ref());
        stages[stage].steps[step] = StepPreview {
            env: envs.get(&agent).cloned().unwrap_or_default(),
            agent,
            target,
            action: action.as_str().into(),
            preview,
            error,
            fingerprint,
        };
    }
    PreviewReply { stages, risk }
}

/// A digest of what a step's preview says (changes and risks, or its
/// error), not of when it was taken. Numbers in a change's summary and
/// detail are left out: a live database's size, row counts and data-loss
/// window move between the preview and the start, and the restore goes to
/// the snapshot whatever they are. Which changes, in which words, at which
/// risk, must still be the ones approved.
fn fingerprint(preview: Option<&Preview>, error: Option<&StepError>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    if let Some(p) = preview {
        hash.update(p.risk.to_le_bytes());
        for change in &p.changes {
            let summary = without_numbers(&change.summary);
            let detail = without_numbers(&change.detail);
            for part in [&change.subject, &summary, &detail] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
            hash.update(change.risk.to_le_bytes());
        }
    }
    if let Some(e) = error {
        hash.update(b"error");
        hash.update(e.kind.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// `text` with each run of digits (and the decimal points inside it) as `#`.
fn without_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        let digit = c.is_ascii_digit() || (in_number && c == '.');
        if digit && !in_number {
            out.push('#');
        } else if !digit {
            out.push(c);
        }
        in_number = digit;
    }
    out
}

/// The key of a step in `RunRequest.approved`.
pub fn approval_key(stage: &str, agent: &str, target: &str) -> String {
    format!("{stage}/{agent}/{target}")
}

/// Snapshot every target of every agent (of the environment `env`, all
/// when empty) as release `release`, recorded by `by`, all or nothing.
/// With `again`, a release of that name that already exists is returned
/// as it is (a drill resumed after its checkpoint was recorded).
pub async fn checkpoint(
    shared: &Shared,
    release: &str,
    env: &str,
    by: &str,
    again: bool,
) -> Result<(ReleaseRecord, Vec<SnapshotRecord>), Status> {
    let (release, env) = (release.to_string(), env.to_string());
    if shared.is_draining() {
        return Err(stopping());
    }
    if release.is_empty() {
        return Err(Status::invalid_argument(
            "a release needs a name, e.g. v1.2.3",
        ));
    }
    if let Some(existing) = shared.store.release(&release).await.map_err(internal)? {
        if again {
            let snapshots = shared.store.snapshots(&release).await.map_err(internal)?;
            return Ok((existing, snapshots));
        }
        return Err(Status::already_exists(format!(
            "release {release} already exists; choose another name"
        )));
    }
    let known = shared.store.agents().await.map_err(internal)?;
    if env.is_empty() {
        let mut envs: Vec<&str> = known
            .iter()
            .map(|a| a.labels.get("env").map_or("(no env label)", String::as_str))
            .collect();
        envs.sort_unstable();
        envs.dedup();
        if envs.len() > 1 {
            return Err(Status::failed_precondition(format!(
                "release {release} not recorded: the fleet has agents of several environments \
                 ({}): name one with --env NAME; a checkpoint covers one environment at a time",
                envs.join(", ")
            )));
        }
    }
    let matching: Vec<_> = known
        .into_iter()
        .filter(|a| env.is_empty() || a.labels.get("env") == Some(&env))
        .collect();
    if matching.is_empty() {
        return Err(Status::failed_precondition(if env.is_empty() {
            "no agent has connected yet".to_string()
        } else {
            format!("no agent has the label env = {env}")
        }));
    }
    let offline: Vec<&str> = matching
        .iter()
        .filter(|a| !shared.fleet.is_connected(&a.name))
        .map(|a| a.name.as_str())
        .collect();
    if !offline.is_empty() {
        return Err(Status::failed_precondition(format!(
            "release {release} not recorded: a release covers every agent, and these are not connected: {}",
            offline.join(", ")
        )));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for agent in &matching {
        for target in &agent.targets {
            let fleet = shared.fleet.clone();
            let (agent, target) = (agent.name.clone(), target.clone());
            let step_id = crate::step_id::checkpoint(&release, &agent, &target.name);
            tasks.spawn(async move {
                let request = StepRequest {
                    step_id,
                    attempt: 1,
                    target: target.name.clone(),
                    action: Action::Snapshot as i32,
                    ..Default::default()
                };
                let taken_at = now_ms() / 1000;
                let result = fleet.request(&agent, request, SNAPSHOT_TIMEOUT).await;
                (agent, target, taken_at, result)
            });
        }
    }
    let mut snapshots = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((agent, target, taken_at, result)) = joined else {
            continue;
        };
        match result {
            Ok(StepResult {
                outcome: Some(step_result::Outcome::Captured(c)),
                ..
            }) => snapshots.push(SnapshotRecord {
                agent,
                target: target.name,
                plugin: target.plugin,
                digest: target.digest,
                data: c.data,
                summary: c.summary,
                taken_at,
            }),
            Ok(StepResult {
                outcome: Some(step_result::Outcome::Error(e)),
                ..
            }) => failures.push(format!(
                "host {agent} target {}: {}: {}",
                target.name, e.kind, e.message
            )),
            Ok(_) => failures.push(format!(
                "host {agent} target {}: no snapshot in the answer",
                target.name
            )),
            Err(e) => failures.push(format!("host {agent} target {}: {e}", target.name)),
        }
    }
    if !failures.is_empty() {
        failures.sort();
        return Err(Status::failed_precondition(format!(
            "release {release} not recorded: {} of {} snapshots failed:\n  {}",
            failures.len(),
            failures.len() + snapshots.len(),
            failures.join("\n  ")
        )));
    }
    snapshots.sort_by(|a, b| (&a.agent, &a.target).cmp(&(&b.agent, &b.target)));
    let record = crate::store::ReleaseRecord {
        name: release.clone(),
        env: env.clone(),
        created_ms: now_ms(),
    };
    shared
        .store
        .insert_release(&record, by, &snapshots)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => Status::already_exists(m),
            other => internal(other),
        })?;
    Ok((record, snapshots))
}

pub fn stopping() -> Status {
    Status::unavailable("the coordinator is stopping; try again when it is back")
}

/// What starts a run, besides the plan and the release.
pub struct Start {
    pub plan_toml: String,
    pub plan_path: String,
    pub release: String,
    pub confirm_data_loss: bool,
    pub force: bool,
    /// The approved preview's fingerprints (empty: no approval to match).
    pub approved: HashMap<String, String>,
    /// Who starts it: an operator's name, or `drill:<name>`.
    pub by: String,
    pub role: Role,
    pub kind: RunKind,
    /// A drill's legs have fixed ids (starting one again finds it).
    pub id: Option<String>,
    pub drill_run: String,
    /// Only agents with this `env` label take part (a drill's environment).
    pub env: Option<String>,
    /// Roll a drill on these agents forward first instead of refusing.
    pub preempt_drill: bool,
}

/// Preview a plan against a release, admit the run (every step previewed
/// without error, the approved preview unchanged, data loss confirmed, the
/// role enough for protected environments, no drill in the way) and start
/// it; its id.
pub async fn start_run(
    shared: &std::sync::Arc<Shared>,
    config: &CoordinatorConfig,
    start: Start,
) -> Result<String, Status> {
    if shared.is_draining() {
        return Err(stopping());
    }
    let Start {
        plan_toml,
        plan_path,
        release,
        confirm_data_loss,
        force,
        approved,
        by: operator,
        role,
        kind,
        id,
        drill_run,
        env,
        preempt_drill,
    } = start;
    let prepared = prepare(shared, &plan_toml, &plan_path, &release, env.as_deref()).await?;
    let resolved = &prepared.resolved;
    if kind == RunKind::Rollback {
        // The agents its hooks and smoke checks act on count too: a drill
        // on one of them would be disturbed (or undo what they do).
        let mut agents: Vec<String> = resolved
            .iter()
            .flatten()
            .map(|s| s.agent.clone())
            .chain(
                prepared
                    .plan
                    .named_agents()
                    .into_iter()
                    .map(|(agent, ..)| agent.to_string()),
            )
            .collect();
        agents.sort();
        agents.dedup();
        crate::drill::admit::clear_the_way(shared, &agents, preempt_drill, &operator).await?;
    }
    let offline: Vec<&str> = {
        let mut names: Vec<&str> = resolved
            .iter()
            .flatten()
            .map(|s| s.agent.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter(|a| !shared.fleet.is_connected(a))
            .collect()
    };
    if !offline.is_empty() {
        return Err(Status::failed_precondition(format!(
            "these agents of the plan are not connected: {}",
            offline.join(", ")
        )));
    }
    let preview = preview(shared, &prepared).await;
    let release_env = shared
        .store
        .release(&release)
        .await
        .map_err(internal)?
        .map(|r| r.env)
        .unwrap_or_default();
    let protected_by_release = config
        .protected_environments()
        .contains(&release_env.as_str())
        .then(|| release_env.clone());
    let protected = |agent: &str| {
        let env = prepared.envs.get(agent).cloned();
        config
            .is_protected(agent, env.as_deref())
            .or_else(|| protected_by_release.clone())
    };
    let crate::admission::Admitted { window, windows } = crate::admission::admit(
        &preview,
        &crate::admission::Request {
            operator: &operator,
            role,
            confirm_data_loss,
            force,
            approved: &approved,
        },
        &protected,
    )
    .map_err(crate::admission::Refusal::status)?;
    let run = RunRecord {
        id: id.unwrap_or_else(|| format!("run-{}-{}", now_ms(), nonce())),
        plan_name: prepared.plan.name.clone(),
        plan_path: plan_path.clone(),
        plan_toml,
        release,
        status: RunStatus::Running.as_str().into(),
        started_by: operator,
        started_ms: now_ms(),
        finished_ms: None,
        confirm_data_loss,
        force,
        data_loss_window: window,
        halting: false,
        cancelling: false,
        verdict: String::new(),
        kind: kind.as_str().into(),
        drill_run,
        env: prepared.env.clone().unwrap_or_default(),
    };
    let run_id = run.id.clone();
    let Prepared {
        plan,
        resolved,
        snapshots,
        ..
    } = prepared;
    runner::start(shared.clone(), run, plan, resolved, snapshots, windows)
        .await
        .map_err(|e| match e {
            runner::StartError::Plan(m) => Status::failed_precondition(m),
            runner::StartError::Store(e) => internal(e),
        })?;
    Ok(run_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_proto::v1::Change;

    fn preview(summary: &str, risk: i32) -> Preview {
        Preview {
            risk,
            changes: vec![Change {
                subject: "shop".into(),
                summary: summary.into(),
                detail: String::new(),
                risk,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_fingerprint_ignores_moving_figures_but_not_what_changes() {
        let at = |s: &str, risk| fingerprint(Some(&preview(s, risk)), None);
        let first = at(
            "replace the database (7.6 MiB now); writes of the last 10 s are lost",
            3,
        );
        assert_eq!(
            first,
            at(
                "replace the database (7.7 MiB now); writes of the last 11 s are lost",
                3
            )
        );
        assert_ne!(
            first,
            at(
                "replace the database (7.6 MiB now); writes of the last 10 s are kept",
                3
            )
        );
        assert_ne!(
            first,
            at(
                "replace the database (7.6 MiB now); writes of the last 10 s are lost",
                2
            )
        );
        assert_eq!(without_numbers("v1.4.2 to 10 s."), "v# to # s.");
    }
}
