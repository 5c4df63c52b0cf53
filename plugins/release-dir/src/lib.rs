//! rewind's release-dir plugin: applications deployed Capistrano-style, as
//! `releases/<version>/` directories with a `current` symbolic link to the
//! live one (runbook 003's systemd platform). Restore points `current` back
//! at the snapshot's release atomically (a new link renamed over the old),
//! runs the restart command, and waits for the health URL; if the restart
//! or the health check fails, `current` goes back to the release it held
//! and the restart runs again, so the target is never left between two.
//!
//! Settings: `root` (holds `releases/` and `current`; granted with
//! `grant.files`), `restart` (a command, e.g. `["systemctl", "restart",
//! "myapp"]`, allow-listed in `grant.process`), `health_url` (GET until it
//! answers 2xx; its host in `grant.http`), `health_timeout_secs` (60).

use rewind_plugin_sdk::process;
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

struct ReleaseDir;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    root: String,
    #[serde(default)]
    restart: Vec<String>,
    health_url: Option<String>,
    #[serde(default = "default_health_timeout")]
    health_timeout_secs: u64,
}

fn default_health_timeout() -> u64 {
    60
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// The release `current` pointed at, e.g. `v1.4.2`.
    release: String,
}

impl Settings {
    fn current(&self) -> String {
        format!("{}/current", self.root.trim_end_matches('/'))
    }

    fn release_dir(&self, release: &str) -> String {
        format!("{}/releases/{release}", self.root.trim_end_matches('/'))
    }
}

fn settings_of(target: &Target) -> Result<Settings, PluginError> {
    let settings: Settings = settings(target)?;
    if !settings.root.starts_with('/') {
        return Err(PluginError::InvalidSettings(format!(
            "target {}: settings.root `{}` must be an absolute directory",
            target.name, settings.root
        )));
    }
    Ok(settings)
}

/// The release `current` points at: the last part of its link.
fn live(target: &Target, settings: &Settings) -> Result<String, PluginError> {
    let link = files::read_link(&settings.current())?;
    let release = link.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if release.is_empty() || release == "." || release == ".." {
        return Err(PluginError::Failed(format!(
            "target {}: {} points at `{link}`, which names no release",
            target.name,
            settings.current()
        )));
    }
    Ok(release.to_string())
}

fn exists(target: &Target, settings: &Settings, release: &str) -> Result<(), PluginError> {
    match files::stat(&settings.release_dir(release))? {
        Some(_) => Ok(()),
        None => Err(PluginError::NotFound(format!(
            "target {}: release {release} is gone from {}/releases; it cannot be switched back to",
            target.name, settings.root
        ))),
    }
}

fn restart(target: &Target, settings: &Settings) -> Result<Option<String>, PluginError> {
    let Some((program, args)) = settings.restart.split_first() else {
        return Ok(None);
    };
    let shown = settings.restart.join(" ");
    progress(&format!("running {shown}"), None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    process::run(program, &args)
        .map_err(|e| e.with_text(format!("target {}: {}", target.name, e.text())))?;
    Ok(Some(shown))
}

/// GET the health URL until it answers 2xx, or the time runs out.
fn healthy(target: &Target, settings: &Settings) -> Result<Option<String>, PluginError> {
    let Some(url) = &settings.health_url else {
        return Ok(None);
    };
    let started = Instant::now();
    let limit = Duration::from_secs(settings.health_timeout_secs);
    loop {
        let last = match http::get(url) {
            Ok(response) if (200..300).contains(&response.status) => {
                return Ok(Some(format!("{url} answered {}", response.status)));
            }
            Ok(response) => format!("answered {}", response.status),
            Err(http::HttpError::Denied(text)) => return Err(PluginError::Denied(text)),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= limit {
            return Err(PluginError::VerificationFailed(format!(
                "target {}: {url} not healthy within {} s: {last}",
                target.name, settings.health_timeout_secs
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn switch(target: &Target, settings: &Settings, release: &str) -> Result<Vec<String>, PluginError> {
    files::set_link(&settings.current(), &format!("releases/{release}"))?;
    let mut details = vec![format!("current -> releases/{release}")];
    details.extend(restart(target, settings)?);
    details.extend(healthy(target, settings)?);
    Ok(details)
}

impl Plugin for ReleaseDir {
    fn describe() -> PluginInfo {
        info!(
            "release-dir",
            "releases/<version> with a current symlink: switch back atomically, restart, check health",
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
        let settings = settings_of(&target)?;
        let release = live(&target, &settings)?;
        exists(&target, &settings, &release)?;
        Ok(Captured {
            summary: format!("release {release}"),
            data: serde_json::to_string(&Snapshot { release })
                .map_err(|e| PluginError::Failed(e.to_string()))?,
        })
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let settings = settings_of(&target)?;
        let wanted: Snapshot = snapshot_data(&target, &to)?;
        let now = live(&target, &settings)?;
        if now == wanted.release {
            return Ok(Preview {
                changes: Vec::new(),
                risk: Risk::None,
                data_loss_window_seconds: None,
            });
        }
        exists(&target, &settings, &wanted.release)?;
        let restart = if settings.restart.is_empty() {
            String::new()
        } else {
            format!(", then {}", settings.restart.join(" "))
        };
        Ok(Preview {
            changes: vec![Change {
                subject: settings.current(),
                summary: format!("release {now} -> {}{restart}", wanted.release),
                detail: None,
                risk: Risk::Restart,
            }],
            risk: Risk::Restart,
            data_loss_window_seconds: None,
        })
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        _options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let wanted: Snapshot = snapshot_data(&target, &to)?;
        let before = live(&target, &settings)?;
        if before == wanted.release {
            return Ok(Outcome {
                changed: false,
                summary: format!("release {before} is already current"),
                details: Vec::new(),
            });
        }
        exists(&target, &settings, &wanted.release)?;
        match switch(&target, &settings, &wanted.release) {
            Ok(details) => Ok(Outcome {
                changed: true,
                summary: format!("release {before} -> {}", wanted.release),
                details,
            }),
            Err(error) => {
                // Put the release that was live back, and restart it.
                let back = switch(&target, &settings, &before);
                let state = match back {
                    Ok(_) => format!("current is back on release {before}, restarted and healthy"),
                    Err(e) => format!(
                        "putting release {before} back failed too ({}); current points at {}",
                        e.text(),
                        live(&target, &settings).unwrap_or_else(|e| e.text().to_string())
                    ),
                };
                Err(error.with_text(format!("{}; {state}", error.text())))
            }
        }
    }

    fn restart(target: Target, _parts: Vec<String>) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let mut details: Vec<String> = restart(&target, &settings)?.into_iter().collect();
        details.extend(healthy(&target, &settings)?);
        Ok(Outcome {
            changed: true,
            summary: format!("restarted release {}", live(&target, &settings)?),
            details,
        })
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let wanted: Snapshot = snapshot_data(&target, &to)?;
        let now = live(&target, &settings)?;
        if now != wanted.release {
            return Err(PluginError::VerificationFailed(format!(
                "target {}: current is release {now}, not {}",
                target.name, wanted.release
            )));
        }
        let details: Vec<String> = healthy(&target, &settings)?.into_iter().collect();
        Ok(Outcome {
            changed: false,
            summary: format!("release {now} is current"),
            details,
        })
    }
}

export_plugin!(ReleaseDir);
