//! The runbooks' platforms in miniature, rolled back with the plans of
//! deploy/examples through the real path, and checked on the components.

use crate::release_dir::{free_port, get, platform, point, stop, wait_serving};
use rewind_tests::alembic::AlembicProject;
use rewind_tests::fleet::TestFleet;
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
    let Runbook003 {
        pg,
        root,
        port,
        chat,
        fleet,
    } = runbook_003(true).await;
    let app = root.path().join("myapp");
    let plan = example_plan("systemd-release-dir/plan.toml", chat.port);
    let out = fleet.rollback_cli(&plan, "v1.4.2", &["--confirm-data-loss"]);
    let served = get(port, "/version.txt");
    stop(&app);
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
    let Runbook003 {
        pg,
        root,
        port,
        chat,
        fleet,
    } = runbook_003(false).await;
    let app = root.path().join("myapp");
    let plan = example_plan("systemd-release-dir/plan.toml", chat.port);
    let out = fleet.rollback_cli(&plan, "v1.4.2", &["--confirm-data-loss"]);
    let served = get(port, "/version.txt");
    stop(&app);
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
            "app-1: schema/schema restore (changed); app/app failed (verification-failed)"
        ),
        "{out}"
    );
    let messages = bodies(&chat);
    assert!(
        messages
            .last()
            .is_some_and(|m| m.ends_with("to v1.4.2: failed\"}")),
        "the finally hook ran: {messages:?}"
    );
}
