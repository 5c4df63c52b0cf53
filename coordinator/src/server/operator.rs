//! The operator service behind the `rewind` CLI. Every call is authorised by
//! the caller's certificate: an operator identity with a role from the
//! coordinator's configuration. Reading needs the viewer role; anything that
//! makes agents act (checkpoints, previews, whose plugins read their
//! targets, runs) needs operator; data-loss steps on a protected
//! environment's agents, and retiring agents, need admin.
//!
//! A standby (a coordinator that does not lead, docs/ha.md) answers reads
//! from the journal; what acts or depends on the connected agents is
//! refused with the leader's name and URL, which the CLI follows.

use crate::config::{CoordinatorConfig, Role};
use crate::engine::RunKind;
use crate::launch::{self, internal};
use crate::leader::Leadership;
use crate::runner::Shared;
use crate::store::{RunRecord, SnapshotRecord};
use crate::vocabulary::EventKind;
use rewind_proto::identity::{Authenticator, Kind};
use rewind_proto::v1::operator_service_server::OperatorService;
use rewind_proto::v1::*;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub use crate::launch::approval_key;

pub struct OperatorApi {
    pub shared: Arc<Shared>,
    pub config: Arc<CoordinatorConfig>,
    pub authenticator: Arc<Authenticator>,
    pub leadership: Arc<Leadership>,
}

fn snapshot_ref(s: SnapshotRecord) -> SnapshotRef {
    SnapshotRef {
        agent: s.agent,
        target: s.target,
        plugin: s.plugin,
        digest: s.digest,
        summary: s.summary,
        taken_at: s.taken_at,
    }
}

/// Every operator call, for the one table of what each needs.
#[derive(Debug, Clone, Copy)]
enum Call {
    WhoAmI,
    Checkpoint,
    ListReleases,
    /// A preview runs every plugin's `plan`, which reads its target (and
    /// may verify a backup): work on the hosts, not a read.
    Preview,
    StartRun,
    Watch,
    Cancel,
    Approve,
    GetRun,
    History,
    Fleet,
    RemoveAgent,
    ListDrills,
    /// A drill really rolls its environment back and forward.
    RunDrill,
    DrillHistory,
    GetDrillRun,
    DrillReport,
}

impl Call {
    /// The role a call needs, whether only the leader answers it (it acts,
    /// or knows which agents are connected), and what it is, for refusals.
    const fn policy(self) -> (Role, bool, &'static str) {
        match self {
            Call::WhoAmI => (Role::Viewer, false, "asking who you are"),
            Call::Checkpoint => (Role::Operator, true, "checkpoint"),
            Call::ListReleases => (Role::Viewer, false, "listing releases"),
            Call::Preview => (Role::Operator, true, "previewing a plan"),
            Call::StartRun => (Role::Operator, true, "starting a run"),
            Call::Watch => (Role::Viewer, false, "watching a run"),
            Call::Cancel => (Role::Operator, true, "cancelling a run"),
            Call::Approve => (Role::Operator, true, "approving a run"),
            Call::GetRun => (Role::Viewer, false, "reading a run"),
            Call::History => (Role::Viewer, false, "reading the history"),
            Call::Fleet => (Role::Viewer, true, "listing the fleet"),
            Call::RemoveAgent => (Role::Admin, true, "retiring an agent"),
            Call::ListDrills => (Role::Viewer, false, "listing drills"),
            Call::RunDrill => (Role::Operator, true, "running a drill"),
            Call::DrillHistory => (Role::Viewer, false, "reading a drill's history"),
            Call::GetDrillRun => (Role::Viewer, false, "reading a drill run"),
            Call::DrillReport => (Role::Viewer, false, "reading a drill's report"),
        }
    }
}

impl OperatorApi {
    /// The calling operator's name and role, if it may make `call`; and
    /// this coordinator the leader, where the call needs it.
    fn admit<T>(&self, request: &Request<T>, call: Call) -> Result<(String, Role), Status> {
        let (needed, leader, what) = call.policy();
        let who = self.authorize(request, needed, what)?;
        if leader {
            self.leading()?;
        }
        Ok(who)
    }

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

    /// Only the leader acts, and knows which agents are connected.
    fn leading(&self) -> Result<(), Status> {
        if self.leadership.is_ready() {
            Ok(())
        } else {
            Err(self.leadership.refusal())
        }
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
                    env: run.env.clone(),
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
            env: run.env.clone(),
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

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        let (operator, role) = self.admit(&request, Call::WhoAmI)?;
        let leads = self.leadership.is_ready();
        let (leader, leader_url) = if leads {
            (
                self.leadership.name.clone(),
                self.leadership.address.clone(),
            )
        } else {
            self.leadership.leader()
        };
        Ok(Response::new(WhoAmIReply {
            operator,
            role: role.to_string(),
            coordinator: self.leadership.name.clone(),
            leads,
            leader,
            leader_url,
        }))
    }

    async fn checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointReply>, Status> {
        let (operator, _) = self.admit(&request, Call::Checkpoint)?;
        let CheckpointRequest { release, env } = request.into_inner();
        let (record, snapshots) =
            launch::checkpoint(&self.shared, &release, &env, &operator, false).await?;
        Ok(Response::new(CheckpointReply {
            release: Some(Release {
                name: record.name,
                env: record.env,
                created_ms: record.created_ms,
                snapshots: snapshots.into_iter().map(snapshot_ref).collect(),
            }),
        }))
    }

    async fn list_releases(
        &self,
        request: Request<ListReleasesRequest>,
    ) -> Result<Response<ListReleasesReply>, Status> {
        self.admit(&request, Call::ListReleases)?;
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
                snapshots: snapshots.into_iter().map(snapshot_ref).collect(),
            });
        }
        Ok(Response::new(ListReleasesReply { releases }))
    }

    async fn preview(
        &self,
        request: Request<PlanRequest>,
    ) -> Result<Response<PreviewReply>, Status> {
        self.admit(&request, Call::Preview)?;
        let PlanRequest {
            plan_toml,
            plan_path,
            release,
            env,
        } = request.into_inner();
        let prepared =
            launch::prepare(&self.shared, &plan_toml, &plan_path, &release, Some(&env)).await?;
        Ok(Response::new(
            launch::preview(&self.shared, &prepared).await,
        ))
    }

    async fn start_run(&self, request: Request<RunRequest>) -> Result<Response<RunReply>, Status> {
        let (operator, role) = self.admit(&request, Call::StartRun)?;
        let RunRequest {
            plan_toml,
            plan_path,
            release,
            confirm_data_loss,
            force,
            approved,
            preempt_drill,
            env,
        } = request.into_inner();
        let run_id = launch::start_run(
            &self.shared,
            &self.config,
            launch::Start {
                plan_toml,
                plan_path,
                release,
                confirm_data_loss,
                force,
                approved,
                by: operator,
                role,
                kind: RunKind::Rollback,
                id: None,
                drill_run: String::new(),
                env: Some(env),
                preempt_drill,
            },
        )
        .await?;
        Ok(Response::new(RunReply {
            run_id,
            status: "running".into(),
        }))
    }

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        self.admit(&request, Call::Watch)?;
        let WatchRequest { run_id, after_seq } = request.into_inner();
        // A run, or a drill run (whose events are its phases).
        if self.existing_run(&run_id).await.is_err() {
            super::drills::existing(&self.shared, &run_id)
                .await
                .map_err(|_| {
                    Status::not_found(format!(
                        "no run or drill run {run_id} (see `rewind history`)"
                    ))
                })?;
        }
        // Subscribe first, then read the journal, so nothing falls between.
        let mut live = self.shared.events.subscribe();
        let store = self.shared.store.clone();
        let leadership = self.leadership.clone();
        let stream = async_stream(move |tx| async move {
            let _open = crate::metrics::Open::new(&crate::metrics::METRICS.watch_streams);
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
                    let ended = e.kind().is_some_and(EventKind::ends_watch);
                    if tx.send(Ok(run_event(e))).await.is_err() || ended {
                        return true;
                    }
                }
                false
            }
            // Send the journal's events after `last`; true when the watch
            // is over (as `send_all`, or the journal cannot be read).
            async fn catch_up(
                store: &crate::store::Store,
                run_id: &str,
                tx: &tokio::sync::mpsc::Sender<Result<RunEvent, Status>>,
                last: &mut u64,
            ) -> bool {
                match store.events_after(run_id, *last).await {
                    Ok(events) => send_all(tx, events, last).await,
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        true
                    }
                }
            }
            let mut last = after_seq;
            if catch_up(&store, &run_id, &tx, &mut last).await {
                return;
            }
            // A standby has no live events: it reads the journal the
            // leader writes, every FOLLOW_INTERVAL.
            let mut follow = tokio::time::interval(FOLLOW_INTERVAL);
            loop {
                let received = tokio::select! {
                    // The watcher left (a paused run may wait for days).
                    _ = tx.closed() => return,
                    received = live.recv() => received,
                    _ = follow.tick(), if !leadership.is_ready() => {
                        if catch_up(&store, &run_id, &tx, &mut last).await {
                            return;
                        }
                        continue;
                    }
                };
                match received {
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
                        if catch_up(&store, &run_id, &tx, &mut last).await {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn cancel(&self, request: Request<RunRef>) -> Result<Response<RunReply>, Status> {
        self.admit(&request, Call::Cancel)?;
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
        self.admit(&request, Call::Approve)?;
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
        self.admit(&request, Call::GetRun)?;
        let run = self.existing_run(&request.into_inner().run_id).await?;
        Ok(Response::new(self.report(&run, true).await?))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        self.admit(&request, Call::History)?;
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
        self.admit(&request, Call::Fleet)?;
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
        let (operator, _) = self.admit(&request, Call::RemoveAgent)?;
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

    async fn list_drills(
        &self,
        request: Request<ListDrillsRequest>,
    ) -> Result<Response<ListDrillsReply>, Status> {
        self.admit(&request, Call::ListDrills)?;
        Ok(Response::new(
            super::drills::list(&self.shared, &self.config).await?,
        ))
    }

    async fn run_drill(
        &self,
        request: Request<DrillRef>,
    ) -> Result<Response<DrillRunReply>, Status> {
        let (operator, _) = self.admit(&request, Call::RunDrill)?;
        Ok(Response::new(
            super::drills::start(&self.shared, &self.config, &operator, request.into_inner())
                .await?,
        ))
    }

    async fn drill_history(
        &self,
        request: Request<DrillHistoryRequest>,
    ) -> Result<Response<DrillHistoryReply>, Status> {
        self.admit(&request, Call::DrillHistory)?;
        Ok(Response::new(
            super::drills::history(&self.shared, &self.config, request.into_inner()).await?,
        ))
    }

    async fn get_drill_run(
        &self,
        request: Request<DrillRunRef>,
    ) -> Result<Response<DrillRunSummary>, Status> {
        self.admit(&request, Call::GetDrillRun)?;
        let record = super::drills::existing(&self.shared, &request.into_inner().run_id).await?;
        Ok(Response::new(
            super::drills::summary(&self.shared, record).await?,
        ))
    }

    async fn drill_report(
        &self,
        request: Request<DrillRunRef>,
    ) -> Result<Response<DrillReportReply>, Status> {
        self.admit(&request, Call::DrillReport)?;
        Ok(Response::new(
            super::drills::report(&self.shared, &request.into_inner().run_id).await?,
        ))
    }
}

/// Events queued for one watcher; a watcher that does not read slows its
/// own feed (which re-reads the journal when it falls behind) and nothing else.
const WATCH_QUEUE: usize = 1024;
/// How often a standby reads the journal for a watched run's new events.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

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
