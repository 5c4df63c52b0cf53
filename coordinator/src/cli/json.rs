//! `--output json`: what the listing commands print for scripts. Each
//! document carries its `schema` (`rewind.<what>/v1`); a version's fields
//! are only ever added to, never renamed or removed (docs/json.md).

use rewind_proto::v1::{FleetReply, HistoryReply, ListReleasesReply, PreviewReply, RunReport};
use serde_json::{Value, json};

/// Exit statuses: 0 succeeded (or done), 1 the run or drill did not
/// succeed, 2 the command could not run, 3 the run is paused for an
/// operator, 4 the coordinator refused, 5 the run is still going.
pub const PAUSED: u8 = 3;
pub const REFUSED: u8 = 4;
pub const RUNNING: u8 = 5;

/// The exit status `rewind status` gives for a run's status.
pub fn exit_of(status: &str) -> u8 {
    match status {
        "succeeded" => 0,
        "paused" => PAUSED,
        "running" => RUNNING,
        _ => 1,
    }
}

/// How a command prints what it got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people (the default).
    #[default]
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

fn duration_ms(started: u64, finished: u64) -> Value {
    if finished >= started && finished > 0 {
        json!(finished - started)
    } else {
        Value::Null
    }
}

fn opt_ms(ms: u64) -> Value {
    if ms == 0 { Value::Null } else { json!(ms) }
}

/// `rewind status <run> --output json`.
pub fn run(report: &RunReport) -> Value {
    json!({
        "schema": "rewind.run/v1",
        "run_id": report.run_id,
        "plan": report.plan,
        "release": report.release,
        "env": report.env,
        "status": report.status,
        "started_by": report.started_by,
        "started_ms": report.started_ms,
        "finished_ms": opt_ms(report.finished_ms),
        "duration_ms": duration_ms(report.started_ms, report.finished_ms),
        "data_loss_window_seconds": report.data_loss_window_seconds,
        "stages": report.stages.iter().map(|s| json!({
            "name": s.name,
            "status": s.status,
            "started_ms": opt_ms(s.started_ms),
            "finished_ms": opt_ms(s.finished_ms),
            "duration_ms": duration_ms(s.started_ms, s.finished_ms),
        })).collect::<Vec<_>>(),
        "steps": report.steps.iter().map(|s| json!({
            "step_id": s.step_id,
            "stage": s.stage,
            "host": s.agent,
            "env": s.env,
            "target": s.target,
            "action": s.action,
            "status": s.status,
            "attempt": s.attempt,
            "changed": s.changed,
            "summary": s.summary,
            "error": s.error.as_ref().map(|e| json!({ "kind": e.kind, "message": e.message })),
            "details": s.details,
            "started_ms": opt_ms(s.started_ms),
            "finished_ms": opt_ms(s.finished_ms),
            "duration_ms": duration_ms(s.started_ms, s.finished_ms),
            "data_loss_window_seconds": s.data_loss_window_seconds,
        })).collect::<Vec<_>>(),
        "hooks": report.hooks.iter().map(|h| json!({
            "name": h.name,
            "when": h.phase,
            "status": h.status,
            "attempt": h.attempt,
            "answer": h.answer,
            "duration_ms": duration_ms(h.started_ms, h.finished_ms),
        })).collect::<Vec<_>>(),
    })
}

/// `rewind history --output json`.
pub fn history(reply: &HistoryReply) -> Value {
    json!({
        "schema": "rewind.history/v1",
        "runs": reply.runs.iter().map(|r| json!({
            "run_id": r.run_id,
            "plan": r.plan,
            "release": r.release,
            "status": r.status,
            "started_by": r.started_by,
            "started_ms": r.started_ms,
            "finished_ms": opt_ms(r.finished_ms),
            "duration_ms": duration_ms(r.started_ms, r.finished_ms),
            "data_loss_window_seconds": r.data_loss_window_seconds,
        })).collect::<Vec<_>>(),
    })
}

/// `rewind fleet --output json`.
pub fn fleet(reply: &FleetReply) -> Value {
    let mut agents: Vec<_> = reply.agents.iter().collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    json!({
        "schema": "rewind.fleet/v1",
        "agents": agents.iter().map(|a| json!({
            "name": a.name,
            "connected": a.connected,
            "labels": a.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "targets": a.targets.iter().map(|t| json!({
                "name": t.name,
                "plugin": t.plugin,
                "digest": t.digest,
            })).collect::<Vec<_>>(),
            "last_seen_ms": opt_ms(a.last_seen_ms),
        })).collect::<Vec<_>>(),
        "refused": reply.refused.iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// `rewind releases --output json`.
pub fn releases(reply: &ListReleasesReply) -> Value {
    json!({
        "schema": "rewind.releases/v1",
        "releases": reply.releases.iter().map(|r| json!({
            "name": r.name,
            "env": r.env,
            "created_ms": r.created_ms,
            "snapshots": r.snapshots.iter().map(|s| json!({
                "host": s.agent,
                "target": s.target,
                "plugin": s.plugin,
                "digest": s.digest,
                "summary": s.summary,
                "taken_at": s.taken_at,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `rewind plan <plan> --to <release> --output json`: what each step would
/// change and at what risk, in the WIT's words.
pub fn preview(reply: &PreviewReply, release: &str) -> Value {
    let risk = |r: i32| super::view::risk_name(r).to_lowercase().replace(' ', "-");
    json!({
        "schema": "rewind.preview/v1",
        "release": release,
        "risk": risk(reply.risk),
        "stages": reply.stages.iter().map(|stage| json!({
            "name": stage.stage,
            "after": stage.after,
            "steps": stage.steps.iter().map(|step| json!({
                "host": step.agent,
                "env": step.env,
                "target": step.target,
                "action": step.action,
                "risk": step.preview.as_ref().map(|p| risk(p.risk)),
                "data_loss_window_seconds": step.preview.as_ref().and_then(|p| p.data_loss_window_seconds),
                "changes": step.preview.as_ref().map(|p| p.changes.iter().map(|c| json!({
                    "subject": c.subject,
                    "summary": c.summary,
                    "detail": (!c.detail.is_empty()).then(|| c.detail.clone()),
                    "risk": risk(c.risk),
                })).collect::<Vec<_>>()).unwrap_or_default(),
                "error": step.error.as_ref().map(|e| json!({ "kind": e.kind, "message": e.message })),
                "fingerprint": step.fingerprint,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Print a document on stdout.
pub fn print(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
