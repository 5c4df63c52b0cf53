//! The coordinator's TOML configuration: where it listens, its database, its
//! certificates, operator roles and protected environments. Parsed once;
//! errors name the file and line.

use rewind_proto::tls::TlsFiles;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an operator may do. Ordered: each role may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: fleet, releases, plans (previews), runs, history.
    Viewer,
    /// Also checkpoint, start, cancel and approve runs.
    Operator,
    /// Also run data-loss steps in protected environments.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub path: PathBuf,
    pub listen: String,
    /// `sqlite://...` or `postgres://...`.
    pub database: String,
    pub tls: TlsFiles,
    pub trust_domain: String,
    pub operators: BTreeMap<String, Role>,
    pub protected_environments: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    coordinator: RawCoordinator,
    #[serde(default)]
    operators: BTreeMap<String, Role>,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    listen: String,
    database: String,
    tls: RawTls,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    #[serde(default)]
    protected: bool,
}

pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
    let error = |line, message| ConfigError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| error(None, format!("cannot read: {e}")))?;
    let raw: Raw = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        error(line, e.message().to_string())
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let tls = TlsFiles {
        ca: resolve(&raw.coordinator.tls.ca),
        cert: resolve(&raw.coordinator.tls.cert),
        key: resolve(&raw.coordinator.tls.key),
    };
    let ca_pem = std::fs::read(&tls.ca)
        .map_err(|e| error(None, format!("tls.ca {}: {e}", tls.ca.display())))?;
    let trust_domain = rewind_proto::identity::trust_domain_of_ca_pem(&ca_pem)
        .map_err(|e| error(None, format!("tls.ca {}: {e}", tls.ca.display())))?;
    let database = match raw.coordinator.database.strip_prefix("sqlite://") {
        Some(file) if !file.starts_with('/') && !file.starts_with(':') => {
            format!("sqlite://{}", base.join(file).display())
        }
        _ => raw.coordinator.database,
    };
    Ok(CoordinatorConfig {
        path: path.to_path_buf(),
        listen: raw.coordinator.listen,
        database,
        tls,
        trust_domain,
        operators: raw.operators,
        protected_environments: raw
            .environments
            .into_iter()
            .filter(|(_, e)| e.protected)
            .map(|(n, _)| n)
            .collect(),
    })
}
