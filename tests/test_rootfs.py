"""Unit tests for the overlay root filesystem adapter and the symlink-safe file helpers.

No root needed: mounts are a fake mountinfo file that the fake runner's commands edit, and directory
trees are real but plain.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from bolt.host import safefs
from bolt.host.rootfs import (
    RootFS,
    RootFSBusyError,
    RootFSError,
    RootFSExistsError,
    SandboxPaths,
    UnsafePathError,
    parse_mountinfo,
)
from tests.fakes import Expect, FakeRunner

HOST_LINES = [
    "22 27 0:21 / /proc rw,relatime - proc proc rw",
    "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
]


def sync_threads(f, *args, **kwargs):
    """Run "thread" work inline so tests stay synchronous."""
    return defer.maybeDeferred(f, *args, **kwargs)


def escape(path: str) -> str:
    return (path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
            .replace("\n", "\\012"))


class FakeMountTable:
    """A mountinfo file that tests (and fake commands, via side effects) add mounts to and remove from."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines = list(HOST_LINES)
        self._next_id = 100
        self.write()

    def write(self) -> None:
        with open(self.path, "w") as f:
            f.write("".join(line + "\n" for line in self.lines))

    def add(self, mount_point: str, fstype: str = "overlay", source: str = "overlay") -> None:
        self._next_id += 1
        self.lines.append(f"{self._next_id} 27 0:{self._next_id} / {escape(mount_point)} rw,relatime - "
                          f"{fstype} {source} rw")
        self.write()

    def remove(self, mount_point: str) -> None:
        """Remove the topmost mount at ``mount_point`` (what umount does)."""
        wanted = escape(mount_point)
        for i in range(len(self.lines) - 1, -1, -1):
            if self.lines[i].split(" ")[4] == wanted:
                del self.lines[i]
                self.write()
                return
        raise AssertionError(f"{mount_point} not mounted")

    def remove_below(self, top: str) -> None:
        """What a lazy umount does: the mount and everything below it go."""
        self.lines = [line for line in self.lines
                      if not (parse_mountinfo(line.encode())[0].mount_point + "/").startswith(top + "/")]
        self.write()

    def umount(self, mount_point: str) -> Expect:
        return Expect(["umount", mount_point], side_effect=lambda: self.remove(mount_point))


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class Base(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="bolt-unit-rootfs-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.sandboxes = os.path.join(self.tmp, "sandboxes")
        self.image = os.path.join(self.tmp, "image")
        os.makedirs(os.path.join(self.image, "etc"))
        with open(os.path.join(self.image, "etc", "hostname"), "w") as f:
            f.write("image\n")
        self.table = FakeMountTable(os.path.join(self.tmp, "mountinfo"))
        self.runner = FakeRunner()
        self.rootfs = RootFS(self.sandboxes, self.runner, threads=sync_threads, mountinfo_path=self.table.path)

    def mount_expect(self, project: str, name: str, lower: str | None = None) -> Expect:
        p = self.rootfs.paths(project, name)
        lower = lower or self.image

        def mounted() -> None:
            # The options are relative to the base directory; its "lower" link names the image.
            self.assertEqual(os.readlink(os.path.join(p.base, "lower")), lower)
            self.table.add(p.rootfs)

        return Expect(
            ["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=lower,upperdir=upper,workdir=work,index=off,metacopy=off", p.rootfs],
            side_effect=mounted)

    def make(self, project: str = "proj", name: str = "box") -> SandboxPaths:
        self.runner.expect(self.mount_expect(project, name))
        paths = self.successResultOf(self.rootfs.create(project, name, self.image))
        self.runner.assertDone()
        return paths


class PathsTests(Base):
    def test_layout(self) -> None:
        p = self.rootfs.paths("proj", "web-1")
        base = os.path.join(os.path.realpath(self.sandboxes), "proj", "web-1")
        self.assertEqual(p, SandboxPaths(base=base, upper=base + "/upper", work=base + "/work",
                                         rootfs=base + "/rootfs"))

    def test_valid_names(self) -> None:
        for name in ("a", "0", "web-1", "x_y", "a" * 63):
            self.rootfs.paths(name, name)

    def test_invalid_names(self) -> None:
        for bad in ("", "A", "-a", "_a", "a/b", "..", ".", "a b", "a" * 64, "a\n", "é", "a.b"):
            self.assertRaises(ValueError, self.rootfs.paths, bad, "ok")
            self.assertRaises(ValueError, self.rootfs.paths, "ok", bad)

    def test_invalid_name_fails_create_without_commands(self) -> None:
        self.failureResultOf(self.rootfs.create("../etc", "x", self.image), ValueError)
        self.assertEqual(self.runner.ran, [])
        self.assertFalse(os.path.exists(self.sandboxes))

    def test_sandboxes_dir_resolved(self) -> None:
        link = os.path.join(self.tmp, "link")
        os.symlink(self.tmp, link)
        rootfs = RootFS(os.path.join(link, "sandboxes"), self.runner, threads=sync_threads)
        self.assertEqual(rootfs.sandboxes_dir, os.path.join(os.path.realpath(self.tmp), "sandboxes"))


class OptionSyntaxTests(Base):
    def test_lower_with_option_syntax_rejected(self) -> None:
        for bad in ("/img,upperdir=/x", "/img:/other", "/img\\x", '/img"', "/img\nx"):
            f = self.failureResultOf(self.rootfs.create("proj", "box", bad), UnsafePathError)
            self.assertIsInstance(f.value, ValueError)
        self.assertEqual(self.runner.ran, [])
        self.assertFalse(os.path.exists(self.sandboxes))

    def test_lower_relative_or_unnormalized_rejected(self) -> None:
        for bad in ("img", "/img/../etc", "/img/", "//img"):
            self.failureResultOf(self.rootfs.create("proj", "box", bad), UnsafePathError)
        self.assertEqual(self.runner.ran, [])

    def test_lower_inside_sandboxes_dir_rejected(self) -> None:
        other = self.make("proj", "other")
        for bad in (other.upper, os.path.join(self.rootfs.paths("proj", "box").base, "upper"),
                    self.rootfs.sandboxes_dir, os.path.dirname(self.rootfs.sandboxes_dir)):
            self.failureResultOf(self.rootfs.create("proj", "box", bad), UnsafePathError)
        self.assertEqual(len(self.runner.ran), 1)

    def test_sandboxes_dir_with_option_syntax_rejected(self) -> None:
        for bad in ("/srv/a,b", "/srv/a:b", "/srv/a\\b"):
            self.assertRaises(ValueError, RootFS, bad, self.runner, threads=sync_threads)
        self.assertRaises(ValueError, RootFS, "relative/dir", self.runner, threads=sync_threads)

    def test_mount_rejects_too(self) -> None:
        self.failureResultOf(self.rootfs.mount("proj", "box", "/a,b"), UnsafePathError)
        self.assertEqual(self.runner.ran, [])


class CreateTests(Base):
    def test_create_mounts_overlay(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        old = os.umask(0o077)  # a strict umask must not change the modes
        try:
            paths = self.make()
        finally:
            os.umask(old)
        self.assertEqual(paths, self.rootfs.paths("proj", "box"))
        self.assertEqual(self.runner.ran, [tuple(self.mount_expect("proj", "box").argv)])
        self.assertTrue(self.rootfs.is_mounted(paths.rootfs))
        self.assertEqual(mode(paths.base), 0o750)
        self.assertEqual(mode(os.path.dirname(paths.base)), 0o750)
        self.assertEqual(mode(paths.upper), 0o755)
        self.assertEqual(mode(paths.work), 0o750)
        self.assertEqual(mode(paths.rootfs), 0o750)
        self.assertEqual(sorted(os.listdir(paths.base)), ["lower", "rootfs", "upper", "work"])
        self.assertEqual(os.listdir(paths.upper), [])
        mounted = [e for e in events if e["log_format"] == "sandbox rootfs {project}/{name} mounted"]
        self.assertEqual(len(mounted), 1)
        self.assertEqual((mounted[0]["project"], mounted[0]["name"]), ("proj", "box"))

    def test_existing_directory_is_not_reused(self) -> None:
        p = self.make()
        with open(os.path.join(p.upper, "keep"), "w") as f:
            f.write("data")
        self.failureResultOf(self.rootfs.create("proj", "box", self.image), RootFSExistsError)
        self.assertTrue(os.path.exists(os.path.join(p.upper, "keep")))
        self.assertEqual(len(self.runner.ran), 1)

    def test_missing_image(self) -> None:
        self.failureResultOf(self.rootfs.create("proj", "box", self.image + "-gone"), RootFSError)
        self.assertEqual(self.runner.ran, [])
        self.assertEqual(os.listdir(self.sandboxes) if os.path.exists(self.sandboxes) else [], [])

    def test_symlinked_project_dir_refused(self) -> None:
        decoy = os.path.join(self.tmp, "decoy")
        os.makedirs(decoy)
        os.makedirs(self.sandboxes)
        os.symlink(decoy, os.path.join(self.sandboxes, "proj"))
        self.failureResultOf(self.rootfs.create("proj", "box", self.image), OSError)
        self.assertEqual(os.listdir(decoy), [])
        self.assertEqual(self.runner.ran, [])

    def test_mount_failure_rolls_back(self) -> None:
        self.make("proj", "other")
        p = self.rootfs.paths("proj", "box")
        self.runner.expect(Expect(self.mount_expect("proj", "box").argv, exit_code=32,
                                  stderr=b"mount: wrong fs type, bad option\n"))
        f = self.failureResultOf(self.rootfs.create("proj", "box", self.image), RootFSError)
        self.assertIn("wrong fs type", str(f.value))
        self.assertFalse(os.path.lexists(p.base))
        self.assertTrue(os.path.isdir(self.rootfs.paths("proj", "other").upper))

    def test_half_made_directories_removed(self) -> None:
        real = safefs.make_dir

        def make_dir(parent_fd, name, mode, **kw):
            if name == "work":
                raise OSError(28, "No space left on device")
            return real(parent_fd, name, mode, **kw)

        self.patch(safefs, "make_dir", make_dir)
        f = self.failureResultOf(self.rootfs.create("proj", "box", self.image), OSError)
        self.assertIn("No space", str(f.value))
        self.assertEqual(os.listdir(self.rootfs.sandboxes_dir), [])
        self.assertEqual(self.runner.ran, [])

    def test_mount_failure_removes_new_project_dir(self) -> None:
        p = self.rootfs.paths("proj", "box")
        self.runner.expect(Expect(self.mount_expect("proj", "box").argv, exit_code=32))
        self.failureResultOf(self.rootfs.create("proj", "box", self.image), RootFSError)
        self.assertFalse(os.path.lexists(os.path.dirname(p.base)))
        self.assertTrue(os.path.isdir(self.rootfs.sandboxes_dir))

    def test_cancel_after_mount_happened_unmounts_and_rolls_back(self) -> None:
        p = self.rootfs.paths("proj", "box")
        mount = self.mount_expect("proj", "box")
        mount.hold = True
        self.runner.expect(mount, self.table.umount(p.rootfs))
        d = self.rootfs.create("proj", "box", self.image)
        self.assertTrue(self.rootfs.is_mounted(p.rootfs))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.runner.assertDone()
        self.assertFalse(self.rootfs.is_mounted(p.rootfs))
        self.assertFalse(os.path.lexists(p.base))


class MountInfoTests(Base):
    def test_parse_fields_and_escapes(self) -> None:
        data = (b"36 35 98:0 /mnt1 /mnt/with\\040space\\011tab\\012nl\\134bs rw,noatime master:1 shared:2"
                b" - ext3 /dev/root rw,errors=continue\n"
                b"40 36 0:50 / /empty\\040source rw - overlay  rw,lowerdir=/a\n")
        first, second = parse_mountinfo(data)
        self.assertEqual(first.mount_id, 36)
        self.assertEqual(first.parent_id, 35)
        self.assertEqual(first.device, "98:0")
        self.assertEqual(first.root, "/mnt1")
        self.assertEqual(first.mount_point, "/mnt/with space\ttab\nnl\\bs")
        self.assertEqual(first.optional, ("master:1", "shared:2"))
        self.assertEqual((first.fstype, first.source, first.super_options), ("ext3", "/dev/root",
                                                                          "rw,errors=continue"))
        self.assertEqual(second.mount_point, "/empty source")
        self.assertEqual((second.fstype, second.source), ("overlay", ""))
        self.assertEqual(second.optional, ())

    def test_parse_non_utf8(self) -> None:
        (entry,) = parse_mountinfo(b"1 0 0:1 / /caf\xe9 rw - tmpfs tmpfs rw\n")
        self.assertEqual(os.fsencode(entry.mount_point), b"/caf\xe9")

    def test_parse_malformed(self) -> None:
        self.assertRaises(ValueError, parse_mountinfo, b"1 0 0:1 / /x rw tmpfs tmpfs rw\n")
        self.assertRaises(ValueError, parse_mountinfo, b"x 0 0:1 / /x rw - tmpfs tmpfs rw\n")

    def test_parse_real_file(self) -> None:
        with open("/proc/self/mountinfo", "rb") as f:
            entries = parse_mountinfo(f.read())
        self.assertIn("/", [e.mount_point for e in entries])

    def test_is_mounted_with_escaped_space(self) -> None:
        self.table.add("/srv/my dir")
        self.assertTrue(self.rootfs.is_mounted("/srv/my dir"))
        self.assertTrue(self.rootfs.is_mounted("/srv/my dir/"))
        self.assertFalse(self.rootfs.is_mounted("/srv/my"))
        self.assertFalse(self.rootfs.is_mounted("/srv/my\\040dir"))

    def test_mounts_below_deepest_and_topmost_first(self) -> None:
        self.table.add("/a")
        self.table.add("/a/b")
        self.table.add("/a/b/c")
        self.table.add("/ab")
        self.table.add("/a/b")  # stacked on the first /a/b
        below = self.rootfs.mounts_below("/a")
        self.assertEqual([e.mount_point for e in below], ["/a/b/c", "/a/b", "/a/b", "/a"])
        self.assertGreater(below[1].mount_id, below[2].mount_id)


class DestroyTests(Base):
    def nest(self, p: SandboxPaths, *relative: str) -> list[str]:
        points = []
        for rel in relative:
            path = os.path.join(p.rootfs, rel)
            os.makedirs(path, exist_ok=True)
            self.table.add(path, fstype="tmpfs", source="tmpfs")
            points.append(path)
        return points

    def test_destroy_unmounts_then_removes(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        p = self.make()
        other = self.make("proj", "other")
        self.runner.expect(self.table.umount(p.rootfs))
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.runner.assertDone()
        self.assertFalse(os.path.lexists(p.base))
        self.assertTrue(self.rootfs.is_mounted(other.rootfs))
        self.assertTrue(os.path.isdir(other.upper))
        self.assertIn("sandbox rootfs {project}/{name} removed", [e["log_format"] for e in events])

    def test_destroy_removes_empty_project_dir(self) -> None:
        p = self.make()
        self.runner.expect(self.table.umount(p.rootfs))
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.assertFalse(os.path.lexists(os.path.dirname(p.base)))
        self.assertEqual(os.listdir(self.rootfs.sandboxes_dir), [])

    def test_nested_mounts_deepest_first(self) -> None:
        p = self.make()
        proc, deeper, spaced, spaced_deeper = self.nest(p, "proc", "mnt/a/deeper", "mnt/a b", "mnt/a b/c")
        self.table.add("/elsewhere")
        self.runner.expect(
            self.table.umount(spaced_deeper),
            self.table.umount(deeper),
            self.table.umount(spaced),
            self.table.umount(proc),
            self.table.umount(p.rootfs),
        )
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.runner.assertDone()
        self.assertFalse(os.path.lexists(p.base))
        self.assertTrue(self.rootfs.is_mounted("/elsewhere"))

    def test_stacked_mounts_each_unmounted(self) -> None:
        p = self.make()
        self.table.add(p.rootfs)
        self.runner.expect(self.table.umount(p.rootfs), self.table.umount(p.rootfs))
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.runner.assertDone()

    def test_busy_falls_back_to_lazy(self) -> None:
        p = self.make()
        self.runner.expect(
            Expect(["umount", p.rootfs], exit_code=32, stderr=f"umount: {p.rootfs}: target is busy.\n".encode()),
            Expect(["umount", "--lazy", p.rootfs], side_effect=lambda: self.table.remove(p.rootfs)),
        )
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.runner.assertDone()
        self.assertFalse(os.path.lexists(p.base))

    def test_other_umount_failure_keeps_files(self) -> None:
        p = self.make()
        self.runner.expect(Expect(["umount", p.rootfs], exit_code=32, stderr=b"umount: permission denied\n"))
        f = self.failureResultOf(self.rootfs.destroy("proj", "box"), RootFSError)
        self.assertIn("permission denied", str(f.value))
        self.assertTrue(os.path.isdir(p.upper))

    def test_umount_failure_when_already_gone_is_fine(self) -> None:
        p = self.make()
        self.runner.expect(Expect(["umount", p.rootfs], exit_code=32, stderr=b"umount: not mounted.\n",
                                  side_effect=lambda: self.table.remove(p.rootfs)))
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.assertFalse(os.path.lexists(p.base))

    def test_still_mounted_after_umount_keeps_files(self) -> None:
        p = self.make()
        self.runner.expect(Expect(["umount", p.rootfs]))  # claims success, mount stays
        self.failureResultOf(self.rootfs.destroy("proj", "box"), RootFSBusyError)
        self.runner.assertDone()
        self.assertTrue(os.path.isdir(p.upper))

    def test_symlinked_mount_path_detaches_clean_parent(self) -> None:
        p = self.make()
        decoy = os.path.join(self.tmp, "decoy")
        os.makedirs(os.path.join(decoy, "x"))
        # The sandbox made /mnt a symlink after something was mounted at /mnt/x.
        self.table.add(os.path.join(p.rootfs, "mnt", "x"), fstype="tmpfs")
        os.symlink(decoy, os.path.join(p.rootfs, "mnt"))
        self.runner.expect(
            Expect(["umount", p.rootfs], exit_code=32, stderr=b"umount: target is busy.\n"),
            Expect(["umount", "--lazy", p.rootfs], side_effect=lambda: self.table.remove_below(p.rootfs)),
        )
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.runner.assertDone()
        self.assertTrue(os.path.isdir(os.path.join(decoy, "x")))

    def test_destroy_without_directory_succeeds(self) -> None:
        self.successResultOf(self.rootfs.destroy("proj", "never"))
        self.assertEqual(self.runner.ran, [])

    def test_destroy_does_not_follow_symlinks(self) -> None:
        decoy = os.path.join(self.tmp, "decoy")
        os.makedirs(os.path.join(decoy, "sub"))
        canary = os.path.join(decoy, "canary")
        with open(canary, "w") as f:
            f.write("alive")
        p = self.make()
        os.symlink(decoy, os.path.join(p.upper, "etc"))
        os.symlink(canary, os.path.join(p.upper, "canary-link"))
        os.makedirs(os.path.join(p.upper, "var", "lib"))
        os.symlink(decoy + "/sub", os.path.join(p.upper, "var", "lib", "dpkg"))
        os.symlink("/", os.path.join(p.upper, "var", "root-link"))
        self.runner.expect(self.table.umount(p.rootfs))
        self.successResultOf(self.rootfs.destroy("proj", "box"))
        self.assertFalse(os.path.lexists(p.base))
        self.assertEqual(sorted(os.listdir(decoy)), ["canary", "sub"])
        with open(canary) as f:
            self.assertEqual(f.read(), "alive")

    def test_destroy_refuses_to_cross_a_mount(self) -> None:
        """A mount that mountinfo does not show (another namespace's view) is still never deleted through."""
        p = self.make()
        held = os.path.join(p.upper, "held")
        os.makedirs(held)
        with open(os.path.join(held, "precious"), "w") as f:
            f.write("x")
        self.patch(safefs, "mount_id", fake_mount_ids(held))
        self.runner.expect(self.table.umount(p.rootfs))
        f = self.failureResultOf(self.rootfs.destroy("proj", "box"), safefs.MountBoundaryError)
        self.assertIn("held", str(f.value))
        self.assertTrue(os.path.exists(os.path.join(held, "precious")))


def fake_mount_ids(mounted: str):
    """A mount_id() that puts ``mounted`` on mount 2 and everything else on mount 1."""
    target = os.lstat(mounted)

    def mount_id(fd: int) -> int:
        st = os.fstat(fd)
        return 2 if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) else 1

    return mount_id


class RemountTests(Base):
    def test_already_mounted_is_noop(self) -> None:
        p = self.make()
        self.assertEqual(self.successResultOf(self.rootfs.mount("proj", "box", self.image)), p)
        self.assertEqual(len(self.runner.ran), 1)

    def test_mount_after_reboot(self) -> None:
        p = self.make()
        self.table.remove(p.rootfs)
        shutil.rmtree(p.work)
        self.runner.expect(self.mount_expect("proj", "box"))
        self.assertEqual(self.successResultOf(self.rootfs.mount("proj", "box", self.image)), p)
        self.runner.assertDone()
        self.assertTrue(self.rootfs.is_mounted(p.rootfs))
        self.assertEqual(mode(p.work), 0o750)

    def test_missing_upper_fails_without_mounting(self) -> None:
        p = self.make()
        self.table.remove(p.rootfs)
        os.rmdir(p.upper)
        self.failureResultOf(self.rootfs.mount("proj", "box", self.image), RootFSError)
        self.assertEqual(len(self.runner.ran), 1)

    def test_symlinked_upper_fails(self) -> None:
        p = self.make()
        self.table.remove(p.rootfs)
        os.rmdir(p.upper)
        os.symlink(self.tmp, p.upper)
        self.failureResultOf(self.rootfs.mount("proj", "box", self.image), RootFSError)
        self.assertEqual(len(self.runner.ran), 1)

    def test_mount_failure_keeps_data(self) -> None:
        p = self.make()
        self.table.remove(p.rootfs)
        self.runner.expect(Expect(self.mount_expect("proj", "box").argv, exit_code=32))
        self.failureResultOf(self.rootfs.mount("proj", "box", self.image), RootFSError)
        self.assertTrue(os.path.isdir(p.upper))


class ReconcileTests(Base):
    def test_list_on_disk(self) -> None:
        self.make("p1", "a")
        self.make("p1", "b")
        self.make("p2", "c")
        os.symlink(self.tmp, os.path.join(self.rootfs.sandboxes_dir, "p3"))
        os.symlink(self.tmp, os.path.join(self.rootfs.sandboxes_dir, "p2", "d"))
        open(os.path.join(self.rootfs.sandboxes_dir, "p1", "file"), "w").close()
        os.makedirs(os.path.join(self.rootfs.sandboxes_dir, "Bad Name"))
        self.assertEqual(self.rootfs.list_on_disk(), [("p1", "a"), ("p1", "b"), ("p2", "c")])

    def test_list_on_disk_without_dir(self) -> None:
        self.assertEqual(self.rootfs.list_on_disk(), [])

    def test_stray_mounts(self) -> None:
        known = self.make("p1", "a")
        stray = self.make("p1", "b")
        os.makedirs(os.path.join(stray.rootfs, "proc"))
        self.table.add(os.path.join(stray.rootfs, "proc"), fstype="proc")
        self.table.add(self.rootfs.sandboxes_dir, fstype="ext4")  # a dedicated disk: fine
        self.table.add(os.path.join(self.rootfs.sandboxes_dir, "odd"), fstype="tmpfs")
        self.table.add("/elsewhere")
        self.assertEqual(
            self.rootfs.stray_mounts({("p1", "a")}),
            [os.path.join(stray.rootfs, "proc"), stray.rootfs, os.path.join(self.rootfs.sandboxes_dir, "odd")])
        self.assertEqual(self.rootfs.sandbox_of(stray.rootfs), ("p1", "b"))
        self.assertIsNone(self.rootfs.sandbox_of(os.path.join(self.rootfs.sandboxes_dir, "odd")))
        self.assertIsNone(self.rootfs.sandbox_of("/elsewhere"))
        self.assertIn(known.rootfs, [e.mount_point for e in self.rootfs.mounts()])

    def test_remove_stray(self) -> None:
        stray = self.make("p1", "b")
        self.runner.expect(self.table.umount(stray.rootfs))
        self.successResultOf(self.rootfs.remove_stray("p1", "b"))
        self.assertFalse(os.path.lexists(stray.base))
        self.assertEqual(self.rootfs.stray_mounts(set()), [])

    def test_unmount_stray(self) -> None:
        odd = os.path.join(self.rootfs.sandboxes_dir, "odd")
        os.makedirs(odd)
        self.table.add(odd, fstype="tmpfs")
        self.runner.expect(self.table.umount(odd))
        self.successResultOf(self.rootfs.unmount_stray(odd))
        self.assertTrue(os.path.isdir(odd))
        self.failureResultOf(self.rootfs.unmount_stray("/elsewhere"), ValueError)
        self.failureResultOf(self.rootfs.unmount_stray(self.rootfs.sandboxes_dir), ValueError)


class DiskUsageTests(Base):
    def test_counts_upper_only_without_following_links(self) -> None:
        p = self.make()
        empty = self.successResultOf(self.rootfs.disk_usage("proj", "box"))
        big = os.path.join(self.tmp, "big")
        with open(big, "wb") as f:
            f.write(os.urandom(1 << 20))
        os.symlink(big, os.path.join(p.upper, "link"))
        os.symlink(self.tmp, os.path.join(p.upper, "dirlink"))
        with open(os.path.join(p.upper, "data"), "wb") as f:
            f.write(os.urandom(64 * 1024))
        os.link(os.path.join(p.upper, "data"), os.path.join(p.upper, "data2"))
        used = self.successResultOf(self.rootfs.disk_usage("proj", "box"))
        self.assertGreaterEqual(used - empty, 64 * 1024)
        self.assertLess(used - empty, 512 * 1024)

    def test_missing_sandbox(self) -> None:
        self.failureResultOf(self.rootfs.disk_usage("proj", "none"), RootFSError)


class SafeFSTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="bolt-unit-safefs-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.fd = safefs.open_dir(self.tmp)
        self.addCleanup(os.close, self.fd)

    def open_fds(self) -> int:
        return len(os.listdir("/proc/self/fd"))

    def test_deep_tree_removed_with_constant_descriptors(self) -> None:
        fd, _ = safefs.make_dir(self.fd, "deep", 0o700)
        for _ in range(3000):  # deeper than PATH_MAX and Python's recursion limit allow by path
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w"):
                pass
            child, _ = safefs.make_dir(fd, "d", 0o700)
            os.close(fd)
            fd = child
        os.close(fd)
        before = self.open_fds()
        self.assertTrue(safefs.remove_tree(self.fd, "deep"))
        self.assertEqual(self.open_fds(), before)
        self.assertEqual(os.listdir(self.tmp), [])

    def test_remove_missing_and_plain_file(self) -> None:
        self.assertFalse(safefs.remove_tree(self.fd, "nothing"))
        open(os.path.join(self.tmp, "file"), "w").close()
        self.assertTrue(safefs.remove_tree(self.fd, "file"))
        self.assertEqual(os.listdir(self.tmp), [])

    def test_remove_top_symlink_removes_only_link(self) -> None:
        target = os.path.join(self.tmp, "target")
        os.makedirs(target)
        open(os.path.join(target, "keep"), "w").close()
        os.symlink(target, os.path.join(self.tmp, "link"))
        self.assertTrue(safefs.remove_tree(self.fd, "link"))
        self.assertEqual(os.listdir(target), ["keep"])

    def test_mount_at_top_refused(self) -> None:
        os.makedirs(os.path.join(self.tmp, "top", "x"))
        self.patch(safefs, "mount_id", fake_mount_ids(os.path.join(self.tmp, "top")))
        self.assertRaises(safefs.MountBoundaryError, safefs.remove_tree, self.fd, "top")
        self.assertTrue(os.path.isdir(os.path.join(self.tmp, "top", "x")))

    def test_usage_skips_other_mounts(self) -> None:
        os.makedirs(os.path.join(self.tmp, "t", "m"))
        with open(os.path.join(self.tmp, "t", "m", "f"), "wb") as f:
            f.write(os.urandom(256 * 1024))
        whole = safefs.tree_usage(self.fd, "t")
        self.patch(safefs, "mount_id", fake_mount_ids(os.path.join(self.tmp, "t", "m")))
        self.assertLess(safefs.tree_usage(self.fd, "t"), whole - 200 * 1024)

    def test_make_dir(self) -> None:
        fd, created = safefs.make_dir(self.fd, "d", 0o751)
        os.close(fd)
        self.assertTrue(created)
        self.assertEqual(mode(os.path.join(self.tmp, "d")), 0o751)
        fd, created = safefs.make_dir(self.fd, "d", 0o700, exist_ok=True)
        os.close(fd)
        self.assertFalse(created)
        self.assertEqual(mode(os.path.join(self.tmp, "d")), 0o751)
        self.assertRaises(FileExistsError, safefs.make_dir, self.fd, "d", 0o700)
        os.symlink(self.tmp, os.path.join(self.tmp, "l"))
        self.assertRaises(OSError, safefs.make_dir, self.fd, "l", 0o700, exist_ok=True)
        for bad in ("a/b", "..", ".", ""):
            self.assertRaises(ValueError, safefs.make_dir, self.fd, bad, 0o700)

    def test_mount_id_of_real_fd(self) -> None:
        self.assertIsInstance(safefs.mount_id(self.fd), int)
        self.assertIsNone(safefs.mount_id(987654))
