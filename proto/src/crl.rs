//! Certificate revocation lists of the fleet CA: read from a PEM file and
//! re-read whenever the file changes (its size or modification time), so
//! revoking a certificate needs no restart. A list must be signed by the
//! fleet CA: its signature is checked once, when it is read, and the serial
//! numbers it revokes are then looked up at each handshake. A file that
//! cannot be read, or is not signed by the CA, after a change keeps the last
//! good list in force and says so in the log.

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Read every CRL in a PEM file and check that the CA in `ca` (PEM) signed
/// each; an error says what is wrong with it.
pub fn read(path: &Path, ca: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
    if crls.is_empty() {
        return Err(format!(
            "{}: no `-----BEGIN X509 CRL-----` block",
            path.display()
        ));
    }
    let authorities = authorities(ca)?;
    for (n, crl) in crls.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|e| format!("{}: not a certificate revocation list: {e}", path.display()))?;
        let signed = authorities.iter().any(|der| {
            x509_parser::parse_x509_certificate(der).is_ok_and(|(_, authority)| {
                authority.subject() == parsed.issuer()
                    && parsed.verify_signature(authority.public_key()).is_ok()
            })
        });
        if !signed {
            return Err(format!(
                "{}: revocation list {} (issuer {}) is not signed by the fleet CA in {}",
                path.display(),
                n + 1,
                parsed.issuer(),
                ca.display()
            ));
        }
    }
    Ok(crls)
}

/// The CA certificates (DER) of a PEM file.
fn authorities(ca: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::CertificateDer;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CA certificate in the file", ca.display()));
    }
    Ok(certs)
}

/// The serial numbers (big-endian bytes, without leading zeros) a set of CRLs revokes.
fn serials(crls: &[CertificateRevocationListDer<'static>]) -> HashSet<Vec<u8>> {
    let mut revoked = HashSet::new();
    for crl in crls {
        if let Ok((_, parsed)) = x509_parser::parse_x509_crl(crl.as_ref()) {
            for cert in parsed.iter_revoked_certificates() {
                revoked.insert(cert.user_certificate.to_bytes_be());
            }
        }
    }
    revoked
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    crls: Arc<Vec<CertificateRevocationListDer<'static>>>,
    serials: Arc<HashSet<Vec<u8>>>,
    generation: u64,
}

/// A CRL file of the fleet CA, re-read when it changes.
pub struct CrlFile {
    path: PathBuf,
    ca: PathBuf,
    loaded: Mutex<Loaded>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl CrlFile {
    /// Read the lists in `path`, which the CA in `ca` must have signed.
    pub fn open(path: &Path, ca: &Path) -> Result<CrlFile, String> {
        let stamp = stamp(path);
        let crls = read(path, ca)?;
        Ok(CrlFile {
            path: path.to_path_buf(),
            ca: ca.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp,
                serials: Arc::new(serials(&crls)),
                crls: Arc::new(crls),
                generation: 0,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current lists and their generation (it grows with each change).
    pub fn current(&self) -> (Arc<Vec<CertificateRevocationListDer<'static>>>, u64) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&self.path);
        if now != loaded.stamp {
            loaded.stamp = now;
            match read(&self.path, &self.ca) {
                Ok(crls) => {
                    loaded.serials = Arc::new(serials(&crls));
                    loaded.crls = Arc::new(crls);
                    loaded.generation += 1;
                    tracing::info!(
                        path = %self.path.display(),
                        revoked = loaded.serials.len(),
                        "certificate revocation list re-read"
                    );
                }
                Err(e) => tracing::error!("keeping the previous revocation list: {e}"),
            }
        }
        (loaded.crls.clone(), loaded.generation)
    }

    /// Whether the current lists revoke the certificate with this serial
    /// number (`serial_of`): at each handshake, and for a connection's
    /// periodic check, which then need not parse its certificate each time.
    pub fn revokes_serial(&self, serial: &[u8]) -> bool {
        self.current();
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serials
            .contains(serial)
    }
}

/// A certificate's (DER) serial number, as the lists hold it.
pub fn serial_of(certificate: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(cert.tbs_certificate.serial.to_bytes_be())
}
