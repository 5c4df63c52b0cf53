//! The agent service: each agent holds one stream. Its identity comes from
//! its certificate alone, and it may speak only for itself: its Hello must
//! name it, its `env` label must be one the coordinator's configuration
//! allows it, and its results and progress count only for steps sent to it
//! (checked where they are routed, see `Fleet` and `runner`).
//!
//! A stream ends when its certificate expires or is revoked (the CRL file is
//! re-read when it changes); the agent then has to connect again, and the
//! TLS handshake refuses it.

use crate::config::CoordinatorConfig;
use crate::fleet::{AGENT_QUEUE, ConnectedAgent};
use crate::runner::{Shared, now_ms};
use crate::store::{AgentRecord, TargetRecord};
use rewind_proto::crl::CrlFile;
use rewind_proto::identity::{Authenticator, Kind};
use rewind_proto::v1::agent_service_server::AgentService;
use rewind_proto::v1::{
    AgentMessage, CoordinatorMessage, Welcome, agent_message, coordinator_message,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How often agents send a heartbeat (their Welcome says so). Beside
/// HTTP/2 pings, it keeps a connection from counting as idle (60 s); at
/// 10,000 agents every 5 s it was 2,000 messages a second.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a stream's certificate is checked against the clock and the CRL.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(2);

/// How many agents' Hellos one journal transaction records at most.
const REGISTER_BATCH: usize = 1024;

type Registration = (
    AgentRecord,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// Agents' Hellos are recorded in the journal together: when thousands
/// connect at once (a new leader, the network back), one transaction holds
/// those that arrived while the previous one committed, rather than one
/// transaction (and one fsync) each.
#[derive(Clone)]
pub struct Registrar {
    queue: mpsc::Sender<Registration>,
}

impl Registrar {
    pub fn start(shared: Arc<Shared>) -> Registrar {
        let (queue, mut arrivals) = mpsc::channel::<Registration>(REGISTER_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = arrivals.recv().await {
                batch.push(first);
                while batch.len() < REGISTER_BATCH {
                    match arrivals.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (records, replies): (Vec<AgentRecord>, Vec<_>) = batch.drain(..).unzip();
                let result = shared
                    .store
                    .upsert_agents(&records)
                    .await
                    .map_err(|e| e.to_string());
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
        });
        Registrar { queue }
    }

    /// Record an agent's Hello; done once the journal holds it.
    async fn register(&self, record: AgentRecord) -> Result<(), String> {
        let stopping = || "the coordinator is stopping".to_string();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue
            .send((record, reply))
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }
}

pub struct AgentApi {
    pub shared: Arc<Shared>,
    pub registrar: Registrar,
    pub authenticator: Arc<Authenticator>,
    pub config: Arc<CoordinatorConfig>,
    pub crl: Option<Arc<CrlFile>>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

/// The end of a certificate's validity, as Unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SessionStream = Outbound;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let identity = self.authenticator.authenticate(&request)?;
        if identity.kind != Kind::Agent {
            return Err(Status::permission_denied(format!(
                "certificate {identity} is an {} identity; the agent service needs an agent certificate",
                identity.kind.as_str()
            )));
        }
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.to_vec()))
            .unwrap_or_default();
        let expires = not_after(&leaf);
        let serial = rewind_proto::crl::serial_of(&leaf);
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("an agent must send Hello first")),
        };
        let name = identity.name.clone();
        if hello.agent != name {
            self.shared.fleet.refuse(
                &name,
                "hello-for-other-agent",
                &format!("a Hello naming agent {}", hello.agent),
            );
            return Err(Status::permission_denied(format!(
                "agent {name} may speak only for itself: its certificate ({identity}) does not name {}",
                hello.agent
            )));
        }
        let env = hello.labels.get("env").map(String::as_str);
        if let Err(why) = self.config.check_env_label(&name, env) {
            self.shared.fleet.refuse(&name, "env-not-allowed", &why);
            return Err(Status::permission_denied(why));
        }
        let targets: Vec<TargetRecord> = hello
            .targets
            .iter()
            .map(|t| TargetRecord {
                name: t.name.clone(),
                plugin: t.plugin.clone(),
                digest: t.digest.clone(),
            })
            .collect();
        let labels: std::collections::BTreeMap<String, String> =
            hello.labels.clone().into_iter().collect();
        self.registrar
            .register(AgentRecord {
                name: name.clone(),
                labels: labels.clone(),
                targets: targets.clone(),
                last_seen_ms: now_ms(),
            })
            .await
            .map_err(|e| Status::unavailable(format!("coordinator journal: {e}")))?;
        if self.shared.is_draining() {
            return Err(Status::unavailable(
                "the coordinator is stopping; reconnect",
            ));
        }

        let (sender, receiver) = mpsc::channel(AGENT_QUEUE);
        let welcome = CoordinatorMessage {
            body: Some(coordinator_message::Body::Welcome(Welcome {
                heartbeat_secs: HEARTBEAT.as_secs() as u32,
            })),
        };
        let _ = sender.try_send(Ok(welcome));
        let fleet = self.shared.fleet.clone();
        // Results an older agent puts in its Hello count as if sent after it.
        for result in hello.finished {
            fleet.route_result(&name, result).await;
        }
        let agent = ConnectedAgent {
            labels,
            targets: targets.into_iter().map(|t| t.name).collect(),
        };
        let (connection, aborted) = fleet.connect(&name, agent, sender.clone());
        tracing::info!(agent = name, "connected");
        let crl = self.crl.clone();
        tokio::spawn(async move {
            let mut check = tokio::time::interval(CERTIFICATE_CHECK);
            let ended = loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(AgentMessage { body: Some(body) })) => match body {
                            agent_message::Body::Result(result) => {
                                fleet.route_result(&name, result).await
                            }
                            agent_message::Body::Progress(progress) => {
                                fleet.route_progress(&name, progress)
                            }
                            agent_message::Body::Heartbeat(_) => {}
                            agent_message::Body::Hello(_) => fleet.refuse(
                                &name,
                                "hello-twice",
                                "a second Hello on the same stream",
                            ),
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => break "the agent closed the stream".to_string(),
                        Err(status) => break format!("stream ended: {}", status.message()),
                    },
                    _ = check.tick() => {
                        let now = (now_ms() / 1000) as i64;
                        let why = if expires.is_some_and(|t| now >= t) {
                            Some("its certificate expired")
                        } else if let (Some(crl), Some(serial)) = (&crl, &serial)
                            && crl.revokes_serial(serial)
                        {
                            Some("its certificate was revoked")
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            let _ = sender.try_send(Err(Status::unauthenticated(format!(
                                "agent {name}: {why}; the stream is closed"
                            ))));
                            break format!("closed: {why}");
                        }
                    }
                }
            };
            fleet.disconnect(&name, connection);
            tracing::info!(agent = name, "disconnected ({ended})");
        });
        Ok(Response::new(Box::pin(outbound(receiver, aborted))))
    }
}

/// An agent's outbound stream: what is queued for it, unless the fleet
/// aborts the stream (its queue overflowed), which ends it at once with the
/// reason, so that the agent reconnects.
fn outbound(
    receiver: mpsc::Receiver<Result<CoordinatorMessage, Status>>,
    aborted: crate::fleet::Abort,
) -> impl tokio_stream::Stream<Item = Result<CoordinatorMessage, Status>> + Send + 'static {
    enum State {
        Open(
            mpsc::Receiver<Result<CoordinatorMessage, Status>>,
            crate::fleet::Abort,
        ),
        /// The abort can no longer come (the connection was replaced or
        /// closed): only the queue.
        Plain(mpsc::Receiver<Result<CoordinatorMessage, Status>>),
        Done,
    }
    futures_util::stream::unfold(State::Open(receiver, aborted), |state| async move {
        match state {
            State::Open(mut receiver, mut aborted) => tokio::select! {
                biased;
                reason = &mut aborted => match reason {
                    Ok(status) => Some((Err(status), State::Done)),
                    Err(_) => receiver.recv().await.map(|m| (m, State::Plain(receiver))),
                },
                message = receiver.recv() => message.map(|m| (m, State::Open(receiver, aborted))),
            },
            State::Plain(mut receiver) => {
                receiver.recv().await.map(|m| (m, State::Plain(receiver)))
            }
            State::Done => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn an_aborted_stream_ends_at_once_with_its_reason() {
        let (tx, rx) = mpsc::channel(4);
        let (abort, aborted) = tokio::sync::oneshot::channel();
        for _ in 0..4 {
            tx.try_send(Ok(CoordinatorMessage::default())).unwrap();
        }
        abort
            .send(Status::unavailable("queue overflowed; reconnect"))
            .unwrap();
        let items: Vec<_> = outbound(rx, aborted).collect().await;
        assert_eq!(
            items.len(),
            1,
            "the reason comes first, not after the queue"
        );
        assert!(
            items[0]
                .as_ref()
                .unwrap_err()
                .message()
                .contains("reconnect")
        );

        // Without an abort (the sender went), the queue flows to its end.
        let (tx, rx) = mpsc::channel(4);
        let (abort, aborted) = tokio::sync::oneshot::channel::<Status>();
        drop(abort);
        tx.try_send(Ok(CoordinatorMessage::default())).unwrap();
        drop(tx);
        let items: Vec<_> = outbound(rx, aborted).collect().await;
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());
    }
}
