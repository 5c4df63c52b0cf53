"""python-files: a rewind plugin in Python. It keeps a few text files (the
target's `files` setting) at the contents a snapshot recorded; a file the
snapshot did not have is removed."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import files
from wit_world.imports.types import (
    Action, Captured, Change, Outcome, PluginError_Unsupported, PluginInfo, Preview, Risk,
)

import rewind_plugin as sdk


def paths(target):
    value = sdk.require(target, sdk.settings(target), "files")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise sdk.failed(f"target {target.name}: `files` must be a list of paths")
    return value


def current(paths_):
    """Each file's text, or None where there is no file."""
    return {path: sdk.read_text(path) for path in paths_}


def wanted(target, to):
    contents = sdk.snapshot_data(target, to).get("files")
    if not isinstance(contents, dict):
        raise sdk.invalid(target, "the snapshot was not written by this plugin")
    return contents


def differences(now, want):
    """The files whose text differs, sorted: (path, what to do)."""
    out = []
    for path in sorted(set(now) | set(want)):
        have, need = now.get(path), want.get(path)
        if have == need:
            continue
        out.append((path, "remove" if need is None else "write"))
    return out


class Rollback(exports.Rollback):
    def describe(self):
        return PluginInfo(
            "python-files", "0.1.0", "keeps text files at a snapshot's contents",
            [Action.SNAPSHOT, Action.PLAN, Action.RESTORE, Action.VERIFY])

    def snapshot(self, target):
        now = current(paths(target))
        kept = sum(1 for text in now.values() if text is not None)
        return Captured(json.dumps({"files": now}, sort_keys=True), f"{kept} of {len(now)} files")

    def plan(self, target, to):
        diff = differences(current(paths(target)), wanted(target, to))
        changes = [Change(path, f"{what} the file", None, Risk.RESTART) for path, what in diff]
        return Preview(changes, Risk.RESTART if changes else Risk.NONE, None)

    def restore(self, target, to, options):
        want = wanted(target, to)
        diff = differences(current(paths(target)), want)
        if not diff:
            return Outcome(False, "every file already in place", [])
        for path, what in diff:
            sdk.info(f"step {options.step_id}: {what} {path}")
            if what == "remove":
                try:
                    files.remove(path)
                except Err as e:
                    raise sdk.failed(f"{path}: {e.value}")
            else:
                sdk.write_text(path, want[path])
        return Outcome(True, f"restored {len(diff)} file(s)", [f"{what} {path}" for path, what in diff])

    def restart(self, target, parts):
        raise Err(PluginError_Unsupported(f"target {target.name}: python-files has nothing to restart"))

    def verify(self, target, to):
        diff = differences(current(paths(target)), wanted(target, to))
        if diff:
            raise sdk.verification_failed("differ from the snapshot: " + ", ".join(p for p, _ in diff))
        return Outcome(False, "every file is on the snapshot", [])
