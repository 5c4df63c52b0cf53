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

/// At the bound: 10,000 silent connections from 40 addresses, more than
/// the coordinator's 4,096 handshake slots. Operators connecting afresh and
/// an agent restarted meanwhile still get in: a silent connection gives its
/// slot back after 2 s, one address holds at most its share, and a share of
/// the slots is kept for addresses that completed a handshake before.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_silent_connections_at_the_bound_locks_nobody_out() {
    let tally = sweep::silent_flood(10_000, 40).await;
    println!("{tally:?}");
    assert!(
        tally.opened > 4096,
        "the flood reached the bound: {tally:?}"
    );
    assert_eq!(tally.operator_ok, tally.operator_calls, "{tally:?}");
    assert!(tally.agent_back_s.is_some(), "{tally:?}");
}
