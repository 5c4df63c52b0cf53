//! Compose benchmark: `cargo bench -p rewind-tests --bench compose_recreate`.
//!
//! One service of a real compose project is moved between two local images,
//! alternately (a) rolled back through the compose plugin in the agent's
//! sandbox (list, checks, recreate keeping its configuration, wait healthy)
//! and (b) recreated directly through the Docker API with bollard (inspect,
//! stop, remove, create with the same configuration on the other image,
//! start, wait healthy, polling as often). Reports both medians and their
//! ratio, measured in the same run. Target: ratio at most 1.1.

use bollard::Docker;
use bollard::models::{ContainerCreateBody, NetworkingConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput};
use rewind_tests::docker::{self, Project};
use rewind_tests::{Agent, unsigned_plugin};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ROUNDS: usize = 10;

/// Recreate `name` on `image` directly: the baseline.
async fn recreate_directly(docker: &Docker, name: &str, image: &str) {
    let old = docker.inspect_container(name, None).await.unwrap();
    let mut config = old.config.clone().unwrap();
    config.image = Some(image.to_string());
    config.hostname = None;
    let mut networks = old
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let id = old.id.clone().unwrap();
    for endpoint in networks.values_mut() {
        let aliases = endpoint
            .aliases
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !id.starts_with(a.as_str()))
            .collect();
        *endpoint = bollard::models::EndpointSettings {
            aliases: Some(aliases),
            ..Default::default()
        };
    }
    let first = networks.keys().next().cloned().unwrap();
    let first_endpoint = networks.remove(&first).unwrap();
    let body = ContainerCreateBody {
        hostname: None,
        user: config.user,
        env: config.env,
        cmd: config.cmd,
        entrypoint: config.entrypoint,
        labels: config.labels,
        healthcheck: config.healthcheck,
        exposed_ports: config.exposed_ports,
        volumes: config.volumes,
        working_dir: config.working_dir,
        image: config.image,
        host_config: old.host_config.clone(),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(first, first_endpoint)])),
        }),
        ..Default::default()
    };
    docker
        .stop_container(
            name,
            Some(StopContainerOptionsBuilder::default().t(10).build()),
        )
        .await
        .unwrap();
    docker
        .remove_container(
            name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .unwrap();
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            body,
        )
        .await
        .unwrap();
    for (network, endpoint) in networks {
        docker
            .connect_network(
                &network,
                bollard::models::NetworkConnectRequest {
                    container: name.to_string(),
                    endpoint_config: Some(endpoint),
                },
            )
            .await
            .unwrap();
    }
    docker.start_container(name, None).await.unwrap();
    loop {
        let state = docker
            .inspect_container(name, None)
            .await
            .unwrap()
            .state
            .unwrap();
        let healthy = state
            .health
            .and_then(|h| h.status)
            .is_some_and(|s| s == bollard::models::HealthStatusEnum::HEALTHY);
        if healthy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (v1, _v2) = docker::v1_v2().clone();
    let project = Project::new("bench");
    project.up("v1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let agent = Agent::new(&format!(
            r#"{}
[targets.web]
plugin = "compose"
settings = {{ project = "{name}", services = ["web"], health_timeout_secs = 60 }}
grant = {{ docker = ["{name}"] }}
"#,
            unsigned_plugin("compose", "compose"),
            name = project.name,
        ));
        let ActionOutput::Captured(captured) = agent.call("web", Action::Snapshot).await.unwrap().output
        else {
            panic!("not a snapshot")
        };
        let to_v1 = SnapshotRecord {
            data: captured.data,
            summary: captured.summary,
            taken_at: 0,
        };
        let restore = Action::Restore {
            to: to_v1,
            options: RestoreOptions {
                confirm_data_loss: false,
                force: false,
                step_id: "bench".into(),
            },
        };
        let docker = Docker::connect_with_local_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        let web = project.container("web");
        // Warm up both paths once (plugin compiled, images' layers cached).
        recreate_directly(&docker, &web, "rewind-test/app:v2").await;
        agent.call("web", restore.clone()).await.unwrap();

        let mut plugin = Vec::new();
        let mut direct = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            recreate_directly(&docker, &web, "rewind-test/app:v2").await;
            direct.push(started.elapsed());

            let started = Instant::now();
            let output = agent.call("web", restore.clone()).await.unwrap();
            plugin.push(started.elapsed());
            let ActionOutput::Outcome(outcome) = output.output else {
                panic!("not an outcome")
            };
            assert!(outcome.changed);
            let image = docker::inspect(&web)["Image"].as_str().unwrap().to_string();
            assert_eq!(image, v1);
        }
        let plugin_median = median(&mut plugin);
        let direct_median = median(&mut direct);
        let ratio = plugin_median.as_secs_f64() / direct_median.as_secs_f64();
        println!(
            "compose benchmark: one service recreated on another image and waited healthy, {ROUNDS} rounds each"
        );
        println!(
            "through the plugin: median {:.0} ms (min {:.0}, max {:.0})",
            plugin_median.as_secs_f64() * 1e3,
            plugin[0].as_secs_f64() * 1e3,
            plugin[ROUNDS - 1].as_secs_f64() * 1e3
        );
        println!(
            "directly through the Docker API: median {:.0} ms (min {:.0}, max {:.0})",
            direct_median.as_secs_f64() * 1e3,
            direct[0].as_secs_f64() * 1e3,
            direct[ROUNDS - 1].as_secs_f64() * 1e3
        );
        println!(
            "ratio plugin/direct: {ratio:.3}  [target <= 1.1: {}]",
            if ratio <= 1.1 { "met" } else { "MISSED" }
        );
    });
}
