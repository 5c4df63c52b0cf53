//! Containers' whole configurations as a snapshot records them: the sealed
//! documents of the docker capability's `inspect-config`, kept in the
//! target's state directory (they hold the environment's values, which must
//! not leave the host in a snapshot's data), and the differences between
//! two of them named key by key, secret values masked.

use rewind_plugin_sdk::mask::Masker;
use rewind_plugin_sdk::*;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Compose v1's scheduling hint in a recreated container's environment.
const AFFINITY: &str = "affinity:container==";

/// A compose label that differs between containers of one service.
const CONTAINER_NUMBER: &str = "com.docker.compose.container-number";

/// One container's configuration: the sealed document and its spec.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub document: String,
    pub spec: Value,
}

impl Recorded {
    pub fn parse(document: String) -> Result<Recorded, PluginError> {
        let parsed: Value = serde_json::from_str(&document).map_err(|e| {
            PluginError::Failed(format!("a container configuration is not JSON: {e}"))
        })?;
        let spec = parsed.get("spec").cloned().unwrap_or(Value::Null);
        Ok(Recorded { document, spec })
    }

    /// The configuration of a container now.
    pub fn of(container: &str) -> Result<Recorded, PluginError> {
        Recorded::parse(docker::inspect_config(container)?)
    }

    fn path(sha: &str) -> String {
        format!("configs/{sha}.json")
    }

    /// Keep it in the state directory; its SHA-256, for the snapshot.
    pub fn keep(&self) -> Result<String, PluginError> {
        let sha = sha256_hex(self.document.as_bytes());
        let path = Recorded::path(&sha);
        if files::stat(&path)?.is_none() {
            files::write(&path, self.document.as_bytes())?;
        }
        Ok(sha)
    }

    /// The one kept under `sha`, checked against it.
    pub fn kept(container: &str, sha: &str) -> Result<Recorded, PluginError> {
        let path = Recorded::path(sha);
        let bytes = files::read_if_exists(&path)?.ok_or_else(|| {
            PluginError::NotFound(format!(
                "the snapshot's configuration of container {container} is not in the target's \
                 state directory ({path}); nothing was changed"
            ))
        })?;
        if sha256_hex(&bytes) != sha {
            return Err(PluginError::VerificationFailed(format!(
                "the snapshot's configuration of container {container} ({path}) is damaged; \
                 nothing was changed"
            )));
        }
        let document = String::from_utf8(bytes).map_err(|_| {
            PluginError::VerificationFailed(format!("{path} is not UTF-8; nothing was changed"))
        })?;
        Recorded::parse(document)
    }

    /// The image reference the container was created from.
    pub fn image(&self) -> &str {
        self.spec
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn image_id(&self) -> &str {
        self.spec
            .get("image-id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Whether a container with this configuration runs like one with
    /// `other`'s, when both are the same container (`same_name`) or two of
    /// one service.
    pub fn same_as(&self, other: &Recorded, same_name: bool) -> bool {
        comparable(&self.spec, same_name) == comparable(&other.spec, same_name)
    }
}

/// A spec as compared: the image by its id alone (a container recreated
/// on the same image by digest, because its tag moved on, runs alike), and
/// without compose v1's scheduling hint, which names the container a
/// recreate replaced (`affinity:container==<id>` in the environment).
fn comparable(spec: &Value, same_name: bool) -> Value {
    let mut spec = spec.clone();
    if let Some(spec) = spec.as_object_mut() {
        spec.remove("image");
    }
    if let Some(env) = spec
        .pointer_mut("/config/env")
        .and_then(Value::as_array_mut)
    {
        env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with(AFFINITY)));
        // The same variables in another order run alike.
        env.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    if !same_name
        && let Some(labels) = spec
            .pointer_mut("/config/labels")
            .and_then(Value::as_object_mut)
    {
        labels.remove(CONTAINER_NUMBER);
    }
    spec
}

/// What differs between the configuration a container runs with (`now`)
/// and the snapshot's (`wanted`), one line per key: `env FEATURE_X: new,
/// the snapshot's old`. Values of secret keys, and passwords inside
/// values, are masked.
pub fn drift(now: &Value, wanted: &Value, same_name: bool, masker: &Masker) -> Vec<String> {
    let (full_now, full_wanted) = (now, wanted);
    let (now, wanted) = (comparable(now, same_name), comparable(wanted, same_name));
    let mut lines = Vec::new();
    let (image_now, image_wanted) = (now.get("image-id"), wanted.get("image-id"));
    if image_now != image_wanted {
        let image = |spec: &Value| {
            format!(
                "{} ({})",
                spec.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                short(
                    spec.get("image-id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                )
            )
        };
        lines.push(format!(
            "image: {}, the snapshot's {}",
            image(full_now),
            image(full_wanted)
        ));
    }
    let show = |key: &str, value: Option<&Value>| -> String {
        match value {
            None => "unset".to_string(),
            Some(Value::String(s)) => {
                masker.mask(&format!("{key}={s}"))[key.len() + 1..].to_string()
            }
            Some(other) => masker.mask(&other.to_string()),
        }
    };
    let mut differ = |what: &str, key: &str, a: Option<&Value>, b: Option<&Value>| {
        if a != b {
            lines.push(format!(
                "{what}: {}, the snapshot's {}",
                show(key, a),
                show(key, b)
            ));
        }
    };
    let env = |spec: &Value| -> BTreeMap<String, Value> {
        spec.pointer("/config/env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                None => (e.to_string(), Value::String(String::new())),
            })
            .collect()
    };
    keyed(&env(&now), &env(&wanted), |k, a, b| {
        differ(&format!("env {k}"), k, a, b)
    });
    let labels =
        |spec: &Value| -> BTreeMap<String, Value> { object(spec.pointer("/config/labels")) };
    keyed(&labels(&now), &labels(&wanted), |k, a, b| {
        differ(&format!("label {k}"), k, a, b)
    });
    for (section, prefix) in [("config", ""), ("host", "host ")] {
        let (a, b) = (object(now.get(section)), object(wanted.get(section)));
        keyed(&a, &b, |k, a, b| {
            if section == "config" && (k == "env" || k == "labels") {
                return;
            }
            differ(&format!("{prefix}{k}"), k, a, b)
        });
    }
    for key in ["mounts", "networks"] {
        differ(key, key, now.get(key), wanted.get(key));
    }
    lines
}

fn object(value: Option<&Value>) -> BTreeMap<String, Value> {
    value
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_else(Map::new)
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect()
}

/// Call `differ` for every key whose values differ.
fn keyed(
    now: &BTreeMap<String, Value>,
    wanted: &BTreeMap<String, Value>,
    mut differ: impl FnMut(&str, Option<&Value>, Option<&Value>),
) {
    let mut keys: Vec<&String> = now.keys().chain(wanted.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (a, b) = (now.get(key), wanted.get(key));
        if a != b {
            differ(key, a, b);
        }
    }
}

pub fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(env: &[&str], image: &str, restart: &str) -> Value {
        json!({
            "image": format!("shop/api:{image}"),
            "image-id": format!("sha256:{image}{image}"),
            "config": {"env": env, "labels": {"com.docker.compose.config-hash": image}, "user": null},
            "host": {"RestartPolicy": {"Name": restart}},
            "mounts": ["/srv/a:/a"],
            "networks": {},
        })
    }

    #[test]
    fn every_differing_key_is_named_and_secrets_are_masked() {
        let now = spec(
            &[
                "FEATURE_X=new",
                "SECRET_KEY=v2-key",
                "DATABASE_URL=postgres://u:pw2@db/x",
            ],
            "v2",
            "always",
        );
        let wanted = spec(
            &[
                "FEATURE_X=old",
                "SECRET_KEY=v1-key",
                "DATABASE_URL=postgres://u:pw1@db/x",
                "ONLY_V1=1",
            ],
            "v1",
            "always",
        );
        let lines = drift(&now, &wanted, true, &Masker::default());
        let text = lines.join("\n");
        assert!(
            text.contains("image: shop/api:v2 (v2v2), the snapshot's shop/api:v1 (v1v1)"),
            "{text}"
        );
        assert!(
            text.contains("env FEATURE_X: new, the snapshot's old"),
            "{text}"
        );
        assert!(
            text.contains("env SECRET_KEY: [secret], the snapshot's [secret]"),
            "{text}"
        );
        assert!(
            text.contains("env DATABASE_URL: postgres://u:[secret]@db/x"),
            "{text}"
        );
        assert!(
            text.contains("env ONLY_V1: unset, the snapshot's 1"),
            "{text}"
        );
        assert!(
            text.contains("label com.docker.compose.config-hash: v2, the snapshot's v1"),
            "{text}"
        );
        for secret in ["v1-key", "v2-key", "pw1", "pw2"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(lines.len(), 6, "{text}");
    }

    #[test]
    fn equal_specs_have_no_drift_and_host_settings_are_named() {
        let a = spec(&["A=1"], "v1", "always");
        assert!(drift(&a, &a, true, &Masker::default()).is_empty());
        let b = spec(&["A=1"], "v1", "no");
        assert_eq!(
            drift(&b, &a, true, &Masker::default()),
            vec![
                r#"host RestartPolicy: {"Name":"no"}, the snapshot's {"Name":"always"}"#
                    .to_string()
            ]
        );
    }

    #[test]
    fn containers_of_one_service_differ_only_by_number() {
        let mut a = spec(&["A=1"], "v1", "always");
        let mut b = a.clone();
        a["config"]["labels"][CONTAINER_NUMBER] = json!("1");
        b["config"]["labels"][CONTAINER_NUMBER] = json!("2");
        let (a, b) = (
            Recorded {
                document: String::new(),
                spec: a,
            },
            Recorded {
                document: String::new(),
                spec: b,
            },
        );
        assert!(a.same_as(&b, false));
        assert!(!a.same_as(&b, true));
    }
}
