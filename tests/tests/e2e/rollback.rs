//! Multi-host rollbacks end to end: a real coordinator and 8 real agents as
//! separate processes on loopback with mutual TLS. Order and repetition are
//! checked from what the plugins recorded, not from the coordinator's log.

use rewind_tests::fleet::{TestFleet, eight_hosts, four_stage_plan, host};
use rewind_tests::scenarios::{self, assert_ran_once_in_stage_order};
use rewind_tests::wait::{eventually, holds};
use std::time::Duration;

/// Wait until `host`'s plugin has recorded a line of `kind` (`start`, `end`).
fn until_recorded(fleet: &TestFleet, host: &str, kind: &str) {
    eventually(
        &format!("{host}'s plugin records `{kind}`"),
        Duration::from_secs(30),
        || {
            let records = fleet.records(host);
            holds(records.iter().any(|(k, _)| k == kind), records)
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_four_stage_rollback_runs_in_dependency_order() {
    scenarios::four_stage_rollback(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_in_stage_two_halts_stages_three_and_four() {
    let mut hosts = eight_hosts();
    hosts[2] = host("api-2", "core").with("fail = true");
    let fleet = TestFleet::start(hosts, None).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "failed");
    let statuses: Vec<&str> = report.stages.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(statuses, ["succeeded", "failed", "skipped", "skipped"]);
    let failed: Vec<_> = report.steps.iter().filter(|s| s.error.is_some()).collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert_eq!(
        (failed[0].agent.as_str(), failed[0].target.as_str()),
        ("api-2", "app")
    );
    let error = failed[0].error.as_ref().unwrap();
    assert_eq!(error.kind, "failed");
    assert!(
        error.message.contains("recorder on app fails on purpose"),
        "{}",
        error.message
    );
    for host in ["gw-1", "gw-2", "ui-1", "ui-2"] {
        assert!(
            fleet.records(host).is_empty(),
            "{host} must not have run after the halt"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_run_resumes_without_repeating_a_step() {
    scenarios::coordinator_killed_mid_run(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_step_has_its_outcome_recovered_not_repeated() {
    let mut hosts = eight_hosts();
    hosts[1] = host("api-1", "core").with("after_ms = 4000");
    let mut fleet = TestFleet::start(hosts, None).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    // api-1 has done its work and sits before returning: kill it then.
    until_recorded(&fleet, "api-1", "end");
    fleet.fleet.kill_agent("api-1");
    fleet.fleet.start_agent("api-1").expect("restarted agent");
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    let api1 = report.steps.iter().find(|s| s.agent == "api-1").unwrap();
    assert!(
        api1.summary
            .contains("the agent restarted during this step; verify says it completed"),
        "{}",
        api1.summary
    );
    assert!(
        api1.summary.contains("recovered after an agent restart"),
        "{}",
        api1.summary
    );
    assert_ran_once_in_stage_order(&fleet);
}

/// An agent's ledger is what keeps a step from acting twice. Damaged on
/// disk, it cannot say which steps it held: the agent runs no step it does
/// not hold as done (each is settled by verify instead, and fails here,
/// saying why) until an operator removes the damaged copy it kept aside.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_ledger_is_damaged_acts_on_nothing_until_an_operator_clears_it() {
    let mut fleet = TestFleet::start(eight_hosts(), None).await;
    fleet.checkpoint("v1").await;
    fleet.fleet.kill_agent("api-1");
    // A byte of the first of its records (the checkpoint's) flipped on disk.
    let ledger = fleet.fleet.host_dir("api-1").join("state").join("ledger");
    let mut bytes = std::fs::read(ledger.join("log")).unwrap();
    assert!(
        bytes.len() > 64,
        "api-1's ledger holds its checkpoint: {bytes:?}"
    );
    bytes[20] ^= 0xff;
    std::fs::write(ledger.join("log"), &bytes).unwrap();
    fleet.fleet.start_agent("api-1").expect("restarted agent");
    fleet.wait_connected(8).await;

    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "failed", "{report:?}");
    let api1 = report.steps.iter().find(|s| s.agent == "api-1").unwrap();
    let error = api1.error.as_ref().expect("api-1's step failed");
    assert_eq!(error.kind, "interrupted", "{error:?}");
    assert!(
        error.message.contains("ledger was found damaged") && error.message.contains(".damaged"),
        "{}",
        error.message
    );
    assert!(
        fleet.records("api-1").is_empty(),
        "api-1 restored with a damaged ledger: {:?}",
        fleet.records("api-1")
    );
    let log = std::fs::read_to_string(fleet.fleet.host_dir("api-1").join("agent.log")).unwrap();
    assert!(log.contains("the agent's ledger is damaged"), "{log}");

    // The operator has checked api-1's target: the kept copy goes, the agent restarts.
    fleet.fleet.kill_agent("api-1");
    let kept: Vec<_> = std::fs::read_dir(&ledger)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "damaged"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    std::fs::remove_file(&kept[0]).unwrap();
    fleet.fleet.start_agent("api-1").expect("restarted agent");
    fleet.wait_connected(8).await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    let kinds: Vec<String> = fleet.records("api-1").into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["start", "end"]);
}

/// SIGTERM with agents connected and a step in flight: the coordinator
/// stops starting steps, journals the result that arrives, tells agents to
/// reconnect and exits within its documented bound (10 s of drain and 5 s
/// to close); restarted, it finishes the run with no step applied twice.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_within_its_bound() {
    let mut hosts = eight_hosts();
    for h in hosts.iter_mut().filter(|h| h.tier == "core") {
        h.settings = "delay_ms = 1500".into();
    }
    let mut fleet = TestFleet::start(hosts, None).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    fleet
        .events_until(&run, |e| e.kind == "step-sent" && e.stage == "core")
        .await;
    let started = std::time::Instant::now();
    let status = fleet
        .fleet
        .terminate_coordinator(std::time::Duration::from_secs(20))
        .expect("the coordinator exits after SIGTERM");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < std::time::Duration::from_secs(16), "took {took:?}");
    let log = std::fs::read_to_string(fleet.fleet.dir.join("coordinator.log")).unwrap();
    assert!(log.contains("stopping: no new runs or steps"), "{log}");
    assert!(log.contains("coordinator stopped"), "{log}");
    // Nothing started after the stop began: the gateway stage never ran.
    for host in ["gw-1", "gw-2", "ui-1", "ui-2"] {
        assert!(
            fleet.records(host).is_empty(),
            "{host} ran during the drain"
        );
    }
    fleet
        .fleet
        .start_coordinator()
        .expect("restarted coordinator");
    fleet.wait_connected(8).await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_ran_once_in_stage_order(&fleet);
}

/// A plugin that logs 80 MiB, and one that returns a 200 MiB snapshot: the
/// agent bounds both, stays connected, and the limit is named where it bit.
#[tokio::test(flavor = "multi_thread")]
async fn floods_end_with_their_named_limit_and_the_agent_stays_connected() {
    let target = |settings: &str| {
        format!(
            "[plugins.flood]\npath = \"{{plugins}}/fixture_flood.wasm\"\nallow_unsigned = true\n\n\
             [targets.app]\nplugin = \"flood\"\nmemory_limit = \"1GiB\"\nsettings = {{ {settings} }}\n"
        )
    };
    let mut fleet = TestFleet::start_agents(
        vec![
            (
                "log-1".into(),
                "core".into(),
                target("log_mib = 80, progress = 100000"),
            ),
            ("big-1".into(), "data".into(), target("snapshot_mib = 200")),
        ],
        None,
    )
    .await;
    let mut ops = fleet.client("ops").await;
    let error = ops
        .checkpoint(rewind_proto::v1::CheckpointRequest {
            release: "v1".into(),
            env: String::new(),
        })
        .await
        .expect_err("a 200 MiB snapshot is refused");
    assert!(
        error.message().contains("snapshot-too-large")
            && error.message().contains("limited to 16 MiB"),
        "{}",
        error.message()
    );
    fleet.wait_connected(2).await;

    // The log flood: a release of log-1 alone (big-1 retired from it by
    // its tier: the plan selects core only, the release needs only log-1).
    fleet.fleet.kill_agent("big-1");
    let admin = fleet.rewind("admin", &["fleet", "remove", "big-1"]);
    assert!(
        admin.success || admin.stderr.contains("is connected"),
        "{admin}"
    );
    eventually("big-1 is retired", Duration::from_secs(30), || {
        let removed = fleet.rewind("admin", &["fleet", "remove", "big-1"]);
        holds(
            removed.stderr.contains("no agent big-1"),
            removed.to_string(),
        )
    });
    fleet.checkpoint("v1").await;
    let plan = "[[stage]]\nname = \"core\"\nselect = { tier = \"core\" }\ntarget = \"app\"\n";
    let output = fleet.rollback_cli(plan, "v1", &[]);
    assert!(output.success, "{output}");
    let report = fleet.report(&TestFleet::run_id_of(&output)).await;
    assert_eq!(report.steps[0].summary, "logged 80 MiB");
    fleet.wait_connected(1).await;
}

/// One action per target at a time: a checkpoint asked for while a run's
/// restore of the same target is in flight waits for it (the plugin's own
/// records show the two never overlap).
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_during_a_restore_of_the_same_target_waits_for_it() {
    let fleet = TestFleet::start(vec![host("db-1", "data").with("delay_ms = 2000")], None).await;
    fleet.checkpoint("v1").await;
    let plan = "[[stage]]\nname = \"data\"\nselect = { tier = \"data\" }\ntarget = \"app\"\n";
    let run = fleet.start_run(plan, "v1").await;
    fleet.events_until(&run, |e| e.kind == "step-sent").await;
    // The plugin has begun the restore; then a snapshot of the target is asked for.
    until_recorded(&fleet, "db-1", "start");
    fleet.checkpoint("v2").await;
    assert_eq!(fleet.finish(&run).await.status, "succeeded");
    let restore = fleet.records("db-1");
    let (start, end) = (
        restore.iter().find(|(k, _)| k == "start").unwrap().1,
        restore.iter().find(|(k, _)| k == "end").unwrap().1,
    );
    let snapshots = rewind_tests::fleet::read_records(&fleet.records.join("db-1.log.snapshots"));
    let second = snapshots
        .iter()
        .filter(|(k, _)| k == "start")
        .nth(1)
        .unwrap()
        .1;
    assert!(
        second > end,
        "the checkpoint's snapshot ({second}) began before the restore ({start}..{end}) ended"
    );
}

/// Two agents on one state directory would both act on the steps its
/// ledger records: a second one refuses to start, naming the first; the
/// first goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_on_the_same_state_directory_refuses_to_start() {
    let fleet = TestFleet::start(vec![host("web-1", "web")], None).await;
    let config = fleet.fleet.host_dir("web-1").join("agent.toml");
    let output = std::process::Command::new(rewind_tests::binary("rewind-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by another agent (pid") && stderr.contains("agent.pid"),
        "{stderr}"
    );
    fleet.checkpoint("v1").await;
    let plan = "[[stage]]\nname = \"web\"\nselect = { tier = \"web\" }\ntarget = \"app\"\n";
    let run = fleet.start_run(plan, "v1").await;
    assert_eq!(fleet.finish(&run).await.status, "succeeded");
}

/// A full disk on the day of a rollback: the agent starts all the same
/// (its lock and its ledger take no new space), a step whose record cannot
/// be written fails without acting, and once there is room the rollback
/// runs.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_on_a_full_disk_starts_and_acts_only_once_it_can_record() {
    let mut hosts = eight_hosts();
    // A large snapshot: its step's record cannot fit in a page's slack.
    hosts[1] = host("api-1", "core").with("pad = 20000");
    let mut fleet = TestFleet::start(hosts, None).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    assert_eq!(fleet.finish(&run).await.status, "succeeded");
    std::fs::remove_file(fleet.records.join("api-1.log")).unwrap();

    fleet.fleet.kill_agent("api-1");
    let disk =
        rewind_tests::disk::SmallDisk::over(&fleet.fleet.host_dir("api-1").join("state"), "16m");
    disk.fill();
    fleet.fleet.start_agent("api-1").expect("restarted agent");
    fleet.wait_connected(8).await;

    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "failed", "{report:?}");
    let api1 = report.steps.iter().find(|s| s.agent == "api-1").unwrap();
    let error = api1.error.as_ref().expect("api-1's step failed");
    assert!(
        error
            .message
            .contains("cannot record the step before acting")
            && error.message.contains("No space left on device"),
        "{error:?}"
    );
    assert!(
        fleet.records("api-1").is_empty(),
        "api-1 acted without a record: {:?}",
        fleet.records("api-1")
    );

    disk.free();
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    let kinds: Vec<String> = fleet.records("api-1").into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["start", "end"]);
}
