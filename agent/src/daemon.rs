//! `rewind-agent run`: dial the coordinator over mutual TLS, hold one stream,
//! and run the steps it sends through the plugin host, recording each in the
//! ledger so that no step acts twice. Reconnects with backoff; a step that
//! was running when the agent died is settled at start by the plugin's
//! verify, not run again.

use crate::config::{AgentConfig, CoordinatorLink, TargetConfig};
use crate::host::bindings::{self, RestoreOptions, SnapshotRecord};
use crate::host::{Action, ActionOutput, CallError, LoadedPlugin, PluginHost, ProgressSink};
use crate::ledger::{Begin, Ledger};
use rewind_proto::v1::agent_service_client::AgentServiceClient;
use rewind_proto::v1::{
    self as wire, AgentMessage, Heartbeat, Hello, StepProgress, StepRequest, StepResult,
    TargetInfo, agent_message, coordinator_message, step_result,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{}: no [agent.coordinator] section: the agent does not know where to connect", .0.display())]
    NoCoordinator(std::path::PathBuf),
    #[error(transparent)]
    Load(#[from] crate::host::LoadError),
    #[error("{0}")]
    Grant(String),
    #[error("ledger {}: {error}", path.display())]
    Ledger {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rewind_proto::tls::TlsError),
    #[error("coordinator URL {url}: {error}")]
    Url { url: String, error: String },
}

/// One agent: its configuration, loaded plugins, ledger and running steps.
pub struct Agent {
    config: AgentConfig,
    link: CoordinatorLink,
    host: Arc<PluginHost>,
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    ledger: Ledger,
    running: Mutex<HashSet<String>>,
    slots: Semaphore,
    /// The stream of the current session, if connected. Results go to the
    /// session that is current when a step finishes, not the one it came on.
    outbound: Mutex<Option<mpsc::Sender<AgentMessage>>>,
}

impl Agent {
    /// Load and check every target's plugin; refuse to start on any problem,
    /// naming the plugin, the interface and the target.
    pub fn new(config: AgentConfig, host: Arc<PluginHost>) -> Result<Arc<Agent>, DaemonError> {
        let link = config
            .coordinator
            .clone()
            .ok_or_else(|| DaemonError::NoCoordinator(config.path.clone()))?;
        let mut plugins = BTreeMap::new();
        for target in config.targets.values() {
            let plugin = host.load(&config.plugins[&target.plugin])?;
            if let Some((interface, capability)) = plugin.ungranted(target).into_iter().next() {
                return Err(DaemonError::Grant(format!(
                    "{}: plugin {} imports {interface}, which target {} does not grant (capability `{capability}`)",
                    config.path.display(),
                    plugin.name,
                    target.name
                )));
            }
            plugins.insert(target.name.clone(), plugin);
        }
        let ledger = Ledger::open(&config.state_dir).map_err(|error| DaemonError::Ledger {
            path: config.state_dir.join("ledger"),
            error,
        })?;
        Ok(Arc::new(Agent {
            config,
            link,
            host,
            plugins,
            ledger,
            running: Mutex::new(HashSet::new()),
            slots: Semaphore::new(crate::host::MAX_CONCURRENT_CALLS as usize),
            outbound: Mutex::new(None),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Settle steps that were running when the agent stopped: a restore is
    /// checked with the plugin's verify against its snapshot; nothing is run again.
    pub async fn recover(&self) -> Result<usize, DaemonError> {
        let ledger_error = |error| DaemonError::Ledger {
            path: self.config.state_dir.join("ledger"),
            error,
        };
        let interrupted = self.ledger.interrupted().map_err(ledger_error)?;
        for step in &interrupted {
            let mut result = match (wire::Action::try_from(step.action), &step.snapshot) {
                (Ok(wire::Action::Restore), Some(snapshot)) => {
                    let verify = StepRequest {
                        action: wire::Action::Verify as i32,
                        snapshot: Some(snapshot.clone()),
                        ..step.clone()
                    };
                    let mut checked = self.execute(&verify, None).await;
                    match checked.outcome.take() {
                        Some(step_result::Outcome::Done(outcome)) => {
                            checked.outcome = Some(step_result::Outcome::Done(wire::Outcome {
                                changed: true,
                                summary: format!(
                                    "completed before the agent restarted (verified: {})",
                                    outcome.summary
                                ),
                                details: outcome.details,
                            }));
                        }
                        Some(step_result::Outcome::Error(error)) => {
                            checked.outcome = Some(step_result::Outcome::Error(wire::StepError {
                                kind: "interrupted".into(),
                                message: format!(
                                    "the agent restarted during this step, and verify says the target is not in the snapshot's state ({}: {}); the step was not run again",
                                    error.kind, error.message
                                ),
                            }));
                        }
                        other => checked.outcome = other,
                    }
                    checked
                }
                _ => self.error_result(
                    step,
                    "interrupted",
                    "the agent restarted during this step; it was not run again".into(),
                ),
            };
            result.recovered = true;
            result.attempt = step.attempt;
            result.run_id = step.run_id.clone();
            result.step_id = step.step_id.clone();
            self.ledger.finish(&result).map_err(ledger_error)?;
            tracing::warn!(
                step = step.step_id,
                "settled a step interrupted by an agent restart"
            );
        }
        Ok(interrupted.len())
    }

    fn hello(&self) -> Hello {
        Hello {
            agent: self.config.name.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            targets: self
                .plugins
                .iter()
                .map(|(target, plugin)| TargetInfo {
                    name: target.clone(),
                    plugin: plugin.name.clone(),
                    digest: plugin.digest.clone(),
                })
                .collect(),
            finished: self.ledger.recent_results().unwrap_or_default(),
            running: self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    async fn channel(&self) -> Result<Channel, String> {
        let url = &self.link.url;
        let domain = url
            .trim_start_matches("https://")
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .to_string();
        let tls = self.link.tls.client(&domain).map_err(|e| e.to_string())?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("coordinator URL {url}: {e}"))?
            .tls_config(tls)
            .map_err(|e| rewind_proto::tls::explain(&e))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        endpoint
            .connect()
            .await
            .map_err(|e| rewind_proto::tls::explain(&e))
    }

    /// Stay connected until `shutdown` completes.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = async {
                let channel = self.channel().await?;
                backoff = Duration::from_millis(100);
                self.clone().session(channel).await
            };
            tokio::select! {
                _ = &mut shutdown => return,
                ended = session => {
                    match ended {
                        Ok(()) => tracing::info!(agent = self.config.name, "the coordinator closed the stream; reconnecting"),
                        Err(e) => tracing::warn!(agent = self.config.name, "coordinator: {e}; retrying in {backoff:?}"),
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(self: Arc<Self>, channel: Channel) -> Result<(), String> {
        let (tx, rx) = mpsc::channel(1024);
        let hello = AgentMessage {
            body: Some(agent_message::Body::Hello(self.hello())),
        };
        tx.send(hello).await.map_err(|e| e.to_string())?;
        let mut client = AgentServiceClient::new(channel);
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        *self.outbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
        let heartbeat = {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(HEARTBEAT);
                loop {
                    interval.tick().await;
                    let beat = Heartbeat {
                        unix_ms: crate::units::now_ms(),
                    };
                    if tx
                        .send(AgentMessage {
                            body: Some(agent_message::Body::Heartbeat(beat)),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let ended = loop {
            match inbound.message().await {
                Ok(Some(message)) => match message.body {
                    Some(coordinator_message::Body::Step(step)) => {
                        tokio::spawn(self.clone().handle(step));
                    }
                    // A running plugin call is never cut short: nothing half-done.
                    Some(coordinator_message::Body::Cancel(_))
                    | Some(coordinator_message::Body::Welcome(_))
                    | None => {}
                },
                Ok(None) => break Ok(()),
                Err(status) => break Err(format!("{}: {}", status.code(), status.message())),
            }
        };
        heartbeat.abort();
        *self.outbound.lock().unwrap_or_else(|e| e.into_inner()) = None;
        ended
    }

    fn outbound(&self) -> Option<mpsc::Sender<AgentMessage>> {
        self.outbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Run a delivered step once, whatever how often it is delivered.
    async fn handle(self: Arc<Self>, step: StepRequest) {
        let in_process = !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(step.step_id.clone());
        // The ledger writes durably (fsync): off the async workers.
        let begun = {
            let (ledger, request) = (self.ledger.clone(), step.clone());
            tokio::task::spawn_blocking(move || ledger.begin(&request, in_process))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        let result = match begun {
            Ok(Begin::Done(result)) => {
                if !in_process {
                    self.running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&step.step_id);
                }
                Some(result)
            }
            Ok(Begin::Running) => None,
            Ok(Begin::Act) => {
                let progress = {
                    let agent = Arc::downgrade(&self);
                    let (run_id, step_id, attempt) =
                        (step.run_id.clone(), step.step_id.clone(), step.attempt);
                    let sink: ProgressSink = Arc::new(move |report| {
                        let Some(tx) = agent.upgrade().and_then(|a| a.outbound()) else {
                            return;
                        };
                        let progress = StepProgress {
                            run_id: run_id.clone(),
                            step_id: step_id.clone(),
                            attempt,
                            detail: report.detail,
                            percent: report.percent.map(u32::from),
                        };
                        let _ = tx.try_send(AgentMessage {
                            body: Some(agent_message::Body::Progress(progress)),
                        });
                    });
                    sink
                };
                let result = {
                    let _slot = self.slots.acquire().await;
                    self.execute(&step, Some(progress)).await
                };
                let finished = {
                    let (ledger, result) = (self.ledger.clone(), result.clone());
                    tokio::task::spawn_blocking(move || ledger.finish(&result))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                };
                if let Err(e) = finished {
                    tracing::error!(
                        step = step.step_id,
                        "cannot record the step's result in the ledger: {e}"
                    );
                }
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&step.step_id);
                Some(result)
            }
            Err(e) => {
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&step.step_id);
                // Without a ledger record the step must not act.
                Some(self.error_result(
                    &step,
                    "ledger",
                    format!("cannot record the step before acting: {e}"),
                ))
            }
        };
        if let (Some(result), Some(tx)) = (result, self.outbound()) {
            // If the stream is gone, the ledger has it for the next Hello.
            let _ = tx
                .send(AgentMessage {
                    body: Some(agent_message::Body::Result(result)),
                })
                .await;
        }
    }

    fn error_result(&self, step: &StepRequest, kind: &str, message: String) -> StepResult {
        StepResult {
            run_id: step.run_id.clone(),
            step_id: step.step_id.clone(),
            attempt: step.attempt,
            outcome: Some(step_result::Outcome::Error(wire::StepError {
                kind: kind.into(),
                message: format!("agent {}: {message}", self.config.name),
            })),
            ..Default::default()
        }
    }

    /// Run a step's action through the plugin host.
    async fn execute(&self, step: &StepRequest, progress: Option<ProgressSink>) -> StepResult {
        let Some(target) = self.config.targets.get(&step.target) else {
            return self.error_result(
                step,
                "unknown-target",
                format!("no target {} on this agent", step.target),
            );
        };
        let action = match action_of(step) {
            Ok(action) => action,
            Err(message) => return self.error_result(step, "invalid-step", message),
        };
        let plugin = &self.plugins[&target.name];
        let outcome = self.host.call(plugin, target, action, progress).await;
        result_of(step, target, outcome)
    }
}

fn action_of(step: &StepRequest) -> Result<Action, String> {
    let to = || -> Result<SnapshotRecord, String> {
        let snapshot = step
            .snapshot
            .as_ref()
            .ok_or("the step carries no snapshot")?;
        Ok(SnapshotRecord {
            data: snapshot.data.clone(),
            summary: snapshot.summary.clone(),
            taken_at: snapshot.taken_at,
        })
    };
    Ok(
        match wire::Action::try_from(step.action)
            .map_err(|_| format!("unknown action {}", step.action))?
        {
            wire::Action::Snapshot => Action::Snapshot,
            wire::Action::Plan => Action::Plan { to: to()? },
            wire::Action::Restore => Action::Restore {
                to: to()?,
                options: RestoreOptions {
                    confirm_data_loss: step.confirm_data_loss,
                    force: step.force,
                    step_id: step.step_id.clone(),
                },
            },
            wire::Action::Restart => Action::Restart {
                parts: step.parts.clone(),
            },
            wire::Action::Verify => Action::Verify { to: to()? },
            wire::Action::Unspecified => return Err("the step has no action".into()),
        },
    )
}

fn risk(risk: bindings::Risk) -> i32 {
    (match risk {
        bindings::Risk::None => wire::Risk::None,
        bindings::Risk::Restart => wire::Risk::Restart,
        bindings::Risk::Downtime => wire::Risk::Downtime,
        bindings::Risk::DataLoss => wire::Risk::DataLoss,
    }) as i32
}

fn result_of(
    step: &StepRequest,
    target: &TargetConfig,
    outcome: Result<crate::host::CallOutput, CallError>,
) -> StepResult {
    let logs = |lines: &[crate::host::LogLine]| {
        lines
            .iter()
            .map(|l| wire::LogLine {
                level: l.level.into(),
                message: l.message.clone(),
            })
            .collect()
    };
    let mut result = StepResult {
        run_id: step.run_id.clone(),
        step_id: step.step_id.clone(),
        attempt: step.attempt,
        ..Default::default()
    };
    match outcome {
        Ok(output) => {
            result.logs = logs(&output.logs);
            result.elapsed_ms = output.elapsed_ms;
            result.outcome = Some(match output.output {
                ActionOutput::Captured(c) => step_result::Outcome::Captured(wire::Captured {
                    data: c.data,
                    summary: c.summary,
                }),
                ActionOutput::Preview(p) => step_result::Outcome::Preview(wire::Preview {
                    changes: p
                        .changes
                        .into_iter()
                        .map(|c| wire::Change {
                            subject: c.subject,
                            summary: c.summary,
                            detail: c.detail.unwrap_or_default(),
                            risk: risk(c.risk),
                        })
                        .collect(),
                    risk: risk(p.risk),
                    data_loss_window_seconds: p.data_loss_window_seconds,
                }),
                ActionOutput::Outcome(o) => step_result::Outcome::Done(wire::Outcome {
                    changed: o.changed,
                    summary: o.summary,
                    details: o.details,
                }),
                ActionOutput::Info(info) => step_result::Outcome::Done(wire::Outcome {
                    changed: false,
                    summary: format!("{} {}", info.name, info.version),
                    details: vec![info.description],
                }),
            });
        }
        Err(error) => {
            result.logs = logs(error.logs());
            tracing::warn!(target = target.name, step = step.step_id, "{error}");
            result.outcome = Some(step_result::Outcome::Error(wire::StepError {
                kind: error.kind().into(),
                message: error.to_string(),
            }));
        }
    }
    result
}
