//! The drill's state machine, phase by phase, without I/O.

use super::*;

fn kinds(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .map(|c| match c {
            Command::Note { kind, .. } => kind.to_string(),
            Command::StartRun { leg, retry } => format!(
                "start {}{}",
                leg.as_str(),
                if *retry { " (retry)" } else { "" }
            ),
            Command::WatchRun(leg) => format!("watch {}", leg.as_str()),
            other => format!("{other:?}"),
        })
        .collect()
}

fn ended(leg: Leg, status: RunStatus, failure: &str) -> Event {
    Event::RunEnded {
        leg,
        status,
        failure: failure.into(),
    }
}

fn started(leg: Leg) -> Event {
    Event::RunStarted {
        leg,
        outcome: Ok(()),
    }
}

/// A drill taken to the end of its roll back, which ended with `status`.
fn rolled_back(status: RunStatus, failure: &str) -> (DrillState, Vec<Command>) {
    let mut s = DrillState::default();
    next(&mut s, Event::Start, 1);
    next(&mut s, Event::CheckpointDone(Ok(())), 2);
    next(&mut s, started(Leg::Back), 3);
    let out = next(&mut s, ended(Leg::Back, status, failure), 4);
    (s, out)
}

#[test]
fn a_drill_checkpoints_rolls_back_rolls_forward_verifies_and_passes() {
    let mut s = DrillState::default();
    assert_eq!(
        kinds(&next(&mut s, Event::Start, 10)),
        ["drill-started", "Checkpoint"]
    );
    assert_eq!(
        kinds(&next(&mut s, Event::CheckpointDone(Ok(())), 20)),
        ["drill-rolling-back", "start roll back"]
    );
    assert_eq!(
        kinds(&next(&mut s, started(Leg::Back), 21)),
        ["watch roll back"]
    );
    assert_eq!(
        kinds(&next(
            &mut s,
            ended(Leg::Back, RunStatus::Succeeded, ""),
            30
        )),
        ["drill-rolling-forward", "start roll forward"]
    );
    assert_eq!(
        kinds(&next(&mut s, started(Leg::Forward), 31)),
        ["watch roll forward"]
    );
    assert_eq!(
        kinds(&next(
            &mut s,
            ended(Leg::Forward, RunStatus::Succeeded, ""),
            40
        )),
        ["Verify"]
    );
    assert_eq!(
        kinds(&next(&mut s, Event::VerifyDone(Ok(())), 50)),
        ["drill-verified", "drill-passed", "Finished(Passed)"]
    );
    assert_eq!(s.phase, Phase::Done);
    assert_eq!(
        (
            s.checkpoint_started_ms,
            s.checkpoint_finished_ms,
            s.verify_started_ms,
            s.verify_finished_ms
        ),
        (Some(10), Some(20), Some(40), Some(50))
    );
    // Done is done.
    assert!(next(&mut s, Event::Abort("late".into()), 60).is_empty());
}

#[test]
fn a_failed_roll_back_rolls_forward_at_once_and_fails_the_drill() {
    let (mut s, out) = rolled_back(
        RunStatus::Failed,
        "stage core host api-2 target app: failed: boom",
    );
    assert_eq!(kinds(&out), ["drill-rolling-forward", "start roll forward"]);
    next(&mut s, started(Leg::Forward), 5);
    next(&mut s, ended(Leg::Forward, RunStatus::Succeeded, ""), 6);
    let out = next(&mut s, Event::VerifyDone(Ok(())), 7);
    assert_eq!(s.verdict, Some(Verdict::Failed));
    assert!(!s.critical, "the fleet ended where it started");
    assert!(
        s.reason
            .contains("roll back failed: stage core host api-2 target app"),
        "{}",
        s.reason
    );
    let Command::Note { kind, message } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(*kind, EventKind::DrillFailed);
    assert_eq!(message, &s.reason);
}

#[test]
fn a_roll_back_refused_before_it_ran_changes_nothing_and_fails() {
    let mut s = DrillState::default();
    next(&mut s, Event::Start, 1);
    next(&mut s, Event::CheckpointDone(Ok(())), 2);
    let out = next(
        &mut s,
        Event::RunStarted {
            leg: Leg::Back,
            outcome: Err("agent stg-db-1 is not connected".into()),
        },
        3,
    );
    assert_eq!(kinds(&out), ["drill-failed", "Finished(Failed)"]);
    assert!(s.reason.contains("roll back did not start: agent stg-db-1"));
}

#[test]
fn a_failed_roll_forward_pauses_critically_and_an_operator_can_finish_it() {
    let (mut s, _) = rolled_back(RunStatus::Succeeded, "");
    next(&mut s, started(Leg::Forward), 5);
    let out = next(
        &mut s,
        Event::RunPaused {
            leg: Leg::Forward,
            failure: "stage data host db-1 target db: failed: disk full".into(),
        },
        6,
    );
    assert_eq!(kinds(&out), ["drill-paused"]);
    assert!(s.critical);
    assert_eq!(s.phase, Phase::RollForward);
    // `rewind approve` retried it and it went through.
    next(&mut s, ended(Leg::Forward, RunStatus::Succeeded, ""), 7);
    next(&mut s, Event::VerifyDone(Ok(())), 8);
    assert_eq!(s.verdict, Some(Verdict::Failed));
    assert!(
        s.reason.starts_with("roll forward: stage data host db-1"),
        "{}",
        s.reason
    );
}

#[test]
fn a_roll_forward_that_cannot_start_is_retried_and_reported_once() {
    let (mut s, _) = rolled_back(RunStatus::Succeeded, "");
    let refused = |s: &mut DrillState| {
        next(
            s,
            Event::RunStarted {
                leg: Leg::Forward,
                outcome: Err("agent ui-1 is not connected".into()),
            },
            5,
        )
    };
    assert_eq!(
        kinds(&refused(&mut s)),
        ["drill-paused", "start roll forward (retry)"]
    );
    assert_eq!(kinds(&refused(&mut s)), ["start roll forward (retry)"]);
    assert!(s.critical);
}

#[test]
fn an_abort_during_the_roll_back_cancels_it_and_rolls_forward() {
    let mut s = DrillState::default();
    next(&mut s, Event::Start, 1);
    next(&mut s, Event::CheckpointDone(Ok(())), 2);
    next(&mut s, started(Leg::Back), 3);
    let out = next(
        &mut s,
        Event::Abort("preempted by operator alice".into()),
        4,
    );
    assert_eq!(kinds(&out), ["drill-aborting", "CancelBack"]);
    // A second abort changes nothing.
    assert!(next(&mut s, Event::Abort("again".into()), 4).is_empty());
    next(
        &mut s,
        ended(Leg::Back, RunStatus::Cancelled, "cancelled"),
        5,
    );
    assert_eq!(s.phase, Phase::RollForward);
    next(&mut s, started(Leg::Forward), 6);
    next(&mut s, ended(Leg::Forward, RunStatus::Succeeded, ""), 7);
    let out = next(&mut s, Event::VerifyDone(Ok(())), 8);
    assert_eq!(s.verdict, Some(Verdict::Aborted));
    assert!(s.reason.is_empty(), "{}", s.reason);
    assert!(
        matches!(&out[1], Command::Note { kind: EventKind::DrillAborted, message } if message == "preempted by operator alice")
    );
}

#[test]
fn an_abort_before_the_roll_back_started_cancels_it_once_it_exists() {
    let mut s = DrillState::default();
    next(&mut s, Event::Start, 1);
    // During the checkpoint: nothing changed, so the drill ends there.
    next(&mut s, Event::Abort("a blackout window began".into()), 2);
    assert_eq!(
        kinds(&next(&mut s, Event::CheckpointDone(Ok(())), 3)),
        ["drill-aborted", "Finished(Aborted)"]
    );

    let mut s = DrillState::default();
    next(&mut s, Event::Start, 1);
    next(&mut s, Event::CheckpointDone(Ok(())), 2);
    next(&mut s, Event::Abort("preempted".into()), 3);
    assert_eq!(
        kinds(&next(&mut s, started(Leg::Back), 4)),
        ["watch roll back", "CancelBack"]
    );
}

#[test]
fn a_resumed_drill_redoes_only_its_idempotent_phase_command() {
    for (phase, wanted) in [
        (Phase::Checkpoint, "Checkpoint"),
        (Phase::RollBack, "start roll back"),
        (Phase::RollForward, "start roll forward"),
        (Phase::Verify, "Verify"),
    ] {
        let mut s = DrillState {
            phase,
            ..DrillState::default()
        };
        assert_eq!(
            kinds(&next(&mut s, Event::Resumed, 1)),
            ["drill-recovered", wanted]
        );
    }
}

#[test]
fn a_failed_verify_after_rolling_forward_is_critical() {
    let (mut s, _) = rolled_back(RunStatus::Succeeded, "");
    next(&mut s, started(Leg::Forward), 5);
    next(&mut s, ended(Leg::Forward, RunStatus::Succeeded, ""), 6);
    next(
        &mut s,
        Event::VerifyDone(Err("web-1 web-config: differs".into())),
        7,
    );
    assert_eq!(s.verdict, Some(Verdict::Failed));
    assert!(s.critical);
}

#[test]
fn every_word_round_trips() {
    for p in [
        Phase::Checkpoint,
        Phase::RollBack,
        Phase::RollForward,
        Phase::Verify,
        Phase::Done,
    ] {
        assert_eq!(Phase::parse(p.as_str()), Ok(p));
    }
    for v in [
        Verdict::Passed,
        Verdict::Failed,
        Verdict::Aborted,
        Verdict::Skipped,
    ] {
        assert_eq!(Verdict::parse(v.as_str()), Ok(Some(v)));
    }
    assert_eq!(Verdict::parse(""), Ok(None));
    assert!(Phase::parse("rolling").is_err());
}
