//! The compose plugin through the agent, against this machine's Docker
//! Engine: a three-service project (db <- api <- web, healthchecks, volumes,
//! networks) checkpointed on v1, moved to v2 by docker-compose, and rolled
//! back to v1.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput, CallError};
use rewind_tests::docker::{self, Project, configuration, inspect, run};
use rewind_tests::{Agent, unsigned_plugin};

fn agent(project: &Project, extra_grant: &str) -> Agent {
    Agent::new(&format!(
        r#"{}
[targets.shop]
plugin = "compose"
settings = {{ project = "{name}", health_timeout_secs = 60 }}
grant = {{ docker = ["{name}"]{extra_grant} }}
"#,
        unsigned_plugin("compose", "compose"),
        name = project.name,
    ))
}

fn restore(to: &SnapshotRecord) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: "step-1".into(),
        },
    }
}

fn outcome(output: ActionOutput) -> rewind_agent::host::bindings::Outcome {
    match output {
        ActionOutput::Outcome(o) => o,
        other => panic!("not an outcome: {other:?}"),
    }
}

const SERVICES: [&str; 3] = ["db", "api", "web"];

#[tokio::test(flavor = "multi_thread")]
async fn rollback_puts_every_service_back_on_v1_with_its_configuration_in_order() {
    let (v1, v2) = docker::v1_v2().clone();
    let project = Project::new("rollback");
    project.up("v1");
    let before: Vec<_> = SERVICES
        .iter()
        .map(|s| configuration(&project.container(s)))
        .collect();
    // Data written on v1 lives in the named volume and must outlive both moves.
    run(
        "docker",
        &[
            "exec",
            &project.container("db"),
            "/bin/busybox",
            "sh",
            "-c",
            "echo kept > /data/marker && echo anon > /scratch/marker",
        ],
    );
    let agent = agent(&project, "");
    let v1_snapshot = agent.snapshot("shop").await;
    assert!(v1_snapshot.summary.contains("rewind-test/app:v1"));

    project.up("v2");
    for service in SERVICES {
        assert_eq!(inspect(&project.container(service))["Image"], v2.as_str());
    }

    // The preview names each service's move.
    let preview = agent
        .call(
            "shop",
            Action::Plan {
                to: v1_snapshot.clone(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("plan: {e}"));
    let ActionOutput::Preview(preview) = preview.output else {
        panic!("not a preview")
    };
    let subjects: Vec<&str> = preview.changes.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(subjects, ["db", "api", "web"], "{preview:?}");
    assert!(preview.changes[0].summary.contains("rewind-test/app:v1"));

    let done = outcome(
        agent
            .call("shop", restore(&v1_snapshot))
            .await
            .unwrap_or_else(|e| panic!("restore: {e}"))
            .output,
    );
    assert!(done.changed, "{done:?}");

    // Every container runs v1 with the configuration it had on v1 (the
    // compose file's and the v1 image's, not v2's).
    for (service, before) in SERVICES.iter().zip(&before) {
        let name = project.container(service);
        let now = inspect(&name);
        assert_eq!(now["Image"], v1.as_str(), "{service}");
        assert_eq!(now["State"]["Health"]["Status"], "healthy", "{service}");
        assert_eq!(
            &configuration(&name),
            before,
            "{service}: configuration changed"
        );
    }
    // Volumes, named and anonymous, were carried over.
    let data = run(
        "docker",
        &[
            "exec",
            &project.container("db"),
            "/bin/busybox",
            "sh",
            "-c",
            "cat /data/marker /scratch/marker",
        ],
    );
    assert_eq!(data, "kept\nanon\n");
    // Dependency order: each service started after what it depends on was
    // started (and healthy: the plugin waits before moving on).
    let started = |s: &str| {
        inspect(&project.container(s))["State"]["StartedAt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(started("db") < started("api"), "db before api");
    assert!(started("api") < started("web"), "api before web");
    // The API answers with the v1 build, by its service name on `front`.
    let served = run(
        "docker",
        &[
            "exec",
            &project.container("web"),
            "/bin/busybox",
            "wget",
            "-q",
            "-O-",
            "http://api:8080/version",
        ],
    );
    assert_eq!(served, "v1\n");

    // verify agrees, and a second restore changes nothing.
    let ids: Vec<_> = SERVICES
        .iter()
        .map(|s| inspect(&project.container(s))["Id"].clone())
        .collect();
    agent
        .call(
            "shop",
            Action::Verify {
                to: v1_snapshot.clone(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    let again = outcome(
        agent
            .call("shop", restore(&v1_snapshot))
            .await
            .unwrap()
            .output,
    );
    assert!(!again.changed, "second restore: {again:?}");
    let ids_after: Vec<_> = SERVICES
        .iter()
        .map(|s| inspect(&project.container(s))["Id"].clone())
        .collect();
    assert_eq!(ids, ids_after, "a no-op restore recreated containers");

    // docker-compose itself sees the project as v1: `up` with TAG=v1 keeps
    // the containers rewind created.
    project.up("v1");
    let ids_compose: Vec<_> = SERVICES
        .iter()
        .map(|s| inspect(&project.container(s))["Id"].clone())
        .collect();
    assert_eq!(ids, ids_compose, "compose recreated what rewind put back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_is_refused_before_anything_is_stopped() {
    docker::v1_v2();
    let tag = format!("gone{}", std::process::id());
    let gone = docker::build_image(&tag, true);
    let project = Project::new("missing");
    project.up(&tag);
    let agent = agent(&project, "");
    let snapshot = agent.snapshot("shop").await;
    project.up("v2");
    run("docker", &["rmi", &format!("{}:{tag}", docker::REPO)]);
    let before: Vec<_> = SERVICES
        .iter()
        .map(|s| inspect(&project.container(s)))
        .collect();

    let error = agent
        .call("shop", restore(&snapshot))
        .await
        .expect_err("a restore to a missing image must be refused");
    let text = error.to_string();
    assert!(matches!(error, CallError::Plugin { .. }), "{text}");
    assert!(text.contains("service db"), "{text}");
    assert!(text.contains(&gone), "names the digest: {text}");
    assert!(text.contains("nothing was stopped"), "{text}");
    for (service, before) in SERVICES.iter().zip(&before) {
        let now = inspect(&project.container(service));
        assert_eq!(now["Id"], before["Id"], "{service} was recreated");
        assert_eq!(
            now["State"]["StartedAt"], before["State"]["StartedAt"],
            "{service} was restarted"
        );
        assert_eq!(now["State"]["Running"], true);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_replacement_fails_the_step_with_its_last_log_lines() {
    docker::v1_v2();
    let tag = format!("broken{}", std::process::id());
    docker::build_image(&tag, false);
    let project = Project::new("unhealthy");
    project.up("v1");
    let agent = agent(&project, "");
    let good = agent.snapshot("shop").await;
    // A snapshot whose images do not pass their healthcheck: edit the
    // recorded image of `web` to the broken build (as if it had been taken
    // while that build ran), in the format of snapshots that recorded
    // images only (no configurations), which a restore still takes (and
    // which another agent, on another state directory, can restore).
    let mut data: serde_json::Value = serde_json::from_str(&good.data).unwrap();
    let broken_id = docker::image_id(&format!("{}:{tag}", docker::REPO)).unwrap();
    data["services"]["web"]["image"] = format!("{}:{tag}", docker::REPO).into();
    data["services"]["web"]["image_id"] = broken_id.into();
    data["services"]["web"]["digests"] = serde_json::json!([]);
    for service in SERVICES {
        data["services"][service]
            .as_object_mut()
            .unwrap()
            .remove("configs");
    }
    let bad = SnapshotRecord {
        data: data.to_string(),
        ..good.clone()
    };
    let agent = Agent::new(&format!(
        r#"{}
[targets.shop]
plugin = "compose"
settings = {{ project = "{name}", health_timeout_secs = 20 }}
grant = {{ docker = ["{name}"] }}
"#,
        unsigned_plugin("compose", "compose"),
        name = project.name,
    ));
    let error = agent
        .call("shop", restore(&bad))
        .await
        .expect_err("an unhealthy replacement must fail the step");
    let text = error.to_string();
    assert!(text.contains("service web"), "{text}");
    assert!(text.contains("not healthy"), "{text}");
    assert!(
        text.contains(&format!("serving build {tag}")),
        "carries the container's last log lines: {text}"
    );
    // The old web container, kept aside until its replacement was healthy,
    // is back: on v1, running and healthy, and nothing is left aside.
    assert!(text.contains("the old container was put back"), "{text}");
    let (v1, _) = docker::v1_v2().clone();
    let web = inspect(&project.container("web"));
    assert_eq!(web["Image"], v1.as_str());
    project.wait_healthy(std::time::Duration::from_secs(60));
    assert!(
        project
            .containers()
            .iter()
            .all(|(name, _)| !name.contains("rewind-old") && !name.contains("rewind-new")),
        "{:?}",
        project.containers()
    );
    // db and api were left alone: they were already on the snapshot's image.
    assert_eq!(
        inspect(&project.container("db"))["State"]["Health"]["Status"],
        "healthy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_daemon_and_an_ungranted_project_are_clear_errors() {
    let project = Project::new("refused");
    let agent = agent(&project, r#", docker_socket = "/nonexistent/docker.sock""#);
    let error = agent
        .call("shop", Action::Snapshot)
        .await
        .expect_err("no daemon there");
    let text = error.to_string();
    assert!(text.contains("unavailable"), "{text}");
    assert!(text.contains("/nonexistent/docker.sock"), "{text}");

    let other = Agent::new(&format!(
        r#"{}
[targets.shop]
plugin = "compose"
settings = {{ project = "someone-else" }}
grant = {{ docker = ["{name}"] }}
"#,
        unsigned_plugin("compose", "compose"),
        name = project.name,
    ));
    let text = other
        .call("shop", Action::Snapshot)
        .await
        .expect_err("not granted")
        .to_string();
    assert!(text.contains("denied"), "{text}");
    assert!(text.contains("someone-else"), "{text}");
}

/// Two agents (the data tier manages `db`, the core tier `api` and `web`)
/// and a coordinator, as separate processes over mutual TLS: a release
/// checkpointed on v1 is rolled back to from v2 by a 2-stage plan, with
/// `rewind rollback` as an operator runs it.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_stage_plan_through_the_coordinator_rolls_the_project_back() {
    use rewind_tests::fleet::TestFleet;
    let (v1, _) = docker::v1_v2().clone();
    let project = Project::new("fleet");
    project.up("v1");
    let target = |services: &str| {
        format!(
            "[plugins.compose]\npath = \"{{plugins}}/compose.wasm\"\nallow_unsigned = true\n\n\
             [targets.app]\nplugin = \"compose\"\n\
             settings = {{ project = \"{name}\", services = [{services}], health_timeout_secs = 60 }}\n\
             grant = {{ docker = [\"{name}\"] }}\n",
            name = project.name
        )
    };
    let fleet = TestFleet::start_agents(
        vec![
            ("data-1".into(), "data".into(), target("\"db\"")),
            ("core-1".into(), "core".into(), target("\"api\", \"web\"")),
        ],
        None,
    )
    .await;
    fleet.checkpoint("r1").await;
    project.up("v2");

    let plan = r#"name = "shop"

[[stage]]
name = "data"
select = { tier = "data" }
target = "app"

[[stage]]
name = "core"
after = ["data"]
select = { tier = "core" }
target = "app"
health = [{ verify = true }]
"#;
    let output = fleet.rollback_cli(plan, "r1", &[]);
    assert!(output.success, "{output}");
    for service in SERVICES {
        let now = inspect(&project.container(service));
        assert_eq!(now["Image"], v1.as_str(), "{service}");
        assert_eq!(now["State"]["Health"]["Status"], "healthy", "{service}");
    }
    let started = |s: &str| {
        inspect(&project.container(s))["State"]["StartedAt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(started("db") < started("api"), "stage data before core");
    assert!(started("api") < started("web"), "api before web");
}

/// A container the snapshot has and the project lost is named in the
/// preview and created from its recorded configuration; compose then sees
/// the project as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_container_is_created_from_its_recorded_configuration() {
    let (v1, _) = docker::v1_v2().clone();
    let project = Project::new("lost");
    project.up("v1");
    let web = project.container("web");
    let before = configuration(&web);
    let agent = agent(&project, "");
    let snapshot = agent.snapshot("shop").await;
    run("docker", &["rm", "-f", &web]);

    let preview = agent
        .call(
            "shop",
            Action::Plan {
                to: snapshot.clone(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("plan: {e}"));
    let ActionOutput::Preview(preview) = preview.output else {
        panic!("not a preview")
    };
    let web_change = preview
        .changes
        .iter()
        .find(|c| c.subject == "web")
        .unwrap_or_else(|| panic!("{preview:?}"));
    assert!(
        web_change
            .summary
            .contains(&format!("create {web} from the snapshot's configuration")),
        "{web_change:?}"
    );
    let done = outcome(
        agent
            .call("shop", restore(&snapshot))
            .await
            .unwrap_or_else(|e| panic!("restore: {e}"))
            .output,
    );
    assert!(done.changed, "{done:?}");
    let now = inspect(&web);
    assert_eq!(now["Image"], v1.as_str());
    assert_eq!(configuration(&web), before, "created as it was");
    agent
        .call("shop", Action::Verify { to: snapshot })
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"));
    let id = now["Id"].clone();
    project.up("v1");
    assert_eq!(
        inspect(&web)["Id"],
        id,
        "compose kept the container rewind created"
    );
}
