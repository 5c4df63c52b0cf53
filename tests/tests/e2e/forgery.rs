//! An agent speaks only for itself. A compromised agent (here: a connection
//! made with agent a1's own valid certificate) tries to get agent a2's step
//! recorded: while a2 runs it, while a2 is offline, with a failure, in its
//! Hello, and through a verify gate by guessing its id. Every attempt is
//! refused (and counted), and what a2 really did is what the run records,
//! checked from a2's own plugin records.

use rewind_tests::fleet::{TestFleet, forged_failure, forged_success, host};
use std::time::Duration;

const CORE_ONLY: &str = r#"name = "core"

[[stage]]
name = "core"
select = { tier = "core" }
target = "app"
"#;

/// Wait until `check` holds (the shared helper, with 30 s of patience).
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    rewind_tests::wait::eventually_async(what, Duration::from_secs(30), async || {
        rewind_tests::wait::holds(check().await, ())
    })
    .await
}

async fn refused(fleet: &TestFleet, kind: &str) -> u64 {
    fleet.refused().await.get(kind).copied().unwrap_or(0)
}

fn step_of<'a>(
    report: &'a rewind_proto::v1::RunReport,
    agent: &str,
) -> &'a rewind_proto::v1::StepReport {
    report
        .steps
        .iter()
        .find(|s| s.agent == agent)
        .unwrap_or_else(|| panic!("no step of {agent}: {report:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn results_and_progress_for_another_agents_step_are_refused_while_it_runs() {
    let fleet = TestFleet::start(
        vec![
            host("a1", "data"),
            host("a2", "core").with("delay_ms = 3000"),
        ],
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(CORE_ONLY, "v1").await;
    let sent = fleet
        .events_until(&run, |e| e.kind == "step-sent" && e.agent == "a2")
        .await;
    let step_id = sent.last().unwrap().step_id.clone();

    let impostor = fleet.impostor("a1", vec![]).await;
    impostor.send_progress(&run, &step_id, 1).await;
    impostor
        .send_result(forged_success(&run, &step_id, 1))
        .await;
    impostor
        .send_result(forged_failure(&run, &step_id, 1))
        .await;
    eventually("two forged results refused", || async {
        refused(&fleet, "result-from-other-agent").await >= 2
    })
    .await;
    eventually("the forged progress refused", || async {
        refused(&fleet, "progress-from-other-agent").await >= 1
    })
    .await;
    let report = fleet.report(&run).await;
    assert_eq!(step_of(&report, "a2").status, "sent", "{report:?}");

    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_eq!(step_of(&report, "a2").summary, "recorded a restore");
    let records = fleet.records("a2");
    assert_eq!(
        records.iter().filter(|(k, _)| k == "start").count(),
        1,
        "{records:?}"
    );
    assert!(records.iter().any(|(k, _)| k == "end"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_result_for_an_offline_agent_is_refused_live_and_in_a_hello() {
    let mut fleet = TestFleet::start(
        vec![
            host("a1", "data").with("delay_ms = 2000"),
            host("a2", "core"),
        ],
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let plan = format!(
        "{CORE_ONLY}after = [\"data\"]\n\n[[stage]]\nname = \"data\"\nselect = {{ tier = \"data\" }}\ntarget = \"app\"\n"
    );
    let run = fleet.start_run(&plan, "v1").await;
    fleet
        .events_until(&run, |e| e.kind == "step-sent" && e.agent == "a1")
        .await;
    fleet.fleet.kill_agent("a2");
    // a2's step is journaled as sent while a2 is offline.
    let sent = fleet
        .events_until(&run, |e| e.kind == "step-sent" && e.agent == "a2")
        .await;
    let step_id = sent.last().unwrap().step_id.clone();

    let before = refused(&fleet, "result-from-other-agent").await;
    let impostor = fleet
        .impostor("a1", vec![forged_success(&run, &step_id, 1)])
        .await;
    impostor
        .send_result(forged_success(&run, &step_id, 1))
        .await;
    eventually("the forged Hello replay and result refused", || async {
        refused(&fleet, "result-from-other-agent").await >= before + 2
    })
    .await;
    // What is checked is an absence: nothing of the forgery is recorded
    // within half a second after its refusal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = fleet.report(&run).await;
    assert_eq!(report.status, "running", "{report:?}");
    assert_eq!(step_of(&report, "a2").status, "sent", "{report:?}");
    assert!(fleet.records("a2").is_empty(), "a2 never ran it");

    fleet.fleet.start_agent("a2").expect("a2 back");
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert_eq!(step_of(&report, "a2").summary, "recorded a restore");
    assert_eq!(
        fleet
            .records("a2")
            .iter()
            .filter(|(k, _)| k == "start")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verify_gate_is_not_passed_by_guessing_its_id() {
    let fleet = TestFleet::start(
        vec![
            host("a1", "data"),
            host("a2", "core").with("verify_delay_ms = 3000, verify_fail = true"),
        ],
        None,
    )
    .await;
    fleet.checkpoint("v1").await;
    let plan = format!("{CORE_ONLY}health = [{{ verify = true }}]\n");
    let run = fleet.start_run(&plan, "v1").await;
    let done = fleet
        .events_until(&run, |e| e.kind == "step-succeeded" && e.agent == "a2")
        .await;
    let step_id = done.last().unwrap().step_id.clone();
    // The gate's verify runs for 3 s: flood it with guesses in the form
    // gate ids have now (the step id, `/verify/` and 16 hex digits: 64
    // random bits), and in the form they once had (the time in ms), each
    // with and without the run's id.
    let impostor = fleet.impostor("a1", vec![]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for ms in now.saturating_sub(1500)..now + 1500 {
        let current = format!("{step_id}/verify/{}", rewind_coordinator::runner::nonce());
        let old = format!("{step_id}/verify/{ms}");
        for guess in [current, old] {
            impostor.send_result(forged_success("", &guess, 1)).await;
            impostor.send_result(forged_success(&run, &guess, 1)).await;
        }
    }
    let report = fleet.finish(&run).await;
    assert_eq!(report.status, "failed", "the gate must fail: {report:?}");
    let events = fleet.events_until(&run, |_| false).await;
    let gate = events
        .iter()
        .find(|e| e.kind == "health-failed")
        .expect("a health-failed event");
    assert!(
        gate.message.contains("fails verify on purpose"),
        "{}",
        gate.message
    );
    assert!(
        refused(&fleet, "result-for-unknown-step").await >= 6000,
        "the guesses with the run's id are refused and counted: {:?}",
        fleet.refused().await
    );
}

/// What an agent sends for its own step is bounded before the coordinator
/// keeps it or passes it on: a huge progress message and a result with a
/// megabyte summary and thousands of detail lines reach the watchers and
/// the report cut, each with a note.
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_oversized_progress_and_result_are_cut_before_they_are_kept() {
    use rewind_proto::v1::{
        AgentMessage, Outcome, StepProgress, StepResult, agent_message, step_result,
    };
    let mut fleet = TestFleet::start(vec![host("a1", "core").with("delay_ms = 30000")], None).await;
    fleet.checkpoint("v1").await;
    let run = fleet.start_run(CORE_ONLY, "v1").await;
    let sent = fleet.events_until(&run, |e| e.kind == "step-sent").await;
    let step_id = sent.last().unwrap().step_id.clone();
    // The agent's own certificate, on a connection of someone else's.
    fleet.fleet.kill_agent("a1");
    let agent = fleet.impostor("a1", vec![]).await;
    let huge = "p".repeat(4 << 20);
    agent
        .tx
        .send(AgentMessage {
            body: Some(agent_message::Body::Progress(StepProgress {
                run_id: run.clone(),
                step_id: step_id.clone(),
                attempt: 1,
                detail: huge.clone(),
                percent: Some(50),
            })),
        })
        .await
        .unwrap();
    agent
        .tx
        .send(AgentMessage {
            body: Some(agent_message::Body::Result(StepResult {
                run_id: run.clone(),
                step_id: step_id.clone(),
                attempt: 1,
                outcome: Some(step_result::Outcome::Done(Outcome {
                    changed: true,
                    summary: huge,
                    details: vec!["a detail line".into(); 5000],
                })),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    let report = fleet.finish(&run).await;
    let step = &report.steps[0];
    assert!(step.summary.len() < 4 << 10, "{}", step.summary.len());
    assert!(step.summary.contains("more bytes cut by the coordinator"));
    assert_eq!(step.details.len(), rewind_proto::bounded::LINES + 1);
    assert!(step.details.last().unwrap().contains("4800 more lines cut"));
    let events = fleet.events_until(&run, |_| false).await;
    assert!(
        events.iter().all(|e| e.message.len() < 8 << 10),
        "an event carries {} bytes",
        events.iter().map(|e| e.message.len()).max().unwrap_or(0)
    );
}

/// An agent that stops reading its stream (hung, or hostile) while the
/// coordinator has more for it than its queue holds: the coordinator drops
/// the stream and says so in it, so that the agent reconnects, and the
/// operators' previews for it fail instead of waiting on a dead stream.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_does_not_read_its_stream_is_dropped_and_told_to_reconnect() {
    use rewind_proto::v1::PlanRequest;
    // A 20 KB snapshot: each preview request sent to a1 carries it, so the
    // transport's flow-control window holds few of them.
    let mut fleet = TestFleet::start(vec![host("a1", "none").with("pad = 20000")], None).await;
    fleet.checkpoint("v1").await;
    fleet.fleet.kill_agent("a1");
    fleet.wait_disconnected("a1").await;
    // a1's own certificate, on a connection that never reads what it is sent.
    let mut impostor = fleet.impostor("a1", vec![]).await;
    let plan = "[[stage]]\nname = \"all\"\nselect = { tier = \"none\" }\ntarget = \"app\"\n";
    // More previews than the agent's queue (4,096) and the transport's
    // window hold, each waiting on a1's answer: 330 operator connections of
    // 16 calls each (the coordinator's limit per connection).
    let mut previews = tokio::task::JoinSet::new();
    for _ in 0..330 {
        let ops = fleet.client("ops").await;
        for _ in 0..16 {
            let mut ops = ops.clone();
            previews.spawn(async move {
                let _ = ops
                    .preview(PlanRequest {
                        plan_toml: plan.into(),
                        plan_path: "plan.toml".into(),
                        release: "v1".into(),
                        ..Default::default()
                    })
                    .await;
            });
        }
    }
    eventually("the coordinator drops a1's unread stream", || async {
        let log = std::fs::read_to_string(fleet.fleet.dir.join("coordinator.log")).unwrap();
        log.contains("the agent does not read its stream")
    })
    .await;
    // What a1 finds when it reads again: what was already on the wire,
    // then the reason, and the end of the stream.
    let mut read = 0usize;
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(30), impostor.inbound.message()).await {
            Ok(Ok(Some(_))) => read += 1,
            Ok(Ok(None)) => panic!("the stream ended without a reason after {read} messages"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stream neither ended nor gave a reason after {read} messages"),
        }
    };
    assert!(
        reason
            .message()
            .contains("messages were queued unread; reconnect"),
        "{reason:?}"
    );
    assert!(
        read < 4_096,
        "the reason came after the whole queue ({read} messages), not at once"
    );
    previews.abort_all();
}
