//! rewind's compose plugin: puts the containers of a Docker Compose project
//! back as a snapshot recorded them, image and configuration (environment,
//! command, labels, mounts, ports, networks, ...), in depends_on order,
//! waiting for each to be healthy before the services that depend on it.
//!
//! Settings: `project` (the compose project name, granted with
//! `grant.docker`), optional `services` (only these), optional
//! `health_timeout_secs` (default 120).

mod recorded;
mod work;

use recorded::{Recorded, short};
use rewind_plugin_sdk::docker::{self, Container};
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use work::{ContainerWork, Detail, Task};

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
    /// Each container's whole configuration, by container name: the
    /// SHA-256 of its sealed document in the state directory. Empty in
    /// snapshots taken before configurations were recorded: those put
    /// back the image only.
    #[serde(default)]
    configs: BTreeMap<String, String>,
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
            "Docker Compose containers back on a snapshot's images and configuration, in \
             depends_on order, healthy",
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
            // Each container's whole configuration stays on this host: it
            // holds the environment's values.
            let mut configs = BTreeMap::new();
            for c in containers {
                configs.insert(c.name.clone(), Recorded::of(&c.name)?.keep()?);
            }
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
                    configs,
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
        for (name, work) in work::plan(&snapshot, &order, &now, &masker(&[]), Detail::Drift)? {
            let service = &snapshot.services[&name];
            work::images_present(&name, &work)?;
            let lines: Vec<String> = work.iter().filter_map(|w| w.describe(service)).collect();
            if lines.is_empty() {
                continue;
            }
            let detail: Vec<String> = work
                .iter()
                .flat_map(|w| match &w.task {
                    Task::Recreate { drift, .. } => drift
                        .iter()
                        .map(|d| format!("{}: {d}", w.name))
                        .collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .collect();
            changes.push(Change {
                subject: name.clone(),
                summary: lines.join("; "),
                detail: (!detail.is_empty()).then(|| detail.join("\n")),
                risk: Risk::Restart,
            });
        }
        for (name, containers) in &now {
            let known = snapshot.services.get(name);
            let extra: Vec<&str> = containers
                .iter()
                .filter(|c| {
                    known.is_none_or(|s| !s.configs.is_empty() && !s.configs.contains_key(&c.name))
                })
                .map(|c| c.name.as_str())
                .collect();
            if !extra.is_empty() {
                changes.push(Change {
                    subject: name.clone(),
                    summary: format!("{} not in the snapshot; left alone", extra.join(", ")),
                    detail: None,
                    risk: Risk::None,
                });
            }
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

        // Everything is checked before anything is stopped: every recorded
        // configuration is here and intact, every image is present.
        let plan = work::plan(&snapshot, &order, &now, &masker(&[]), Detail::Decide)?;
        for (name, work) in &plan {
            work::images_present(name, work)?;
        }
        let total = plan
            .iter()
            .flat_map(|(_, w)| w)
            .filter(|w| w.acts())
            .count();
        let mut details = Vec::new();
        let mut done = 0;
        for (name, work) in &plan {
            for w in work {
                if w.acts() {
                    progress(
                        &format!("{name}: {}", w.name),
                        Some((done * 100 / total.max(1)) as u8),
                    );
                    done += 1;
                }
                if let Some(line) = act(&settings, name, &snapshot.services[name], w)? {
                    details.push(line);
                }
            }
        }
        if total == 0 {
            return Ok(Outcome {
                changed: false,
                summary: format!(
                    "all {} services already run as the snapshot recorded them",
                    order.len()
                ),
                details,
            });
        }
        progress("done", Some(100));
        Ok(Outcome {
            changed: true,
            summary: format!(
                "{total} container(s) of {} services recreated, created or started as the \
                 snapshot recorded them",
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
                await_healthy(&settings, &name, &container.name, "was restarted")?;
                details.push(format!("{name}: {} restarted, healthy", container.name));
            }
        }
        Ok(Outcome {
            changed: true,
            summary: format!("{} container(s) restarted", details.len()),
            details,
        })
    }

    /// Every container of the snapshot runs, healthy, with the snapshot's
    /// image and configuration; each difference is named.
    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let snapshot: Snapshot = snapshot_data(&target, &to)?;
        let now = current(&settings)?;
        let order: Vec<String> = snapshot.services.keys().cloned().collect();
        let masker = masker(&[]);
        let mut problems = Vec::new();
        for (name, service) in &snapshot.services {
            let containers = now.get(name).cloned().unwrap_or_default();
            if containers.is_empty() && service.configs.is_empty() {
                problems.push(format!("{name}: no container"));
            }
            for c in &containers {
                if service.configs.is_empty() && c.image_id != service.image_id {
                    problems.push(format!(
                        "{name}: {} runs {} ({}), not {} ({})",
                        c.name,
                        c.image,
                        short(&c.image_id),
                        service.image,
                        short(&service.image_id)
                    ));
                }
                if !service.configs.is_empty() && !service.configs.contains_key(&c.name) {
                    continue;
                }
                if c.state != "running" {
                    problems.push(format!("{name}: {} is {}", c.name, c.state));
                } else if let Some(health) = c.health.as_deref().filter(|h| *h != "healthy") {
                    problems.push(format!("{name}: {} is {health}", c.name));
                }
            }
        }
        for (name, work) in work::plan(&snapshot, &order, &now, &masker, Detail::Drift)? {
            for w in work {
                match w.task {
                    Task::Recreate { drift, .. } => problems.extend(
                        drift
                            .into_iter()
                            .map(|d| format!("{name}: {} runs with {d}", w.name)),
                    ),
                    Task::Create { .. } => {
                        problems.push(format!("{name}: {} does not exist", w.name))
                    }
                    _ => {}
                }
            }
        }
        if !problems.is_empty() {
            return Err(PluginError::VerificationFailed(problems.join("; ")));
        }
        Ok(Outcome {
            changed: false,
            summary: format!(
                "{} services running, healthy, with the snapshot's images and configuration",
                snapshot.services.len()
            ),
            details: Vec::new(),
        })
    }
}

/// Do one container's task; a line for the outcome's details.
fn act(
    settings: &Settings,
    service_name: &str,
    service: &Service,
    w: &ContainerWork,
) -> Result<Option<String>, PluginError> {
    let name = &w.name;
    match &w.task {
        Task::Keep { starting: false } => Ok(None),
        Task::Keep { starting: true } => {
            // A restore cut off right after recreating it, run again.
            await_healthy(
                settings,
                service_name,
                name,
                "runs as the snapshot recorded",
            )?;
            Ok(Some(format!("{service_name}: {name} became healthy")))
        }
        Task::Start { state } => {
            log::info(&format!("{name}: {state}, starting it"));
            docker::restart(name)?;
            await_healthy(settings, service_name, name, "was started")?;
            Ok(Some(format!(
                "{service_name}: {name} was {state}, started, healthy"
            )))
        }
        Task::Recreate { config, drift } => {
            log::info(&format!(
                "{name}: recreating from the snapshot's configuration"
            ));
            let new = docker::recreate_from(name, &config.document)?;
            await_healthy(
                settings,
                service_name,
                &new.name,
                "was recreated from the snapshot's configuration",
            )?;
            Ok(Some(format!(
                "{service_name}: {} recreated from the snapshot's configuration ({} \
                 difference(s): {}), healthy",
                new.name,
                drift.len(),
                drift
                    .iter()
                    .map(|d| d.split(':').next().unwrap_or(d))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        Task::Create { config } => {
            let new = docker::recreate_from(name, &config.document)?;
            await_healthy(
                settings,
                service_name,
                &new.name,
                "was created from the snapshot's configuration",
            )?;
            Ok(Some(format!(
                "{service_name}: {} created from the snapshot's configuration, healthy",
                new.name
            )))
        }
        Task::Image { reference, from } => {
            log::info(&format!("{name}: {from} -> {reference}"));
            let new = docker::recreate(name, reference, &service.compose_labels)?;
            await_healthy(
                settings,
                service_name,
                &new.name,
                &format!("was recreated on {reference}"),
            )?;
            Ok(Some(format!(
                "{service_name}: {} {from} -> {reference} ({}), healthy",
                new.name,
                short(&service.image_id)
            )))
        }
    }
}

export_plugin!(Compose);
