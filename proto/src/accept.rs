//! The server's TLS: nothing is read from a connection before its client
//! certificate chains to the fleet's CA and is not revoked. The handshake
//! refuses everything else (rustls' `WebPkiClientVerifier` for the chain,
//! then the certificate's serial number against the revocation list, whose
//! signature was checked when it was read); kinds, roles and names are
//! checked per request after it (see `identity::Authenticator`).
//!
//! Connections are bounded: at most `max_connections` at once (derived from
//! the open-file limit, so the process never runs out of descriptors), at
//! most `max_handshakes` of them still in their handshake, each handshake
//! within `handshake_timeout`, and a connection that sends nothing for
//! `idle_timeout` is closed (agents' heartbeats and HTTP/2 pings keep live
//! ones busy). A connection over a bound is closed at once, so the listen
//! queue keeps moving and operators still get in.

use crate::crl::CrlFile;
use crate::tls::{TlsError, TlsFiles};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// Bounds on the connections a server holds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a new connection may take to send its first bytes (its
    /// ClientHello): a silent one gives its handshake slot back after this.
    pub hello_timeout: Duration,
    /// Handshakes in progress from one source address.
    pub per_source_handshakes: usize,
    /// Handshake slots only sources that completed a handshake before may
    /// take: a flood from elsewhere cannot lock out the fleet's agents and
    /// operators.
    pub known_handshakes: usize,
}

/// Sources remembered as having completed a handshake (then forgotten all
/// at once, when full: they come back at their next handshake).
const KNOWN_SOURCES: usize = 1 << 16;

/// Descriptors kept for everything but connections (journal, files, logs).
const RESERVED_FILES: u64 = 64;

impl Limits {
    /// Limits that fit this process's open-file limit (raised to its hard
    /// limit first): connections take what the other descriptors leave, and
    /// handshakes at most half of that.
    pub fn for_this_process() -> Limits {
        let files = raise_open_file_limit();
        let max_connections = files.saturating_sub(RESERVED_FILES).clamp(16, 200_000) as usize;
        let max_handshakes = (max_connections / 2).clamp(8, 4096);
        Limits {
            max_connections,
            max_handshakes,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(2),
            per_source_handshakes: (max_handshakes / 16).max(4),
            known_handshakes: max_handshakes / 4,
        }
    }
}

/// Raise the soft open-file limit to the hard one; returns the soft limit.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// The fleet CA's client verifier: rustls' for the chain, then the
/// revocation list by serial number (a list is verified once, when it is
/// read, rather than at every handshake).
struct FleetClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
    crl: Option<Arc<CrlFile>>,
    subjects: Vec<DistinguishedName>,
}

impl std::fmt::Debug for FleetClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetClientVerifier")
    }
}

impl ClientCertVerifier for FleetClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(crl) = &self.crl {
            let serial = crate::crl::serial_of(end_entity).ok_or(
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
            )?;
            if crl.revokes_serial(&serial) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn error(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        error: e.to_string(),
    }
}

/// The fleet CA as rustls roots.
pub fn fleet_roots(ca: &std::path::Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| error(ca, e))? {
        roots
            .add(cert.map_err(|e| error(ca, e))?)
            .map_err(|e| error(ca, e))?;
    }
    if roots.is_empty() {
        return Err(error(ca, "no CA certificate in the file"));
    }
    Ok(Arc::new(roots))
}

impl TlsFiles {
    /// The coordinator's TLS acceptor (HTTP/2 only): client certificates
    /// must chain to the CA and not be revoked by `crl`.
    pub fn acceptor(&self, crl: Option<Arc<CrlFile>>) -> Result<TlsAcceptor, TlsError> {
        let provider = crate::tls::provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| error(&self.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| error(&self.cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| error(&self.key, e))?;
        let roots = fleet_roots(&self.ca)?;
        let chain = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| error(&self.ca, e))?;
        let verifier = Arc::new(FleetClientVerifier {
            subjects: roots.subjects(),
            chain,
            provider: provider.clone(),
            crl,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| error(&self.cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| error(&self.cert, e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Every connection presents its certificate and has it checked: a
        // resumed session would skip the check, and let a certificate that
        // expired or was revoked since connect again.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// An accepted, authenticated connection: it holds its slot until closed,
/// and fails a read when the peer has sent nothing for the idle timeout.
pub struct Guarded {
    inner: TlsStream<TcpStream>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Guarded {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let deadline = Instant::now() + self.idle;
                    self.timer.as_mut().reset(deadline);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent nothing within the idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// After a refused handshake, the alert is written: close our side and let
/// the client read it. Closing at once would make the kernel answer the
/// client's next write (TLS 1.3 clients write before they read) with a reset
/// that can destroy the alert unread, leaving the client with "broken pipe"
/// instead of the reason.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Who may start a handshake now: a general pool of handshake slots, a
/// share of them kept for sources that completed a handshake before, and a
/// cap per source.
struct Admission {
    general: Arc<Semaphore>,
    known_slots: Arc<Semaphore>,
    per_source: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    known: std::sync::Mutex<std::collections::HashSet<std::net::IpAddr>>,
    limits: Limits,
}

/// A handshake's hold on its slots; given back when dropped.
struct Ticket {
    admission: Arc<Admission>,
    source: std::net::IpAddr,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut per_source = self
            .admission
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

impl Admission {
    fn new(limits: Limits) -> Admission {
        let known = limits.known_handshakes.min(limits.max_handshakes);
        Admission {
            general: Arc::new(Semaphore::new(limits.max_handshakes - known)),
            known_slots: Arc::new(Semaphore::new(known)),
            per_source: Default::default(),
            known: Default::default(),
            limits,
        }
    }

    fn is_known(&self, source: std::net::IpAddr) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&source)
    }

    fn remember(&self, source: std::net::IpAddr) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_SOURCES {
            known.clear();
        }
        known.insert(source);
    }

    /// A handshake slot for `source`, or None (the connection is closed).
    fn admit(self: &Arc<Self>, source: std::net::IpAddr) -> Option<Ticket> {
        let mut per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_source.entry(source).or_insert(0);
        if *count >= self.limits.per_source_handshakes {
            return None;
        }
        let slot = match self.general.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if self.is_known(source) => self.known_slots.clone().try_acquire_owned().ok()?,
            Err(_) => return None,
        };
        *count += 1;
        Some(Ticket {
            admission: self.clone(),
            source,
            _slot: slot,
        })
    }
}

/// TLS connections accepted on `listener` within `limits`, handshakes done
/// concurrently (a slow or failed handshake never holds up the others).
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
) -> ReceiverStream<Result<Guarded, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let admission = Arc::new(Admission::new(limits));
    tokio::spawn(async move {
        let mut refused_since_log = 0u64;
        let mut last_log = Instant::now();
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or similar: wait, the bounds free some.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let source = peer.ip();
            let slot = connections.clone().try_acquire_owned();
            let ticket = admission.admit(source);
            let (Ok(slot), Some(ticket)) = (slot, ticket) else {
                drop(tcp);
                refused_since_log += 1;
                if last_log.elapsed() > Duration::from_secs(5) {
                    tracing::warn!(
                        "refused {refused_since_log} connection(s) over the bounds ({} connections, {} handshakes, {} per source, {} kept for known sources)",
                        limits.max_connections,
                        limits.max_handshakes,
                        limits.per_source_handshakes,
                        limits.known_handshakes
                    );
                    refused_since_log = 0;
                    last_log = Instant::now();
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let admission = admission.clone();
            tokio::spawn(async move {
                // A connection that says nothing gives its slot back soon.
                if !matches!(
                    tokio::time::timeout(limits.hello_timeout, tcp.readable()).await,
                    Ok(Ok(()))
                ) {
                    tracing::debug!(%peer, "no ClientHello within {:?}", limits.hello_timeout);
                    return;
                }
                let accepted = tokio::time::timeout(
                    limits.handshake_timeout,
                    acceptor.accept(tcp).into_fallible(),
                )
                .await;
                drop(ticket);
                match accepted {
                    Ok(Ok(stream)) => {
                        admission.remember(source);
                        let guarded = Guarded {
                            inner: stream,
                            idle: limits.idle_timeout,
                            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(guarded)).await;
                    }
                    Ok(Err((e, tcp))) => {
                        tracing::info!(%peer, "TLS handshake refused: {e}");
                        linger(tcp).await;
                        drop(slot);
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 100,
            max_handshakes: 8,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(2),
            per_source_handshakes: 3,
            known_handshakes: 2,
        }
    }

    #[test]
    fn a_source_gets_its_share_and_known_sources_keep_theirs() {
        let admission = Arc::new(Admission::new(limits()));
        let ip = |n: u8| std::net::IpAddr::from([127, 0, 1, n]);
        let operator = std::net::IpAddr::from([127, 0, 0, 1]);
        admission.remember(operator);
        // One flooding source: three handshakes, then refused.
        let mut held: Vec<Ticket> = (0..3).map(|_| admission.admit(ip(1)).unwrap()).collect();
        assert!(admission.admit(ip(1)).is_none(), "per-source cap");
        // Others fill the general pool (8 - 2 kept = 6 slots).
        held.extend((2..5).map(|n| admission.admit(ip(n)).unwrap()));
        assert!(admission.admit(ip(9)).is_none(), "the general pool is full");
        // A known source still gets in, twice.
        let a = admission.admit(operator).expect("kept for known sources");
        let b = admission.admit(operator).expect("kept for known sources");
        assert!(admission.admit(operator).is_none());
        drop((a, b));
        held.truncate(0);
        assert!(admission.admit(ip(1)).is_some(), "slots come back");
    }
}
