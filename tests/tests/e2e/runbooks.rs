//! The runbooks' platforms in miniature, rolled back with the plans of
//! deploy/examples through the real path, and checked on the components.

use crate::release_dir::{get, platform, point, stop, wait_serving};
use rewind_tests::alembic::AlembicProject;
use rewind_tests::docker::{Project, inspect};
use rewind_tests::fleet::{CommandOutput, TestFleet};
use rewind_tests::free_port;
use rewind_tests::platform::{self, Data, Platform};
use rewind_tests::postgres::PgServer;
use rewind_tests::providers::{ProviderApi, Received};
use std::path::Path;

fn chat(_: &Received) -> (u16, String) {
    (200, "ok".into())
}

/// What the chat stand-in received, message by message.
fn bodies(chat: &ProviderApi) -> Vec<String> {
    chat.requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

/// The chat's last message says the run to `release` ended with `verdict`
/// (the finally hook ran).
fn assert_told(chat: &ProviderApi, release: &str, verdict: &str) {
    let messages = bodies(chat);
    let ending = format!("to {release}: {verdict}\"}}");
    assert!(
        messages.last().is_some_and(|m| m.ends_with(&ending)),
        "the last chat message ends with {ending}: {messages:?}"
    );
}

/// Runbook 003: releases with a `current` link and a restart script, an
/// Alembic schema on PostgreSQL, a smoke check and chat messages, with the
/// plan of deploy/examples/systemd-release-dir.
struct Runbook003 {
    pg: PgServer,
    root: tempfile::TempDir,
    port: u16,
    chat: ProviderApi,
    fleet: TestFleet,
}

async fn runbook_003(v1_health: bool) -> Runbook003 {
    let pg = PgServer::start();
    pg.psql("rewind", "CREATE DATABASE shop");
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = root.path().join("myapp");
    platform(&app, port, v1_health);
    let project = AlembicProject::create(&root.path().join("schema"), &pg, "shop");
    // The release v1: current -> releases/v1, schema at a1, some orders.
    point(&app, "v1");
    project.run(&["upgrade", "a1"]);
    pg.psql("shop", "INSERT INTO orders (item) VALUES ('first')");
    let chat = ProviderApi::start(chat);
    let targets = format!(
        "[plugins.release-dir]\npath = \"{{plugins}}/release_dir.wasm\"\nallow_unsigned = true\n\
         [plugins.migrations]\npath = \"{{plugins}}/migrations.wasm\"\nallow_unsigned = true\n\
         [plugins.command]\npath = \"{{plugins}}/command.wasm\"\nallow_unsigned = true\n\n\
         [targets.app]\nplugin = \"release-dir\"\n\
         settings = {{ root = \"{app}\", restart = [\"{app}/restart.sh\"], health_url = \"http://127.0.0.1:{port}/healthz\", health_timeout_secs = 5 }}\n\
         grant = {{ files = [\"{app}\"], process = [{{ program = \"{app}/restart.sh\", args = [[]] }}], http = [\"127.0.0.1:{port}\"] }}\n\n\
         [targets.schema]\nplugin = \"migrations\"\nsettings = {{ config = \"alembic.ini\" }}\n{grant}\n\n\
         [targets.smoke]\nplugin = \"command\"\n\
         settings = {{ commands = {{ version = [\"grep\", \"-x\", \"v1\", \"{app}/current/version.txt\"] }}, verify = [\"version\"] }}\n\
         grant = {{ process = [{{ program = \"grep\", args = [[\"-x\", \"v1\", \"{app}/current/version.txt\"]] }}] }}\n",
        app = app.display(),
        grant = project.grant(),
    );
    let fleet = TestFleet::start_agents(vec![("app-1".into(), "app".into(), targets)], None).await;
    fleet.checkpoint("v1.4.2").await;
    // The bad release: v2 live and restarted, three migrations, new rows.
    point(&app, "v2");
    assert!(
        std::process::Command::new(app.join("restart.sh"))
            .status()
            .unwrap()
            .success()
    );
    wait_serving(port, "v2");
    project.run(&["upgrade", "d4"]);
    pg.psql(
        "shop",
        "INSERT INTO orders (item, note) VALUES ('second', 'after the release')",
    );
    Runbook003 {
        pg,
        root,
        port,
        chat,
        fleet,
    }
}

/// Runbook 003's platform rolled back to v1.4.2 with the example plan: the
/// CLI's output and what the app served afterwards (it is stopped then).
async fn rolled_back_003(v1_health: bool) -> (Runbook003, CommandOutput, Option<String>) {
    let r = runbook_003(v1_health).await;
    let plan = example_plan("systemd-release-dir/plan.toml", r.chat.port);
    let out = r
        .fleet
        .rollback_cli(&plan, "v1.4.2", &["--confirm-data-loss"]);
    let served = get(r.port, "/version.txt");
    stop(&r.root.path().join("myapp"));
    (r, out, served)
}

/// The example plan, with its agents' label and the chat URL of this test.
fn example_plan(file: &str, chat_port: u16) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .replace("role = \"app\"", "tier = \"app\"")
        .replace(
            "https://hooks.slack.com/services/T000/B000/XXXX",
            &format!("http://127.0.0.1:{chat_port}/chat"),
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn runbook_003_release_schema_and_smoke_check_roll_back_together() {
    let (Runbook003 { pg, root, chat, .. }, out, served) = rolled_back_003(true).await;
    let app = root.path().join("myapp");
    assert!(out.success, "{out}");
    assert_eq!(served.as_deref(), Some("v1"), "the app serves v1");
    // The components: link, served release, schema revision, rows.
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap(),
        Path::new("releases/v1")
    );
    assert_eq!(
        pg.psql("shop", "SELECT version_num FROM alembic_version"),
        "a1"
    );
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT string_agg(item, ',' ORDER BY id) FROM orders"
        ),
        "first,second"
    );
    let messages = bodies(&chat);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[1].ends_with("to v1.4.2: succeeded\"}"),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runbook_003_a_failed_app_stage_is_reported_host_by_host() {
    // v1 has no health endpoint: its app stage fails after the schema went down.
    let (Runbook003 { pg, root, chat, .. }, out, served) = rolled_back_003(false).await;
    let app = root.path().join("myapp");
    assert!(!out.success, "{out}");
    // The app is back on v2, serving; the schema stage had finished.
    assert_eq!(served.as_deref(), Some("v2"));
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap(),
        Path::new("releases/v2")
    );
    assert_eq!(
        pg.psql("shop", "SELECT version_num FROM alembic_version"),
        "a1"
    );
    assert!(
        out.stdout.contains(
            "app-1 (staging): schema/schema restore (changed); app/app failed (verification-failed)"
        ),
        "{out}"
    );
    assert_told(&chat, "v1.4.2", "failed");
}

/// Runbook 004: the 12-layer compose project, PostgreSQL, etcd, the env
/// file and the UI behind Varnish, with maintenance mode and the status
/// page around the rollback, rolled back in one run by the example plan.
#[tokio::test(flavor = "multi_thread")]
async fn runbook_004_the_whole_platform_rolls_back_in_one_run() {
    let platform = Platform::start("rb004", Data::Small).await;
    let (v1, v2) = platform::images();
    let good = platform.state();
    assert!(
        good.containers
            .iter()
            .all(|(_, image, health)| image == v1 && health == "healthy"),
        "{good:?}"
    );
    platform.deploy_bad_release(true);
    let bad = platform.state();
    assert!(bad.containers.iter().all(|(_, image, _)| image == v2));
    assert_ne!(bad.database, good.database);
    assert_ne!(bad.keys, good.keys);
    assert_ne!(bad.env, good.env);
    assert_ne!(bad.ui, good.ui);

    let out = platform.roll_back();
    assert!(out.success, "{out}");
    // Everything as it was, read from PostgreSQL, etcd, the disk, Docker
    // (image ids, health) and Varnish.
    assert_eq!(platform.state(), good);
    let (maintenance, history) = platform.maintenance();
    assert_eq!(maintenance, "off");
    assert_eq!(
        history,
        ["on", "off"],
        "maintenance mode was on during the run"
    );
    // The layers came back in the runbook's order.
    let started = |service: &str| {
        inspect(&platform.project.container(service))["State"]["StartedAt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (before, after) in [
        ("l01-data-layer", "l02-runtime"),
        ("l07-learning", "l09-api-gateway"),
        ("l09-api-gateway", "l10-human-interface"),
        ("l10-human-interface", "l12-nl-interface"),
    ] {
        assert!(started(before) < started(after), "{before} before {after}");
    }
    let messages = platform.status_messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0].0, "/api/incidents");
    assert_eq!(messages[1].0, "/api/incidents/update");
    for (_, authorization, _) in &messages {
        assert_eq!(authorization, "Bearer statuspage-token-for-the-miniature");
    }
    assert!(
        messages[1].2.contains("\"verdict\":\"succeeded\""),
        "{messages:?}"
    );
}

/// Runbook 004 where the core stage fails half-way: the bad release moved
/// the planner's model where only v2 finds it, so L05 on v1 never becomes
/// healthy. The run stops there with L05 put back on v2; the later stages
/// never start; maintenance mode is still switched off; the report says
/// where each host was left.
#[tokio::test(flavor = "multi_thread")]
async fn runbook_004_a_core_layer_that_cannot_come_back_stops_the_run_there() {
    let platform = Platform::start("rb004f", Data::Small).await;
    let (v1, v2) = platform::images();
    let good = platform.state();
    platform.deploy_bad_release(false);
    let bad = platform.state();

    let out = platform.roll_back();
    assert!(!out.success, "{out}");
    // The new L05 was put back and started; it becomes healthy again.
    platform
        .project
        .wait_healthy(std::time::Duration::from_secs(30));
    let now = platform.state();
    // The stages before core finished.
    assert_eq!(now.database, good.database);
    assert_eq!(now.keys, good.keys);
    assert_eq!(now.env, good.env);
    let image = |service: &str| {
        now.containers
            .iter()
            .find(|(s, _, _)| s == service)
            .map(|(_, image, health)| (image.as_str(), health.as_str()))
            .unwrap()
    };
    assert_eq!(image("l01-data-layer"), (v1.as_str(), "healthy"));
    // L05 put back on v2, serving; the later layers and the UI untouched.
    assert_eq!(image("l05-planning"), (v2.as_str(), "healthy"));
    for service in ["l09-api-gateway", "l10-human-interface", "l12-nl-interface"] {
        assert_eq!(image(service), (v2.as_str(), "healthy"), "{service}");
    }
    assert_eq!(now.ui, bad.ui);
    let (maintenance, history) = platform.maintenance();
    assert_eq!(maintenance, "off", "the finally hook ran");
    assert_eq!(history, ["on", "off"]);
    let messages = platform.status_messages();
    assert!(
        messages
            .last()
            .is_some_and(|(_, _, body)| body.contains("\"verdict\":\"failed\"")),
        "{messages:?}"
    );
    for line in [
        "db-1 (staging): data/postgres restore (changed)",
        "config-1 (staging): config/etcd-config restore (changed)",
        "ui-1 (staging): ui/ui-build not started",
    ] {
        assert!(out.stdout.contains(line), "{line}: {out}");
    }
    assert!(
        out.stdout.contains(
            "app-1 (staging): env/env-file restore (changed); l01/l01 restore (changed); core/core failed (failed); gateway/gateway not started; interface/interface not started"
        ),
        "{out}"
    );
    assert!(
        out.stdout.contains("l05-planning"),
        "the failure names the service: {out}"
    );
}

/// Caddy (Debian's) as the reverse proxy of runbook 001, with its admin API
/// on its own port so that `caddy reload` of the Caddyfile reaches it.
struct Caddy {
    child: std::process::Child,
    port: u16,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn caddyfile(admin: u16, port: u16, upstream: u16) -> String {
    format!(
        "{{\n\tadmin 127.0.0.1:{admin}\n\tauto_https off\n}}\n\n\
         http://127.0.0.1:{port} {{\n\treverse_proxy 127.0.0.1:{upstream}\n}}\n"
    )
}

impl Caddy {
    fn start(upstream: u16) -> Caddy {
        let dir = tempfile::tempdir().unwrap();
        let (admin, port) = (free_port(), free_port());
        let file = dir.path().join("Caddyfile");
        std::fs::write(&file, caddyfile(admin, port, upstream)).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = std::process::Command::new("caddy")
            .args(["run", "--config"])
            .arg(&file)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting caddy (Debian's caddy; scripts/install-deps installs it)");
        let caddy = Caddy {
            child,
            port,
            file,
            _dir: dir,
        };
        caddy.wait_serving("v1");
        caddy
    }

    fn serving(&self) -> Option<String> {
        get(self.port, "/version").map(|v| v.trim().to_string())
    }

    fn wait_serving(&self, version: &str) {
        rewind_tests::wait::eventually(
            &format!("caddy serves {version}"),
            std::time::Duration::from_secs(30),
            || match self.serving() {
                Some(served) if served == version => Ok(()),
                other => Err(other),
            },
        );
    }

    /// Point the proxy at another upstream, as a deploy does.
    fn switch(&self, upstream: u16) {
        let text = std::fs::read_to_string(&self.file).unwrap();
        let admin: u16 = text
            .split("admin 127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        std::fs::write(&self.file, caddyfile(admin, self.port, upstream)).unwrap();
        rewind_tests::docker::run(
            "caddy",
            &["reload", "--config", &self.file.display().to_string()],
        );
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One color of runbook 001: a compose project of one `api` service on
/// `rewind-test/app:<tag>`, published on `port`.
fn color(name: &str, tag: &str, port: u16) -> Project {
    Project::with_file(
        name,
        &format!(
            "version: \"2.4\"\nservices:\n  api:\n    image: {}:{tag}\n    init: true\n    stop_grace_period: 2s\n    ports: [\"127.0.0.1:{port}:8080\"]\n",
            rewind_tests::docker::REPO
        ),
        &[],
    )
}

fn compose_cli(project: &Project, command: &str) {
    rewind_tests::docker::run(
        "docker-compose",
        &[
            "-p",
            &project.name,
            "-f",
            &project.file().display().to_string(),
            command,
        ],
    );
}

/// Runbook 001: blue (v1) live behind Caddy; the bad release started green
/// (v2), switched the proxy to it and stopped blue.
struct Runbook001 {
    blue: Project,
    green: Project,
    blue_port: u16,
    caddy: Caddy,
    good_caddyfile: String,
    chat: ProviderApi,
    fleet: TestFleet,
}

async fn runbook_001(name: &str) -> Runbook001 {
    rewind_tests::docker::v1_v2();
    let (blue_port, green_port) = (free_port(), free_port());
    let blue = color(&format!("{name}blue"), "v1", blue_port);
    let green = color(&format!("{name}green"), "v2", green_port);
    blue.up("v1");
    let caddy = Caddy::start(blue_port);
    let good_caddyfile = std::fs::read_to_string(&caddy.file).unwrap();
    let chat = ProviderApi::start(chat);
    let green_file = green.file().display().to_string();
    let caddy_file = caddy.file.display().to_string();
    let caddy_dir = caddy.file.parent().unwrap().display().to_string();
    let targets = format!(
        "[plugins.compose]\npath = \"{{plugins}}/compose.wasm\"\nallow_unsigned = true\n\
         [plugins.files]\npath = \"{{plugins}}/files.wasm\"\nallow_unsigned = true\n\
         [plugins.command]\npath = \"{{plugins}}/command.wasm\"\nallow_unsigned = true\n\n\
         [targets.blue]\nplugin = \"compose\"\n\
         settings = {{ project = \"{blue}\", health_timeout_secs = 20 }}\ngrant = {{ docker = [\"{blue}\"] }}\n\n\
         [targets.proxy]\nplugin = \"files\"\n\
         settings = {{ files = [\"{caddy_file}\"], reload = [\"caddy\", \"reload\", \"--config\", \"{caddy_file}\"] }}\n\
         grant = {{ files = [\"{caddy_dir}\"], process = [{{ program = \"caddy\", args = [[\"reload\", \"--config\", \"{caddy_file}\"]] }}], docker = [] }}\n\n\
         [targets.green]\nplugin = \"command\"\n\
         settings = {{ commands = {{ stop = [\"docker-compose\", \"-p\", \"{green}\", \"-f\", \"{green_file}\", \"stop\"] }}, restart = [\"stop\"] }}\n\
         grant = {{ process = [{{ program = \"docker-compose\", args = [[\"-p\", \"{green}\", \"-f\", \"{green_file}\", \"stop\"]] }}] }}\n",
        blue = blue.name,
        green = green.name,
    );
    let fleet =
        TestFleet::start_agents(vec![("edge-1".into(), "edge".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    // The bad release: green up on v2, the proxy switched, blue stopped.
    green.up("v2");
    caddy.switch(green_port);
    caddy.wait_serving("v2");
    compose_cli(&blue, "stop");
    Runbook001 {
        blue,
        green,
        blue_port,
        caddy,
        good_caddyfile,
        chat,
        fleet,
    }
}

/// The example plan of runbook 001 pointed at this edge host.
fn blue_green_plan(r: &Runbook001) -> String {
    example_plan("blue-green/plan.toml", r.chat.port)
        .replace("role = \"edge\"", "tier = \"edge\"")
        .replace(
            "http://127.0.0.1:8081/health",
            &format!("http://127.0.0.1:{}/version", r.blue_port),
        )
        .replace(
            "{ http = \"http://127.0.0.1/health\", body = \"blue\"",
            &format!(
                "{{ http = \"http://127.0.0.1:{}/version\", body = \"v1\"",
                r.caddy.port
            ),
        )
}

fn container_state(project: &Project) -> (String, String) {
    let i = inspect(&project.container("api"));
    (
        i["Image"].as_str().unwrap().to_string(),
        i["State"]["Status"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn runbook_001_blue_comes_back_then_the_proxy_then_green_stops() {
    let r = runbook_001("rb001").await;
    let (v1, v2) = rewind_tests::docker::v1_v2();
    let out = r.fleet.rollback_cli(&blue_green_plan(&r), "v1", &[]);
    assert!(out.success, "{out}");
    // From Caddy, Docker and the disk.
    assert_eq!(r.caddy.serving().as_deref(), Some("v1"));
    assert_eq!(
        std::fs::read_to_string(&r.caddy.file).unwrap(),
        r.good_caddyfile
    );
    assert_eq!(container_state(&r.blue), (v1.clone(), "running".into()));
    assert_eq!(container_state(&r.green), (v2.clone(), "exited".into()));
    let started = inspect(&r.blue.container("api"))["State"]["StartedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let stopped = inspect(&r.green.container("api"))["State"]["FinishedAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(started < stopped, "green stopped only after blue was back");
    assert_told(&r.chat, "v1", "succeeded");
}

/// Blue cannot start (its port was taken while it was stopped): the run
/// stops at the blue stage, the proxy never switches and green keeps
/// serving; the report says where the host was left.
#[tokio::test(flavor = "multi_thread")]
async fn runbook_001_a_blue_that_cannot_start_leaves_green_serving() {
    let r = runbook_001("rb001f").await;
    let (_, v2) = rewind_tests::docker::v1_v2();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", r.blue_port)).unwrap();
    let out = r.fleet.rollback_cli(&blue_green_plan(&r), "v1", &[]);
    drop(squatter);
    assert!(!out.success, "{out}");
    assert_eq!(
        r.caddy.serving().as_deref(),
        Some("v2"),
        "green still serves"
    );
    assert_eq!(container_state(&r.green), (v2.clone(), "running".into()));
    assert_ne!(container_state(&r.blue).1, "running");
    assert!(
        out.stdout.contains(
            "edge-1 (staging): blue/blue failed (failed); switch/proxy not started; stop-green/green not started"
        ),
        "{out}"
    );
    assert_told(&r.chat, "v1", "failed");
}

/// A single-host platform as runbooks 000 and 002 keep it: one compose
/// service on the platform image (its release needs its model file on the
/// host), PostgreSQL, a switch file (nginx's maintenance page, the load
/// balancer's drain) and a chat channel.
struct SingleHost {
    pg: PgServer,
    project: Project,
    service: &'static str,
    dir: tempfile::TempDir,
    port: u16,
    chat: ProviderApi,
}

impl SingleHost {
    fn start(name: &str, service: &'static str) -> SingleHost {
        platform::images();
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("planner.bin"), "weights v1\n").unwrap();
        let port = free_port();
        let project = Project::with_file(
            name,
            &format!(
                "version: \"2.4\"\nservices:\n  {service}:\n    image: {}:${{TAG}}\n    init: true\n    stop_grace_period: 2s\n    ports: [\"127.0.0.1:{port}:8080\"]\n    volumes: [\"{}:/models:ro\"]\n",
                rewind_tests::docker::PLATFORM_REPO,
                models.display()
            ),
            &[],
        );
        project.up("v1");
        SingleHost {
            pg: PgServer::start(),
            project,
            service,
            dir,
            port,
            chat: ProviderApi::start(chat),
        }
    }

    fn path(&self, relative: &str) -> std::path::PathBuf {
        self.dir.path().join(relative)
    }

    /// The bad release's images; `keep_v1_model = false` moved the model
    /// file where only the new release finds it.
    fn deploy_v2(&self, keep_v1_model: bool) {
        platform::ship_v2_model(&self.path("models"), keep_v1_model);
        self.project.up("v2");
    }

    /// The service's (image id, health).
    fn container(&self) -> (String, String) {
        let i = inspect(&self.project.container(self.service));
        (
            i["Image"].as_str().unwrap().to_string(),
            i["State"]["Health"]["Status"]
                .as_str()
                .unwrap_or("none")
                .to_string(),
        )
    }

    /// A compose target of the service, and a command target `name`
    /// whose commands create and remove the switch file `switch`.
    fn targets(&self, target: &str, name: &str, (on, off): (&str, &str), switch: &str) -> String {
        let switch = self.path(switch).display().to_string();
        format!(
            "[plugins.compose]\npath = \"{{plugins}}/compose.wasm\"\nallow_unsigned = true\n\
             [plugins.command]\npath = \"{{plugins}}/command.wasm\"\nallow_unsigned = true\n\n\
             [targets.{target}]\nplugin = \"compose\"\n\
             settings = {{ project = \"{project}\", services = [\"{service}\"], health_timeout_secs = 20 }}\n\
             grant = {{ docker = [\"{project}\"] }}\n\n\
             [targets.{name}]\nplugin = \"command\"\n\
             settings = {{ commands = {{ {on} = [\"touch\", \"{switch}\"], {off} = [\"rm\", \"-f\", \"{switch}\"] }} }}\n\
             grant = {{ process = [{{ program = \"touch\", args = [[\"{switch}\"]] }}, {{ program = \"rm\", args = [[\"-f\", \"{switch}\"]] }}] }}\n\n",
            project = self.project.name,
            service = self.service,
        )
    }

    /// An example plan pointed at this host.
    fn plan(&self, file: &str) -> String {
        example_plan(file, self.chat.port).replace(
            "http://127.0.0.1:8000/health",
            &format!("http://127.0.0.1:{}/health/live", self.port),
        )
    }
}

/// Runbook 000: database, configuration and backend on one host; the
/// database of the test holds documents, its schema table and its users.
struct Runbook000 {
    host: SingleHost,
    fleet: TestFleet,
    good_database: String,
    good_files: Vec<String>,
}

fn sowknow_database(pg: &PgServer) -> String {
    pg.psql(
        "sowknow",
        "SELECT (SELECT string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, ordinal_position) \
                 FROM information_schema.columns WHERE table_schema = 'public') \
         || ' | ' || (SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations) \
         || ' | ' || (SELECT count(*) || ' ' || md5(string_agg(id || title, ',' ORDER BY id)) FROM documents)",
    )
}

const SOWKNOW_FILES: [&str; 2] = ["backend/.env.production", "nginx/nginx.conf"];

async fn runbook_000(name: &str) -> Runbook000 {
    let host = SingleHost::start(name, "backend");
    host.pg.psql("rewind", "CREATE DATABASE sowknow");
    host.pg.psql(
        "sowknow",
        "CREATE TABLE schema_migrations (version text PRIMARY KEY); \
         INSERT INTO schema_migrations VALUES ('20260101'); \
         CREATE TABLE documents (id serial PRIMARY KEY, title text NOT NULL); \
         INSERT INTO documents (title) SELECT 'document ' || i FROM generate_series(1, 500) i",
    );
    for (file, text) in SOWKNOW_FILES.iter().zip([
        "DATABASE_URL=postgresql://sowknow@postgres/sowknow\nLLM_MODEL=small\n",
        "events {}\nhttp { server { listen 80; location / { proxy_pass http://backend:8000; } } }\n",
    ]) {
        let path = host.path(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let (settings, grant) = rewind_tests::postgres::pg_restore_target(&host.pg, "sowknow");
    let targets = format!(
        "{}[plugins.pg-restore]\npath = \"{{plugins}}/pg_restore.wasm\"\nallow_unsigned = true\n\
         [plugins.files]\npath = \"{{plugins}}/files.wasm\"\nallow_unsigned = true\n\n\
         [targets.db]\nplugin = \"pg-restore\"\nsettings = {settings}\ngrant = {grant}\n\n\
         [targets.config]\nplugin = \"files\"\n\
         settings = {{ files = [\"{env}\", \"{nginx}\"] }}\ngrant = {{ files = [\"{dir}\"], process = [], docker = [] }}\n",
        host.targets(
            "backend",
            "maintenance",
            ("on", "off"),
            "nginx/maintenance.on"
        ),
        env = host.path(SOWKNOW_FILES[0]).display(),
        nginx = host.path(SOWKNOW_FILES[1]).display(),
        dir = host.dir.path().display(),
    );
    let fleet = TestFleet::start_agents(vec![("app-1".into(), "app".into(), targets)], None).await;
    fleet.checkpoint("2026.02.15").await;
    let good_database = sowknow_database(&host.pg);
    let good_files = files_of(&host);
    Runbook000 {
        host,
        fleet,
        good_database,
        good_files,
    }
}

fn files_of(host: &SingleHost) -> Vec<String> {
    SOWKNOW_FILES
        .iter()
        .map(|f| std::fs::read_to_string(host.path(f)).unwrap())
        .collect()
}

/// The bad release of runbook 000: a migration, rows, configuration and
/// the backend's image.
fn deploy_sowknow_v2(r: &Runbook000, keep_v1_model: bool) {
    r.host.pg.psql(
        "sowknow",
        "ALTER TABLE documents ADD COLUMN embedding text; \
         INSERT INTO schema_migrations VALUES ('20260301'); \
         UPDATE documents SET title = upper(title) WHERE id % 7 = 0",
    );
    std::fs::write(
        r.host.path(SOWKNOW_FILES[0]),
        "DATABASE_URL=postgresql://sowknow@postgres/sowknow\nLLM_MODEL=large\n",
    )
    .unwrap();
    std::fs::write(r.host.path(SOWKNOW_FILES[1]), "events {}\nhttp { server { listen 80; location / { proxy_pass http://backend:8001; } } }\n").unwrap();
    r.host.deploy_v2(keep_v1_model);
}

#[tokio::test(flavor = "multi_thread")]
async fn runbook_000_database_configuration_and_backend_roll_back_together() {
    let r = runbook_000("rb000").await;
    let (v1, _) = platform::images();
    deploy_sowknow_v2(&r, true);
    assert_ne!(sowknow_database(&r.host.pg), r.good_database);
    let out = r.fleet.rollback_cli(
        &r.host.plan("compose-postgres/plan.toml"),
        "2026.02.15",
        &["--confirm-data-loss"],
    );
    assert!(out.success, "{out}");
    assert_eq!(sowknow_database(&r.host.pg), r.good_database);
    assert_eq!(files_of(&r.host), r.good_files);
    assert_eq!(r.host.container(), (v1.clone(), "healthy".into()));
    assert!(
        !r.host.path("nginx/maintenance.on").exists(),
        "maintenance page off"
    );
    let report = r.fleet.report(&TestFleet::run_id_of(&out)).await;
    let on = report
        .hooks
        .iter()
        .find(|h| h.name == "maintenance-on")
        .unwrap();
    assert_eq!(on.status, "succeeded", "{on:?}");
    assert_told(&r.host.chat, "2026.02.15", "succeeded");
}

/// The backend's old image cannot come up (the bad release moved the model
/// it needs): the database and configuration are back, the backend stays
/// on the new image, serving, and the maintenance page still goes away.
#[tokio::test(flavor = "multi_thread")]
async fn runbook_000_a_backend_that_cannot_come_back_is_reported_and_maintenance_ends() {
    let r = runbook_000("rb000f").await;
    let (_, v2) = platform::images();
    deploy_sowknow_v2(&r, false);
    let out = r.fleet.rollback_cli(
        &r.host.plan("compose-postgres/plan.toml"),
        "2026.02.15",
        &["--confirm-data-loss"],
    );
    assert!(!out.success, "{out}");
    // The new backend was put back and started; it becomes healthy again.
    r.host
        .project
        .wait_healthy(std::time::Duration::from_secs(30));
    assert_eq!(sowknow_database(&r.host.pg), r.good_database);
    assert_eq!(files_of(&r.host), r.good_files);
    assert_eq!(
        r.host.container(),
        (v2.clone(), "healthy".into()),
        "the new backend was put back"
    );
    assert!(
        !r.host.path("nginx/maintenance.on").exists(),
        "maintenance page off"
    );
    assert!(
        out.stdout.contains("app-1 (staging): data/db restore (changed); config/config restore (changed); services/backend failed (failed)"),
        "{out}"
    );
    assert_told(&r.host.chat, "2026.02.15", "failed");
}

/// Runbook 002: the api on compose and a migrations folder with rollback
/// scripts, on PostgreSQL.
struct Runbook002 {
    host: SingleHost,
    fleet: TestFleet,
}

const SOLVEREIGN_MIGRATIONS: [(&str, &str); 6] = [
    (
        "001_routes.sql",
        "CREATE TABLE routes (id serial PRIMARY KEY, name text NOT NULL)",
    ),
    ("001_routes_rollback.sql", "DROP TABLE routes"),
    (
        "002_route_index.sql",
        "CREATE INDEX routes_by_name ON routes (name)",
    ),
    ("002_route_index_rollback.sql", "DROP INDEX routes_by_name"),
    (
        "003_route_cost.sql",
        "ALTER TABLE routes ADD COLUMN cost int NOT NULL DEFAULT 0",
    ),
    (
        "003_route_cost_rollback.sql",
        "ALTER TABLE routes DROP COLUMN cost",
    ),
];

fn apply_migration(host: &SingleHost, version: &str) {
    let (_, sql) = SOLVEREIGN_MIGRATIONS
        .iter()
        .find(|(f, _)| f.starts_with(version) && !f.ends_with("_rollback.sql"))
        .unwrap();
    host.pg.psql(
        "solvereign",
        &format!("{sql}; INSERT INTO schema_migrations VALUES ('{version}')"),
    );
}

fn solvereign_schema(pg: &PgServer) -> String {
    pg.psql(
        "solvereign",
        "SELECT (SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'routes') \
         || ' | ' || (SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations) \
         || ' | ' || (SELECT count(*) FROM pg_indexes WHERE tablename = 'routes')",
    )
}

async fn runbook_002(name: &str, broken_index_rollback: bool) -> Runbook002 {
    let host = SingleHost::start(name, "api");
    host.pg.psql("rewind", "CREATE DATABASE solvereign");
    host.pg.psql(
        "solvereign",
        "CREATE TABLE schema_migrations (version text PRIMARY KEY)",
    );
    let dir = host.path("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    for (file, sql) in SOLVEREIGN_MIGRATIONS {
        // A rollback script nobody ran before: it names the index wrongly.
        let sql = if broken_index_rollback && file == "002_route_index_rollback.sql" {
            "DROP INDEX routes_name_idx"
        } else {
            sql
        };
        std::fs::write(dir.join(file), format!("{sql};\n")).unwrap();
    }
    apply_migration(&host, "001");
    host.pg.psql(
        "solvereign",
        "INSERT INTO routes (name) VALUES ('north'), ('south')",
    );
    let smoke = format!("http://127.0.0.1:{}/health/live", host.port);
    let targets = format!(
        "{}[plugins.sql-migrations]\npath = \"{{plugins}}/sql_migrations.wasm\"\nallow_unsigned = true\n\n\
         [targets.schema]\nplugin = \"sql-migrations\"\n\
         settings = {{ dir = \"{dir}\", database = \"solvereign\" }}\n\
         grant = {{ files = [\"{dir}\"], postgres = {{ host = \"{socket}\", user = \"rewind\", databases = [\"solvereign\"] }} }}\n\n\
         [targets.smoke]\nplugin = \"command\"\n\
         settings = {{ commands = {{ smoke = [\"curl\", \"-fsS\", \"{smoke}\"] }}, verify = [\"smoke\"] }}\n\
         grant = {{ process = [{{ program = \"curl\", args = [[\"-fsS\", \"{smoke}\"]] }}] }}\n",
        host.targets("api", "traffic", ("stop", "restore"), "drain"),
        dir = dir.display(),
        socket = host.pg.socket_dir().display(),
    );
    let fleet = TestFleet::start_agents(vec![("app-1".into(), "app".into(), targets)], None).await;
    fleet.checkpoint("v41").await;
    // The bad release: two migrations, new rows, the api on v2.
    apply_migration(&host, "002");
    apply_migration(&host, "003");
    host.pg.psql(
        "solvereign",
        "INSERT INTO routes (name, cost) VALUES ('east', 7)",
    );
    host.deploy_v2(true);
    Runbook002 { host, fleet }
}

#[tokio::test(flavor = "multi_thread")]
async fn runbook_002_api_and_schema_roll_back_and_the_rows_stay() {
    let r = runbook_002("rb002", false).await;
    let (v1, _) = platform::images();
    let out = r.fleet.rollback_cli(
        &r.host.plan("compose-sql-migrations/plan.toml"),
        "v41",
        &["--confirm-data-loss"],
    );
    assert!(out.success, "{out}");
    assert!(
        out.stdout.contains("ALTER TABLE routes DROP COLUMN cost"),
        "the preview shows the SQL: {out}"
    );
    assert_eq!(solvereign_schema(&r.host.pg), "id,name | 001 | 1");
    assert_eq!(
        r.host.pg.psql(
            "solvereign",
            "SELECT string_agg(name, ',' ORDER BY id) FROM routes"
        ),
        "north,south,east",
        "rows written since the release stay"
    );
    assert_eq!(r.host.container(), (v1.clone(), "healthy".into()));
    assert!(!r.host.path("drain").exists(), "traffic restored");
    assert_told(&r.host.chat, "v41", "succeeded");
}

/// A rollback script that fails (it names an index that does not exist):
/// the schema stops at a known version, said in the report, and traffic is
/// restored all the same.
#[tokio::test(flavor = "multi_thread")]
async fn runbook_002_a_failing_rollback_script_stops_at_a_known_version() {
    let r = runbook_002("rb002f", true).await;
    let (v1, _) = platform::images();
    let out = r.fleet.rollback_cli(
        &r.host.plan("compose-sql-migrations/plan.toml"),
        "v41",
        &["--confirm-data-loss"],
    );
    assert!(!out.success, "{out}");
    // 003 went down; 002's script failed and changed nothing.
    assert_eq!(solvereign_schema(&r.host.pg), "id,name | 001,002 | 2");
    assert_eq!(
        r.host.container(),
        (v1.clone(), "healthy".into()),
        "the app stage had finished"
    );
    assert!(!r.host.path("drain").exists(), "traffic restored");
    assert!(
        out.stdout
            .contains("app-1 (staging): app/api restore (changed); schema/schema failed"),
        "{out}"
    );
    assert!(
        out.stdout.contains("002"),
        "the failure names the version: {out}"
    );
    assert_told(&r.host.chat, "v41", "failed");
}
