//! The operator's connection to the coordinator: mutual TLS with an operator
//! certificate, a deadline for connecting and for each call, and errors
//! turned into sentences that name the coordinator's address.

use rewind_proto::connect::Dialer;
use rewind_proto::crl::CrlFile;
use rewind_proto::tls::{self, TlsFiles};
use rewind_proto::v1::operator_service_client::OperatorServiceClient;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

pub type Client = OperatorServiceClient<Channel>;

/// How long a quick call (a read, cancel, approve) may take.
pub const QUICK: Duration = Duration::from_secs(30);
/// How long a preview or the start of a run may take (plugins plan first).
pub const PREVIEW: Duration = Duration::from_secs(10 * 60);
/// How long a checkpoint may take (every target is snapshotted).
pub const CHECKPOINT: Duration = Duration::from_secs(20 * 60);

/// Make a call with a deadline: the coordinator is told it (grpc-timeout)
/// and the CLI stops waiting at it, saying where it waited.
pub async fn within<T>(
    address: &str,
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(refused(status)),
        Err(_) => Err(anyhow::anyhow!(
            "no answer from the coordinator at {address} within {}",
            humantime::format_duration(limit)
        )),
    }
}

/// A request that carries its deadline to the coordinator.
pub fn request<T>(message: T, limit: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(limit);
    request
}

/// Where the coordinator is and which certificate to present.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The coordinator's URL, or several separated by commas (coordinators
    /// sharing a journal: the one that leads is used).
    #[arg(
        long,
        env = "REWIND_COORDINATOR",
        default_value = "https://127.0.0.1:7443",
        global = true
    )]
    pub coordinator: String,
    /// The CA certificate that issued the coordinator's certificate.
    #[arg(long, env = "REWIND_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// This operator's certificate.
    #[arg(long, env = "REWIND_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// This operator's key.
    #[arg(long, env = "REWIND_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// The fleet CA's revocation list, checked against the coordinator's certificate.
    #[arg(long, env = "REWIND_CRL", global = true)]
    pub crl: Option<PathBuf>,
    /// How long connecting (TCP, TLS, HTTP/2) may take.
    #[arg(long, env = "REWIND_CONNECT_TIMEOUT", global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

/// What a command needs of the coordinator it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The leader: the command acts, or needs the connected agents.
    Leader,
    /// Any coordinator: a standby answers reads from the journal.
    Any,
}

impl Connection {
    /// The coordinator that leads: the first of those given that leads,
    /// or the leader a standby among them names (its advertised URL).
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.reach(Need::Leader).await
    }

    /// A coordinator to read from: the first of those given that answers,
    /// leader or standby.
    pub async fn connect_for_reading(&self) -> anyhow::Result<Client> {
        self.reach(Need::Any).await
    }

    async fn reach(&self, need: Need) -> anyhow::Result<Client> {
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            anyhow::bail!(
                "connecting to the coordinator needs --ca, --cert and --key (or REWIND_CA, REWIND_CERT, REWIND_KEY): \
                 an operator certificate from `rewind certs issue operator <name>`"
            );
        };
        let files = TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        };
        let crl = match &self.crl {
            Some(path) => Some(Arc::new(
                CrlFile::open(path, ca).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        let urls: Vec<String> = self
            .coordinator
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        // One coordinator: its own errors say best what is wrong.
        let mut first = None;
        if let [url] = &urls[..] {
            let client = connect_with(url, &files, crl.clone(), self.connect_timeout).await?;
            if need == Need::Any {
                return Ok(client);
            }
            first = Some(client);
        }
        let mut tried = Vec::new();
        let mut queue = urls.clone();
        let mut next = 0;
        while next < queue.len() {
            let url = queue[next].clone();
            next += 1;
            let connected = match first.take() {
                Some(client) => Ok(client),
                None => connect_with(&url, &files, crl.clone(), self.connect_timeout).await,
            };
            let mut client = match connected {
                Ok(client) => client,
                Err(e) => {
                    tried.push(format!("{url}: {e:#}"));
                    continue;
                }
            };
            let probe = client.who_am_i(request(
                rewind_proto::v1::WhoAmIRequest {},
                self.connect_timeout,
            ));
            // A standby names the leader: it is tried next (once).
            let leader_url = match tokio::time::timeout(self.connect_timeout, probe).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    if reply.leads || need == Need::Any {
                        return Ok(client);
                    }
                    tried.push(format!(
                        "{url}: coordinator {} is a standby ({})",
                        reply.coordinator,
                        if reply.leader.is_empty() {
                            "no leader is known yet".to_string()
                        } else {
                            format!(
                                "the leader is coordinator {} at {}",
                                reply.leader, reply.leader_url
                            )
                        }
                    ));
                    reply.leader_url
                }
                Ok(Err(status))
                    if status.code() == tonic::Code::Unavailable
                        && status.message().contains("standby") =>
                {
                    tried.push(format!("{url}: {}", status.message()));
                    status
                        .metadata()
                        .get(crate::leader::LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                }
                Err(_) => {
                    tried.push(format!("{url}: no answer"));
                    continue;
                }
                // It answered (a refusal of this operator is the command's to report).
                Ok(Err(_)) => return Ok(client),
            };
            if !leader_url.is_empty() && !queue.contains(&leader_url) {
                queue.push(leader_url);
            }
        }
        anyhow::bail!(
            "no coordinator leads among those given or named:\n  {}",
            tried.join("\n  ")
        )
    }
}

pub async fn connect(url: &str, files: &TlsFiles) -> anyhow::Result<Client> {
    connect_with(url, files, None, Duration::from_secs(10)).await
}

async fn connect_with(
    url: &str,
    files: &TlsFiles,
    crl: Option<Arc<CrlFile>>,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let mut dialer = Dialer::new(url, files, crl).map_err(anyhow::Error::msg)?;
    dialer.connect_timeout = timeout;
    let channel = dialer.channel().await.map_err(anyhow::Error::msg)?;
    Ok(OperatorServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(4 << 20))
}

/// A gRPC failure as an operator should read it.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let what = match status.code() {
        Code::PermissionDenied => "refused",
        Code::Unauthenticated => "refused (authentication)",
        Code::InvalidArgument => "invalid",
        Code::FailedPrecondition => "not possible now",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::Unavailable => {
            let source: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(&status);
            return match source {
                Some(e) => anyhow::anyhow!("the coordinator is unavailable: {}", tls::explain(e)),
                None => anyhow::anyhow!("the coordinator is unavailable: {}", status.message()),
            };
        }
        _ => return anyhow::anyhow!("failed: {}", status.message()),
    };
    anyhow::Error::new(Refused(format!("{what}: {}", status.message())))
}

/// The coordinator said no (a role, a precondition, something not found):
/// the command exits 4, so a script can tell it from a failure to run.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}
