//! SQL migration folders: `NNN_name.sql` applies a migration,
//! `NNN_name_rollback.sql` undoes it, and a table (`schema_migrations`,
//! column `version`) lists the applied ones. Scripts are read through the
//! `files` capability and run through the `postgres` capability, each with
//! its bookkeeping row in one transaction (a script must not hold its own
//! BEGIN/COMMIT, which would end that transaction early; such scripts are
//! refused).
//!
//! Settings: `kind = "sql"`, `dir`, `database`, `table` (default
//! `schema_migrations`), `column` (default `version`).

use crate::common::{change, needs_confirmation, preview};
use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    dir: String,
    database: String,
    #[serde(default = "default_table")]
    table: String,
    #[serde(default = "default_column")]
    column: String,
}

fn default_table() -> String {
    "schema_migrations".into()
}

fn default_column() -> String {
    "version".into()
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    kind: String,
    /// The applied versions as the table holds them, by number.
    applied: BTreeMap<u64, String>,
}

/// A migration of the folder: `NNN_name.sql` and its rollback script.
struct Migration {
    stem: String,
    up: Option<String>,
    down: Option<String>,
}

fn identifier(target: &Target, key: &str, value: &str) -> Result<(), PluginError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        && !value.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PluginError::InvalidSettings(format!(
            "target {}: settings.{key} `{value}` must be a lowercase SQL name (letters, digits, _ and a schema dot)",
            target.name
        )))
    }
}

fn settings_of(target: &Target) -> Result<Settings, PluginError> {
    let settings: Settings = settings(target)?;
    identifier(target, "table", &settings.table)?;
    identifier(target, "column", &settings.column)?;
    Ok(settings)
}

/// The leading number of a version or a file name.
fn number(text: &str) -> Option<u64> {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn folder(settings: &Settings) -> Result<BTreeMap<u64, Migration>, PluginError> {
    let mut migrations: BTreeMap<u64, Migration> = BTreeMap::new();
    for name in files::list(&settings.dir)? {
        let Some(stem) = name.strip_suffix(".sql") else {
            continue;
        };
        let Some(n) = number(stem) else { continue };
        let (stem, down) = match stem.strip_suffix("_rollback") {
            Some(up_stem) => (up_stem.to_string(), true),
            None => (stem.to_string(), false),
        };
        let entry = migrations.entry(n).or_insert(Migration {
            stem: stem.clone(),
            up: None,
            down: None,
        });
        let path = format!("{}/{name}", settings.dir.trim_end_matches('/'));
        if down {
            entry.down = Some(path);
        } else {
            entry.up = Some(path);
            entry.stem = stem;
        }
    }
    Ok(migrations)
}

fn applied(settings: &Settings) -> Result<BTreeMap<u64, String>, PluginError> {
    let rows = postgres::query(
        &settings.database,
        &format!("SELECT {} FROM {}", settings.column, settings.table),
        &[],
    )?;
    let mut applied = BTreeMap::new();
    for row in rows.rows {
        let Some(Some(version)) = row.into_iter().next() else {
            continue;
        };
        let n = number(&version).ok_or_else(|| {
            PluginError::Failed(format!(
                "{}.{} holds `{version}`, which does not start with a migration number",
                settings.table, settings.column
            ))
        })?;
        applied.insert(n, version);
    }
    Ok(applied)
}

fn script(path: &str) -> Result<String, PluginError> {
    let text = String::from_utf8(files::read(path)?)
        .map_err(|_| PluginError::Failed(format!("{path} is not UTF-8 text")))?;
    if let Some(statement) = crate::statements::split(&text)
        .into_iter()
        .find(|s| crate::statements::controls_transaction(s))
    {
        return Err(PluginError::InvalidSettings(format!(
            "{path} holds its own transaction control (`{statement}`); rewind runs each script \
             with its bookkeeping in one transaction, so remove it"
        )));
    }
    Ok(text)
}

/// What to undo (newest first) and what to apply again (oldest first).
struct Work {
    undo: Vec<(u64, String, String)>,
    apply: Vec<(u64, String, String)>,
}

fn work(target: &Target, settings: &Settings, wanted: &Snapshot) -> Result<Work, PluginError> {
    let now = applied(settings)?;
    let migrations = folder(settings)?;
    let mut work = Work {
        undo: Vec::new(),
        apply: Vec::new(),
    };
    for (n, version) in now.iter().rev() {
        if wanted.applied.contains_key(n) {
            continue;
        }
        let down = migrations.get(n).and_then(|m| m.down.clone()).ok_or_else(|| {
            PluginError::NotFound(format!(
                "target {}: migration {version} is applied but {} has no {}_rollback.sql for it",
                target.name,
                settings.dir,
                migrations.get(n).map_or(version.as_str(), |m| m.stem.as_str())
            ))
        })?;
        work.undo.push((*n, version.clone(), down));
    }
    for (n, version) in &wanted.applied {
        if now.contains_key(n) {
            continue;
        }
        let up = migrations.get(n).and_then(|m| m.up.clone()).ok_or_else(|| {
            PluginError::NotFound(format!(
                "target {}: migration {version} must be applied again but {} has no script for it",
                target.name, settings.dir
            ))
        })?;
        work.apply.push((*n, version.clone(), up));
    }
    Ok(work)
}

fn preview_of(
    target: &Target,
    settings: &Settings,
    to: &SnapshotRecord,
) -> Result<(Work, Preview), PluginError> {
    let wanted: Snapshot = snapshot_data(target, to)?;
    let work = work(target, settings, &wanted)?;
    let clock = now_secs();
    let mut changes = Vec::new();
    for (_, version, path) in &work.undo {
        changes.push(change(
            format!("migration {version}"),
            format!("roll back {version} ({path})"),
            script(path)?,
            clock,
            to.taken_at,
        ));
    }
    for (_, version, path) in &work.apply {
        changes.push(change(
            format!("migration {version}"),
            format!("apply {version} ({path})"),
            script(path)?,
            clock,
            to.taken_at,
        ));
    }
    Ok((work, preview(changes)))
}

pub fn snapshot(target: &Target) -> Result<Captured, PluginError> {
    let settings = settings_of(target)?;
    let applied = applied(&settings)?;
    let summary = match applied.values().last() {
        Some(last) => format!("{} migration(s) applied, latest {last}", applied.len()),
        None => "no migration applied".into(),
    };
    Ok(Captured {
        data: serde_json::to_string(&Snapshot {
            kind: "sql".into(),
            applied,
        })
        .map_err(|e| PluginError::Failed(e.to_string()))?,
        summary,
    })
}

pub fn plan(target: &Target, to: &SnapshotRecord) -> Result<Preview, PluginError> {
    let settings = settings_of(target)?;
    Ok(preview_of(target, &settings, to)?.1)
}

/// A version as an SQL literal (it came from the table or a file name).
fn literal(version: &str) -> String {
    format!("'{}'", version.replace('\'', "''"))
}

pub fn restore(
    target: &Target,
    to: &SnapshotRecord,
    options: &RestoreOptions,
) -> Result<Outcome, PluginError> {
    let settings = settings_of(target)?;
    let (work, preview) = preview_of(target, &settings, to)?;
    if work.undo.is_empty() && work.apply.is_empty() {
        return Ok(Outcome {
            changed: false,
            summary: "the migrations applied are already the snapshot's".into(),
            details: Vec::new(),
        });
    }
    needs_confirmation(target, &preview, options)?;
    let mut done = Vec::new();
    let steps = work
        .undo
        .iter()
        .map(|w| (w, true))
        .chain(work.apply.iter().map(|w| (w, false)));
    for ((_, version, path), undo) in steps {
        let sql = script(path)?;
        let bookkeeping = if undo {
            format!(
                "DELETE FROM {} WHERE {} = {}",
                settings.table,
                settings.column,
                literal(version)
            )
        } else {
            format!(
                "INSERT INTO {} ({}) VALUES ({})",
                settings.table,
                settings.column,
                literal(version)
            )
        };
        progress(
            &format!(
                "{} {version}",
                if undo { "rolling back" } else { "applying" }
            ),
            None,
        );
        if let Err(e) = postgres::execute(
            &settings.database,
            &format!("{sql}\n;\n{bookkeeping};"),
            &[],
        ) {
            let at = applied(&settings)
                .ok()
                .and_then(|a| a.values().last().cloned())
                .unwrap_or_else(|| "none".into());
            return Err(e.with_text(format!(
                "target {}: {} {version} failed, and nothing of it was applied: {}; \
                 done before it: {}; the latest migration applied is {at}",
                target.name,
                if undo { "rolling back" } else { "applying" },
                e.text(),
                if done.is_empty() {
                    "nothing".to_string()
                } else {
                    done.join(", ")
                }
            )));
        }
        done.push(format!(
            "{} {version}",
            if undo { "rolled back" } else { "applied" }
        ));
    }
    Ok(Outcome {
        changed: true,
        summary: done.join(", "),
        details: preview.changes.iter().map(|c| c.summary.clone()).collect(),
    })
}

pub fn verify(target: &Target, to: &SnapshotRecord) -> Result<Outcome, PluginError> {
    let settings = settings_of(target)?;
    let wanted: Snapshot = snapshot_data(target, to)?;
    let now = applied(&settings)?;
    let now_numbers: Vec<&u64> = now.keys().collect();
    let wanted_numbers: Vec<&u64> = wanted.applied.keys().collect();
    if now_numbers != wanted_numbers {
        return Err(PluginError::VerificationFailed(format!(
            "target {}: applied migrations are {:?}, the snapshot's are {:?}",
            target.name,
            now.values().collect::<Vec<_>>(),
            wanted.applied.values().collect::<Vec<_>>()
        )));
    }
    Ok(Outcome {
        changed: false,
        summary: format!("{} migration(s) applied, as in the snapshot", now.len()),
        details: Vec::new(),
    })
}
