//! Alembic: the application's own `alembic` command, run through the
//! `process` capability in the application's directory (`grant.process_dir`).
//!
//! Settings: `kind = "alembic"`, `config` (the `-c` file, default
//! `alembic.ini`), `program` (default `alembic`), `timeout_secs`.
//! Branched histories (several heads at once) are refused.

use crate::common::{change, needs_confirmation, preview};
use rewind_plugin_sdk::process::{self, Command};
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_config")]
    config: String,
    #[serde(default = "default_program")]
    program: String,
    timeout_secs: Option<u32>,
}

fn default_config() -> String {
    "alembic.ini".into()
}

fn default_program() -> String {
    "alembic".into()
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    kind: String,
    /// The revision, or `base` for an empty history.
    revision: String,
}

/// One alembic run: its status and output.
struct Ran {
    ok: bool,
    stdout: String,
    output: process::Output,
}

fn alembic(settings: &Settings, args: &[&str]) -> Result<Ran, PluginError> {
    let mut argv = vec!["-c".to_string(), settings.config.clone()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let output = process::run_command(&Command {
        program: settings.program.clone(),
        args: argv,
        stdin: None,
        timeout_ms: settings.timeout_secs.map(|s| s.saturating_mul(1000)),
        env: Vec::new(),
    })?;
    Ok(Ran {
        ok: output.status == Some(0),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        output,
    })
}

/// The last lines of a failed run's output, for an error.
fn last_lines(ran: &Ran) -> String {
    process::last_lines(&ran.output, 8).join("\n")
}

fn is_revision(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `alembic current`: the database's revision (`base` when it has none).
fn current(target: &Target, settings: &Settings) -> Result<String, PluginError> {
    let ran = alembic(settings, &["current"])?;
    if !ran.ok {
        return Err(PluginError::Unavailable(format!(
            "target {}: alembic current failed: {}",
            target.name,
            last_lines(&ran)
        )));
    }
    let heads: Vec<&str> = ran
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| is_revision(w))
        .collect();
    match heads.as_slice() {
        [] => Ok("base".into()),
        [one] => Ok(one.to_string()),
        many => Err(PluginError::Conflict(format!(
            "target {}: the database is at several revisions ({}); merge the branches first",
            target.name,
            many.join(", ")
        ))),
    }
}

fn settings_of(target: &Target) -> Result<Settings, PluginError> {
    settings(target)
}

/// One migration step of a way from one revision to another.
struct Step {
    from: String,
    to: String,
    sql: String,
}

/// The direction and steps from `now` to `wanted`, with each step's SQL
/// (`alembic downgrade|upgrade --sql`, which changes nothing).
fn way(
    target: &Target,
    settings: &Settings,
    now: &str,
    wanted: &str,
) -> Result<(&'static str, Vec<Step>), PluginError> {
    let mut refusals = Vec::new();
    for direction in ["downgrade", "upgrade"] {
        if direction == "downgrade" && now == "base" {
            continue;
        }
        let range = if now == "base" {
            wanted.to_string()
        } else {
            format!("{now}:{wanted}")
        };
        let ran = alembic(settings, &[direction, &range, "--sql"])?;
        if ran.ok {
            return Ok((direction, steps(&ran.stdout, direction)));
        }
        refusals.push(format!("{direction} {range}: {}", last_lines(&ran)));
    }
    Err(PluginError::NotFound(format!(
        "target {}: alembic finds no way from revision {now} to {wanted}: {}",
        target.name,
        refusals.join("; ")
    )))
}

/// Split `--sql` output on alembic's `-- Running downgrade a -> b` lines.
fn steps(sql: &str, direction: &str) -> Vec<Step> {
    let marker = format!("-- Running {direction} ");
    let mut steps: Vec<Step> = Vec::new();
    for line in sql.lines() {
        if let Some(rest) = line.strip_prefix(&marker) {
            let (from, to) = rest.split_once(" -> ").unwrap_or((rest, ""));
            let clean = |r: &str| {
                let r = r.trim();
                if r.is_empty() {
                    "base".to_string()
                } else {
                    r.to_string()
                }
            };
            steps.push(Step {
                from: clean(from),
                to: clean(to),
                sql: String::new(),
            });
        } else if let Some(step) = steps.last_mut()
            && !line.contains("alembic_version")
            && !matches!(line.trim(), "" | "BEGIN;" | "COMMIT;")
        {
            step.sql.push_str(line);
            step.sql.push('\n');
        }
    }
    steps
}

pub fn snapshot(target: &Target) -> Result<Captured, PluginError> {
    let settings = settings_of(target)?;
    let revision = current(target, &settings)?;
    Ok(Captured {
        summary: format!("alembic revision {revision}"),
        data: serde_json::to_string(&Snapshot {
            kind: "alembic".into(),
            revision,
        })
        .map_err(|e| PluginError::Failed(e.to_string()))?,
    })
}

fn preview_of(
    target: &Target,
    settings: &Settings,
    to: &SnapshotRecord,
) -> Result<(String, String, &'static str, Preview), PluginError> {
    let wanted: Snapshot = snapshot_data(target, to)?;
    let now = current(target, settings)?;
    if now == wanted.revision {
        return Ok((now, wanted.revision, "none", preview(Vec::new())));
    }
    let (direction, steps) = way(target, settings, &now, &wanted.revision)?;
    let clock = now_secs();
    let changes = steps
        .into_iter()
        .map(|s| {
            change(
                format!("revision {}", s.from),
                format!("{direction} {} -> {}", s.from, s.to),
                s.sql,
                clock,
                to.taken_at,
            )
        })
        .collect();
    Ok((now, wanted.revision, direction, preview(changes)))
}

pub fn plan(target: &Target, to: &SnapshotRecord) -> Result<Preview, PluginError> {
    let settings = settings_of(target)?;
    Ok(preview_of(target, &settings, to)?.3)
}

pub fn restore(
    target: &Target,
    to: &SnapshotRecord,
    options: &RestoreOptions,
) -> Result<Outcome, PluginError> {
    let settings = settings_of(target)?;
    let (from, wanted, direction, preview) = preview_of(target, &settings, to)?;
    if direction == "none" {
        return Ok(Outcome {
            changed: false,
            summary: format!("already at alembic revision {wanted}"),
            details: Vec::new(),
        });
    }
    needs_confirmation(target, &preview, options)?;
    progress(&format!("alembic {direction} {from} -> {wanted}"), None);
    let ran = alembic(&settings, &[direction, &wanted])?;
    let at = current(target, &settings)
        .unwrap_or_else(|e| format!("unknown (alembic current: {})", e.text()));
    if !ran.ok || at != wanted {
        return Err(PluginError::Failed(format!(
            "target {}: alembic {direction} from {from} to {wanted} stopped at revision {at}; \
             the database is at {at}: {}",
            target.name,
            last_lines(&ran)
        )));
    }
    Ok(Outcome {
        changed: true,
        summary: format!(
            "alembic {direction} {from} -> {wanted} ({} revision(s))",
            preview.changes.len()
        ),
        details: preview.changes.iter().map(|c| c.summary.clone()).collect(),
    })
}

pub fn verify(target: &Target, to: &SnapshotRecord) -> Result<Outcome, PluginError> {
    let settings = settings_of(target)?;
    let wanted: Snapshot = snapshot_data(target, to)?;
    let now = current(target, &settings)?;
    if now != wanted.revision {
        return Err(PluginError::VerificationFailed(format!(
            "target {}: the database is at alembic revision {now}, not {}",
            target.name, wanted.revision
        )));
    }
    Ok(Outcome {
        changed: false,
        summary: format!("at alembic revision {now}"),
        details: Vec::new(),
    })
}
