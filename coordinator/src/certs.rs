//! `rewind certs`: a development CA and the certificates of coordinators,
//! agents and operators, with SPIFFE-style URI SANs
//! (`spiffe://<trust-domain>/<kind>/<name>`), and its certificate revocation
//! list (`crl.pem`, rewritten whole by `revoke`). Production can use any PKI
//! that issues the same URIs and a PEM CRL.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, string::Ia5String,
};
use rewind_proto::identity::{Identity, Kind, trust_domain_of_ca_pem};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {error}", path.display())]
    File { path: PathBuf, error: String },
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("{0}")]
    Invalid(String),
}

fn generate(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::File {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// Write a file that must not exist yet; keys get mode 0600.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let file_error = |e: std::io::Error| CertError::File {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(file_error)?;
    file.write_all(contents.as_bytes()).map_err(file_error)
}

/// The files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub identity: Identity,
}

/// The file stem of a party's certificate, e.g. `agent-web-1`.
pub fn stem(kind: Kind, name: &str) -> String {
    format!("{}-{name}", kind.as_str())
}

/// Create `ca.pem` and `ca.key` in `dir` for a trust domain.
pub fn init(dir: &Path, trust_domain: &str) -> Result<PathBuf, CertError> {
    if trust_domain.is_empty() || trust_domain.contains('/') {
        return Err(CertError::Invalid(format!(
            "`{trust_domain}` is not a trust domain (e.g. rewind.local)"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| CertError::File {
        path: dir.to_path_buf(),
        error: e.to_string(),
    })?;
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    // A unique name: a certificate of another CA is then reported as from an
    // unknown CA, not as a bad signature of this one.
    let created = OffsetDateTime::now_utc();
    params.distinguished_name.push(
        DnType::CommonName,
        format!(
            "rewind CA for {trust_domain} ({}-{:08x})",
            created.unix_timestamp(),
            rand::random::<u32>()
        ),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let uri = Ia5String::try_from(format!("spiffe://{trust_domain}")).map_err(generate)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key).map_err(generate)?;
    let ca = dir.join("ca.pem");
    write_new(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
    write_new(&ca, &cert.pem(), 0o644)?;
    write_crl(dir, &[])?;
    Ok(ca)
}

/// The list of revoked serial numbers (hex), with when and whose.
const REVOKED: &str = "revoked.txt";

/// Sign and write `crl.pem` revoking `serials` (big-endian bytes), replacing
/// the file in one rename so that a reader never sees half of it.
fn write_crl(dir: &Path, serials: &[(Vec<u8>, OffsetDateTime)]) -> Result<PathBuf, CertError> {
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?).map_err(generate)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(generate)?;
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(3650),
        crl_number: SerialNumber::from(now.unix_timestamp_nanos() as u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|(serial, at)| RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: *at,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer).map_err(generate)?;
    let path = dir.join("crl.pem");
    let temp = dir.join(".crl.pem.tmp");
    let _ = std::fs::remove_file(&temp);
    write_new(&temp, &crl.pem().map_err(generate)?, 0o644)?;
    std::fs::rename(&temp, &path).map_err(|e| CertError::File {
        path: path.clone(),
        error: e.to_string(),
    })?;
    Ok(path)
}

/// Revoke the certificate of `kind`/`name` issued in `dir`: its serial joins
/// `revoked.txt` and `crl.pem` is rewritten. Coordinators and agents whose
/// configuration names that `crl.pem` refuse it from then on, and end its
/// open streams.
pub fn revoke(dir: &Path, kind: Kind, name: &str) -> Result<PathBuf, CertError> {
    let cert_path = dir.join(format!("{}.pem", stem(kind, name)));
    let pem = read(&cert_path)?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| {
        CertError::Invalid(format!(
            "{}: not a PEM certificate: {e}",
            cert_path.display()
        ))
    })?;
    let cert = parsed.parse_x509().map_err(|e| {
        CertError::Invalid(format!("{}: not a certificate: {e}", cert_path.display()))
    })?;
    let serial = cert.tbs_certificate.serial.to_bytes_be();
    let list_path = dir.join(REVOKED);
    let mut list = match std::fs::read_to_string(&list_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(CertError::File {
                path: list_path,
                error: e.to_string(),
            });
        }
    };
    let now = OffsetDateTime::now_utc();
    if !list
        .lines()
        .any(|l| l.split(' ').next() == Some(&hex::encode(&serial)))
    {
        list.push_str(&format!(
            "{} {} {}\n",
            hex::encode(&serial),
            now.unix_timestamp(),
            stem(kind, name)
        ));
    }
    let mut serials = Vec::new();
    for line in list.lines() {
        let mut parts = line.split(' ');
        let (Some(serial), Some(at)) = (parts.next(), parts.next()) else {
            continue;
        };
        let bad = || CertError::Invalid(format!("{}: bad line `{line}`", list_path.display()));
        let serial = hex::decode(serial).map_err(|_| bad())?;
        let at = at.parse::<i64>().map_err(|_| bad())?;
        serials.push((
            serial,
            OffsetDateTime::from_unix_timestamp(at).map_err(|_| bad())?,
        ));
    }
    let crl = write_crl(dir, &serials)?;
    std::fs::write(&list_path, list).map_err(|e| CertError::File {
        path: list_path,
        error: e.to_string(),
    })?;
    Ok(crl)
}

/// Issue a certificate for `kind`/`name` signed by the CA in `dir`, valid
/// from `not_before` to `not_after`. Coordinators also get the DNS names and
/// IP addresses in `hosts` (and `localhost`, `127.0.0.1`).
pub fn issue(
    dir: &Path,
    kind: Kind,
    name: &str,
    hosts: &[String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Issued, CertError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(CertError::Invalid(format!(
            "`{name}` is not a valid name (letters, digits, `.`, `-`, `_`)"
        )));
    }
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?).map_err(generate)?;
    let trust_domain = trust_domain_of_ca_pem(ca_pem.as_bytes())
        .map_err(|e| CertError::Invalid(format!("{}: {e}", dir.join("ca.pem").display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(generate)?;

    let identity = Identity {
        trust_domain,
        kind,
        name: name.to_string(),
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names.push(SanType::URI(
        Ia5String::try_from(identity.uri()).map_err(generate)?,
    ));
    if kind == Kind::Coordinator {
        let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
        all.extend(hosts.iter().cloned());
        for host in all {
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params.subject_alt_names.push(SanType::DnsName(
                    Ia5String::try_from(host).map_err(generate)?,
                )),
            }
        }
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    let stem = stem(kind, name);
    let issued = Issued {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        identity,
    };
    write_new(&issued.key, &key.serialize_pem(), 0o600)?;
    write_new(&issued.cert, &cert.pem(), 0o644)?;
    Ok(issued)
}

/// Issue a certificate valid from now for `days` days.
pub fn issue_for_days(
    dir: &Path,
    kind: Kind,
    name: &str,
    hosts: &[String],
    days: i64,
) -> Result<Issued, CertError> {
    let now = OffsetDateTime::now_utc();
    issue(
        dir,
        kind,
        name,
        hosts,
        now - Duration::minutes(5),
        now + Duration::days(days),
    )
}
