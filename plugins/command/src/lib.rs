//! rewind's command plugin: the `./scripts/health_check.sh`, `pytest -m
//! smoke` and `maintenance.sh on` of a runbook, as a target. Its commands
//! are named in the settings and run through the `process` capability, so
//! the agent's grant decides which programs and which arguments may run.
//!
//! Settings:
//! - `commands`: a table of named commands, each a list (program, then
//!   arguments), e.g. `smoke = ["pytest", "-m", "smoke", "tests/"]`;
//! - `verify`: the names `verify` runs, in order (a smoke check);
//! - `restart`: the names `restart` runs when it is given no parts (a plan
//!   stage with `action = "restart"`); with parts, it runs those names;
//! - `timeout_secs` per command (default: the grant's `process_timeout`);
//! - `tail`: how many last output lines the report keeps (default 20).
//!
//! Each run reports its exit code, duration and last output lines. A
//! non-zero exit fails the action: `verification-failed` for `verify`,
//! `failed` for `restart`; the commands after it do not run.

use rewind_plugin_sdk::process::{self, Command};
use rewind_plugin_sdk::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Instant;

struct Commands;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    commands: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    verify: Vec<String>,
    #[serde(default)]
    restart: Vec<String>,
    timeout_secs: Option<u32>,
    #[serde(default = "default_tail")]
    tail: usize,
}

fn default_tail() -> usize {
    20
}

/// The names of the target's commands, for an error.
fn command_names(settings: &Settings) -> String {
    settings
        .commands
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

fn settings_of(target: &Target) -> Result<Settings, PluginError> {
    let settings: Settings = settings(target)?;
    let invalid = |text: String| {
        PluginError::InvalidSettings(format!("target {}: settings.{text}", target.name))
    };
    if settings.commands.is_empty() {
        return Err(invalid(
            "commands is empty: name at least one command".into(),
        ));
    }
    for (name, command) in &settings.commands {
        if command.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(invalid(format!(
                "commands.{name} is empty: it needs a program, then its arguments"
            )));
        }
    }
    for (key, names) in [("verify", &settings.verify), ("restart", &settings.restart)] {
        if let Some(unknown) = names.iter().find(|n| !settings.commands.contains_key(*n)) {
            return Err(invalid(format!(
                "{key} names `{unknown}`, which is not in settings.commands ({})",
                command_names(&settings)
            )));
        }
    }
    Ok(settings)
}

/// What one command did.
struct Ran {
    line: String,
    status: Option<i32>,
    tail: Vec<String>,
}

fn run(settings: &Settings, name: &str) -> Result<Ran, PluginError> {
    let argv = &settings.commands[name];
    let shown = argv.join(" ");
    progress(&format!("running {name}: {shown}"), None);
    let started = Instant::now();
    let output = process::run_command(&Command {
        program: argv[0].clone(),
        args: argv[1..].to_vec(),
        stdin: None,
        timeout_ms: settings.timeout_secs.map(|s| s.saturating_mul(1000)),
        env: Vec::new(),
    })
    .map_err(|e| e.with_text(format!("{name} ({shown}): {}", e.text())))?;
    let seconds = started.elapsed().as_secs_f64();
    let tail = process::last_lines(&output, settings.tail);
    let exit = match output.status {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".to_string(),
    };
    Ok(Ran {
        line: format!("{name} ({shown}): {exit} in {seconds:.1} s"),
        status: output.status,
        tail,
    })
}

/// Run the named commands in order; the first that fails stops the rest.
fn run_all(
    target: &Target,
    settings: &Settings,
    names: &[String],
    failed: fn(String) -> PluginError,
    changed: bool,
) -> Result<Outcome, PluginError> {
    let mut details = Vec::new();
    let mut lines = Vec::new();
    for name in names {
        let ran = run(settings, name)?;
        if ran.status != Some(0) {
            let mut text = ran.line.clone();
            if !ran.tail.is_empty() {
                text.push_str("; last output:\n");
                text.push_str(&ran.tail.join("\n"));
            }
            let rest = names.len() - lines.len() - 1;
            if rest > 0 {
                text.push_str(&format!("\n({rest} command(s) after it did not run)"));
            }
            return Err(failed(format!("target {}: {text}", target.name)));
        }
        details.push(ran.line.clone());
        details.extend(ran.tail.into_iter().map(|l| format!("  {l}")));
        lines.push(ran.line);
    }
    Ok(Outcome {
        changed,
        summary: lines.join("; "),
        details,
    })
}

impl Plugin for Commands {
    fn describe() -> PluginInfo {
        info!(
            "command",
            "allow-listed commands as restart parts and as verify (smoke tests, health scripts, maintenance switches)",
            &[
                Action::Snapshot,
                Action::Plan,
                Action::Restart,
                Action::Verify,
            ],
        )
    }

    /// Nothing to put back: the snapshot records which commands there were.
    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        let settings = settings_of(&target)?;
        let names: Vec<String> = settings.commands.keys().cloned().collect();
        Ok(Captured {
            data: serde_json::json!({ "commands": names }).to_string(),
            summary: format!("{} command(s): {}", names.len(), names.join(", ")),
        })
    }

    fn plan(target: Target, _to: SnapshotRecord) -> Result<Preview, PluginError> {
        settings_of(&target)?;
        Ok(Preview {
            changes: Vec::new(),
            risk: Risk::None,
            data_loss_window_seconds: None,
        })
    }

    fn restart(target: Target, parts: Vec<String>) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        let names = if parts.is_empty() {
            settings.restart.clone()
        } else {
            parts
        };
        if names.is_empty() {
            return Err(PluginError::InvalidSettings(format!(
                "target {}: restart was given no parts and settings.restart names no command",
                target.name
            )));
        }
        if let Some(unknown) = names.iter().find(|n| !settings.commands.contains_key(*n)) {
            return Err(PluginError::NotFound(format!(
                "target {}: no command named `{unknown}` (commands: {})",
                target.name,
                command_names(&settings)
            )));
        }
        run_all(&target, &settings, &names, PluginError::Failed, true)
    }

    fn verify(target: Target, _to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let settings = settings_of(&target)?;
        if settings.verify.is_empty() {
            return Err(PluginError::InvalidSettings(format!(
                "target {}: settings.verify names no command to run",
                target.name
            )));
        }
        run_all(
            &target,
            &settings,
            &settings.verify,
            PluginError::VerificationFailed,
            false,
        )
    }
}

export_plugin!(Commands);
