//! rewind's etcd plugin: puts key prefixes back to a snapshot through etcd's
//! v3 JSON gateway, in transactions guarded on each key's mod_revision, so
//! that nobody's later update is silently overwritten.
//!
//! Settings: `endpoint` (`http://127.0.0.1:2379`, granted with `grant.http`),
//! `prefixes`, optional `secret_keys` (key patterns whose values are shown
//! as hashes), `batch` (operations per transaction, default 64, at most
//! etcd's `--max-txn-ops`), `user` (with the password in the target's
//! secrets as `ETCD_PASSWORD`, or `password_secret` to name another).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rewind_plugin_sdk::http;
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

struct Etcd;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    endpoint: String,
    prefixes: Vec<String>,
    #[serde(default)]
    secret_keys: Vec<String>,
    #[serde(default = "default_batch")]
    batch: usize,
    user: Option<String>,
    #[serde(default = "default_password_secret")]
    password_secret: String,
}

fn default_batch() -> usize {
    64
}

fn default_password_secret() -> String {
    "ETCD_PASSWORD".into()
}

/// One key's value and revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Entry {
    /// The value, base64.
    value: String,
    mod_revision: i64,
}

/// The keys under the prefixes at one revision (keys as text, values base64).
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Snapshot {
    endpoint: String,
    prefixes: Vec<String>,
    revision: i64,
    keys: BTreeMap<String, Entry>,
}

/// What the preview saw: the guards of a restore to that snapshot.
#[derive(Serialize, Deserialize)]
struct Seen {
    snapshot: String,
    revision: i64,
    keys: BTreeMap<String, i64>,
}

/// A change a restore makes to one key.
#[derive(Clone, Debug)]
enum Op {
    Put { key: String, value: String },
    Delete { key: String },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// A connection to etcd's JSON gateway.
struct Client {
    endpoint: String,
    token: Option<String>,
}

fn b64(text: &str) -> String {
    B64.encode(text.as_bytes())
}

fn unb64(text: &str) -> Result<Vec<u8>, PluginError> {
    B64.decode(text)
        .map_err(|e| PluginError::Failed(format!("etcd sent invalid base64: {e}")))
}

/// etcd's gateway writes 64-bit numbers as strings.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Client {
    fn connect(target: &Target, settings: &Settings) -> Result<Client, PluginError> {
        let mut client = Client {
            endpoint: settings.endpoint.trim_end_matches('/').to_string(),
            token: None,
        };
        if let Some(user) = &settings.user {
            let password = secrets::require(&target.name, &settings.password_secret)?;
            let answer = client.call(
                "auth/authenticate",
                &json!({ "name": user, "password": password }),
            )?;
            let token = answer["token"].as_str().ok_or_else(|| {
                PluginError::Denied(format!("etcd at {} gave no token", client.endpoint))
            })?;
            client.token = Some(token.to_string());
        }
        Ok(client)
    }

    /// POST a request to `/v3/<path>` and return the JSON answer.
    fn call(&self, path: &str, body: &Value) -> Result<Value, PluginError> {
        let url = format!("{}/v3/{path}", self.endpoint);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(token) = &self.token {
            headers.push(("authorization", token.as_str()));
        }
        let response = http::send("POST", &url, &headers, body.to_string().as_bytes()).map_err(
            |e| match e {
                http::HttpError::Failed(t) => PluginError::Unavailable(format!(
                    "etcd at {} cannot be reached: {t}",
                    self.endpoint
                )),
                other => other.into(),
            },
        )?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        match response.status {
            200 => Ok(answer),
            401 | 403 => Err(PluginError::Denied(format!(
                "etcd at {} refused {path}: {}",
                self.endpoint,
                answer["message"].as_str().unwrap_or(&response.text())
            ))),
            status => Err(PluginError::Failed(format!(
                "etcd at {} answered {status} to {path}: {}",
                self.endpoint,
                answer["message"]
                    .as_str()
                    .or(answer["error"].as_str())
                    .unwrap_or(&response.text())
            ))),
        }
    }

    /// Every key under the prefixes, read at one revision, page by page.
    fn read(&self, prefixes: &[String]) -> Result<(i64, BTreeMap<String, Entry>), PluginError> {
        let mut keys = BTreeMap::new();
        let mut revision = 0;
        for prefix in prefixes {
            let end = B64.encode(prefix_end(prefix.as_bytes()));
            let mut from = b64(prefix);
            loop {
                let mut request = json!({ "key": from, "range_end": end, "limit": 1000 });
                if revision > 0 {
                    request["revision"] = json!(revision.to_string());
                }
                let answer = self.call("kv/range", &request)?;
                if revision == 0 {
                    revision = int(&answer["header"]["revision"]);
                }
                let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
                for kv in &kvs {
                    let key = String::from_utf8(unb64(kv["key"].as_str().unwrap_or(""))?).map_err(
                        |_| {
                            PluginError::Unsupported(format!(
                                "a key under {prefix} is not UTF-8 text"
                            ))
                        },
                    )?;
                    keys.insert(
                        key,
                        Entry {
                            value: kv["value"].as_str().unwrap_or("").to_string(),
                            mod_revision: int(&kv["mod_revision"]),
                        },
                    );
                }
                if answer["more"].as_bool() != Some(true) || kvs.is_empty() {
                    break;
                }
                let last = unb64(kvs[kvs.len() - 1]["key"].as_str().unwrap_or(""))?;
                let mut next = last;
                next.push(0);
                from = B64.encode(next);
            }
        }
        Ok((revision, keys))
    }

    /// Apply `ops` in one transaction if every key still has its expected
    /// mod_revision (0: absent). Returns the new revision, or the keys that
    /// changed (with their current mod_revision) when the guard failed.
    fn guarded_txn(
        &self,
        ops: &[Op],
        expected: &BTreeMap<String, i64>,
        force: bool,
    ) -> Result<Result<i64, Vec<(String, i64)>>, PluginError> {
        let compare: Vec<Value> = if force {
            Vec::new()
        } else {
            ops.iter()
                .map(|op| {
                    let want = expected.get(op.key()).copied().unwrap_or(0);
                    json!({
                        "key": b64(op.key()),
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": want.to_string(),
                    })
                })
                .collect()
        };
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => {
                    json!({ "request_put": { "key": b64(key), "value": value } })
                }
                Op::Delete { key } => json!({ "request_delete_range": { "key": b64(key) } }),
            })
            .collect();
        let failure: Vec<Value> = ops
            .iter()
            .map(|op| json!({ "request_range": { "key": b64(op.key()) } }))
            .collect();
        let answer = self.call(
            "kv/txn",
            &json!({ "compare": compare, "success": success, "failure": failure }),
        )?;
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(Ok(int(&answer["header"]["revision"])));
        }
        let mut changed = Vec::new();
        for (op, response) in ops
            .iter()
            .zip(answer["responses"].as_array().cloned().unwrap_or_default())
        {
            let now = response["response_range"]["kvs"]
                .as_array()
                .and_then(|kvs| kvs.first())
                .map(|kv| int(&kv["mod_revision"]))
                .unwrap_or(0);
            if now != expected.get(op.key()).copied().unwrap_or(0) {
                changed.push((op.key().to_string(), now));
            }
        }
        Ok(Err(changed))
    }
}

fn settings_of(target: &Target) -> Result<Settings, PluginError> {
    let settings: Settings = settings(target)?;
    if settings.prefixes.is_empty() || settings.prefixes.iter().any(|p| p.is_empty()) {
        return Err(PluginError::InvalidSettings(format!(
            "target {}: settings.prefixes must list at least one non-empty key prefix",
            target.name
        )));
    }
    if settings.batch == 0 || settings.batch > 10_000 {
        return Err(PluginError::InvalidSettings(format!(
            "target {}: settings.batch must be between 1 and etcd's --max-txn-ops (default 128)",
            target.name
        )));
    }
    Ok(settings)
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// How a value appears in a preview: text, or a hash for secret keys.
fn shown(settings: &Settings, key: &str, value: &str) -> String {
    let bytes = B64.decode(value).unwrap_or_default();
    if settings.secret_keys.iter().any(|p| glob(p, key)) {
        return format!("sha256:{}", &sha256_hex(&bytes)[..12]);
    }
    let text = String::from_utf8_lossy(&bytes);
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(80).collect::<String>())
    } else {
        format!("{text:?}")
    }
}

/// The changes that bring `now` to `to`.
fn diff(to: &BTreeMap<String, Entry>, now: &BTreeMap<String, Entry>) -> Vec<Op> {
    let mut ops = Vec::new();
    for (key, entry) in to {
        if now.get(key).map(|e| &e.value) != Some(&entry.value) {
            ops.push(Op::Put {
                key: key.clone(),
                value: entry.value.clone(),
            });
        }
    }
    for key in now.keys().filter(|k| !to.contains_key(*k)) {
        ops.push(Op::Delete { key: key.clone() });
    }
    ops
}

fn snapshot_id(to: &SnapshotRecord) -> String {
    sha256_hex(to.data.as_bytes())[..16].to_string()
}

fn seen_path(to: &SnapshotRecord) -> String {
    format!("seen-{}.json", snapshot_id(to))
}

/// The snapshot record of the current values, in the form `rewind-agent
/// plugin run ... --snapshot` reads.
fn as_run_output(snapshot: &Snapshot, summary: String) -> Result<Vec<u8>, PluginError> {
    let data = serde_json::to_string(snapshot).map_err(|e| PluginError::Failed(e.to_string()))?;
    serde_json::to_vec_pretty(&json!({ "result": { "data": data, "summary": summary } }))
        .map_err(|e| PluginError::Failed(e.to_string()))
}

impl Plugin for Etcd {
    fn describe() -> PluginInfo {
        info!(
            "etcd",
            "etcd key prefixes back to a snapshot, in guarded transactions",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restore,
                Action::Verify,
            ],
        )
    }

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        let settings = settings_of(&target)?;
        let client = Client::connect(&target, &settings)?;
        let (revision, keys) = client.read(&settings.prefixes)?;
        let summary = format!(
            "{} keys under {} at revision {revision}",
            keys.len(),
            settings.prefixes.join(", ")
        );
        let snapshot = Snapshot {
            endpoint: settings.endpoint,
            prefixes: settings.prefixes,
            revision,
            keys,
        };
        Ok(Captured {
            data: serde_json::to_string(&snapshot)
                .map_err(|e| PluginError::Failed(e.to_string()))?,
            summary,
        })
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let settings = settings_of(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let client = Client::connect(&target, &settings)?;
        let (revision, now) = client.read(&snapshot.prefixes)?;
        // What the preview saw guards the restore: a key changed after it
        // fails the step, naming the key.
        let seen = Seen {
            snapshot: snapshot_id(&to),
            revision,
            keys: now
                .iter()
                .map(|(k, e)| (k.clone(), e.mod_revision))
                .collect(),
        };
        files::write(
            &seen_path(&to),
            &serde_json::to_vec(&seen).map_err(|e| PluginError::Failed(e.to_string()))?,
        )?;
        let mut changes = Vec::new();
        for op in diff(&snapshot.keys, &now) {
            let change = match &op {
                Op::Put { key, value } => match now.get(key) {
                    Some(current) => Change {
                        subject: key.clone(),
                        summary: format!(
                            "change {} -> {}",
                            shown(&settings, key, &current.value),
                            shown(&settings, key, value)
                        ),
                        detail: None,
                        risk: Risk::None,
                    },
                    None => Change {
                        subject: key.clone(),
                        summary: format!("add {}", shown(&settings, key, value)),
                        detail: None,
                        risk: Risk::None,
                    },
                },
                Op::Delete { key } => Change {
                    subject: key.clone(),
                    summary: format!("delete (now {})", shown(&settings, key, &now[key].value)),
                    detail: Some("not in the snapshot".into()),
                    risk: Risk::None,
                },
            };
            changes.push(change);
        }
        Ok(Preview {
            changes,
            risk: Risk::None,
            data_loss_window_seconds: None,
        })
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let client = Client::connect(&target, &settings)?;
        let (revision, now) = client.read(&snapshot.prefixes)?;
        let ops = diff(&snapshot.keys, &now);
        if ops.is_empty() {
            return Ok(Outcome {
                changed: false,
                summary: format!(
                    "{} keys under {} already equal the snapshot",
                    snapshot.keys.len(),
                    snapshot.prefixes.join(", ")
                ),
                details: Vec::new(),
            });
        }

        // The guards: what the preview saw when there was one, else what
        // was just read.
        let mut expected: BTreeMap<String, i64> = now
            .iter()
            .map(|(k, e)| (k.clone(), e.mod_revision))
            .collect();
        if let Some(bytes) = files::read_if_exists(&seen_path(&to))?
            && let Ok(seen) = serde_json::from_slice::<Seen>(&bytes)
            && seen.snapshot == snapshot_id(&to)
        {
            let changed: Vec<String> = ops
                .iter()
                .map(Op::key)
                .filter(|k| {
                    seen.keys.get(*k).copied().unwrap_or(0)
                        != now.get(*k).map_or(0, |e| e.mod_revision)
                })
                .map(str::to_string)
                .collect();
            if !changed.is_empty() && !options.force {
                return Err(PluginError::Conflict(format!(
                    "{} changed after the plan was shown (at revision {}); nothing was written \
                     (preview again, or run with force to overwrite)",
                    list_keys(&changed),
                    seen.revision
                )));
            }
            expected = seen.keys;
        }

        // An emergency snapshot of what is there now, before any write.
        let emergency = Snapshot {
            endpoint: snapshot.endpoint.clone(),
            prefixes: snapshot.prefixes.clone(),
            revision,
            keys: now.clone(),
        };
        let emergency_path = format!("emergency-{}.json", step_file_name(&options.step_id));
        files::write(
            &emergency_path,
            &as_run_output(
                &emergency,
                format!(
                    "{} keys under {} at revision {revision}, before step {}",
                    now.len(),
                    snapshot.prefixes.join(", "),
                    options.step_id
                ),
            )?,
        )?;
        log::info(&format!(
            "emergency snapshot of {} keys in {emergency_path}",
            now.len()
        ));

        let mut applied: Vec<(Vec<Op>, i64)> = Vec::new();
        let total = ops.len();
        let mut done = 0;
        for batch in ops.chunks(settings.batch) {
            match client.guarded_txn(batch, &expected, options.force)? {
                Ok(new_revision) => {
                    done += batch.len();
                    applied.push((batch.to_vec(), new_revision));
                    progress(
                        &format!("{done} of {total} keys restored"),
                        Some((done * 100 / total) as u8),
                    );
                }
                Err(changed) => {
                    let keys: Vec<String> = changed.iter().map(|(k, _)| k.clone()).collect();
                    let undone = undo(&client, &applied, &now);
                    return Err(PluginError::Conflict(format!(
                        "{} changed during the restore (someone else wrote it); its value was \
                         kept. {}",
                        list_keys(&keys),
                        undone
                    )));
                }
            }
        }
        let (puts, deletes) = ops.iter().fold((0, 0), |(p, d), op| match op {
            Op::Put { .. } => (p + 1, d),
            Op::Delete { .. } => (p, d + 1),
        });
        Ok(Outcome {
            changed: true,
            summary: format!(
                "{puts} keys written and {deletes} deleted under {} in {} transaction(s); \
                 emergency snapshot in the target's state directory ({emergency_path})",
                snapshot.prefixes.join(", "),
                applied.len()
            ),
            details: ops.iter().map(|op| op.key().to_string()).collect(),
        })
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let client = Client::connect(&target, &settings)?;
        let (_, now) = client.read(&snapshot.prefixes)?;
        let differing: Vec<String> = diff(&snapshot.keys, &now)
            .iter()
            .map(|op| op.key().to_string())
            .collect();
        if !differing.is_empty() {
            return Err(PluginError::VerificationFailed(format!(
                "{} differ from the snapshot",
                list_keys(&differing)
            )));
        }
        Ok(Outcome {
            changed: false,
            summary: format!(
                "{} keys under {} equal the snapshot",
                snapshot.keys.len(),
                snapshot.prefixes.join(", ")
            ),
            details: Vec::new(),
        })
    }
}

fn list_keys(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(10).map(String::as_str).collect();
    let more = keys.len().saturating_sub(shown.len());
    format!(
        "key{} {}{}",
        if keys.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// Put back the batches already applied, newest first, each guarded on the
/// revision this restore wrote, so a value someone wrote since is kept.
fn undo(client: &Client, applied: &[(Vec<Op>, i64)], before: &BTreeMap<String, Entry>) -> String {
    let mut put_back = 0;
    let mut kept = Vec::new();
    for (batch, revision) in applied.iter().rev() {
        let ops: Vec<Op> = batch
            .iter()
            .map(|op| match before.get(op.key()) {
                Some(entry) => Op::Put {
                    key: op.key().to_string(),
                    value: entry.value.clone(),
                },
                None => Op::Delete {
                    key: op.key().to_string(),
                },
            })
            .collect();
        let expected: BTreeMap<String, i64> = batch
            .iter()
            .map(|op| {
                let written = match op {
                    Op::Put { .. } => *revision,
                    Op::Delete { .. } => 0,
                };
                (op.key().to_string(), written)
            })
            .collect();
        match client.guarded_txn(&ops, &expected, false) {
            Ok(Ok(_)) => put_back += ops.len(),
            Ok(Err(changed)) => {
                // Someone wrote some of these since: put back the others,
                // one by one, and keep theirs.
                let changed: Vec<String> = changed.into_iter().map(|(k, _)| k).collect();
                for op in ops
                    .iter()
                    .filter(|op| !changed.iter().any(|k| k == op.key()))
                {
                    if matches!(
                        client.guarded_txn(std::slice::from_ref(op), &expected, false),
                        Ok(Ok(_))
                    ) {
                        put_back += 1;
                    } else {
                        kept.push(op.key().to_string());
                    }
                }
                kept.extend(changed);
            }
            Err(e) => {
                return format!(
                    "Putting back the {} keys already restored failed ({e:?}); the emergency \
                     snapshot in the target's state directory holds the values from before",
                    applied.iter().map(|(b, _)| b.len()).sum::<usize>()
                );
            }
        }
    }
    if kept.is_empty() {
        format!("The {put_back} keys already restored were put back as they were: nothing changed.")
    } else {
        format!(
            "The {put_back} keys already restored were put back; {} were written by someone \
             else meanwhile and keep their value",
            list_keys(&kept)
        )
    }
}

export_plugin!(Etcd);
