//! `rewind-agent run`: dial the coordinator over mutual TLS, hold one stream,
//! and run the steps it sends through the plugin host, recording each in the
//! ledger so that no step acts twice. Reconnects with backoff; a step that
//! was running when the agent died is settled at start by the plugin's
//! verify, not run again.
//!
//! One action per target at a time: steps for a target wait their turn, and
//! a step still waiting when the coordinator cancels it (it timed out, or
//! its run was cancelled) is dropped and reported `cancelled`. A step that
//! is delivered again while it runs (a retry, a redelivery after a
//! reconnect) waits for it and returns its result.

use crate::config::{AgentConfig, CoordinatorLink, TargetConfig};
use crate::host::bindings::{self, RestoreOptions, SnapshotRecord};
use crate::host::{Action, ActionOutput, CallError, LoadedPlugin, PluginHost, ProgressSink};
use crate::ledger::{Begin, Ledger};
use crate::limits;
use rewind_proto::connect::Dialer;
use rewind_proto::crl::CrlFile;
use rewind_proto::v1::agent_service_client::AgentServiceClient;
use rewind_proto::v1::{
    self as wire, AgentMessage, Heartbeat, Hello, StepProgress, StepRequest, StepResult,
    TargetInfo, agent_message, coordinator_message, step_result,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// How often a heartbeat goes up until the coordinator's Welcome says.
const HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Ledger operations under way at once in one process.
const LEDGER_WRITERS: usize = 8;
/// Messages queued for the coordinator before progress reports are dropped
/// (results wait for room instead).
const OUTBOUND_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{}: no [agent.coordinator] section: the agent does not know where to connect", .0.display())]
    NoCoordinator(std::path::PathBuf),
    #[error(transparent)]
    Load(#[from] Box<crate::host::LoadError>),
    #[error("{0}")]
    Grant(String),
    /// Another agent holds the state directory.
    #[error("{0}")]
    StateDir(String),
    #[error("ledger {}: {error}", path.display())]
    Ledger {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rewind_proto::tls::TlsError),
    #[error("{0}")]
    Link(String),
}

/// A step this process is handling: its attempt, whether it acts yet, how
/// to cancel it while it waits, and its result once known.
struct InFlight {
    attempt: u32,
    acting: bool,
    cancel: Arc<Notify>,
    result: watch::Receiver<Option<StepResult>>,
}

/// One agent: its configuration, loaded plugins, ledger and running steps.
pub struct Agent {
    config: AgentConfig,
    /// One per coordinator URL; `current` is the one tried now.
    dialers: Vec<Dialer>,
    current: std::sync::atomic::AtomicUsize,
    /// The coordinators' URLs, as configured (`dialers` in the same order).
    urls: Vec<String>,
    /// The coordinator a standby named as the leader (an index into
    /// `urls`, or usize::MAX): tried next, if it is one of ours.
    hinted: std::sync::atomic::AtomicUsize,
    host: Arc<PluginHost>,
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    ledger: Ledger,
    /// This agent's hold on its state directory, for as long as it runs.
    _lock: crate::lock::StateLock,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// One action per target at a time.
    targets: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    slots: Semaphore,
    /// The stream of the current session, if connected. Results go to the
    /// session that is current when a step finishes, not the one it came on.
    outbound: Mutex<Option<mpsc::Sender<AgentMessage>>>,
}

impl Agent {
    /// Load and check every target's plugin; refuse to start on any problem,
    /// naming the plugin, the interface and the target.
    pub fn new(config: AgentConfig, host: Arc<PluginHost>) -> Result<Arc<Agent>, DaemonError> {
        let link: CoordinatorLink = config
            .coordinator
            .clone()
            .ok_or_else(|| DaemonError::NoCoordinator(config.path.clone()))?;
        let crl = match &link.crl {
            Some(path) => Some(Arc::new(CrlFile::open(path, &link.tls.ca).map_err(
                |e| {
                    DaemonError::Link(format!(
                        "{}: agent.coordinator.crl: {e}",
                        config.path.display()
                    ))
                },
            )?)),
            None => None,
        };
        let dialers = link
            .urls
            .iter()
            .map(|url| Dialer::new(url, &link.tls, crl.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DaemonError::Link(format!("{}: {e}", config.path.display())))?;
        let mut plugins = BTreeMap::new();
        for target in config.targets.values() {
            let plugin = host
                .load(&config.plugins[&target.plugin])
                .map_err(Box::new)?;
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
        let lock =
            crate::lock::StateLock::take(&config.state_dir).map_err(DaemonError::StateDir)?;
        let ledger = Ledger::open(&config.state_dir).map_err(|error| DaemonError::Ledger {
            path: config.state_dir.join("ledger"),
            error,
        })?;
        let targets = config
            .targets
            .keys()
            .map(|name| (name.clone(), Arc::new(tokio::sync::Mutex::new(()))))
            .collect();
        Ok(Arc::new(Agent {
            config,
            dialers,
            current: std::sync::atomic::AtomicUsize::new(0),
            urls: link.urls.clone(),
            hinted: std::sync::atomic::AtomicUsize::new(usize::MAX),
            host,
            plugins,
            ledger,
            _lock: lock,
            in_flight: Mutex::new(HashMap::new()),
            targets,
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
        let interrupted = self.ledger.interrupted();
        for step in &interrupted {
            let result = self
                .settle(step, "the agent restarted during this step".to_string())
                .await;
            self.ledger.finish(&result).map_err(ledger_error)?;
            tracing::warn!(
                step = step.step_id,
                "settled a step interrupted by an agent restart"
            );
        }
        Ok(interrupted.len())
    }

    /// The outcome of a step that may have acted already, found without
    /// acting again: a restore is checked with the plugin's verify.
    async fn settle(&self, step: &StepRequest, why: String) -> StepResult {
        let mut result = match (wire::Action::try_from(step.action), &step.snapshot) {
            (Ok(wire::Action::Restore), Some(snapshot)) => {
                let verify = StepRequest {
                    action: wire::Action::Verify as i32,
                    snapshot: Some(snapshot.clone()),
                    ..step.clone()
                };
                let mut checked = {
                    let _turn = self.turn(&step.target).await;
                    self.execute(&verify, None).await
                };
                match checked.outcome.take() {
                    Some(step_result::Outcome::Done(outcome)) => {
                        checked.outcome = Some(step_result::Outcome::Done(wire::Outcome {
                            changed: true,
                            summary: format!(
                                "{why}; verify says it completed ({})",
                                outcome.summary
                            ),
                            details: outcome.details,
                        }));
                    }
                    Some(step_result::Outcome::Error(error)) => {
                        checked.outcome = Some(step_result::Outcome::Error(wire::StepError {
                            kind: "interrupted".into(),
                            message: format!(
                                "{why}, and verify says the target is not in the snapshot's state ({}: {}); the step was not run again",
                                error.kind, error.message
                            ),
                        }));
                    }
                    other => checked.outcome = other,
                }
                checked
            }
            _ => self.error_result(step, "interrupted", format!("{why}; it was not run again")),
        };
        result.recovered = true;
        result.attempt = step.attempt;
        result.run_id = step.run_id.clone();
        result.step_id = step.step_id.clone();
        result
    }

    /// A target's turn if no other step holds it now (`Some(None)` for a
    /// target this agent does not have); None when it is busy.
    fn free_turn(&self, target: &str) -> Option<Option<tokio::sync::OwnedMutexGuard<()>>> {
        match self.targets.get(target) {
            Some(lock) => lock.clone().try_lock_owned().ok().map(Some),
            None => Some(None),
        }
    }

    /// Wait for a target's turn (one action per target at a time).
    async fn turn(&self, target: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.targets.get(target) {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        }
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
            finished: Vec::new(),
            running: self
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    async fn channel(&self) -> Result<Channel, String> {
        let current = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.dialers[current % self.dialers.len()].channel().await
    }

    /// Stay connected until `shutdown` completes.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut pacing = Pacing::new(self.dialers.len());
        loop {
            let session = async {
                let channel = self.channel().await?;
                self.clone().session(channel, &mut pacing).await
            };
            tokio::select! {
                _ = &mut shutdown => return,
                ended = session => {
                    crate::metrics::METRICS.connected.set(0);
                    match ended {
                        Ok(()) => tracing::info!(agent = self.config.name, "the coordinator closed the stream; reconnecting"),
                        Err(e) => tracing::warn!(agent = self.config.name, "coordinator: {e}; retrying in about {:?}", pacing.backoff),
                    }
                }
            }
            // The leader a standby named, if it is one of ours; else the
            // next coordinator, if there are several (one of them leads).
            match self
                .hinted
                .swap(usize::MAX, std::sync::atomic::Ordering::Relaxed)
            {
                usize::MAX => {
                    self.current
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                leader => self
                    .current
                    .store(leader, std::sync::atomic::Ordering::Relaxed),
            }
            let pause = pacing.next_pause();
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// A standby's refusal names the leader's URL: try it next if it is one
    /// of the configured coordinators (no other address is ever dialed).
    fn note_leader(&self, status: &tonic::Status) {
        let Some(url) = status
            .metadata()
            .get("rewind-leader")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let url = url.trim_end_matches('/');
        if let Some(index) = self
            .urls
            .iter()
            .position(|u| u.trim_end_matches('/') == url)
        {
            self.hinted
                .store(index, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// One session; `pacing` starts over once the coordinator accepted it.
    async fn session(self: Arc<Self>, channel: Channel, pacing: &mut Pacing) -> Result<(), String> {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let hello = AgentMessage {
            body: Some(agent_message::Body::Hello(self.hello())),
        };
        tx.send(hello).await.map_err(|e| e.to_string())?;
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(limits::MAX_MESSAGE)
            .max_encoding_message_size(limits::MAX_MESSAGE);
        let mut inbound = match client.session(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                self.note_leader(&status);
                return Err(status_text(&status));
            }
        };
        pacing.accepted();
        crate::metrics::METRICS.connected.set(1);
        *self.outbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
        // Results the coordinator may not have seen (steps that finished
        // while the two were cut off), one per message.
        let replay = {
            let (tx, ledger) = (tx.clone(), self.ledger.clone());
            tokio::spawn(async move {
                // From memory: the ledger reads its file only when it opens.
                let results = ledger.recent_results();
                for result in results {
                    let message = AgentMessage {
                        body: Some(agent_message::Body::Result(result)),
                    };
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
            })
        };
        // The coordinator's Welcome sets the heartbeat's interval.
        let (every_tx, every) = watch::channel(HEARTBEAT);
        let heartbeat = {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let period = *every.borrow();
                    tokio::time::sleep(period).await;
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
                    Some(coordinator_message::Body::Cancel(cancel)) => {
                        tokio::spawn(self.clone().cancel(cancel));
                    }
                    Some(coordinator_message::Body::Welcome(welcome))
                        if welcome.heartbeat_secs > 0 =>
                    {
                        let secs = u64::from(welcome.heartbeat_secs).min(300);
                        let _ = every_tx.send(Duration::from_secs(secs));
                    }
                    Some(coordinator_message::Body::Welcome(_)) | None => {}
                },
                Ok(None) => break Ok(()),
                Err(status) => break Err(status_text(&status)),
            }
        };
        heartbeat.abort();
        replay.abort();
        *self.outbound.lock().unwrap_or_else(|e| e.into_inner()) = None;
        ended
    }

    fn outbound(&self) -> Option<mpsc::Sender<AgentMessage>> {
        self.outbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drop a step that still waits for its turn; one already acting
    /// finishes. A step this process does not hold is answered from the
    /// ledger, or recorded as cancelled there (so that a late delivery of
    /// that attempt does not act) and answered `cancelled`.
    async fn cancel(self: Arc<Self>, cancel: wire::CancelStep) {
        let (step_id, attempt) = (cancel.step_id.clone(), cancel.attempt);
        {
            let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&step_id) {
                Some(step) if step.acting => {
                    tracing::info!(
                        step = step_id,
                        "cancel arrived while the step acts; it finishes (stopping a restore halfway could leave its target half-restored)"
                    );
                    return;
                }
                Some(step) if step.attempt <= attempt => {
                    tracing::info!(step = step_id, "cancelled before it started acting");
                    step.cancel.notify_one();
                    return;
                }
                Some(_) => return,
                None => {}
            }
        }
        let request = StepRequest {
            run_id: cancel.run_id.clone(),
            step_id: step_id.clone(),
            attempt,
            ..Default::default()
        };
        let known = {
            let request = request.clone();
            self.ledger_do(move |l| Ok(l.check(&request))).await
        };
        let result = match known {
            Ok(Some(Begin::Done(result))) => result,
            Ok(Some(Begin::Unsure(why))) => self.settle_and_record(&request, why).await,
            Ok(_) => {
                let result = self.error_result(
                    &request,
                    "cancelled",
                    "cancelled by the coordinator before it reached this agent; nothing was done"
                        .into(),
                );
                self.record(result).await
            }
            Err(e) => {
                tracing::error!(
                    step = step_id,
                    "cannot read the ledger to answer a cancel: {e}"
                );
                return;
            }
        };
        self.send_result(result).await;
    }

    async fn send_result(&self, result: StepResult) {
        if let Some(tx) = self.outbound() {
            // If the stream is gone, the ledger has it for the next session.
            let _ = tx
                .send(AgentMessage {
                    body: Some(agent_message::Body::Result(result)),
                })
                .await;
        }
    }

    /// Run a delivered step once, whatever how often it is delivered.
    async fn handle(self: Arc<Self>, step: StepRequest) {
        // Delivered again while it is being handled: wait for that result.
        let waiting = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&step.step_id) {
                Some(running) => Err(running.result.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let cancel = Arc::new(Notify::new());
                    in_flight.insert(
                        step.step_id.clone(),
                        InFlight {
                            attempt: step.attempt,
                            acting: false,
                            cancel: cancel.clone(),
                            result: rx,
                        },
                    );
                    Ok((tx, cancel))
                }
            }
        };
        let (done, cancel) = match waiting {
            Ok(fresh) => fresh,
            Err(mut running) => {
                let result = running
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|r| r.clone());
                if let Some(mut result) = result {
                    result.attempt = step.attempt;
                    self.send_result(result).await;
                }
                return;
            }
        };
        let result = self.clone().run_step(&step, cancel).await;
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&step.step_id);
        let _ = done.send(Some(result.clone()));
        self.send_result(result).await;
    }

    async fn ledger_do<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Ledger) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        // The ledger writes durably (fsync): off the async workers, on a
        // few threads at a time. Where thousands of steps run in one
        // process, a thread per write costs more in waking threads than
        // the writes themselves.
        static WRITERS: Semaphore = Semaphore::const_new(LEDGER_WRITERS);
        let _writer = WRITERS.acquire().await;
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || op(&ledger))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    async fn run_step(self: Arc<Self>, step: &StepRequest, cancel: Arc<Notify>) -> StepResult {
        // A plan (a preview) or a verify only reads its target: running it
        // twice is harmless, and the ledger does not record it.
        let reads_only = matches!(
            rewind_proto::v1::Action::try_from(step.action),
            Ok(rewind_proto::v1::Action::Plan | rewind_proto::v1::Action::Verify)
        );
        if reads_only {
            let _turn = tokio::select! {
                turn = self.turn(&step.target) => turn,
                _ = cancel.notified() => return self.error_result(
                    step,
                    "cancelled",
                    "cancelled by the coordinator before it started; nothing was done".into(),
                ),
            };
            let progress = self.progress_sink(step);
            let _slot = self.slots.acquire().await;
            return self.execute(step, Some(progress)).await;
        }
        // A free target is taken at once (`begin` below consults the
        // ledger). For a busy one, what the ledger knows comes first, so
        // that a step already finished is answered without waiting.
        let turn = match self.free_turn(&step.target) {
            Some(turn) => turn,
            None => {
                let known = {
                    let request = step.clone();
                    self.ledger_do(move |l| Ok(l.check(&request))).await
                };
                match known {
                    Ok(Some(Begin::Done(result))) => return result,
                    Ok(Some(Begin::Unsure(why))) => {
                        return self.settle_and_record(step, why).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return self.error_result(
                            step,
                            "ledger",
                            format!("cannot read the ledger: {e}"),
                        );
                    }
                }
                tokio::select! {
                    turn = self.turn(&step.target) => turn,
                    _ = cancel.notified() => {
                        let result = self.error_result(
                            step,
                            "cancelled",
                            "cancelled by the coordinator before it started acting; nothing was done".into(),
                        );
                        return self.record(result).await;
                    }
                }
            }
        };
        if let Some(entry) = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&step.step_id)
        {
            entry.acting = true;
        }
        let begun = {
            let request = step.clone();
            self.ledger_do(move |l| l.begin(&request)).await
        };
        match begun {
            Ok(Begin::Done(result)) => result,
            Ok(Begin::Unsure(why)) => {
                drop(turn);
                self.settle_and_record(step, why).await
            }
            Ok(Begin::Act) => {
                let progress = self.progress_sink(step);
                let result = {
                    let _slot = self.slots.acquire().await;
                    self.execute(step, Some(progress)).await
                };
                drop(turn);
                self.record(result).await
            }
            // Without a ledger record the step must not act.
            Err(e) => self.error_result(
                step,
                "ledger",
                format!("cannot record the step before acting: {e}"),
            ),
        }
    }

    async fn settle_and_record(&self, step: &StepRequest, why: String) -> StepResult {
        let result = self.settle(step, why).await;
        self.record(result).await
    }

    /// Record a result in the ledger (it replaces the running record).
    async fn record(&self, result: StepResult) -> StepResult {
        let recorded = {
            let result = result.clone();
            self.ledger_do(move |l| l.finish(&result)).await
        };
        if let Err(e) = recorded {
            tracing::error!(
                step = result.step_id,
                "cannot record the step's result in the ledger: {e}"
            );
        }
        result
    }

    fn progress_sink(self: &Arc<Self>, step: &StepRequest) -> ProgressSink {
        let agent = Arc::downgrade(self);
        let (run_id, step_id, attempt) = (step.run_id.clone(), step.step_id.clone(), step.attempt);
        Arc::new(move |report| {
            let Some(tx) = agent.upgrade().and_then(|a| a.outbound()) else {
                return;
            };
            let progress = StepProgress {
                run_id: run_id.clone(),
                step_id: step_id.clone(),
                attempt,
                detail: rewind_proto::masked::text(&report.detail),
                percent: report.percent.map(u32::from),
            };
            // Progress is best effort: dropped when the stream is backed up.
            let _ = tx.try_send(AgentMessage {
                body: Some(agent_message::Body::Progress(progress)),
            });
        })
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
        let action_name = action.name();
        let started = std::time::Instant::now();
        let outcome = self.host.call(plugin, target, action, progress).await;
        crate::metrics::step(
            &target.plugin,
            action_name,
            started.elapsed(),
            outcome.as_ref().err().map(CallError::kind),
        );
        limits::fit(result_of(step, target, outcome))
    }
}

/// A gRPC status as a sentence, with the transport's reason when it has one.
fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!(
            "{}: {}",
            status.message(),
            rewind_proto::tls::explain(source)
        ),
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// The pause before an agent's next connection attempt. Jittered (half to
/// all of the backoff), so that a fleet reconnecting to a new leader does
/// not arrive all at once. The backoff doubles, up to `MAX_BACKOFF`, after
/// each round in which every configured coordinator was tried and failed,
/// not after each attempt: an agent that finds the old leader gone tries
/// the standby after the same pause, and meets the new leader soon after
/// it leads. It starts over once a coordinator accepts the agent.
struct Pacing {
    backoff: Duration,
    /// Failed attempts in this round.
    failed: usize,
    coordinators: usize,
}

impl Pacing {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(coordinators: usize) -> Pacing {
        Pacing {
            backoff: Self::FIRST,
            failed: 0,
            coordinators: coordinators.max(1),
        }
    }

    fn accepted(&mut self) {
        self.backoff = Self::FIRST;
        self.failed = 0;
    }

    /// The pause after an attempt (or a session) ended.
    fn next_pause(&mut self) -> Duration {
        let share = 0.5
            + rand_core::RngCore::next_u32(&mut rand_core::OsRng) as f64 / u32::MAX as f64 / 2.0;
        let pause = self.backoff.mul_f64(share);
        self.failed += 1;
        if self.failed >= self.coordinators {
            self.failed = 0;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        pause
    }
}

/// `action_of`, for the property tests of what arrives on the wire.
#[cfg(test)]
pub(crate) fn action_of_for_tests(step: &StepRequest) -> Result<Action, String> {
    action_of(step)
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
    // Credentials never leave the host in clear.
    rewind_proto::masked::result(&mut result);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoffs(pacing: &mut Pacing, attempts: usize) -> Vec<u128> {
        (0..attempts)
            .map(|_| {
                let backoff = pacing.backoff;
                let pause = pacing.next_pause();
                assert!(
                    pause >= backoff / 2 && pause <= backoff,
                    "a pause of {pause:?} for a backoff of {backoff:?}"
                );
                backoff.as_millis()
            })
            .collect()
    }

    #[test]
    fn the_pause_doubles_after_each_round_of_every_coordinator_failing() {
        let mut pacing = Pacing::new(2);
        assert_eq!(
            backoffs(&mut pacing, 16),
            [
                100, 100, 200, 200, 400, 400, 800, 800, 1600, 1600, 3200, 3200, 5000, 5000, 5000,
                5000
            ]
        );
        pacing.accepted();
        assert_eq!(backoffs(&mut pacing, 3), [100, 100, 200]);
        // One coordinator: each attempt is a round.
        let mut alone = Pacing::new(1);
        assert_eq!(backoffs(&mut alone, 4), [100, 200, 400, 800]);
    }
}
