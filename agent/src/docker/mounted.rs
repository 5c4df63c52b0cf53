//! Files as containers see them: which containers of the granted projects
//! bind-mount a host path, and a file read from inside a container through
//! Docker's archive API (so a check reads what the consumer reads).

use super::{DockerError, Engine, container_name, enum_text};
use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};

/// The most of a file `read_file` returns.
pub const MAX_FILE: usize = 32 << 20;

/// Where a container sees a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub container: String,
    pub destination: String,
    /// The host path itself is the mount's source (same inode to keep).
    pub single_file: bool,
    pub running: bool,
}

impl Engine {
    /// The containers of the granted projects that bind-mount `path`, as a
    /// file or inside a mounted directory, sorted by container name.
    pub async fn mounts_of(&self, path: &str) -> Result<Vec<Mount>, DockerError> {
        let given = PathBuf::from(path);
        if !given.is_absolute() {
            return Err(DockerError::Failed(format!(
                "mounts of `{path}`: the path must be absolute"
            )));
        }
        // Docker records a bind mount's source with its links resolved.
        let resolved = std::fs::canonicalize(&given).unwrap_or_else(|_| given.clone());
        let mut found = Vec::new();
        for project in &self.projects {
            for summary in self.project_summaries(project).await? {
                let Some(id) = summary.id else { continue };
                let Ok(inspect) = self.docker.inspect_container(&id, None).await else {
                    continue;
                };
                let running = inspect
                    .state
                    .as_ref()
                    .and_then(|s| s.running)
                    .unwrap_or(false);
                for mount in inspect.mounts.clone().unwrap_or_default() {
                    let kind = mount.typ.map(|t| enum_text(&t)).unwrap_or_default();
                    let (Some(source), Some(destination)) = (mount.source, mount.destination)
                    else {
                        continue;
                    };
                    if kind != "bind" {
                        continue;
                    }
                    let source = Path::new(&source);
                    for candidate in [&given, &resolved] {
                        if let Some(seen) = seen_at(source, &destination, candidate) {
                            found.push(Mount {
                                container: container_name(&inspect),
                                destination: seen,
                                single_file: candidate.as_path() == source,
                                running,
                            });
                            break;
                        }
                    }
                }
            }
        }
        found.sort_by(|a, b| (&a.container, &a.destination).cmp(&(&b.container, &b.destination)));
        found.dedup();
        Ok(found)
    }

    /// A file as the container `name` sees it, or None when it has none.
    pub async fn read_file(&self, name: &str, path: &str) -> Result<Option<Vec<u8>>, DockerError> {
        self.granted_container(name).await?;
        if !path.starts_with('/') {
            return Err(DockerError::Failed(format!(
                "reading `{path}` in {name}: the path must be absolute"
            )));
        }
        let mut stream = self.docker.download_from_container(
            name,
            Some(
                DownloadFromContainerOptionsBuilder::default()
                    .path(path)
                    .build(),
            ),
        );
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    archive.extend_from_slice(&bytes);
                    if archive.len() > MAX_FILE + 64 * 1024 {
                        return Err(DockerError::Failed(format!(
                            "{path} in {name} is larger than {} MiB",
                            MAX_FILE >> 20
                        )));
                    }
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(None),
                Err(e) => return Err(self.error(&format!("reading {path} in {name}"), e)),
            }
        }
        first_file(&archive)
            .map(Some)
            .map_err(|why| DockerError::Failed(format!("reading {path} in {name}: {why}")))
    }
}

/// Where a container whose mount takes `source` to `destination` sees the
/// host path `path`, if it does.
fn seen_at(source: &Path, destination: &str, path: &Path) -> Option<String> {
    let rest = path.strip_prefix(source).ok()?;
    if rest.as_os_str().is_empty() {
        return Some(destination.to_string());
    }
    Some(format!(
        "{}/{}",
        destination.trim_end_matches('/'),
        rest.display()
    ))
}

/// The contents of the first regular file of a tar archive (what Docker's
/// archive API sends for one file).
fn first_file(archive: &[u8]) -> Result<Vec<u8>, String> {
    let mut at = 0;
    while at + 512 <= archive.len() {
        let header = &archive[at..at + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let size_field = String::from_utf8_lossy(&header[124..136]);
        let size =
            usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .map_err(|_| format!("a damaged archive header (size `{size_field}`)"))?;
        let body = at + 512;
        let end = body + size;
        if end > archive.len() {
            return Err("the archive was cut short".into());
        }
        match header[156] {
            b'0' | 0 => return Ok(archive[body..end].to_vec()),
            b'2' => {
                let target = String::from_utf8_lossy(&header[157..257]);
                return Err(format!(
                    "it is a symbolic link to {}",
                    target.trim_end_matches('\0')
                ));
            }
            b'5' => return Err("it is a directory".into()),
            // Long names and extended headers come before the file's own.
            _ => at = body + size.div_ceil(512) * 512,
        }
    }
    Err("the archive holds no file".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: u8, name: &str, body: &[u8]) -> Vec<u8> {
        let mut header = vec![0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", body.len());
        header[124..136].copy_from_slice(size.as_bytes());
        header[156] = kind;
        let mut out = header;
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn the_file_of_an_archive_after_an_extended_header() {
        let mut archive = entry(b'x', "pax", b"30 path=etc/nginx/nginx.conf\n");
        archive.extend(entry(b'0', "nginx.conf", b"events {}\n"));
        archive.extend(vec![0u8; 1024]);
        assert_eq!(first_file(&archive).unwrap(), b"events {}\n");
        assert!(
            first_file(&entry(b'5', "etc", b""))
                .unwrap_err()
                .contains("directory")
        );
        let mut cut = entry(b'0', "a", b"0123456789");
        cut.truncate(515);
        assert!(first_file(&cut).unwrap_err().contains("cut short"));
    }

    #[test]
    fn a_path_is_seen_where_its_mount_takes_it() {
        let source = Path::new("/srv/app/nginx");
        assert_eq!(
            seen_at(source, "/etc/nginx", Path::new("/srv/app/nginx/nginx.conf")).as_deref(),
            Some("/etc/nginx/nginx.conf")
        );
        assert_eq!(
            seen_at(
                Path::new("/srv/app/nginx.conf"),
                "/etc/nginx/nginx.conf",
                Path::new("/srv/app/nginx.conf")
            )
            .as_deref(),
            Some("/etc/nginx/nginx.conf")
        );
        assert_eq!(
            seen_at(source, "/etc/nginx", Path::new("/srv/app/nginx2/x")),
            None
        );
    }
}
