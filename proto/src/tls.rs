//! Mutual TLS (rustls, through tonic) for both ends: every connection
//! presents a certificate issued by the fleet's CA and checks the other's.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};

/// The three PEM files of one party: the CA to trust, its certificate, its key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct TlsError {
    pub path: PathBuf,
    pub error: String,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError {
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(TlsError {
            path: path.to_path_buf(),
            error: "not a PEM file".into(),
        });
    }
    Ok(bytes)
}

impl TlsFiles {
    fn identity(&self) -> Result<TlsIdentity, TlsError> {
        Ok(TlsIdentity::from_pem(read(&self.cert)?, read(&self.key)?))
    }

    fn ca_certificate(&self) -> Result<Certificate, TlsError> {
        Ok(Certificate::from_pem(read(&self.ca)?))
    }

    /// A client that checks the server against the CA (for `domain`) and
    /// presents its own certificate.
    pub fn client(&self, domain: &str) -> Result<ClientTlsConfig, TlsError> {
        Ok(ClientTlsConfig::new()
            .domain_name(domain)
            .ca_certificate(self.ca_certificate()?)
            .identity(self.identity()?))
    }
}

/// The TLS provider of rewind's own connections (agents, operators and
/// coordinators): ring, with TLS 1.3's AES-128-GCM-SHA256 first. Its
/// handshake hashes with SHA-256, which processors compute in hardware,
/// where the default first suite hashes with SHA-384, in software: a
/// tenth of a handshake's time when thousands of agents connect at once.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    let first = cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider
        .cipher_suites
        .retain(|suite| suite.suite() != first.suite());
    provider.cipher_suites.insert(0, first);
    std::sync::Arc::new(provider)
}

/// An error and its sources, `: `-separated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        chain.push(e.to_string());
        current = e.source();
    }
    chain.join(": ")
}

/// Explain a connection failure in words an operator can act on: TLS alerts
/// and transport errors otherwise surface as nested, terse messages.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> String {
    let text = chain(error);
    let hint = if text.contains("CertificateExpired")
        || text.contains("certificate expired")
        || text.contains("Expired")
    {
        "a certificate has expired"
    } else if text.contains("CertificateRevoked") || text.contains("Revoked") {
        "a certificate has been revoked (it is on the CA's revocation list)"
    } else if text.contains("NotValidYet") {
        "a certificate is not valid yet (check the clocks, or its start date)"
    } else if text.contains("UnknownCA") || text.contains("UnknownIssuer") {
        "a certificate was not issued by the CA the other side trusts"
    } else if text.contains("DecryptError") || text.contains("BadSignature") {
        "a certificate's signature does not verify against the trusted CA (issued by another CA?)"
    } else if text.contains("CertificateRequired") {
        "the coordinator requires a client certificate issued by the fleet CA"
    } else if text.contains("BadCertificate") {
        "the other side refused the certificate presented (not from its CA, or not usable for this)"
    } else if text.contains("NotValidForName") {
        "the coordinator's certificate is not valid for the address used"
    } else if text.contains("Connection refused") || text.contains("ConnectionRefused") {
        "nothing is listening at that address"
    } else {
        return text;
    };
    format!("{hint} ({text})")
}
