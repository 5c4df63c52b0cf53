//! A rollback is done only when what runs is back, checked where users meet
//! it: runbook 000's platform in miniature (PostgreSQL in a compose
//! container, a backend reading `.env.production` through `env_file:`,
//! nginx with its configuration bind-mounted as a single file) rolled back
//! through the CLI, the coordinator and a real agent; then the container's
//! environment, the page nginx serves, the rows, and compose's own view.

use rewind_tests::docker::inspect;
use rewind_tests::fleet::TestFleet;
use rewind_tests::providers::ProviderApi;
use rewind_tests::sowknow::{self, PASSWORD, SECRET_V1, SECRET_V2, Sowknow};
use rewind_tests::wait::eventually;
use rewind_tests::web::WebView;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn runbook_000_comes_back_as_its_users_see_it_and_compose_agrees() {
    let platform = Sowknow::start("rb000env");
    let mut fleet = platform.fleet().await;
    let webhook = ProviderApi::start(|_| (200, "ok".into()));
    fleet
        .reconfigure(
            format!(
                "[notifications.ops]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/ops\"\n",
                webhook.port
            ),
            1,
        )
        .await;
    fleet.checkpoint("v1").await;
    let good_database = platform.database();
    let (v1_image, _) = (
        inspect(&platform.project.container("backend"))["Image"].clone(),
        (),
    );

    platform.deploy_v2();
    assert_ne!(platform.database(), good_database);
    assert!(
        platform.health().contains("feature_x: new"),
        "{}",
        platform.health()
    );

    let plan = platform.plan();
    let plan_path = fleet.fleet.dir.join("plan.toml");
    std::fs::write(&plan_path, &plan).unwrap();
    let plan_path = plan_path.display().to_string();
    let preview = fleet.rewind("ops", &["plan", &plan_path, "--to", "v1"]);
    assert!(preview.success, "{preview}");
    // The backend's drift is named key by key, the secrets masked.
    for named in [
        "env FEATURE_X: new, the snapshot's old",
        "env SECRET_KEY",
        "env DATABASE_URL",
    ] {
        assert!(preview.stdout.contains(named), "{named}: {preview}");
    }
    let json = fleet.rewind(
        "ops",
        &["plan", &plan_path, "--to", "v1", "--output", "json"],
    );
    assert!(json.success, "{json}");
    let page = {
        let plans = tempfile::tempdir().unwrap();
        std::fs::write(plans.path().join("sowknow.toml"), &plan).unwrap();
        let web = WebView::start(&fleet, "ops", plans.path());
        let get = |path: &str| {
            web.raw(&format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                web.port
            ))
        };
        // The page's token, as the releases page's preview form carries it.
        let (_, releases) = get("/releases");
        let token = releases
            .split("name=\"token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the preview form's token")
            .to_string();
        let (code, body) = get(&format!(
            "/preview?token={token}&plan=sowknow.toml&release=v1"
        ));
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("FEATURE_X"),
            "the page shows the drift: {body}"
        );
        body
    };

    let out = fleet.rollback_cli(&plan, "v1", &["--confirm-data-loss"]);
    assert!(out.success, "{out}");

    // What the users see: the backend's settings, nginx's page, the rows.
    let env = platform.backend_env();
    assert!(env.contains(&"FEATURE_X=old".to_string()), "{env:?}");
    assert!(env.contains(&format!("SECRET_KEY={SECRET_V1}")), "{env:?}");
    assert_eq!(
        inspect(&platform.project.container("backend"))["Image"],
        v1_image
    );
    let health = platform.health();
    assert!(
        health.contains("version: v1") && health.contains("feature_x: old"),
        "{health}"
    );
    let served = platform.served();
    assert!(
        served.contains("x-config: v1") && served.contains("config v1"),
        "{served}"
    );
    assert_eq!(platform.database(), good_database);

    // Compose agrees: its own `up -d` with the release's files recreates
    // nothing, and a second preview has nothing to change.
    let ids = platform.container_ids();
    let up = platform.compose_up("v1");
    assert_eq!(
        platform.container_ids(),
        ids,
        "compose recreated something: {up}"
    );
    let again = fleet.rewind(
        "ops",
        &["plan", &plan_path, "--to", "v1", "--output", "json"],
    );
    assert!(again.success, "{again}");
    let again: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    for stage in again["stages"].as_array().unwrap() {
        for step in stage["steps"].as_array().unwrap() {
            assert_eq!(step["changes"], serde_json::json!([]), "{step}");
        }
    }

    // The credentials never left the host in clear: not in the CLI's text
    // or JSON, the web page, the journal, the events, the notifications.
    let run_id = TestFleet::run_id_of(&out);
    let status = fleet.rewind("viewer", &["status", &run_id]);
    let notified = eventually("the run's notifications", Duration::from_secs(30), || {
        let bodies: Vec<String> = webhook
            .requests()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        if bodies.iter().any(|b| b.contains("run-succeeded")) {
            Ok(bodies.join("\n"))
        } else {
            Err(bodies)
        }
    });
    let mut journal = Vec::new();
    for entry in std::fs::read_dir(&fleet.fleet.dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("rewind.db") {
            journal.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    let journal = String::from_utf8_lossy(&journal).into_owned();
    let texts = [
        ("the preview", preview.to_string()),
        ("the JSON preview", json.to_string()),
        ("the web page", page),
        ("the rollback's output and events", out.to_string()),
        ("the report", status.to_string()),
        ("the notifications", notified),
        ("the journal", journal),
    ];
    for (what, text) in &texts {
        for secret in [PASSWORD, SECRET_V1, SECRET_V2] {
            assert!(!text.contains(secret), "{secret} in {what}");
        }
    }
    assert!(
        texts[0].1.contains("[secret"),
        "masked, not dropped: {}",
        texts[0].1
    );
}

/// A container that runs with another setting than the release's fails
/// verify, naming the key; a drill whose plan forgets the services (it
/// puts the files back only) fails its gate, the backend's verify, which
/// sees the environment the container runs with.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_running_with_another_setting_fails_verify_and_the_drill() {
    let platform = Sowknow::start("rb000drift");
    let mut fleet = platform.fleet().await;
    fleet.checkpoint("v1").await;

    // The env file is right, the container is not: it was started with
    // another value (compose up with a changed file, then the file put back).
    let file = platform.dir.join("backend/.env.production");
    let drifted = sowknow::env_file("v1").replace("FEATURE_X=old", "FEATURE_X=drifted");
    std::fs::write(&file, drifted).unwrap();
    platform.compose_up("v1");
    std::fs::write(&file, sowknow::env_file("v1")).unwrap();
    platform.project.wait_healthy(Duration::from_secs(30));
    assert!(
        platform.health().contains("feature_x: drifted"),
        "{}",
        platform.health()
    );

    let verify = "[[stage]]\nname = \"check\"\nselect = { tier = \"app\" }\ntarget = \"app\"\naction = \"verify\"\n";
    let out = fleet.rollback_cli(verify, "v1", &[]);
    assert!(!out.success, "{out}");
    assert!(
        out.stdout
            .contains("runs with env FEATURE_X: drifted, the snapshot's old"),
        "{out}"
    );

    // A drill of a plan that restores the files alone, gated on the
    // backend's verify: the files are v1's, the running backend is not.
    let plans = tempfile::tempdir().unwrap();
    let plan = plans.path().join("forgetful.toml");
    std::fs::write(
        &plan,
        "name = \"forgetful\"\n\n[[stage]]\nname = \"config\"\nselect = { tier = \"app\" }\ntarget = \"config\"\n\
         health = [{ verify = \"app\", agent = \"app-1\" }]\n",
    )
    .unwrap();
    fleet
        .reconfigure(
            rewind_tests::drills::drill_table(
                "forgetful",
                &plan,
                "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"",
            ),
            1,
        )
        .await;
    let drill = fleet.rewind("ops", &["drill", "run", "forgetful"]);
    assert!(!drill.success, "the drill must fail its gate: {drill}");
    let runs = rewind_tests::drills::history(&fleet, "forgetful").await;
    assert_eq!(runs[0].status, "failed", "{:?}", runs[0]);
    assert!(
        runs[0].reason.contains("health gate") && runs[0].reason.contains("FEATURE_X"),
        "{}",
        runs[0].reason
    );
}

/// One host of an environment: a file and a one-service compose project.
struct Host {
    dir: tempfile::TempDir,
    project: rewind_tests::docker::Project,
}

impl Host {
    fn start(name: &str) -> Host {
        rewind_tests::docker::v1_v2();
        let project = rewind_tests::docker::Project::with_file(
            name,
            "version: \"2.4\"\nservices:\n  web:\n    image: rewind-test/app:${TAG}\n    init: true\n    stop_grace_period: 1s\n",
            &[],
        );
        project.up("v1");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("site.conf"), "release v1\n").unwrap();
        Host { dir, project }
    }

    fn targets(&self) -> String {
        format!(
            "{}{}[targets.site]\nplugin = \"files\"\nsettings = {{ files = [\"{dir}/site.conf\"] }}\n\
             grant = {{ files = [\"{dir}\"], process = [], docker = [] }}\n\n\
             [targets.app]\nplugin = \"compose\"\nsettings = {{ project = \"{project}\", health_timeout_secs = 30 }}\n\
             grant = {{ docker = [\"{project}\"] }}\n",
            rewind_tests::unsigned_plugin("files", "files"),
            rewind_tests::unsigned_plugin("compose", "compose"),
            dir = self.dir.path().display(),
            project = self.project.name,
        )
    }

    fn deploy_v2(&self) {
        std::fs::write(self.dir.path().join("site.conf"), "release v2\n").unwrap();
        self.project.up("v2");
    }

    /// The file's contents and the image the web container runs.
    fn state(&self) -> (String, String) {
        (
            std::fs::read_to_string(self.dir.path().join("site.conf")).unwrap(),
            inspect(&self.project.container("web"))["Image"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    }
}

/// Production and staging agents with the same role: a checkpoint or a
/// rollback that names no environment is refused, naming both; a rollback
/// of staging leaves production's files and containers alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_acts_on_one_environment_and_names_it() {
    let (v1, v2) = rewind_tests::docker::v1_v2().clone();
    let (production, staging) = (Host::start("envprod"), Host::start("envstg"));
    let fleet = TestFleet::start_agents_in(
        vec![
            (
                "prod-app-1".into(),
                "app".into(),
                "production",
                production.targets(),
            ),
            (
                "stg-app-1".into(),
                "app".into(),
                "staging",
                staging.targets(),
            ),
        ],
        None,
    )
    .await;
    let refused = fleet.rewind("ops", &["checkpoint", "v1"]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused.stderr.contains("production, staging") && refused.stderr.contains("--env"),
        "{refused}"
    );
    for env in ["production", "staging"] {
        let out = fleet.rewind("ops", &["checkpoint", &format!("v1-{env}"), "--env", env]);
        assert!(out.success, "{out}");
    }
    production.deploy_v2();
    staging.deploy_v2();

    let plan = "name = \"site\"\n\n[[stage]]\nname = \"config\"\nselect = { tier = \"app\" }\ntarget = \"site\"\n\n\
                [[stage]]\nname = \"app\"\nafter = [\"config\"]\nselect = { tier = \"app\" }\ntarget = \"app\"\n";
    let refused = fleet.rollback_cli(plan, "v1-staging", &[]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused
            .stderr
            .contains("several environments (production, staging)"),
        "{refused}"
    );
    assert_eq!(
        staging.state(),
        ("release v2\n".into(), v2.clone()),
        "nothing started"
    );

    let out = fleet.rollback_cli(plan, "v1-staging", &["--env", "staging"]);
    assert!(out.success, "{out}");
    assert!(out.stdout.contains("in environment staging"), "{out}");
    assert!(out.stdout.contains("stg-app-1 (staging)"), "{out}");
    assert!(!out.stdout.contains("prod-app-1"), "{out}");
    assert_eq!(staging.state(), ("release v1\n".into(), v1.clone()));
    assert_eq!(
        production.state(),
        ("release v2\n".into(), v2.clone()),
        "production untouched"
    );
    let report = fleet.report(&TestFleet::run_id_of(&out)).await;
    assert_eq!(report.env, "staging");
    assert!(
        report.steps.iter().all(|s| s.env == "staging"),
        "{report:?}"
    );
}
