//! rewind's compose plugin: puts the services of a Docker Compose project
//! back on the images of a snapshot, in depends_on order, waiting for each
//! to be healthy before the services that depend on it.
//!
//! Settings: `project` (the compose project name, granted with
//! `grant.docker`), optional `services` (only these), optional
//! `health_timeout_secs` (default 120).

use rewind_plugin_sdk::docker::{self, Container};
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

struct Compose;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    project: String,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default = "default_health_timeout")]
    health_timeout_secs: u32,
}

fn default_health_timeout() -> u32 {
    120
}

/// What a snapshot records of one service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Service {
    /// The image reference its containers were created from.
    image: String,
    /// The id (`sha256:...`) of the image they ran.
    image_id: String,
    /// Repository digests of that image, where it has any.
    digests: Vec<String>,
    /// A hash of the containers' configuration other than the image.
    fingerprint: String,
    /// Compose's labels that follow the image.
    compose_labels: Vec<(String, String)>,
    depends_on: Vec<String>,
    containers: usize,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    project: String,
    services: BTreeMap<String, Service>,
}

fn settings_of(target: &Target) -> Result<Settings, PluginError> {
    let settings: Settings = settings(target)?;
    if settings.project.trim().is_empty() {
        return Err(PluginError::InvalidSettings(format!(
            "target {}: settings.project is empty",
            target.name
        )));
    }
    Ok(settings)
}

/// The project's containers by service, limited to the configured services.
fn current(settings: &Settings) -> Result<BTreeMap<String, Vec<Container>>, PluginError> {
    let mut services: BTreeMap<String, Vec<Container>> = BTreeMap::new();
    for container in docker::list_containers(&settings.project)? {
        if settings.services.is_empty() || settings.services.contains(&container.service) {
            services
                .entry(container.service.clone())
                .or_default()
                .push(container);
        }
    }
    Ok(services)
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// Services in depends_on order: every service after those it depends on.
fn dependency_order(
    depends: &BTreeMap<String, BTreeSet<String>>,
) -> Result<Vec<String>, PluginError> {
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut remaining: BTreeSet<&String> = depends.keys().collect();
    while !remaining.is_empty() {
        let ready: Vec<&String> = remaining
            .iter()
            .filter(|s| {
                depends[**s]
                    .iter()
                    .all(|d| done.contains(d) || !depends.contains_key(d))
            })
            .copied()
            .collect();
        if ready.is_empty() {
            let cycle: Vec<&str> = remaining.iter().map(|s| s.as_str()).collect();
            return Err(PluginError::InvalidSettings(format!(
                "the services' depends_on form a cycle among: {}",
                cycle.join(", ")
            )));
        }
        for service in ready {
            remaining.remove(service);
            done.insert(service.clone());
            order.push(service.clone());
        }
    }
    Ok(order)
}

/// depends_on of the snapshot's services, as they are now and as recorded.
fn dependencies(
    snapshot: &Snapshot,
    now: &BTreeMap<String, Vec<Container>>,
) -> BTreeMap<String, BTreeSet<String>> {
    snapshot
        .services
        .iter()
        .map(|(name, service)| {
            let mut depends: BTreeSet<String> = service.depends_on.iter().cloned().collect();
            for container in now.get(name).into_iter().flatten() {
                depends.extend(container.depends_on.iter().cloned());
            }
            depends.remove(name);
            (name.clone(), depends)
        })
        .collect()
}

/// The reference to recreate a service with: its tag if the tag still names
/// the snapshot's image, else a repository digest, else the image id.
/// Refused, naming the service and digest, when the image is gone.
fn reference_for(name: &str, service: &Service) -> Result<String, PluginError> {
    let Some(image) = docker::inspect_image(&service.image_id)? else {
        return Err(PluginError::NotFound(format!(
            "service {name}: image {} ({}) is not present on this host; nothing was stopped \
             (load the image, e.g. docker load, or pull it, then run again)",
            service.image, service.image_id
        )));
    };
    if let Some(tagged) = docker::inspect_image(&service.image)?
        && tagged.id == service.image_id
    {
        return Ok(service.image.clone());
    }
    Ok(image
        .digests
        .first()
        .cloned()
        .unwrap_or_else(|| service.image_id.clone()))
}

/// Whether a service needs work: a container on another image, or one on
/// the snapshot's image that is not running (a stopped blue of a blue-green
/// pair).
fn changed(service: &Service, containers: &[Container]) -> bool {
    containers
        .iter()
        .any(|c| c.image_id != service.image_id || c.state != "running")
}

fn on_other_image<'a>(
    service: &'a Service,
    containers: &'a [Container],
) -> impl Iterator<Item = &'a Container> {
    containers.iter().filter(|c| c.image_id != service.image_id)
}

fn timeout_ms(settings: &Settings) -> u32 {
    settings.health_timeout_secs.saturating_mul(1000)
}

/// Wait for a container a restore just `did` something to (e.g. "was
/// recreated on shop/api:v1") to be healthy; the error says so.
fn await_healthy(
    settings: &Settings,
    service: &str,
    container: &str,
    did: &str,
) -> Result<(), PluginError> {
    progress(&format!("waiting for {container} to be healthy"), None);
    docker::wait_healthy(container, timeout_ms(settings)).map_err(|e| {
        PluginError::Failed(format!(
            "service {service}: {container} {did} but is not healthy: {}",
            e.text()
        ))
    })
}

impl Plugin for Compose {
    fn describe() -> PluginInfo {
        info!(
            "compose",
            "Docker Compose services back on a snapshot's images, in depends_on order, healthy",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restore,
                Action::Restart,
                Action::Verify,
            ],
        )
    }

    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        let settings = settings_of(&target)?;
        let now = current(&settings)?;
        if now.is_empty() {
            return Err(PluginError::NotFound(format!(
                "target {}: compose project {} has no containers{}",
                target.name,
                settings.project,
                if settings.services.is_empty() {
                    String::new()
                } else {
                    format!(" for services {}", settings.services.join(", "))
                }
            )));
        }
        let mut services = BTreeMap::new();
        for (name, containers) in &now {
            let first = &containers[0];
            if let Some(other) = containers.iter().find(|c| c.image_id != first.image_id) {
                return Err(PluginError::Conflict(format!(
                    "service {name} runs two images ({} on {}, {} on {}): finish or undo the \
                     deployment in progress, then take the snapshot",
                    first.name,
                    short(&first.image_id),
                    other.name,
                    short(&other.image_id)
                )));
            }
            let digests = docker::inspect_image(&first.image_id)?
                .map(|i| i.digests)
                .unwrap_or_default();
            services.insert(
                name.clone(),
                Service {
                    image: first.image.clone(),
                    image_id: first.image_id.clone(),
                    digests,
                    fingerprint: first.fingerprint.clone(),
                    compose_labels: first.compose_labels.clone(),
                    depends_on: first.depends_on.clone(),
                    containers: containers.len(),
                },
            );
        }
        let summary = services
            .iter()
            .map(|(name, s)| format!("{name} {} ({})", s.image, short(&s.image_id)))
            .collect::<Vec<_>>()
            .join(", ");
        let snapshot = Snapshot {
            project: settings.project,
            services,
        };
        Ok(Captured {
            data: serde_json::to_string(&snapshot)
                .map_err(|e| PluginError::Failed(e.to_string()))?,
            summary,
        })
    }

    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let settings = settings_of(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let now = current(&settings)?;
        let order = dependency_order(&dependencies(&snapshot, &now))?;
        let mut changes = Vec::new();
        for name in order {
            let service = &snapshot.services[&name];
            let containers = now.get(&name).cloned().unwrap_or_default();
            if containers.is_empty() {
                return Err(PluginError::NotFound(format!(
                    "service {name} of project {} has no container on this host: rewind \
                     recreates services, it does not create them (run docker compose up first)",
                    snapshot.project
                )));
            }
            let drift = containers
                .iter()
                .any(|c| c.fingerprint != service.fingerprint)
                .then(|| {
                    "its configuration (other than the image) differs from the snapshot's; \
                     a rollback keeps the current configuration"
                        .to_string()
                });
            if changed(service, &containers) {
                reference_for(&name, service)?;
                let from: BTreeSet<String> = on_other_image(service, &containers)
                    .map(|c| format!("{} ({})", c.image, short(&c.image_id)))
                    .collect();
                let stopped = containers
                    .iter()
                    .filter(|c| c.image_id == service.image_id && c.state != "running")
                    .count();
                let mut work = Vec::new();
                if !from.is_empty() {
                    work.push(format!(
                        "recreate {} container(s) on {} ({}) instead of {}",
                        on_other_image(service, &containers).count(),
                        service.image,
                        short(&service.image_id),
                        from.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
                if stopped > 0 {
                    work.push(format!(
                        "start {stopped} stopped container(s) already on {} ({})",
                        service.image,
                        short(&service.image_id)
                    ));
                }
                changes.push(Change {
                    subject: name.clone(),
                    summary: work.join("; "),
                    detail: drift,
                    risk: Risk::Restart,
                });
            } else if let Some(detail) = drift {
                changes.push(Change {
                    subject: name.clone(),
                    summary: "already on the snapshot's image; left alone".into(),
                    detail: Some(detail),
                    risk: Risk::None,
                });
            }
        }
        for name in now.keys().filter(|s| !snapshot.services.contains_key(*s)) {
            changes.push(Change {
                subject: name.clone(),
                summary: "not in the snapshot; left alone".into(),
                detail: None,
                risk: Risk::None,
            });
        }
        let risk = max_risk(changes.iter().map(|c| c.risk));
        Ok(Preview {
            changes,
            risk,
            data_loss_window_seconds: None,
        })
    }

    fn restore(
        target: Target,
        to: SnapshotRecord,
        _options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        if snapshot.project != settings.project {
            return Err(PluginError::InvalidSettings(format!(
                "target {}: the snapshot is of project {}, the target manages {}",
                target.name, snapshot.project, settings.project
            )));
        }
        let now = current(&settings)?;
        let order = dependency_order(&dependencies(&snapshot, &now))?;

        // Everything is checked before anything is stopped: every service
        // still has containers and every image it goes back to is here.
        let mut work = Vec::new();
        for name in &order {
            let service = &snapshot.services[name];
            let containers = now.get(name).cloned().unwrap_or_default();
            if containers.is_empty() {
                return Err(PluginError::NotFound(format!(
                    "service {name} of project {} has no container on this host; nothing was \
                     stopped",
                    snapshot.project
                )));
            }
            if changed(service, &containers) {
                work.push((name.clone(), reference_for(name, service)?, containers));
            }
        }
        // A container already running its snapshot's image may still be
        // starting (a restore cut off right after recreating it, run again
        // with the same step): it is in place only once it is healthy.
        let mut waited = Vec::new();
        for name in order.iter().filter(|n| !work.iter().any(|(w, ..)| w == *n)) {
            let service = &snapshot.services[name];
            for c in now.get(name).into_iter().flatten().filter(|c| {
                c.image_id == service.image_id
                    && c.health.as_deref().is_some_and(|h| h != "healthy")
            }) {
                await_healthy(&settings, name, &c.name, "runs the snapshot's image")?;
                waited.push(format!(
                    "{name}: {} was {}, now healthy",
                    c.name,
                    c.health.as_deref().unwrap_or_default()
                ));
            }
        }
        if work.is_empty() {
            return Ok(Outcome {
                changed: false,
                summary: format!(
                    "all {} services already run the snapshot's images",
                    order.len()
                ),
                details: waited,
            });
        }

        let mut details = Vec::new();
        let total = work.len();
        for (done, (name, reference, containers)) in work.into_iter().enumerate() {
            let service = &snapshot.services[&name];
            progress(
                &format!("recreating {name} on {reference}"),
                Some((done * 100 / total) as u8),
            );
            for container in containers
                .iter()
                .filter(|c| c.image_id == service.image_id && c.state != "running")
            {
                log::info(&format!(
                    "{}: {}, starting it",
                    container.name, container.state
                ));
                docker::restart(&container.name)?;
                await_healthy(
                    &settings,
                    &name,
                    &container.name,
                    &format!("was started on {reference}"),
                )?;
                details.push(format!(
                    "{name}: {} was {}, started on {reference}, healthy",
                    container.name, container.state
                ));
            }
            for container in on_other_image(service, &containers) {
                log::info(&format!(
                    "{}: {} -> {reference}",
                    container.name, container.image
                ));
                let new = docker::recreate(&container.name, &reference, &service.compose_labels)?;
                await_healthy(
                    &settings,
                    &name,
                    &new.name,
                    &format!("was recreated on {reference}"),
                )?;
                details.push(format!(
                    "{name}: {} {} -> {reference} ({}), healthy",
                    new.name,
                    container.image,
                    short(&service.image_id)
                ));
            }
        }
        progress("done", Some(100));
        Ok(Outcome {
            changed: true,
            summary: format!(
                "{total} of {} services recreated or started on the snapshot's images",
                order.len()
            ),
            details,
        })
    }

    fn restart(target: Target, parts: Vec<String>) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let now = current(&settings)?;
        if let Some(unknown) = parts.iter().find(|p| !now.contains_key(*p)) {
            return Err(PluginError::NotFound(format!(
                "service {unknown} has no container in project {} (services: {})",
                settings.project,
                now.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let depends: BTreeMap<String, BTreeSet<String>> = now
            .iter()
            .map(|(name, containers)| {
                let set = containers
                    .iter()
                    .flat_map(|c| c.depends_on.iter().cloned())
                    .filter(|d| d != name)
                    .collect();
                (name.clone(), set)
            })
            .collect();
        let mut details = Vec::new();
        for name in dependency_order(&depends)? {
            if !parts.is_empty() && !parts.contains(&name) {
                continue;
            }
            for container in &now[&name] {
                progress(&format!("restarting {}", container.name), None);
                docker::restart(&container.name)?;
                docker::wait_healthy(&container.name, timeout_ms(&settings)).map_err(|e| {
                    PluginError::Failed(format!(
                        "service {name}: {} restarted but is not healthy: {}",
                        container.name,
                        e.text()
                    ))
                })?;
                details.push(format!("{name}: {} restarted, healthy", container.name));
            }
        }
        Ok(Outcome {
            changed: true,
            summary: format!("{} container(s) restarted", details.len()),
            details,
        })
    }

    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let now = current(&settings)?;
        let mut problems = Vec::new();
        for (name, service) in &snapshot.services {
            let containers = now.get(name).cloned().unwrap_or_default();
            if containers.is_empty() {
                problems.push(format!("{name}: no container"));
            }
            for c in containers {
                if c.image_id != service.image_id {
                    problems.push(format!(
                        "{name}: {} runs {} ({}), not {} ({})",
                        c.name,
                        c.image,
                        short(&c.image_id),
                        service.image,
                        short(&service.image_id)
                    ));
                }
                if c.state != "running" {
                    problems.push(format!("{name}: {} is {}", c.name, c.state));
                } else if let Some(health) = c.health.as_deref().filter(|h| *h != "healthy") {
                    problems.push(format!("{name}: {} is {health}", c.name));
                }
            }
        }
        if !problems.is_empty() {
            return Err(PluginError::VerificationFailed(problems.join("; ")));
        }
        Ok(Outcome {
            changed: false,
            summary: format!(
                "{} services running, healthy, on the snapshot's images",
                snapshot.services.len()
            ),
            details: Vec::new(),
        })
    }
}

export_plugin!(Compose);
