//! The client side of mutual TLS, for agents and operators: TCP, then TLS
//! with the client's certificate, checking the server's certificate against
//! the fleet CA (and, where configured, its revocation list, re-read when it
//! changes), then HTTP/2. Connecting as a whole has a deadline, so a
//! coordinator that accepts TCP but never answers is reported, not waited on.

use crate::accept::fleet_roots;
use crate::crl::CrlFile;
use crate::tls::{TlsError, TlsFiles, explain};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// How a client reaches the coordinator.
#[derive(Clone)]
pub struct Dialer {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    files: TlsFiles,
    crl: Option<Arc<CrlFile>>,
    pub connect_timeout: Duration,
    /// The last TLS configuration built, and what it was built from.
    config: Arc<Mutex<Option<Built>>>,
}

/// A TLS configuration and what it was built from.
type Built = (Sources, Arc<rustls::ClientConfig>);

/// What a client's TLS configuration is built from: the CA, certificate
/// and key files (size and modification time) and the revocation list's
/// generation. A renewed certificate is used at the next connection.
#[derive(PartialEq, Eq)]
struct Sources {
    files: [Option<(std::time::SystemTime, u64)>; 3],
    crl: Option<u64>,
}

fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn error(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        error: e.to_string(),
    }
}

impl Dialer {
    /// A dialer for `url` (`https://host:port`) presenting `files`.
    pub fn new(url: &str, files: &TlsFiles, crl: Option<Arc<CrlFile>>) -> Result<Dialer, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("coordinator URL {url}: it must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<u16>()
                    .map_err(|_| format!("coordinator URL {url}: bad port `{port}`"))?,
            ),
            _ => (authority, 443),
        };
        if host.is_empty() {
            return Err(format!("coordinator URL {url}: no host"));
        }
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("coordinator URL {url}: {e}"))?;
        Ok(Dialer {
            host: host.to_string(),
            port,
            server_name,
            files: files.clone(),
            crl,
            connect_timeout: Duration::from_secs(10),
            config: Arc::default(),
        })
    }

    pub fn address(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    /// The TLS configuration, built again only when its files or the
    /// revocation list changed.
    fn config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let sources = Sources {
            files: [
                stamp(&self.files.ca),
                stamp(&self.files.cert),
                stamp(&self.files.key),
            ],
            crl: self.crl.as_ref().map(|crl| crl.current().1),
        };
        let mut cached = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_from, config)) = cached.as_ref()
            && *built_from == sources
        {
            return Ok(config.clone());
        }
        let config = self.build_config()?;
        *cached = Some((sources, config.clone()));
        Ok(config)
    }

    fn build_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = crate::tls::provider();
        let roots = fleet_roots(&self.files.ca)?;
        let crls = match &self.crl {
            Some(crl) => crl.current().0.to_vec(),
            None => Vec::new(),
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| error(&self.files.ca, e))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.files.cert)
            .map_err(|e| error(&self.files.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| error(&self.files.cert, e))?;
        let key =
            PrivateKeyDer::from_pem_file(&self.files.key).map_err(|e| error(&self.files.key, e))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error(&self.files.cert, e))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(certs, key)
            .map_err(|e| error(&self.files.cert, e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        // No session resumption: coordinators check the certificate at every
        // connection (and refuse to resume).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// An HTTP/2 channel to the coordinator, or a sentence saying why not
    /// (naming the address).
    pub async fn channel(&self) -> Result<Channel, String> {
        let address = self.address();
        let config = self.config().map_err(|e| e.to_string())?;
        // The TLS is ours (the connector's), so tonic sees plain http://.
        let endpoint = Endpoint::from_shared(format!("http://{}:{}", self.host, self.port))
            .map_err(|e| format!("coordinator URL {address}: {e}"))?
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let connector = TlsDial {
            host: self.host.clone(),
            port: self.port,
            server_name: self.server_name.clone(),
            config,
        };
        match tokio::time::timeout(
            self.connect_timeout,
            endpoint.connect_with_connector(connector),
        )
        .await
        {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(format!(
                "cannot reach the coordinator at {address}: {}",
                explain(&e)
            )),
            Err(_) => Err(format!(
                "cannot reach the coordinator at {address}: no answer within {}",
                humantime_secs(self.connect_timeout)
            )),
        }
    }
}

/// The connector tonic calls: TCP, then TLS.
#[derive(Clone)]
struct TlsDial {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for TlsDial {
    type Response = TokioIo<Primed>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let dial = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((dial.host.as_str(), dial.port)).await?;
            tcp.set_nodelay(true)?;
            let mut tls = TlsConnector::from(dial.config)
                .connect(dial.server_name, tcp)
                .await?;
            // With TLS 1.3 the server checks our certificate after our side
            // of the handshake is done: read its first bytes (its HTTP/2
            // settings, or its refusal) here, so that a refusal is reported
            // as what it is and not as a broken pipe later.
            let mut first = vec![0u8; 16 * 1024];
            let n = tls.read(&mut first).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the coordinator closed the connection right after the TLS handshake",
                ));
            }
            first.truncate(n);
            Ok(TokioIo::new(Primed {
                first,
                offset: 0,
                inner: tls,
            }))
        })
    }
}

/// A TLS stream whose first bytes were read already (see `TlsDial`).
pub struct Primed {
    first: Vec<u8>,
    offset: usize,
    inner: tokio_rustls::client::TlsStream<TcpStream>,
}

impl AsyncRead for Primed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.first.len() {
            let n = (self.first.len() - self.offset).min(buf.remaining());
            let start = self.offset;
            buf.put_slice(&self.first[start..start + n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Primed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn humantime_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
