//! The `files` plugin: snapshot and restore a target's configuration files
//! (env files, reverse-proxy configs) atomically, then run an optional
//! allow-listed reload command such as `nginx -s reload`.
//!
//! Settings:
//! ```toml
//! settings = { files = ["/srv/app/.env.production", "/etc/nginx/nginx.conf"],
//!              secret_keys = ["STRIPE_*"], reload = ["nginx", "-s", "reload"] }
//! ```
//! Snapshots keep each file's contents in the target's state directory,
//! content-addressed (`blobs/<sha256>`). A restore first copies what it is
//! about to replace (`emergency/<step>.json` + blobs), writes every changed
//! file atomically, and puts them all back if any write or the reload fails.

mod diff;
mod secrets;

use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Absolute paths of the files to manage (inside the target's grant).
    files: Vec<String>,
    /// Key patterns (`*` wildcard) whose values are secret, besides the defaults.
    #[serde(default)]
    secret_keys: Vec<String>,
    /// Program and arguments to run after a restore, and for `restart`.
    #[serde(default)]
    reload: Vec<String>,
}

/// One file as a snapshot recorded it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct FileState {
    path: String,
    /// None when the file did not exist.
    sha256: Option<String>,
    size: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    version: u32,
    files: Vec<FileState>,
}

/// What a restore replaced, kept so that an operator can put it back.
#[derive(Serialize, Deserialize)]
struct EmergencyCopy {
    step_id: String,
    taken_at: u64,
    files: Vec<FileState>,
}

fn blob_path(sha256: &str) -> String {
    format!("blobs/{sha256}")
}

/// Read a file's current state, storing its contents as a blob.
fn capture(path: &str) -> Result<(FileState, Option<Vec<u8>>), PluginError> {
    match files::read_if_exists(path)? {
        Some(bytes) => {
            let sha = sha256_hex(&bytes);
            let blob = blob_path(&sha);
            if files::stat(&blob)?.is_none() {
                files::write(&blob, &bytes)?;
            }
            let state = FileState {
                path: path.to_string(),
                sha256: Some(sha),
                size: bytes.len() as u64,
            };
            Ok((state, Some(bytes)))
        }
        None => Ok((
            FileState {
                path: path.to_string(),
                sha256: None,
                size: 0,
            },
            None,
        )),
    }
}

/// The current SHA-256 of a file, or None when it does not exist.
fn current_sha(path: &str) -> Result<Option<String>, PluginError> {
    match files::stat(path)? {
        Some(info) if info.is_dir => Err(PluginError::Failed(format!("{path} is a directory"))),
        Some(_) => Ok(Some(files::sha256(path)?)),
        None => Ok(None),
    }
}

/// A snapshot's blob, checked against its recorded hash.
fn verified_blob(state: &FileState, sha: &str) -> Result<Vec<u8>, PluginError> {
    let bytes = files::read(&blob_path(sha)).map_err(|e| {
        PluginError::VerificationFailed(format!(
            "the snapshot's copy of {} (sha256 {sha}) cannot be read: {e:?}; nothing was changed",
            state.path
        ))
    })?;
    if sha256_hex(&bytes) != sha {
        return Err(PluginError::VerificationFailed(format!(
            "the snapshot's copy of {} is corrupt (expected sha256 {sha}); nothing was changed",
            state.path
        )));
    }
    Ok(bytes)
}

/// Put a file into a recorded state (contents from blobs, or absent).
fn apply(state: &FileState, contents: Option<&[u8]>) -> Result<(), PluginError> {
    match contents {
        Some(bytes) => files::write(&state.path, bytes),
        None => files::remove(&state.path),
    }
}

fn reload(settings: &Settings) -> Result<Option<String>, PluginError> {
    let Some((program, args)) = settings.reload.split_first() else {
        return Ok(None);
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    process::run(program, &args)?;
    Ok(Some(settings.reload.join(" ")))
}

struct Files;

impl Plugin for Files {
    fn describe() -> PluginInfo {
        info!(
            "files",
            "snapshot and restore configuration files atomically, then reload",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restore,
                Action::Restart,
                Action::Verify,
            ],
        )
    }

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        let settings: Settings = settings(&target)?;
        if settings.files.is_empty() {
            return Err(PluginError::InvalidSettings(format!(
                "target {}: settings.files is empty",
                target.name
            )));
        }
        let mut states = Vec::new();
        for path in &settings.files {
            states.push(capture(path)?.0);
        }
        let bytes: u64 = states.iter().map(|s| s.size).sum();
        let missing = states.iter().filter(|s| s.sha256.is_none()).count();
        let summary = format!(
            "{} files, {bytes} bytes{}",
            states.len(),
            if missing > 0 {
                format!(" ({missing} absent)")
            } else {
                String::new()
            }
        );
        let data = serde_json::to_string(&SnapshotData {
            version: 1,
            files: states,
        })
        .map_err(|e| PluginError::Failed(e.to_string()))?;
        Ok(Captured { data, summary })
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let settings: Settings = settings(&target)?;
        let snapshot: SnapshotData = snapshot_data(&target, &to)?;
        let secrets = secrets::Matcher::new(&settings.secret_keys);
        let risk = if settings.reload.is_empty() {
            Risk::None
        } else {
            Risk::Restart
        };
        let mut changes = Vec::new();
        for wanted in &snapshot.files {
            if current_sha(&wanted.path)? == wanted.sha256 {
                continue;
            }
            let old = match &wanted.sha256 {
                Some(sha) => Some(verified_blob(wanted, sha)?),
                None => None,
            };
            let current = files::read_if_exists(&wanted.path)?;
            let (summary, detail) =
                diff::describe(&wanted.path, current.as_deref(), old.as_deref(), &secrets);
            changes.push(Change {
                subject: wanted.path.clone(),
                summary,
                detail: Some(detail),
                risk,
            });
        }
        let risk = max_risk(changes.iter().map(|c| c.risk));
        Ok(Preview {
            changes,
            risk,
            data_loss_window_seconds: None,
        })
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        let settings: Settings = settings(&target)?;
        let snapshot: SnapshotData = snapshot_data(&target, &to)?;

        // Check every copy before touching anything.
        let mut pending = Vec::new();
        for wanted in &snapshot.files {
            if current_sha(&wanted.path)? == wanted.sha256 {
                continue;
            }
            let contents = match &wanted.sha256 {
                Some(sha) => Some(verified_blob(wanted, sha)?),
                None => None,
            };
            pending.push((wanted.clone(), contents));
        }
        if pending.is_empty() {
            return Ok(Outcome {
                changed: false,
                summary: format!(
                    "all {} files already match the snapshot",
                    snapshot.files.len()
                ),
                details: vec![],
            });
        }

        // Keep what is about to be replaced.
        let mut previous = Vec::new();
        for (wanted, _) in &pending {
            previous.push(capture(&wanted.path)?);
        }
        let emergency = format!("emergency/{}.json", step_file_name(&options.step_id));
        let record = EmergencyCopy {
            step_id: options.step_id.clone(),
            taken_at: now_secs(),
            files: previous.iter().map(|(state, _)| state.clone()).collect(),
        };
        let record =
            serde_json::to_vec_pretty(&record).map_err(|e| PluginError::Failed(e.to_string()))?;
        // The same step run again (after a crash or a failure half-way)
        // keeps the copy its first run took: that one holds the contents
        // from before the step, not what the cut-off run left.
        if files::read_if_exists(&emergency)?.is_none() {
            files::write(&emergency, &record)?;
        }

        let put_back = |count: usize| -> Vec<String> {
            previous[..count]
                .iter()
                .filter_map(|(state, bytes)| {
                    apply(state, bytes.as_deref())
                        .err()
                        .map(|e| format!("{}: {e:?}", state.path))
                })
                .collect()
        };
        for (index, (wanted, contents)) in pending.iter().enumerate() {
            progress(
                &format!("writing {}", wanted.path),
                Some((index * 100 / pending.len()) as u8),
            );
            if let Err(e) = apply(wanted, contents.as_deref()) {
                // The file whose write failed is put back too: the failure
                // may have left it anything (half written, say).
                let failures = put_back(index + 1);
                return Err(PluginError::Failed(format!(
                    "writing {} failed: {e:?}; {}",
                    wanted.path,
                    rollback_report(index + 1, &failures, &emergency)
                )));
            }
        }
        let reloaded = match reload(&settings) {
            Ok(reloaded) => reloaded,
            Err(e) => {
                let failures = put_back(pending.len());
                let again = if failures.is_empty() {
                    reload(&settings).err()
                } else {
                    None
                };
                return Err(PluginError::Failed(format!(
                    "reload `{}` failed after the restore: {e:?}; {}{}",
                    settings.reload.join(" "),
                    rollback_report(pending.len(), &failures, &emergency),
                    again
                        .map(|e| format!("; reloading the previous files failed too: {e:?}"))
                        .unwrap_or_default()
                )));
            }
        };
        let mut details: Vec<String> = pending
            .iter()
            .map(|(w, _)| format!("restored {}", w.path))
            .collect();
        details.push(format!(
            "previous contents kept in the state directory: {emergency}"
        ));
        Ok(Outcome {
            changed: true,
            summary: format!(
                "restored {} of {} files{}",
                pending.len(),
                snapshot.files.len(),
                reloaded
                    .map(|r| format!(", then ran `{r}`"))
                    .unwrap_or_default()
            ),
            details,
        })
    }

    fn restart(target: Target, _parts: Vec<String>) -> Result<Outcome, PluginError> {
        let settings: Settings = settings(&target)?;
        match reload(&settings)? {
            Some(command) => Ok(Outcome {
                changed: true,
                summary: format!("ran `{command}`"),
                details: vec![],
            }),
            None => Err(PluginError::Unsupported(format!(
                "target {}: restart needs settings.reload (e.g. [\"nginx\", \"-s\", \"reload\"])",
                target.name
            ))),
        }
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let snapshot: SnapshotData = snapshot_data(&target, &to)?;
        let mut differ = Vec::new();
        for wanted in &snapshot.files {
            if current_sha(&wanted.path)? != wanted.sha256 {
                differ.push(wanted.path.clone());
            }
        }
        if differ.is_empty() {
            Ok(Outcome {
                changed: false,
                summary: format!("all {} files match the snapshot", snapshot.files.len()),
                details: vec![],
            })
        } else {
            Err(PluginError::VerificationFailed(format!(
                "these files differ from the snapshot: {}",
                differ.join(", ")
            )))
        }
    }
}

fn rollback_report(written: usize, failures: &[String], emergency: &str) -> String {
    if failures.is_empty() {
        format!("the {written} files written (or being written) were put back; nothing is changed")
    } else {
        format!(
            "putting back the files already written failed for: {}; their previous contents are listed in {emergency}",
            failures.join("; ")
        )
    }
}

export_plugin!(Files);
