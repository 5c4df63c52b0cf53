//! Identities come from certificates alone: a SPIFFE-style URI SAN,
//! `spiffe://<trust-domain>/<kind>/<name>`, with kind `agent`, `operator` or
//! `coordinator`.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Agent,
    Operator,
    Coordinator,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Operator => "operator",
            Kind::Coordinator => "coordinator",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "agent" => Some(Kind::Agent),
            "operator" => Some(Kind::Operator),
            "coordinator" => Some(Kind::Coordinator),
            _ => None,
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub trust_domain: String,
    pub kind: Kind,
    pub name: String,
}

impl Identity {
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/{}/{}",
            self.trust_domain,
            self.kind.as_str(),
            self.name
        )
    }

    /// Parse `spiffe://<trust-domain>/<kind>/<name>`.
    pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
        let bad = || IdentityError::BadUri(uri.to_string());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(trust_domain), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let kind = Kind::parse(kind).ok_or_else(bad)?;
        if trust_domain.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            kind,
            name: name.to_string(),
        })
    }
}

/// The identity in a parsed certificate's URI SAN.
fn identity_of(cert: &X509Certificate<'_>) -> Result<Identity, IdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?
        .ok_or(IdentityError::NoUri)?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .ok_or(IdentityError::NoUri)?;
    Identity::parse_uri(uri)
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the certificate has no spiffe:// URI SAN naming its holder")]
    NoUri,
    #[error("`{0}` is not spiffe://<trust-domain>/<agent|operator|coordinator>/<name>")]
    BadUri(String),
}

/// Reads the identity of each request from its client certificate, and says
/// precisely why one is refused. The TLS handshake already verified the
/// certificate's chain to the fleet CA and that it is not revoked (see
/// `accept`; a connection without such a certificate carries no request),
/// so this checks what may have changed on a connection that stays open:
/// that the certificate is still within its validity, and that it names a
/// holder of the fleet's trust domain.
pub struct Authenticator {
    trust_domain: String,
}

impl Authenticator {
    /// An authenticator for the CA certificate `ca_pem` (whose URI SAN
    /// names the trust domain).
    pub fn new(ca_pem: &[u8]) -> Result<Authenticator, IdentityError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem)
            .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
        let trust_domain = trust_domain_of_ca(&pem.contents)?;
        Ok(Authenticator { trust_domain })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The identity of a request's peer, from its verified client certificate.
    pub fn authenticate<T>(&self, request: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
        let unauthenticated = |message: String| tonic::Status::unauthenticated(message);
        let certs = request.peer_certs().unwrap_or_default();
        let leaf = certs
            .first()
            .ok_or_else(|| unauthenticated("no client certificate was presented".into()))?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| unauthenticated(format!("the client certificate cannot be read: {e}")))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let validity = cert.validity();
        if now > validity.not_after.timestamp() {
            return Err(unauthenticated(format!(
                "the client certificate expired at {} (Unix time)",
                validity.not_after.timestamp()
            )));
        }
        if now < validity.not_before.timestamp() {
            return Err(unauthenticated(format!(
                "the client certificate is not valid before {} (Unix time)",
                validity.not_before.timestamp()
            )));
        }
        let identity =
            identity_of(&cert).map_err(|e| unauthenticated(format!("client certificate: {e}")))?;
        if identity.trust_domain != self.trust_domain {
            return Err(tonic::Status::permission_denied(format!(
                "certificate {identity} is from trust domain {}, not {}",
                identity.trust_domain, self.trust_domain
            )));
        }
        Ok(identity)
    }
}

/// The trust domain of a CA certificate: its `spiffe://<trust-domain>` URI SAN.
pub fn trust_domain_of_ca(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?
        .ok_or(IdentityError::NoUri)?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri
                .strip_prefix("spiffe://")
                .map(|td| td.trim_end_matches('/').to_string()),
            _ => None,
        })
        .filter(|td| !td.is_empty() && !td.contains('/'))
        .ok_or(IdentityError::NoUri)
}

/// The trust domain of a CA certificate given as PEM.
pub fn trust_domain_of_ca_pem(pem: &[u8]) -> Result<String, IdentityError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    trust_domain_of_ca(&pem.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_are_refused() {
        let id = Identity::parse_uri("spiffe://rewind.local/agent/web-1").unwrap();
        assert_eq!(
            id,
            Identity {
                trust_domain: "rewind.local".into(),
                kind: Kind::Agent,
                name: "web-1".into()
            }
        );
        assert_eq!(id.uri(), "spiffe://rewind.local/agent/web-1");
        for bad in [
            "https://x/agent/a",
            "spiffe://td/robot/a",
            "spiffe://td/agent",
            "spiffe://td/agent/a/b",
            "spiffe:///agent/a",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad}");
        }
    }
}
