//! Compiled plugins cached on disk, keyed by the plugin's SHA-256 and the
//! engine's compatibility (wasmtime version and compilation settings), so an
//! agent compiles each plugin once, not at every start.
//!
//! The cache holds native code that the agent runs: its directory is created
//! private to the agent (0700) and lives in the agent's own state directory.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Feeds a `Hash` value into SHA-256, for a key that is stable across runs.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompileCache {
    pub fn new(engine: &Engine, dir: &Path) -> std::io::Result<CompileCache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Native code is loaded from here: only a directory this user owns
        // and nobody else may write will do.
        let meta = std::fs::symlink_metadata(dir)?;
        let uid = rustix::process::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the compile cache {} is not a directory of this user (uid {uid}) that \
                     others cannot write (owner uid {}, mode {:o}): compiled plugins are \
                     loaded from it as native code; use a private directory",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key,
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for these bytes: from the cache when present
    /// and loadable, else compiled now and stored.
    pub fn load(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.path(digest);
        if path.exists() {
            // SAFETY: the file was written by `store` below from wasmtime's own
            // compiler output, into a directory private to the agent; a file
            // that fails wasmtime's checks is recompiled.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "recompiling a cached plugin that cannot be loaded: {e}")
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = self.store(&path, &compiled) {
            tracing::warn!(path = %path.display(), "cannot cache the compiled plugin: {e}");
            return Ok((unsafe { Component::deserialize(engine, &compiled)? }, false));
        }
        // SAFETY: as above; loading from the file lets the OS share its pages.
        Ok((
            unsafe { Component::deserialize_file(engine, &path)? },
            false,
        ))
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(compiled)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    }
}
