//! Helpers for drill tests: cron patterns for exact moments, the drill
//! tables of a coordinator's configuration, and waiting for drill runs
//! through the operator API.

use crate::fleet::TestFleet;
use rewind_coordinator::drill::report::DrillReport;
use rewind_proto::v1::{DrillHistoryRequest, DrillRunRef, DrillRunSummary};
use std::time::Duration;
use time::OffsetDateTime;

/// A moment at least `ahead` from now, whole seconds, that leaves room in
/// its minute for `span` more seconds (so one cron pattern names them all).
pub fn moment(ahead: Duration, span: u64) -> OffsetDateTime {
    let mut at = OffsetDateTime::now_utc() + ahead;
    at = at.replace_nanosecond(0).unwrap();
    if at.second() as u64 + span > 58 {
        let to_next = 60 - at.second() as i64 + 1;
        at += time::Duration::seconds(to_next);
    }
    at
}

/// A cron pattern (seconds first, UTC) matching exactly these moments,
/// which must share their minute.
pub fn cron_at(moments: &[OffsetDateTime]) -> String {
    let first = moments[0];
    let seconds: Vec<String> = moments.iter().map(|m| m.second().to_string()).collect();
    for m in moments {
        assert_eq!(
            (m.minute(), m.hour(), m.day(), m.month()),
            (first.minute(), first.hour(), first.day(), first.month()),
            "the moments must share their minute"
        );
    }
    format!(
        "{} {} {} {} {} *",
        seconds.join(","),
        first.minute(),
        first.hour(),
        first.day(),
        u8::from(first.month())
    )
}

/// Wait until `at` has passed.
pub async fn until(at: OffsetDateTime) {
    let left = at - OffsetDateTime::now_utc();
    if left.is_positive() {
        tokio::time::sleep(Duration::from_millis(left.whole_milliseconds() as u64)).await;
    }
}

/// `[environments.production]` (protected, as the fleets' default) and a
/// `[drills.<name>]` table with `settings` (TOML key = value lines).
pub fn drill_table(name: &str, plan: &std::path::Path, settings: &str) -> String {
    format!(
        "[environments.production]\nprotected = true\n\n[drills.{name}]\nplan = \"{}\"\nenv = \"staging\"\n{settings}\n",
        plan.display()
    )
}

/// A `[notifications.ops]` webhook on a local receiver's port, sent `events`.
pub fn webhook_table(port: u16, events: &[&str]) -> String {
    let events: Vec<String> = events.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "\n[notifications.ops]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/ops\"\nevents = [{}]\n",
        events.join(", ")
    )
}

/// A drill's runs, newest first.
pub async fn history(fleet: &TestFleet, drill: &str) -> Vec<DrillRunSummary> {
    fleet
        .client("viewer")
        .await
        .drill_history(DrillHistoryRequest {
            drill: drill.into(),
            limit: 100,
        })
        .await
        .unwrap_or_else(|s| panic!("drill history: {}", s.message()))
        .into_inner()
        .runs
}

pub fn ended(run: &DrillRunSummary) -> bool {
    matches!(
        run.status.as_str(),
        "passed" | "failed" | "aborted" | "skipped"
    )
}

/// Wait until the drill has `count` runs and the newest has ended; the runs.
pub async fn wait_runs(
    fleet: &TestFleet,
    drill: &str,
    count: usize,
    patience: Duration,
) -> Vec<DrillRunSummary> {
    crate::wait::eventually_async(
        &format!("drill {drill}: {count} ended run(s)"),
        patience,
        async || {
            let runs = history(fleet, drill).await;
            if runs.len() >= count && runs.iter().all(ended) {
                Ok(runs)
            } else {
                Err(runs)
            }
        },
    )
    .await
}

/// One drill run, now.
pub async fn summary(fleet: &TestFleet, run_id: &str) -> DrillRunSummary {
    fleet
        .client("viewer")
        .await
        .get_drill_run(DrillRunRef {
            run_id: run_id.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("drill run {run_id}: {}", s.message()))
        .into_inner()
}

/// Wait until a drill run satisfies `done`.
pub async fn wait_for(
    fleet: &TestFleet,
    run_id: &str,
    patience: Duration,
    done: impl Fn(&DrillRunSummary) -> bool,
) -> DrillRunSummary {
    crate::wait::eventually_async(&format!("drill run {run_id}"), patience, async || {
        let now = summary(fleet, run_id).await;
        if done(&now) { Ok(now) } else { Err(now) }
    })
    .await
}

/// A drill run's report, through the operator API.
pub async fn report(fleet: &TestFleet, run_id: &str) -> DrillReport {
    let json = fleet
        .client("viewer")
        .await
        .drill_report(DrillRunRef {
            run_id: run_id.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("drill report {run_id}: {}", s.message()))
        .into_inner()
        .json;
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("report {run_id}: {e}: {json}"))
}

/// The step ids each restore of a recorder host started with, in order.
pub fn restores(fleet: &TestFleet, host: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(fleet.records.join(format!("{host}.log"))).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("start "))
        .filter_map(|l| l.split(' ').nth(2).map(str::to_string))
        .collect()
}

/// Wait until a run exists in the journal (a drill's leg starts with its phase).
pub async fn wait_run(fleet: &TestFleet, run_id: &str, patience: Duration) {
    let mut client = fleet.client("viewer").await;
    crate::wait::eventually_async(&format!("run {run_id} starts"), patience, async || {
        client
            .get_run(rewind_proto::v1::RunRef {
                run_id: run_id.into(),
            })
            .await
            .map(drop)
            .map_err(|s| s.message().to_string())
    })
    .await
}

/// A 2-stage plan over recorder hosts: data, then core (verified).
pub const RECORDER_PLAN: &str = r#"name = "staging platform"

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

/// Restores of each host, by leg: none repeated, as many as `wanted`.
pub fn assert_each_step_ran_once(
    fleet: &TestFleet,
    hosts: &[&str],
    drill_run: &str,
    wanted: usize,
) {
    for host in hosts {
        let ids = restores(fleet, host);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{host} ran a step twice: {ids:#?}");
        assert_eq!(ids.len(), wanted, "{host}: {ids:#?}");
        assert!(
            ids[0].starts_with(&format!("{drill_run}-back/"))
                && ids[ids.len() - 1].starts_with(&format!("{drill_run}-forward/")),
            "{host}: {ids:#?}"
        );
    }
}
