"""The image adapter against the real debootstrap, as root.

The good build goes into the shared cache (built once, reused); builds meant to fail or to be
cancelled go into throw-away base directories.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from bolt.host import images
from bolt.host.images import ImageBuildFailed
from bolt.host.process import KILL_GRACE
from tests.integration.support import (
    TEST_DISTRO, cached_image_root, ensure_test_image, image_store, require_root, require_tools,
)


def mounts_below(path: str) -> list[str]:
    return images.mounts_under(path, "/proc/self/mountinfo")


class RealImageTests(unittest.TestCase):
    timeout = 600

    def setUp(self) -> None:
        require_root(self)
        require_tools(self, "debootstrap", "umount")

    def scratch_base(self) -> str:
        base = tempfile.mkdtemp(prefix="bolt-images-real-")
        self.addCleanup(shutil.rmtree, base, True)
        return base

    def assertNothingLeft(self, base: str) -> None:
        self.assertEqual([n for n in os.listdir(base) if n.startswith(".build-")], [])
        self.assertEqual(mounts_below(base), [])
        self.assertEqual(images.processes_using(base), [])

    @defer.inlineCallbacks
    def test_build_bookworm_minbase(self):
        path = yield ensure_test_image(reactor)
        root = cached_image_root()
        self.assertEqual(path, os.path.join(os.path.realpath(root), "debian", "bookworm"))
        # merged /usr: /bin is a relative link, so lexists/realpath stay inside the image
        self.assertEqual(os.readlink(os.path.join(path, "bin")), "usr/bin")
        self.assertTrue(os.path.isfile(os.path.join(path, "usr/bin/dash")))
        self.assertEqual(os.readlink(os.path.join(path, "usr/bin/sh")), "dash")
        with open(os.path.join(path, "etc/debian_version")) as f:
            self.assertTrue(f.read().startswith("12"))
        # minbase = Priority: required plus apt
        self.assertTrue(os.path.isfile(os.path.join(path, "usr/bin/apt-get")))
        self.assertTrue(os.path.isfile(os.path.join(path, "var/lib/dpkg/status")))
        self.assertFalse(os.path.exists(os.path.join(path, "debootstrap")))  # removed at the end of a good run
        # a fresh store finds it from the marker alone, and does not rebuild it
        store = image_store(reactor)
        info = store.get(TEST_DISTRO)
        self.assertEqual(info.state, "ready")
        self.assertGreater(info.size_bytes, 50 * 1024 * 1024)
        self.assertGreater(info.build_seconds, 0)
        self.assertTrue(info.built_at.endswith("Z"))
        again = yield store.ensure(TEST_DISTRO)
        self.assertEqual(again, path)
        self.assertEqual([i.distro for i in store.list() if i.state == "ready"], [TEST_DISTRO])
        self.assertNothingLeft(root)

    @defer.inlineCallbacks
    def test_failing_build_cleans_up(self):
        base = self.scratch_base()
        store = image_store(reactor, base, mirror="http://127.0.0.1:9/debian")
        try:
            yield store.ensure(TEST_DISTRO)
        except ImageBuildFailed as e:
            error = e
        else:
            self.fail("a build from a refused mirror succeeded")
        text = str(error)
        self.assertIn("debootstrap failed (exit code 1)", text)
        self.assertTrue(any(line.startswith("E: ") for line in error.tail), error.tail)
        self.assertIn("127.0.0.1:9", text)
        self.assertEqual(store.get(TEST_DISTRO).state, "failed")
        self.assertFalse(os.path.exists(os.path.join(base, "debian", "bookworm")))
        self.assertNothingLeft(base)

    @defer.inlineCallbacks
    def test_cancelled_build_cleans_up(self):
        """stop() mid-install: debootstrap is killed, its /proc and /sys mounts and dpkg are gone, no debris."""
        base = self.scratch_base()
        store = image_store(reactor, base)
        built = store.ensure(TEST_DISTRO)
        stages = []
        for _ in range(1200):  # up to 10 minutes, until debootstrap works inside the target
            stage = store.get(TEST_DISTRO).stage or ""
            if not stages or stages[-1] != stage:
                stages.append(stage)
            if stage.startswith(("Unpacking", "Configuring")) or built.called:
                break
            yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(built.called, f"the build ended before it could be cancelled; stages: {stages}")
        yield store.stop()
        try:
            yield built
        except ImageBuildFailed as e:
            self.assertIn("build cancelled", str(e))
        else:
            self.fail("a cancelled build succeeded")
        self.assertEqual(os.listdir(base), [])
        self.assertNothingLeft(base)
        # ReactorRunner leaves its SIGKILL timer armed after a cancel; let it expire so the reactor is clean.
        yield task.deferLater(reactor, KILL_GRACE + 0.5, lambda: None)
