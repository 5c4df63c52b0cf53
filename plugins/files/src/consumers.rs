//! The containers that read a file: found through the docker capability
//! (the containers of the granted compose projects that bind-mount it),
//! written so that they see it (in place, same inode, where one mounts the
//! file by itself), made to read it again (restart or signal), and checked
//! where they read it (the file inside the container).

use rewind_plugin_sdk::docker::{self, Mount};
use rewind_plugin_sdk::*;
use std::collections::BTreeSet;

/// What the running containers that mount a changed file get after it is
/// written (`container_reload` in the settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Restart,
    Signal(String),
    Nothing,
}

impl Reload {
    pub fn parse(text: &str, target: &str) -> Result<Reload, PluginError> {
        match text {
            "restart" => Ok(Reload::Restart),
            "none" => Ok(Reload::Nothing),
            signal
                if signal.starts_with("SIG")
                    && signal.len() > 3
                    && signal[3..]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) =>
            {
                Ok(Reload::Signal(signal.to_string()))
            }
            other => Err(PluginError::InvalidSettings(format!(
                "target {target}: settings.container_reload `{other}` must be \"restart\", \
                 \"none\" or a signal name such as \"SIGHUP\""
            ))),
        }
    }
}

/// The containers that mount one file.
pub struct Consumers {
    pub mounts: Vec<Mount>,
}

impl Consumers {
    pub fn of(path: &str) -> Result<Consumers, PluginError> {
        Ok(Consumers {
            mounts: docker::mounts_of(path)?,
        })
    }

    /// Whether a container mounts the file by itself: it keeps the inode
    /// it started with, so the file must be written in place.
    pub fn single_file(&self) -> bool {
        self.mounts.iter().any(|m| m.single_file)
    }

    pub fn running(&self) -> impl Iterator<Item = &Mount> {
        self.mounts.iter().filter(|m| m.running)
    }

    /// The running containers that do not see `wanted` (a SHA-256, None
    /// for absent), with what they see.
    pub fn not_seeing(&self, wanted: Option<&str>) -> Result<Vec<(Mount, String)>, PluginError> {
        let mut differ = Vec::new();
        for mount in self.running() {
            let seen = docker::read_file(&mount.container, &mount.destination)?
                .map(|bytes| sha256_hex(&bytes));
            if seen.as_deref() != wanted {
                let what = seen.map_or("no file".to_string(), |s| format!("sha256 {}", &s[..12]));
                differ.push((mount.clone(), what));
            }
        }
        Ok(differ)
    }

    /// A line for previews: who reads the file and how it will be written.
    pub fn describe(&self) -> Option<String> {
        if self.mounts.is_empty() {
            return None;
        }
        let seen: Vec<String> = self
            .mounts
            .iter()
            .map(|m| {
                format!(
                    "{} at {}{}{}",
                    m.container,
                    m.destination,
                    if m.single_file {
                        " (a single-file bind mount)"
                    } else {
                        ""
                    },
                    if m.running { "" } else { ", stopped" }
                )
            })
            .collect();
        Some(format!("read by container {}", seen.join(", ")))
    }
}

/// Make the running containers among `mounts` read their files again:
/// `stale` ones (a single-file mount that still shows the old inode) are
/// restarted whatever `reload` says; the others get `reload`. A restarted
/// container must be healthy within `timeout_ms`. What was done, per
/// container.
pub fn reload(
    mounts: &[Mount],
    stale: &BTreeSet<String>,
    how: &Reload,
    timeout_ms: u32,
) -> Result<Vec<String>, PluginError> {
    let containers: BTreeSet<&str> = mounts
        .iter()
        .filter(|m| m.running)
        .map(|m| m.container.as_str())
        .collect();
    let mut done = Vec::new();
    for container in containers {
        let how = if stale.contains(container) {
            &Reload::Restart
        } else {
            how
        };
        match how {
            Reload::Restart => {
                progress(&format!("restarting {container}"), None);
                docker::restart(container)?;
                docker::wait_healthy(container, timeout_ms).map_err(|e| {
                    e.with_text(format!(
                        "container {container} was restarted to read its files again but is \
                         not healthy: {}",
                        e.text()
                    ))
                })?;
                done.push(format!("restarted container {container}, healthy"));
            }
            Reload::Signal(signal) => {
                docker::signal(container, signal)?;
                done.push(format!("sent {signal} to container {container}"));
            }
            Reload::Nothing => {}
        }
    }
    Ok(done)
}
