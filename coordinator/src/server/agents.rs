//! The agent service: each agent holds one stream. Its identity comes from
//! its certificate alone, and it may speak only for itself.

use crate::fleet::ConnectedAgent;
use crate::runner::{Shared, now_ms};
use crate::store::{AgentRecord, TargetRecord};
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
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub const HEARTBEAT: Duration = Duration::from_secs(5);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentApi {
    pub shared: Arc<Shared>,
    pub authenticator: Arc<Authenticator>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

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
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Hello(hello)),
            }))) => hello,
            Ok(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("an agent must send Hello first")),
        };
        if hello.agent != identity.name {
            return Err(Status::permission_denied(format!(
                "agent {} may speak only for itself: its certificate ({identity}) does not name {}",
                identity.name, hello.agent
            )));
        }
        let name = identity.name.clone();
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
        self.shared
            .store
            .upsert_agent(&AgentRecord {
                name: name.clone(),
                labels: labels.clone(),
                targets: targets.clone(),
                last_seen_ms: now_ms(),
            })
            .await
            .map_err(|e| Status::unavailable(format!("coordinator journal: {e}")))?;

        let (sender, receiver) = mpsc::unbounded_channel();
        let welcome = CoordinatorMessage {
            body: Some(coordinator_message::Body::Welcome(Welcome {
                heartbeat_secs: HEARTBEAT.as_secs() as u32,
            })),
        };
        let _ = sender.send(Ok(welcome));
        // Results the agent finished while it was cut off from us.
        for result in hello.finished {
            self.shared.fleet.route_result(result);
        }
        let fleet = self.shared.fleet.clone();
        let agent = ConnectedAgent {
            labels,
            targets: targets.into_iter().map(|t| t.name).collect(),
        };
        let connection = fleet.connect(&name, agent, sender);
        tracing::info!(agent = name, "connected");
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(AgentMessage { body: Some(body) })) => match body {
                        agent_message::Body::Result(result) => fleet.route_result(result),
                        agent_message::Body::Progress(progress) => fleet.route_progress(progress),
                        agent_message::Body::Heartbeat(_) | agent_message::Body::Hello(_) => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(agent = name, "stream ended: {}", status.message());
                        break;
                    }
                }
            }
            fleet.disconnect(&name, connection);
            tracing::info!(agent = name, "disconnected");
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            receiver,
        ))))
    }
}
