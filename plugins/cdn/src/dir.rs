//! The directory origin: one subdirectory per build (`builds/<id>/...`),
//! served through a `current` symbolic link that is switched atomically.

use crate::Snapshot;
use rewind_plugin_sdk::*;
use std::collections::BTreeMap;

pub struct DirOrigin {
    /// The directory holding one subdirectory per build.
    pub builds: String,
    /// The symbolic link the web server serves (points at a build).
    pub current: String,
}

impl DirOrigin {
    fn build_dir(&self, build: &str) -> String {
        format!("{}/{build}", self.builds.trim_end_matches('/'))
    }

    /// The build the `current` link points at.
    pub fn active_build(&self) -> Result<String, PluginError> {
        let target = files::read_link(&self.current)?;
        let build = target
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if build.is_empty() {
            return Err(PluginError::Failed(format!(
                "{} points at {target}, which names no build",
                self.current
            )));
        }
        Ok(build)
    }

    pub fn snapshot(&self) -> Result<Snapshot, PluginError> {
        let build = self.active_build()?;
        let manifest = manifest(&self.build_dir(&build))?;
        Ok(Snapshot { build, manifest })
    }

    /// The snapshot's build must still be there, unchanged.
    pub fn check_build(&self, snapshot: &Snapshot) -> Result<(), PluginError> {
        let dir = self.build_dir(&snapshot.build);
        if files::stat(&dir)?.is_none() {
            return Err(PluginError::NotFound(format!(
                "build {} is no longer in {}; nothing was switched",
                snapshot.build, self.builds
            )));
        }
        crate::same_or_changed(snapshot, &manifest(&dir)?)
    }

    /// None when the snapshot's build is live, else why not.
    pub fn not_live(&self, snapshot: &Snapshot) -> Result<Option<String>, PluginError> {
        let active = self.active_build()?;
        Ok((active != snapshot.build).then(|| {
            format!(
                "{} points at build {active}, not {}",
                self.current, snapshot.build
            )
        }))
    }

    /// The plan's change, when the snapshot's build is not live.
    pub fn planned_change(&self, snapshot: &Snapshot) -> Result<Option<Change>, PluginError> {
        let active = self.active_build()?;
        if active == snapshot.build {
            return Ok(None);
        }
        let now = manifest(&self.build_dir(&active)).unwrap_or_default();
        Ok(Some(Change {
            subject: self.current.clone(),
            summary: format!("switch from build {active} to build {}", snapshot.build),
            detail: Some(format!(
                "{} of {} files differ",
                crate::differing(&snapshot.manifest, &now),
                snapshot.manifest.len()
            )),
            risk: Risk::None,
        }))
    }

    /// Point `current` at the snapshot's build (a new link renamed over the
    /// old one, so readers see one build or the other).
    pub fn switch(&self, snapshot: &Snapshot) -> Result<Vec<String>, PluginError> {
        let active = self.active_build()?;
        if active == snapshot.build {
            return Ok(Vec::new());
        }
        files::set_link(&self.current, &self.build_dir(&snapshot.build))?;
        Ok(vec![format!(
            "{} switched from build {active} to build {}",
            self.current, snapshot.build
        )])
    }
}

/// Every file of a build, relative path -> SHA-256.
fn manifest(dir: &str) -> Result<BTreeMap<String, String>, PluginError> {
    let mut files_seen = BTreeMap::new();
    let mut pending = vec![String::new()];
    while let Some(relative) = pending.pop() {
        let full = if relative.is_empty() {
            dir.to_string()
        } else {
            format!("{dir}/{relative}")
        };
        for name in files::list(&full)? {
            let path = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            let info = files::stat(&format!("{dir}/{path}"))?.ok_or_else(|| {
                PluginError::Failed(format!("{dir}/{path} vanished while listed"))
            })?;
            if info.is_dir {
                pending.push(path);
            } else {
                files_seen.insert(path.clone(), files::sha256(&format!("{dir}/{path}"))?);
            }
        }
    }
    Ok(files_seen)
}
