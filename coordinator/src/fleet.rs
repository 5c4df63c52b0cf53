//! The connected fleet: one outbound channel per connected agent, and the
//! routing of what agents report: a run's step results go to that run's
//! driver, other results (checkpoints, previews, health verifies) to whoever
//! waits for that step.

use rewind_proto::v1::{
    CoordinatorMessage, StepProgress, StepRequest, StepResult, coordinator_message,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub type AgentSender = mpsc::UnboundedSender<Result<CoordinatorMessage, Status>>;

/// What a run's driver is told by the fleet.
#[derive(Debug)]
pub enum RunInput {
    Result(StepResult),
    Progress(StepProgress),
    /// The agent (re)connected: deliver its steps that are in flight again.
    AgentConnected(String),
    Cancel,
    Approve,
    GatesDone {
        stage: usize,
        outcome: Result<(), String>,
    },
}

#[derive(Debug, Clone)]
pub struct ConnectedAgent {
    pub labels: BTreeMap<String, String>,
    pub targets: Vec<String>,
}

struct Connection {
    id: u64,
    sender: AgentSender,
    agent: ConnectedAgent,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, Connection>,
    waiters: HashMap<String, oneshot::Sender<StepResult>>,
    runs: HashMap<String, mpsc::UnboundedSender<RunInput>>,
}

#[derive(Default)]
pub struct Fleet {
    inner: Mutex<Inner>,
    next_connection: AtomicU64,
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a connected agent; returns the connection's id. A newer
    /// connection of the same agent replaces an older one.
    pub fn connect(&self, name: &str, agent: ConnectedAgent, sender: AgentSender) -> u64 {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let runs: Vec<_> = {
            let mut inner = self.lock();
            inner
                .agents
                .insert(name.to_string(), Connection { id, sender, agent });
            inner.runs.values().cloned().collect()
        };
        for run in runs {
            let _ = run.send(RunInput::AgentConnected(name.to_string()));
        }
        id
    }

    /// Forget a connection, unless a newer one replaced it.
    pub fn disconnect(&self, name: &str, connection: u64) {
        let mut inner = self.lock();
        if inner.agents.get(name).is_some_and(|c| c.id == connection) {
            inner.agents.remove(name);
        }
    }

    pub fn is_connected(&self, name: &str) -> bool {
        self.lock().agents.contains_key(name)
    }

    pub fn connected(&self) -> BTreeMap<String, ConnectedAgent> {
        self.lock()
            .agents
            .iter()
            .map(|(name, c)| (name.clone(), c.agent.clone()))
            .collect()
    }

    /// Send a step to an agent; false when it is not connected (the step
    /// stays journaled as sent and is delivered when the agent reconnects).
    pub fn send_step(&self, agent: &str, step: StepRequest) -> bool {
        let inner = self.lock();
        let Some(connection) = inner.agents.get(agent) else {
            return false;
        };
        let message = CoordinatorMessage {
            body: Some(coordinator_message::Body::Step(step)),
        };
        connection.sender.send(Ok(message)).is_ok()
    }

    /// Send a step outside of any run and wait for its result.
    pub async fn request(
        &self,
        agent: &str,
        step: StepRequest,
        timeout: Duration,
    ) -> Result<StepResult, String> {
        let (tx, rx) = oneshot::channel();
        let step_id = step.step_id.clone();
        self.lock().waiters.insert(step_id.clone(), tx);
        if !self.send_step(agent, step) {
            self.lock().waiters.remove(&step_id);
            return Err(format!("agent {agent} is not connected"));
        }
        let result = tokio::time::timeout(timeout, rx).await;
        self.lock().waiters.remove(&step_id);
        match result {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(format!("agent {agent}: the step was dropped")),
            Err(_) => Err(format!(
                "agent {agent}: no result within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    pub fn register_run(&self, run_id: &str, input: mpsc::UnboundedSender<RunInput>) {
        self.lock().runs.insert(run_id.to_string(), input);
    }

    pub fn unregister_run(&self, run_id: &str) {
        self.lock().runs.remove(run_id);
    }

    /// Tell a run's driver something; false when the run is not active here.
    pub fn to_run(&self, run_id: &str, input: RunInput) -> bool {
        match self.lock().runs.get(run_id) {
            Some(run) => run.send(input).is_ok(),
            None => false,
        }
    }

    /// Deliver a step result to its run or its waiter.
    pub fn route_result(&self, result: StepResult) {
        let mut inner = self.lock();
        if let Some(run) = inner.runs.get(&result.run_id) {
            let _ = run.send(RunInput::Result(result));
        } else if let Some(waiter) = inner.waiters.remove(&result.step_id) {
            let _ = waiter.send(result);
        } else {
            tracing::debug!(
                step = result.step_id,
                "a result nobody waits for (already settled)"
            );
        }
    }

    pub fn route_progress(&self, progress: StepProgress) {
        if let Some(run) = self.lock().runs.get(&progress.run_id) {
            let _ = run.send(RunInput::Progress(progress));
        }
    }
}
