//! The Python project of `plugin new --lang python`: an `app.py` built with
//! componentize-py for its own minimal world (only the capabilities it
//! imports), rewind's contract and WASI as WIT dependencies, the SDK's
//! helpers (`rewind_plugin`), and unit tests that run natively on the
//! generated bindings with an in-memory file tree.

use anyhow::Context as _;
use std::path::Path;

/// The project's files, as (path, contents). `sdk` is rewind's
/// `plugins/sdk`: the contract and the Python helpers are beside it.
pub fn files(
    name: &str,
    module: &str,
    sdk: &Path,
    root: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let rewind = sdk
        .parent()
        .and_then(Path::parent)
        .context("--sdk must be rewind's plugins/sdk directory")?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let world = format!("local:{name}/plugin");
    let mut files =
        vec![
        ("wit/world.wit".to_string(), world_wit(name)),
        ("app.py".into(), APP.replace("NAME", name)),
        ("tests/test_app.py".into(), TEST.to_string()),
        ("tests/case.toml".into(), super::CASE.to_string()),
        (
            "rewind_plugin/__init__.py".into(),
            read(&rewind.join("plugins/python/rewind_plugin/__init__.py"))?,
        ),
        (
            "agent.toml".into(),
            super::agent_toml(name, &format!("{module}.wasm"), root),
        ),
        ("example/value.txt".into(), "the value at the start\n".into()),
        ("README.md".into(), readme(name, module, &world)),
        (
            ".gitignore".into(),
            "/state\n*.key\n*.wasm\n__pycache__/\n/wit_world/\n/componentize_py_*\n/poll_loop.py\n"
                .into(),
        ),
    ];
    // rewind's contract and the WASI packages it uses, as dependencies.
    for (dir, into) in [
        (rewind.join("wit"), "wit/deps/rewind-plugin"),
        (rewind.join("wit/deps"), "wit/deps"),
    ] {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "wit") {
                let file = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                files.push((format!("{into}/{file}"), read(&path)?));
            }
        }
    }
    Ok(files)
}

fn world_wit(name: &str) -> String {
    format!(
        r#"package local:{name};

/// What the plugin imports and exports. componentize-py imports every
/// interface of the world it builds for, so name only the capabilities
/// the plugin uses: add `import rewind:plugin/process@0.1.0;` (and grant
/// it to the target) when it runs programs, and so on (rewind's
/// docs/plugins.md lists them).
world plugin {{
    import rewind:plugin/log@0.1.0;
    import rewind:plugin/files@0.1.0;
    export rewind:plugin/rollback@0.1.0;
}}
"#
    )
}

const APP: &str = r#""""NAME: a rewind plugin in Python. As made by `rewind-agent plugin new
--lang python`, it keeps one file (the target's `file` setting) at the
content a snapshot recorded. Replace the bodies with what your system
needs; keep the rules `rewind-agent plugin check` checks."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import (
    Action, Captured, Change, Outcome, PluginError_Unsupported, PluginInfo, Preview, Risk,
)

import rewind_plugin as sdk


def path_of(target):
    return sdk.require(target, sdk.settings(target), "file")


def wanted(target, to):
    content = sdk.snapshot_data(target, to).get("content")
    if not isinstance(content, str):
        raise sdk.invalid(target, "the snapshot was not written by this plugin")
    return content


class Rollback(exports.Rollback):
    def describe(self):
        return PluginInfo(
            "NAME", "0.1.0", "keeps one file at the content a snapshot recorded",
            [Action.SNAPSHOT, Action.PLAN, Action.RESTORE, Action.VERIFY])

    def snapshot(self, target):
        path = path_of(target)
        content = sdk.read_text(path, "")
        return Captured(json.dumps({"content": content}), f"{len(content)} characters of {path}")

    def plan(self, target, to):
        path, content = path_of(target), wanted(target, to)
        if sdk.read_text(path, "") == content:
            return Preview([], Risk.NONE, None)
        change = Change(path, f"write the snapshot's {len(content)} characters", None, Risk.RESTART)
        return Preview([change], Risk.RESTART, None)

    def restore(self, target, to, options):
        path, content = path_of(target), wanted(target, to)
        if sdk.read_text(path, "") == content:
            return Outcome(False, "already in place", [])
        sdk.info(f"step {options.step_id}: writing {path}")
        sdk.write_text(path, content)
        return Outcome(True, f"wrote {path}", [])

    def restart(self, target, parts):
        raise Err(PluginError_Unsupported(f"target {target.name}: nothing to restart"))

    def verify(self, target, to):
        path = path_of(target)
        if sdk.read_text(path, "") != wanted(target, to):
            raise sdk.verification_failed(f"{path} differs from the snapshot")
        return Outcome(False, f"{path} is on the snapshot", [])
"#;

const TEST: &str = r#""""The plugin's logic, run natively on the generated bindings: the files
capability is replaced by a tree in memory. (`rewind-agent plugin check`
then checks the built component on a real target.)"""

import json
import unittest

from componentize_py_types import Err
from wit_world.imports import files, log
from wit_world.imports.files import FileError_NotFound
from wit_world.imports.types import RestoreOptions, SnapshotRecord, Target

import app


class Tree:
    def __init__(self, contents):
        self.contents = dict(contents)

    def read(self, path):
        if path not in self.contents:
            raise Err(FileError_NotFound(path))
        return self.contents[path].encode()

    def write(self, path, data):
        self.contents[path] = data.decode()


class RollbackTest(unittest.TestCase):
    def setUp(self):
        self.tree = Tree({"/srv/value.txt": "v1\n"})
        files.read, files.write = self.tree.read, self.tree.write
        log.log = lambda level, message: None
        self.target = Target("example", json.dumps({"file": "/srv/value.txt"}))
        self.plugin = app.Rollback()

    def test_a_restore_puts_the_file_back_then_changes_nothing(self):
        captured = self.plugin.snapshot(self.target)
        before = SnapshotRecord(captured.data, captured.summary, 0)
        self.tree.contents["/srv/value.txt"] = "v2\n"
        options = RestoreOptions(False, False, "step-1")
        self.assertTrue(self.plugin.restore(self.target, before, options).changed)
        self.assertEqual(self.tree.contents["/srv/value.txt"], "v1\n")
        self.assertFalse(self.plugin.restore(self.target, before, options).changed)

    def test_a_foreign_snapshot_is_a_typed_error(self):
        with self.assertRaises(Err):
            self.plugin.plan(self.target, SnapshotRecord("not json", "", 0))


if __name__ == "__main__":
    unittest.main()
"#;

fn readme(name: &str, module: &str, world: &str) -> String {
    format!(
        r#"# {name}

A rewind plugin in Python, made by `rewind-agent plugin new {name} --lang
python`. See rewind's docs/plugin-guide.md for the whole walk-through.
Needs componentize-py (`pip install componentize-py`).

```sh
componentize-py -d wit -w {world} bindings .          # the bindings (for tests and editors)
python3 -m unittest discover -s tests                  # the plugin's own tests
componentize-py -d wit -w {world} componentize app -o {module}.wasm
rewind-agent plugin test {module}.wasm --script tests/case.toml   # in the sandbox, with faults
rewind-agent plugin inspect {module}.wasm
rewind-agent plugin run {module}.wasm --config agent.toml --target example snapshot > before.json
echo "a newer value" > example/value.txt
rewind-agent plugin check {module}.wasm --config agent.toml --target example --snapshot before.json
rewind-agent plugin keygen --out release
rewind-agent plugin sign {module}.wasm --key release.key
```

`wit/world.wit` names what the plugin imports: add a capability there
(and grant it to the target) before the plugin uses it.
"#
    )
}
