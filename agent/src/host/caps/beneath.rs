//! Opening paths beneath a directory by construction: every step holds a
//! file descriptor, never a path string checked first and opened later, so
//! a symbolic link swapped in between cannot lead out.
//!
//! The fast path is one `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
//! The kernel refuses (EXDEV) any resolution that would leave the root,
//! including through an absolute symbolic link, even one pointing back
//! inside (e.g. Debian's `/etc/nginx/sites-enabled/x ->
//! /etc/nginx/sites-available/x`). Those are then walked one component at
//! a time from the root's descriptor: each component opened with
//! `O_NOFOLLOW`, each link read from its parent descriptor and followed only
//! if it stays beneath the root (an absolute target must name a path inside
//! the root; `..` may not climb above it).

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Links followed in one resolution before giving up (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;

/// A resolution that would leave the root.
pub fn escapes() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a symbolic link leads outside the target's directories",
    )
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// A directory that paths are resolved beneath.
pub struct Root {
    /// The root as configured, and as resolved (absolute links may use either).
    paths: Vec<PathBuf>,
    fd: OwnedFd,
}

impl Root {
    /// Open the root itself (a directory the configuration names).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let mut paths = vec![normalize(path)];
        if let Ok(resolved) = std::fs::canonicalize(path)
            && !paths.contains(&resolved)
        {
            paths.push(resolved);
        }
        Ok(Root { paths, fd })
    }

    /// Open `rel` (relative, no `..`) beneath the root, following links
    /// that stay beneath it.
    pub fn open_at(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match rustix::fs::openat2(
            &self.fd,
            rel,
            flags | OFlags::CLOEXEC,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => Ok(fd),
            Err(Errno::XDEV) => {
                // Maybe an absolute link back inside: walk it.
                let found = self.walk(rel)?;
                reopen(&found, flags, mode)
            }
            Err(e) => Err(errno(e)),
        }
    }

    /// The directory holding `rel` (opened for reading, so it can be
    /// flushed) and `rel`'s last name, which is not resolved: operations on
    /// the name itself (rename over it, unlink it, read the link) act on
    /// what is there, not on what a link points to.
    pub fn parent_of(&self, rel: &Path) -> io::Result<(OwnedFd, OsString)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?
            .to_os_string();
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = self.open_at(parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok((fd, name))
    }

    /// Create the directories of `rel` that are missing, beneath the root.
    pub fn create_dirs(&self, rel: &Path) -> io::Result<()> {
        let mut so_far = PathBuf::new();
        for component in rel.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            let parent = self.open_at(&so_far, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
            match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno(e)),
            }
            so_far.push(name);
        }
        Ok(())
    }

    /// Resolve `rel` one component at a time (see the module's comment);
    /// returns an `O_PATH` descriptor of what it names.
    fn walk(&self, rel: &Path) -> io::Result<OwnedFd> {
        // Components still to resolve, in order, and the directories
        // resolved so far (the root at the bottom).
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, rel)?;
        pending.reverse();
        let mut stack: Vec<OwnedFd> = vec![dup(&self.fd)?];
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                if stack.len() == 1 {
                    return Err(escapes());
                }
                stack.pop();
                continue;
            }
            if name == "." {
                continue;
            }
            let here = stack.last().expect("the root stays");
            let fd = rustix::fs::openat(
                here,
                name.as_os_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            let stat = rustix::fs::fstat(&fd).map_err(errno)?;
            if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Symlink {
                stack.push(fd);
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(errno(Errno::LOOP));
            }
            let target =
                rustix::fs::readlinkat(here, name.as_os_str(), Vec::new()).map_err(errno)?;
            let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
            let mut spliced = Vec::new();
            if target.is_absolute() {
                let target = normalize(&target);
                let inside = self
                    .paths
                    .iter()
                    .find_map(|root| target.strip_prefix(root).ok())
                    .map(Path::to_path_buf)
                    .ok_or_else(escapes)?;
                stack.truncate(1);
                push_components(&mut spliced, &inside)?;
            } else {
                push_components(&mut spliced, &target)?;
            }
            pending.extend(spliced.into_iter().rev());
        }
        stack.pop().ok_or_else(escapes)
    }
}

fn push_components(out: &mut Vec<OsString>, path: &Path) -> io::Result<()> {
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name.to_os_string()),
            Component::ParentDir => out.push("..".into()),
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return Err(escapes()),
        }
    }
    Ok(())
}

/// `..` and `.` taken out of an absolute path, lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(errno)
}

/// Open what an `O_PATH` descriptor names with other flags, through
/// `/proc/self/fd`, which reopens that very object (no path lookup).
fn reopen(fd: &OwnedFd, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    if flags.contains(OFlags::PATH) {
        return dup(fd);
    }
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(proc.as_str(), flags | OFlags::CLOEXEC, mode).map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_inside_are_followed_and_links_outside_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root_path = dir.path().join("root");
        std::fs::create_dir_all(root_path.join("available")).unwrap();
        std::fs::create_dir_all(root_path.join("enabled")).unwrap();
        std::fs::write(root_path.join("available/site"), "inside").unwrap();
        std::fs::write(dir.path().join("secret"), "outside").unwrap();
        // Absolute link back inside, relative link inside, both outside.
        symlink(
            root_path.join("available/site"),
            root_path.join("enabled/abs"),
        )
        .unwrap();
        symlink("../available/site", root_path.join("enabled/rel")).unwrap();
        symlink(dir.path().join("secret"), root_path.join("enabled/out-abs")).unwrap();
        symlink("../../secret", root_path.join("enabled/out-rel")).unwrap();
        symlink(dir.path(), root_path.join("up")).unwrap();
        let root = Root::open(&root_path).unwrap();
        let read = |rel: &str| -> io::Result<String> {
            let fd = root.open_at(Path::new(rel), OFlags::RDONLY, Mode::empty())?;
            Ok(std::io::read_to_string(std::fs::File::from(fd)).unwrap())
        };
        assert_eq!(read("enabled/abs").unwrap(), "inside");
        assert_eq!(read("enabled/rel").unwrap(), "inside");
        for outside in ["enabled/out-abs", "enabled/out-rel", "up/secret"] {
            let error = read(outside).unwrap_err();
            assert_eq!(
                error.kind(),
                io::ErrorKind::PermissionDenied,
                "{outside}: {error}"
            );
        }
    }
}
