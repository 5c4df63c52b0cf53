//! Drills end to end: a real coordinator and real agents (separate
//! processes, mutual TLS) rehearse a rollback on real targets: a scheduled
//! drill checkpoints, rolls back, rolls forward and leaves every target on
//! its checkpoint (checked on the files and the containers themselves); a
//! failing gate in the roll back makes the drill roll forward at once; a
//! coordinator SIGKILLed in either leg resumes with no step run twice; a
//! drill is skipped while a run holds its agents; a missed occurrence is
//! caught up once; an operator's rollback is refused during a drill unless
//! it preempts it.

use rewind_proto::v1::{DrillRef, DrillRunSummary};
use rewind_tests::docker::{self, Project, inspect};
use rewind_tests::drills::{self, RECORDER_PLAN, cron_at, drill_table, moment, until};
use rewind_tests::fleet::{TestFleet, host};
use rewind_tests::providers::ProviderApi;
use rewind_tests::unsigned_plugin;
use rewind_tests::wait::{eventually, eventually_async, holds};
use std::path::Path;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn run_drill(fleet: &TestFleet, drill: &str) -> String {
    fleet
        .client("ops")
        .await
        .run_drill(DrillRef {
            drill: drill.into(),
            to: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("run drill {drill}: {}", s.message()))
        .into_inner()
        .run_id
}

/// A scheduled drill on files and a compose project: at its moment it
/// checkpoints the deployed v2, rolls back to v1 (the files and the
/// containers are v1's meanwhile), rolls forward, verifies, and passes;
/// every target ends exactly on its checkpoint, and the reports carry the
/// timings and the RTO.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_drill_rolls_back_and_forward_and_leaves_every_target_on_its_checkpoint() {
    let (v1, v2) = docker::v1_v2().clone();
    let project = Project::new("drill");
    project.up("v1");
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    write(&app, "app.env", "VERSION=1\nCHECKOUT=off\n");
    let web = format!(
        "{}[targets.web-config]\nplugin = \"files\"\nsettings = {{ files = [\"{app}/app.env\", \"{app}/extra.conf\"] }}\n\
         grant = {{ files = [\"{app}\"], process = [], docker = [] }}\n",
        unsigned_plugin("files", "files"),
        app = app.display()
    );
    let shop = format!(
        "{}[targets.shop]\nplugin = \"compose\"\nsettings = {{ project = \"{name}\", health_timeout_secs = 60 }}\n\
         grant = {{ docker = [\"{name}\"] }}\n",
        unsigned_plugin("compose", "compose"),
        name = project.name
    );
    let mut fleet = TestFleet::start_agents(
        vec![
            ("stg-web-1".into(), "web".into(), web),
            ("stg-app-1".into(), "app".into(), shop),
        ],
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    // The deploy of v2: new configuration, a new file, new images.
    write(&app, "app.env", "VERSION=2\nCHECKOUT=on\n");
    write(&app, "extra.conf", "added by v2\n");
    project.up("v2");
    let before: Vec<(String, serde_json::Value)> = project
        .containers()
        .into_iter()
        .map(|(service, name)| (service, inspect(&name)["Image"].clone()))
        .collect();

    let plan = write(
        dir.path(),
        "plan.toml",
        "name = \"shop\"\n\n[[stage]]\nname = \"config\"\nselect = { tier = \"web\" }\ntarget = \"web-config\"\n\n\
         [[stage]]\nname = \"app\"\nafter = [\"config\"]\nselect = { tier = \"app\" }\ntarget = \"shop\"\n\
         health = [{ verify = true }]\n",
    );
    // The platform team adds the drill; it fires some seconds after the
    // coordinator reads it (room for the restart, under load too).
    let at = moment(Duration::from_secs(15), 0);
    fleet
        .reconfigure(
            drill_table(
                "nightly",
                &plan,
                &format!(
                    "schedule = \"{}\"\ntime_zone = \"UTC\"\nrto = \"5m\"\nfresh_for = \"35d\"",
                    cron_at(&[at])
                ),
            ),
            2,
        )
        .await;
    let list = fleet.rewind("viewer", &["drill", "list"]);
    assert!(list.success, "{list}");
    assert!(
        list.stdout.contains("nightly") && list.stdout.contains("never passed"),
        "{list}"
    );

    // While the drill rolls back, the targets are on v1.
    until(at).await;
    let runs = eventually_async("the drill fires", MINUTE, async || {
        let runs = drills::history(&fleet, "nightly").await;
        holds(!runs.is_empty(), ()).map(|()| runs)
    })
    .await;
    let id = runs[0].run_id.clone();
    assert_eq!(runs[0].trigger, "schedule");
    drills::wait_for(&fleet, &id, MINUTE, |d| {
        d.phase == "roll-forward" || drills::ended(d)
    })
    .await;
    let back = fleet.report(&format!("{id}-back")).await;
    assert_eq!(back.status, "succeeded", "{back:?}");
    assert!(
        back.steps.iter().all(|s| s.changed),
        "both targets were moved to v1: {back:?}"
    );
    assert_eq!(back.release, "v1");

    let done = drills::wait_runs(&fleet, "nightly", 1, 2 * MINUTE).await;
    assert_eq!(done[0].status, "passed", "{done:#?}");

    // Every target is exactly on the checkpoint: the v2 files, the v2
    // containers, the file v2 added.
    assert_eq!(
        std::fs::read_to_string(app.join("app.env")).unwrap(),
        "VERSION=2\nCHECKOUT=on\n"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("extra.conf")).unwrap(),
        "added by v2\n"
    );
    for (service, image) in &before {
        let now = inspect(&project.container(service));
        assert_eq!(&now["Image"], image, "{service}");
        assert_eq!(now["Image"], v2.as_str(), "{service}");
        assert_eq!(now["State"]["Health"]["Status"], "healthy", "{service}");
    }
    assert_ne!(v1, v2);

    // The reports: timings of every phase, stage and step, the RTO.
    let report = drills::report(&fleet, &id).await;
    assert_eq!(report.status, "passed");
    assert_eq!(report.back_to, "v1");
    assert!(
        report.checkpoint.starts_with("drill/nightly/"),
        "{}",
        report.checkpoint
    );
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["checkpoint", "roll-back", "roll-forward", "verify"]);
    for phase in &report.phases {
        assert!(phase.duration_ms.is_some(), "{phase:?}");
        for stage in &phase.stages {
            assert!(stage.duration_ms.is_some(), "{stage:?}");
            for step in &stage.steps {
                assert_eq!(step.status, "succeeded");
                assert!(step.duration_ms.is_some(), "{step:?}");
            }
        }
    }
    let rto = report.rto.measured_ms.expect("an RTO");
    assert_eq!(Some(rto), report.phases[1].duration_ms);
    assert_eq!(report.rto.met, Some(true));
    assert!(
        report
            .hosts
            .iter()
            .all(|h| h.left_on.starts_with("on the checkpoint")),
        "{:?}",
        report.hosts
    );
    let md = fleet.rewind("viewer", &["drill", "report", &id, "--format", "md"]);
    assert!(md.success, "{md}");
    assert!(md.stdout.contains("# Drill nightly: passed"), "{md}");
    assert!(md.stdout.contains("(target 5m): met"), "{md}");
    assert!(
        md.stdout
            .contains("| | | stg-app-1 | shop | restore | succeeded |"),
        "{md}"
    );
    let junit = fleet.rewind("viewer", &["drill", "report", &id, "--format", "junit"]);
    let xml = roxmltree::Document::parse(&junit.stdout).unwrap_or_else(|e| panic!("{e}: {junit}"));
    let suite = xml
        .descendants()
        .find(|n| n.has_tag_name("testsuite"))
        .unwrap();
    assert_eq!(suite.attribute("failures"), Some("0"), "{junit}");
    let cases = xml
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .count();
    assert_eq!(suite.attribute("tests"), Some(cases.to_string().as_str()));
    let list = fleet.rewind("viewer", &["drill", "list"]);
    assert!(
        list.stdout.contains("passed") && list.stdout.contains("fresh"),
        "{list}"
    );
}

/// The release rolled back to is itself broken: its status file fails the
/// plan's HTTP gate. The roll back fails, the drill rolls forward at once,
/// the fleet ends where it started, and the report says where it failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_whose_roll_back_fails_a_gate_rolls_forward_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    let status = write(&site, "status", "broken\n");
    // The app's health endpoint serves its status file.
    let served = status.clone();
    let health = ProviderApi::start(move |_| {
        let text = std::fs::read_to_string(&served).unwrap_or_default();
        (if text.starts_with("ok") { 200 } else { 503 }, text)
    });
    let web = format!(
        "{}[targets.site]\nplugin = \"files\"\nsettings = {{ files = [\"{site}/status\"] }}\ngrant = {{ files = [\"{site}\"], process = [], docker = [] }}\n",
        unsigned_plugin("files", "files"),
        site = site.display()
    );
    let plan = write(
        dir.path(),
        "plan.toml",
        &format!(
            "name = \"site\"\n\n[[stage]]\nname = \"web\"\nselect = {{ tier = \"web\" }}\ntarget = \"site\"\n\
             health = [{{ http = \"http://127.0.0.1:{}/health\", status = 200, within = \"2s\" }}]\n",
            health.port
        ),
    );
    let mut fleet =
        TestFleet::start_agents(vec![("stg-web-1".into(), "web".into(), web)], None).await;
    fleet.checkpoint("v1").await;
    std::fs::write(&status, "ok\n").unwrap();
    fleet
        .reconfigure(
            drill_table("gate", &plan, "schedule = \"0 0 3 1 1 *\"\nrto = \"1m\""),
            1,
        )
        .await;

    let output = fleet.rewind(
        "ops",
        &["drill", "run", "gate", "--report-dir", "{dir}/reports"],
    );
    assert!(!output.success, "a failed drill exits non-zero: {output}");
    assert!(output.stdout.contains("== drill gate: FAILED"), "{output}");
    let runs = drills::history(&fleet, "gate").await;
    let run = &runs[0];
    assert_eq!(run.status, "failed");
    assert!(
        run.reason
            .contains("roll back failed: stage web health gate")
            && run.reason.contains("503"),
        "{}",
        run.reason
    );
    // It rolled forward: the status is the checkpoint's again, and the
    // roll forward's own gate passed.
    assert_eq!(std::fs::read_to_string(&status).unwrap(), "ok\n");
    let forward = fleet.report(&run.forward_run).await;
    assert_eq!(forward.status, "succeeded", "{forward:?}");
    let report = drills::report(&fleet, &run.run_id).await;
    assert!(!report.critical);
    assert_eq!(
        report.rto.met,
        Some(false),
        "a failed roll back does not meet its RTO"
    );
    assert_eq!(report.phases[1].status, "failed");
    assert_eq!(report.phases[3].status, "succeeded");
    let md = std::fs::read_to_string(
        fleet
            .fleet
            .dir
            .join("reports")
            .join(format!("{}.md", run.run_id)),
    )
    .unwrap();
    assert!(md.contains("# Drill gate: failed"), "{md}");
    assert!(
        md.contains("roll back failed: stage web health gate"),
        "{md}"
    );
    let xml = std::fs::read_to_string(
        fleet
            .fleet
            .dir
            .join("reports")
            .join(format!("{}.xml", run.run_id)),
    )
    .unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let failures: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .collect();
    assert!(!failures.is_empty(), "{xml}");
}

/// The coordinator is SIGKILLed while the drill rolls back, and again while
/// it rolls forward; each time the restarted coordinator resumes the drill,
/// which passes with every host restored once per leg.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_in_either_leg_resumes_the_drill_with_no_step_run_twice() {
    rewind_tests::scenarios::drill_with_coordinator_kills(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_is_skipped_while_a_run_is_active_on_its_agents() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", RECORDER_PLAN);
    let hosts = vec![
        host("stg-db-1", "data").with("delay_ms = 30000"),
        host("stg-api-1", "core"),
    ];
    let mut fleet = TestFleet::start(hosts, None).await;
    fleet.checkpoint("v1").await;
    let slow = "[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\n";
    let run = fleet.start_run(slow, "v1").await;
    fleet.events_until(&run, |e| e.kind == "step-sent").await;
    // The drill is added while the run goes on; its moment comes soon after.
    let at = moment(Duration::from_secs(12), 0);
    fleet
        .reconfigure(
            drill_table(
                "busy",
                &plan,
                &format!("schedule = \"{}\"\nrto = \"5m\"", cron_at(&[at])),
            ),
            2,
        )
        .await;
    let runs = drills::wait_runs(&fleet, "busy", 1, MINUTE).await;
    assert_eq!(runs[0].status, "skipped", "{runs:#?}");
    assert!(
        runs[0].reason.contains(&format!("run {run}"))
            && runs[0].reason.contains("is active on stg-db-1"),
        "{}",
        runs[0].reason
    );
    // A drill started by hand meanwhile is refused with the same reason.
    let refused = fleet.rewind("ops", &["drill", "run", "busy"]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused.stderr.contains("is active on stg-db-1"),
        "{refused}"
    );
    assert!(
        drills::restores(&fleet, "stg-api-1").is_empty(),
        "nothing ran on the drill's agents"
    );
    assert_eq!(fleet.finish(&run).await.status, "succeeded");
}

/// Two occurrences pass while the coordinator is down; when it is back
/// within the start deadline, the latest runs once (a catch-up), the other
/// never: no burst.
#[tokio::test(flavor = "multi_thread")]
async fn a_missed_schedule_is_caught_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", RECORDER_PLAN);
    let first = moment(Duration::from_secs(15), 4);
    let second = first + time::Duration::seconds(4);
    let environments = drill_table(
        "missed",
        &plan,
        &format!(
            "schedule = \"{}\"\nstart_deadline = \"10m\"\nrto = \"5m\"",
            cron_at(&[first, second])
        ),
    );
    let mut fleet = TestFleet::start_in(
        vec![host("stg-db-1", "data"), host("stg-api-1", "core")],
        None,
        Some(&environments),
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    fleet.fleet.kill_coordinator();
    // Back well after both (more than a few seconds late: a catch-up).
    until(second + time::Duration::seconds(7)).await;
    fleet
        .fleet
        .start_coordinator()
        .expect("restarted coordinator");
    fleet.wait_connected(2).await;
    let runs = drills::wait_runs(&fleet, "missed", 1, MINUTE).await;
    // What is checked is an absence: no second run within 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs_later: Vec<DrillRunSummary> = drills::history(&fleet, "missed").await;
    assert_eq!(
        runs_later.len(),
        1,
        "one catch-up, no burst: {runs_later:#?}"
    );
    assert_eq!(runs[0].trigger, "catch-up");
    assert_eq!(runs[0].status, "passed", "{runs:#?}");
}

/// An operator's rollback on a drill's agents is refused while the drill
/// goes on; with --preempt-drill the drill is rolled forward first (and
/// ends aborted), then the rollback runs.
#[tokio::test(flavor = "multi_thread")]
async fn an_operators_rollback_during_a_drill_is_refused_unless_it_preempts_the_drill() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", RECORDER_PLAN);
    let environments = drill_table("preempt", &plan, "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"");
    let hosts = vec![
        host("stg-db-1", "data").with("delay_ms = 6000"),
        host("stg-api-1", "core"),
        host("stg-web-1", "web"),
    ];
    let fleet = TestFleet::start_in(hosts, None, Some(&environments), None).await;
    fleet.checkpoint("v1").await;
    let id = run_drill(&fleet, "preempt").await;
    drills::wait_run(&fleet, &format!("{id}-back"), MINUTE).await;
    fleet
        .events_until(&format!("{id}-back"), |e| e.kind == "step-sent")
        .await;
    // The operator's fix touches the core hosts, which the drill is about
    // to roll back.
    let core = "name = \"hotfix\"\n\n[[stage]]\nname = \"core\"\nselect = { tier = \"core\" }\ntarget = \"app\"\n";
    let refused = fleet.rollback_cli(core, "v1", &[]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused.stderr.contains(&format!(
            "drill preempt (run {id}, phase roll-back) is rehearsing on stg-api-1"
        )) && refused.stderr.contains("--preempt-drill"),
        "{refused}"
    );
    // A plan whose stages stay off the drill's agents but whose hook acts
    // on one of them is refused alike.
    let hooked = "name = \"web-fix\"\n\n[[hook]]\nname = \"check-api\"\nwhen = \"after\"\n\
                  agent = \"stg-api-1\"\ntarget = \"app\"\naction = \"verify\"\n\n\
                  [[stage]]\nname = \"web\"\nselect = { tier = \"web\" }\ntarget = \"app\"\n";
    let refused = fleet.rollback_cli(hooked, "v1", &[]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused.stderr.contains("is rehearsing on stg-api-1"),
        "{refused}"
    );
    assert!(drills::restores(&fleet, "stg-web-1").is_empty());
    let preempting = fleet.rollback_cli(core, "v1", &["--preempt-drill"]);
    assert!(preempting.success, "{preempting}");
    let drill = drills::summary(&fleet, &id).await;
    assert_eq!(drill.status, "aborted", "{drill:#?}");
    assert_eq!(drill.reason, "preempted by operator ops");
    // The drill's roll back stopped after the step in flight, its roll
    // forward ran, and only then the operator's rollback.
    let run = TestFleet::run_id_of(&preempting);
    let db = drills::restores(&fleet, "stg-db-1");
    assert_eq!(db.len(), 2, "{db:#?}");
    assert!(db[0].starts_with(&format!("{id}-back/")), "{db:#?}");
    assert!(db[1].starts_with(&format!("{id}-forward/")), "{db:#?}");
    let api = drills::restores(&fleet, "stg-api-1");
    assert_eq!(
        api.len(),
        2,
        "the cancelled roll back never reached core: {api:#?}"
    );
    assert!(api[0].starts_with(&format!("{id}-forward/")), "{api:#?}");
    assert!(api[1].starts_with(&format!("{run}/")), "{api:#?}");
}

/// A drill on a protected environment is refused when the configuration
/// is read, naming the line.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_on_a_protected_environment_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", RECORDER_PLAN);
    let fleet = TestFleet::start(vec![host("stg-db-1", "data")], None).await;
    let config = std::fs::read_to_string(fleet.fleet.dir.join("coordinator.toml")).unwrap();
    let path = write(
        dir.path(),
        "coordinator.toml",
        &format!(
            "{config}\n[drills.prod]\nplan = \"{}\"\nenv = \"production\"\nschedule = \"0 0 3 1 * *\"\nrto = \"15m\"\n",
            plan.display()
        ),
    );
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l == "env = \"production\"")
        .unwrap()
        + 1;
    // The certificates are beside the fleet's configuration.
    let path = {
        let beside = fleet.fleet.dir.join("coordinator-drill.toml");
        std::fs::copy(&path, &beside).unwrap();
        beside
    };
    let output = std::process::Command::new(rewind_tests::binary("rewind"))
        .args(["coordinator", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "coordinator-drill.toml:{line}: drill prod: environment production is protected"
        )),
        "{stderr}"
    );
}

/// A drill whose roll back took more than 20 % longer than the median of
/// its earlier passes is flagged slower; a drill whose last pass is older
/// than its freshness is stale. Both are notified, each once, and shown.
#[tokio::test(flavor = "multi_thread")]
async fn a_slower_drill_and_a_stale_one_are_flagged_and_notified_once() {
    let api = ProviderApi::start(|_| (200, "ok".into()));
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", RECORDER_PLAN);
    let environments = drill_table(
        "evidence",
        &plan,
        "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"\nfresh_for = \"6s\"",
    ) + &drills::webhook_table(api.port, &["drill-slower", "drill-stale"]);
    let mut fleet = TestFleet::start_in(
        vec![host("stg-db-1", "data"), host("stg-api-1", "core")],
        None,
        Some(&environments),
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let first = run_drill(&fleet, "evidence").await;
    let first = drills::wait_for(&fleet, &first, MINUTE, drills::ended).await;
    assert_eq!(first.status, "passed");
    assert!(!first.slower);

    // The core host became slow to restore.
    fleet.fleet.kill_agent("stg-api-1");
    let slow = format!(
        "[plugins.recorder]\npath = \"{{plugins}}/fixture_recorder.wasm\"\nallow_unsigned = true\n\n\
         [targets.app]\nplugin = \"recorder\"\nsettings = {{ log = \"{records}/stg-api-1.log\", delay_ms = 2500 }}\n\
         grant = {{ files = [\"{records}\"] }}\n",
        records = fleet.records.display()
    );
    fleet.fleet.set_targets("stg-api-1", &slow).unwrap();
    fleet.fleet.start_agent("stg-api-1").unwrap();
    fleet.wait_connected(2).await;
    let second = run_drill(&fleet, "evidence").await;
    let second = drills::wait_for(&fleet, &second, MINUTE, drills::ended).await;
    assert_eq!(second.status, "passed");
    assert!(second.slower, "{second:#?}");
    let report = drills::report(&fleet, &second.run_id).await;
    let comparison = report.comparison.expect("compared with the first pass");
    assert_eq!(comparison.earlier_ms, vec![first.rto_ms.unwrap()]);
    assert!(
        comparison.slower && comparison.ratio > 1.2,
        "{comparison:?}"
    );
    let history = fleet.rewind("viewer", &["drill", "history", "evidence"]);
    assert!(history.stdout.contains("SLOWER"), "{history}");

    // Six seconds after the last pass the evidence is stale.
    let events = |api: &ProviderApi| -> Vec<String> {
        api.requests()
            .iter()
            .map(|r| r.headers.get("x-rewind-event").cloned().unwrap_or_default())
            .collect()
    };
    eventually("a stale notice", MINUTE, || {
        let seen = events(&api);
        holds(seen.contains(&"drill-stale".to_string()), seen)
    });
    let list = fleet.rewind("viewer", &["drill", "list"]);
    assert!(list.stdout.contains("STALE (fresh for 6s)"), "{list}");
    // What is checked is an absence: no second notice within 6 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(events(&api), ["drill-slower", "drill-stale"], "each once");
}

/// A blackout window that begins while a drill rolls back makes it roll
/// forward at once and stop; a drill is not started in one.
#[tokio::test(flavor = "multi_thread")]
async fn a_blackout_beginning_mid_drill_rolls_it_forward_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", RECORDER_PLAN);
    let hosts = vec![
        host("stg-db-1", "data").with("delay_ms = 25000"),
        host("stg-api-1", "core"),
    ];
    let mut fleet = TestFleet::start(hosts, None).await;
    fleet.checkpoint("v1").await;
    let at = moment(Duration::from_secs(12), 0);
    fleet
        .reconfigure(drill_table(
        "window",
        &plan,
        &format!(
            "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"\nblackouts = [{{ cron = \"{}\", length = \"10m\" }}]",
            cron_at(&[at])
        ),
    ), 2)
        .await;
    let id = run_drill(&fleet, "window").await;
    let done = drills::wait_for(&fleet, &id, 2 * MINUTE, drills::ended).await;
    assert_eq!(done.status, "aborted", "{done:#?}");
    assert!(
        done.reason
            .starts_with("a blackout window began: in the blackout window"),
        "{}",
        done.reason
    );
    // The roll back stopped after the step in flight; the roll forward
    // put the data host back; the core host was never touched.
    let db = drills::restores(&fleet, "stg-db-1");
    assert_eq!(db.len(), 2, "{db:#?}");
    assert!(db[1].starts_with(&format!("{id}-forward/")), "{db:#?}");
    let api = drills::restores(&fleet, "stg-api-1");
    assert!(
        api.iter().all(|s| s.starts_with(&format!("{id}-forward/"))),
        "{api:#?}"
    );
    let back = fleet.report(&done.back_run).await;
    assert_eq!(back.status, "cancelled");
    // Within the window, no drill starts.
    let refused = fleet.rewind("ops", &["drill", "run", "window"]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused
            .stderr
            .contains("not started: in the blackout window"),
        "{refused}"
    );
}

/// The roll forward fails on one host: the drill notifies with severity
/// critical, leaves the forward run paused for an operator, and its report
/// says where each host was left; cancelled, the drill ends failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_roll_forward_is_critical_paused_and_reported_host_by_host() {
    let api = ProviderApi::start(|_| (200, "ok".into()));
    let dir = tempfile::tempdir().unwrap();
    let plan = write(dir.path(), "plan.toml", RECORDER_PLAN);
    let environments = drill_table("forward", &plan, "schedule = \"0 0 3 1 1 *\"\nrto = \"5m\"")
        + &drills::webhook_table(api.port, &["drill-failed"]);
    let hosts = vec![
        host("stg-db-1", "data"),
        host("stg-api-1", "core").with("fail_when = \"-forward/\""),
    ];
    let fleet = TestFleet::start_in(hosts, None, Some(&environments), None).await;
    fleet.checkpoint("v1").await;
    let id = run_drill(&fleet, "forward").await;
    let paused = drills::wait_for(&fleet, &id, MINUTE, |d| d.status == "paused").await;
    assert_eq!(paused.phase, "roll-forward");
    let forward = fleet.report(&paused.forward_run).await;
    assert_eq!(forward.status, "paused", "{forward:?}");

    eventually("a notification", MINUTE, || {
        holds(!api.requests().is_empty(), ())
    });
    let body: serde_json::Value = serde_json::from_slice(&api.requests()[0].body).unwrap();
    assert_eq!(body["event"], "drill-failed");
    assert_eq!(body["severity"], "critical");
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .contains("the roll forward failed and is paused"),
        "{body}"
    );

    let report = drills::report(&fleet, &id).await;
    assert!(report.critical);
    assert_eq!(report.status, "paused");
    let state = |host: &str| {
        report
            .hosts
            .iter()
            .find(|h| h.host == host)
            .map(|h| h.left_on.clone())
            .unwrap()
    };
    assert!(
        state("stg-db-1").starts_with("on the checkpoint drill/forward/"),
        "{:?}",
        report.hosts
    );
    assert!(
        state("stg-api-1").starts_with("roll forward failed (failed: ")
            && state("stg-api-1").ends_with(
                "recorder on app fails on purpose): on v1 or between it and the checkpoint"
            ),
        "{:?}",
        report.hosts
    );

    // A rollback on its agents is refused, even preempting: the drill
    // waits for an operator, and the refusal says what to do.
    let core = "[[stage]]\nname = \"core\"\nselect = { tier = \"core\" }\ntarget = \"app\"\n";
    let refused = fleet.rollback_cli(core, "v1", &["--preempt-drill"]);
    assert!(!refused.success, "{refused}");
    assert!(
        refused.stderr.contains(&format!(
            "could not roll forward and waits for an operator on stg-api-1: `rewind approve {}`",
            paused.forward_run
        )),
        "{refused}"
    );

    // The operator gives up on it: the drill ends failed, critical.
    let cancel = fleet.rewind("ops", &["cancel", &paused.forward_run]);
    assert!(cancel.success, "{cancel}");
    let done = drills::wait_for(&fleet, &id, MINUTE, drills::ended).await;
    assert_eq!(done.status, "failed");
    assert!(
        done.reason
            .starts_with("roll forward: stage core host stg-api-1 target app"),
        "{}",
        done.reason
    );
    assert!(drills::report(&fleet, &id).await.critical);
}
