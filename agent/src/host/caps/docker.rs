//! `rewind:plugin/docker`: the Docker Engine operations of `crate::docker`,
//! on the compose projects the target grants, each within its own timeout
//! and never past the call's deadline.

use crate::docker::{self as engine, Engine};
use crate::host::bindings::rewind::plugin::docker::{Container, DockerError, Host, Image, Mount};
use crate::host::state::CallState;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long one operation may take unless it says otherwise.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Recreating pulls nothing but stops a container (up to its stop timeout).
const RECREATE_TIMEOUT: Duration = Duration::from_secs(120);

impl From<engine::DockerError> for DockerError {
    fn from(e: engine::DockerError) -> Self {
        match e {
            engine::DockerError::Denied(t) => DockerError::Denied(t),
            engine::DockerError::Unavailable(t) => DockerError::Unavailable(t),
            engine::DockerError::NotFound(t) => DockerError::NotFound(t),
            engine::DockerError::Unhealthy(t) => DockerError::Unhealthy(t),
            engine::DockerError::TimedOut(t) => DockerError::TimedOut(t),
            engine::DockerError::Failed(t) => DockerError::Failed(t),
        }
    }
}

impl From<engine::Container> for Container {
    fn from(c: engine::Container) -> Self {
        Container {
            id: c.id,
            name: c.name,
            service: c.service,
            image: c.image,
            image_id: c.image_id,
            state: c.state,
            health: c.health,
            fingerprint: c.fingerprint,
            depends_on: c.depends_on,
            compose_labels: c.compose_labels,
        }
    }
}

/// What one Docker operation needs of the call, taken out of the call's
/// state so that nothing borrowed from it is held across an await.
struct Call {
    granted: bool,
    socket: PathBuf,
    projects: Vec<String>,
    deadline: Instant,
    plugin: String,
    target: String,
    seal_key: PathBuf,
}

impl CallState {
    fn docker_call(&self) -> Call {
        let grant = &self.target.grant;
        Call {
            granted: grant.docker_granted,
            socket: grant
                .docker_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(engine::DEFAULT_SOCKET)),
            projects: grant.docker.clone(),
            deadline: self.deadline,
            plugin: self.plugin.clone(),
            target: self.target.name.clone(),
            seal_key: self.target.seal_key.clone(),
        }
    }
}

impl CallState {
    /// Record a docker call; an interrupted call is a `failed` error.
    fn docker_gate(
        &mut self,
        op: &'static str,
        subject: &str,
        writes: bool,
    ) -> Result<(), DockerError> {
        use crate::host::state::{Effect, Fault, INJECTED, INTERRUPTED, Verdict};
        let effect = if writes {
            Effect::Writes
        } else {
            Effect::Reads
        };
        match self.record("docker", op, subject, effect) {
            Verdict::Go => Ok(()),
            Verdict::Stop => Err(DockerError::Failed(format!(
                "{op} {subject}: {INTERRUPTED}"
            ))),
            Verdict::Fault(Fault::Timeout) => {
                Err(DockerError::TimedOut(format!("{op} {subject} {INJECTED}")))
            }
            Verdict::Fault(_) => Err(DockerError::Denied(format!("{op} {subject} {INJECTED}"))),
        }
    }
}

impl Call {
    /// Run one operation on the target's Docker daemon within `timeout`.
    async fn run<T, F, Fut>(
        self,
        what: &str,
        timeout: Duration,
        operation: F,
    ) -> Result<T, DockerError>
    where
        F: FnOnce(Engine) -> Fut,
        Fut: Future<Output = Result<T, engine::DockerError>>,
    {
        if !self.granted {
            return Err(DockerError::Denied(format!(
                "target {}: the docker capability is not granted",
                self.target
            )));
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let timeout = timeout.min(remaining);
        let work = async {
            let engine = Engine::connect(&self.socket, &self.projects).await?;
            operation(engine).await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result.map_err(|e| {
                let e = DockerError::from(e);
                tracing::warn!(
                    plugin = self.plugin,
                    target = self.target,
                    "docker {what}: {e:?}"
                );
                e
            }),
            Err(_) => Err(DockerError::TimedOut(format!(
                "{what} did not finish within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
}

impl Host for CallState {
    async fn list_containers(&mut self, project: String) -> Result<Vec<Container>, DockerError> {
        self.docker_gate("list-containers", &project, false)?;
        let containers = self
            .docker_call()
            .run(
                &format!("list {project}"),
                OPERATION_TIMEOUT,
                |e| async move { e.list_containers(&project).await },
            )
            .await?;
        Ok(containers.into_iter().map(Container::from).collect())
    }

    async fn inspect_image(&mut self, reference: String) -> Result<Option<Image>, DockerError> {
        self.docker_gate("inspect-image", &reference, false)?;
        let image = self
            .docker_call()
            .run(
                &format!("inspect {reference}"),
                OPERATION_TIMEOUT,
                |e| async move { e.inspect_image(&reference).await },
            )
            .await?;
        Ok(image.map(|i| Image {
            id: i.id,
            tags: i.tags,
            digests: i.digests,
        }))
    }

    async fn recreate(
        &mut self,
        container: String,
        image: String,
        labels: Vec<(String, String)>,
    ) -> Result<Container, DockerError> {
        self.docker_gate("recreate", &container, true)?;
        let what = format!("recreate {container} on {image}");
        tracing::info!(plugin = self.plugin, target = self.target.name, "{what}");
        let new = self
            .docker_call()
            .run(&what, RECREATE_TIMEOUT, |e| async move {
                e.recreate(&container, &image, &labels).await
            })
            .await?;
        Ok(new.into())
    }

    async fn restart(&mut self, container: String) -> Result<(), DockerError> {
        self.docker_gate("restart", &container, true)?;
        tracing::info!(
            plugin = self.plugin,
            target = self.target.name,
            "restart {container}"
        );
        self.docker_call()
            .run(
                &format!("restart {container}"),
                RECREATE_TIMEOUT,
                |e| async move { e.restart(&container).await },
            )
            .await
    }

    async fn wait_healthy(
        &mut self,
        container: String,
        timeout_ms: u32,
    ) -> Result<(), DockerError> {
        self.docker_gate("wait-healthy", &container, false)?;
        let wait = Duration::from_millis(timeout_ms.into());
        // The wait gets a moment beyond its own timeout to say why it failed.
        self.docker_call()
            .run(
                &format!("wait for {container}"),
                wait + Duration::from_secs(5),
                |e| async move { e.wait_healthy(&container, wait).await },
            )
            .await
    }

    async fn logs(&mut self, container: String, tail: u32) -> Result<String, DockerError> {
        self.docker_gate("logs", &container, false)?;
        self.docker_call()
            .run(
                &format!("logs of {container}"),
                OPERATION_TIMEOUT,
                |e| async move { e.logs(&container, tail).await },
            )
            .await
    }

    async fn inspect_config(&mut self, container: String) -> Result<String, DockerError> {
        self.docker_gate("inspect-config", &container, false)?;
        let call = self.docker_call();
        let key = call.seal_key.clone();
        call.run(
            &format!("inspect {container}"),
            OPERATION_TIMEOUT,
            |e| async move { e.inspect_config(&container, &key).await },
        )
        .await
    }

    async fn recreate_from(
        &mut self,
        container: String,
        config: String,
    ) -> Result<Container, DockerError> {
        self.docker_gate("recreate-from", &container, true)?;
        let what = format!("recreate {container} from its recorded configuration");
        tracing::info!(plugin = self.plugin, target = self.target.name, "{what}");
        let call = self.docker_call();
        let key = call.seal_key.clone();
        let new = call
            .run(&what, RECREATE_TIMEOUT, |e| async move {
                e.recreate_from(&container, &config, &key).await
            })
            .await?;
        Ok(new.into())
    }

    async fn mounts_of(&mut self, path: String) -> Result<Vec<Mount>, DockerError> {
        self.docker_gate("mounts-of", &path, false)?;
        let call = self.docker_call();
        // No project granted: nothing to look at, and no daemon to ask.
        if call.granted && call.projects.is_empty() {
            return Ok(Vec::new());
        }
        let mounts = call
            .run(
                &format!("mounts of {path}"),
                OPERATION_TIMEOUT,
                |e| async move { e.mounts_of(&path).await },
            )
            .await?;
        Ok(mounts
            .into_iter()
            .map(|m| Mount {
                container: m.container,
                destination: m.destination,
                single_file: m.single_file,
                running: m.running,
            })
            .collect())
    }

    async fn read_file(
        &mut self,
        container: String,
        path: String,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        self.docker_gate("read-file", &format!("{container}:{path}"), false)?;
        self.docker_call()
            .run(
                &format!("read {path} in {container}"),
                OPERATION_TIMEOUT,
                |e| async move { e.read_file(&container, &path).await },
            )
            .await
    }

    async fn signal(&mut self, container: String, signal: String) -> Result<(), DockerError> {
        self.docker_gate("signal", &container, true)?;
        tracing::info!(
            plugin = self.plugin,
            target = self.target.name,
            "signal {container} with {signal}"
        );
        self.docker_call()
            .run(
                &format!("signal {container}"),
                OPERATION_TIMEOUT,
                |e| async move { e.signal(&container, &signal).await },
            )
            .await
    }
}
