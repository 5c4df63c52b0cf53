//! A container's whole configuration as one document (its spec), sealed by
//! the agent: what `inspect-config` gives a plugin to keep and
//! `recreate-from` creates a container from. The seal (an HMAC under a key
//! in the agent's state directory, which no plugin reaches) means a plugin
//! can recreate a container only as it really was on this host: a spec it
//! made up or changed (privileged, a host directory mounted) is refused.

use super::{DockerError, OwnConfig, binds_of, networks_of, own_config};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig,
};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

/// Everything a container was created with, image included.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Spec {
    /// The image reference it was created from.
    pub image: String,
    /// The id of the image it runs.
    pub image_id: String,
    /// Environment, command, entrypoint, labels, user, working directory,
    /// healthcheck, exposed ports, ... (its image's values included).
    pub config: OwnConfig,
    /// Ports, restart policy and the rest of the host configuration,
    /// without the mounts.
    pub host: HostConfig,
    /// `source:destination[:ro]`, anonymous volumes by name.
    pub mounts: Vec<String>,
    /// Networks with aliases, static addresses and links.
    pub networks: BTreeMap<String, EndpointSettings>,
}

impl Spec {
    /// The spec of an inspected container.
    pub fn of(inspect: &ContainerInspectResponse) -> Spec {
        let mut host = inspect.host_config.clone().unwrap_or_default();
        host.binds = None;
        host.mounts = None;
        Spec {
            image: inspect
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            image_id: inspect.image.clone().unwrap_or_default(),
            config: own_config(inspect, None, true),
            host,
            mounts: binds_of(inspect),
            networks: networks_of(inspect),
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.config.labels.get(key).map(String::as_str)
    }

    /// The creation request of a container exactly as this spec says, on
    /// `image` (a reference that names the spec's image id), with its first
    /// network; the others are connected after creation.
    pub fn create_body(&self, image: &str) -> ContainerCreateBody {
        self.config.clone().into_body(
            image,
            self.mounts.clone(),
            self.host.clone(),
            &self.networks,
        )
    }

    /// The networks beyond the first, connected after creation.
    pub fn extra_networks(&self) -> Vec<(String, EndpointSettings)> {
        self.networks
            .iter()
            .skip(1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The document a plugin keeps: `{"seal": "<hex>", "spec": {...}}`, keys
/// sorted, so the same container gives the same text.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    seal: String,
    spec: serde_json::Value,
}

/// The spec as a canonical JSON value (every map's keys sorted).
fn canonical(spec: &Spec) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or_default()
}

fn mac(key: &[u8], spec: &serde_json::Value) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(spec.to_string().as_bytes());
    mac
}

/// Seal a spec with the key in `key_file`.
pub fn seal(spec: &Spec, key_file: &Path) -> Result<String, DockerError> {
    let key = key(key_file)?;
    let spec = canonical(spec);
    let seal = hex::encode(mac(&key, &spec).finalize().into_bytes());
    Ok(serde_json::to_string(&Sealed { seal, spec }).unwrap_or_default())
}

/// The spec of a sealed document, if this agent's key sealed it unchanged.
pub fn unseal(document: &str, key_file: &Path) -> Result<Spec, DockerError> {
    let refused = |why: &str| {
        DockerError::Denied(format!(
            "the container configuration given is refused: {why} (only a document that \
             inspect-config of this agent returned, unchanged, can be recreated from)"
        ))
    };
    let sealed: Sealed = serde_json::from_str(document)
        .map_err(|e| refused(&format!("not a sealed document: {e}")))?;
    let key = key(key_file)?;
    let given = hex::decode(&sealed.seal).map_err(|_| refused("its seal is not hex"))?;
    mac(&key, &sealed.spec)
        .verify_slice(&given)
        .map_err(|_| refused("its seal does not match (changed, or sealed by another agent)"))?;
    serde_json::from_value(sealed.spec).map_err(|e| refused(&format!("not a spec: {e}")))
}

/// Keys read once per file.
static KEYS: LazyLock<Mutex<HashMap<PathBuf, Vec<u8>>>> = LazyLock::new(Default::default);

/// The agent's sealing key, made (32 random bytes, mode 0600) on first use.
fn key(path: &Path) -> Result<Vec<u8>, DockerError> {
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = keys.get(path) {
        return Ok(key.clone());
    }
    let failed = |e: std::io::Error| {
        DockerError::Failed(format!(
            "the agent's key for container configurations ({}): {e}",
            path.display()
        ))
    };
    let key = match std::fs::read(path) {
        Ok(key) if key.len() >= 32 => key,
        Ok(_) => {
            return Err(failed(std::io::Error::other(
                "shorter than 32 bytes; remove it and snapshot again",
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(failed)?;
            }
            let mut file = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(Path::new(".")))
                .map_err(failed)?;
            file.write_all(&key).map_err(failed)?;
            file.as_file().sync_all().map_err(failed)?;
            // A key another call wrote first wins: persist_noclobber fails then.
            match file.persist_noclobber(path) {
                Ok(_) => key,
                Err(_) => std::fs::read(path).map_err(failed)?,
            }
        }
        Err(e) => return Err(failed(e)),
    };
    keys.insert(path.to_path_buf(), key.clone());
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            image: "shop/api:v1".into(),
            image_id: "sha256:1".into(),
            config: OwnConfig {
                env: vec!["FEATURE_X=old".into()],
                ..Default::default()
            },
            host: HostConfig::default(),
            mounts: vec!["/srv/a:/a:ro".into()],
            networks: BTreeMap::new(),
        }
    }

    #[test]
    fn a_sealed_spec_comes_back_and_a_changed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("seal.key");
        let document = seal(&spec(), &key).unwrap();
        assert_eq!(unseal(&document, &key).unwrap(), spec());
        let tampered = document.replace("/srv/a:/a:ro", "/:/host");
        let error = unseal(&tampered, &key).unwrap_err();
        assert!(
            matches!(error, DockerError::Denied(ref t) if t.contains("does not match")),
            "{error}"
        );
        let other = dir.path().join("other.key");
        assert!(unseal(&document, &other).is_err(), "another agent's key");
    }
}
