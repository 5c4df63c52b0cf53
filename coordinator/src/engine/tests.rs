//! The engine without network or clock: ordering, parallelism, canaries,
//! failure policies, attempts, timeouts and cancellation.

use super::*;

fn stage(
    name: &str,
    after: &[usize],
    max_parallel: usize,
    canary: usize,
    on_failure: OnFailure,
) -> StageSpec {
    StageSpec {
        name: name.into(),
        after: after.to_vec(),
        max_parallel,
        canary,
        timeout_ms: 1_000,
        on_failure,
        has_gates: false,
    }
}

fn steps(per_stage: &[usize]) -> Vec<StepSpec> {
    let mut steps = Vec::new();
    for (stage, &count) in per_stage.iter().enumerate() {
        for host in 0..count {
            steps.push(StepSpec {
                stage,
                agent: format!("h{stage}-{host}"),
                target: "t".into(),
            });
        }
    }
    steps
}

fn sent(commands: &[Command]) -> Vec<(usize, u32)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Send { step, attempt } => Some((*step, *attempt)),
            _ => None,
        })
        .collect()
}

fn ok(step: usize, attempt: u32) -> Event {
    Event::StepDone {
        step,
        attempt,
        outcome: Ok(Done {
            summary: "done".into(),
            changed: true,
            details: Vec::new(),
        }),
    }
}

fn fail(step: usize, attempt: u32) -> Event {
    Event::StepDone {
        step,
        attempt,
        outcome: Err(Failure {
            kind: "failed".into(),
            message: "boom".into(),
            details: Vec::new(),
        }),
    }
}

fn finished(commands: &[Command]) -> Option<RunStatus> {
    commands.iter().find_map(|c| match c {
        Command::Finished(status) => Some(*status),
        _ => None,
    })
}

#[test]
fn stages_run_in_after_order_and_parallel_within_a_stage() {
    let mut run = RunState::new(
        vec![
            stage("data", &[], 10, 0, OnFailure::Halt),
            stage("core", &[0], 10, 0, OnFailure::Halt),
            stage("ui", &[1], 10, 0, OnFailure::Halt),
        ],
        steps(&[1, 2, 1]),
    );
    assert_eq!(sent(&next(&mut run, Event::Start, 0)), [(0, 1)]);
    assert_eq!(sent(&next(&mut run, ok(0, 1), 1)), [(1, 1), (2, 1)]);
    assert_eq!(sent(&next(&mut run, ok(1, 1), 2)), []);
    assert_eq!(sent(&next(&mut run, ok(2, 1), 3)), [(3, 1)]);
    let last = next(&mut run, ok(3, 1), 4);
    assert_eq!(finished(&last), Some(RunStatus::Succeeded));
    assert!(
        run.stage_status
            .iter()
            .all(|s| *s == StageStatus::Succeeded)
    );
}

#[test]
fn max_parallel_and_canary_limit_dispatch() {
    let mut run = RunState::new(vec![stage("web", &[], 2, 1, OnFailure::Halt)], steps(&[5]));
    assert_eq!(
        sent(&next(&mut run, Event::Start, 0)),
        [(0, 1)],
        "the canary runs alone"
    );
    assert_eq!(
        sent(&next(&mut run, ok(0, 1), 1)),
        [(1, 1), (2, 1)],
        "then two at a time"
    );
    assert_eq!(sent(&next(&mut run, ok(1, 1), 2)), [(3, 1)]);
    assert_eq!(sent(&next(&mut run, ok(2, 1), 3)), [(4, 1)]);
}

#[test]
fn a_failed_canary_stops_the_stage() {
    let mut run = RunState::new(
        vec![
            stage("web", &[], 2, 1, OnFailure::Halt),
            stage("ui", &[0], 2, 0, OnFailure::Halt),
        ],
        steps(&[3, 1]),
    );
    next(&mut run, Event::Start, 0);
    let out = next(&mut run, fail(0, 1), 1);
    assert_eq!(sent(&out), []);
    assert_eq!(finished(&out), Some(RunStatus::Failed));
    assert_eq!(run.step_status[1], StepStatus::Skipped);
    assert_eq!(run.stage_status[1], StageStatus::Skipped);
}

#[test]
fn halt_lets_in_flight_steps_finish_then_skips_later_stages() {
    let mut run = RunState::new(
        vec![
            stage("core", &[], 10, 0, OnFailure::Halt),
            stage("gateway", &[0], 10, 0, OnFailure::Halt),
        ],
        steps(&[2, 1]),
    );
    next(&mut run, Event::Start, 0);
    let out = next(&mut run, fail(0, 1), 1);
    assert_eq!(finished(&out), None, "step 1 is still in flight");
    let out = next(&mut run, ok(1, 1), 2);
    assert_eq!(finished(&out), Some(RunStatus::Failed));
    assert_eq!(
        run.stage_status,
        [StageStatus::Failed, StageStatus::Skipped]
    );
    assert_eq!(run.step_status[2], StepStatus::Skipped);
    assert_eq!(run.attempts[2], 0, "a skipped step was never sent");
}

#[test]
fn continue_runs_dependents_and_fails_the_run_at_the_end() {
    let mut run = RunState::new(
        vec![
            stage("a", &[], 10, 0, OnFailure::Continue),
            stage("b", &[0], 10, 0, OnFailure::Halt),
        ],
        steps(&[1, 1]),
    );
    next(&mut run, Event::Start, 0);
    assert_eq!(sent(&next(&mut run, fail(0, 1), 1)), [(1, 1)]);
    assert_eq!(
        finished(&next(&mut run, ok(1, 1), 2)),
        Some(RunStatus::Failed)
    );
}

#[test]
fn pause_waits_and_approve_retries_as_a_new_attempt() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Pause)], steps(&[2]));
    next(&mut run, Event::Start, 0);
    next(&mut run, ok(1, 1), 1);
    let out = next(&mut run, fail(0, 1), 2);
    assert_eq!(run.status, RunStatus::Paused);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Note(n) if n.kind == EventKind::RunPaused))
    );
    assert_eq!(sent(&next(&mut run, Event::Tick, 3)), []);
    assert_eq!(sent(&next(&mut run, Event::Approve, 4)), [(0, 2)]);
    // A late result of the first attempt does not count.
    next(&mut run, ok(0, 1), 5);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        finished(&next(&mut run, ok(0, 2), 6)),
        Some(RunStatus::Succeeded)
    );
}

#[test]
fn repeated_results_are_ignored() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[2]));
    next(&mut run, Event::Start, 0);
    next(&mut run, ok(0, 1), 1);
    assert!(
        next(&mut run, fail(0, 1), 2).is_empty(),
        "a second result for a finished step changes nothing"
    );
    assert!(matches!(run.step_status[0], StepStatus::Succeeded(_)));
}

#[test]
fn a_step_without_result_times_out() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[1]));
    next(&mut run, Event::Start, 0);
    assert_eq!(finished(&next(&mut run, Event::Tick, 999)), None);
    let out = next(&mut run, Event::Tick, 1_001);
    assert_eq!(finished(&out), Some(RunStatus::Failed));
    let StepStatus::Failed(failure) = &run.step_status[0] else {
        panic!()
    };
    assert_eq!(failure.kind, "timeout");
    assert!(
        failure
            .message
            .contains("no result from agent h0-0 within 1s"),
        "{}",
        failure.message
    );
}

fn cancels(commands: &[Command]) -> Vec<(usize, u32)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Cancel { step, attempt } => Some((*step, *attempt)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_timed_out_step_is_cancelled_on_its_agent() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[2]));
    next(&mut run, Event::Start, 0);
    next(&mut run, ok(1, 1), 10);
    assert_eq!(cancels(&next(&mut run, Event::Tick, 1_001)), [(0, 1)]);
}

#[test]
fn cancel_stops_dispatch_and_ends_when_in_flight_steps_finish() {
    let mut run = RunState::new(vec![stage("a", &[], 1, 0, OnFailure::Halt)], steps(&[3]));
    next(&mut run, Event::Start, 0);
    let out = next(&mut run, Event::Cancel, 1);
    assert_eq!(finished(&out), None);
    assert_eq!(cancels(&out), [(0, 1)], "the agent is told too");
    let out = next(&mut run, ok(0, 1), 2);
    assert_eq!(sent(&out), []);
    assert_eq!(finished(&out), Some(RunStatus::Cancelled));
    assert_eq!(run.step_status[1], StepStatus::Skipped);
}

#[test]
fn gates_decide_the_stage() {
    let mut gated = stage("a", &[], 10, 0, OnFailure::Halt);
    gated.has_gates = true;
    let mut run = RunState::new(
        vec![gated, stage("b", &[0], 10, 0, OnFailure::Halt)],
        steps(&[1, 1]),
    );
    next(&mut run, Event::Start, 0);
    let out = next(&mut run, ok(0, 1), 1);
    assert!(out.contains(&Command::RunGates { stage: 0 }));
    assert_eq!(sent(&out), []);
    let out = next(
        &mut run,
        Event::GatesDone {
            stage: 0,
            outcome: Err("GET /health answered 500".into()),
        },
        2,
    );
    assert_eq!(finished(&out), Some(RunStatus::Failed));
}

/// The journal rows of a run as the store would hand them back.
#[allow(clippy::type_complexity)]
pub(super) fn rows(run: &RunState) -> (Vec<&'static str>, Vec<StepRow<'_>>, Vec<HookRow<'_>>) {
    let stages = run.stage_status.iter().map(|s| s.as_str()).collect();
    let steps = run
        .step_status
        .iter()
        .zip(&run.attempts)
        .map(|(status, &attempt)| {
            let (summary, changed, kind, message) = match status {
                StepStatus::Succeeded(d) => (d.summary.as_str(), d.changed, "", ""),
                StepStatus::Failed(f) => ("", false, f.kind.as_str(), f.message.as_str()),
                _ => ("", false, "", ""),
            };
            let details: &[String] = match status {
                StepStatus::Succeeded(d) => &d.details,
                StepStatus::Failed(f) => &f.details,
                _ => &[],
            };
            StepRow {
                status: status.as_str(),
                attempt,
                summary,
                changed,
                error_kind: kind,
                error_message: message,
                details,
            }
        })
        .collect();
    let hooks = run
        .hook_status
        .iter()
        .zip(&run.hook_attempts)
        .map(|(status, &attempt)| HookRow {
            status: status.as_str(),
            attempt,
            answer: status.answer(),
        })
        .collect();
    (stages, steps, hooks)
}

/// The run rebuilt from its journal rows, as a restarted coordinator does.
pub(super) fn reload(run: &RunState, now: u64) -> Result<RunState, Corrupt> {
    let (stages, steps, hooks) = rows(run);
    RunState::from_journal(
        fresh(run),
        &RunRow {
            status: run.status.as_str(),
            halting: run.halting,
            cancelling: run.cancelling,
            verdict: run.verdict.map_or("", |v| v.as_str()),
        },
        &stages,
        &steps,
        &hooks,
        now,
    )
}

/// The plan's shape of a run, as a restarted coordinator builds it before reading the journal.
fn fresh(run: &RunState) -> RunState {
    RunState::new(run.stages.clone(), run.steps.clone()).with_hooks(run.hooks.clone())
}

#[test]
fn a_run_resumed_from_its_journal_goes_on_where_it_was() {
    let mut run = RunState::new(
        vec![
            stage("a", &[], 10, 0, OnFailure::Halt),
            stage("b", &[0], 10, 0, OnFailure::Halt),
        ],
        steps(&[2, 1]),
    );
    next(&mut run, Event::Start, 0);
    next(&mut run, ok(0, 1), 1);
    let mut resumed = reload(&run, 5_000).unwrap();
    assert_eq!(resumed.step_status[1], StepStatus::Sent { at_ms: 5_000 });
    // The clock of the step in flight restarted: no timeout at 5.5 s.
    let out = next(&mut resumed, Event::Resumed, 5_000);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Note(n) if n.kind == EventKind::RunRecovered))
    );
    assert!(cancels(&next(&mut resumed, Event::Tick, 5_500)).is_empty());
    assert_eq!(sent(&next(&mut resumed, ok(1, 1), 5_600)), [(2, 1)]);
    assert_eq!(
        finished(&next(&mut resumed, ok(2, 1), 5_700)),
        Some(RunStatus::Succeeded)
    );
}

#[test]
fn a_stage_that_was_gating_runs_its_gates_again_after_a_restart() {
    let mut gated = stage("a", &[], 10, 0, OnFailure::Halt);
    gated.has_gates = true;
    let mut run = RunState::new(vec![gated], steps(&[1]));
    next(&mut run, Event::Start, 0);
    next(&mut run, ok(0, 1), 1);
    assert_eq!(run.stage_status[0], StageStatus::Gating);
    let mut resumed = reload(&run, 10).unwrap();
    let out = next(&mut resumed, Event::Resumed, 10);
    assert!(out.contains(&Command::RunGates { stage: 0 }), "{out:?}");
    let out = next(
        &mut resumed,
        Event::GatesDone {
            stage: 0,
            outcome: Ok(Vec::new()),
        },
        11,
    );
    assert_eq!(finished(&out), Some(RunStatus::Succeeded));
}

#[test]
fn halting_and_cancelling_survive_a_restart() {
    // Halting: stage a failed while a step of the parallel stage b is in flight.
    let mut run = RunState::new(
        vec![
            stage("a", &[], 10, 0, OnFailure::Halt),
            stage("b", &[], 10, 0, OnFailure::Halt),
            stage("c", &[0, 1], 10, 0, OnFailure::Halt),
        ],
        steps(&[1, 1, 1]),
    );
    next(&mut run, Event::Start, 0);
    next(&mut run, fail(0, 1), 1);
    assert!(run.halting);
    let mut resumed = reload(&run, 2).unwrap();
    next(&mut resumed, Event::Resumed, 2);
    let out = next(&mut resumed, ok(1, 1), 3);
    assert_eq!(sent(&out), [], "nothing more is dispatched after a halt");
    assert_eq!(finished(&out), Some(RunStatus::Failed));

    // Cancelling, with a step in flight.
    let mut run = RunState::new(vec![stage("a", &[], 1, 0, OnFailure::Halt)], steps(&[2]));
    next(&mut run, Event::Start, 0);
    next(&mut run, Event::Cancel, 1);
    let mut resumed = reload(&run, 2).unwrap();
    next(&mut resumed, Event::Resumed, 2);
    let out = next(&mut resumed, ok(0, 1), 3);
    assert_eq!(sent(&out), []);
    assert_eq!(finished(&out), Some(RunStatus::Cancelled));
}

#[test]
fn a_journal_the_engine_cannot_read_is_an_error() {
    let run = RunState::new(vec![stage("a", &[], 1, 0, OnFailure::Halt)], steps(&[1]));
    let (stages, mut step_rows, _) = rows(&run);
    step_rows[0].status = "half-done";
    let error = RunState::from_journal(
        fresh(&run),
        &RunRow {
            status: "running",
            halting: false,
            cancelling: false,
            verdict: "",
        },
        &stages,
        &step_rows,
        &[],
        0,
    )
    .unwrap_err();
    assert_eq!(error.what, "step status");
    let error = RunState::from_journal(
        fresh(&run),
        &RunRow {
            status: "running",
            halting: false,
            cancelling: false,
            verdict: "",
        },
        &stages,
        &[],
        &[],
        0,
    )
    .unwrap_err();
    assert_eq!(error.what, "step count");
}

fn hook(name: &str, when: HookWhen, optional: bool) -> HookSpec {
    HookSpec {
        name: name.into(),
        when,
        optional,
    }
}

fn hooks_run(commands: &[Command]) -> Vec<(usize, u32)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::RunHook { hook, attempt } => Some((*hook, *attempt)),
            _ => None,
        })
        .collect()
}

fn hook_done(hook: usize, ok: bool) -> Event {
    Event::HookDone {
        hook,
        attempt: 1,
        outcome: if ok {
            Ok("HTTP 200".into())
        } else {
            Err("HTTP 503".into())
        },
    }
}

#[test]
fn hooks_run_before_after_and_finally_in_order() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[1]))
        .with_hooks(vec![
            hook("maintenance-on", HookWhen::Before, false),
            hook("maintenance-off", HookWhen::Finally, false),
            hook("chat", HookWhen::After, true),
        ]);
    let out = next(&mut run, Event::Start, 0);
    assert_eq!(hooks_run(&out), [(0, 1)]);
    assert_eq!(sent(&out), [], "no step before the before hook answered");
    let out = next(&mut run, hook_done(0, true), 1);
    assert_eq!(sent(&out), [(0, 1)]);
    let out = next(&mut run, ok(0, 1), 2);
    assert_eq!(hooks_run(&out), [(2, 1)], "after hooks first");
    assert_eq!(run.verdict, Some(RunStatus::Succeeded));
    let out = next(&mut run, hook_done(2, false), 3);
    assert_eq!(
        hooks_run(&out),
        [(1, 1)],
        "an optional failure goes on to finally"
    );
    let out = next(&mut run, hook_done(1, true), 4);
    assert_eq!(finished(&out), Some(RunStatus::Succeeded));
}

#[test]
fn a_failing_before_hook_changes_nothing_and_finally_still_runs() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[2]))
        .with_hooks(vec![
            hook("status-page", HookWhen::Before, false),
            hook("maintenance-on", HookWhen::Before, false),
            hook("done", HookWhen::After, false),
            hook("maintenance-off", HookWhen::Finally, false),
        ]);
    next(&mut run, Event::Start, 0);
    let out = next(&mut run, hook_done(0, false), 1);
    assert_eq!(sent(&out), []);
    assert_eq!(hooks_run(&out), [(3, 1)], "straight to the finally hook");
    assert_eq!(run.hook_status[1], HookStatus::Skipped);
    assert_eq!(run.hook_status[2], HookStatus::Skipped);
    let out = next(&mut run, hook_done(3, true), 2);
    assert_eq!(finished(&out), Some(RunStatus::Failed));
    assert!(run.step_status.iter().all(|s| *s == StepStatus::Skipped));
}

#[test]
fn finally_hooks_run_after_a_failure_and_a_cancel_and_a_failed_one_fails_the_run() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[1]))
        .with_hooks(vec![
            hook("off", HookWhen::Finally, false),
            hook("chat", HookWhen::Finally, false),
        ]);
    next(&mut run, Event::Start, 0);
    let out = next(&mut run, fail(0, 1), 1);
    assert_eq!(hooks_run(&out), [(0, 1)]);
    assert_eq!(run.verdict, Some(RunStatus::Failed));
    let out = next(&mut run, hook_done(0, false), 2);
    assert_eq!(hooks_run(&out), [(1, 1)], "every finally hook runs");
    let out = next(&mut run, hook_done(1, true), 3);
    assert_eq!(finished(&out), Some(RunStatus::Failed));

    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[1]))
        .with_hooks(vec![hook("off", HookWhen::Finally, false)]);
    next(&mut run, Event::Start, 0);
    let out = next(&mut run, Event::Cancel, 1);
    assert_eq!(hooks_run(&out), [], "the step in flight finishes first");
    let out = next(&mut run, ok(0, 1), 2);
    assert_eq!(hooks_run(&out), [(0, 1)]);
    let out = next(&mut run, hook_done(0, true), 3);
    assert_eq!(finished(&out), Some(RunStatus::Cancelled));

    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[1]))
        .with_hooks(vec![hook("off", HookWhen::Finally, false)]);
    next(&mut run, Event::Start, 0);
    next(&mut run, ok(0, 1), 1);
    let out = next(&mut run, hook_done(0, false), 2);
    assert_eq!(
        finished(&out),
        Some(RunStatus::Failed),
        "maintenance mode left on fails the run"
    );
}

#[test]
fn a_hook_cut_off_by_a_restart_runs_again() {
    let mut run = RunState::new(vec![stage("a", &[], 10, 0, OnFailure::Halt)], steps(&[1]))
        .with_hooks(vec![hook("off", HookWhen::Finally, false)]);
    next(&mut run, Event::Start, 0);
    next(&mut run, ok(0, 1), 1);
    let mut resumed = reload(&run, 5).unwrap();
    assert_eq!(resumed.verdict, Some(RunStatus::Succeeded));
    let out = next(&mut resumed, Event::Resumed, 5);
    assert_eq!(hooks_run(&out), [(0, 1)]);
    let out = next(&mut resumed, hook_done(0, true), 6);
    assert_eq!(finished(&out), Some(RunStatus::Succeeded));
}
