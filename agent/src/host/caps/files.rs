//! `rewind:plugin/files`: the target's state directory and granted
//! directories, nothing else. Paths are checked lexically (no `..`), then
//! every operation works through descriptors opened beneath the directory
//! it belongs to (see `beneath`), so a symbolic link, even one swapped in
//! while the call runs, cannot lead a plugin out of it. Writes are atomic
//! and keep the file's mode and owner.

use super::beneath::{Root, escapes};
use crate::config::TargetConfig;
use crate::host::bindings::rewind::plugin::files::{FileError, FileInfo, Host};
use crate::host::state::CallState;
use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAX_READ: u64 = 32 << 20;
/// The most entries `read-dir` returns.
const MAX_ENTRIES: usize = 100_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A path a plugin may use: the directory it lies beneath, and the rest.
struct Allowed {
    root: PathBuf,
    rel: PathBuf,
    in_state_dir: bool,
}

impl Allowed {
    fn open_root(&self) -> io::Result<Root> {
        if self.in_state_dir {
            fs::create_dir_all(&self.root)?;
        }
        Root::open(&self.root)
    }
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

/// The lexical check: which directory the path belongs to, if any.
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
    if requested.is_relative() {
        return Ok(Allowed {
            root: target.state_dir.clone(),
            rel: requested.to_path_buf(),
            in_state_dir: true,
        });
    }
    let root = target
        .grant
        .files
        .iter()
        .filter(|dir| requested.starts_with(dir))
        .max_by_key(|dir| dir.components().count())
        .ok_or_else(|| denied(target, path, "outside the target's directories"))?;
    Ok(Allowed {
        root: root.clone(),
        rel: requested
            .strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        in_state_dir: false,
    })
}

/// An I/O error as the plugin sees it; an escape is a denial.
fn io_error(target: &TargetConfig, path: &str, e: io::Error) -> FileError {
    if e.kind() == io::ErrorKind::PermissionDenied && e.to_string() == escapes().to_string() {
        return denied(
            target,
            path,
            "a symbolic link leads outside the target's directories",
        );
    }
    match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound(path.to_string()),
        _ => FileError::Io(format!("{path}: {e}")),
    }
}

/// What an operation is given: the allowed path and its opened root.
struct Place {
    root: Root,
    rel: PathBuf,
    in_state_dir: bool,
}

impl Place {
    fn open(&self, flags: OFlags) -> io::Result<fs::File> {
        Ok(fs::File::from(self.root.open_at(
            &self.rel,
            flags,
            Mode::empty(),
        )?))
    }

    fn parent(&self) -> io::Result<(fs::File, OsString)> {
        let (fd, name) = self.root.parent_of(&self.rel)?;
        Ok((fs::File::from(fd), name))
    }
}

impl CallState {
    /// Check the path, then run a blocking file operation off the async
    /// runtime, bounded by the call's deadline and the capability's timeout.
    /// A write (`op`) of the whole of `contents` by `write`, counted
    /// against the state directory's quota. A torn-write fault lands the
    /// first half (`write`'s last argument false), then fails the call.
    async fn write_by(
        &mut self,
        op: &'static str,
        path: String,
        contents: Vec<u8>,
        write: fn(&Place, &[u8], bool) -> io::Result<()>,
    ) -> Result<(), FileError> {
        if self.gate(op, &path, true)? {
            let half = contents[..contents.len() / 2].to_vec();
            self.with_file(&path, move |p| write(p, &half, false))
                .await?;
            return Err(FileError::Io(format!(
                "{path}: the write stopped half-way {}",
                crate::host::state::INJECTED
            )));
        }
        let after = self
            .charge_state(&path, Some(contents.len() as u64))
            .await?;
        self.with_file(&path, move |p| write(p, &contents, true))
            .await?;
        if after.is_some() {
            self.state_usage = after;
        }
        Ok(())
    }

    fn with_file<T: Send + 'static>(
        &self,
        path: &str,
        op: impl FnOnce(&Place) -> io::Result<T> + Send + 'static,
    ) -> impl Future<Output = Result<T, FileError>> + Send + 'static {
        let checked = check(&self.target, path);
        let budget = self
            .deadline
            .saturating_duration_since(Instant::now())
            .min(CALL_TIMEOUT);
        let path = path.to_string();
        let target = self.target.clone();
        async move {
            let allowed = checked?;
            let name = path.clone();
            let work = tokio::task::spawn_blocking(move || {
                let place = Place {
                    root: allowed.open_root()?,
                    rel: allowed.rel,
                    in_state_dir: allowed.in_state_dir,
                };
                op(&place)
            });
            match tokio::time::timeout(budget, work).await {
                Ok(Ok(result)) => result.map_err(|e| io_error(&target, &name, e)),
                Ok(Err(join)) => Err(FileError::Io(format!("{name}: {join}"))),
                Err(_) => Err(FileError::Io(format!("{name}: timed out after {budget:?}"))),
            }
        }
    }
}

/// The bytes and regular files under a directory (links not followed).
fn usage_of(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut files) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

/// Read a whole file, refusing one over `MAX_READ` (as `TooLarge`).
fn read_all(mut file: fs::File) -> io::Result<Result<Vec<u8>, u64>> {
    let size = file.metadata()?.len();
    if size > MAX_READ {
        return Ok(Err(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    Read::by_ref(&mut file)
        .take(MAX_READ + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_READ {
        return Ok(Err(bytes.len() as u64));
    }
    Ok(Ok(bytes))
}

impl Host for CallState {
    async fn read(&mut self, path: String) -> Result<Vec<u8>, FileError> {
        self.gate("read", &path, false)?;
        self.with_file(&path, |p| read_all(p.open(OFlags::RDONLY)?))
            .await?
            .map_err(FileError::TooLarge)
    }

    async fn write(&mut self, path: String, contents: Vec<u8>) -> Result<(), FileError> {
        self.write_by("write", path, contents, |p, c, _| write_atomic(p, c))
            .await
    }

    async fn write_in_place(&mut self, path: String, contents: Vec<u8>) -> Result<(), FileError> {
        self.write_by("write-in-place", path, contents, write_in_place)
            .await
    }

    async fn remove(&mut self, path: String) -> Result<(), FileError> {
        self.gate("remove", &path, true)?;
        let after = self.charge_state(&path, None).await?;
        let removed = self
            .with_file(&path, |p| {
                let (dir, name) = p.parent()?;
                match rustix::fs::unlinkat(&dir, name.as_os_str(), rustix::fs::AtFlags::empty()) {
                    Ok(()) => dir.sync_all(),
                    Err(rustix::io::Errno::NOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
            .await;
        if removed.is_ok() && after.is_some() {
            self.state_usage = after;
        }
        removed
    }

    async fn stat(&mut self, path: String) -> Result<Option<FileInfo>, FileError> {
        self.gate("stat", &path, false)?;
        self.with_file(&path, |p| match p.open(OFlags::PATH) {
            Ok(file) => {
                let meta = file.metadata()?;
                Ok(Some(FileInfo {
                    size: meta.len(),
                    modified: meta.mtime().max(0) as u64,
                    is_dir: meta.is_dir(),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn read_dir(&mut self, dir: String) -> Result<Vec<String>, FileError> {
        self.gate("read-dir", &dir, false)?;
        let shown = dir.clone();
        let names = self
            .with_file(&dir, |p| {
                let fd =
                    p.root
                        .open_at(&p.rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
                let mut names = Vec::new();
                for entry in rustix::fs::Dir::read_from(&fd)? {
                    let entry = entry?;
                    let name = entry.file_name().to_bytes();
                    if name == b"." || name == b".." {
                        continue;
                    }
                    if names.len() == MAX_ENTRIES {
                        return Ok(Err(()));
                    }
                    names.push(String::from_utf8_lossy(name).into_owned());
                }
                names.sort();
                Ok(Ok(names))
            })
            .await?;
        names.map_err(|()| {
            FileError::Io(format!(
                "{shown}: more than {MAX_ENTRIES} entries; the files capability lists at most {MAX_ENTRIES}"
            ))
        })
    }

    async fn sha256(&mut self, path: String) -> Result<String, FileError> {
        self.gate("sha256", &path, false)?;
        self.with_file(&path, |p| {
            let mut file = p.open(OFlags::RDONLY)?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buffer)?;
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
        self.gate("read-link", &path, false)?;
        self.with_file(&path, |p| {
            let (dir, name) = p.parent()?;
            let target = rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new())?;
            Ok(String::from_utf8_lossy(target.as_bytes()).into_owned())
        })
        .await
    }

    async fn set_link(&mut self, link: String, target: String) -> Result<(), FileError> {
        self.gate("set-link", &link, true)?;
        self.check_link_target(&link, &target)?;
        self.with_file(&link, move |p| replace_link(p, Path::new(&target)))
            .await
    }
}

impl CallState {
    /// What the state directory would hold once `path` (relative: in the
    /// state directory) holds `size` bytes (None: is removed); refused with
    /// an error naming the quota when that is over it. None for paths
    /// outside the state directory.
    async fn charge_state(
        &mut self,
        path: &str,
        size: Option<u64>,
    ) -> Result<Option<(u64, u64)>, FileError> {
        let allowed = check(&self.target, path)?;
        if !allowed.in_state_dir {
            return Ok(None);
        }
        let dir = self.target.state_dir.clone();
        let known = self.state_usage;
        let file = dir.join(&allowed.rel);
        let counted =
            tokio::task::spawn_blocking(move || -> io::Result<((u64, u64), Option<u64>)> {
                let usage = match known {
                    Some(usage) => usage,
                    None => usage_of(&dir)?,
                };
                let old = fs::symlink_metadata(&file)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                Ok((usage, old))
            })
            .await
            .map_err(|e| FileError::Io(format!("{path}: {e}")))?;
        let ((bytes, files), old) = counted.map_err(|e| io_error(&self.target, path, e))?;
        let bytes_after = bytes.saturating_sub(old.unwrap_or(0)) + size.unwrap_or(0);
        let files_after = match (old.is_some(), size.is_some()) {
            (false, true) => files + 1,
            (true, false) => files.saturating_sub(1),
            _ => files,
        };
        let (quota, most) = (self.target.state_quota, self.target.state_files);
        if size.is_some() && (bytes_after > quota.0 || files_after > most) {
            return Err(FileError::Io(format!(
                "{path}: state-quota: the target's state directory would hold {} in {files_after} files, over its quota of {quota} in {most} files (state_quota and state_files of target {}); remove what the plugin no longer needs",
                crate::units::ByteSize(bytes_after),
                self.target.name
            )));
        }
        Ok(Some((bytes_after, files_after)))
    }

    /// Record a files call: an interrupted call is an `io` error, an
    /// injected fault its error; Ok(true) when the call must write half.
    fn gate(&mut self, op: &'static str, path: &str, writes: bool) -> Result<bool, FileError> {
        use crate::host::state::{Effect, Fault, INJECTED, INTERRUPTED, Verdict};
        // A relative path is in the target's state directory: bookkeeping.
        let effect = match (writes, Path::new(path).is_absolute()) {
            (false, _) => Effect::Reads,
            (true, false) => Effect::State,
            (true, true) => Effect::Writes,
        };
        match self.record("files", op, path, effect) {
            Verdict::Go => Ok(false),
            Verdict::Stop => Err(FileError::Io(format!("{path}: {INTERRUPTED}"))),
            Verdict::Fault(Fault::Timeout) => {
                Err(FileError::Io(format!("{path}: timed out {INJECTED}")))
            }
            Verdict::Fault(Fault::HalfWrite) if op == "write" => Ok(true),
            Verdict::Fault(_) => Err(FileError::Denied(format!("{path}: refused {INJECTED}"))),
        }
    }

    /// A link's new target must itself be a path the plugin could use
    /// (opening through it later is checked beneath the root again).
    fn check_link_target(&self, link: &str, target: &str) -> Result<(), FileError> {
        let allowed = check(&self.target, link)?;
        let link_path = allowed.root.join(&allowed.rel);
        let parent = link_path
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

fn temp_name(name: &OsString, what: &str) -> OsString {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".rewind-{what}-{}-{nanos}.tmp", std::process::id()));
    temp
}

/// Make a link beside the path pointing at `target`, rename it over the
/// path, flush the directory.
fn replace_link(place: &Place, target: &Path) -> io::Result<()> {
    let (dir, name) = place.parent()?;
    let temp = temp_name(&name, "link");
    rustix::fs::symlinkat(target, &dir, temp.as_os_str())?;
    if let Err(e) = rustix::fs::renameat(&dir, temp.as_os_str(), &dir, name.as_os_str()) {
        let _ = rustix::fs::unlinkat(&dir, temp.as_os_str(), rustix::fs::AtFlags::empty());
        return Err(e.into());
    }
    dir.sync_all()
}

/// Write beside the file, flush, keep mode and owner, rename over, flush the
/// directory: readers see the old contents or the new, and a crash leaves one
/// of the two.
/// Overwrite an existing file's contents, same inode (a file bind-mounted
/// into a container stays the file it sees); a missing file is created as
/// `write_atomic` does. `whole = false` leaves the old tail (a torn write).
fn write_in_place(place: &Place, contents: &[u8], whole: bool) -> io::Result<()> {
    let (dir, name) = place.parent()?;
    let fd = match rustix::fs::openat(
        &dir,
        name.as_os_str(),
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return write_atomic(place, contents),
        Err(e) => return Err(e.into()),
    };
    let mut file = fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    file.write_all(contents)?;
    if whole {
        file.set_len(contents.len() as u64)?;
    }
    file.sync_all()
}

fn write_atomic(place: &Place, contents: &[u8]) -> io::Result<()> {
    if place.in_state_dir
        && let Some(parent) = place.rel.parent()
    {
        place.root.create_dirs(parent)?;
    }
    let (dir, name) = place.parent()?;
    let existing = rustix::fs::statat(&dir, name.as_os_str(), rustix::fs::AtFlags::empty()).ok();
    let temp = temp_name(&name, "write");
    let fd = rustix::fs::openat(
        &dir,
        temp.as_os_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut file = fs::File::from(fd);
    let result = (|| {
        file.write_all(contents)?;
        if let Some(meta) = &existing {
            rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.st_mode & 0o7777))?;
            let own = file.metadata()?;
            if own.uid() != meta.st_uid || own.gid() != meta.st_gid {
                std::os::unix::fs::fchown(&file, Some(meta.st_uid), Some(meta.st_gid))?;
            }
        }
        file.sync_all()?;
        rustix::fs::renameat(&dir, temp.as_os_str(), &dir, name.as_os_str())?;
        Ok::<_, io::Error>(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dir, temp.as_os_str(), rustix::fs::AtFlags::empty());
    }
    result?;
    dir.sync_all()
}
