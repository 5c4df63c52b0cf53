//! The operator service behind the `rewind` CLI. Every call is authorised by
//! the caller's certificate: an operator identity with a role from the
//! coordinator's configuration. Reading needs the viewer role; anything that
//! makes agents act (checkpoints, previews, whose plugins read their
//! targets, runs) needs operator; data-loss steps on a protected
//! environment's agents, and retiring agents, need admin.

use crate::config::{CoordinatorConfig, Role};
use crate::engine::RunStatus;
use crate::plan::{self, AgentView, Plan, StepAction, StepPlan};
use crate::runner::{self, Shared, nonce, now_ms, snapshot_of};
use crate::store::{RunRecord, SnapshotRecord, StoreError};
use rewind_proto::identity::{Authenticator, Kind};
use rewind_proto::v1::operator_service_server::OperatorService;
use rewind_proto::v1::*;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const PREVIEW_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub struct OperatorApi {
    pub shared: Arc<Shared>,
    pub config: Arc<CoordinatorConfig>,
    pub authenticator: Arc<Authenticator>,
}

fn stopping() -> Status {
    Status::unavailable("the coordinator is stopping; try again when it is back")
}

fn internal(e: StoreError) -> Status {
    Status::internal(format!("coordinator journal: {e}"))
}

impl OperatorApi {
    /// The calling operator's name and role, if it may do what needs `needed`.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        needed: Role,
        what: &str,
    ) -> Result<(String, Role), Status> {
        let identity = self.authenticator.authenticate(request)?;
        if identity.kind != Kind::Operator {
            return Err(Status::permission_denied(format!(
                "certificate {identity} is an {} identity; the operator API needs an operator certificate",
                identity.kind.as_str()
            )));
        }
        let role = *self.config.operators.get(&identity.name).ok_or_else(|| {
            Status::permission_denied(format!(
                "operator {} has no role: add it under [operators] in {}",
                identity.name,
                self.config.path.display()
            ))
        })?;
        if role < needed {
            return Err(Status::permission_denied(format!(
                "operator {} has role {role}; {what} needs the {needed} role",
                identity.name
            )));
        }
        Ok((identity.name, role))
    }

    async fn agent_views(&self) -> Result<Vec<AgentView>, Status> {
        Ok(self
            .shared
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

    /// Parse and resolve a plan against the fleet and a release.
    async fn prepare(
        &self,
        toml: &str,
        path: &str,
        release: &str,
    ) -> Result<(Plan, Vec<Vec<StepPlan>>, Vec<SnapshotRecord>), Status> {
        let plan = plan::parse(toml, path).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let resolved = plan
            .resolve(&self.agent_views().await?)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        if self
            .shared
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
        let snapshots = self
            .shared
            .store
            .snapshots(release)
            .await
            .map_err(internal)?;
        for (stage, steps) in plan.stages.iter().zip(&resolved) {
            for step in steps {
                if stage.action != StepAction::Restart
                    && !snapshots
                        .iter()
                        .any(|s| s.agent == step.agent && s.target == step.target)
                {
                    return Err(Status::failed_precondition(format!(
                        "{path}:{}: stage {}: release {release} has no snapshot of target {} on agent {}",
                        stage.target_line, stage.name, step.target, step.agent
                    )));
                }
            }
        }
        Ok((plan, resolved, snapshots))
    }

    /// Ask every plugin of a resolved plan what it would change.
    async fn preview(
        &self,
        plan: &Plan,
        resolved: &[Vec<StepPlan>],
        snapshots: &[SnapshotRecord],
    ) -> PreviewReply {
        let mut tasks = tokio::task::JoinSet::new();
        for (stage_index, (stage, steps)) in plan.stages.iter().zip(resolved).enumerate() {
            for (step_index, step) in steps.iter().enumerate() {
                let snapshot = snapshots
                    .iter()
                    .find(|s| s.agent == step.agent && s.target == step.target)
                    .map(snapshot_of);
                let fleet = self.shared.fleet.clone();
                let (agent, target, action) =
                    (step.agent.clone(), step.target.clone(), stage.action);
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
                                step_id: format!("preview/{agent}/{target}/{}", nonce()),
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
        while let Some(Ok((stage, step, agent, target, action, preview))) = tasks.join_next().await
        {
            let (preview, error) = match preview {
                Ok(p) => {
                    risk = risk.max(p.risk);
                    (Some(p), None)
                }
                Err(e) => (None, Some(e)),
            };
            let fingerprint = fingerprint(preview.as_ref(), error.as_ref());
            stages[stage].steps[step] = StepPreview {
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

    async fn report(&self, run: &RunRecord, with_steps: bool) -> Result<RunReport, Status> {
        let stages = self.shared.store.stages(&run.id).await.map_err(internal)?;
        let stage_names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
        let steps = self.shared.store.steps(&run.id).await.map_err(internal)?;
        // Data was lost only where a data step succeeded and changed its target.
        let data_loss_window = steps
            .iter()
            .filter(|s| s.status == "succeeded" && s.changed)
            .filter_map(|s| s.data_loss_window)
            .max();
        let steps = if with_steps { steps } else { Vec::new() };
        let hooks = self.shared.store.hooks(&run.id).await.map_err(internal)?;
        Ok(RunReport {
            run_id: run.id.clone(),
            plan: run.plan_name.clone(),
            release: run.release.clone(),
            status: run.status.clone(),
            started_by: run.started_by.clone(),
            started_ms: run.started_ms,
            finished_ms: run.finished_ms.unwrap_or(0),
            stages: stages
                .into_iter()
                .map(|s| StageReport {
                    name: s.name,
                    status: s.status,
                    started_ms: s.started_ms.unwrap_or(0),
                    finished_ms: s.finished_ms.unwrap_or(0),
                })
                .collect(),
            steps: steps
                .into_iter()
                .map(|s| StepReport {
                    step_id: s.id,
                    stage: stage_names.get(s.stage).cloned().unwrap_or_default(),
                    agent: s.agent,
                    target: s.target,
                    action: s.action,
                    status: s.status,
                    attempt: s.attempt,
                    summary: s.summary,
                    error: (!s.error_kind.is_empty()).then_some(StepError {
                        kind: s.error_kind,
                        message: s.error_message,
                    }),
                    started_ms: s.started_ms.unwrap_or(0),
                    finished_ms: s.finished_ms.unwrap_or(0),
                    changed: s.changed,
                    data_loss_window_seconds: s.data_loss_window,
                    details: s.details,
                })
                .collect(),
            data_loss_window_seconds: data_loss_window,
            hooks: hooks
                .into_iter()
                .map(|h| HookReport {
                    name: h.name,
                    phase: h.phase,
                    status: h.status,
                    attempt: h.attempt,
                    answer: h.answer,
                    started_ms: h.started_ms.unwrap_or(0),
                    finished_ms: h.finished_ms.unwrap_or(0),
                })
                .collect(),
        })
    }

    async fn existing_run(&self, run_id: &str) -> Result<RunRecord, Status> {
        self.shared
            .store
            .run(run_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no run {run_id} (see `rewind history`)")))
    }
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

type EventStream = Pin<Box<dyn Stream<Item = Result<RunEvent, Status>> + Send>>;

fn run_event(e: crate::store::EventRecord) -> RunEvent {
    RunEvent {
        seq: e.seq,
        run_id: e.run_id,
        unix_ms: e.unix_ms,
        kind: e.kind,
        stage: e.stage,
        agent: e.agent,
        target: e.target,
        step_id: e.step_id,
        message: e.message,
    }
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    type WatchStream = EventStream;

    async fn checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointReply>, Status> {
        let (operator, _) = self.authorize(&request, Role::Operator, "checkpoint")?;
        if self.shared.is_draining() {
            return Err(stopping());
        }
        let CheckpointRequest { release, env } = request.into_inner();
        if release.is_empty() {
            return Err(Status::invalid_argument(
                "a release needs a name, e.g. v1.2.3",
            ));
        }
        if self
            .shared
            .store
            .release(&release)
            .await
            .map_err(internal)?
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "release {release} already exists; choose another name"
            )));
        }
        let known = self.shared.store.agents().await.map_err(internal)?;
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
            .filter(|a| !self.shared.fleet.is_connected(&a.name))
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
                let fleet = self.shared.fleet.clone();
                let (agent, target) = (agent.name.clone(), target.clone());
                let step_id = format!("checkpoint/{release}/{agent}/{}/{}", target.name, nonce());
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
        self.shared
            .store
            .insert_release(&record, &operator, &snapshots)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => Status::already_exists(m),
                other => internal(other),
            })?;
        Ok(Response::new(CheckpointReply {
            release: Some(Release {
                name: release,
                env,
                created_ms: record.created_ms,
                snapshots: snapshots
                    .into_iter()
                    .map(|s| SnapshotRef {
                        agent: s.agent,
                        target: s.target,
                        plugin: s.plugin,
                        digest: s.digest,
                        summary: s.summary,
                        taken_at: s.taken_at,
                    })
                    .collect(),
            }),
        }))
    }

    async fn list_releases(
        &self,
        request: Request<ListReleasesRequest>,
    ) -> Result<Response<ListReleasesReply>, Status> {
        self.authorize(&request, Role::Viewer, "listing releases")?;
        let mut releases = Vec::new();
        for release in self.shared.store.releases().await.map_err(internal)? {
            let snapshots = self
                .shared
                .store
                .snapshots(&release.name)
                .await
                .map_err(internal)?;
            releases.push(Release {
                name: release.name,
                env: release.env,
                created_ms: release.created_ms,
                snapshots: snapshots
                    .into_iter()
                    .map(|s| SnapshotRef {
                        agent: s.agent,
                        target: s.target,
                        plugin: s.plugin,
                        digest: s.digest,
                        summary: s.summary,
                        taken_at: s.taken_at,
                    })
                    .collect(),
            });
        }
        Ok(Response::new(ListReleasesReply { releases }))
    }

    async fn preview(
        &self,
        request: Request<PlanRequest>,
    ) -> Result<Response<PreviewReply>, Status> {
        // A preview runs every plugin's `plan`, which reads its target (and
        // may verify a backup): that is work on the hosts, not a read.
        self.authorize(&request, Role::Operator, "previewing a plan")?;
        let PlanRequest {
            plan_toml,
            plan_path,
            release,
        } = request.into_inner();
        let (plan, resolved, snapshots) = self.prepare(&plan_toml, &plan_path, &release).await?;
        Ok(Response::new(
            self.preview(&plan, &resolved, &snapshots).await,
        ))
    }

    async fn start_run(&self, request: Request<RunRequest>) -> Result<Response<RunReply>, Status> {
        let (operator, role) = self.authorize(&request, Role::Operator, "starting a run")?;
        if self.shared.is_draining() {
            return Err(stopping());
        }
        let RunRequest {
            plan_toml,
            plan_path,
            release,
            confirm_data_loss,
            force,
            approved,
        } = request.into_inner();
        let (plan, resolved, snapshots) = self.prepare(&plan_toml, &plan_path, &release).await?;
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
                .filter(|a| !self.shared.fleet.is_connected(a))
                .collect()
        };
        if !offline.is_empty() {
            return Err(Status::failed_precondition(format!(
                "these agents of the plan are not connected: {}",
                offline.join(", ")
            )));
        }
        let preview = self.preview(&plan, &resolved, &snapshots).await;
        let agents: std::collections::BTreeMap<String, Option<String>> = self
            .shared
            .store
            .agents()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|a| (a.name, a.labels.get("env").cloned()))
            .collect();
        let release_env = self
            .shared
            .store
            .release(&release)
            .await
            .map_err(internal)?
            .map(|r| r.env)
            .unwrap_or_default();
        let mut problems = Vec::new();
        let mut data_loss = Vec::new();
        let mut protected = Vec::new();
        let mut window: Option<u64> = None;
        // Per step, in plan order: the window of a step that loses data.
        let mut windows = Vec::new();
        for stage in &preview.stages {
            for step in &stage.steps {
                if let Some(e) = &step.error {
                    problems.push(format!(
                        "stage {} host {} target {}: {}: {}",
                        stage.stage, step.agent, step.target, e.kind, e.message
                    ));
                }
                let loses_data = step
                    .preview
                    .as_ref()
                    .filter(|p| p.risk == Risk::DataLoss as i32);
                windows.push(loses_data.map(|p| p.data_loss_window_seconds.unwrap_or(0)));
                if let Some(p) = loses_data {
                    window = window.max(p.data_loss_window_seconds);
                    data_loss.push(format!(
                        "stage {} host {} target {}",
                        stage.stage, step.agent, step.target
                    ));
                    let env = agents.get(&step.agent).cloned().flatten();
                    let by_release = self
                        .config
                        .protected_environments()
                        .contains(&release_env.as_str())
                        .then(|| release_env.clone());
                    if let Some(env) = self
                        .config
                        .is_protected(&step.agent, env.as_deref())
                        .or(by_release)
                    {
                        protected.push(format!(
                            "host {} target {} (environment {env})",
                            step.agent, step.target
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(Status::failed_precondition(format!(
                "the preview failed, nothing was started:\n  {}",
                problems.join("\n  ")
            )));
        }
        if !approved.is_empty() && !force {
            let mut changed = Vec::new();
            for stage in &preview.stages {
                for step in &stage.steps {
                    let key = approval_key(&stage.stage, &step.agent, &step.target);
                    if approved.get(&key) != Some(&step.fingerprint) {
                        changed.push(format!(
                            "stage {} host {} target {}",
                            stage.stage, step.agent, step.target
                        ));
                    }
                }
            }
            if !changed.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "the targets changed since the preview you approved, nothing was started: {}; preview again (or run with --force)",
                    changed.join("; ")
                )));
            }
        }
        if !data_loss.is_empty() && !confirm_data_loss {
            return Err(Status::failed_precondition(format!(
                "this rollback loses data{} ({}); run it again with --confirm-data-loss",
                window
                    .map(|w| format!(
                        " written in the last {}",
                        humantime::format_duration(Duration::from_secs(w))
                    ))
                    .unwrap_or_default(),
                data_loss.join("; ")
            )));
        }
        if !protected.is_empty() && role < Role::Admin {
            return Err(Status::permission_denied(format!(
                "operator {operator} has role {role}; data-loss steps on protected environments need the admin role: {}",
                protected.join("; ")
            )));
        }
        let run = RunRecord {
            id: format!("run-{}-{}", now_ms(), nonce()),
            plan_name: plan.name.clone(),
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
        };
        let run_id = run.id.clone();
        runner::start(self.shared.clone(), run, plan, resolved, snapshots, windows)
            .await
            .map_err(|e| match e {
                runner::StartError::Plan(m) => Status::failed_precondition(m),
                runner::StartError::Store(e) => internal(e),
            })?;
        Ok(Response::new(RunReply {
            run_id,
            status: "running".into(),
        }))
    }

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        self.authorize(&request, Role::Viewer, "watching a run")?;
        let WatchRequest { run_id, after_seq } = request.into_inner();
        self.existing_run(&run_id).await?;
        // Subscribe first, then read the journal, so nothing falls between.
        let mut live = self.shared.events.subscribe();
        let store = self.shared.store.clone();
        let stream = async_stream(move |tx| async move {
            // Send the events after `last`; true when the run ended or the
            // watcher left.
            async fn send_all(
                tx: &tokio::sync::mpsc::Sender<Result<RunEvent, Status>>,
                events: Vec<crate::store::EventRecord>,
                last: &mut u64,
            ) -> bool {
                for e in events {
                    if e.seq <= *last {
                        continue;
                    }
                    *last = e.seq;
                    let ended = matches!(
                        e.kind.as_str(),
                        "run-succeeded" | "run-failed" | "run-cancelled"
                    );
                    if tx.send(Ok(run_event(e))).await.is_err() || ended {
                        return true;
                    }
                }
                false
            }
            let mut last = after_seq;
            match store.events_after(&run_id, last).await {
                Ok(events) => {
                    if send_all(&tx, events, &mut last).await {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(e) if e.run_id != run_id => {}
                    Ok(e) if e.seq == 0 => {
                        // Progress is best effort: a watcher that is behind skips it.
                        if tx.try_send(Ok(run_event(e))).is_err() && tx.is_closed() {
                            return;
                        }
                    }
                    Ok(e) => {
                        if send_all(&tx, vec![e], &mut last).await {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        match store.events_after(&run_id, last).await {
                            Ok(events) => {
                                if send_all(&tx, events, &mut last).await {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(internal(e))).await;
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn cancel(&self, request: Request<RunRef>) -> Result<Response<RunReply>, Status> {
        self.authorize(&request, Role::Operator, "cancelling a run")?;
        let run_id = request.into_inner().run_id;
        let run = self.existing_run(&run_id).await?;
        if !self
            .shared
            .fleet
            .to_run(&run_id, crate::fleet::RunInput::Cancel)
            .await
        {
            return Err(Status::failed_precondition(format!(
                "run {run_id} is {}; there is nothing to cancel",
                run.status
            )));
        }
        Ok(Response::new(RunReply {
            run_id,
            status: "cancelling".into(),
        }))
    }

    async fn approve(&self, request: Request<RunRef>) -> Result<Response<RunReply>, Status> {
        self.authorize(&request, Role::Operator, "approving a run")?;
        let run_id = request.into_inner().run_id;
        let run = self.existing_run(&run_id).await?;
        if run.status != "paused"
            || !self
                .shared
                .fleet
                .to_run(&run_id, crate::fleet::RunInput::Approve)
                .await
        {
            return Err(Status::failed_precondition(format!(
                "run {run_id} is {}, not paused",
                run.status
            )));
        }
        Ok(Response::new(RunReply {
            run_id,
            status: "running".into(),
        }))
    }

    async fn get_run(&self, request: Request<RunRef>) -> Result<Response<RunReport>, Status> {
        self.authorize(&request, Role::Viewer, "reading a run")?;
        let run = self.existing_run(&request.into_inner().run_id).await?;
        Ok(Response::new(self.report(&run, true).await?))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        self.authorize(&request, Role::Viewer, "reading the history")?;
        let limit = match request.into_inner().limit {
            0 => 20,
            n => n.min(1000),
        };
        let mut runs = Vec::new();
        for run in self.shared.store.runs(limit).await.map_err(internal)? {
            runs.push(self.report(&run, false).await?);
        }
        Ok(Response::new(HistoryReply { runs }))
    }

    async fn fleet(&self, request: Request<FleetRequest>) -> Result<Response<FleetReply>, Status> {
        self.authorize(&request, Role::Viewer, "listing the fleet")?;
        let agents = self
            .shared
            .store
            .agents()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|a| AgentStatus {
                connected: self.shared.fleet.is_connected(&a.name),
                labels: a
                    .labels
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
                targets: a
                    .targets
                    .into_iter()
                    .map(|t| TargetInfo {
                        name: t.name,
                        plugin: t.plugin,
                        digest: t.digest,
                    })
                    .collect(),
                last_seen_ms: a.last_seen_ms,
                name: a.name,
            })
            .collect();
        Ok(Response::new(FleetReply {
            agents,
            refused: self.shared.fleet.refusals().into_iter().collect(),
        }))
    }

    async fn remove_agent(&self, request: Request<AgentRef>) -> Result<Response<AgentRef>, Status> {
        let (operator, _) = self.authorize(&request, Role::Admin, "retiring an agent")?;
        let AgentRef { agent } = request.into_inner();
        if self.shared.fleet.is_connected(&agent) {
            return Err(Status::failed_precondition(format!(
                "agent {agent} is connected: stop it (and revoke its certificate) before retiring it"
            )));
        }
        if !self
            .shared
            .store
            .remove_agent(&agent)
            .await
            .map_err(internal)?
        {
            return Err(Status::not_found(format!(
                "no agent {agent} (see `rewind fleet`)"
            )));
        }
        tracing::info!(agent, operator, "agent retired");
        Ok(Response::new(AgentRef { agent }))
    }
}

/// Events queued for one watcher; a watcher that does not read slows its
/// own feed (which re-reads the journal when it falls behind) and nothing else.
const WATCH_QUEUE: usize = 1024;

/// A stream fed by a task through a bounded channel.
fn async_stream<F, Fut>(body: F) -> EventStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<RunEvent, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
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
