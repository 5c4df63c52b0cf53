//! The bucket origin: an S3-compatible bucket whose live prefix is served,
//! with every build stored under a builds prefix (`builds/<id>/...`).
//! Switching copies the build's files over the live prefix (server-side
//! CopyObject, each checked against the bytes that were verified), then
//! deletes what the build does not have.

use crate::Snapshot;
use rewind_plugin_sdk::s3::{self, Client, Object};
use rewind_plugin_sdk::*;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSettings {
    /// The bucket the site is served from.
    pub bucket: String,
    /// The prefix served as the site's root (default: the bucket's root).
    #[serde(default)]
    pub live: String,
    /// The prefix holding one prefix per build (`builds/` for `builds/<id>/`).
    pub builds: String,
    /// The bucket holding the builds (default: `bucket`).
    pub builds_bucket: Option<String>,
    /// The store's URL (default: AWS S3 in `region`).
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style URLs (default: on with an `endpoint`, off for AWS).
    pub path_style: Option<bool>,
    #[serde(default = "default_access_key_secret")]
    pub access_key_secret: String,
    #[serde(default = "default_secret_key_secret")]
    pub secret_key_secret: String,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_access_key_secret() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_key_secret() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// `""` stays the bucket's root; anything else ends with one `/`.
fn as_prefix(text: &str) -> String {
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

pub struct BucketOrigin {
    client: Client,
    bucket: String,
    live: String,
    builds_bucket: String,
    builds: String,
}

/// The files of one prefix: relative path -> object.
type Listing = BTreeMap<String, Object>;

impl BucketOrigin {
    pub fn new(settings: &BucketSettings, target: &str) -> Result<BucketOrigin, PluginError> {
        let live = as_prefix(&settings.live);
        let builds = as_prefix(&settings.builds);
        let builds_bucket = settings
            .builds_bucket
            .clone()
            .unwrap_or_else(|| settings.bucket.clone());
        if builds.is_empty() {
            return Err(PluginError::InvalidSettings(format!(
                "target {target}: s3.builds must name a prefix (e.g. \"builds/\"), not the bucket's root"
            )));
        }
        if builds_bucket == settings.bucket && live.starts_with(&builds) {
            return Err(PluginError::InvalidSettings(format!(
                "target {target}: the live prefix {live:?} is inside the builds prefix {builds:?}; \
                 it would be taken for a build"
            )));
        }
        let endpoint = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", settings.region));
        Ok(BucketOrigin {
            client: Client {
                endpoint,
                region: settings.region.clone(),
                path_style: settings.path_style.unwrap_or(settings.endpoint.is_some()),
                access_key: secrets::require(target, &settings.access_key_secret)?,
                secret_key: secrets::require(target, &settings.secret_key_secret)?,
            },
            bucket: settings.bucket.clone(),
            live,
            builds_bucket,
            builds,
        })
    }

    fn live_url(&self) -> String {
        s3::display(&self.bucket, &self.live)
    }

    fn build_prefix(&self, build: &str) -> String {
        format!("{}{build}/", self.builds)
    }

    fn build_url(&self, build: &str) -> String {
        s3::display(&self.builds_bucket, &self.build_prefix(build))
    }

    /// The objects under a prefix by relative path; the builds prefix is
    /// left out when it sits inside this one.
    fn listing(&self, bucket: &str, prefix: &str) -> Result<Listing, PluginError> {
        let skip_builds = bucket == self.builds_bucket
            && self.builds.starts_with(prefix)
            && self.builds != prefix;
        Ok(self
            .client
            .list(bucket, prefix, None)?
            .objects
            .into_iter()
            .filter(|o| !(skip_builds && o.key.starts_with(&self.builds)))
            // Zero-byte "folder" markers some tools create are not files.
            .filter(|o| !o.key.ends_with('/'))
            .filter_map(|o| {
                let relative = o.key.strip_prefix(prefix)?.to_string();
                Some((relative, o))
            })
            .collect())
    }

    /// The SHA-256 (and ETag) of every object of a listing, read whole.
    fn hashes(
        &self,
        bucket: &str,
        listing: &Listing,
    ) -> Result<BTreeMap<String, (String, Option<String>)>, PluginError> {
        listing
            .iter()
            .map(|(relative, object)| {
                let (bytes, etag) = self.client.get(bucket, &object.key)?;
                Ok((relative.clone(), (sha256_hex(&bytes), etag)))
            })
            .collect()
    }

    fn manifest(
        &self,
        bucket: &str,
        listing: &Listing,
    ) -> Result<BTreeMap<String, String>, PluginError> {
        Ok(self
            .hashes(bucket, listing)?
            .into_iter()
            .map(|(relative, (digest, _))| (relative, digest))
            .collect())
    }

    /// The ids of the stored builds.
    fn build_ids(&self) -> Result<Vec<String>, PluginError> {
        let listing = self
            .client
            .list(&self.builds_bucket, &self.builds, Some("/"))?;
        Ok(listing
            .prefixes
            .iter()
            .filter_map(|p| p.strip_prefix(&self.builds))
            .map(|p| p.trim_end_matches('/').to_string())
            .filter(|id| !id.is_empty())
            .collect())
    }

    /// The stored build whose files are the live files, if any. Listings
    /// (names, sizes, ETags) rule most builds out without reading them.
    fn find_build(
        &self,
        live: &Listing,
        manifest: &BTreeMap<String, String>,
    ) -> Result<Option<String>, PluginError> {
        for id in self.build_ids()? {
            let build = self.listing(&self.builds_bucket, &self.build_prefix(&id))?;
            let same_shape = build.len() == live.len()
                && build
                    .iter()
                    .all(|(f, o)| live.get(f).is_some_and(|l| l.size == o.size));
            if !same_shape {
                continue;
            }
            let same_etags = build
                .iter()
                .all(|(f, o)| o.etag.is_some() && live.get(f).is_some_and(|l| l.etag == o.etag));
            if same_etags || self.manifest(&self.builds_bucket, &build)? == *manifest {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    pub fn snapshot(&self) -> Result<Snapshot, PluginError> {
        let live = self.listing(&self.bucket, &self.live)?;
        if live.is_empty() {
            return Err(PluginError::NotFound(format!(
                "nothing is served from {}: no build to roll back to",
                self.live_url()
            )));
        }
        let manifest = self.manifest(&self.bucket, &live)?;
        let build = self.find_build(&live, &manifest)?.ok_or_else(|| {
            PluginError::NotFound(format!(
                "the files served from {} are none of the builds stored under {}; store each \
                 deployed build there (e.g. {}<id>/) so that it can be rolled back to",
                self.live_url(),
                s3::display(&self.builds_bucket, &self.builds),
                self.builds
            ))
        })?;
        Ok(Snapshot { build, manifest })
    }

    /// The snapshot's build must still be stored, unchanged. Gives each
    /// file's ETag as read, so that the copy takes those very bytes.
    pub fn check_build(
        &self,
        snapshot: &Snapshot,
    ) -> Result<BTreeMap<String, Option<String>>, PluginError> {
        let build = self.listing(&self.builds_bucket, &self.build_prefix(&snapshot.build))?;
        if build.is_empty() {
            return Err(PluginError::NotFound(format!(
                "build {} is no longer in {}; nothing was switched",
                snapshot.build,
                self.build_url(&snapshot.build)
            )));
        }
        let hashes = self.hashes(&self.builds_bucket, &build)?;
        let manifest = hashes
            .iter()
            .map(|(f, (digest, _))| (f.clone(), digest.clone()))
            .collect();
        crate::same_or_changed(snapshot, &manifest)?;
        Ok(hashes.into_iter().map(|(f, (_, etag))| (f, etag)).collect())
    }

    /// The live files' manifest.
    fn live_manifest(&self) -> Result<(Listing, BTreeMap<String, String>), PluginError> {
        let live = self.listing(&self.bucket, &self.live)?;
        let manifest = self.manifest(&self.bucket, &live)?;
        Ok((live, manifest))
    }

    /// None when the live files are the snapshot's build, else why not.
    pub fn not_live(&self, snapshot: &Snapshot) -> Result<Option<String>, PluginError> {
        let (_, manifest) = self.live_manifest()?;
        Ok(mismatch(&snapshot.manifest, &manifest).map(|files| {
            format!(
                "the files served from {} are not build {} ({files})",
                self.live_url(),
                snapshot.build
            )
        }))
    }

    pub fn planned_change(&self, snapshot: &Snapshot) -> Result<Option<Change>, PluginError> {
        let (_, live) = self.live_manifest()?;
        if live == snapshot.manifest {
            return Ok(None);
        }
        let (copies, deletes) = work(&snapshot.manifest, &live);
        Ok(Some(Change {
            subject: self.live_url(),
            summary: format!("copy build {} over the live files", snapshot.build),
            detail: Some(format!(
                "{} of {} files copied from {}, {} deleted",
                copies.len(),
                snapshot.manifest.len(),
                self.build_url(&snapshot.build),
                deletes.len()
            )),
            risk: Risk::None,
        }))
    }

    /// Make the live files the snapshot's build. What was live is first
    /// known to be recoverable: a stored build, or else saved as one and
    /// checked. If a copy or delete fails, what was already changed is put
    /// back from there, so the live files are never left half switched.
    pub fn switch(
        &self,
        snapshot: &Snapshot,
        etags: &BTreeMap<String, Option<String>>,
        step_id: &str,
    ) -> Result<Vec<String>, PluginError> {
        let (live, live_manifest) = self.live_manifest()?;
        if live_manifest == snapshot.manifest {
            return Ok(Vec::new());
        }
        let mut details = Vec::new();
        let previous = match self.find_build(&live, &live_manifest)? {
            Some(id) => {
                details.push(format!("{} was build {id}", self.live_url()));
                id
            }
            None => {
                let id = self.save_live(&live, &live_manifest, step_id)?;
                details.push(format!(
                    "{} matched no stored build: saved as build {id} ({} files, checked) before \
                     anything was changed",
                    self.live_url(),
                    live.len()
                ));
                id
            }
        };
        let (copies, deletes) = work(&snapshot.manifest, &live_manifest);
        let mut done: Vec<String> = Vec::new();
        let result = (|| {
            for file in &copies {
                self.client.copy(
                    &self.builds_bucket,
                    &format!("{}{file}", self.build_prefix(&snapshot.build)),
                    &self.bucket,
                    &format!("{}{file}", self.live),
                    etags.get(file).cloned().flatten().as_deref(),
                )?;
                done.push(file.clone());
            }
            for file in &deletes {
                self.client
                    .delete(&self.bucket, &format!("{}{file}", self.live))?;
                done.push(file.clone());
            }
            Ok::<(), PluginError>(())
        })();
        if let Err(error) = result {
            let undo = self.put_back(&previous, &live_manifest, &done);
            let how = match undo {
                Ok(()) if done.is_empty() => {
                    format!("nothing had been changed yet in {}", self.live_url())
                }
                Ok(()) => format!(
                    "the {} file(s) already changed were put back from build {previous}, so \
                     {} is as it was",
                    done.len(),
                    self.live_url()
                ),
                Err(e) => format!(
                    "putting back the {} file(s) already changed from build {previous} failed \
                     too ({}): {} is a mix; restore build {previous} or run the step again",
                    done.len(),
                    e.text(),
                    self.live_url()
                ),
            };
            return Err(error.with_text(format!(
                "switching {} to build {}: {}; {how}",
                self.live_url(),
                snapshot.build,
                error.text()
            )));
        }
        let (_, now) = self.live_manifest()?;
        if let Some(files) = mismatch(&snapshot.manifest, &now) {
            return Err(PluginError::VerificationFailed(format!(
                "after the copy, the files served from {} are not build {} ({files}): another \
                 writer is changing them",
                self.live_url(),
                snapshot.build
            )));
        }
        details.push(format!(
            "{} switched to build {}: {} file(s) copied from {}, {} deleted",
            self.live_url(),
            snapshot.build,
            copies.len(),
            self.build_url(&snapshot.build),
            deletes.len()
        ));
        Ok(details)
    }

    /// Copy the live files to a new build prefix and check the copy.
    fn save_live(
        &self,
        live: &Listing,
        manifest: &BTreeMap<String, String>,
        step_id: &str,
    ) -> Result<String, PluginError> {
        let step = step_file_name(step_id);
        let id = format!("rewind-before-{step}-{}", now_secs());
        for (file, object) in live {
            self.client
                .copy(
                    &self.bucket,
                    &object.key,
                    &self.builds_bucket,
                    &format!("{}{file}", self.build_prefix(&id)),
                    None,
                )
                .map_err(|e| {
                    e.with_text(format!(
                        "saving the live files as build {id} before the switch: {}; nothing \
                         was switched",
                        e.text()
                    ))
                })?;
        }
        let saved = self.listing(&self.builds_bucket, &self.build_prefix(&id))?;
        if self.manifest(&self.builds_bucket, &saved)? != *manifest {
            return Err(PluginError::Failed(format!(
                "the copy of the live files in {} does not match them (changed while saved?); \
                 nothing was switched",
                self.build_url(&id)
            )));
        }
        Ok(id)
    }

    /// Put back the files already switched from the build that was live.
    fn put_back(
        &self,
        previous: &str,
        was: &BTreeMap<String, String>,
        done: &[String],
    ) -> Result<(), PluginError> {
        for file in done {
            let live_key = format!("{}{file}", self.live);
            if was.contains_key(file) {
                self.client.copy(
                    &self.builds_bucket,
                    &format!("{}{file}", self.build_prefix(previous)),
                    &self.bucket,
                    &live_key,
                    None,
                )?;
            } else {
                self.client.delete(&self.bucket, &live_key)?;
            }
        }
        Ok(())
    }
}

/// What switching takes: the files to copy (anything but HTML first, then
/// HTML, the index last of all, so pages never name assets not yet there)
/// and the files to delete afterwards.
fn work(
    want: &BTreeMap<String, String>,
    live: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let mut copies: Vec<String> = want
        .iter()
        .filter(|(f, d)| live.get(*f) != Some(*d))
        .map(|(f, _)| f.clone())
        .collect();
    copies.sort_by_key(|f| {
        let html = f.ends_with(".html") || f.ends_with(".htm");
        let index = f == "index.html";
        (html, index, f.clone())
    });
    let deletes = live
        .keys()
        .filter(|f| !want.contains_key(*f))
        .cloned()
        .collect();
    (copies, deletes)
}

/// The files (up to five) that differ, or None.
fn mismatch(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> Option<String> {
    let differing: Vec<&str> = want
        .keys()
        .chain(have.keys().filter(|f| !want.contains_key(*f)))
        .filter(|f| want.get(*f) != have.get(*f))
        .map(|f| f.as_str())
        .collect();
    if differing.is_empty() {
        return None;
    }
    let mut text = differing
        .iter()
        .take(5)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if differing.len() > 5 {
        text.push_str(&format!(" and {} more", differing.len() - 5));
    }
    Some(text)
}
