//! Properties of the engine under random plans and random event sequences
//! (results for any step and attempt, late and repeated ones, ticks,
//! cancels, approvals, gate outcomes, and coordinator restarts rebuilt from
//! the journal, hook answers): it never panics, a step is never sent twice
//! for one attempt, nothing is sent once a cancel or a halt began, a
//! finished run has nothing in flight and no hook running, no step is sent
//! before every `before` hook succeeded, and every `finally` hook has run
//! when a run finishes.
//!
//! `PROPTEST_CASES=N cargo test -p rewind-coordinator engine::properties`
//! runs more cases (docs/RELIABILITY.md).

use super::*;
use proptest::prelude::*;

fn hook_specs() -> impl Strategy<Value = Vec<HookSpec>> {
    prop::collection::vec((0u8..3, any::<bool>()), 0..4).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (when, optional))| HookSpec {
                name: format!("k{i}"),
                when: match when {
                    0 => HookWhen::Before,
                    1 => HookWhen::After,
                    _ => HookWhen::Finally,
                },
                optional,
            })
            .collect()
    })
}

fn spec() -> impl Strategy<Value = (Vec<StageSpec>, Vec<StepSpec>)> {
    (1usize..5)
        .prop_flat_map(|stages| {
            (
                prop::collection::vec(
                    (
                        0usize..4,                                    // steps
                        1usize..4,                                    // max_parallel
                        0usize..2,                                    // canary
                        0u8..3,                                       // on_failure
                        any::<bool>(),                                // gates
                        prop::collection::vec(any::<bool>(), stages), // after mask
                    ),
                    stages,
                ),
                Just(stages),
            )
        })
        .prop_map(|(raw, _)| {
            let mut stages = Vec::new();
            let mut steps = Vec::new();
            for (i, (count, max_parallel, canary, policy, gates, after)) in
                raw.into_iter().enumerate()
            {
                stages.push(StageSpec {
                    name: format!("s{i}"),
                    // Only earlier stages: plans are checked for cycles.
                    after: (0..i).filter(|&j| after[j]).collect(),
                    max_parallel,
                    canary,
                    timeout_ms: 1_000,
                    on_failure: match policy {
                        0 => OnFailure::Halt,
                        1 => OnFailure::Continue,
                        _ => OnFailure::Pause,
                    },
                    has_gates: gates,
                });
                for h in 0..count {
                    steps.push(StepSpec {
                        stage: i,
                        agent: format!("h{i}-{h}"),
                        target: "t".into(),
                    });
                }
            }
            (stages, steps)
        })
}

#[derive(Debug, Clone)]
enum Input {
    Ok(usize, u32, bool),
    Fail(usize, u32),
    Tick(u64),
    Cancel,
    Approve,
    Gates(usize, bool),
    Hook(usize, u32, bool),
    Restart,
}

fn inputs() -> impl Strategy<Value = Vec<Input>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0usize..16, 0u32..4, any::<bool>()).prop_map(|(s, a, c)| Input::Ok(s, a, c)),
            2 => (0usize..16, 0u32..4).prop_map(|(s, a)| Input::Fail(s, a)),
            2 => (0u64..3_000).prop_map(Input::Tick),
            1 => Just(Input::Cancel),
            1 => Just(Input::Approve),
            2 => (0usize..5, any::<bool>()).prop_map(|(s, ok)| Input::Gates(s, ok)),
            1 => Just(Input::Restart),
            3 => (0usize..4, 0u32..3, any::<bool>()).prop_map(|(h, a, ok)| Input::Hook(h, a, ok)),
        ],
        0..80,
    )
}

proptest! {
    #[test]
    fn the_engine_keeps_its_promises_under_any_events(
        (stages, steps) in spec(),
        hooks in hook_specs(),
        inputs in inputs(),
    ) {
        let mut run = RunState::new(stages, steps).with_hooks(hooks);
        let mut now = 0u64;
        let mut sent: Vec<Vec<u32>> = vec![Vec::new(); run.steps.len()];
        let mut commands = next(&mut run, Event::Start, now);
        for input in inputs {
            // What the last batch did, checked before the next event.
            let stopping = run.cancelling || run.halting;
            for command in &commands {
                if let Command::Send { step, attempt } = command {
                    prop_assert!(!sent[*step].contains(attempt), "step {step} attempt {attempt} sent twice");
                    sent[*step].push(*attempt);
                    prop_assert!(!run.cancelling, "sent after a cancel");
                    prop_assert!(
                        run.hooks.iter().zip(&run.hook_status).all(|(h, s)| h.when != HookWhen::Before
                            || matches!(s, HookStatus::Succeeded(_))
                            || (h.optional && matches!(s, HookStatus::Failed(_)))),
                        "a step was sent before the before hooks succeeded"
                    );
                }
                if let Command::Finished(status) = command {
                    prop_assert!(status.is_terminal());
                    prop_assert!(run.step_status.iter().all(|s| !matches!(s, StepStatus::Sent { .. })),
                        "finished with steps in flight");
                    prop_assert!(!run.hook_status.contains(&HookStatus::Running), "finished with a hook running");
                    prop_assert!(
                        run.hooks.iter().zip(&run.hook_status).all(|(h, s)| h.when != HookWhen::Finally
                            || matches!(s, HookStatus::Succeeded(_) | HookStatus::Failed(_))),
                        "finished without running every finally hook"
                    );
                    let failed_hook = run.hooks.iter().zip(&run.hook_status)
                        .any(|(h, s)| !h.optional && matches!(s, HookStatus::Failed(_)));
                    prop_assert!(!(failed_hook && *status == RunStatus::Succeeded), "succeeded with a failed hook");
                }
            }
            let _ = stopping;
            let steps = run.steps.len().max(1);
            let stage_count = run.stages.len().max(1);
            let event = match input {
                Input::Ok(s, a, changed) => Event::StepDone {
                    step: s % steps,
                    attempt: a,
                    outcome: Ok(Done { summary: "ok".into(), changed, details: Vec::new() }),
                },
                Input::Fail(s, a) => Event::StepDone {
                    step: s % steps,
                    attempt: a,
                    outcome: Err(Failure { kind: "failed".into(), message: "no".into(), details: Vec::new() }),
                },
                Input::Tick(dt) => {
                    now += dt;
                    Event::Tick
                }
                Input::Cancel => Event::Cancel,
                Input::Approve => Event::Approve,
                Input::Gates(s, ok) => Event::GatesDone {
                    stage: s % stage_count,
                    outcome: if ok { Ok(Vec::new()) } else { Err("gate".into()) },
                },
                Input::Hook(h, a, ok) => {
                    if run.hooks.is_empty() {
                        commands.clear();
                        continue;
                    }
                    Event::HookDone {
                        hook: h % run.hooks.len(),
                        attempt: a,
                        outcome: if ok { Ok("HTTP 200".into()) } else { Err("HTTP 503".into()) },
                    }
                }
                Input::Restart => {
                    run = super::tests::reload(&run, now).expect("a journal the engine wrote reads back");
                    Event::Resumed
                }
            };
            if run.steps.is_empty() && matches!(event, Event::StepDone { .. }) {
                continue;
            }
            let was_halting = run.halting && run.status == RunStatus::Running;
            commands = next(&mut run, event, now);
            if was_halting {
                prop_assert!(commands.iter().all(|c| !matches!(c, Command::Send { .. })),
                    "sent after a halt");
            }
        }
    }

    #[test]
    fn the_plan_parser_never_panics(text in ".{0,400}") {
        let _ = crate::plan::parse(&text, "fuzz.toml");
    }

    #[test]
    fn plan_like_text_never_panics(
        name in "[a-z]{0,6}",
        after in "[a-z\\[\\]\", ]{0,12}",
        parallel in "(\"[0-9]{0,3}%?\"|-?[0-9]{1,4})",
        timeout in "\"[0-9a-z ]{0,6}\"",
        health in "(\\[\\{ ?verify ?= ?(true|false) ?\\}\\]|\\[\\{ http = \"[a-z:/0-9.]{0,20}\", within = \"[0-9a-z]{0,4}\" \\}\\]|\\[\\])",
    ) {
        let text = format!(
            "[[stage]]\nname = \"{name}\"\ntarget = \"app\"\nafter = [{after}]\nmax_parallel = {parallel}\ntimeout = {timeout}\nhealth = {health}\n"
        );
        let _ = crate::plan::parse(&text, "fuzz.toml");
    }
}
