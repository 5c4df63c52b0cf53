//! The connected fleet: one outbound queue per connected agent, and the
//! routing of what agents report. A run's step results go to that run's
//! driver (which accepts them only from the step's agent), other results
//! (checkpoints, previews, verify gates) to whoever waits for that step id,
//! and only when they come from the agent the step was sent to. Whatever is
//! refused is logged with the sender's identity and counted.
//!
//! Every queue is bounded: an agent that does not read its queue is
//! disconnected (it reconnects and is sent its steps again); a run's driver
//! that falls behind slows the agents' streams down (HTTP/2 flow control)
//! rather than losing a result.

use crate::metrics::METRICS;
use rewind_proto::v1::{
    CancelStep, CoordinatorMessage, StepProgress, StepRequest, StepResult, coordinator_message,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub type AgentSender = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// Messages queued for one agent before it counts as not reading.
pub const AGENT_QUEUE: usize = 4096;
/// Inputs queued for one run's driver.
pub const RUN_QUEUE: usize = 8192;

/// What a run's driver is told by the fleet.
#[derive(Debug)]
pub enum RunInput {
    /// A step result, and the agent (from its certificate) that sent it.
    Result {
        from: String,
        result: StepResult,
    },
    Progress {
        from: String,
        progress: StepProgress,
    },
    /// The agent (re)connected: deliver its steps that are in flight again.
    AgentConnected(String),
    Cancel,
    Approve,
    /// A stage's health gates: what each passed gate said, or why one failed.
    GatesDone {
        stage: usize,
        outcome: Result<Vec<String>, String>,
    },
    HookDone {
        hook: usize,
        attempt: u32,
        outcome: Result<String, String>,
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
    /// Ends the stream at once with a reason (its queue may be full, so
    /// the reason cannot wait in it).
    abort: Option<tokio::sync::oneshot::Sender<Status>>,
}

/// What ends an agent's stream at once: the reason to send it last.
pub type Abort = tokio::sync::oneshot::Receiver<Status>;

/// Someone waiting for the result of a step sent outside of any run.
struct Waiter {
    agent: String,
    reply: oneshot::Sender<StepResult>,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, Connection>,
    waiters: HashMap<String, Waiter>,
    runs: HashMap<String, mpsc::Sender<RunInput>>,
}

#[derive(Default)]
pub struct Fleet {
    inner: Mutex<Inner>,
    next_connection: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a connected agent; returns the connection's id. A newer
    /// connection of the same agent replaces an older one.
    pub fn connect(&self, name: &str, agent: ConnectedAgent, sender: AgentSender) -> (u64, Abort) {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (abort, aborted) = tokio::sync::oneshot::channel();
        let runs: Vec<_> = {
            let mut inner = self.lock();
            inner.agents.insert(
                name.to_string(),
                Connection {
                    id,
                    sender,
                    agent,
                    abort: Some(abort),
                },
            );
            METRICS.agents_connected.set(inner.agents.len() as i64);
            inner.runs.values().cloned().collect()
        };
        for run in runs {
            // A full queue already holds work that will look at this agent.
            let _ = run.try_send(RunInput::AgentConnected(name.to_string()));
        }
        (id, aborted)
    }

    /// Forget a connection, unless a newer one replaced it.
    pub fn disconnect(&self, name: &str, connection: u64) {
        let mut inner = self.lock();
        if inner.agents.get(name).is_some_and(|c| c.id == connection) {
            inner.agents.remove(name);
        }
        METRICS.agents_connected.set(inner.agents.len() as i64);
    }

    /// End every agent's stream with `status` (agents reconnect, to this
    /// coordinator or another); used when the coordinator stops.
    pub fn close_all(&self, status: Status) {
        let connections: Vec<Connection> = self.lock().agents.drain().map(|(_, c)| c).collect();
        METRICS.agents_connected.set(0);
        for connection in connections {
            let _ = connection.sender.try_send(Err(status.clone()));
        }
    }

    pub fn is_connected(&self, name: &str) -> bool {
        self.lock().agents.contains_key(name)
    }

    /// Wait up to `patience` for an agent to be connected (after a
    /// coordinator restart, agents take a few seconds to come back).
    pub async fn wait_for(&self, name: &str, patience: Duration) -> bool {
        let until = tokio::time::Instant::now() + patience;
        while !self.is_connected(name) {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    pub fn connected(&self) -> BTreeMap<String, ConnectedAgent> {
        self.lock()
            .agents
            .iter()
            .map(|(name, c)| (name.clone(), c.agent.clone()))
            .collect()
    }

    /// Queue a message for an agent; false when it is not connected. An
    /// agent whose queue is full is disconnected: it reconnects and is
    /// sent its steps in flight again.
    fn send(&self, agent: &str, message: CoordinatorMessage) -> bool {
        let mut inner = self.lock();
        let Some(connection) = inner.agents.get(agent) else {
            return false;
        };
        match connection.sender.try_send(Ok(message)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    agent,
                    "the agent does not read its stream ({AGENT_QUEUE} messages queued); disconnecting it"
                );
                // Told at once, so that it reconnects (and is sent its
                // steps in flight again) rather than wait on a dead stream.
                if let Some(abort) = inner.agents.remove(agent).and_then(|c| c.abort) {
                    let _ = abort.send(Status::unavailable(format!(
                        "the coordinator dropped this stream: {AGENT_QUEUE} messages were queued \
                         unread; reconnect"
                    )));
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Send a step to an agent; false when it is not connected (the step
    /// stays journaled as sent and is delivered when the agent reconnects).
    pub fn send_step(&self, agent: &str, step: StepRequest) -> bool {
        self.send(
            agent,
            CoordinatorMessage {
                body: Some(coordinator_message::Body::Step(step)),
            },
        )
    }

    /// Tell an agent to drop a step's attempt if it has not started acting;
    /// it answers with the step's result or `cancelled`.
    pub fn cancel_step(&self, agent: &str, run_id: &str, step_id: &str, attempt: u32) {
        self.send(
            agent,
            CoordinatorMessage {
                body: Some(coordinator_message::Body::Cancel(CancelStep {
                    step_id: step_id.to_string(),
                    attempt,
                    run_id: run_id.to_string(),
                })),
            },
        );
    }

    /// Send a step outside of any run and wait for its result, which only
    /// `agent` may give. On timeout the agent is told to drop the step.
    pub async fn request(
        &self,
        agent: &str,
        step: StepRequest,
        timeout: Duration,
    ) -> Result<StepResult, String> {
        let (tx, rx) = oneshot::channel();
        let step_id = step.step_id.clone();
        let attempt = step.attempt;
        self.lock().waiters.insert(
            step_id.clone(),
            Waiter {
                agent: agent.to_string(),
                reply: tx,
            },
        );
        if !self.send_step(agent, step) {
            self.lock().waiters.remove(&step_id);
            return Err(format!("agent {agent} is not connected"));
        }
        let result = tokio::time::timeout(timeout, rx).await;
        self.lock().waiters.remove(&step_id);
        match result {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(format!("agent {agent}: the step was dropped")),
            Err(_) => {
                self.cancel_step(agent, "", &step_id, attempt);
                Err(format!(
                    "agent {agent}: no result within {}",
                    humantime::format_duration(timeout)
                ))
            }
        }
    }

    pub fn register_run(&self, run_id: &str, input: mpsc::Sender<RunInput>) {
        self.lock().runs.insert(run_id.to_string(), input);
    }

    pub fn unregister_run(&self, run_id: &str) {
        self.lock().runs.remove(run_id);
    }

    /// Tell a run's driver something; false when the run is not active here.
    pub async fn to_run(&self, run_id: &str, input: RunInput) -> bool {
        let run = self.lock().runs.get(run_id).cloned();
        match run {
            Some(run) => run.send(input).await.is_ok(),
            None => false,
        }
    }

    /// Deliver a step result that agent `from` sent to its run or its
    /// waiter. Waits while the run's queue is full (never drops a result).
    pub async fn route_result(&self, from: &str, mut result: StepResult) {
        // Whatever an agent sends is bounded and masked before it is kept
        // or shown.
        rewind_proto::bounded::result(&mut result);
        rewind_proto::masked::result(&mut result);
        let run = {
            let mut inner = self.lock();
            if let Some(run) = inner.runs.get(&result.run_id) {
                Some(run.clone())
            } else {
                match inner.waiters.remove(&result.step_id) {
                    Some(waiter) if waiter.agent == from => {
                        let _ = waiter.reply.send(result);
                        return;
                    }
                    Some(waiter) => {
                        let step_id = result.step_id.clone();
                        inner.waiters.insert(step_id.clone(), waiter);
                        drop(inner);
                        self.refuse(
                            from,
                            "result-from-other-agent",
                            &format!(
                                "a result for step {step_id}, which was sent to another agent"
                            ),
                        );
                        return;
                    }
                    None => None,
                }
            }
        };
        match run {
            Some(run) => {
                let _ = run
                    .send(RunInput::Result {
                        from: from.to_string(),
                        result,
                    })
                    .await;
            }
            None => tracing::debug!(
                agent = from,
                step = result.step_id,
                "a result nobody waits for (already settled)"
            ),
        }
    }

    /// Progress is best effort: dropped when the run's queue is full.
    pub fn route_progress(&self, from: &str, mut progress: StepProgress) {
        if let Some(run) = self.lock().runs.get(&progress.run_id) {
            rewind_proto::bounded::progress(&mut progress);
            progress.detail = rewind_proto::masked::text(&progress.detail);
            let _ = run.try_send(RunInput::Progress {
                from: from.to_string(),
                progress,
            });
        }
    }

    /// Refuse something an agent sent: log it with the sender's identity
    /// and count it under `kind`.
    pub fn refuse(&self, from: &str, kind: &str, detail: &str) {
        tracing::warn!(agent = from, kind, "refused: {detail}");
        METRICS
            .agent_messages_refused
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// How many messages were refused, by kind.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn agent() -> ConnectedAgent {
        ConnectedAgent {
            labels: BTreeMap::new(),
            targets: vec!["t".into()],
        }
    }

    fn result(step_id: &str) -> StepResult {
        StepResult {
            step_id: step_id.into(),
            attempt: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_waiter_takes_its_result_only_from_the_agent_it_asked() {
        let fleet = Arc::new(Fleet::default());
        let (tx, mut rx) = mpsc::channel(8);
        let _connection = fleet.connect("a2", agent(), tx);
        let asking = {
            let fleet = fleet.clone();
            tokio::spawn(async move {
                fleet
                    .request(
                        "a2",
                        StepRequest {
                            step_id: "checkpoint/x".into(),
                            attempt: 1,
                            ..Default::default()
                        },
                        Duration::from_secs(5),
                    )
                    .await
            })
        };
        // The step reached a2's queue.
        assert!(rx.recv().await.is_some());
        fleet.route_result("a1", result("checkpoint/x")).await;
        assert_eq!(fleet.refusals().get("result-from-other-agent"), Some(&1));
        assert!(!asking.is_finished());
        let mut real = result("checkpoint/x");
        real.elapsed_ms = 7;
        fleet.route_result("a2", real).await;
        let answer = asking.await.unwrap().unwrap();
        assert_eq!(answer.elapsed_ms, 7);
    }

    #[tokio::test]
    async fn an_agent_that_does_not_read_is_disconnected() {
        let fleet = Fleet::default();
        let (tx, _rx) = mpsc::channel(1);
        let (_, aborted) = fleet.connect("slow", agent(), tx);
        assert!(fleet.send_step("slow", StepRequest::default()));
        assert!(!fleet.send_step("slow", StepRequest::default()));
        assert!(!fleet.is_connected("slow"));
        let told = aborted.await.expect("the agent is told");
        assert!(told.message().contains("reconnect"), "{told}");
    }
}
