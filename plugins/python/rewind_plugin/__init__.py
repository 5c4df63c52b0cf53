"""Helpers for rewind plugins written in Python (componentize-py).

The SDK's helpers, for the bindings componentize-py generates from a world
that imports `rewind:plugin/log` and `rewind:plugin/files` and exports
`rewind:plugin/rollback` (see docs/plugin-guide.md). Errors are raised as
`componentize_py_types.Err(<plugin-error case>)`, which the contract turns
into the plugin's typed error; a Python exception that escapes becomes a
trap, reported as `crashed`.
"""

import json

from componentize_py_types import Err
from wit_world.imports import files, log
from wit_world.imports.files import FileError_NotFound
from wit_world.imports.types import (
    PluginError_Failed,
    PluginError_InvalidSettings,
    PluginError_VerificationFailed,
)


def failed(message):
    """The `failed` error, to raise."""
    return Err(PluginError_Failed(message))


def verification_failed(message):
    """The `verification-failed` error, to raise."""
    return Err(PluginError_VerificationFailed(message))


def invalid(target, message):
    """The `invalid-settings` error for a target, to raise."""
    return Err(PluginError_InvalidSettings(f"target {target.name}: {message}"))


def settings(target):
    """The target's settings (its `settings` table) as a dict; a clear
    `invalid-settings` error when they are not what the plugin expects."""
    try:
        value = json.loads(target.settings)
    except ValueError as e:
        raise Err(PluginError_InvalidSettings(f"target {target.name}: settings: {e}"))
    if not isinstance(value, dict):
        raise Err(PluginError_InvalidSettings(f"target {target.name}: settings must be a table"))
    return value


def require(target, values, key):
    """A setting the plugin needs, or an error naming it."""
    if key not in values:
        raise Err(PluginError_InvalidSettings(f"target {target.name}: settings need `{key}`"))
    return values[key]


def snapshot_data(target, to):
    """A snapshot's data as this plugin wrote it (JSON), or a typed error:
    a snapshot the plugin did not write must never make it trap."""
    try:
        value = json.loads(to.data)
    except ValueError as e:
        raise Err(PluginError_InvalidSettings(
            f"target {target.name}: the snapshot was not written by this plugin or is damaged: {e}"))
    if not isinstance(value, dict):
        raise Err(PluginError_InvalidSettings(
            f"target {target.name}: the snapshot was not written by this plugin"))
    return value


def read_text(path, missing=None):
    """A file's text, or `missing` when it does not exist; other failures
    are `failed` errors naming the path."""
    try:
        return files.read(path).decode()
    except Err as e:
        if isinstance(e.value, FileError_NotFound):
            return missing
        raise failed(f"{path}: {e.value}")


def write_text(path, text):
    """Replace a file atomically (the agent writes a temporary file and
    renames it); failures are `failed` errors naming the path."""
    try:
        files.write(path, text.encode())
    except Err as e:
        raise failed(f"{path}: {e.value}")


def info(message):
    log.log(log.Level.INFO, message)


def warn(message):
    log.log(log.Level.WARN, message)
