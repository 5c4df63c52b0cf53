//! The fault sweeps of `rewind_tests::sweep`, small: one run per kill
//! point of the coordinator, two agent kills, and 200 connections without
//! a certificate. `cargo bench -p rewind-tests --bench fault_sweep` runs
//! them at the sizes docs/RELIABILITY.md reports.

use rewind_tests::sweep;

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_at_each_kill_point_every_run_ends_nothing_applied_twice() {
    let tally = sweep::coordinator_kills(sweep::KILL_POINTS.len() * 2, None).await;
    assert_eq!(tally.ended, tally.runs, "{tally:#?}");
    assert_eq!(tally.unexpected, 0, "{tally:#?}");
    assert_eq!(tally.applied_twice, 0, "{tally:?}");
    assert_eq!(tally.applied_after_cancel, 0, "{tally:?}");
    assert_eq!(tally.sent_after_cancel, 0, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_killed_between_acting_and_reporting_never_act_twice() {
    let tally = sweep::agent_kills(2).await;
    assert_eq!(tally.applied_twice, 0, "{tally:?}");
    assert_eq!(tally.recovered, tally.kills, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_without_a_certificate_get_nothing_and_cost_little() {
    let tally = sweep::certificate_less_flood(200).await;
    assert_eq!(tally.accepted, 0, "{tally:?}");
    assert!(
        tally.rss_peak_kib < tally.rss_before_kib + 64 * 1024,
        "coordinator memory grew too much: {tally:?}"
    );
}
