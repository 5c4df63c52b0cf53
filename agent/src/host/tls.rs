//! TLS that a target's grant sets for particular HTTPS hosts (`grant.tls`):
//! a private CA to trust instead of the public web roots, and a client
//! certificate for servers that require one (etcd with
//! `--client-cert-auth`, an internal S3 store). Requests to those hosts are
//! sent here; any other host goes through wasmtime-wasi-http's default.

use crate::config::HostPort;
use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// The TLS client configuration for one `host:port`.
#[derive(Debug, Clone)]
pub struct HostTls {
    pub host: HostPort,
    config: Arc<rustls::ClientConfig>,
}

fn read_pem_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

impl HostTls {
    /// Read and check the PEM files; errors say which file and why.
    pub fn load(
        host: HostPort,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<HostTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(ca) => {
                for cert in read_pem_certs(ca, "ca")? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca {}: {e}", ca.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = read_pem_certs(cert, "cert")?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("key {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!(
                        "cert {} and key {} do not go together: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("cert and key go together: set both or neither".to_string()),
        };
        Ok(HostTls {
            host,
            config: Arc::new(config),
        })
    }

    pub fn applies_to(&self, host: &str, port: u16) -> bool {
        self.host.allows(host, port)
    }
}

type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Send an HTTPS request with this host's TLS configuration (HTTP/1.1),
/// with the same timeouts and connection handling as wasmtime-wasi-http's
/// default sender.
pub async fn send_request(
    tls: HostTls,
    mut request: http::Request<WasiBody>,
    options: RequestOptions,
) -> Result<(http::Response<WasiBody>, Io), Error> {
    use http_body_util::BodyExt;
    let uri = request.uri().clone();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(60));
    let first_byte_timeout = options
        .first_byte_timeout
        .unwrap_or(Duration::from_secs(600));
    let between_bytes_timeout = options
        .between_bytes_timeout
        .unwrap_or(Duration::from_secs(600))
        .max(Duration::from_nanos(1));

    let tcp = tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Connect)?;
    let name = ServerName::try_from(host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?;
    let stream = tokio::time::timeout(
        connect_timeout,
        tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(|e| {
        tracing::warn!(host, port, error = %e, "TLS with the grant's settings failed");
        Error::Tls(e)
    })?;
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request line carries the path only (not the scheme and authority).
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    if !request.headers().contains_key(http::header::HOST) {
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host);
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&authority).map_err(|_| Error::HttpRequestUriInvalid)?,
        );
    }

    let send = async move {
        let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        Ok::<_, Error>(response)
    };
    // Drive the connection while waiting for the response.
    let mut send = std::pin::pin!(send);
    let mut connection = Some(connection);
    let response = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            let Some(conn) = connection.as_mut() else {
                return Poll::Pending;
            };
            let done = std::task::ready!(Pin::new(conn).poll(cx));
            connection = None;
            match done {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(Error::from(e))),
            }
        }
    })
    .await?;
    let response = response.map(|incoming| {
        TimedBody {
            incoming,
            timeout: between_bytes_timeout,
            sleep: None,
        }
        .boxed_unsync()
    });
    let io: Io = Box::new(async move {
        match connection {
            Some(conn) => conn.await.map_err(Error::from),
            None => Ok(()),
        }
    });
    Ok((response, io))
}

/// A response body whose reads fail after `timeout` without a byte.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Error::from)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }
}
