"""The plugin's logic, tested natively: the generated bindings' capability
functions are replaced by an in-memory file tree, so restore, plan and
verify run as in the agent, without it. (`plugin check` then checks the
built component on a real target.)"""

import json
import unittest

from componentize_py_types import Err
from wit_world.imports import files
from wit_world.imports import log
from wit_world.imports.files import FileError_NotFound
from wit_world.imports.types import RestoreOptions, SnapshotRecord, Target

import app


class Tree:
    """Files in memory, as the files capability would hold them."""

    def __init__(self, contents):
        self.contents = dict(contents)

    def read(self, path):
        if path not in self.contents:
            raise Err(FileError_NotFound(path))
        return self.contents[path].encode()

    def write(self, path, data):
        self.contents[path] = data.decode()

    def remove(self, path):
        self.contents.pop(path, None)


class RollbackTest(unittest.TestCase):
    def setUp(self):
        self.tree = Tree({"/etc/app/a.conf": "a=1\n"})
        files.read, files.write, files.remove = self.tree.read, self.tree.write, self.tree.remove
        log.log = lambda level, message: None
        self.target = Target("app", json.dumps({"files": ["/etc/app/a.conf", "/etc/app/b.conf"]}))
        self.plugin = app.Rollback()

    def snapshot(self):
        captured = self.plugin.snapshot(self.target)
        return SnapshotRecord(captured.data, captured.summary, 0)

    def test_a_restore_puts_files_back_and_removes_new_ones_then_changes_nothing(self):
        before = self.snapshot()
        self.tree.contents = {"/etc/app/a.conf": "a=2\n", "/etc/app/b.conf": "new\n"}
        options = RestoreOptions(False, False, "step-1")
        self.assertEqual(len(self.plugin.plan(self.target, before).changes), 2)
        done = self.plugin.restore(self.target, before, options)
        self.assertTrue(done.changed)
        self.assertEqual(self.tree.contents, {"/etc/app/a.conf": "a=1\n"})
        self.assertFalse(self.plugin.restore(self.target, before, options).changed)
        self.plugin.verify(self.target, before)

    def test_a_foreign_snapshot_is_a_typed_error(self):
        with self.assertRaises(Err):
            self.plugin.plan(self.target, SnapshotRecord("not json", "", 0))
        with self.assertRaises(Err):
            self.plugin.plan(self.target, SnapshotRecord('{"files": 3}', "", 0))


if __name__ == "__main__":
    unittest.main()
