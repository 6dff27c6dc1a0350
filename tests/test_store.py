"""Tests for bolt.store (one file per project, refusing damaged state) and bolt.atomic."""

from __future__ import annotations

import json
import os
import stat

from twisted.internet import defer
from twisted.trial import unittest

from bolt import atomic
from bolt.errors import InvalidInput, StateError
from bolt.model import Project, ResourceLimits
from bolt.store import ProjectStore
from tests.helpers import HeldThreads, inline


def project(name: str, cpu: int = 50000, created_at: str = "2024-05-01T12:34:56+00:00") -> Project:
    return Project(name, created_at, ResourceLimits(cpu, 256 * 1024 * 1024, 512))


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class StoreTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = os.path.join(os.path.abspath(self.mktemp()), "projects")
        self.store = ProjectStore(self.directory, run_in_thread=inline)
        self.store.load_all()  # creates the directory

    def save(self, p: Project) -> None:
        self.successResultOf(self.store.save(p))

    def fresh_load(self) -> dict:
        return ProjectStore(self.directory, run_in_thread=inline).load_all()

    def write(self, entry: str, content: bytes) -> str:
        path = os.path.join(self.directory, entry)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def assertStateError(self, path: str) -> StateError:
        try:
            result = self.fresh_load()
        except StateError as e:
            self.assertIn(path, str(e))
            return e
        self.fail(f"load_all returned {sorted(result)!r} instead of refusing {path}")


class RoundTripTests(StoreTestCase):
    def test_empty_directory(self) -> None:
        self.assertEqual(self.fresh_load(), {})

    def test_missing_directory_created(self) -> None:
        directory = os.path.join(os.path.abspath(self.mktemp()), "projects")
        self.assertEqual(ProjectStore(directory, run_in_thread=inline).load_all(), {})
        self.assertTrue(os.path.isdir(directory))

    def test_round_trip(self) -> None:
        alpha = project("alpha", cpu=150000, created_at="2023-12-31T23:59:59+00:00")
        beta = project("beta-2", cpu=1000, created_at="2024-02-29T00:00:00+00:00")
        self.save(alpha)
        self.save(beta)
        loaded = self.fresh_load()
        self.assertEqual(loaded, {"alpha": alpha, "beta-2": beta})
        self.assertEqual(loaded["alpha"].created_at, "2023-12-31T23:59:59+00:00")
        self.assertEqual(loaded["alpha"].resource_limits, ResourceLimits(150000, 256 * 1024 * 1024, 512))

    def test_created_at_kept_exactly(self) -> None:
        """The stored text comes back as written: no re-parsing, rounding or time-zone change."""
        for stamp in ["2024-05-01T12:34:56+00:00", "2024-05-01T12:34:56.123456+00:00",
                      "2024-05-01T14:34:56+02:00"]:
            self.save(project("stamp", created_at=stamp))
            self.assertEqual(self.fresh_load()["stamp"].created_at, stamp)

    def test_one_file_per_project_mode_0600(self) -> None:
        self.save(project("alpha"))
        self.save(project("beta"))
        self.assertEqual(sorted(os.listdir(self.directory)), ["alpha.json", "beta.json"])
        for entry in ["alpha.json", "beta.json"]:
            path = os.path.join(self.directory, entry)
            self.assertEqual(mode_of(path), 0o600)
            with open(path, "rb") as f:
                self.assertEqual(json.loads(f.read())["name"], entry[:-5])

    def test_saving_one_project_leaves_others_alone(self) -> None:
        self.save(project("alpha"))
        self.save(project("beta"))
        before = os.stat(os.path.join(self.directory, "beta.json"))
        self.save(project("alpha", cpu=70000))
        after = os.stat(os.path.join(self.directory, "beta.json"))
        self.assertEqual((before.st_ino, before.st_mtime_ns), (after.st_ino, after.st_mtime_ns))
        self.assertEqual(self.fresh_load()["alpha"].resource_limits.cpu_quota_us, 70000)

    def test_save_replaces(self) -> None:
        self.save(project("alpha", cpu=10000))
        self.save(project("alpha", cpu=20000))
        self.assertEqual(self.fresh_load()["alpha"].resource_limits.cpu_quota_us, 20000)
        self.assertEqual(os.listdir(self.directory), ["alpha.json"])

    def test_remove(self) -> None:
        self.save(project("alpha"))
        self.save(project("beta"))
        self.successResultOf(self.store.remove("alpha"))
        self.assertEqual(os.listdir(self.directory), ["beta.json"])
        self.assertEqual(set(self.fresh_load()), {"beta"})

    def test_invalid_name_refused_before_writing(self) -> None:
        outside = os.path.dirname(self.directory)
        before = sorted(os.listdir(outside))
        for name in ["../escape", "a/b", "", "UPPER", ".hidden"]:
            bad = Project(name, "2024-05-01T12:34:56+00:00", ResourceLimits(50000, 2 ** 24))
            self.assertRaises(InvalidInput, self.store.save, bad)
            self.assertRaises(InvalidInput, self.store.remove, name)
        self.assertEqual(os.listdir(self.directory), [])
        self.assertEqual(sorted(os.listdir(outside)), before)

    def test_default_thread_writes(self) -> None:
        """With the real thread pool, a save is on disk when its Deferred fires."""
        store = ProjectStore(self.directory)
        d = store.save(project("threaded", cpu=30000))

        def check(_):
            self.assertEqual(self.fresh_load()["threaded"].resource_limits.cpu_quota_us, 30000)
        return d.addCallback(check)


class OrderingTests(StoreTestCase):
    def test_saves_happen_in_call_order_one_at_a_time(self) -> None:
        held = HeldThreads()
        store = ProjectStore(self.directory, run_in_thread=held)
        results = [store.save(project("alpha", cpu=cpu)) for cpu in (10000, 20000, 30000)]
        self.assertEqual(len(held.calls), 1, "a second write must not start before the first ends")
        written = []
        while held.calls:
            held.run_next()
            written.append(self.fresh_load()["alpha"].resource_limits.cpu_quota_us)
        self.assertEqual(written, [10000, 20000, 30000])
        for d in results:
            self.assertIsNone(self.successResultOf(d))

    def test_remove_after_save_in_order(self) -> None:
        held = HeldThreads()
        store = ProjectStore(self.directory, run_in_thread=held)
        store.save(project("alpha"))
        removed = store.remove("alpha")
        held.run_next()
        held.run_next()
        self.successResultOf(removed)
        self.assertEqual(self.fresh_load(), {})

    def test_record_taken_when_save_is_asked(self) -> None:
        """Changing a record after save() does not leak into that (still pending) write."""
        held = HeldThreads()
        store = ProjectStore(self.directory, run_in_thread=held)
        alpha = project("alpha", cpu=10000)
        store.save(project("other"))  # keeps the lock busy so alpha's write waits
        d = store.save(alpha)
        alpha.resource_limits.cpu_quota_us = 99000
        held.run_next()
        held.run_next()
        self.successResultOf(d)
        self.assertEqual(self.fresh_load()["alpha"].resource_limits.cpu_quota_us, 10000)

    def test_failed_write_does_not_block_later_ones(self) -> None:
        calls = []

        def failing_once(f, *args):
            calls.append(f)
            if len(calls) == 1:
                return defer.fail(OSError(28, "No space left on device"))
            return defer.maybeDeferred(f, *args)

        store = ProjectStore(self.directory, run_in_thread=failing_once)
        self.failureResultOf(store.save(project("alpha", cpu=10000)), OSError)
        self.successResultOf(store.save(project("alpha", cpu=20000)))
        self.assertEqual(self.fresh_load()["alpha"].resource_limits.cpu_quota_us, 20000)


class DamageTests(StoreTestCase):
    def valid_bytes(self, name: str) -> bytes:
        return json.dumps(project(name).to_json()).encode()

    def test_torn_file(self) -> None:
        self.save(project("beta"))
        path = self.write("alpha.json", self.valid_bytes("alpha")[:25])
        self.assertStateError(path)

    def test_empty_file(self) -> None:
        path = self.write("alpha.json", b"")
        self.assertStateError(path)

    def test_garbage(self) -> None:
        path = self.write("alpha.json", b"\x00\xff\xfe garbage \x01")
        self.assertStateError(path)

    def test_wrong_shape(self) -> None:
        for content in [b"[]", b"null", b'{"name": "alpha"}',
                        b'{"name": "alpha", "created_at": "x", "resource_limits": {"cpu_quota_us": "lots"}}']:
            path = self.write("alpha.json", content)
            self.assertStateError(path)

    def test_invalid_name_inside(self) -> None:
        data = project("alpha").to_json()
        data["name"] = "../alpha"
        path = self.write("alpha.json", json.dumps(data).encode())
        self.assertStateError(path)

    def test_name_disagrees_with_file_name(self) -> None:
        path = self.write("beta.json", self.valid_bytes("alpha"))
        error = self.assertStateError(path)
        self.assertIn("alpha", str(error))

    def test_damaged_file_left_in_place(self) -> None:
        path = self.write("alpha.json", b"{torn")
        self.assertStateError(path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"{torn")

    def test_leftover_temp_files_removed(self) -> None:
        self.save(project("alpha", cpu=12000))
        leftovers = [self.write(".alpha.json.0123456789ab.tmp", b'{"name": "alpha", "cre'),
                     self.write(".beta.json.ba9876543210.tmp", b"\x00\x00")]
        loaded = self.fresh_load()
        self.assertEqual(set(loaded), {"alpha"})
        self.assertEqual(loaded["alpha"].resource_limits.cpu_quota_us, 12000)
        for path in leftovers:
            self.assertFalse(os.path.exists(path), path)

    def test_other_files_ignored(self) -> None:
        self.save(project("alpha"))
        self.write("README", b"not state")
        self.write("alpha.json.bak", b"{torn")
        self.assertEqual(set(self.fresh_load()), {"alpha"})


class AtomicWriteTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "target.json")

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def test_creates_and_replaces(self) -> None:
        atomic.atomic_write(self.path, b"first")
        self.assertEqual(self.read(self.path), b"first")
        atomic.atomic_write(self.path, b"second, longer content")
        self.assertEqual(self.read(self.path), b"second, longer content")
        atomic.atomic_write(self.path, b"")
        self.assertEqual(self.read(self.path), b"")
        self.assertEqual(os.listdir(self.directory), ["target.json"])

    def test_large_content(self) -> None:
        data = os.urandom(3 * 1024 * 1024 + 7)
        atomic.atomic_write(self.path, data)
        self.assertEqual(self.read(self.path), data)

    def test_mode_set_regardless_of_umask_and_old_mode(self) -> None:
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        with open(self.path, "wb") as f:
            f.write(b"old")
        os.chmod(self.path, 0o666)
        atomic.atomic_write(self.path, b"new", mode=0o644)
        self.assertEqual(mode_of(self.path), 0o644)
        atomic.atomic_write(self.path, b"newer")
        self.assertEqual(mode_of(self.path), 0o600)

    def test_relative_path(self) -> None:
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(self.directory)
        atomic.atomic_write("relative.txt", b"here")
        self.assertEqual(self.read(os.path.join(self.directory, "relative.txt")), b"here")
        self.assertEqual(sorted(os.listdir(self.directory)), ["relative.txt"])

    def test_failed_write_keeps_old_content_and_no_temp_file(self) -> None:
        atomic.atomic_write(self.path, b"precious")

        def broken_fsync(fd):
            raise OSError(5, "Input/output error")

        self.patch(atomic.os, "fsync", broken_fsync)
        self.assertRaises(OSError, atomic.atomic_write, self.path, b"replacement")
        self.assertEqual(self.read(self.path), b"precious")
        self.assertEqual(os.listdir(self.directory), ["target.json"])

    def test_symlink_at_temporary_path_not_followed(self) -> None:
        """An attacker's symlink at the temporary name must not redirect the write."""
        victim = os.path.join(self.directory, "victim")
        with open(victim, "wb") as f:
            f.write(b"victim content")

        class FixedSecrets:
            @staticmethod
            def token_hex(n):
                return "0" * (2 * n)

        self.patch(atomic, "secrets", FixedSecrets)
        tmp = os.path.join(self.directory, ".target.json.000000000000.tmp")
        os.symlink(victim, tmp)
        self.assertRaises(OSError, atomic.atomic_write, self.path, b"attacker wants this in victim")
        self.assertEqual(self.read(victim), b"victim content")
        self.assertFalse(os.path.lexists(self.path))
        self.assertTrue(os.path.islink(tmp), "the refusal must not delete someone else's file")

    def test_target_symlink_is_replaced_not_followed(self) -> None:
        """A symlink at the target path is replaced by the new file; its target is untouched."""
        victim = os.path.join(self.directory, "victim")
        with open(victim, "wb") as f:
            f.write(b"victim content")
        os.symlink(victim, self.path)
        atomic.atomic_write(self.path, b"new content")
        self.assertFalse(os.path.islink(self.path))
        self.assertEqual(self.read(self.path), b"new content")
        self.assertEqual(self.read(victim), b"victim content")
        self.assertEqual(mode_of(self.path), 0o600)

    def test_atomic_unlink(self) -> None:
        atomic.atomic_write(self.path, b"x")
        atomic.atomic_unlink(self.path)
        self.assertEqual(os.listdir(self.directory), [])
        self.assertRaises(FileNotFoundError, atomic.atomic_unlink, self.path)
