//! `rewind-agent plugin new`: a plugin project that builds as it is. The
//! plugin it starts with works: it keeps one file at the content a snapshot
//! recorded, with every action of the contract, so that the project's
//! tests pass, `plugin check` passes, and an author replaces the bodies with
//! what their own system needs.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// The languages a project can be made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    /// componentize-py, with the SDK's helpers as a small package.
    Python,
}

/// Where the SDK of this rewind is, when this program was built from a
/// checkout that still has it.
pub fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
    sdk.join("Cargo.toml")
        .exists()
        .then(|| sdk.canonicalize().unwrap_or(sdk))
}

/// A plugin name: lowercase letters, digits and `-`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "`{name}` is not a plugin name: use lowercase letters, digits and `-`, starting with a letter (e.g. redis-config)"
        );
    }
    Ok(())
}

/// Write a new project `<dir>/<name>`; its path.
pub fn new(name: &str, lang: Lang, dir: &Path, sdk: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let sdk = match sdk.or_else(default_sdk) {
        Some(sdk) => std::path::absolute(&sdk)?,
        None => bail!(
            "where is rewind's plugin SDK? pass --sdk <path to rewind/plugins/sdk> (this rewind-agent was not built from a checkout that has it)"
        ),
    };
    if !sdk.join("Cargo.toml").exists() {
        bail!(
            "{}: no Cargo.toml; --sdk must name rewind's plugins/sdk directory",
            sdk.display()
        );
    }
    let root = std::path::absolute(dir.join(name))?;
    if root.exists() {
        bail!(
            "{} exists already; choose another name or directory",
            root.display()
        );
    }
    let crate_name = name.replace('-', "_");
    let files: Vec<(String, String)> = match lang {
        Lang::Rust => vec![
            ("Cargo.toml".into(), cargo_toml(name, &sdk)),
            ("src/lib.rs".into(), lib_rs(name)),
            (
                "agent.toml".into(),
                agent_toml(
                    name,
                    &format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
                    &root,
                ),
            ),
            (
                "example/value.txt".into(),
                "the value at the start\n".into(),
            ),
            ("README.md".into(), readme(name, &crate_name)),
            ("tests/case.toml".into(), CASE.to_string()),
            (".gitignore".into(), "/target\n/state\n*.key\n".into()),
        ],
        Lang::Python => python::files(name, &crate_name, &sdk, &root)?,
    };
    for (path, text) in files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

/// A test case for `plugin test`: the plugin as the scaffold makes it, a
/// refused write, the restore, and the second restore that does nothing.
pub(super) const CASE: &str = r#"# rewind-agent plugin test <the plugin's .wasm> --script tests/case.toml
# A temporary tree, the target's settings ({tree} stands for the tree),
# and steps, each with what it must give (rewind's docs/plugins.md).

[target]
settings = { file = "{tree}/value.txt" }

[tree]
"value.txt" = "v1\n"

[[step]]
action = "snapshot"
save = "v1"

[[step]]
name = "the deploy"
write = { "value.txt" = "v2\n" }

[[step]]
name = "the write refused: an error, nothing changed"
action = "restore"
snapshot = "v1"
faults = [{ on = "files write", fault = "refuse" }]
expect = "error"
expect_tree = { "value.txt" = "v2\n" }

[[step]]
action = "restore"
snapshot = "v1"
changed = true
expect_tree = { "value.txt" = "v1\n" }

[[step]]
name = "again: nothing to do"
action = "restore"
snapshot = "v1"
changed = false
"#;

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
description = "rewind plugin: {name}"
version = "0.1.0"
edition = "2024"

# Its own workspace: built on its own for wasm32-wasip2.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
rewind-plugin-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#,
        sdk = sdk.display()
    )
}

fn lib_rs(name: &str) -> String {
    r#"//! NAME: a rewind plugin. As made by `rewind-agent plugin new`, it keeps
//! one file (the target's `file` setting) at the content a snapshot
//! recorded. Replace the bodies with what your system needs; keep the
//! rules `rewind-agent plugin check` checks (docs/plugins.md).

use rewind_plugin_sdk::*;
use serde::{Deserialize, Serialize};

/// The target's settings (its `settings` table in the agent config).
#[derive(Deserialize)]
struct Settings {
    file: String,
}

/// What a snapshot records: enough to put the target back exactly.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Data {
    content: String,
}

fn content(settings: &Settings) -> Result<String, PluginError> {
    let bytes = files::read_if_exists(&settings.file)?.unwrap_or_default();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

struct TYPE;

impl Plugin for TYPE {
    fn describe() -> PluginInfo {
        info!(
            "NAME",
            "keeps one file at the content a snapshot recorded",
            &[Action::Snapshot, Action::Plan, Action::Restore, Action::Verify],
        )
    }

    /// Record the target's state now.
    fn snapshot(target: Target) -> Result<Captured, PluginError> {
        let settings: Settings = settings(&target)?;
        let content = content(&settings)?;
        Ok(Captured {
            summary: format!("{} bytes of {}", content.len(), settings.file),
            data: serde_json::to_string(&Data { content })
                .map_err(|e| PluginError::Failed(format!("target {}: {e}", target.name)))?,
        })
    }

    /// Say what a restore would change, and at what risk; change nothing.
    fn plan(target: Target, to: SnapshotRecord) -> Result<Preview, PluginError> {
        let settings: Settings = settings(&target)?;
        let wanted: Data = snapshot_data(&target, &to)?;
        if content(&settings)? == wanted.content {
            return Ok(Preview {
                changes: vec![],
                risk: Risk::None,
                data_loss_window_seconds: None,
            });
        }
        Ok(Preview {
            changes: vec![Change {
                subject: settings.file.clone(),
                summary: format!("write the snapshot's {} bytes", wanted.content.len()),
                detail: None,
                risk: Risk::Restart,
            }],
            risk: Risk::Restart,
            data_loss_window_seconds: None,
        })
    }

    /// Put the target back; nothing to do when it is already there.
    fn restore(
        target: Target,
        to: SnapshotRecord,
        options: RestoreOptions,
    ) -> Result<Outcome, PluginError> {
        let settings: Settings = settings(&target)?;
        let wanted: Data = snapshot_data(&target, &to)?;
        if content(&settings)? == wanted.content {
            return Ok(Outcome {
                changed: false,
                summary: "already in place".into(),
                details: vec![],
            });
        }
        log::info(&format!("step {}: writing {}", options.step_id, settings.file));
        files::write(&settings.file, wanted.content.as_bytes())?;
        Ok(Outcome {
            changed: true,
            summary: format!("wrote {}", settings.file),
            details: vec![],
        })
    }

    /// Check the target is on the snapshot.
    fn verify(target: Target, to: SnapshotRecord) -> Result<Outcome, PluginError> {
        let settings: Settings = settings(&target)?;
        let wanted: Data = snapshot_data(&target, &to)?;
        if content(&settings)? != wanted.content {
            return Err(PluginError::VerificationFailed(format!(
                "{} differs from the snapshot",
                settings.file
            )));
        }
        Ok(Outcome {
            changed: false,
            summary: format!("{} is on the snapshot", settings.file),
            details: vec![],
        })
    }
}

export_plugin!(TYPE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_what_it_wrote() {
        let data = Data {
            content: "line 1\nline 2\n".into(),
        };
        let text = serde_json::to_string(&data).unwrap();
        assert_eq!(serde_json::from_str::<Data>(&text).unwrap(), data);
    }
}
"#
    .replace("NAME", name)
    .replace("TYPE", &type_name(name))
}

/// The plugin's type: `redis-config` -> `RedisConfig`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn agent_toml(name: &str, wasm: &str, root: &Path) -> String {
    format!(
        r#"# An agent configuration for trying the plugin on this machine (see
# rewind's docs/agent.md). Paths are relative to this file.
[agent]
name = "dev"
state_dir = "state"
# Public keys whose signatures are accepted (`rewind-agent plugin keygen`).
trusted_keys = []

[plugins.{name}]
path = "{wasm}"
# Until it is signed and its key is trusted above:
allow_unsigned = true

[targets.example]
plugin = "{name}"
settings = {{ file = "{example}/value.txt" }}
grant = {{ files = ["{example}"] }}
"#,
        example = root.join("example").display()
    )
}

fn readme(name: &str, crate_name: &str) -> String {
    format!(
        r#"# {name}

A rewind plugin, made by `rewind-agent plugin new {name}`. See rewind's
docs/plugin-guide.md for the whole walk-through.

```sh
cargo test                                            # the plugin's own unit tests
cargo build --release --target wasm32-wasip2          # the component
W=target/wasm32-wasip2/release/{crate_name}.wasm
rewind-agent plugin test $W --script tests/case.toml  # in the sandbox, with faults
rewind-agent plugin inspect $W                       # describe, imports, digest
rewind-agent plugin run $W --config agent.toml --target example snapshot > before.json
echo "a newer value" > example/value.txt
rewind-agent plugin check $W --config agent.toml --target example --snapshot before.json
rewind-agent plugin run $W --config agent.toml --target example restore --snapshot before.json
rewind-agent plugin keygen --out release              # release.key (keep it secret), release.pub
rewind-agent plugin sign $W --key release.key         # writes $W.sig
```

To run it signed, put the content of `release.pub` in `trusted_keys` in
agent.toml and remove `allow_unsigned`.
"#
    )
}

mod python;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_projects_are_not_overwritten() {
        assert!(check_name("redis-config").is_ok());
        for bad in ["Redis", "1st", "a_b", "", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let sdk = default_sdk().expect("the SDK of this checkout");
        let made = new("hello", Lang::Rust, dir.path(), Some(sdk.clone())).unwrap();
        assert!(made.join("src/lib.rs").exists());
        let again = new("hello", Lang::Rust, dir.path(), Some(sdk)).unwrap_err();
        assert!(again.to_string().contains("exists already"), "{again}");
        let source = std::fs::read_to_string(made.join("src/lib.rs")).unwrap();
        assert!(source.contains("struct Hello;") && source.contains("export_plugin!(Hello);"));
        assert_eq!(type_name("redis-config-2"), "RedisConfig2");
    }
}
