//! The operator's connection to the coordinator: mutual TLS with an operator
//! certificate, and errors turned into sentences.

use rewind_proto::tls::{self, TlsFiles};
use rewind_proto::v1::operator_service_client::OperatorServiceClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

pub type Client = OperatorServiceClient<Channel>;

/// Where the coordinator is and which certificate to present.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The coordinator's URL.
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
}

impl Connection {
    pub async fn connect(&self) -> anyhow::Result<Client> {
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
        connect(&self.coordinator, &files).await
    }
}

pub async fn connect(url: &str, files: &TlsFiles) -> anyhow::Result<Client> {
    let domain = url
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_string();
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("coordinator URL {url}: {e}"))?
        .tls_config(files.client(&domain)?)
        .map_err(|e| anyhow::anyhow!("{}", tls::explain(&e)))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the coordinator at {url}: {}",
            tls::explain(&e)
        )
    })?;
    Ok(OperatorServiceClient::new(channel).max_decoding_message_size(64 << 20))
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
        _ => "failed",
    };
    anyhow::anyhow!("{what}: {}", status.message())
}
