//! The host's Docker Engine operations on the compose projects the target
//! grants, with errors turned into [`PluginError`]s.

use crate::PluginError;
use crate::bindings::rewind::plugin::docker as host;
pub use crate::bindings::rewind::plugin::docker::{Container, DockerError, Image, Mount};

/// A [`DockerError`] as the plugin error a step reports.
pub fn plugin_error(e: DockerError) -> PluginError {
    match e {
        DockerError::Denied(t) => PluginError::Denied(t),
        DockerError::Unavailable(t) => PluginError::Unavailable(t),
        DockerError::NotFound(t) => PluginError::NotFound(t),
        DockerError::Unhealthy(t) => PluginError::VerificationFailed(t),
        DockerError::TimedOut(t) => PluginError::Failed(t),
        DockerError::Failed(t) => PluginError::Failed(t),
    }
}

/// The containers of a compose project, sorted by service then name.
pub fn list_containers(project: &str) -> Result<Vec<Container>, PluginError> {
    host::list_containers(project).map_err(plugin_error)
}

/// An image present locally, or none.
pub fn inspect_image(reference: &str) -> Result<Option<Image>, PluginError> {
    host::inspect_image(reference).map_err(plugin_error)
}

/// Replace a container by one on `image`, keeping its configuration.
pub fn recreate(
    container: &str,
    image: &str,
    labels: &[(String, String)],
) -> Result<Container, PluginError> {
    host::recreate(container, image, labels).map_err(plugin_error)
}

/// Restart a container.
pub fn restart(container: &str) -> Result<(), PluginError> {
    host::restart(container).map_err(plugin_error)
}

/// Wait until a container is healthy (or running, without a healthcheck).
pub fn wait_healthy(container: &str, timeout_ms: u32) -> Result<(), PluginError> {
    host::wait_healthy(container, timeout_ms).map_err(plugin_error)
}

/// The last lines of a container's log.
pub fn logs(container: &str, tail: u32) -> Result<String, PluginError> {
    host::logs(container, tail).map_err(plugin_error)
}

/// A container's whole configuration, sealed by the agent (see the WIT):
/// keep it in the state directory, it holds the environment's values.
pub fn inspect_config(container: &str) -> Result<String, PluginError> {
    host::inspect_config(container).map_err(plugin_error)
}

/// Replace (or create) a container exactly as a sealed configuration says.
pub fn recreate_from(container: &str, config: &str) -> Result<Container, PluginError> {
    host::recreate_from(container, config).map_err(plugin_error)
}

/// The containers of the granted projects that bind-mount a host path.
pub fn mounts_of(path: &str) -> Result<Vec<Mount>, PluginError> {
    host::mounts_of(path).map_err(plugin_error)
}

/// A file as a container sees it, or none.
pub fn read_file(container: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
    host::read_file(container, path).map_err(plugin_error)
}

/// Send a signal (e.g. `SIGHUP`) to a container's main process.
pub fn signal(container: &str, signal: &str) -> Result<(), PluginError> {
    host::signal(container, signal).map_err(plugin_error)
}
