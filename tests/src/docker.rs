//! A real Docker Engine for the compose tests: test images built locally
//! (`FROM scratch` with Debian's static busybox; no registry is reached) and
//! compose projects brought up with `docker-compose`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use tempfile::TempDir;

/// The repository of the test images: `rewind-test/app:v1`, `:v2`, ...
pub const REPO: &str = "rewind-test/app";

/// Run a command and return its stdout; panic with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed? scripts/install-deps installs what the tests need)"));
    assert!(
        output.status.success(),
        "{program} {} failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fail loudly when the Docker Engine cannot be reached.
pub fn require_docker() {
    let output = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match output {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "these tests need a running Docker Engine: docker version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("these tests need the docker CLI and a running Docker Engine: {e}"),
    }
}

/// Build `rewind-test/app:<tag>`: busybox's httpd serving `/www/version`
/// (which holds `tag`), with a healthcheck on it. `healthy = false` builds
/// one whose server never finds the file, so its healthcheck fails.
pub fn build_image(tag: &str, healthy: bool) -> String {
    require_docker();
    let dir = TempDir::new().unwrap();
    std::fs::copy(busybox(), dir.path().join("busybox")).unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/version"), format!("{tag}\n")).unwrap();
    let serve = if healthy { "/www" } else { "/nowhere" };
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            r#"FROM scratch
COPY busybox /bin/busybox
COPY www /www
ENV APP_VERSION={tag} PATH=/bin
LABEL org.rewind.test.version={tag}
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/bin/busybox","wget","-q","-O","/dev/null","http://127.0.0.1:8080/version"]
ENTRYPOINT ["/bin/busybox"]
CMD ["sh","-c","echo serving build {tag}; exec httpd -f -vv -p 8080 -h {serve}"]
"#
        ),
    )
    .unwrap();
    build(&format!("{REPO}:{tag}"), dir.path())
}

/// The static busybox the test images are made of.
pub(crate) fn busybox() -> &'static Path {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a static busybox (Debian's busybox-static; scripts/install-deps installs it)")
}

/// `docker build` of a directory; the image's id.
pub(crate) fn build(reference: &str, dir: &Path) -> String {
    run(
        "docker",
        &["build", "-q", "-t", reference, &dir.display().to_string()],
    );
    image_id(reference).expect("the image just built")
}

/// The repository of the platform images of runbook 004's miniature.
pub const PLATFORM_REPO: &str = "rewind-test/platform";

/// The platform's admin API: `POST ?on` / `POST ?off` with the admin token
/// switch maintenance mode (kept in the /state volume, with its history);
/// `GET` says which it is.
const MAINTENANCE_CGI: &str = r#"#!/bin/sh
if [ "$REQUEST_METHOD" = POST ]; then
    if [ -z "$ADMIN_TOKEN" ] || [ "$HTTP_AUTHORIZATION" != "Bearer $ADMIN_TOKEN" ]; then
        printf 'HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\n\r\nunauthorized\n'
        exit 0
    fi
    case "$QUERY_STRING" in
        on|off) echo "$QUERY_STRING" > /state/maintenance; echo "$QUERY_STRING" >> /state/history ;;
        *) printf 'HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\r\non or off\n'; exit 0 ;;
    esac
fi
printf 'Content-Type: text/plain\r\n\r\n'
cat /state/maintenance
"#;

/// `rewind-test/platform:<tag>`, the image of every layer of the platform:
/// busybox's httpd serving `/version`, `/health/live` and the admin API
/// (`/cgi-bin/maintenance`). Its healthcheck asks `/health/live` and, where
/// the models directory is mounted, needs the release's model file
/// (`model`, a path under /models): the release's own requirement on the
/// host.
pub fn build_platform_image(tag: &str, model: &str) -> String {
    require_docker();
    let dir = TempDir::new().unwrap();
    std::fs::copy(busybox(), dir.path().join("busybox")).unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("health")).unwrap();
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    std::fs::write(www.join("version"), format!("{tag}\n")).unwrap();
    std::fs::write(www.join("health/live"), format!("ok {tag}\n")).unwrap();
    let cgi = www.join("cgi-bin/maintenance");
    std::fs::write(&cgi, MAINTENANCE_CGI).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
ENV PATH=/bin APP_VERSION={tag} MODEL={model}
LABEL org.rewind.test.version={tag}
HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["sh", "-c", "wget -q -O /dev/null http://127.0.0.1:8080/health/live && {{ [ ! -d /models ] || [ -e \"$MODEL\" ]; }}"]
CMD ["sh", "-c", "mkdir -p /state && {{ [ -f /state/maintenance ] || echo off > /state/maintenance; }} && exec httpd -f -p 8080 -h /www"]
"#
        ),
    )
    .unwrap();
    build(&format!("{PLATFORM_REPO}:{tag}"), dir.path())
}

/// The two releases most tests use, built once per test process.
pub fn v1_v2() -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| (build_image("v1", true), build_image("v2", true)))
}

/// The id of a local image, or None.
pub fn image_id(reference: &str) -> Option<String> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `docker inspect` of a container.
pub fn inspect(container: &str) -> Value {
    let text = run("docker", &["inspect", container]);
    let list: Value = serde_json::from_str(&text).unwrap();
    list[0].clone()
}

/// A compose project of three services, db <- api <- web, in a temporary
/// directory; taken down (volumes too) when dropped.
pub struct Project {
    pub name: String,
    pub dir: TempDir,
    /// Variables the compose file uses besides `TAG`.
    env: Vec<(String, String)>,
}

/// db: a named and an anonymous volume, a restart policy, its own
/// healthcheck; api: depends on db being healthy, a published port, two
/// networks with an alias, its own command; web: depends on api. api and
/// web run under an init process, so they stop at once on SIGTERM.
const COMPOSE: &str = r#"version: "2.4"
services:
  db:
    image: rewind-test/app:${TAG}
    environment:
      ROLE: db
      SHARED_SECRET: s3cret
    labels:
      org.rewind.test.role: db
    volumes:
      - data:/data
      - /scratch
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/version"]
      interval: 1s
      timeout: 2s
      retries: 3
  api:
    image: rewind-test/app:${TAG}
    depends_on:
      db:
        condition: service_healthy
    environment:
      ROLE: api
    ports:
      - "8080"
    networks:
      back:
        aliases: [api-internal]
      front: {}
    command: ["sh", "-c", "echo api up; exec httpd -f -vv -p 8080 -h /www"]
    stop_grace_period: 2s
    init: true
  web:
    image: rewind-test/app:${TAG}
    depends_on:
      - api
    environment:
      ROLE: web
    init: true
    networks:
      - front
networks:
  back: {}
  front: {}
volumes:
  data: {}
"#;

impl Project {
    /// A project named `rwt-<name>-<pid>`, not yet started.
    pub fn new(name: &str) -> Project {
        Project::with_file(name, COMPOSE, &[])
    }

    /// A project of the given compose file, whose other variables than
    /// `TAG` are `env`.
    pub fn with_file(name: &str, compose: &str, env: &[(&str, String)]) -> Project {
        require_docker();
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.path().join("docker-compose.yml"), compose).unwrap();
        Project {
            name: format!("rwt{}{}", name.replace(['-', '_'], ""), std::process::id()),
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.path().join("docker-compose.yml")
    }

    /// `docker-compose up -d` with every service on `rewind-test/app:<tag>`,
    /// then wait until all are healthy.
    pub fn up(&self, tag: &str) {
        let status = Command::new("docker-compose")
            .args(["-p", &self.name, "-f"])
            .arg(self.file())
            .args(["up", "-d", "--quiet-pull"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TAG", tag)
            .current_dir(self.dir.path())
            .output()
            .expect("running docker-compose (scripts/install-deps installs it)");
        assert!(
            status.status.success(),
            "docker-compose up failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        self.wait_healthy(Duration::from_secs(60));
    }

    /// The project's containers: service -> container name.
    pub fn containers(&self) -> Vec<(String, String)> {
        let text = run(
            "docker",
            &[
                "ps",
                "-a",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.name),
                "--format",
                "{{.Label \"com.docker.compose.service\"}} {{.Names}}",
            ],
        );
        let mut list: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .collect();
        list.sort();
        list
    }

    /// The container of a service.
    pub fn container(&self, service: &str) -> String {
        self.containers()
            .into_iter()
            .find(|(s, _)| s == service)
            .map(|(_, n)| n)
            .unwrap_or_else(|| panic!("service {service} has no container"))
    }

    pub fn wait_healthy(&self, within: Duration) {
        crate::wait::eventually(&format!("project {} is healthy", self.name), within, || {
            let states: Vec<(String, String)> = self
                .containers()
                .into_iter()
                .map(|(_, name)| {
                    let i = inspect(&name);
                    let health = i["State"]["Health"]["Status"]
                        .as_str()
                        .unwrap_or("none")
                        .to_string();
                    (name, health)
                })
                .collect();
            crate::wait::holds(
                !states.is_empty() && states.iter().all(|(_, h)| h == "healthy"),
                states,
            )
        });
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["-p", &self.name, "-f"])
            .arg(self.file())
            .args(["down", "-v", "--remove-orphans", "-t", "1"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TAG", "v1")
            .output();
        // Containers renamed by an interrupted recreate are not compose's.
        if let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.name),
            ])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
            }
        }
    }
}

/// What must survive a recreate of a container, from `docker inspect`:
/// everything it was given, normalised (aliases without its own id).
pub fn configuration(container: &str) -> Value {
    let i = inspect(container);
    let id = i["Id"].as_str().unwrap_or_default().to_string();
    let mut env: Vec<String> = i["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        // Compose v1 adds a Swarm scheduling hint naming the container it
        // replaced (`affinity:container==<id>`) whenever it recreates one:
        // its bookkeeping, not the service's configuration.
        .filter(|e| !e.starts_with("affinity:container=="))
        .collect();
    env.sort();
    let mut networks = serde_json::Map::new();
    for (name, endpoint) in i["NetworkSettings"]["Networks"].as_object().unwrap() {
        let mut aliases: Vec<String> = endpoint["Aliases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .filter(|a| !id.starts_with(a.as_str()))
            .collect();
        aliases.sort();
        networks.insert(name.clone(), serde_json::json!(aliases));
    }
    let mut mounts: Vec<String> = i["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}:{}:{}:{}",
                m["Type"].as_str().unwrap_or_default(),
                m["Name"]
                    .as_str()
                    .unwrap_or(m["Source"].as_str().unwrap_or_default()),
                m["Destination"].as_str().unwrap_or_default(),
                m["RW"]
            )
        })
        .collect();
    mounts.sort();
    serde_json::json!({
        "name": i["Name"],
        "image": i["Config"]["Image"],
        "env": env,
        "cmd": i["Config"]["Cmd"],
        "entrypoint": i["Config"]["Entrypoint"],
        "labels": i["Config"]["Labels"],
        "healthcheck": i["Config"]["Healthcheck"],
        "exposed_ports": i["Config"]["ExposedPorts"],
        "port_bindings": i["HostConfig"]["PortBindings"],
        "restart_policy": i["HostConfig"]["RestartPolicy"],
        "network_mode": i["HostConfig"]["NetworkMode"],
        "stop_timeout": i["Config"]["StopTimeout"],
        "networks": networks,
        "mounts": mounts,
    })
}
