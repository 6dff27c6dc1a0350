"""The overlay root filesystem adapter against the real kernel: real overlay mounts, real umount, as root.

The "image" is a tiny directory tree made in a temporary directory (no debootstrap needed).  Every test
registers a cleanup first that lazily unmounts anything left below its temporary directories and then
removes them, so a failing test leaves no mount and no directory behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from unittest import SkipTest

from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from bolt.host import safefs
from bolt.host.process import ReactorRunner
from bolt.host.rootfs import RootFS, parse_mountinfo

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require_root_or_fail_in_ci(testcase: unittest.TestCase) -> None:
    """Skip when not root (or mount tools are missing), except in CI (CI=true), where that is a failure."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root for real overlay mounts"
    elif not all(shutil.which(tool, path=SYSTEM_PATH) for tool in ("mount", "umount")):
        reason = "needs mount and umount"
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        testcase.fail(f"{reason} (CI=true: this integration test must run, not skip)")
    raise SkipTest(reason)


def mounts_below(top: str) -> list[str]:
    """Mount points at or below ``top`` in this process's namespace, deepest first."""
    with open("/proc/self/mountinfo", "rb") as f:
        entries = parse_mountinfo(f.read())
    found = [(i, e.mount_point) for i, e in enumerate(entries)
             if e.mount_point == top or e.mount_point.startswith(top + "/")]
    found.sort(key=lambda pair: (pair[1].count("/"), pair[0]), reverse=True)
    return [mount_point for _, mount_point in found]


def force_cleanup(top: str) -> None:
    """Lazily unmount everything below ``top``, then remove it (shutil.rmtree does not follow symlinks)."""
    for mount_point in mounts_below(top):
        subprocess.run(["umount", "--lazy", mount_point], check=False, capture_output=True)
    left = mounts_below(top)
    if left:
        raise AssertionError(f"could not unmount {left}; not removing {top}")
    shutil.rmtree(top, ignore_errors=True)


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def tree_snapshot(top: str) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Everything about a tree that destroy must not change: names, modes, mtimes, contents, link targets."""
    snap: dict[str, tuple[int, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for entry in dirnames + filenames + [""]:
            path = os.path.join(dirpath, entry) if entry else dirpath
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content: bytes | str | None = f.read()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = None
            snap[os.path.relpath(path, top)] = (st.st_mode, st.st_mtime_ns, content)
    return snap


class RealRootFSTests(unittest.TestCase):
    def setUp(self) -> None:
        require_root_or_fail_in_ci(self)
        self.decoy = tempfile.mkdtemp(prefix="bolt-test-decoy-")
        self.addCleanup(force_cleanup, self.decoy)
        self.top = tempfile.mkdtemp(prefix="bolt-test-rootfs-")
        self.addCleanup(force_cleanup, self.top)  # runs first: unmounts before anything is removed

        self.image = os.path.join(self.top, "image")
        for sub in ("etc", "usr/share/doc", "mnt", "srv", "root"):
            os.makedirs(os.path.join(self.image, sub))
        os.chmod(self.image, 0o755)
        self.write(os.path.join(self.image, "etc", "hostname"), b"image\n")
        self.write(os.path.join(self.image, "etc", "os-release"), b'NAME="Tiny"\n')
        self.write(os.path.join(self.image, "usr", "share", "doc", "readme"), b"read me\n")
        self.write(os.path.join(self.image, "big"), os.urandom(4 << 20))
        self.image_before = tree_snapshot(self.image)

        self.write(os.path.join(self.decoy, "canary"), b"still here\n")
        os.makedirs(os.path.join(self.decoy, "sub"))
        self.write(os.path.join(self.decoy, "sub", "inner"), b"inner\n")
        os.symlink(os.path.join(self.decoy, "canary"), os.path.join(self.decoy, "canary-link"))
        self.decoy_before = tree_snapshot(self.decoy)

        self.sandboxes = os.path.join(self.top, "sandboxes")
        self.rootfs = RootFS(self.sandboxes, ReactorRunner())

    @staticmethod
    def write(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    @staticmethod
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def assertNothingLeft(self, base: str) -> None:
        self.assertEqual(mounts_below(self.sandboxes), [])
        self.assertFalse(os.path.lexists(base))
        self.assertEqual(os.listdir(self.sandboxes), [])
        self.assertEqual(tree_snapshot(self.image), self.image_before)
        self.assertEqual(tree_snapshot(self.decoy), self.decoy_before)

    @defer.inlineCallbacks
    def test_create_write_destroy(self):
        p = yield self.rootfs.create("proj", "box", self.image)
        self.assertEqual(mounts_below(self.sandboxes), [p.rootfs])
        (entry,) = [e for e in self.rootfs.mounts() if e.mount_point == p.rootfs]
        self.assertEqual(entry.fstype, "overlay")
        self.assertIn("lowerdir=lower,upperdir=upper,workdir=work", entry.super_options)
        self.assertNotIn(self.top, entry.super_options)  # no host path for the sandbox to read

        # The image shows through; the sandbox's / looks like a normal root directory.
        self.assertEqual(self.read(os.path.join(p.rootfs, "etc", "hostname")), b"image\n")
        self.assertEqual(self.read(os.path.join(p.rootfs, "usr", "share", "doc", "readme")), b"read me\n")
        root = os.stat(p.rootfs)
        self.assertEqual(stat.S_IMODE(root.st_mode), 0o755)
        self.assertEqual((root.st_uid, root.st_gid), (0, 0))

        # Writes land in upper; the image is unchanged.
        self.write(os.path.join(p.rootfs, "etc", "hostname"), b"box\n")
        self.write(os.path.join(p.rootfs, "new"), b"new\n")
        os.unlink(os.path.join(p.rootfs, "usr", "share", "doc", "readme"))
        self.assertEqual(self.read(os.path.join(p.upper, "etc", "hostname")), b"box\n")
        self.assertEqual(self.read(os.path.join(p.upper, "new")), b"new\n")
        whiteout = os.lstat(os.path.join(p.upper, "usr", "share", "doc", "readme"))
        self.assertTrue(stat.S_ISCHR(whiteout.st_mode))
        self.assertEqual(tree_snapshot(self.image), self.image_before)

        yield self.rootfs.destroy("proj", "box")
        self.assertNothingLeft(p.base)

    @defer.inlineCallbacks
    def test_image_is_never_copied(self):
        p = yield self.rootfs.create("proj", "box", self.image)
        self.assertEqual(os.listdir(p.upper), [])
        self.assertEqual(os.listdir(p.work), ["work"])  # the kernel's scratch dir, nothing else
        used = yield self.rootfs.disk_usage("proj", "box")
        self.assertLess(used, 64 * 1024)  # the image holds a 4 MiB file
        self.assertEqual(len(self.read(os.path.join(p.rootfs, "big"))), 4 << 20)
        yield self.rootfs.destroy("proj", "box")
        self.assertNothingLeft(p.base)

    @defer.inlineCallbacks
    def test_destroy_never_follows_sandbox_symlinks(self):
        p = yield self.rootfs.create("proj", "box", self.image)
        # What a hostile sandbox could do from the inside: /etc becomes a link to a host directory.
        shutil.rmtree(os.path.join(p.rootfs, "etc"))
        os.symlink(self.decoy, os.path.join(p.rootfs, "etc"))
        os.symlink(os.path.join(self.decoy, "canary"), os.path.join(p.rootfs, "canary-link"))
        os.symlink(os.path.join(self.decoy, "sub"), os.path.join(p.rootfs, "usr", "share", "doc", "sub"))
        os.symlink(os.path.join(self.decoy, "canary-link"), os.path.join(p.rootfs, "root", "chain"))
        self.assertTrue(os.path.islink(os.path.join(p.upper, "etc")))
        # Through the link, the host directory is visible from the host side: it is the real thing.
        self.assertEqual(self.read(os.path.join(p.rootfs, "etc", "canary")), b"still here\n")

        yield self.rootfs.destroy("proj", "box")
        self.assertNothingLeft(p.base)
        self.assertEqual(self.read(os.path.join(self.decoy, "canary")), b"still here\n")

    def lazy_events(self, events) -> list[str]:
        return [e["path"] for e in events if e["log_format"] == "{path} is busy; detaching it lazily"]

    @defer.inlineCallbacks
    def test_nested_mounts_are_unmounted_first(self):
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        p = yield self.rootfs.create("proj", "box", self.image)
        mnt = os.path.join(p.rootfs, "mnt")
        sh("mount", "-t", "tmpfs", "-o", "size=1m", "bolt-test-tmpfs", mnt)
        os.makedirs(os.path.join(mnt, "deep dir"))
        sh("mount", "-t", "tmpfs", "-o", "size=1m", "bolt-test-tmpfs", os.path.join(mnt, "deep dir"))
        self.write(os.path.join(mnt, "deep dir", "file"), b"x")
        # A host directory bind-mounted into the sandbox: unmounted, never emptied.
        sh("mount", "--bind", self.decoy, os.path.join(p.rootfs, "srv"))
        self.assertEqual(len(mounts_below(p.base)), 4)

        yield self.rootfs.destroy("proj", "box")
        self.assertNothingLeft(p.base)
        self.assertEqual(self.lazy_events(events), [])  # each one unmounted properly, deepest first

    @defer.inlineCallbacks
    def test_busy_mount_is_detached_lazily(self):
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        p = yield self.rootfs.create("proj", "box", self.image)
        held = open(os.path.join(p.rootfs, "etc", "hostname"), "rb")
        self.addCleanup(held.close)
        yield self.rootfs.destroy("proj", "box")
        self.assertNothingLeft(p.base)
        self.assertEqual(self.lazy_events(events), [p.rootfs])
        self.assertEqual(held.read(), b"image\n")  # the detached mount lives on for its last user

    @defer.inlineCallbacks
    def test_mount_again_after_reboot(self):
        p = yield self.rootfs.create("proj", "box", self.image)
        self.write(os.path.join(p.rootfs, "etc", "hostname"), b"kept\n")
        sh("umount", p.rootfs)  # what a reboot does to the mount
        self.assertFalse(self.rootfs.is_mounted(p.rootfs))

        again = yield self.rootfs.mount("proj", "box", self.image)
        self.assertEqual(again, p)
        self.assertTrue(self.rootfs.is_mounted(p.rootfs))
        self.assertEqual(self.read(os.path.join(p.rootfs, "etc", "hostname")), b"kept\n")
        yield self.rootfs.mount("proj", "box", self.image)  # already mounted: nothing happens
        self.assertEqual(mounts_below(p.base), [p.rootfs])

        yield self.rootfs.destroy("proj", "box")
        self.assertNothingLeft(p.base)

    @defer.inlineCallbacks
    def test_stray_mounts_and_directories(self):
        a = yield self.rootfs.create("proj", "a", self.image)
        b = yield self.rootfs.create("proj", "b", self.image)
        self.assertEqual(self.rootfs.list_on_disk(), [("proj", "a"), ("proj", "b")])
        self.assertEqual(self.rootfs.stray_mounts({("proj", "a"), ("proj", "b")}), [])
        strays = self.rootfs.stray_mounts({("proj", "a")})
        self.assertEqual(strays, [b.rootfs])
        self.assertEqual(self.rootfs.sandbox_of(strays[0]), ("proj", "b"))

        yield self.rootfs.remove_stray("proj", "b")
        self.assertEqual(self.rootfs.stray_mounts({("proj", "a")}), [])
        self.assertEqual(self.rootfs.list_on_disk(), [("proj", "a")])
        self.assertFalse(os.path.lexists(b.base))
        self.assertTrue(self.rootfs.is_mounted(a.rootfs))

        yield self.rootfs.destroy("proj", "a")
        self.assertNothingLeft(a.base)

    @defer.inlineCallbacks
    def test_destroy_twice(self):
        p = yield self.rootfs.create("proj", "box", self.image)
        yield self.rootfs.destroy("proj", "box")
        yield self.rootfs.destroy("proj", "box")
        self.assertNothingLeft(p.base)

    def test_removal_refuses_to_cross_real_mounts(self):
        """safefs itself, below the mountinfo check: a bind mount on the same filesystem (same st_dev,
        told apart by mount id) and a tmpfs (another st_dev) both stop the removal untouched."""
        for kind in ("bind", "tmpfs"):
            tree = os.path.join(self.top, f"tree-{kind}")
            os.makedirs(os.path.join(tree, "a", "inside"))
            target = os.path.join(tree, "a", "inside")
            if kind == "bind":
                sh("mount", "--bind", self.decoy, target)
            else:
                sh("mount", "-t", "tmpfs", "-o", "size=1m", "bolt-test-tmpfs", target)
                self.write(os.path.join(target, "precious"), b"x")
            fd = safefs.open_dir(self.top)
            try:
                self.assertRaises(safefs.MountBoundaryError, safefs.remove_tree, fd, f"tree-{kind}")
            finally:
                os.close(fd)
            if kind == "tmpfs":
                self.assertEqual(os.listdir(target), ["precious"])
            sh("umount", target)
        self.assertEqual(tree_snapshot(self.decoy), self.decoy_before)
