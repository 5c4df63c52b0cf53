//! The coordinator server: the agent and operator gRPC services on one
//! mutual-TLS listener, over the journal and the fleet registry.

pub mod agents;
pub mod operator;

use crate::config::CoordinatorConfig;
use crate::fleet::Fleet;
use crate::runner::{self, Shared};
use crate::store::Store;
use rewind_proto::identity::Authenticator;
use rewind_proto::v1::agent_service_server::AgentServiceServer;
use rewind_proto::v1::operator_service_server::OperatorServiceServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] rewind_proto::tls::TlsError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serve on an already-bound listener until `shutdown` completes. Runs left
/// unfinished by a previous coordinator resume first.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let store = Store::open(&config.database).await?;
    let (events, _) = broadcast::channel(1 << 16);
    let shared = Arc::new(Shared {
        store,
        fleet: Arc::new(Fleet::default()),
        events,
    });
    let resumed = runner::resume_all(shared.clone()).await?;
    if resumed > 0 {
        tracing::info!("resumed {resumed} unfinished run(s)");
    }
    let ca = std::fs::read(&config.tls.ca).map_err(|e| {
        ServeError::Tls(rewind_proto::tls::TlsError {
            path: config.tls.ca.clone(),
            error: e.to_string(),
        })
    })?;
    let authenticator = Arc::new(Authenticator::new(&ca).map_err(|e| {
        ServeError::Tls(rewind_proto::tls::TlsError {
            path: config.tls.ca.clone(),
            error: e.to_string(),
        })
    })?);
    let acceptor = config.tls.acceptor()?;
    let agents = agents::AgentApi {
        shared: shared.clone(),
        authenticator: authenticator.clone(),
    };
    let operators = operator::OperatorApi {
        shared,
        config,
        authenticator,
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(AgentServiceServer::new(agents))
        .add_service(OperatorServiceServer::new(operators))
        .serve_with_incoming_shutdown(rewind_proto::accept::incoming(listener, acceptor), shutdown)
        .await?;
    Ok(())
}
