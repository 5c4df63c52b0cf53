//! rewind's cdn plugin: puts the UI back on a previous build and purges the
//! cache in one step, then checks what users are actually served.
//!
//! Origins: a directory of versioned builds (`builds/<id>/...`) served
//! through a `current` symbolic link, switched atomically ([`dir`]); or an
//! S3-compatible bucket whose live prefix gets a stored build's files
//! ([`bucket`]). Caches ([`purge`]): Varnish (BAN, PURGE, surrogate keys),
//! Cloudflare, Fastly, CloudFront. Verification: every file of the
//! snapshot's manifest fetched through the cache must match it byte for
//! byte.

mod bucket;
mod dir;
mod purge;

use bucket::{BucketOrigin, BucketSettings};
use dir::DirOrigin;
use purge::{Purge, purge};
use rewind_plugin_sdk::http;
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

struct Cdn;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Directory origin: the directory holding one subdirectory per build.
    builds: Option<String>,
    /// Directory origin: the symbolic link the web server serves.
    current: Option<String>,
    /// Bucket origin: an S3-compatible bucket.
    s3: Option<BucketSettings>,
    #[serde(default)]
    purge: Vec<Purge>,
    /// The base URL users are served from (through the cache), for verify.
    verify_url: Option<String>,
    /// The file served at `/` (default index.html).
    #[serde(default = "default_index")]
    index: String,
}

fn default_index() -> String {
    "index.html".into()
}

/// What a snapshot records: the active build and the hash of each file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Snapshot {
    build: String,
    manifest: BTreeMap<String, String>,
}

/// Where the builds are and how the live one is switched.
enum Origin {
    Dir(DirOrigin),
    Bucket(Box<BucketOrigin>),
}

impl Origin {
    fn new(settings: &Settings, target: &str) -> Result<Origin, PluginError> {
        match (&settings.builds, &settings.current, &settings.s3) {
            (None, None, Some(s3)) => Ok(Origin::Bucket(Box::new(BucketOrigin::new(s3, target)?))),
            (Some(builds), Some(current), None) => Ok(Origin::Dir(DirOrigin {
                builds: builds.clone(),
                current: current.clone(),
            })),
            (_, _, Some(_)) => Err(PluginError::InvalidSettings(format!(
                "target {target}: set either `builds` and `current` (a directory origin) or \
                 `s3` (a bucket origin), not both"
            ))),
            _ => Err(PluginError::InvalidSettings(format!(
                "target {target}: a directory origin needs both `builds` (the directory of \
                 builds) and `current` (the link served); a bucket origin needs `s3`"
            ))),
        }
    }

    fn snapshot(&self) -> Result<Snapshot, PluginError> {
        match self {
            Origin::Dir(o) => o.snapshot(),
            Origin::Bucket(o) => o.snapshot(),
        }
    }

    /// Check the snapshot's build is stored unchanged; for a bucket, the
    /// ETags of the files read.
    fn check_build(
        &self,
        snapshot: &Snapshot,
    ) -> Result<BTreeMap<String, Option<String>>, PluginError> {
        match self {
            Origin::Dir(o) => o.check_build(snapshot).map(|()| BTreeMap::new()),
            Origin::Bucket(o) => o.check_build(snapshot),
        }
    }

    fn not_live(&self, snapshot: &Snapshot) -> Result<Option<String>, PluginError> {
        match self {
            Origin::Dir(o) => o.not_live(snapshot),
            Origin::Bucket(o) => o.not_live(snapshot),
        }
    }

    fn planned_change(&self, snapshot: &Snapshot) -> Result<Option<Change>, PluginError> {
        match self {
            Origin::Dir(o) => o.planned_change(snapshot),
            Origin::Bucket(o) => o.planned_change(snapshot),
        }
    }

    fn switch(
        &self,
        snapshot: &Snapshot,
        etags: &BTreeMap<String, Option<String>>,
        step_id: &str,
    ) -> Result<Vec<String>, PluginError> {
        match self {
            Origin::Dir(o) => o.switch(snapshot),
            Origin::Bucket(o) => o.switch(snapshot, etags, step_id),
        }
    }
}

/// How many files differ between two manifests.
fn differing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> usize {
    a.iter().filter(|(f, d)| b.get(*f) != Some(*d)).count()
        + b.keys().filter(|f| !a.contains_key(*f)).count()
}

/// The stored build's manifest must be the snapshot's.
fn same_or_changed(snapshot: &Snapshot, now: &BTreeMap<String, String>) -> Result<(), PluginError> {
    if *now == snapshot.manifest {
        return Ok(());
    }
    let changed: Vec<&String> = snapshot
        .manifest
        .keys()
        .chain(now.keys().filter(|f| !snapshot.manifest.contains_key(*f)))
        .filter(|f| now.get(*f) != snapshot.manifest.get(*f))
        .collect();
    Err(PluginError::VerificationFailed(format!(
        "build {} changed since the snapshot ({}); nothing was switched",
        snapshot.build,
        changed
            .iter()
            .take(5)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The URL path users fetch a file at.
fn url_path(settings: &Settings, file: &str) -> String {
    if file == settings.index {
        "/".to_string()
    } else {
        format!("/{file}")
    }
}

/// Fetch every file of the manifest through the cache; the ones that differ.
fn served_mismatches(settings: &Settings, snapshot: &Snapshot) -> Result<Vec<String>, PluginError> {
    let Some(base) = &settings.verify_url else {
        return Ok(Vec::new());
    };
    let base = base.trim_end_matches('/');
    let mut wrong = Vec::new();
    for (file, digest) in &snapshot.manifest {
        let path = url_path(settings, file);
        let response = http::get(&format!("{base}{path}"))?;
        if response.status != 200 {
            wrong.push(format!("{path}: status {}", response.status));
        } else if sha256_hex(&response.body) != *digest {
            wrong.push(format!(
                "{path}: not the content of build {}",
                snapshot.build
            ));
        }
    }
    Ok(wrong)
}

impl Plugin for Cdn {
    fn describe() -> PluginInfo {
        info!(
            "cdn",
            "the UI back on a previous build: origin switched, cache purged, pages checked",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restore,
                Action::Verify,
            ],
        )
    }

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        let settings: Settings = settings(&target)?;
        let snapshot = Origin::new(&settings, &target.name)?.snapshot()?;
        let summary = format!(
            "build {}, {} files",
            snapshot.build,
            snapshot.manifest.len()
        );
        Ok(Captured {
            data: serde_json::to_string(&snapshot)
                .map_err(|e| PluginError::Failed(e.to_string()))?,
            summary,
        })
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let settings: Settings = settings(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let origin = Origin::new(&settings, &target.name)?;
        origin.check_build(&snapshot)?;
        let mut changes: Vec<Change> = origin.planned_change(&snapshot)?.into_iter().collect();
        for cache in &settings.purge {
            changes.push(Change {
                subject: cache.describe(),
                summary: "purge the cache".to_string(),
                detail: None,
                risk: Risk::None,
            });
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
        let settings: Settings = settings(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let origin = Origin::new(&settings, &target.name)?;
        let etags = origin.check_build(&snapshot)?;
        // Switching does nothing (and says nothing) when the build is live.
        let mut details = origin.switch(&snapshot, &etags, &options.step_id)?;
        if details.is_empty() && served_mismatches(&settings, &snapshot)?.is_empty() {
            return Ok(Outcome {
                changed: false,
                summary: format!("build {} is active and served", snapshot.build),
                details: Vec::new(),
            });
        }
        // The origin serves the old build only: purge now, so that the
        // cache cannot keep serving a mix.
        details.extend(purge(&settings, &snapshot, &options.step_id, &target.name)?);
        let wrong = served_mismatches(&settings, &snapshot)?;
        if !wrong.is_empty() {
            return Err(PluginError::VerificationFailed(format!(
                "after the switch and the purge, {} are not build {}",
                wrong.join(", "),
                snapshot.build
            )));
        }
        if settings.verify_url.is_some() {
            details.push(format!(
                "{} files served through the cache match build {}",
                snapshot.manifest.len(),
                snapshot.build
            ));
        }
        Ok(Outcome {
            changed: true,
            summary: format!("build {} active, cache purged", snapshot.build),
            details,
        })
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let settings: Settings = settings(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let origin = Origin::new(&settings, &target.name)?;
        if let Some(why) = origin.not_live(&snapshot)? {
            return Err(PluginError::VerificationFailed(why));
        }
        let wrong = served_mismatches(&settings, &snapshot)?;
        if !wrong.is_empty() {
            return Err(PluginError::VerificationFailed(format!(
                "{} are not build {}",
                wrong.join(", "),
                snapshot.build
            )));
        }
        Ok(Outcome {
            changed: false,
            summary: format!("build {} is active and served", snapshot.build),
            details: Vec::new(),
        })
    }
}

export_plugin!(Cdn);
