//! Certificate revocation lists of the fleet CA: read from a PEM file and
//! re-read whenever the file changes (its size or modification time), so
//! revoking a certificate needs no restart. A file that cannot be read after
//! a change keeps the last good list in force and says so in the log.

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Read every CRL in a PEM file; an error says what is wrong with it.
pub fn read(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
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
    for crl in &crls {
        x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|e| format!("{}: not a certificate revocation list: {e}", path.display()))?;
    }
    Ok(crls)
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

/// A CRL file, re-read when it changes.
pub struct CrlFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl CrlFile {
    pub fn open(path: &Path) -> Result<CrlFile, String> {
        let stamp = stamp(path);
        let crls = read(path)?;
        Ok(CrlFile {
            path: path.to_path_buf(),
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
            match read(&self.path) {
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
    /// number (`serial_of`): for a connection's periodic check, which then
    /// need not parse its certificate each time.
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
