//! The plugin test kit: a plugin component run in the real sandbox against
//! a temporary file tree, with the process capability answered from a
//! script (programs are recorded, never run) and faults injected on chosen
//! capability calls (timeout, refuse, half-write). Docker, PostgreSQL and
//! HTTP pass through to real services when the target's grant names them.
//!
//! Rust authors use [`Kit`] in ordinary `cargo test` tests; any author runs
//! the same from a TOML case with `rewind-agent plugin test <plugin>
//! --script case.toml` ([`run_case`]).

use crate::config::{self, TargetConfig};
use crate::host::bindings::{Captured, RestoreOptions, SnapshotRecord};
use crate::host::{
    Action, ActionOutput, CallError, CallOutput, FaultRule, LoadedPlugin, PluginHost, ScriptedRun,
    Tape,
};
use anyhow::{Context as _, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A plugin, its target and a temporary tree, ready to call.
pub struct Kit {
    dir: tempfile::TempDir,
    host: PluginHost,
    plugin: Arc<LoadedPlugin>,
    target: Arc<TargetConfig>,
    script: Option<Vec<ScriptedRun>>,
}

/// What the target of a kit is: its settings and grant as TOML values, in
/// which `{tree}` stands for the temporary tree, and its secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    #[serde(default)]
    pub settings: toml::Table,
    /// The grant; `{ files = ["{tree}"], process = [], docker = [] }` when left out.
    pub grant: Option<toml::Table>,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

fn toml_inline(table: &toml::Table) -> String {
    // A table as an inline TOML value (the agent config takes them so).
    let value = toml::Value::Table(table.clone());
    let text = value.to_string();
    if text.trim_start().starts_with('{') {
        text
    } else {
        // toml prints a top-level table as key lines; wrap them.
        let pairs: Vec<String> = table
            .iter()
            .map(|(k, v)| format!("{} = {}", toml::Value::String(k.clone()), inline(v)))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }
}

fn inline(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(t) => {
            let pairs: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{} = {}", toml::Value::String(k.clone()), inline(v)))
                .collect();
            format!("{{ {} }}", pairs.join(", "))
        }
        toml::Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(inline).collect::<Vec<_>>().join(", ")
            )
        }
        other => other.to_string(),
    }
}

impl Kit {
    /// A kit for the component at `plugin` with a target as `spec` says.
    pub fn new(plugin: &Path, spec: &TargetSpec) -> anyhow::Result<Kit> {
        let dir = tempfile::tempdir()?;
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree)?;
        let plugin = std::path::absolute(plugin)?;
        let mut default_grant = toml::Table::new();
        default_grant.insert(
            "files".into(),
            toml::Value::Array(vec![toml::Value::String("{tree}".into())]),
        );
        default_grant.insert("process".into(), toml::Value::Array(vec![]));
        default_grant.insert("docker".into(), toml::Value::Array(vec![]));
        let grant = spec.grant.clone().unwrap_or(default_grant);
        let secrets = if spec.secrets.is_empty() {
            String::new()
        } else {
            let path = dir.path().join("secrets.env");
            let lines: String = spec
                .secrets
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            std::fs::write(&path, lines)?;
            format!(
                "secrets = {}\n",
                toml::Value::String(path.display().to_string())
            )
        };
        let text = format!(
            "[agent]\nname = \"plugin-test\"\nstate_dir = {state}\n\n[plugins.plugin]\npath = {path}\nallow_unsigned = true\n\n\
             [targets.target]\nplugin = \"plugin\"\nsettings = {settings}\ngrant = {grant}\n{secrets}",
            state = toml::Value::String(dir.path().join("state").display().to_string()),
            path = toml::Value::String(plugin.display().to_string()),
            settings = toml_inline(&spec.settings),
            grant = toml_inline(&grant),
        )
        .replace("{tree}", &tree.display().to_string());
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, text)?;
        let config = config::load(&config_path)?;
        let target = config.targets["target"].clone();
        let host = PluginHost::new(&config.cache_dir, Vec::new())?;
        let plugin = host.load(&config.plugins["plugin"])?;
        Ok(Kit {
            dir,
            host,
            plugin,
            target,
            script: None,
        })
    }

    /// The temporary tree the target's files live in.
    pub fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }

    /// A path of the tree: relative, and never out of it (`..`).
    pub fn in_tree(&self, path: &str) -> anyhow::Result<PathBuf> {
        let relative = Path::new(path);
        if relative.is_absolute()
            || relative.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
        {
            anyhow::bail!("`{path}` is not a path inside the case's tree (relative, without `..`)");
        }
        Ok(self.tree().join(relative))
    }

    /// Write a file of the tree (a path relative to it).
    pub fn write(&self, path: &str, text: &str) -> anyhow::Result<()> {
        let path = self.in_tree(path)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(std::fs::write(path, text)?)
    }

    /// The target's state directory (what the plugin keeps for itself).
    pub fn state_dir(&self) -> PathBuf {
        self.target.state_dir.clone()
    }

    /// A file of the tree, or None (also for a path outside it).
    pub fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.in_tree(path).ok()?).ok()
    }

    /// Answer the process capability from these runs (nothing is run).
    pub fn script(&mut self, runs: Vec<ScriptedRun>) {
        self.script = Some(runs);
    }

    /// Call an action with `faults` injected: the outcome and the calls
    /// it made.
    pub async fn call(
        &self,
        action: Action,
        faults: Vec<FaultRule>,
    ) -> (Result<CallOutput, CallError>, Tape) {
        let tape = Tape {
            faults,
            process_script: self.script.clone(),
            ..Tape::default()
        };
        self.host
            .call_with_tape(&self.plugin, &self.target, action, tape)
            .await
    }

    /// A snapshot of the target now, as a record to restore to.
    pub async fn snapshot(&self) -> anyhow::Result<SnapshotRecord> {
        match self.call(Action::Snapshot, Vec::new()).await.0 {
            Ok(CallOutput {
                output: ActionOutput::Captured(c),
                ..
            }) => Ok(record_of(&c, 0)),
            Ok(other) => bail!("snapshot answered {:?}", other.output),
            Err(e) => bail!("snapshot failed: {e}"),
        }
    }
}

/// The record a restore is given for what a snapshot captured.
pub fn record_of(c: &Captured, taken_at: u64) -> SnapshotRecord {
    SnapshotRecord {
        data: c.data.clone(),
        summary: c.summary.clone(),
        taken_at,
    }
}

/// A restore action, data loss confirmed.
pub fn restore(to: &SnapshotRecord, step_id: &str) -> Action {
    Action::Restore {
        to: to.clone(),
        options: RestoreOptions {
            confirm_data_loss: true,
            force: false,
            step_id: step_id.to_string(),
        },
    }
}

/// A test case: the target, the tree at the start, scripted program runs,
/// and the steps with what each must give.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    target: TargetSpec,
    /// Files of the tree at the start, by path relative to it.
    #[serde(default)]
    tree: BTreeMap<String, String>,
    #[serde(default)]
    process: Vec<ScriptedRun>,
    #[serde(rename = "step", default)]
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    name: Option<String>,
    /// describe, snapshot, plan, restore, restart or verify.
    action: Option<String>,
    /// For plan, restore and verify: a snapshot saved by an earlier step.
    snapshot: Option<String>,
    /// For snapshot: the name to save it under.
    save: Option<String>,
    #[serde(default = "default_step_id")]
    step_id: String,
    #[serde(default)]
    parts: Vec<String>,
    /// Faults: `{ call = 3, fault = "refuse" }`, or `{ on = "files write",
    /// subject = "nginx.conf", fault = "half-write" }` (the first such call).
    #[serde(default)]
    faults: Vec<FaultRule>,
    /// `ok`, `error`, or an error kind (`failed`, `verification-failed`, ...).
    expect: Option<String>,
    /// For restore and restart: whether the outcome says it changed the target.
    changed: Option<bool>,
    /// The capability calls, each as `capability op` (e.g. `files write`), in order.
    calls: Option<Vec<String>>,
    /// Files to write to the tree before the action (or as the whole step).
    #[serde(default)]
    write: BTreeMap<String, String>,
    /// Files the tree must hold after the step (`""` for none... use `absent`).
    #[serde(default)]
    expect_tree: BTreeMap<String, String>,
    /// Files the tree must not hold after the step.
    #[serde(default)]
    absent: Vec<String>,
}

fn default_step_id() -> String {
    "plugin-test".into()
}

/// One step's verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub step: String,
    pub passed: bool,
    pub detail: String,
}

/// Run a case file against a plugin component: each step's verdict.
pub async fn run_case(plugin: &Path, case_path: &Path) -> anyhow::Result<Vec<StepReport>> {
    let text = std::fs::read_to_string(case_path)
        .with_context(|| format!("reading {}", case_path.display()))?;
    let case: Case = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        anyhow::anyhow!(
            "{}{}: {}",
            case_path.display(),
            line.map(|l| format!(":{l}")).unwrap_or_default(),
            e.message()
        )
    })?;
    let mut kit = Kit::new(plugin, &case.target)?;
    for (path, text) in &case.tree {
        kit.write(path, text)?;
    }
    // Programs are answered from the case's [[process]] script, never run:
    // with none, every run is refused, naming the program.
    kit.script(case.process.clone());
    let mut saved: BTreeMap<String, SnapshotRecord> = BTreeMap::new();
    let mut reports = Vec::new();
    for (index, step) in case.steps.iter().enumerate() {
        let label = format!(
            "step {}{}",
            index + 1,
            step.name
                .as_ref()
                .or(step.action.as_ref())
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        let verdict = run_step(&kit, step, &mut saved).await;
        reports.push(StepReport {
            step: label,
            passed: verdict.is_ok(),
            detail: verdict.unwrap_or_else(|e| e),
        });
    }
    Ok(reports)
}

async fn run_step(
    kit: &Kit,
    step: &Step,
    saved: &mut BTreeMap<String, SnapshotRecord>,
) -> Result<String, String> {
    for (path, text) in &step.write {
        kit.write(path, text).map_err(|e| e.to_string())?;
    }
    let mut said = Vec::new();
    if let Some(name) = &step.action {
        let to = || -> Result<SnapshotRecord, String> {
            let key = step.snapshot.as_ref().ok_or_else(|| {
                format!("{name} needs `snapshot = \"<a name saved by an earlier step>\"`")
            })?;
            saved
                .get(key)
                .cloned()
                .ok_or_else(|| format!("no snapshot saved as `{key}` by an earlier step"))
        };
        let action = match name.as_str() {
            "describe" => Action::Describe,
            "snapshot" => Action::Snapshot,
            "plan" => Action::Plan { to: to()? },
            "restore" => restore(&to()?, &step.step_id),
            "restart" => Action::Restart {
                parts: step.parts.clone(),
            },
            "verify" => Action::Verify { to: to()? },
            other => {
                return Err(format!(
                    "unknown action `{other}` (describe, snapshot, plan, restore, restart, verify)"
                ));
            }
        };
        let (result, tape) = kit.call(action, step.faults.clone()).await;
        let calls: Vec<String> = tape
            .calls
            .iter()
            .map(|c| format!("{} {}", c.capability, c.op))
            .collect();
        let shown: Vec<String> = tape
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i}: {} {} {}", c.capability, c.op, c.subject))
            .collect();
        let got = match &result {
            Ok(_) => "ok".to_string(),
            Err(CallError::Plugin { error, .. }) => error.kind.to_string(),
            Err(e) => e.kind().to_string(),
        };
        let wanted = step.expect.clone().unwrap_or_else(|| "ok".into());
        let matches = got == wanted || (wanted == "error" && got != "ok");
        if !matches {
            let why = match &result {
                Err(e) => e.to_string(),
                Ok(o) => format!("{:?}", o.output),
            };
            return Err(format!(
                "expected {wanted}, got {got}: {why}; calls: {}",
                shown.join(", ")
            ));
        }
        said.push(got.clone());
        if let Some(wanted) = &step.calls
            && *wanted != calls
        {
            return Err(format!(
                "expected the calls [{}], got [{}]",
                wanted.join(", "),
                calls.join(", ")
            ));
        }
        if let Ok(output) = &result {
            match &output.output {
                ActionOutput::Captured(c) => {
                    if let Some(name) = &step.save {
                        saved.insert(name.clone(), record_of(c, 0));
                        said.push(format!("saved as {name}"));
                    }
                }
                ActionOutput::Outcome(o) => {
                    if let Some(wanted) = step.changed
                        && o.changed != wanted
                    {
                        return Err(format!(
                            "expected changed = {wanted}, got {}: {}",
                            o.changed, o.summary
                        ));
                    }
                    said.push(o.summary.clone());
                }
                ActionOutput::Preview(p) => said.push(format!("{} change(s)", p.changes.len())),
                ActionOutput::Info(i) => said.push(format!("{} {}", i.name, i.version)),
            }
        }
        said.push(format!(
            "calls: {}",
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            }
        ));
    }
    for (path, text) in &step.expect_tree {
        match kit.read(path) {
            Some(now) if now == *text => {}
            now => return Err(format!("{path}: expected {text:?}, found {now:?}")),
        }
    }
    for path in &step.absent {
        if kit.in_tree(path).map_err(|e| e.to_string())?.exists() {
            return Err(format!("{path} must not exist, and does"));
        }
    }
    if said.is_empty() {
        said.push("the tree is as expected".into());
    }
    Ok(said.join("; "))
}
