//! What a restore does to each container of a snapshot, worked out once
//! and shared by `plan` (which shows it), `restore` (which does it) and
//! `verify` (which finds nothing left to do).

use crate::recorded::{Recorded, drift, short};
use crate::{Service, Snapshot, reference_for};
use rewind_plugin_sdk::docker::Container;
use rewind_plugin_sdk::mask::Masker;
use rewind_plugin_sdk::*;
use std::collections::BTreeMap;

/// One container's task.
pub enum Task {
    /// It runs as the snapshot says; `starting` while its healthcheck has
    /// not passed yet.
    Keep { starting: bool },
    /// It has the snapshot's configuration but is stopped (the stopped
    /// blue of a blue-green pair): start it.
    Start { state: String },
    /// Recreate it from the snapshot's configuration; what differs.
    Recreate {
        config: Recorded,
        drift: Vec<String>,
    },
    /// The snapshot has it, the project does not: create it.
    Create { config: Recorded },
    /// A snapshot without configurations: recreate it on the image,
    /// keeping its current configuration.
    Image { reference: String, from: String },
}

pub struct ContainerWork {
    pub name: String,
    pub task: Task,
}

impl ContainerWork {
    pub fn acts(&self) -> bool {
        !matches!(self.task, Task::Keep { .. })
    }

    /// One line of a preview.
    pub fn describe(&self, service: &Service) -> Option<String> {
        let name = &self.name;
        match &self.task {
            Task::Keep { .. } => None,
            Task::Start { state } => Some(format!(
                "start {name} ({state}), already on the snapshot's configuration"
            )),
            Task::Recreate { config, drift } => Some(format!(
                "recreate {name} from the snapshot's configuration, on {} ({}): {} differ(s)",
                config.image(),
                short(config.image_id()),
                drift
                    .iter()
                    .map(|d| d.split(':').next().unwrap_or(d))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Task::Create { config } => Some(format!(
                "create {name} from the snapshot's configuration, on {} ({}) (the project has \
                 no such container)",
                config.image(),
                short(config.image_id())
            )),
            Task::Image { reference, from } => Some(format!(
                "recreate {name} on {reference} ({}) instead of {from}, keeping its current \
                 configuration (this snapshot did not record configurations)",
                short(&service.image_id)
            )),
        }
    }
}

/// How much a plan says about a container that is recreated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every key that differs (a preview, a verify).
    Drift,
    /// Only what decides the task: a container on another image is
    /// recreated without reading its configuration (a restore).
    Decide,
}

/// The containers of one snapshot service and their tasks.
pub fn of_service(
    name: &str,
    service: &Service,
    now: &[Container],
    masker: &Masker,
    detail: Detail,
) -> Result<Vec<ContainerWork>, PluginError> {
    if service.configs.is_empty() {
        return by_image(name, service, now);
    }
    let mut work = Vec::new();
    for (container, sha) in &service.configs {
        let config = Recorded::kept(container, sha)?;
        let task = match now.iter().find(|c| &c.name == container) {
            None => Task::Create { config },
            Some(current) if detail == Detail::Decide && current.image_id != config.image_id() => {
                let drift = vec![format!(
                    "image: {} ({}), the snapshot's {} ({})",
                    current.image,
                    short(&current.image_id),
                    config.image(),
                    short(config.image_id())
                )];
                Task::Recreate { config, drift }
            }
            Some(current) => {
                let running = Recorded::of(container)?;
                if running.same_as(&config, true) {
                    if current.state == "running" {
                        Task::Keep {
                            starting: current.health.as_deref().is_some_and(|h| h != "healthy"),
                        }
                    } else {
                        Task::Start {
                            state: current.state.clone(),
                        }
                    }
                } else {
                    let drift = drift(&running.spec, &config.spec, true, masker);
                    Task::Recreate { config, drift }
                }
            }
        };
        work.push(ContainerWork {
            name: container.clone(),
            task,
        });
    }
    Ok(work)
}

/// The tasks of a snapshot that recorded images only.
fn by_image(
    name: &str,
    service: &Service,
    now: &[Container],
) -> Result<Vec<ContainerWork>, PluginError> {
    let mut work = Vec::new();
    for c in now {
        let task = if c.image_id != service.image_id {
            Task::Image {
                reference: reference_for(name, service)?,
                from: format!("{} ({})", c.image, short(&c.image_id)),
            }
        } else if c.state != "running" {
            Task::Start {
                state: c.state.clone(),
            }
        } else {
            Task::Keep {
                starting: c.health.as_deref().is_some_and(|h| h != "healthy"),
            }
        };
        work.push(ContainerWork {
            name: c.name.clone(),
            task,
        });
    }
    Ok(work)
}

/// Every image a restore needs is here: checked before anything is stopped.
pub fn images_present(service_name: &str, work: &[ContainerWork]) -> Result<(), PluginError> {
    for w in work {
        let config = match &w.task {
            Task::Recreate { config, .. } | Task::Create { config } => config,
            _ => continue,
        };
        if docker::inspect_image(config.image_id())?.is_none() {
            return Err(PluginError::NotFound(format!(
                "service {service_name}: image {} ({}) of container {} is not present on this \
                 host; nothing was stopped (load the image, e.g. docker load, or pull it, then \
                 run again)",
                config.image(),
                config.image_id(),
                w.name
            )));
        }
    }
    Ok(())
}

/// The snapshot's services with their containers' tasks, in the given order.
pub fn plan(
    snapshot: &Snapshot,
    order: &[String],
    now: &BTreeMap<String, Vec<Container>>,
    masker: &Masker,
    detail: Detail,
) -> Result<Vec<(String, Vec<ContainerWork>)>, PluginError> {
    let mut all = Vec::new();
    for name in order {
        let service = &snapshot.services[name];
        let containers = now.get(name).cloned().unwrap_or_default();
        if containers.is_empty() && service.configs.is_empty() {
            return Err(PluginError::NotFound(format!(
                "service {name} of project {} has no container on this host, and the snapshot \
                 did not record its configuration: rewind cannot create it (run docker compose \
                 up first)",
                snapshot.project
            )));
        }
        all.push((
            name.clone(),
            of_service(name, service, &containers, masker, detail)?,
        ));
    }
    Ok(all)
}
