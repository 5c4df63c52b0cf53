//! The `files` plugin: snapshot and restore a target's configuration files
//! (env files, reverse-proxy configs), then make their readers read them
//! again: an allow-listed reload command such as `nginx -s reload`, and the
//! running containers that bind-mount a changed file (restarted, or sent a
//! signal).
//!
//! Settings:
//! ```toml
//! settings = { files = ["/srv/app/.env.production", "/srv/app/nginx/nginx.conf"],
//!              secret_keys = ["STRIPE_*"], reload = ["nginx", "-s", "reload"],
//!              container_reload = "SIGHUP", in_place = [] }
//! ```
//! Snapshots keep each file's contents in the target's state directory,
//! content-addressed (`blobs/<sha256>`). A restore first copies what it is
//! about to replace (`emergency/<step>.json` + blobs), writes every changed
//! file (atomically by a rename, or in place where a container mounts the
//! file by itself, so it keeps seeing the same inode), and puts them all
//! back if any write, reload or check of what the containers see fails.

mod consumers;
mod diff;

use consumers::{Consumers, Reload};
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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
    /// What the running containers that mount a changed file get:
    /// "restart" (the default), a signal such as "SIGHUP", or "none".
    #[serde(default = "default_container_reload")]
    container_reload: String,
    /// Files always written in place (same inode), for readers that the
    /// docker capability cannot see (another daemon's containers, say).
    #[serde(default)]
    in_place: Vec<String>,
    /// How long a restarted container may take to be healthy.
    #[serde(default = "default_health_timeout")]
    health_timeout_secs: u32,
}

fn default_container_reload() -> String {
    "restart".into()
}

fn default_health_timeout() -> u32 {
    60
}

fn settings_of(target: &Target) -> Result<(Settings, Reload), PluginError> {
    let settings: Settings = settings(target)?;
    if let Some(path) = settings
        .in_place
        .iter()
        .find(|p| !settings.files.contains(p))
    {
        return Err(PluginError::InvalidSettings(format!(
            "target {}: settings.in_place names {path}, which is not in settings.files",
            target.name
        )));
    }
    let reload = Reload::parse(&settings.container_reload, &target.name)?;
    Ok((settings, reload))
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
fn capture(path: &str) -> Result<FileCopy, PluginError> {
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

/// Put a file into a recorded state (contents from blobs, or absent): in
/// place where a reader needs the same inode, else atomically.
fn apply(state: &FileState, contents: Option<&[u8]>, in_place: bool) -> Result<(), PluginError> {
    match contents {
        Some(bytes) if in_place => files::write_in_place(&state.path, bytes),
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

/// One file a restore puts back: what it wants, who reads it, and whether
/// a container still sees an old inode of it.
struct Work {
    wanted: FileState,
    contents: Option<Vec<u8>>,
    consumers: Consumers,
    in_place: bool,
    /// The host file is already right: only its readers need to catch up.
    readers_only: bool,
}

/// The files that differ from the snapshot, on the host or where a
/// running container reads them; every snapshot copy checked first.
fn pending(settings: &Settings, snapshot: &SnapshotData) -> Result<Vec<Work>, PluginError> {
    let mut work = Vec::new();
    for wanted in &snapshot.files {
        let consumers = Consumers::of(&wanted.path)?;
        let host_right = current_sha(&wanted.path)? == wanted.sha256;
        if host_right && consumers.not_seeing(wanted.sha256.as_deref())?.is_empty() {
            continue;
        }
        let contents = match &wanted.sha256 {
            Some(sha) => Some(verified_blob(wanted, sha)?),
            None => None,
        };
        work.push(Work {
            in_place: consumers.single_file() || settings.in_place.contains(&wanted.path),
            wanted: wanted.clone(),
            contents,
            consumers,
            readers_only: host_right,
        });
    }
    Ok(work)
}

/// The containers that do not see what the snapshot says, after a
/// restore, as `container sees X at path, not the snapshot's Y` lines.
fn unseen(work: &[Work]) -> Result<(Vec<String>, BTreeSet<String>), PluginError> {
    let mut lines = Vec::new();
    let mut containers = BTreeSet::new();
    for w in work {
        for (mount, seen) in w.consumers.not_seeing(w.wanted.sha256.as_deref())? {
            lines.push(format!(
                "{}: container {} sees {seen} at {}, not the snapshot's {}",
                w.wanted.path,
                mount.container,
                mount.destination,
                w.wanted
                    .sha256
                    .as_deref()
                    .map_or("absence".to_string(), |s| format!("sha256 {}", &s[..12]))
            ));
            containers.insert(mount.container.clone());
        }
    }
    Ok((lines, containers))
}

/// A file's state and its contents (None when it did not exist).
type FileCopy = (FileState, Option<Vec<u8>>);

/// What a step being run again finds: the emergency copy its first run
/// took (the contents from before the step, not what a cut-off run left).
fn earlier_copy(emergency: &str) -> Result<Option<Vec<FileCopy>>, PluginError> {
    let Some(bytes) = files::read_if_exists(emergency)? else {
        return Ok(None);
    };
    let record: EmergencyCopy = serde_json::from_slice(&bytes).map_err(|e| {
        PluginError::Failed(format!(
            "the emergency copy {emergency} of this step cannot be read: {e}; nothing was changed"
        ))
    })?;
    let mut copies = Vec::new();
    for state in record.files {
        let contents = match &state.sha256 {
            Some(sha) => Some(verified_blob(&state, sha)?),
            None => None,
        };
        copies.push((state, contents));
    }
    Ok(Some(copies))
}

struct Files;

impl Plugin for Files {
    fn describe() -> PluginInfo {
        info!(
            "files",
            "snapshot and restore configuration files where their readers see them, then reload",
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
        let (settings, _) = settings_of(&target)?;
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
        let (settings, how) = settings_of(&target)?;
        let snapshot: SnapshotData = snapshot_data(&target, &to)?;
        let secrets = masker(&settings.secret_keys);
        let mut changes = Vec::new();
        for w in pending(&settings, &snapshot)? {
            let current = files::read_if_exists(&w.wanted.path)?;
            let (summary, detail) = if w.readers_only {
                (
                    "the file is right; a container still sees an older one (a single-file \
                     mount kept its old inode): it is restarted"
                        .to_string(),
                    String::new(),
                )
            } else {
                diff::describe(
                    &w.wanted.path,
                    current.as_deref(),
                    w.contents.as_deref(),
                    &secrets,
                )
            };
            let readers = w.consumers.describe().map(|r| {
                let written = if w.in_place {
                    "written in place"
                } else {
                    "replaced by a rename"
                };
                let then = match (&how, w.readers_only) {
                    (_, true) | (Reload::Restart, _) => "restarted".to_string(),
                    (Reload::Signal(s), _) => format!("sent {s}"),
                    (Reload::Nothing, _) => "left running".to_string(),
                };
                format!("{r}; {written}, the running containers {then}\n")
            });
            let restarts = w.consumers.running().next().is_some()
                && (w.readers_only || how == Reload::Restart);
            changes.push(Change {
                subject: w.wanted.path.clone(),
                summary,
                detail: Some(format!("{}{detail}", readers.unwrap_or_default())),
                risk: if settings.reload.is_empty() && !restarts {
                    Risk::None
                } else {
                    Risk::Restart
                },
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
        let (settings, how) = settings_of(&target)?;
        let snapshot: SnapshotData = snapshot_data(&target, &to)?;

        // Check every copy before touching anything.
        let pending = pending(&settings, &snapshot)?;
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

        // Keep what is about to be replaced, synced, before the first write.
        // The same step run again (after a crash or a failure half-way)
        // keeps the copy its first run took and puts that back on failure:
        // a file cut short in place is finished from the snapshot's copy.
        let emergency = format!("emergency/{}.json", step_file_name(&options.step_id));
        let previous = match earlier_copy(&emergency)? {
            Some(previous) => previous,
            None => {
                let mut previous = Vec::new();
                for w in &pending {
                    previous.push(capture(&w.wanted.path)?);
                }
                let record = EmergencyCopy {
                    step_id: options.step_id.clone(),
                    taken_at: now_secs(),
                    files: previous.iter().map(|(state, _)| state.clone()).collect(),
                };
                let record = serde_json::to_vec_pretty(&record)
                    .map_err(|e| PluginError::Failed(e.to_string()))?;
                files::write(&emergency, &record)?;
                previous
            }
        };
        let in_place: BTreeSet<&str> = pending
            .iter()
            .filter(|w| w.in_place)
            .map(|w| w.wanted.path.as_str())
            .collect();
        let put_back = |count: usize| -> Vec<String> {
            previous
                .iter()
                // The files written so far, and those an earlier run of
                // this step wrote.
                .filter(|(state, _)| {
                    let is = |w: &Work| w.wanted.path == state.path;
                    pending[..count.min(pending.len())].iter().any(is) || !pending.iter().any(is)
                })
                .filter_map(|(state, bytes)| {
                    apply(
                        state,
                        bytes.as_deref(),
                        in_place.contains(state.path.as_str()),
                    )
                    .err()
                    .map(|e| format!("{}: {e:?}", state.path))
                })
                .collect()
        };
        for (index, w) in pending.iter().enumerate() {
            if w.readers_only {
                continue;
            }
            progress(
                &format!("writing {}", w.wanted.path),
                Some((index * 100 / pending.len()) as u8),
            );
            if let Err(e) = apply(&w.wanted, w.contents.as_deref(), w.in_place) {
                // The file whose write failed is put back too: the failure
                // may have left it anything (half written, say).
                let failures = put_back(index + 1);
                return Err(PluginError::Failed(format!(
                    "writing {} failed: {e:?}; {}",
                    w.wanted.path,
                    rollback_report(index + 1, &failures, &emergency)
                )));
            }
        }
        // Readers catch up: the reload command, then the containers, then
        // what each running container sees is checked.
        let caught_up = (|| {
            let reloaded = reload(&settings).map_err(|e| {
                e.with_text(format!(
                    "reload `{}` failed after the restore: {}",
                    settings.reload.join(" "),
                    e.text()
                ))
            })?;
            let (_, stale) = unseen(&pending)?;
            let mounts: Vec<_> = pending
                .iter()
                .flat_map(|w| w.consumers.mounts.iter().cloned())
                .collect();
            let done = consumers::reload(
                &mounts,
                &stale,
                &how,
                settings.health_timeout_secs.saturating_mul(1000),
            )?;
            let (still, _) = unseen(&pending)?;
            if !still.is_empty() {
                return Err(PluginError::VerificationFailed(format!(
                    "the files were written but their readers do not see them: {}",
                    still.join("; ")
                )));
            }
            Ok((reloaded, done))
        })();
        let (reloaded, containers) = match caught_up {
            Ok(done) => done,
            Err(e) => {
                let failures = put_back(pending.len());
                let again = if failures.is_empty() {
                    reload(&settings).err()
                } else {
                    None
                };
                return Err(PluginError::Failed(format!(
                    "{}; {}{}",
                    e.text(),
                    rollback_report(pending.len(), &failures, &emergency),
                    again
                        .map(|e| format!("; reloading the previous files failed too: {e:?}"))
                        .unwrap_or_default()
                )));
            }
        };
        let mut details: Vec<String> = pending
            .iter()
            .map(|w| {
                if w.readers_only {
                    format!("{} was right; its readers caught up", w.wanted.path)
                } else if w.in_place {
                    format!("restored {} in place", w.wanted.path)
                } else {
                    format!("restored {}", w.wanted.path)
                }
            })
            .collect();
        details.extend(containers);
        details.push(format!(
            "previous contents kept in the state directory: {emergency}"
        ));
        Ok(Outcome {
            changed: true,
            summary: format!(
                "restored {} of {} files{}",
                pending.iter().filter(|w| !w.readers_only).count(),
                snapshot.files.len(),
                reloaded
                    .map(|r| format!(", then ran `{r}`"))
                    .unwrap_or_default()
            ),
            details,
        })
    }

    fn restart(target: Target, _parts: Vec<String>) -> Result<Outcome, PluginError> {
        let (settings, how) = settings_of(&target)?;
        let reloaded = reload(&settings)?;
        let mut mounts = Vec::new();
        for path in &settings.files {
            mounts.extend(Consumers::of(path)?.mounts);
        }
        let done = consumers::reload(
            &mounts,
            &BTreeSet::new(),
            &how,
            settings.health_timeout_secs.saturating_mul(1000),
        )?;
        if reloaded.is_none() && done.is_empty() {
            return Err(PluginError::Unsupported(format!(
                "target {}: restart needs settings.reload (e.g. [\"nginx\", \"-s\", \"reload\"]) \
                 or a running container that mounts one of the files",
                target.name
            )));
        }
        Ok(Outcome {
            changed: true,
            summary: reloaded
                .map(|r| format!("ran `{r}`"))
                .into_iter()
                .chain(done.iter().cloned())
                .collect::<Vec<_>>()
                .join("; "),
            details: done,
        })
    }

    /// The host files, and the files as each running container that mounts
    /// one sees it.
    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        settings_of(&target)?;
        let snapshot: SnapshotData = snapshot_data(&target, &to)?;
        let mut differ = Vec::new();
        let mut host = Vec::new();
        let mut work = Vec::new();
        for wanted in &snapshot.files {
            if current_sha(&wanted.path)? != wanted.sha256 {
                host.push(wanted.path.clone());
            }
            work.push(Work {
                consumers: Consumers::of(&wanted.path)?,
                wanted: wanted.clone(),
                contents: None,
                in_place: false,
                readers_only: false,
            });
        }
        if !host.is_empty() {
            differ.push(format!(
                "these files differ from the snapshot: {}",
                host.join(", ")
            ));
        }
        differ.extend(unseen(&work)?.0);
        let readers: usize = work.iter().map(|w| w.consumers.running().count()).sum();
        if differ.is_empty() {
            Ok(Outcome {
                changed: false,
                summary: format!(
                    "all {} files match the snapshot{}",
                    snapshot.files.len(),
                    if readers > 0 {
                        format!(", as {readers} container mount(s) see them")
                    } else {
                        String::new()
                    }
                ),
                details: vec![],
            })
        } else {
            Err(PluginError::VerificationFailed(differ.join("; ")))
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
