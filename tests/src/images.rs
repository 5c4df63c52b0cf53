//! Images of real servers for the compose tests, made from this machine's
//! Debian packages (no registry is reached): the programs and the shared
//! libraries they load (from `ldd`), on a static busybox for the shell and
//! the healthchecks. PostgreSQL and nginx are Debian's own builds.

use crate::docker::{build, busybox, require_docker, run};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use tempfile::TempDir;

/// A build context whose `root/` holds `paths` (files or directories of
/// this machine) but those whose path contains one of `skip`, and every
/// shared library their programs load.
fn host_root(paths: &[&str], skip: &[&str]) -> TempDir {
    require_docker();
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let copy = |path: &str, flag: &str| {
        let status = Command::new("cp")
            .args([flag, "--parents", path])
            .arg(&root)
            .current_dir("/")
            .status()
            .expect("cp");
        assert!(status.success(), "copying {path} into the image failed");
    };
    let mut libraries = BTreeSet::new();
    for path in paths {
        assert!(
            Path::new(path).exists(),
            "{path} is missing (scripts/install-deps installs the packages the tests use)"
        );
        copy(path, "-r");
        let files = run("find", &[path, "-type", "f"]);
        for file in files.lines() {
            if skip.iter().any(|s| file.contains(s)) {
                let _ = std::fs::remove_file(root.join(file.trim_start_matches('/')));
                let _ = std::fs::remove_dir_all(root.join(file.trim_start_matches('/')));
                continue;
            }
            let Ok(output) = Command::new("ldd").arg(file).output() else {
                continue;
            };
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let library = match line.split_once("=>") {
                    Some((_, rest)) => rest.split_whitespace().next(),
                    None => line
                        .split_whitespace()
                        .next()
                        .filter(|l| l.starts_with('/')),
                };
                if let Some(library) = library.filter(|l| l.starts_with('/')) {
                    libraries.insert(library.to_string());
                }
            }
        }
    }
    for library in &libraries {
        copy(library, "-L");
    }
    // Some of the host's directories are private to root; the servers run
    // as other users.
    run("chmod", &["-R", "a+rX", &root.display().to_string()]);
    std::fs::copy(busybox(), dir.path().join("busybox")).unwrap();
    dir
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `rewind-test/postgres:<major>`: Debian's PostgreSQL server as a compose
/// service would run it. On its first start (an empty data volume) it
/// makes the cluster with `POSTGRES_USER` (a superuser, password
/// `POSTGRES_PASSWORD`, scram) and `POSTGRES_DB`; it listens on 5432 and
/// is healthy once it answers.
pub fn postgres_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let bin = crate::postgres::bin_dir();
        let home = bin.parent().unwrap().display().to_string();
        let major = bin
            .parent()
            .and_then(|p| p.file_name())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let share = format!("/usr/share/postgresql/{major}");
        // Without the JIT: it would bring LLVM's 100 MiB.
        let dir = host_root(&[&home, &share, "/usr/share/zoneinfo"], &["llvmjit", "/bitcode/"]);
        std::fs::create_dir_all(dir.path().join("pgdata")).unwrap();
        write_script(
            &dir.path().join("start"),
            &format!(
                r#"#!/bin/sh
set -e
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pw
    {home}/bin/initdb -D "$data" -U "$POSTGRES_USER" --pwfile=/tmp/pw -A scram-sha-256 --no-locale -E UTF8 --no-sync >/dev/null
    rm /tmp/pw
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\"" | {home}/bin/postgres --single -D "$data" postgres >/dev/null
fi
exec {home}/bin/postgres -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp
"#
            ),
        );
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                r#"FROM scratch
COPY root/ /
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo 'root:x:0:0::/root:/bin/sh' > /etc/passwd && echo 'postgres:x:999:999::/var/lib/postgresql:/bin/sh' >> /etc/passwd && echo 'postgres:x:999:' > /etc/group && mkdir -p /tmp && chmod 1777 /tmp
COPY --chown=999:999 pgdata /var/lib/postgresql/data
COPY start /start
ENV PATH=/bin:{home}/bin
USER 999:999
HEALTHCHECK --interval=1s --timeout=3s --retries=30 CMD ["{home}/bin/pg_isready", "-q", "-h", "127.0.0.1"]
CMD ["/start"]
"#
            ),
        )
        .unwrap();
        let reference = format!("rewind-test/postgres:{major}");
        build(&reference, dir.path());
        reference
    })
}

/// `rewind-test/nginx:1`: Debian's nginx, in the foreground, reading
/// `/etc/nginx/nginx.conf` (which a compose file bind-mounts); healthy
/// once it answers on port 80.
pub fn nginx_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = host_root(&["/usr/sbin/nginx"], &[]);
        std::fs::write(
            dir.path().join("Dockerfile"),
            r#"FROM scratch
COPY root/ /
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc/nginx /var/log/nginx /var/lib/nginx /run /tmp && echo 'root:x:0:0::/root:/bin/sh' > /etc/passwd && echo 'root:x:0:' > /etc/group && echo 'events {}' > /etc/nginx/nginx.conf
ENV PATH=/bin:/usr/sbin
HEALTHCHECK --interval=1s --timeout=2s --retries=10 CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
CMD ["nginx", "-g", "daemon off;"]
"#,
        )
        .unwrap();
        let reference = "rewind-test/nginx:1".to_string();
        build(&reference, dir.path());
        reference
    })
}

/// The health page of the backend: its release, and the settings it runs
/// with, from its environment.
const HEALTH_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "version: $APP_VERSION"
echo "feature_x: $FEATURE_X"
echo "secret_key: ${SECRET_KEY:+set}"
"#;

/// `rewind-test/backend:<tag>`: a backend that reads its settings from its
/// environment (a compose `env_file:`) and reports them on
/// `/cgi-bin/health` (port 8080).
pub fn backend_image(tag: &str) -> String {
    require_docker();
    let dir = TempDir::new().unwrap();
    std::fs::copy(busybox(), dir.path().join("busybox")).unwrap();
    std::fs::create_dir_all(dir.path().join("www/cgi-bin")).unwrap();
    write_script(&dir.path().join("www/cgi-bin/health"), HEALTH_CGI);
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
ENV PATH=/bin APP_VERSION={tag}
HEALTHCHECK --interval=1s --timeout=2s --retries=10 CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/cgi-bin/health"]
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"#
        ),
    )
    .unwrap();
    let reference = format!("rewind-test/backend:{tag}");
    build(&reference, dir.path());
    reference
}
