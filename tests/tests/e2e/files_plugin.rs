//! The `files` plugin through the agent: configuration files are snapshotted,
//! previewed with secrets masked, restored atomically with a reload, and put
//! back when anything fails.

use rewind_agent::host::bindings::{RestoreOptions, SnapshotRecord};
use rewind_agent::host::{Action, ActionOutput, CallError};
use rewind_tests::{Agent, binary, plugin, unsigned_plugin};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const ENV_V1: &str = "PORT=8080\nDATABASE_PASSWORD=hunter2\nFEATURE_X=off\n";
const ENV_V2: &str = "PORT=9090\nDATABASE_PASSWORD=correct-horse\nFEATURE_X=on\n";
const NGINX_V1: &str = "server { listen 80; }\n";

/// An agent managing `app/.env.production` and `app/nginx.conf`, with a
/// reload command that the test can make fail.
fn agent(reload: &str) -> Agent {
    let agent = Agent::new(&format!(
        r#"{}
[targets.app-config]
plugin = "files"
settings = {{ files = ["{{dir}}/app/.env.production", "{{dir}}/app/nginx.conf", "{{dir}}/app/extra.conf"], reload = [{reload}] }}
grant = {{ files = ["{{dir}}/app"], process = ["touch", "false"], docker = [] }}
"#,
        unsigned_plugin("files", "files")
    ));
    let app = agent.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join(".env.production"), ENV_V1).unwrap();
    std::fs::set_permissions(
        app.join(".env.production"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::write(app.join("nginx.conf"), NGINX_V1).unwrap();
    agent
}

fn record(output: ActionOutput) -> SnapshotRecord {
    let ActionOutput::Captured(captured) = output else {
        panic!("not a snapshot: {output:?}")
    };
    SnapshotRecord {
        data: captured.data,
        summary: captured.summary,
        taken_at: 0,
    }
}

fn restore(to: &SnapshotRecord, step: &str) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: false,
            force: false,
            step_id: step.into(),
        },
    }
}

/// The deploy that goes wrong: values change, a file appears, one vanishes.
fn deploy_v2(app: &Path) {
    std::fs::write(app.join(".env.production"), ENV_V2).unwrap();
    std::fs::remove_file(app.join("nginx.conf")).unwrap();
    std::fs::write(app.join("extra.conf"), "new file\n").unwrap();
}

fn read(app: &Path, name: &str) -> String {
    std::fs::read_to_string(app.join(name)).unwrap()
}

#[tokio::test]
async fn a_restore_puts_every_file_back_and_reloads() {
    let agent = agent(r#""touch", "{dir}/reloaded""#);
    let app = agent.path().join("app");
    let snapshot = record(
        agent
            .call("app-config", Action::Snapshot)
            .await
            .unwrap()
            .output,
    );
    assert!(
        snapshot.summary.starts_with("3 files"),
        "{}",
        snapshot.summary
    );
    deploy_v2(&app);

    // The preview shows each change, with secret values only as hashes.
    let plan = agent
        .call(
            "app-config",
            Action::Plan {
                to: snapshot.clone(),
            },
        )
        .await
        .unwrap();
    let ActionOutput::Preview(preview) = plan.output else {
        panic!()
    };
    let subjects: Vec<&str> = preview
        .changes
        .iter()
        .map(|c| c.subject.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(subjects, [".env.production", "nginx.conf", "extra.conf"]);
    let env_diff = preview.changes[0].detail.clone().unwrap();
    assert!(
        env_diff.contains("-PORT=9090") && env_diff.contains("+PORT=8080"),
        "{env_diff}"
    );
    // Masked by a digest keyed on the host: the change shows, the values do not.
    let masked: Vec<&str> = env_diff
        .lines()
        .filter(|l| l.contains("DATABASE_PASSWORD=[secret "))
        .collect();
    assert_eq!(masked.len(), 2, "{env_diff}");
    assert_ne!(
        masked[0][1..],
        masked[1][1..],
        "a changed secret shows as a change: {env_diff}"
    );
    assert!(
        !env_diff.contains("hunter2") && !env_diff.contains("correct-horse"),
        "secrets leak: {env_diff}"
    );
    assert_eq!(
        preview.changes[1].summary,
        "would be recreated: +1 -0 lines"
    );
    assert!(preview.changes[2].summary.starts_with("would be removed"));
    assert!(
        !agent.path().join("reloaded").exists(),
        "plan must change nothing"
    );

    let done = agent
        .call("app-config", restore(&snapshot, "step-1"))
        .await
        .unwrap();
    let ActionOutput::Outcome(outcome) = done.output else {
        panic!()
    };
    assert!(outcome.changed);
    assert!(
        outcome
            .summary
            .contains("restored 3 of 3 files, then ran `touch"),
        "{}",
        outcome.summary
    );
    assert_eq!(read(&app, ".env.production"), ENV_V1);
    assert_eq!(read(&app, "nginx.conf"), NGINX_V1);
    assert!(!app.join("extra.conf").exists());
    let mode = std::fs::metadata(app.join(".env.production"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640, "the restored file keeps its mode");
    assert!(agent.path().join("reloaded").exists(), "the reload ran");

    // What was replaced is kept, so nothing is lost.
    let emergency = agent.target("app-config").state_dir.join(format!(
        "emergency/{}.json",
        rewind_tests::step_file_name("step-1")
    ));
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(emergency).unwrap()).unwrap();
    let env_sha = kept["files"][0]["sha256"].as_str().unwrap();
    let blob = agent
        .target("app-config")
        .state_dir
        .join("blobs")
        .join(env_sha);
    assert_eq!(std::fs::read_to_string(blob).unwrap(), ENV_V2);

    // Verify agrees, and a second restore is a no-op.
    agent
        .call(
            "app-config",
            Action::Verify {
                to: snapshot.clone(),
            },
        )
        .await
        .unwrap();
    let again = agent
        .call("app-config", restore(&snapshot, "step-1"))
        .await
        .unwrap();
    let ActionOutput::Outcome(again) = again.output else {
        panic!()
    };
    assert!(!again.changed, "{}", again.summary);
}

#[tokio::test]
async fn a_failing_reload_puts_the_previous_files_back() {
    let agent = agent(r#""false""#);
    let app = agent.path().join("app");
    let snapshot = record(
        agent
            .call("app-config", Action::Snapshot)
            .await
            .unwrap()
            .output,
    );
    deploy_v2(&app);
    let error = agent
        .call("app-config", restore(&snapshot, "step-2"))
        .await
        .unwrap_err();
    let CallError::Plugin { error: failure, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(failure.kind, "failed");
    assert!(failure.message.contains("reload `false` failed"), "{error}");
    assert!(
        failure
            .message
            .contains("the 3 files written (or being written) were put back"),
        "{error}"
    );
    assert_eq!(
        read(&app, ".env.production"),
        ENV_V2,
        "the pre-restore state is back"
    );
    assert!(!app.join("nginx.conf").exists());
    assert_eq!(read(&app, "extra.conf"), "new file\n");
    let verify = agent
        .call("app-config", Action::Verify { to: snapshot })
        .await
        .unwrap_err();
    assert!(
        verify.to_string().contains("differ from the snapshot"),
        "{verify}"
    );
}

#[tokio::test]
async fn a_corrupt_snapshot_copy_is_refused_before_anything_changes() {
    let agent = agent(r#""touch", "{dir}/reloaded""#);
    let app = agent.path().join("app");
    let snapshot = record(
        agent
            .call("app-config", Action::Snapshot)
            .await
            .unwrap()
            .output,
    );
    deploy_v2(&app);
    let blobs = agent.target("app-config").state_dir.join("blobs");
    for blob in std::fs::read_dir(&blobs).unwrap() {
        let path = blob.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let error = agent
        .call("app-config", restore(&snapshot, "step-3"))
        .await
        .unwrap_err();
    let CallError::Plugin { error: failure, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(failure.kind, "verification-failed", "{error}");
    assert!(
        failure.message.contains("is corrupt") && failure.message.contains("nothing was changed"),
        "{error}"
    );
    assert_eq!(read(&app, ".env.production"), ENV_V2);
    assert!(!agent.path().join("reloaded").exists());
}

/// The CLI flow of the README: snapshot to a file, change, plan, restore.
#[test]
fn the_cli_runs_a_plugin_without_a_coordinator() {
    let agent = agent(r#""touch", "{dir}/reloaded""#);
    let app = agent.path().join("app");
    let cli = binary("rewind-agent");
    let config = agent.path().join("agent.toml");
    let files = plugin("files");
    let run = |args: &[&str]| {
        std::process::Command::new(&cli)
            .args(["plugin", "run"])
            .arg(&files)
            .arg("--config")
            .arg(&config)
            .args(["--target", "app-config"])
            .args(args)
            .output()
            .unwrap()
    };
    let snapshot = run(&["snapshot"]);
    assert!(
        snapshot.status.success(),
        "{}",
        String::from_utf8_lossy(&snapshot.stderr)
    );
    let snapshot_file = agent.path().join("snapshot.json");
    std::fs::write(&snapshot_file, &snapshot.stdout).unwrap();
    deploy_v2(&app);
    let snap = snapshot_file.to_str().unwrap();
    let plan = run(&["plan", "--snapshot", snap]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["ok"], true, "{plan}");
    assert_eq!(
        plan["result"]["changes"].as_array().unwrap().len(),
        3,
        "{plan}"
    );
    let restore = run(&["restore", "--snapshot", snap]);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stdout)
    );
    assert_eq!(read(&app, ".env.production"), ENV_V1);

    // A failing action exits 1 with a typed error in JSON.
    deploy_v2(&app);
    let bad = run(&["verify", "--snapshot", snap]);
    let bad_json: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(bad.status.code(), Some(1), "{bad_json}");
    assert_eq!(
        bad_json["error"]["kind"], "verification-failed",
        "{bad_json}"
    );
    let missing = run(&["plan"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("plan needs --snapshot"));

    let inspect = std::process::Command::new(&cli)
        .args(["plugin", "inspect"])
        .arg(&files)
        .output()
        .unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["describe"]["name"], "files", "{inspect}");
    assert_eq!(inspect["signature"]["status"], "unsigned");
    let capabilities: Vec<&str> = inspect["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["capability"].as_str().unwrap())
        .collect();
    assert!(capabilities.contains(&"process"), "{inspect}");
}

/// As an operator runs it: `rewind rollback` through a real coordinator and
/// agent; the files on disk are v1's again and the reload ran.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_through_the_coordinator_puts_the_files_back() {
    use rewind_tests::fleet::TestFleet;
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join(".env.production"), ENV_V1).unwrap();
    std::fs::write(app.join("nginx.conf"), NGINX_V1).unwrap();
    let targets = format!(
        "[plugins.files]\npath = \"{{plugins}}/files.wasm\"\nallow_unsigned = true\n\n\
         [targets.app-config]\nplugin = \"files\"\n\
         settings = {{ files = [\"{app}/.env.production\", \"{app}/nginx.conf\", \"{app}/extra.conf\"], reload = [\"touch\", \"{app}/reloaded\"] }}\n\
         grant = {{ files = [\"{app}\"], process = [\"touch\"], docker = [] }}\n",
        app = app.display()
    );
    let fleet = TestFleet::start_agents(vec![("web-1".into(), "web".into(), targets)], None).await;
    fleet.checkpoint("v1").await;
    deploy_v2(&app);

    let plan = "[[stage]]\nname = \"web\"\nselect = { tier = \"web\" }\ntarget = \"app-config\"\n";
    let output = fleet.rollback_cli(plan, "v1", &[]);
    assert!(output.success, "{output}");
    assert_eq!(read(&app, ".env.production"), ENV_V1);
    assert_eq!(read(&app, "nginx.conf"), NGINX_V1);
    assert!(!app.join("extra.conf").exists());
    assert!(app.join("reloaded").exists(), "the reload ran");
    // No data step, no data-loss window.
    assert!(!output.stdout.contains("data-loss window"), "{output}");
}

/// `plugin run` as a plugin author uses it: JSON in the WIT's words, a
/// restore with the step id a coordinator would send, a warning when the
/// file run is not the one the configuration names, and `describe` with
/// the plugin's own version.
#[test]
fn the_cli_speaks_the_wits_words_takes_a_step_id_and_warns_of_another_file() {
    let agent = agent(r#""touch", "{dir}/reloaded""#);
    let app = agent.path().join("app");
    let cli = binary("rewind-agent");
    let config = agent.path().join("agent.toml");
    let copy = agent.path().join("files-copy.wasm");
    std::fs::copy(plugin("files"), &copy).unwrap();
    let run = |file: &Path, args: &[&str]| {
        std::process::Command::new(&cli)
            .args(["plugin", "run"])
            .arg(file)
            .arg("--config")
            .arg(&config)
            .args(["--target", "app-config"])
            .args(args)
            .output()
            .unwrap()
    };
    let files = plugin("files");
    let snapshot = run(&files, &["snapshot"]);
    let stderr = String::from_utf8_lossy(&snapshot.stderr);
    assert!(
        !stderr.contains("warning: running"),
        "the configured file: {stderr}"
    );
    let snapshot_file = agent.path().join("snapshot.json");
    std::fs::write(&snapshot_file, &snapshot.stdout).unwrap();
    let snap = snapshot_file.to_str().unwrap();
    deploy_v2(&app);

    let describe = run(&files, &["describe"]);
    let describe: serde_json::Value = serde_json::from_slice(&describe.stdout).unwrap();
    assert_eq!(
        describe["result"]["actions"],
        serde_json::json!(["snapshot", "plan", "restore", "restart", "verify"]),
        "{describe}"
    );
    let plan = run(&files, &["plan", "--snapshot", snap]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["result"]["risk"], "restart", "{plan}");
    assert_eq!(plan["result"]["changes"][0]["risk"], "restart", "{plan}");

    let other = run(
        &copy,
        &[
            "restore",
            "--snapshot",
            snap,
            "--step-id",
            "run-7/web/web-1/app-config/1f2e",
        ],
    );
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains(&format!("warning: running {}, not ", copy.display()))
            && stderr.contains("that plugin `files` of"),
        "{stderr}"
    );
    let restore: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(restore["ok"], true, "{restore}");
    assert!(
        restore["result"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d
                .as_str()
                .unwrap()
                .contains("emergency/run-7_web_web-1_app-config_1f2e-")),
        "the step id reached the plugin: {restore}"
    );
    assert_eq!(read(&app, ".env.production"), ENV_V1);

    // describe carries the plugin crate's own version (3.1.4), not the SDK's.
    let inspect = std::process::Command::new(&cli)
        .args(["plugin", "inspect"])
        .arg(plugin("fixture_noop"))
        .output()
        .unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["describe"]["version"], "3.1.4", "{inspect}");
}
