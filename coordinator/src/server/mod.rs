//! The coordinator server: the agent and operator gRPC services on one
//! mutual-TLS listener, over the journal and the fleet registry.
//!
//! Bounds: the TLS layer refuses connections without a fleet certificate and
//! caps connections and handshakes (see `rewind_proto::accept`); here each
//! connection gets a few concurrent streams, and each service its message
//! sizes, with errors that name the limit.
//!
//! Stopping (SIGTERM or Ctrl-C) drains: no new run or step starts, results
//! still arriving are journaled for up to `DRAIN` while steps are in flight,
//! then agents are told to reconnect (to this coordinator when it is back,
//! or another) and the process exits within `DRAIN` + `CLOSE`.

pub mod agents;
pub mod drills;
pub mod operator;

use crate::config::CoordinatorConfig;
use crate::leader::Leadership;
use crate::runner::{self, Shared};
use crate::store::Store;
use rewind_proto::accept::Limits;
use rewind_proto::crl::CrlFile;
use rewind_proto::identity::Authenticator;
use rewind_proto::v1::agent_service_server::AgentServiceServer;
use rewind_proto::v1::operator_service_server::OperatorServiceServer;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;

/// The largest message an agent may send: a step result with a snapshot
/// (whose data is limited to `MAX_SNAPSHOT` by the agent) and its logs.
pub const MAX_AGENT_MESSAGE: usize = 20 << 20;
/// The largest request an operator may send (a plan travels as text).
pub const MAX_OPERATOR_REQUEST: usize = 4 << 20;
/// The largest reply to an operator (history, releases, previews).
pub const MAX_OPERATOR_REPLY: usize = 64 << 20;
/// Streams one connection may hold at once (an agent needs one; an
/// operator's CLI a few: a watch and its calls).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// How long a stopping coordinator waits for results of steps in flight.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long it then gives connections to close.
pub const CLOSE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] rewind_proto::tls::TlsError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Metrics(String),
    /// This coordinator lost the leader lease and stopped.
    #[error("coordinator {name} stepped down: {why}")]
    Deposed { name: String, why: String },
}

fn tls_error(path: &std::path::Path, error: impl std::fmt::Display) -> ServeError {
    ServeError::Tls(rewind_proto::tls::TlsError {
        path: path.to_path_buf(),
        error: error.to_string(),
    })
}

/// The URL this coordinator is reached at unless `[coordinator] advertise`
/// says: its listening address, or its name when it listens on every
/// interface.
fn default_address(name: &str, listener: &TcpListener) -> String {
    match listener.local_addr() {
        Ok(address) if address.ip().is_unspecified() => {
            format!("https://{name}:{}", address.port())
        }
        Ok(address) => format!("https://{address}"),
        Err(_) => String::new(),
    }
}

/// Serve on an already-bound listener until `shutdown` completes, then
/// drain. Runs left unfinished by a previous coordinator resume first.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let store = Store::open(&config.database).await?;
    let shared = Arc::new(Shared::new(
        store,
        config.notifications.clone(),
        config.plans.clone(),
    ));
    let config = Arc::new(config);
    // Dropped (and so stopped) when the coordinator stops.
    let _metrics = match config.metrics {
        Some(address) => {
            crate::metrics::prime(&config);
            for drill in config.drills.keys() {
                if let Some((ms, _)) = crate::drill::scheduler::last_pass(&shared, drill).await? {
                    crate::metrics::drill_passed(drill, ms);
                }
            }
            let server = rewind_proto::metrics::serve(address, crate::metrics::registry())
                .await
                .map_err(ServeError::Metrics)?;
            eprintln!("metrics on http://{address}/metrics");
            Some(server)
        }
        None => None,
    };
    let address = match &config.advertise {
        Some(url) => url.clone(),
        None => default_address(&config.name, &listener),
    };
    let leadership = Arc::new(Leadership::new(config.name.clone(), address, config.lease));
    shared.store.stand_by();
    let ca = std::fs::read(&config.tls.ca).map_err(|e| tls_error(&config.tls.ca, e))?;
    let authenticator =
        Arc::new(Authenticator::new(&ca).map_err(|e| tls_error(&config.tls.ca, e))?);
    let crl = match &config.crl {
        Some(path) => Some(Arc::new(
            CrlFile::open(path, &config.tls.ca).map_err(|e| tls_error(path, e))?,
        )),
        None => None,
    };
    let acceptor = config.tls.acceptor(crl.clone())?;
    let limits = Limits::for_this_process();
    tracing::info!(
        max_connections = limits.max_connections,
        max_handshakes = limits.max_handshakes,
        "connection bounds"
    );
    let agents = agents::AgentApi {
        shared: shared.clone(),
        registrar: agents::Registrar::start(shared.clone()),
        authenticator: authenticator.clone(),
        config: config.clone(),
        crl,
    };
    let operators = operator::OperatorApi {
        shared: shared.clone(),
        config: config.clone(),
        authenticator,
        leadership: leadership.clone(),
    };
    // Until this coordinator leads and has resumed its runs, agents are
    // told it stands by (operators are answered what a standby can: see
    // `operator`).
    let only_when_leading = |leadership: Arc<Leadership>| {
        move |request: tonic::Request<()>| {
            if leadership.is_ready() {
                Ok(request)
            } else {
                Err(leadership.refusal())
            }
        }
    };
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        // Agents' heartbeats (every 20 s) keep their connections read, so
        // these pings go only to a connection silent for 30 s.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(InterceptedService::new(
            AgentServiceServer::new(agents)
                .max_decoding_message_size(MAX_AGENT_MESSAGE)
                .max_encoding_message_size(MAX_AGENT_MESSAGE),
            only_when_leading(leadership.clone()),
        ))
        .add_service(
            OperatorServiceServer::new(operators)
                .max_decoding_message_size(MAX_OPERATOR_REQUEST)
                .max_encoding_message_size(MAX_OPERATOR_REPLY),
        )
        .serve_with_incoming_shutdown(
            rewind_proto::accept::incoming(listener, acceptor, limits),
            async {
                let _ = stopped_rx.await;
            },
        );
    tokio::pin!(server);
    tokio::pin!(shutdown);
    // Stand by until this coordinator holds the lease (at once when it is
    // alone on its journal).
    let term = tokio::select! {
        result = &mut server => return Ok(result?),
        _ = &mut shutdown => return Ok(()),
        term = leadership.campaign(&shared.store) => term?,
    };
    crate::metrics::METRICS.leader_term.set(term);
    let resumed = runner::resume_all(shared.clone()).await?;
    if resumed > 0 {
        tracing::info!("resumed {resumed} unfinished run(s)");
    }
    let drills = crate::drill::driver::resume_all(&shared, &config).await?;
    if drills > 0 {
        tracing::info!("resumed {drills} unfinished drill run(s)");
    }
    tokio::spawn(crate::drill::scheduler::run(shared.clone(), config.clone()));
    crate::notify::deliver::spawn_all(shared.clone(), &config.notifications);
    leadership.ready();
    // Agents and operators are served from here on.
    eprintln!("coordinator {} leads (term {term})", leadership.name);
    let deposed = async {
        tokio::select! {
            why = leadership.hold(&shared.store) => why,
            _ = shared.store.deposed() => "the journal refused a write: another coordinator holds the lease".to_string(),
        }
    };
    tokio::select! {
        result = &mut server => return Ok(result?),
        _ = &mut shutdown => {}
        why = deposed => {
            // Nothing more is written or sent; agents go to the new leader.
            shared.draining.store(true, Ordering::SeqCst);
            shared.fleet.close_all(leadership.refusal());
            crate::metrics::METRICS.leader_term.set(0);
            return Err(ServeError::Deposed { name: leadership.name.clone(), why });
        }
    }
    drain(&shared).await;
    if let Err(e) = shared.store.release_lease().await {
        tracing::warn!("cannot give the lease up (a standby takes over when it lapses): {e}");
    }
    let _ = stopped_tx.send(());
    match tokio::time::timeout(CLOSE, &mut server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("connections still open after {CLOSE:?}; exiting anyway"),
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

/// Stop sending, wait (bounded) for the results of steps in flight, then
/// tell every agent to reconnect.
async fn drain(shared: &Arc<Shared>) {
    shared.draining.store(true, Ordering::SeqCst);
    tracing::info!("stopping: no new runs or steps; waiting up to {DRAIN:?} for steps in flight");
    let started = tokio::time::Instant::now();
    loop {
        let busy = match shared.store.steps_in_flight().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("stopping: cannot read the journal: {e}");
                0
            }
        };
        if busy == 0 || started.elapsed() >= DRAIN {
            if busy > 0 {
                tracing::warn!(
                    "stopping with {busy} step(s) in flight: they stay journaled as sent, and the next coordinator settles them"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.fleet.close_all(tonic::Status::unavailable(
        "the coordinator is stopping; reconnect",
    ));
}
