//! `rewind:plugin/files`: the target's state directory and granted
//! directories, nothing else. Paths are checked lexically (no `..`) and after
//! resolving symbolic links, so a link inside a granted directory cannot lead
//! a plugin out of it. Writes are atomic and keep the file's mode and owner.

use crate::config::TargetConfig;
use crate::host::bindings::rewind::plugin::files::{FileError, FileInfo, Host};
use crate::host::state::CallState;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAX_READ: u64 = 32 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A path a plugin may use, and whether it lies in the target's state directory.
struct Allowed {
    path: PathBuf,
    in_state_dir: bool,
}

fn denied(target: &TargetConfig, path: &str, why: &str) -> FileError {
    let granted: Vec<String> = target
        .grant
        .files
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    FileError::Denied(format!(
        "target {}: {path}: {why} (allowed: the state directory{}{})",
        target.name,
        if granted.is_empty() { "" } else { " and " },
        granted.join(", ")
    ))
}

fn check(target: &TargetConfig, path: &str) -> Result<Allowed, FileError> {
    let requested = Path::new(path);
    if path.is_empty() {
        return Err(denied(target, path, "empty path"));
    }
    if requested
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(denied(target, path, "`..` is not allowed"));
    }
    let (root, full, in_state_dir) = if requested.is_relative() {
        fs::create_dir_all(&target.state_dir).map_err(|e| io_error(path, e))?;
        (
            target.state_dir.clone(),
            target.state_dir.join(requested),
            true,
        )
    } else {
        let root = target
            .grant
            .files
            .iter()
            .find(|dir| requested.starts_with(dir))
            .ok_or_else(|| denied(target, path, "outside the target's directories"))?;
        (root.clone(), requested.to_path_buf(), false)
    };
    // Resolve links: the file itself when it exists, else its nearest
    // existing ancestor, must stay under the (resolved) root.
    let root = fs::canonicalize(&root).map_err(|e| io_error(&root.display().to_string(), e))?;
    let mut probe = full.as_path();
    let resolved = loop {
        match fs::canonicalize(probe) {
            Ok(resolved) => break resolved,
            Err(_) => match probe.parent() {
                Some(parent) => probe = parent,
                None => return Err(denied(target, path, "cannot be resolved")),
            },
        }
    };
    if !resolved.starts_with(&root) {
        return Err(denied(
            target,
            path,
            "a symbolic link leads outside the target's directories",
        ));
    }
    Ok(Allowed {
        path: full,
        in_state_dir,
    })
}

fn io_error(path: &str, e: io::Error) -> FileError {
    match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound(path.to_string()),
        _ => FileError::Io(format!("{path}: {e}")),
    }
}

impl CallState {
    /// Check the path, then run a blocking file operation off the async
    /// runtime, bounded by the call's deadline and the capability's timeout.
    fn with_file<T: Send + 'static>(
        &self,
        path: &str,
        op: impl FnOnce(Allowed) -> Result<T, FileError> + Send + 'static,
    ) -> impl Future<Output = Result<T, FileError>> + Send + 'static {
        let checked = check(&self.target, path);
        let budget = self
            .deadline
            .saturating_duration_since(Instant::now())
            .min(CALL_TIMEOUT);
        let path = path.to_string();
        async move { run_blocking(checked?, budget, &path, op).await }
    }
}

async fn run_blocking<T: Send + 'static>(
    allowed: Allowed,
    budget: Duration,
    path: &str,
    op: impl FnOnce(Allowed) -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    {
        match tokio::time::timeout(budget, tokio::task::spawn_blocking(move || op(allowed))).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(FileError::Io(format!("{path}: {join}"))),
            Err(_) => Err(FileError::Io(format!("{path}: timed out after {budget:?}"))),
        }
    }
}

impl Host for CallState {
    async fn read(&mut self, path: String) -> Result<Vec<u8>, FileError> {
        let name = path.clone();
        self.with_file(&path, move |a| {
            let mut file = fs::File::open(&a.path).map_err(|e| io_error(&name, e))?;
            let size = file.metadata().map_err(|e| io_error(&name, e))?.len();
            if size > MAX_READ {
                return Err(FileError::TooLarge(size));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            Read::by_ref(&mut file)
                .take(MAX_READ + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| io_error(&name, e))?;
            if bytes.len() as u64 > MAX_READ {
                return Err(FileError::TooLarge(bytes.len() as u64));
            }
            Ok(bytes)
        })
        .await
    }

    async fn write(&mut self, path: String, contents: Vec<u8>) -> Result<(), FileError> {
        let name = path.clone();
        self.with_file(&path, move |a| {
            write_atomic(&a, &contents).map_err(|e| io_error(&name, e))
        })
        .await
    }

    async fn remove(&mut self, path: String) -> Result<(), FileError> {
        let name = path.clone();
        self.with_file(&path, move |a| {
            match fs::remove_file(&a.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error(&name, e)),
            }
            sync_parent(&a.path).map_err(|e| io_error(&name, e))
        })
        .await
    }

    async fn stat(&mut self, path: String) -> Result<Option<FileInfo>, FileError> {
        let name = path.clone();
        self.with_file(&path, move |a| match fs::metadata(&a.path) {
            Ok(meta) => Ok(Some(FileInfo {
                size: meta.len(),
                modified: meta.mtime().max(0) as u64,
                is_dir: meta.is_dir(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&name, e)),
        })
        .await
    }

    async fn read_dir(&mut self, dir: String) -> Result<Vec<String>, FileError> {
        let name = dir.clone();
        self.with_file(&dir, move |a| {
            let mut names = Vec::new();
            for entry in fs::read_dir(&a.path).map_err(|e| io_error(&name, e))? {
                let entry = entry.map_err(|e| io_error(&name, e))?;
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn sha256(&mut self, path: String) -> Result<String, FileError> {
        let name = path.clone();
        self.with_file(&path, move |a| {
            let mut file = fs::File::open(&a.path).map_err(|e| io_error(&name, e))?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buffer).map_err(|e| io_error(&name, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
            Ok(hex::encode(hasher.finalize()))
        })
        .await
    }

    async fn read_link(&mut self, path: String) -> Result<String, FileError> {
        let name = path.clone();
        self.with_file(&path, move |a| {
            fs::read_link(&a.path)
                .map(|p| p.display().to_string())
                .map_err(|e| io_error(&name, e))
        })
        .await
    }

    async fn set_link(&mut self, link: String, target: String) -> Result<(), FileError> {
        self.check_link_target(&link, &target)?;
        let name = link.clone();
        let written = PathBuf::from(&target);
        self.with_file(&link, move |a| {
            replace_link(&a.path, &written).map_err(|e| io_error(&name, e))
        })
        .await
    }
}

impl CallState {
    /// A link's new target must itself be a path the plugin could use.
    fn check_link_target(&self, link: &str, target: &str) -> Result<(), FileError> {
        let allowed = check(&self.target, link)?;
        let parent = allowed
            .path
            .parent()
            .ok_or_else(|| FileError::Io(format!("{link}: no parent directory")))?;
        let resolved = if Path::new(target).is_absolute() {
            PathBuf::from(target)
        } else {
            parent.join(target)
        };
        check(&self.target, &resolved.display().to_string()).map(|_| ())
    }
}

/// Make a link beside `path` pointing at `target`, rename it over `path`,
/// flush the directory.
fn replace_link(path: &Path, target: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let temp = path.with_file_name(format!(".{}.rewind-link", name.to_string_lossy()));
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &temp)?;
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_parent(path)
}

/// Write beside the file, flush, keep mode and owner, rename over, flush the
/// directory: readers see the old contents or the new, and a crash leaves one
/// of the two.
fn write_atomic(allowed: &Allowed, contents: &[u8]) -> io::Result<()> {
    let path = &allowed.path;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    if allowed.in_state_dir {
        fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let existing = fs::metadata(path).ok();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let temp = dir.join(format!(
        ".{}.rewind-{}-{nanos}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(contents)?;
        if let Some(meta) = &existing {
            file.set_permissions(meta.permissions())?;
            let own = file.metadata()?;
            if own.uid() != meta.uid() || own.gid() != meta.gid() {
                std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
            }
        }
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
