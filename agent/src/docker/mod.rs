//! The Docker Engine operations behind the `docker` capability, done with
//! bollard on the agent's side of the sandbox, and only on granted compose
//! projects.
//!
//! Recreating a container keeps what the container was given (environment,
//! mounts and anonymous volumes, networks and aliases, ports, labels, restart
//! policy, healthcheck, command), not what its old image supplied: values
//! equal to the old image's defaults are dropped so that the new image's
//! defaults apply. The new container is created before the old one is
//! stopped, and the old one is put back if the new one cannot start, so a
//! service is never left stopped by a recreate that could not be done.

use bollard::Docker;
use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig,
    ImageInspect, NetworkConnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, RestartContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
pub use spec::Spec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

mod mounted;
mod spec;

/// The Docker daemon's socket when a target does not name one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The most of a container's log that is returned.
const MAX_LOGS: usize = 64 << 10;
/// How often a container's health is looked at while waiting for it.
const POLL: Duration = Duration::from_millis(50);
/// How many log lines an unhealthy container's error carries.
const ERROR_LOG_LINES: usize = 20;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";
const DEPENDS_ON_LABEL: &str = "com.docker.compose.depends_on";
const CONFIG_FILES_LABEL: &str = "com.docker.compose.project.config_files";
const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
/// Labels compose derives from the image or its own version: they change
/// with a rollback, so they are not part of a container's fingerprint and
/// are handed to the plugin to be put back with the image.
pub const COMPOSE_BOOKKEEPING_LABELS: &[&str] = &[
    "com.docker.compose.config-hash",
    "com.docker.compose.image",
    "com.docker.compose.version",
];
/// The suffix of the name an old container has while its replacement starts.
const OLD_SUFFIX: &str = "-rewind-old";
/// The suffix of the name a new container has until the old one is stopped.
const NEW_SUFFIX: &str = "-rewind-new";

/// Why a Docker operation failed (mirrors the WIT `docker-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    #[error("denied: {0}")]
    Denied(String),
    #[error("Docker unavailable: {0}")]
    Unavailable(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("failed: {0}")]
    Failed(String),
}

/// A container of a compose project, as the plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub service: String,
    pub image: String,
    pub image_id: String,
    pub state: String,
    pub health: Option<String>,
    pub fingerprint: String,
    pub depends_on: Vec<String>,
    pub compose_labels: Vec<(String, String)>,
}

/// An image present locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: String,
    pub tags: Vec<String>,
    pub digests: Vec<String>,
}

/// A connection to one Docker daemon, limited to some compose projects.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    socket: PathBuf,
    projects: Vec<String>,
}

/// Negotiated clients, one per socket: negotiation costs a request.
static CLIENTS: LazyLock<Mutex<HashMap<PathBuf, Docker>>> = LazyLock::new(Default::default);

impl Engine {
    /// Connect to the daemon at `socket`, for the compose `projects` granted.
    pub async fn connect(socket: &Path, projects: &[String]) -> Result<Engine, DockerError> {
        let cached = CLIENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(socket)
            .cloned();
        let docker = match cached {
            Some(docker) => docker,
            None => {
                let unreachable = |e: &dyn std::fmt::Display| {
                    DockerError::Unavailable(format!(
                        "cannot reach the Docker daemon at unix://{}: {e}",
                        socket.display()
                    ))
                };
                if !socket.exists() {
                    return Err(unreachable(&"no such socket"));
                }
                let docker = Docker::connect_with_unix(
                    &socket.to_string_lossy(),
                    120,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(&e))?
                .negotiate_version()
                .await
                .map_err(|e| unreachable(&e))?;
                CLIENTS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(socket.to_path_buf(), docker.clone());
                docker
            }
        };
        Ok(Engine {
            docker,
            socket: socket.to_path_buf(),
            projects: projects.to_vec(),
        })
    }

    fn error(&self, what: &str, e: bollard::errors::Error) -> DockerError {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError {
                status_code: 404,
                message,
            } => DockerError::NotFound(format!("{what}: {message}")),
            E::DockerResponseServerError { message, .. } => {
                DockerError::Failed(format!("{what}: {message}"))
            }
            E::RequestTimeoutError => {
                DockerError::TimedOut(format!("{what}: the Docker daemon did not answer in time"))
            }
            other => {
                let text = other.to_string();
                let lower = text.to_lowercase();
                if lower.contains("connect") || lower.contains("no such file") {
                    DockerError::Unavailable(format!(
                        "{what}: cannot reach the Docker daemon at unix://{}: {text}",
                        self.socket.display()
                    ))
                } else {
                    DockerError::Failed(format!("{what}: {text}"))
                }
            }
        }
    }

    fn check_project(&self, project: &str) -> Result<(), DockerError> {
        if self.projects.iter().any(|p| p == project) {
            Ok(())
        } else {
            Err(DockerError::Denied(format!(
                "compose project `{project}` is not granted (granted: {})",
                if self.projects.is_empty() {
                    "none".to_string()
                } else {
                    self.projects.join(", ")
                }
            )))
        }
    }

    /// Inspect a container of a granted project.
    async fn granted_container(&self, name: &str) -> Result<ContainerInspectResponse, DockerError> {
        let inspect = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|e| self.error(&format!("container {name}"), e))?;
        let project = labels_of(&inspect)
            .get(PROJECT_LABEL)
            .cloned()
            .unwrap_or_default();
        if project.is_empty() {
            return Err(DockerError::Denied(format!(
                "container {name} is not part of a compose project"
            )));
        }
        self.check_project(&project)?;
        Ok(inspect)
    }

    /// The containers, running or not, that carry a project's label.
    async fn project_summaries(
        &self,
        project: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{PROJECT_LABEL}={project}")],
        )]);
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.error(&format!("project {project}"), e))
    }

    /// The containers of a compose project, sorted by service then name.
    pub async fn list_containers(&self, project: &str) -> Result<Vec<Container>, DockerError> {
        self.check_project(project)?;
        let summaries = self.project_summaries(project).await?;
        let mut files_depends: Option<BTreeMap<String, Vec<String>>> = None;
        let mut containers = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            let labels = summary.labels.unwrap_or_default();
            if labels.get(ONEOFF_LABEL).is_some_and(|v| v == "True") {
                continue;
            }
            let names = summary.names.unwrap_or_default();
            let name = names.first().map(|n| n.trim_start_matches('/').to_string());
            if name
                .as_deref()
                .is_some_and(|n| n.ends_with(OLD_SUFFIX) || n.ends_with(NEW_SUFFIX))
            {
                continue;
            }
            let inspect = match self.docker.inspect_container(&id, None).await {
                Ok(inspect) => inspect,
                // Removed between the list and the inspect.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => return Err(self.error(&format!("container {id}"), e)),
            };
            let service = labels.get(SERVICE_LABEL).cloned().unwrap_or_default();
            let depends_on = match labels.get(DEPENDS_ON_LABEL) {
                Some(value) => parse_depends_label(value),
                None => {
                    if files_depends.is_none() {
                        files_depends = Some(depends_from_files(&labels));
                    }
                    files_depends
                        .as_ref()
                        .and_then(|m| m.get(&service).cloned())
                        .unwrap_or_default()
                }
            };
            containers.push(self.describe(&inspect, depends_on).await?);
        }
        containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(containers)
    }

    /// What the plugin sees of an inspected container.
    async fn describe(
        &self,
        inspect: &ContainerInspectResponse,
        depends_on: Vec<String>,
    ) -> Result<Container, DockerError> {
        let labels = labels_of(inspect);
        let image_id = inspect.image.clone().unwrap_or_default();
        let image_config = self.image_config(&image_id).await;
        let state = inspect.state.as_ref();
        Ok(Container {
            id: inspect.id.clone().unwrap_or_default(),
            name: container_name(inspect),
            service: labels.get(SERVICE_LABEL).cloned().unwrap_or_default(),
            image: inspect
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            image_id,
            state: state
                .and_then(|s| s.status)
                .map(|s| enum_text(&s))
                .unwrap_or_default(),
            health: state.and_then(health_of),
            fingerprint: fingerprint(inspect, image_config.as_ref()),
            depends_on,
            compose_labels: COMPOSE_BOOKKEEPING_LABELS
                .iter()
                .filter_map(|k| labels.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect(),
        })
    }

    /// The configuration of an image present locally (None when it is gone).
    async fn image_config(&self, image: &str) -> Option<ContainerConfig> {
        let inspect = self.docker.inspect_image(image).await.ok()?;
        let config = inspect.config?;
        Some(ContainerConfig {
            user: config.user,
            exposed_ports: config.exposed_ports,
            env: config.env,
            cmd: config.cmd,
            healthcheck: config.healthcheck,
            volumes: config.volumes,
            working_dir: config.working_dir,
            entrypoint: config.entrypoint,
            labels: config.labels,
            stop_signal: config.stop_signal,
            shell: config.shell,
            ..Default::default()
        })
    }

    /// An image present locally, or None.
    pub async fn inspect_image(&self, reference: &str) -> Result<Option<Image>, DockerError> {
        match self.docker.inspect_image(reference).await {
            Ok(ImageInspect {
                id,
                repo_tags,
                repo_digests,
                ..
            }) => Ok(Some(Image {
                id: id.unwrap_or_default(),
                tags: repo_tags.unwrap_or_default(),
                digests: repo_digests.unwrap_or_default(),
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.error(&format!("image {reference}"), e)),
        }
    }

    /// Replace a container by one on `image`, keeping its configuration and
    /// setting `labels` (compose's bookkeeping labels) on the new one.
    pub async fn recreate(
        &self,
        name: &str,
        image: &str,
        labels: &[(String, String)],
    ) -> Result<Container, DockerError> {
        let Some(old) = self.settled(name).await? else {
            return Err(DockerError::NotFound(format!(
                "container {name}: no such container"
            )));
        };
        // Nothing is stopped unless the new image is here.
        let Some(new_image) = self.inspect_image(image).await? else {
            return Err(DockerError::NotFound(format!(
                "image {image} is not present locally; nothing was stopped (load or build it first)"
            )));
        };
        let old_image_config = match old.image.as_deref() {
            Some(id) => self.image_config(id).await,
            None => None,
        };
        let new_image_config = self.image_config(&new_image.id).await;
        let body = create_body(
            &old,
            old_image_config.as_ref(),
            new_image_config.as_ref(),
            image,
            labels,
        );
        self.replace(
            &container_name(&old),
            Some(&old),
            body,
            extra_networks(&old),
            image,
        )
        .await
    }

    /// Replace a container by one created exactly from a spec that this
    /// agent sealed (see [`spec`]), or create it when no container has the
    /// name. The spec must be of a granted project and, when a container is
    /// replaced, of its project and service.
    pub async fn recreate_from(
        &self,
        name: &str,
        document: &str,
        seal_key: &Path,
    ) -> Result<Container, DockerError> {
        let spec = spec::unseal(document, seal_key)?;
        let project = spec.label(PROJECT_LABEL).unwrap_or_default();
        let service = spec.label(SERVICE_LABEL).unwrap_or_default();
        if project.is_empty() {
            return Err(DockerError::Denied(format!(
                "container {name}: the configuration given is not of a compose project"
            )));
        }
        self.check_project(project)?;
        let old = match self.settled(name).await {
            Ok(old) => old,
            Err(DockerError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(old) = &old {
            let labels = labels_of(old);
            let (old_project, old_service) = (
                labels
                    .get(PROJECT_LABEL)
                    .map(String::as_str)
                    .unwrap_or_default(),
                labels
                    .get(SERVICE_LABEL)
                    .map(String::as_str)
                    .unwrap_or_default(),
            );
            if (old_project, old_service) != (project, service) {
                return Err(DockerError::Denied(format!(
                    "container {name} is service {old_service} of project {old_project}; the \
                     configuration given is of service {service} of project {project}"
                )));
            }
        }
        // Nothing is stopped unless the image is here; its tag is used
        // where the tag still names it.
        let Some(image) = self.inspect_image(&spec.image_id).await? else {
            return Err(DockerError::NotFound(format!(
                "image {} ({}) is not present locally; nothing was stopped (load or build it first)",
                spec.image, spec.image_id
            )));
        };
        let reference = match self.inspect_image(&spec.image).await? {
            Some(tagged) if tagged.id == image.id => spec.image.clone(),
            _ => image.digests.first().cloned().unwrap_or(image.id),
        };
        let body = spec.create_body(&reference);
        let name = old
            .as_ref()
            .map(container_name)
            .unwrap_or_else(|| name.to_string());
        self.replace(&name, old.as_ref(), body, spec.extra_networks(), &reference)
            .await
    }

    /// The container `name` once a recreate cut off half-way is settled:
    /// the agent died between the renames (the old container is parked
    /// under its temporary name), or before the new one's health was
    /// confirmed. None when there is no such container.
    async fn settled(&self, name: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        let parked = format!("{name}{OLD_SUFFIX}");
        let old = match self.granted_container(name).await {
            Err(DockerError::NotFound(_)) if self.granted_container(&parked).await.is_ok() => {
                self.rename(&parked, name).await?;
                self.granted_container(name).await?
            }
            Err(DockerError::NotFound(_)) => return Ok(None),
            other => other?,
        };
        let name = container_name(&old);
        let parked = format!("{name}{OLD_SUFFIX}");
        if self.docker.inspect_container(&parked, None).await.is_ok() {
            // A previous recreate whose health was never confirmed: keep its
            // container if it is healthy, else put the old one back.
            if self.is_healthy(&name).await {
                self.remove(&parked).await?;
            } else {
                self.put_back(&name).await?;
            }
        }
        self.granted_container(&name).await.map(Some)
    }

    /// Create `body` under a temporary name, then stop `old` (if any), swap
    /// the names and start the new one; the old one is put back when that
    /// fails, and kept aside (stopped) until `wait_healthy` settles it.
    async fn replace(
        &self,
        name: &str,
        old: Option<&ContainerInspectResponse>,
        body: ContainerCreateBody,
        networks: Vec<(String, EndpointSettings)>,
        image: &str,
    ) -> Result<Container, DockerError> {
        let parked = format!("{name}{OLD_SUFFIX}");
        let staged = format!("{name}{NEW_SUFFIX}");
        if self.docker.inspect_container(&staged, None).await.is_ok() {
            self.remove(&staged).await?;
        }
        self.docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&staged)
                        .build(),
                ),
                body,
            )
            .await
            .map_err(|e| self.error(&format!("creating a replacement for {name}"), e))?;
        for (network, endpoint) in networks {
            if let Err(e) = self
                .docker
                .connect_network(
                    &network,
                    NetworkConnectRequest {
                        container: staged.clone(),
                        endpoint_config: Some(endpoint),
                    },
                )
                .await
            {
                let error = self.error(&format!("connecting {staged} to {network}"), e);
                let _ = self.remove(&staged).await;
                return Err(error);
            }
        }

        let was_running = old
            .and_then(|o| o.state.as_ref())
            .and_then(|s| s.running)
            .unwrap_or(false);
        if let Some(old) = old {
            let stop_timeout = stop_timeout(old);
            self.docker
                .stop_container(
                    name,
                    Some(
                        StopContainerOptionsBuilder::default()
                            .t(stop_timeout as i32)
                            .build(),
                    ),
                )
                .await
                .or_else(not_modified)
                .map_err(|e| self.error(&format!("stopping {name}"), e))?;
        }
        let swap = async {
            if old.is_some() {
                self.rename(name, &parked).await?;
            }
            self.rename(&staged, name).await?;
            self.docker
                .start_container(name, None)
                .await
                .map_err(|e| self.error(&format!("starting {name} on {image}"), e))
        };
        if let Err(error) = swap.await {
            // Put the old container back as it was.
            let logs = self.logs(name, ERROR_LOG_LINES as u32).await.ok();
            if self.docker.inspect_container(&parked, None).await.is_ok() {
                let current = self.docker.inspect_container(name, None).await;
                if current.is_ok() {
                    let _ = self.remove(name).await;
                }
                let _ = self.rename(&parked, name).await;
            } else if old.is_none() {
                let _ = self.remove(name).await;
            }
            let _ = self.remove(&staged).await;
            if was_running {
                let _ = self.docker.start_container(name, None).await;
            }
            return Err(DockerError::Failed(format!(
                "{error}; {}{}",
                if old.is_some() {
                    "the old container was put back"
                } else {
                    "the new container was removed"
                },
                logs.filter(|l| !l.trim().is_empty())
                    .map(|l| format!("; its replacement's last log lines:\n{l}"))
                    .unwrap_or_default()
            )));
        }
        // The old container stays (stopped, as `<name>-rewind-old`) until
        // `wait_healthy` sees the new one healthy; otherwise it comes back.

        let inspect = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|e| self.error(&format!("container {name}"), e))?;
        let labels = labels_of(&inspect);
        let service = labels.get(SERVICE_LABEL).cloned().unwrap_or_default();
        let depends_on = match labels.get(DEPENDS_ON_LABEL) {
            Some(value) => parse_depends_label(value),
            None => depends_from_files(&labels)
                .remove(&service)
                .unwrap_or_default(),
        };
        self.describe(&inspect, depends_on).await
    }

    /// A container's spec, sealed with the agent's key.
    pub async fn inspect_config(&self, name: &str, seal_key: &Path) -> Result<String, DockerError> {
        let inspect = self.granted_container(name).await?;
        spec::seal(&Spec::of(&inspect), seal_key)
    }

    /// Send a signal to a container's main process.
    pub async fn signal(&self, name: &str, signal: &str) -> Result<(), DockerError> {
        self.granted_container(name).await?;
        let valid = signal
            .strip_prefix("SIG")
            .unwrap_or(signal)
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            && !signal.is_empty();
        if !valid {
            return Err(DockerError::Failed(format!(
                "`{signal}` is not a signal name (e.g. SIGHUP)"
            )));
        }
        self.docker
            .kill_container(
                name,
                Some(
                    bollard::query_parameters::KillContainerOptionsBuilder::default()
                        .signal(signal)
                        .build(),
                ),
            )
            .await
            .map_err(|e| self.error(&format!("signalling {name} with {signal}"), e))
    }

    /// Whether a container runs and passes its healthcheck (if it has one).
    async fn is_healthy(&self, name: &str) -> bool {
        let Ok(inspect) = self.docker.inspect_container(name, None).await else {
            return false;
        };
        let state = inspect.state.unwrap_or_default();
        state.running.unwrap_or(false)
            && matches!(health_of(&state).as_deref(), None | Some("healthy"))
    }

    /// Put the container parked by a recreate back under `name`, in place of
    /// its replacement, and start it.
    async fn put_back(&self, name: &str) -> Result<(), DockerError> {
        let parked = format!("{name}{OLD_SUFFIX}");
        if self.docker.inspect_container(name, None).await.is_ok() {
            self.remove(name).await?;
        }
        self.rename(&parked, name).await?;
        self.docker
            .start_container(name, None)
            .await
            .or_else(not_modified)
            .map_err(|e| self.error(&format!("starting {name} again"), e))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), DockerError> {
        self.docker
            .rename_container(
                from,
                RenameContainerOptionsBuilder::default().name(to).build(),
            )
            .await
            .map_err(|e| self.error(&format!("renaming {from} to {to}"), e))
    }

    /// Remove a container, keeping its volumes.
    async fn remove(&self, name: &str) -> Result<(), DockerError> {
        self.docker
            .remove_container(
                name,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(false)
                        .build(),
                ),
            )
            .await
            .map_err(|e| self.error(&format!("removing {name}"), e))
    }

    /// Restart a container.
    pub async fn restart(&self, name: &str) -> Result<(), DockerError> {
        let inspect = self.granted_container(name).await?;
        let timeout = stop_timeout(&inspect);
        self.docker
            .restart_container(
                name,
                Some(
                    RestartContainerOptionsBuilder::default()
                        .t(timeout as i32)
                        .build(),
                ),
            )
            .await
            .map_err(|e| self.error(&format!("restarting {name}"), e))
    }

    /// Wait until a container's healthcheck passes, or it runs without one.
    /// A container just recreated settles here: healthy, its old container
    /// is removed; not healthy in time, the old one is put back and the
    /// error says so.
    pub async fn wait_healthy(&self, name: &str, timeout: Duration) -> Result<(), DockerError> {
        let waited = self.wait_healthy_only(name, timeout).await;
        let parked = format!("{name}{OLD_SUFFIX}");
        if self.docker.inspect_container(&parked, None).await.is_err() {
            return waited;
        }
        match waited {
            Ok(()) => self.remove(&parked).await,
            Err(error) => {
                let restored = self.put_back(name).await;
                let what = match restored {
                    Ok(()) => "the old container was put back and started".to_string(),
                    Err(e) => format!("putting the old container back failed too: {e}"),
                };
                Err(match error {
                    DockerError::Unhealthy(t) => DockerError::Unhealthy(format!("{t}; {what}")),
                    DockerError::TimedOut(t) => DockerError::TimedOut(format!("{t}; {what}")),
                    DockerError::Failed(t) => DockerError::Failed(format!("{t}; {what}")),
                    other => other,
                })
            }
        }
    }

    async fn wait_healthy_only(&self, name: &str, timeout: Duration) -> Result<(), DockerError> {
        self.granted_container(name).await?;
        let until = Instant::now() + timeout;
        loop {
            let inspect = self
                .docker
                .inspect_container(name, None)
                .await
                .map_err(|e| self.error(&format!("container {name}"), e))?;
            let state = inspect.state.clone().unwrap_or_default();
            let health = health_of(&state);
            let running = state.running.unwrap_or(false);
            let restarting = state.restarting.unwrap_or(false);
            match health.as_deref() {
                Some("healthy") if running => return Ok(()),
                None if running && !restarting => return Ok(()),
                Some("unhealthy") => {
                    let probe = state
                        .health
                        .as_ref()
                        .and_then(|h| h.log.as_ref())
                        .and_then(|log| log.last())
                        .and_then(|r| r.output.clone())
                        .unwrap_or_default();
                    return Err(DockerError::Unhealthy(format!(
                        "container {name} failed its healthcheck ({}){}",
                        probe.trim(),
                        self.log_tail(name).await
                    )));
                }
                _ => {}
            }
            if !running
                && !restarting
                && state.status.map(|s| enum_text(&s)) != Some("created".into())
            {
                return Err(DockerError::Failed(format!(
                    "container {name} is not running (exit code {}){}",
                    state.exit_code.unwrap_or_default(),
                    self.log_tail(name).await
                )));
            }
            if Instant::now() >= until {
                return Err(DockerError::TimedOut(format!(
                    "container {name} was not healthy within {} (health: {}){}",
                    humantime::format_duration(timeout),
                    health.as_deref().unwrap_or("none"),
                    self.log_tail(name).await
                )));
            }
            tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
        }
    }

    async fn log_tail(&self, name: &str) -> String {
        match self.logs(name, ERROR_LOG_LINES as u32).await {
            Ok(text) if !text.trim().is_empty() => {
                format!("; last log lines:\n{}", text.trim_end())
            }
            _ => String::new(),
        }
    }

    /// The last `tail` lines of a container's log (at most 64 KiB).
    pub async fn logs(&self, name: &str, tail: u32) -> Result<String, DockerError> {
        self.granted_container(name).await?;
        let mut stream = self.docker.logs(
            name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .tail(&tail.to_string())
                    .build(),
            ),
        );
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(&format!("logs of {name}"), e))?;
            text.extend_from_slice(&chunk.into_bytes());
            if text.len() > MAX_LOGS {
                let excess = text.len() - MAX_LOGS;
                text.drain(..excess);
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

/// A stop of a container already stopped answers 304: not an error.
fn not_modified(e: bollard::errors::Error) -> Result<(), bollard::errors::Error> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        } => Ok(()),
        other => Err(other),
    }
}

/// A container's health (`healthy`, `unhealthy`, `starting`), or None
/// without a healthcheck.
fn health_of(state: &bollard::models::ContainerState) -> Option<String> {
    state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .map(|s| enum_text(&s))
        .filter(|s| !s.is_empty() && s != "none")
}

/// How long a container is given to stop (its own setting, else Docker's 10 s).
fn stop_timeout(inspect: &ContainerInspectResponse) -> i64 {
    inspect
        .config
        .as_ref()
        .and_then(|c| c.stop_timeout)
        .unwrap_or(10)
}

fn labels_of(inspect: &ContainerInspectResponse) -> HashMap<String, String> {
    inspect
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

fn container_name(inspect: &ContainerInspectResponse) -> String {
    inspect
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

/// The text of one of bollard's string enums.
fn enum_text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `db:service_healthy:false,cache:service_started:false` (compose v2).
fn parse_depends_label(value: &str) -> Vec<String> {
    let mut services: Vec<String> = value
        .split(',')
        .filter_map(|entry| entry.split(':').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    services.sort();
    services.dedup();
    services
}

/// depends_on of every service, from the compose files a project was started
/// from (compose v1 records no depends_on label). Unreadable files give none.
fn depends_from_files(labels: &HashMap<String, String>) -> BTreeMap<String, Vec<String>> {
    let mut result = BTreeMap::new();
    let Some(files) = labels.get(CONFIG_FILES_LABEL) else {
        return result;
    };
    let base = labels
        .get(WORKING_DIR_LABEL)
        .map(PathBuf::from)
        .unwrap_or_default();
    for file in files.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let path = base.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            tracing::warn!(file = %path.display(), "cannot read the compose file for depends_on");
            continue;
        };
        let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(&text) else {
            tracing::warn!(file = %path.display(), "cannot parse the compose file for depends_on");
            continue;
        };
        let Some(services) = doc.get("services").and_then(|s| s.as_mapping()) else {
            continue;
        };
        for (service, definition) in services {
            let Some(service) = service.as_str() else {
                continue;
            };
            let names: Vec<String> = match definition.get("depends_on") {
                Some(serde_norway::Value::Sequence(list)) => list
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Some(serde_norway::Value::Mapping(map)) => map
                    .keys()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            let entry: &mut Vec<String> = result.entry(service.to_string()).or_default();
            entry.extend(names);
            entry.sort();
            entry.dedup();
        }
    }
    result
}

/// What a container was given, as opposed to what its image supplied: the
/// basis of its fingerprint and of its replacement's configuration. With no
/// image to compare with, everything the container runs with (a spec's).
#[derive(Serialize, serde::Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OwnConfig {
    user: Option<String>,
    env: Vec<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    healthcheck: Option<serde_json::Value>,
    exposed_ports: Vec<String>,
    volumes: Vec<String>,
    stop_signal: Option<String>,
    stop_timeout: Option<i64>,
    tty: Option<bool>,
    open_stdin: Option<bool>,
    domainname: Option<String>,
    hostname: Option<String>,
}

fn own_config(
    inspect: &ContainerInspectResponse,
    image: Option<&ContainerConfig>,
    keep_compose_labels: bool,
) -> OwnConfig {
    let config = inspect.config.clone().unwrap_or_default();
    let image = image.cloned().unwrap_or_default();
    let differs = |own: &Option<Vec<String>>, from_image: &Option<Vec<String>>| {
        if own == from_image { None } else { own.clone() }
    };
    let image_env: BTreeSet<String> = image.env.clone().unwrap_or_default().into_iter().collect();
    let image_labels = image.labels.clone().unwrap_or_default();
    let image_ports: BTreeSet<String> = image
        .exposed_ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let image_volumes: BTreeSet<String> = image
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let id = inspect.id.clone().unwrap_or_default();
    let short_id = &id[..id.len().min(12)];
    OwnConfig {
        user: config
            .user
            .filter(|u| Some(u) != image.user.as_ref() && !u.is_empty()),
        env: config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !image_env.contains(e))
            .collect(),
        cmd: differs(&config.cmd, &image.cmd),
        entrypoint: differs(&config.entrypoint, &image.entrypoint),
        working_dir: config
            .working_dir
            .filter(|w| Some(w) != image.working_dir.as_ref() && !w.is_empty()),
        labels: config
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, v)| image_labels.get(k) != Some(v))
            .filter(|(k, _)| {
                keep_compose_labels || !COMPOSE_BOOKKEEPING_LABELS.contains(&k.as_str())
            })
            .collect(),
        healthcheck: if config.healthcheck == image.healthcheck {
            None
        } else {
            config
                .healthcheck
                .as_ref()
                .and_then(|h| serde_json::to_value(h).ok())
        },
        // Docker keeps both as maps: sorted, so that equal containers
        // compare equal.
        exposed_ports: sorted(
            config
                .exposed_ports
                .unwrap_or_default()
                .into_iter()
                .filter(|p| !image_ports.contains(p)),
        ),
        volumes: sorted(
            config
                .volumes
                .unwrap_or_default()
                .into_iter()
                .filter(|v| !image_volumes.contains(v)),
        ),
        stop_signal: config
            .stop_signal
            .filter(|s| Some(s) != image.stop_signal.as_ref()),
        stop_timeout: config.stop_timeout,
        tty: config.tty.filter(|t| *t),
        open_stdin: config.open_stdin.filter(|o| *o),
        domainname: config.domainname.filter(|d| !d.is_empty()),
        // Docker names a container's host after its short id unless told.
        hostname: config.hostname.filter(|h| !h.is_empty() && h != short_id),
    }
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.collect();
    items.sort();
    items
}

/// A container's networks: name -> the endpoint settings given at creation
/// (aliases other than its own short id, static addresses, links).
fn networks_of(inspect: &ContainerInspectResponse) -> BTreeMap<String, EndpointSettings> {
    let id = inspect.id.clone().unwrap_or_default();
    let short_id = id[..id.len().min(12)].to_string();
    let mode = inspect
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    if mode == "host" || mode == "none" || mode.starts_with("container:") {
        return BTreeMap::new();
    }
    inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(network, endpoint)| {
            let user_defined = network != "bridge" && network != "default";
            let mut aliases: Vec<String> = endpoint
                .aliases
                .unwrap_or_default()
                .into_iter()
                .filter(|a| *a != short_id && !id.starts_with(a.as_str()))
                .collect();
            aliases.sort();
            aliases.dedup();
            (
                network,
                EndpointSettings {
                    aliases: (user_defined && !aliases.is_empty()).then_some(aliases),
                    ipam_config: endpoint.ipam_config,
                    links: endpoint.links.filter(|l| !l.is_empty()),
                    driver_opts: endpoint.driver_opts.filter(|d| !d.is_empty()),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// The host configuration without its mounts (they are compared and carried
/// over from the container's mount list, which includes anonymous volumes).
fn host_config_without_mounts(inspect: &ContainerInspectResponse) -> serde_json::Value {
    let mut host = inspect.host_config.clone().unwrap_or_default();
    host.binds = None;
    host.mounts = None;
    serde_json::to_value(host).unwrap_or_default()
}

/// The container's mounts as `source:destination[:ro]` binds, anonymous
/// volumes included (by name), so that a replacement keeps its data.
fn binds_of(inspect: &ContainerInspectResponse) -> Vec<String> {
    let mut binds: Vec<String> = inspect
        .mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let kind = m.typ.map(|t| enum_text(&t)).unwrap_or_default();
            let source = match kind.as_str() {
                "volume" => m.name?,
                "bind" => m.source?,
                _ => return None,
            };
            let destination = m.destination?;
            let read_only = m.rw == Some(false);
            Some(format!(
                "{source}:{destination}{}",
                if read_only { ":ro" } else { "" }
            ))
        })
        .collect();
    binds.sort();
    binds
}

/// A hash of everything a container was given other than its image.
fn fingerprint(inspect: &ContainerInspectResponse, image: Option<&ContainerConfig>) -> String {
    #[derive(Serialize)]
    struct Fingerprinted {
        config: OwnConfig,
        host: serde_json::Value,
        mounts: Vec<String>,
        networks: BTreeMap<String, serde_json::Value>,
    }
    let everything = Fingerprinted {
        config: own_config(inspect, image, false),
        host: host_config_without_mounts(inspect),
        mounts: binds_of(inspect),
        networks: networks_of(inspect)
            .into_iter()
            .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or_default()))
            .collect(),
    };
    // serde_json writes maps in key order only for BTreeMaps; the host
    // configuration is a Value, whose maps are sorted.
    let bytes = serde_json::to_vec(&everything).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The creation request of a container's replacement on `image`.
fn create_body(
    old: &ContainerInspectResponse,
    old_image: Option<&ContainerConfig>,
    new_image: Option<&ContainerConfig>,
    image: &str,
    labels: &[(String, String)],
) -> ContainerCreateBody {
    let mut own = own_config(old, old_image, true);
    let new_defaults = new_image.cloned().unwrap_or_default();
    let mut all_labels: BTreeMap<String, String> = new_defaults
        .labels
        .unwrap_or_default()
        .into_iter()
        .collect();
    all_labels.append(&mut own.labels);
    for (k, v) in labels {
        all_labels.insert(k.clone(), v.clone());
    }
    own.labels = all_labels;
    let mut env: Vec<String> = Vec::new();
    // The new image's environment, overridden by what the container was given.
    let own_keys: BTreeSet<&str> = own
        .env
        .iter()
        .map(|e| e.split('=').next().unwrap_or(e))
        .collect();
    for e in new_defaults.env.unwrap_or_default() {
        if !own_keys.contains(e.split('=').next().unwrap_or(&e)) {
            env.push(e);
        }
    }
    env.append(&mut own.env);
    own.env = env;
    own.into_body(
        image,
        binds_of(old),
        old.host_config.clone().unwrap_or_default(),
        &networks_of(old),
    )
}

impl OwnConfig {
    /// The creation request of a container given this configuration on
    /// `image`, with `host` (its mounts set to `binds`) and the first of
    /// `networks` (older daemons take one network in a creation request:
    /// the others are connected after creation).
    fn into_body(
        self,
        image: &str,
        binds: Vec<String>,
        mut host: HostConfig,
        networks: &BTreeMap<String, EndpointSettings>,
    ) -> ContainerCreateBody {
        host.binds = Some(binds);
        host.mounts = None;
        let networking_config =
            networks
                .first_key_value()
                .map(|(network, endpoint)| NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(network.clone(), endpoint.clone())])),
                });
        ContainerCreateBody {
            image: Some(image.to_string()),
            hostname: self.hostname,
            domainname: self.domainname,
            user: self.user,
            env: Some(self.env),
            cmd: self.cmd,
            entrypoint: self.entrypoint,
            working_dir: self.working_dir,
            labels: Some(self.labels.into_iter().collect()),
            healthcheck: self
                .healthcheck
                .and_then(|h| serde_json::from_value(h).ok()),
            exposed_ports: (!self.exposed_ports.is_empty()).then_some(self.exposed_ports),
            volumes: (!self.volumes.is_empty()).then_some(self.volumes),
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            tty: self.tty,
            open_stdin: self.open_stdin,
            host_config: Some(host),
            networking_config,
            ..Default::default()
        }
    }
}

/// The networks beyond the first, connected after creation (older daemons
/// accept one network in a creation request).
fn extra_networks(old: &ContainerInspectResponse) -> Vec<(String, EndpointSettings)> {
    let mut networks = networks_of(old);
    networks.pop_first();
    networks.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_label_of_compose_v2() {
        assert_eq!(
            parse_depends_label("db:service_healthy:false,cache:service_started:true"),
            vec!["cache".to_string(), "db".to_string()]
        );
        assert!(parse_depends_label("").is_empty());
    }

    #[test]
    fn depends_from_a_compose_file_in_list_and_map_forms() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("compose.yml"),
            "services:\n  db: {image: x}\n  api:\n    image: y\n    depends_on: [db]\n  web:\n    image: z\n    depends_on:\n      api: {condition: service_healthy}\n",
        )
        .unwrap();
        let labels = HashMap::from([
            (CONFIG_FILES_LABEL.to_string(), "compose.yml".to_string()),
            (
                WORKING_DIR_LABEL.to_string(),
                dir.path().display().to_string(),
            ),
        ]);
        let depends = depends_from_files(&labels);
        assert_eq!(depends["api"], vec!["db".to_string()]);
        assert_eq!(depends["web"], vec!["api".to_string()]);
        assert!(depends["db"].is_empty());
    }
}
