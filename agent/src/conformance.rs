//! Conformance checks: what every plugin owes the agent, checked on a real
//! target through the real sandbox, with each call's capability calls
//! recorded (`host::Tape`). Given an older snapshot of the target (`to`),
//! the checks move the target to it and back, so they leave it where they
//! found it.
//!
//! | check | what must hold |
//! |---|---|
//! | describe | a name, a version `x.y.z`, its actions; no capability call |
//! | plan-makes-no-writes | plan changes nothing (no file written, container recreated, statement executed, mutating request) |
//! | snapshot-restore-verify | restore to `to` succeeds, then verify passes |
//! | restore-is-idempotent | a second restore to `to` reports no change and changes nothing |
//! | interrupted-restore-completes | a restore stopped at each of its capability calls (as a crash of the agent would), run again with the same step id, completes and verifies |
//! | typed-errors | a snapshot the plugin did not write is a typed error, not a trap |
//! | no-secrets-in-output | no secret of the target's secrets file appears in any result, log line or error |

use crate::config::TargetConfig;
use crate::host::bindings::SnapshotRecord;
use crate::host::{
    Action, ActionOutput, CallError, CallOutput, Effect, LoadedPlugin, PluginHost, Tape,
};
use crate::testkit::{record_of, restore};
use serde::Serialize;
use std::sync::Arc;

/// One check's verdict.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    /// passed, failed or skipped.
    pub status: &'static str,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, result: Result<String, String>) -> Check {
        match result {
            Ok(detail) => Check {
                name,
                status: "passed",
                detail,
            },
            Err(detail) => Check {
                name,
                status: "failed",
                detail,
            },
        }
    }

    fn skipped(name: &'static str, why: &str) -> Check {
        Check {
            name,
            status: "skipped",
            detail: why.to_string(),
        }
    }
}

/// Everything the calls said, for the secrets check.
#[derive(Default)]
struct Said(Vec<String>);

impl Said {
    fn add(&mut self, result: &Result<CallOutput, CallError>) {
        match result {
            Ok(output) => {
                self.0.push(output.output.to_wit_json().to_string());
                self.0.extend(output.logs.iter().map(|l| l.message.clone()));
            }
            Err(error) => {
                self.0.push(error.to_string());
                self.0
                    .extend(error.logs().iter().map(|l| l.message.clone()));
            }
        }
    }
}

struct Checker<'a> {
    host: &'a PluginHost,
    plugin: &'a LoadedPlugin,
    target: &'a Arc<TargetConfig>,
    said: Said,
}

fn failure(error: &CallError) -> String {
    format!("{}: {error}", error.kind())
}

/// The calls of a tape with this effect, as `capability op subject`.
fn calls(tape: &Tape, effect: Effect) -> Vec<String> {
    tape.calls
        .iter()
        .filter(|c| c.effect == effect)
        .map(|c| format!("{} {} {}", c.capability, c.op, c.subject))
        .collect()
}

fn writes(tape: &Tape) -> Vec<String> {
    calls(tape, Effect::Writes)
}

/// A note of the calls that may have written (programs, POSTs).
fn maybe(tape: &Tape) -> String {
    let may = calls(tape, Effect::MayWrite);
    if may.is_empty() {
        String::new()
    } else {
        format!(
            "; may have written (not told from the call): {}",
            may.join("; ")
        )
    }
}

impl Checker<'_> {
    async fn call(
        &mut self,
        action: Action,
        stop_at: Option<usize>,
    ) -> (Result<CallOutput, CallError>, Tape) {
        let (result, tape) = self
            .host
            .call_recorded(self.plugin, self.target, action, stop_at)
            .await;
        self.said.add(&result);
        (result, tape)
    }

    async fn preview_before(&mut self, action: &Action) {
        if let Action::Restore { to, .. } = action {
            let _ = self.call(Action::Plan { to: to.clone() }, None).await;
        }
    }

    async fn snapshot(&mut self) -> Result<SnapshotRecord, String> {
        match self.call(Action::Snapshot, None).await.0 {
            Ok(CallOutput {
                output: ActionOutput::Captured(c),
                ..
            }) => Ok(record_of(&c, crate::units::now_secs())),
            Ok(other) => Err(format!("snapshot answered {:?}", other.output)),
            Err(e) => Err(format!("snapshot failed: {}", failure(&e))),
        }
    }

    /// An action's outcome; a restore is previewed first, as every run
    /// previews its steps before it restores (plugins may compare the two).
    async fn outcome(&mut self, action: Action) -> Result<(bool, Tape), String> {
        self.preview_before(&action).await;
        let name = action.name();
        match self.call(action, None).await {
            (
                Ok(CallOutput {
                    output: ActionOutput::Outcome(o),
                    ..
                }),
                tape,
            ) => Ok((o.changed, tape)),
            (Ok(other), _) => Err(format!("{name} answered {:?}", other.output)),
            (Err(e), _) => Err(format!("{name} failed: {}", failure(&e))),
        }
    }

    async fn describe(&mut self) -> Result<String, String> {
        let (result, tape) = self.call(Action::Describe, None).await;
        let info = match result {
            Ok(CallOutput {
                output: ActionOutput::Info(info),
                ..
            }) => info,
            Ok(other) => return Err(format!("describe answered {:?}", other.output)),
            Err(e) => return Err(format!("describe failed: {}", failure(&e))),
        };
        if !tape.calls.is_empty() {
            let calls: Vec<String> = tape
                .calls
                .iter()
                .map(|c| format!("{} {} {}", c.capability, c.op, c.subject))
                .collect();
            return Err(format!(
                "describe must touch nothing, and called {}",
                calls.join("; ")
            ));
        }
        let semver = info.version.split('.').count() == 3
            && info
                .version
                .split(['.', '-', '+'])
                .take(3)
                .all(|p| p.parse::<u64>().is_ok());
        if info.name.trim().is_empty() || !semver || info.actions.is_empty() {
            return Err(format!(
                "describe must give a name, a version x.y.z and its actions; it gave name `{}`, version `{}`, {} action(s)",
                info.name,
                info.version,
                info.actions.len()
            ));
        }
        Ok(format!(
            "{} {}, {} actions",
            info.name,
            info.version,
            info.actions.len()
        ))
    }

    async fn plan(&mut self, to: &SnapshotRecord) -> Result<String, String> {
        let (result, tape) = self.call(Action::Plan { to: to.clone() }, None).await;
        let changes = match result {
            Ok(CallOutput {
                output: ActionOutput::Preview(p),
                ..
            }) => p.changes.len(),
            Ok(other) => return Err(format!("plan answered {:?}", other.output)),
            Err(e) => return Err(format!("plan failed: {}", failure(&e))),
        };
        let wrote = writes(&tape);
        if !wrote.is_empty() {
            return Err(format!(
                "plan must change nothing, and made: {}",
                wrote.join("; ")
            ));
        }
        Ok(format!(
            "{changes} change(s) previewed with {} capability call(s){}",
            tape.calls.len(),
            maybe(&tape)
        ))
    }

    async fn restore_verify(&mut self, to: &SnapshotRecord) -> Result<(String, usize), String> {
        let (changed, tape) = self.outcome(restore(to, "conformance-restore")).await?;
        self.outcome(Action::Verify { to: to.clone() }).await?;
        Ok((
            format!(
                "restore {} with {} capability call(s); verify passed",
                if changed {
                    "changed the target"
                } else {
                    "found it in place"
                },
                tape.calls.len()
            ),
            tape.calls.len(),
        ))
    }

    async fn idempotent(&mut self, to: &SnapshotRecord) -> Result<String, String> {
        let (changed, tape) = self.outcome(restore(to, "conformance-again")).await?;
        let wrote = writes(&tape);
        if changed || !wrote.is_empty() {
            return Err(format!(
                "a second restore to the same snapshot must change nothing; it reported changed = {changed} and made: {}",
                if wrote.is_empty() {
                    "no write".to_string()
                } else {
                    wrote.join("; ")
                }
            ));
        }
        Ok(format!(
            "the second restore changed nothing ({} capability call(s){})",
            tape.calls.len(),
            maybe(&tape)
        ))
    }

    /// For each capability call of a restore from `from` to `to`: put the
    /// target back on `from`, stop a restore to `to` there, run it again
    /// with the same step id; it must complete and verify.
    async fn interrupted(
        &mut self,
        from: &SnapshotRecord,
        to: &SnapshotRecord,
        calls: usize,
    ) -> Result<String, String> {
        for stop in 0..calls {
            self.outcome(restore(from, &format!("conformance-back-{stop}")))
                .await?;
            let step = format!("conformance-interrupted-{stop}");
            let interrupted = restore(to, &step);
            self.preview_before(&interrupted).await;
            let (first, _) = self.call(interrupted, Some(stop)).await;
            if let Err(e) = &first
                && matches!(e, CallError::Crashed { .. })
            {
                return Err(format!(
                    "stopped at capability call {stop}, the plugin trapped instead of returning an error: {}",
                    failure(e)
                ));
            }
            self.outcome(restore(to, &step)).await.map_err(|e| {
                format!(
                    "stopped at capability call {stop}, then run again with step id {step}: {e}"
                )
            })?;
            self.outcome(Action::Verify { to: to.clone() })
                .await
                .map_err(|e| format!("stopped at capability call {stop} and run again: {e}"))?;
        }
        Ok(format!(
            "stopped at each of {calls} capability call(s), each run again completed and verified"
        ))
    }

    async fn typed_errors(&mut self) -> Result<String, String> {
        let garbage = SnapshotRecord {
            data: "{not a snapshot this plugin wrote".into(),
            summary: "garbage".into(),
            taken_at: 0,
        };
        for action in [
            Action::Plan {
                to: garbage.clone(),
            },
            restore(&garbage, "conformance-garbage"),
        ] {
            let name = action.name();
            match self.call(action, None).await.0 {
                Err(CallError::Plugin { .. }) => {}
                Err(e) => {
                    return Err(format!(
                        "{name} of a snapshot this plugin did not write must be a typed error, not {}",
                        failure(&e)
                    ));
                }
                Ok(_) => {
                    return Err(format!(
                        "{name} accepted a snapshot this plugin did not write"
                    ));
                }
            }
        }
        Ok("plan and restore of a foreign snapshot answered typed errors".into())
    }

    fn secrets(&self) -> Result<String, String> {
        let Some(path) = &self.target.secrets else {
            return Err("the target has no secrets file".into());
        };
        let values: Vec<String> = crate::host::caps::secrets::read(path)
            .into_values()
            .filter(|v| v.len() >= 4)
            .collect();
        for text in &self.said.0 {
            if text.contains(crate::host::caps::secrets::MASK)
                || values.iter().any(|v| text.contains(v.as_str()))
            {
                let shown: String = text.chars().take(120).collect();
                return Err(format!(
                    "a secret of {} appeared in the plugin's output (masked here): {}",
                    path.display(),
                    values.iter().fold(shown, |t, v| t
                        .replace(v.as_str(), crate::host::caps::secrets::MASK))
                ));
            }
        }
        Ok(format!(
            "{} secret(s), none in {} texts of output",
            values.len(),
            self.said.0.len()
        ))
    }
}

/// Run every check of a plugin on a target. With `to` (a snapshot taken
/// earlier, the target since changed), the restore checks move the target
/// to it and finally back to where it was.
pub async fn run(
    host: &PluginHost,
    plugin: &LoadedPlugin,
    target: &Arc<TargetConfig>,
    to: Option<SnapshotRecord>,
) -> Vec<Check> {
    let mut checker = Checker {
        host,
        plugin,
        target,
        said: Said::default(),
    };
    let mut checks = vec![Check::new("describe", checker.describe().await)];
    let now = match checker.snapshot().await {
        Ok(now) => now,
        Err(e) => {
            checks.push(Check::new("snapshot-restore-verify", Err(e)));
            return checks;
        }
    };
    let given = to.is_some();
    let to = to.unwrap_or_else(|| now.clone());
    checks.push(Check::new("plan-makes-no-writes", checker.plan(&to).await));
    match checker.restore_verify(&to).await {
        Ok((detail, calls)) => {
            checks.push(Check::new("snapshot-restore-verify", Ok(detail)));
            checks.push(Check::new(
                "restore-is-idempotent",
                checker.idempotent(&to).await,
            ));
            if !given {
                checks.push(Check::skipped(
                    "interrupted-restore-completes",
                    "needs --snapshot: an older snapshot of the target, so that a restore has something to do",
                ));
            } else {
                checks.push(Check::new(
                    "interrupted-restore-completes",
                    checker.interrupted(&now, &to, calls).await,
                ));
            }
        }
        Err(e) => checks.push(Check::new("snapshot-restore-verify", Err(e))),
    }
    checks.push(Check::new("typed-errors", checker.typed_errors().await));
    if given {
        // Leave the target where the checks found it.
        if let Err(e) = checker.outcome(restore(&now, "conformance-put-back")).await {
            checks.push(Check::new(
                "put-back",
                Err(format!(
                    "the target could not be put back where it was: {e}"
                )),
            ));
        }
    }
    checks.push(match checker.secrets() {
        Err(why) if target.secrets.is_none() => Check::skipped("no-secrets-in-output", &why),
        result => Check::new("no-secrets-in-output", result),
    });
    checks
}
