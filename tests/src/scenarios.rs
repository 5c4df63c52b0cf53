//! Rollback scenarios shared by the SQLite and the PostgreSQL journals.

use crate::fleet::{TestFleet, eight_hosts, four_stage_plan};

const STAGES: [&[&str]; 4] = [
    &["db-1"],
    &["api-1", "api-2", "api-3"],
    &["gw-1", "gw-2"],
    &["ui-1", "ui-2"],
];

/// Each host restored exactly once, and every stage's restores ended before
/// the next stage's began, as the plugins recorded it.
pub fn assert_ran_once_in_stage_order(fleet: &TestFleet) {
    let mut previous_end = 0u128;
    for (stage, hosts) in STAGES.iter().enumerate() {
        let mut stage_end = 0u128;
        for host in *hosts {
            let records = fleet.records(host);
            let starts: Vec<u128> = records
                .iter()
                .filter(|(k, _)| k == "start")
                .map(|(_, t)| *t)
                .collect();
            let ends: Vec<u128> = records
                .iter()
                .filter(|(k, _)| k == "end")
                .map(|(_, t)| *t)
                .collect();
            assert_eq!(
                starts.len(),
                1,
                "{host} restored {} times: {records:?}",
                starts.len()
            );
            assert_eq!(ends.len(), 1, "{host}: {records:?}");
            assert!(
                starts[0] > previous_end,
                "stage {stage}: {host} started before the previous stage ended"
            );
            stage_end = stage_end.max(ends[0]);
        }
        previous_end = stage_end;
    }
}

/// A 4-stage rollback of 8 agents completes in dependency order.
pub async fn four_stage_rollback(database: Option<&str>) {
    let fleet = TestFleet::start(eight_hosts(), database).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_eq!(report.steps.len(), 8);
    assert!(
        report.stages.iter().all(|s| s.status == "succeeded"),
        "{report:?}"
    );
    assert_ran_once_in_stage_order(&fleet);
}

/// The coordinator is SIGKILLed while core steps are in flight, restarted,
/// and completes the run with no step applied twice.
pub async fn coordinator_killed_mid_run(database: Option<&str>) {
    let mut hosts = eight_hosts();
    for h in hosts.iter_mut().filter(|h| h.tier == "core") {
        h.settings = "delay_ms = 1500".into();
    }
    let mut fleet = TestFleet::start(hosts, database).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(&four_stage_plan(""), "v1").await;
    fleet
        .events_until(&run, |e| e.kind == "step-sent" && e.stage == "core")
        .await;
    fleet.fleet.kill_coordinator();
    fleet
        .fleet
        .start_coordinator()
        .expect("restarted coordinator");
    fleet.wait_connected(8).await;
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_ran_once_in_stage_order(&fleet);
}
