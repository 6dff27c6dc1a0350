"""Unit tests for bolt.host.images: no root, no network, no threads; FakeRunner and task.Clock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile

from twisted.internet import defer, task
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from bolt.host import images
from bolt.host.images import (
    ImageBuildFailed, ImageBusy, ImageInfo, ImageInUse, ImageNotFound, ImageStore, InvalidDistro,
)
from tests.fakes import Expect, FakeRunner, UnexpectedCommand


def inline(f, *args, **kwargs) -> defer.Deferred:
    """Run "thread" work in the test's own thread, so every Deferred fires synchronously."""
    return defer.maybeDeferred(f, *args, **kwargs)


def write(path: str, data: bytes | str = b"") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def fake_scripts(root: str) -> str:
    """A debootstrap scripts directory shaped like the real one."""
    scripts = os.path.join(root, "scripts")
    os.makedirs(scripts)
    for name in ("sid", "gutsy", "debian-common", "kali", "etch", "amber"):
        write(os.path.join(scripts, name), "# script\n")
    links = {"bookworm": "sid", "trixie": "sid", "stable": "sid", "jammy": "gutsy", "groovy": "gutsy",
             "hirsute": "groovy", "squeeze": "etch", "kali-rolling": "kali", "byzantium": "amber",
             "escape": "../elsewhere/sid", "dangling": "nothing-here"}
    for name, target in links.items():
        os.symlink(target, os.path.join(scripts, name))
    write(os.path.join(root, "elsewhere", "sid"), "# not debootstrap's\n")
    return scripts


class World:
    """A temp dir with a fake scripts dir, a fake /proc, a FakeRunner, a Clock and a store."""

    def __init__(self, testcase: SynchronousTestCase, **options) -> None:
        self.root = os.path.realpath(tempfile.mkdtemp(prefix="bolt-images-"))
        testcase.addCleanup(shutil.rmtree, self.root, True)
        self.scripts = fake_scripts(self.root)
        self.proc = os.path.join(self.root, "proc")
        self.mountinfo = os.path.join(self.proc, "self", "mountinfo")
        write(self.mountinfo, "22 27 0:21 / /proc rw,relatime - proc proc rw\n")
        self.base = os.path.join(self.root, "base images")  # a space, as a real path may have
        self.runner = FakeRunner()
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)  # 2023-11-14T22:13:20Z
        tokens = iter(f"t{i}" for i in range(1, 100))
        testcase.patch(images, "_random_token", lambda: next(tokens))
        self.store = ImageStore(self.base, self.runner, self.clock, scripts_dir=self.scripts,
                                threads=inline, proc_dir=self.proc, **options)

    def scratch(self, family: str, suite: str, token: str = "t1") -> str:
        return os.path.join(self.base, f".build-{family}-{suite}-{token}")

    def argv(self, family: str = "debian", suite: str = "bookworm", token: str = "t1") -> list[str]:
        return ["debootstrap", "--variant=minbase", suite, self.scratch(family, suite, token)]

    def leftovers(self) -> list[str]:
        return sorted(n for n in os.listdir(self.base) if n.startswith(".build-")) if os.path.isdir(self.base) else []


def populate(target: str) -> int:
    """Make a tiny root filesystem as debootstrap would; return its expected apparent size."""
    write(os.path.join(target, "usr/bin/dash"), b"x" * 1000)
    os.symlink("dash", os.path.join(target, "usr/bin/sh"))
    os.symlink("usr/bin", os.path.join(target, "bin"))
    write(os.path.join(target, "etc/debian_version"), "12.11\n")
    os.link(os.path.join(target, "usr/bin/dash"), os.path.join(target, "usr/bin/hardlinked-dash"))
    size = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return size


class ValidationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = World(self)

    def test_accepted(self) -> None:
        for name, family, suite in [("debian:bookworm", "debian", "bookworm"), ("debian:sid", "debian", "sid"),
                                    ("debian:stable", "debian", "stable"), ("ubuntu:jammy", "ubuntu", "jammy"),
                                    ("ubuntu:hirsute", "ubuntu", "hirsute")]:
            parsed = images.validate_distro(name, self.w.scripts)
            self.assertEqual((parsed.family, parsed.suite, str(parsed)), (family, suite, name))

    def test_rejected(self) -> None:
        bad = ["../x", "debian:", "debian:BOOKWORM", "centos:7", "debian:nosuch", "debian:../bookworm",
               "debian:bookworm/", "debian:bookworm\n", " debian:bookworm", "Debian:bookworm", "debian:-x",
               "debian:" + "a" * 33, "debian:jammy", "ubuntu:bookworm", "debian:debian-common",
               "debian:kali-rolling", "debian:squeeze", "debian:byzantium", "debian:escape",
               "debian:dangling", "debian:bookworm:x", "", None, 7, b"debian:bookworm"]
        for name in bad:
            e = self.assertRaises(InvalidDistro, images.validate_distro, name, self.w.scripts)
            self.assertIn('"debian:<suite>" or "ubuntu:<suite>"', str(e))
            self.assertIsInstance(e, ValueError)

    def test_form_checked_before_the_filesystem(self) -> None:
        """A malformed name is refused even when a file of that name exists in the scripts dir."""
        write(os.path.join(self.w.scripts, "UPPER"), "")
        os.symlink("sid", os.path.join(self.w.scripts, "a_b"))
        for name in ("debian:UPPER", "debian:a_b"):
            self.assertRaises(InvalidDistro, images.validate_distro, name, self.w.scripts)

    def test_store_methods_validate(self) -> None:
        self.assertRaises(InvalidDistro, self.w.store.ensure, "centos:7")
        self.assertRaises(InvalidDistro, self.w.store.start, "debian:nosuch")
        self.assertRaises(InvalidDistro, self.w.store.get, "../x")
        self.assertRaises(InvalidDistro, self.w.store.remove, "debian:", False)
        self.assertEqual(self.w.runner.ran, [])

    def test_options(self) -> None:
        good = dict(include=["curl", "ca-certificates", "g++", "python3.11", "libc6-dev"],
                    mirror="https://deb.debian.org/debian", variant="buildd")
        images.validate_options(good["variant"], good["include"], good["mirror"])
        images.validate_options(None, (), "http://127.0.0.1:3142/debian/")
        for variant, include, mirror in [
            ("bogus", (), None), ("fakechroot", (), None), ("minbase", ["Vim"], None),
            ("minbase", ["a"], None), ("minbase", ["-x"], None), ("minbase", ["vim;rm"], None),
            ("minbase", ["a b"], None), ("minbase", ["a,b"], None), ("minbase", "vim", None),
            ("minbase", [None], None), ("minbase", (), "ftp://deb.debian.org/debian"),
            ("minbase", (), "file:///srv/mirror"), ("minbase", (), "http://"),
            ("minbase", (), "http://a b/debian"), ("minbase", (), "http://a/b\n"), ("minbase", (), "--help"),
            ("minbase", (), "deb.debian.org/debian"),
        ]:
            self.assertRaises(ValueError, images.validate_options, variant, include, mirror)
        self.assertRaises(ValueError, ImageStore, self.w.base, self.w.runner, self.w.clock, mirror="ftp://x/")
        self.assertRaises(ValueError, ImageStore, self.w.base, self.w.runner, self.w.clock, max_concurrent_builds=0)

    def test_stage_of(self) -> None:
        self.assertEqual(images.stage_of("I: Retrieving Release "), "Retrieving Release")
        self.assertEqual(images.stage_of("I: Extracting base-files..."), "Extracting base-files")
        self.assertEqual(images.stage_of("I: Configuring libc-bin..."), "Configuring libc-bin")
        self.assertIsNone(images.stage_of("W: Cannot check Release signature"))
        self.assertIsNone(images.stage_of("Retrieving"))
        self.assertIsNone(images.stage_of("I: "))


class BuildTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = World(self)
        self.addCleanup(self.w.runner.assertDone)

    def test_argv_default(self) -> None:
        self.w.runner.expect(Expect(self.w.argv()))
        self.successResultOf(self.w.store.ensure("debian:bookworm"))

    def test_argv_options(self) -> None:
        w = World(self, include=("curl", "ca-certificates"), mirror="http://mirror.example/debian",
                  variant="buildd")
        w.runner.expect(Expect(["debootstrap", "--variant=buildd", "--include=curl,ca-certificates", "jammy",
                                w.scratch("ubuntu", "jammy"), "http://mirror.example/debian"]))
        self.successResultOf(w.store.ensure("ubuntu:jammy"))
        w.runner.assertDone()

    def test_argv_default_variant(self) -> None:
        w = World(self, variant=None)
        w.runner.expect(Expect(["debootstrap", "trixie", w.scratch("debian", "trixie")]))
        self.successResultOf(w.store.ensure("debian:trixie"))
        w.runner.assertDone()

    def test_success(self) -> None:
        scratch = self.w.scratch("debian", "bookworm")
        sizes = []
        self.w.runner.expect(Expect(self.w.argv(), side_effect=lambda: sizes.append(populate(scratch))))
        d = self.w.store.ensure("debian:bookworm")
        path = self.successResultOf(d)
        self.assertEqual(path, os.path.join(self.w.base, "debian", "bookworm"))
        self.assertEqual(os.readlink(os.path.join(path, "bin")), "usr/bin")
        with open(os.path.join(path, "etc/debian_version")) as f:
            self.assertEqual(f.read(), "12.11\n")
        self.assertEqual(self.w.leftovers(), [])
        with open(path + ".json") as f:
            meta = json.load(f)
        self.assertEqual(meta["size_bytes"], sizes[0])
        self.assertEqual(meta["built_at"], "2023-11-14T22:13:20Z")
        self.assertEqual(meta["distro"], "debian:bookworm")
        info = self.w.store.get("debian:bookworm")
        self.assertEqual(info, ImageInfo("debian:bookworm", "ready", path=path, size_bytes=sizes[0],
                                         build_seconds=0.0, built_at="2023-11-14T22:13:20Z"))
        self.assertEqual(info.to_json(), {"distro": "debian:bookworm", "state": "ready", "size_bytes": sizes[0],
                                          "build_seconds": 0.0, "built_at": "2023-11-14T22:13:20Z"})
        # Ready now: no second debootstrap (FakeRunner would raise on an unexpected command).
        self.assertEqual(self.successResultOf(self.w.store.ensure("debian:bookworm")), path)
        # A fresh store over the same directory sees the image from its marker alone.
        fresh = ImageStore(self.w.base, FakeRunner(), self.w.clock, scripts_dir=self.w.scripts, threads=inline)
        self.assertEqual(fresh.get("debian:bookworm").state, "ready")

    def test_stage_elapsed_and_log(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.w.runner.expect(Expect(self.w.argv(), hold=True, lines=["I: Retrieving InRelease "]))
        d = self.w.store.ensure("debian:bookworm")
        info = self.w.store.get("debian:bookworm")
        self.assertEqual((info.state, info.stage, info.elapsed_seconds), ("building", "Retrieving InRelease", 0.0))
        self.w.clock.advance(12.5)
        self.w.runner.emit("W: something odd")
        self.assertEqual(self.w.store.get("debian:bookworm").stage, "Retrieving InRelease")
        self.w.runner.emit("I: Extracting base-files...")
        info = self.w.store.get("debian:bookworm")
        self.assertEqual((info.stage, info.elapsed_seconds), ("Extracting base-files", 12.5))
        self.assertEqual(info.to_json(), {"distro": "debian:bookworm", "state": "building",
                                          "stage": "Extracting base-files", "elapsed_seconds": 12.5})
        self.w.runner.emit("I: Configuring libc-bin...")
        self.assertEqual(self.w.store.get("debian:bookworm").stage, "Configuring libc-bin")
        self.w.clock.advance(7.5)
        self.w.runner.finish()
        self.successResultOf(d)
        self.assertEqual(self.w.store.get("debian:bookworm").build_seconds, 20.0)
        lines = [(e["distro"], e["line"]) for e in events if e.get("log_format") == "debootstrap {distro}: {line}"]
        self.assertEqual(lines, [("debian:bookworm", "I: Retrieving InRelease "),
                                 ("debian:bookworm", "W: something odd"),
                                 ("debian:bookworm", "I: Extracting base-files..."),
                                 ("debian:bookworm", "I: Configuring libc-bin...")])

    def test_waiters_share_one_build(self) -> None:
        self.w.runner.expect(Expect(self.w.argv(), hold=True))
        d1 = self.w.store.ensure("debian:bookworm")
        d2 = self.w.store.ensure("debian:bookworm")
        self.assertIsNot(d1, d2)
        self.assertEqual(len(self.w.runner.ran), 1)
        self.assertNoResult(d1)
        self.w.runner.finish()
        path = os.path.join(self.w.base, "debian", "bookworm")
        self.assertEqual(self.successResultOf(d1), path)
        self.assertEqual(self.successResultOf(d2), path)

    def test_cancel_one_waiter_keeps_build(self) -> None:
        self.w.runner.expect(Expect(self.w.argv(), hold=True))
        d1 = self.w.store.ensure("debian:bookworm")
        d2 = self.w.store.ensure("debian:bookworm")
        d1.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        self.assertFalse(self.w.runner.running[0].cancelled)
        self.assertEqual(self.w.store.get("debian:bookworm").state, "building")
        self.w.runner.finish()
        self.assertEqual(self.successResultOf(d2), os.path.join(self.w.base, "debian", "bookworm"))

    def test_all_waiters_gone_build_goes_on(self) -> None:
        self.w.runner.expect(Expect(self.w.argv(), hold=True))
        d = self.w.store.ensure("debian:bookworm")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.w.runner.finish()
        self.assertEqual(self.w.store.get("debian:bookworm").state, "ready")

    def test_failure_reaches_every_waiter(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        scratch = self.w.scratch("debian", "bookworm")

        def debootstrap_ran():
            populate(scratch)
            write(os.path.join(scratch, "debootstrap", "debootstrap.log"), "dpkg: error processing package x\n")

        self.w.runner.expect(Expect(self.w.argv(), hold=True, side_effect=debootstrap_ran))
        d1 = self.w.store.ensure("debian:bookworm")
        d2 = self.w.store.ensure("debian:bookworm")
        self.assertTrue(os.path.isdir(scratch))
        self.w.runner.running[0].expect.stderr = (b"I: Retrieving InRelease\n"
                                                  b"E: Failed getting release file http://x/dists/bookworm/Release\n")
        self.w.runner.finish(exit_code=1)
        for d in (d1, d2):
            e = self.failureResultOf(d, ImageBuildFailed).value
            self.assertEqual(e.distro, "debian:bookworm")
            self.assertIn("E: Failed getting release file http://x/dists/bookworm/Release", e.tail)
            self.assertIn("debootstrap failed (exit code 1)", str(e))
            self.assertIn("E: Failed getting release file", str(e))
        self.assertFalse(os.path.exists(scratch))
        self.assertFalse(os.path.exists(os.path.join(self.w.base, "debian", "bookworm")))
        self.assertIn("dpkg: error processing package x", [e.get("details") for e in events])
        info = self.w.store.get("debian:bookworm")
        self.assertEqual(info.state, "failed")
        self.assertIn("E: Failed getting release file", info.error)
        self.assertEqual(info.to_json(), {"distro": "debian:bookworm", "state": "failed", "error": info.error})
        # A new attempt starts a new build; the failure is forgotten.
        self.w.runner.expect(Expect(self.w.argv(token="t2")))
        self.successResultOf(self.w.store.ensure("debian:bookworm"))
        self.assertEqual(self.w.store.get("debian:bookworm").state, "ready")

    def test_killed_by_signal(self) -> None:
        self.w.runner.expect(Expect(self.w.argv(), hold=True, lines=["I: Retrieving InRelease"]))
        d = self.w.store.ensure("debian:bookworm")
        self.w.runner.finish(signal=9)
        e = self.failureResultOf(d, ImageBuildFailed).value
        self.assertIn("killed by SIGKILL", str(e))
        self.assertEqual(self.w.leftovers(), [])

    def test_start_without_waiting(self) -> None:
        self.w.runner.expect(Expect(self.w.argv(), hold=True))
        info = self.w.store.start("debian:bookworm")
        self.assertEqual((info.state, info.stage), ("building", "Starting"))
        self.assertEqual(self.w.store.start("debian:bookworm").state, "building")
        self.assertEqual(len(self.w.runner.ran), 1)
        self.w.runner.finish()
        self.assertEqual(self.w.store.start("debian:bookworm").state, "ready")
        self.assertEqual(len(self.w.runner.ran), 1)

    def test_start_failure_has_no_waiter(self) -> None:
        """A build nobody waits for records its failure instead of leaving an unhandled error."""
        self.w.runner.expect(Expect(self.w.argv(), exit_code=2, lines=["E: boom"]))
        info = self.w.store.start("debian:bookworm")
        self.assertEqual(info.state, "failed")
        self.assertIn("E: boom", info.error)

    def test_concurrency_cap(self) -> None:
        r = self.w.runner
        r.expect(Expect(self.w.argv("debian", "bookworm", "t1"), hold=True),
                 Expect(self.w.argv("debian", "trixie", "t2"), hold=True),
                 Expect(self.w.argv("ubuntu", "jammy", "t3"), hold=True))
        d1 = self.w.store.ensure("debian:bookworm")
        d2 = self.w.store.ensure("debian:trixie")
        d3 = self.w.store.ensure("ubuntu:jammy")
        self.assertEqual(len(r.ran), 2)
        self.assertEqual(self.w.store.get("ubuntu:jammy").stage, "Queued")
        r.finish(0)
        self.successResultOf(d1)
        self.assertEqual(len(r.ran), 3)
        self.assertEqual(self.w.store.get("ubuntu:jammy").stage, "Starting")
        r.finish(0)
        r.finish(0)
        self.successResultOf(d2)
        self.successResultOf(d3)

    def test_failed_build_frees_its_slot(self) -> None:
        w = World(self, max_concurrent_builds=1)
        w.runner.expect(Expect(w.argv("debian", "bookworm", "t1"), hold=True),
                        Expect(w.argv("debian", "trixie", "t2")))
        d1 = w.store.ensure("debian:bookworm")
        d2 = w.store.ensure("debian:trixie")
        self.assertEqual(len(w.runner.ran), 1)
        w.runner.finish(exit_code=1)
        self.failureResultOf(d1, ImageBuildFailed)
        self.successResultOf(d2)
        w.runner.assertDone()

    def test_list(self) -> None:
        r = self.w.runner
        r.expect(Expect(self.w.argv("debian", "bookworm", "t1")),
                 Expect(self.w.argv("debian", "trixie", "t2"), exit_code=1, lines=["E: nope"]),
                 Expect(self.w.argv("ubuntu", "jammy", "t3"), hold=True))
        self.successResultOf(self.w.store.ensure("debian:bookworm"))
        self.failureResultOf(self.w.store.ensure("debian:trixie"), ImageBuildFailed)
        self.w.store.start("ubuntu:jammy")
        listed = [(i.distro, i.state) for i in self.w.store.list()]
        self.assertEqual(listed, [("debian:bookworm", "ready"), ("debian:trixie", "failed"),
                                  ("ubuntu:jammy", "building")])
        r.finish()
        self.assertEqual([i.state for i in self.w.store.list()], ["ready", "failed", "ready"])

    def test_get_unknown(self) -> None:
        self.assertRaises(ImageNotFound, self.w.store.get, "debian:bookworm")
        self.assertEqual(self.w.store.list(), [])

    def test_corrupt_marker_means_rebuild(self) -> None:
        """An image dir whose marker does not parse is not trusted: it is rebuilt and the old tree removed."""
        final = os.path.join(self.w.base, "debian", "bookworm")
        write(os.path.join(final, "old-file"), "old")
        write(final + ".json", "{not json")
        self.assertRaises(ImageNotFound, self.w.store.get, "debian:bookworm")
        scratch = self.w.scratch("debian", "bookworm")
        self.w.runner.expect(Expect(self.w.argv(), side_effect=lambda: populate(scratch)))
        self.assertEqual(self.successResultOf(self.w.store.ensure("debian:bookworm")), final)
        self.assertFalse(os.path.exists(os.path.join(final, "old-file")))
        self.assertTrue(os.path.isfile(os.path.join(final, "etc/debian_version")))
        self.assertEqual(self.w.leftovers(), [])


class CleanupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = World(self)
        self.addCleanup(self.w.runner.assertDone)

    def test_stop_cancels_and_cleans(self) -> None:
        scratch = self.w.scratch("debian", "bookworm")
        self.w.runner.expect(Expect(self.w.argv(), hold=True, side_effect=lambda: populate(scratch)))
        d = self.w.store.ensure("debian:bookworm")
        stopped = self.w.store.stop()
        self.assertTrue(self.w.runner.running[0].cancelled)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertIn("build cancelled", str(self.failureResultOf(d, ImageBuildFailed).value))
        self.assertFalse(os.path.exists(scratch))
        self.assertFalse(os.path.exists(os.path.join(self.w.base, "debian", "bookworm")))
        self.assertEqual(self.w.store.get("debian:bookworm").state, "failed")
        self.failureResultOf(self.w.store.ensure("debian:trixie"), ImageBuildFailed)
        self.assertRaises(ImageBuildFailed, self.w.store.start, "debian:trixie")

    def test_stop_cancels_queued_builds(self) -> None:
        w = World(self, max_concurrent_builds=1)
        w.runner.expect(Expect(w.argv("debian", "bookworm", "t1"), hold=True))
        d1 = w.store.ensure("debian:bookworm")
        d2 = w.store.ensure("debian:trixie")
        self.successResultOf(w.store.stop())
        self.failureResultOf(d1, ImageBuildFailed)
        self.assertIn("cancelled", str(self.failureResultOf(d2, ImageBuildFailed).value))
        self.assertEqual(len(w.runner.ran), 1)
        self.assertEqual(w.leftovers(), [])
        self.assertEqual(close_is_stop(w.store), True)

    def test_mounts_left_by_debootstrap_are_unmounted(self) -> None:
        scratch = self.w.scratch("debian", "bookworm")
        escaped = scratch.replace(" ", "\\040")
        mounts = (f"40 1 0:50 / {escaped}/proc rw - proc proc rw\n"
                  f"41 40 0:51 / {escaped}/proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw\n"
                  f"42 1 0:52 / {escaped}/sys rw - sysfs sysfs rw\n"
                  f"43 1 0:53 / {escaped}-other/proc rw - proc proc rw\n")
        normal = open(self.w.mountinfo).read()
        self.w.runner.expect(
            Expect(self.w.argv(), hold=True, side_effect=lambda: write(self.w.mountinfo, normal + mounts)),
            Expect(["umount", "--recursive", "--lazy", scratch + "/proc", scratch + "/sys"],
                   side_effect=lambda: write(self.w.mountinfo, normal)))
        d = self.w.store.ensure("debian:bookworm")
        self.w.runner.finish(exit_code=1)
        self.failureResultOf(d, ImageBuildFailed)
        self.assertEqual(self.w.leftovers(), [])

    def test_no_rmtree_while_still_mounted(self) -> None:
        scratch = self.w.scratch("debian", "bookworm")
        line = "40 1 0:50 / " + scratch.replace(" ", "\\040") + "/proc rw - proc proc rw\n"
        self.w.runner.expect(
            Expect(self.w.argv(), exit_code=1, side_effect=lambda: write(self.w.mountinfo, line)),
            Expect(["umount", "--recursive", "--lazy", scratch + "/proc"], exit_code=32))
        self.failureResultOf(self.w.store.ensure("debian:bookworm"), ImageBuildFailed)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.w.leftovers(), [os.path.basename(scratch)])

    def test_recover_removes_debris(self) -> None:
        base = self.w.base
        outside = os.path.join(self.w.root, "outside")
        write(os.path.join(outside, "precious"), "keep me")
        write(os.path.join(base, ".build-debian-bookworm-abc", "etc", "debian_version"), "12\n")
        os.symlink(outside, os.path.join(base, ".build-debian-bookworm-abc", "escape"))
        os.symlink(outside, os.path.join(base, ".build-evil"))
        write(os.path.join(base, ".build-file"), "x")
        write(os.path.join(base, "debian", "trixie", "half"), "renamed, never marked")
        write(os.path.join(base, "debian", "gone.json"), "{}")
        write(os.path.join(base, "debian", "sid.json.tmp"), "{")
        write(os.path.join(base, "debian", "bookworm", "etc", "debian_version"), "12\n")
        write(os.path.join(base, "debian", "bookworm.json"),
              json.dumps({"size_bytes": 3, "build_seconds": 1.0, "built_at": "2023-11-14T22:13:20Z"}))
        write(os.path.join(base, "not-ours", "file"), "x")
        self.successResultOf(self.w.store.recover())
        self.assertEqual(sorted(os.listdir(base)), ["debian", "not-ours"])
        self.assertEqual(sorted(os.listdir(os.path.join(base, "debian"))), ["bookworm", "bookworm.json"])
        with open(os.path.join(outside, "precious")) as f:
            self.assertEqual(f.read(), "keep me")
        self.assertEqual(self.w.store.get("debian:bookworm").state, "ready")

    def test_recover_without_base_dir(self) -> None:
        self.successResultOf(self.w.store.recover())
        self.assertFalse(os.path.exists(self.w.base))

    def test_recover_spares_running_builds(self) -> None:
        self.w.runner.expect(Expect(self.w.argv(), hold=True))
        d = self.w.store.ensure("debian:bookworm")
        self.successResultOf(self.w.store.recover())
        self.assertEqual(self.w.leftovers(), [".build-debian-bookworm-t1"])
        self.w.runner.finish()
        self.successResultOf(d)


def close_is_stop(store: ImageStore) -> bool:
    return type(store).close is type(store).stop


class RemoveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.w = World(self)
        self.addCleanup(self.w.runner.assertDone)
        scratch = self.w.scratch("debian", "bookworm")
        self.w.runner.expect(Expect(self.w.argv(), side_effect=lambda: populate(scratch)))
        self.path = self.successResultOf(self.w.store.ensure("debian:bookworm"))

    def test_in_use(self) -> None:
        self.assertRaises(ImageInUse, self.w.store.remove, "debian:bookworm", True)
        self.assertEqual(self.w.store.get("debian:bookworm").state, "ready")

    def test_not_found(self) -> None:
        self.assertRaises(ImageNotFound, self.w.store.remove, "debian:trixie", False)
        self.assertRaises(ImageNotFound, self.w.store.remove, "debian:trixie", True)

    def test_busy(self) -> None:
        self.w.runner.expect(Expect(self.w.argv("debian", "trixie", "t2"), hold=True))
        d = self.w.store.ensure("debian:trixie")
        self.assertRaises(ImageBusy, self.w.store.remove, "debian:trixie", False)
        self.w.runner.finish()
        self.successResultOf(d)

    def test_remove(self) -> None:
        self.assertIsNone(self.successResultOf(self.w.store.remove("debian:bookworm", False)))
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(os.path.exists(self.path + ".json"))
        self.assertEqual(self.w.leftovers(), [])
        self.assertRaises(ImageNotFound, self.w.store.get, "debian:bookworm")
        self.w.runner.expect(Expect(self.w.argv(token="t3")))
        self.assertEqual(self.successResultOf(self.w.store.ensure("debian:bookworm")), self.path)

    def test_remove_forgets_nothing_it_should_not(self) -> None:
        """Removing never follows symlinks out of the image."""
        outside = os.path.join(self.w.root, "outside")
        write(os.path.join(outside, "precious"), "keep me")
        os.symlink(outside, os.path.join(self.path, "escape"))
        self.successResultOf(self.w.store.remove("debian:bookworm", False))
        self.assertTrue(os.path.isfile(os.path.join(outside, "precious")))


class HelperTests(SynchronousTestCase):
    def test_tree_size(self) -> None:
        root = tempfile.mkdtemp(prefix="bolt-size-")
        self.addCleanup(shutil.rmtree, root)
        big = tempfile.mkdtemp(prefix="bolt-size-outside-")
        self.addCleanup(shutil.rmtree, big)
        write(os.path.join(big, "huge"), b"x" * 100_000)
        write(os.path.join(root, "a", "file"), b"y" * 300)
        os.link(os.path.join(root, "a", "file"), os.path.join(root, "hard"))
        os.symlink(big, os.path.join(root, "link-to-dir"))
        st = lambda p: os.lstat(os.path.join(root, p)).st_size  # noqa: E731
        expected = st("a") + st("a/file") + st("link-to-dir")
        self.assertEqual(images.tree_size(root), expected)

    def test_mounts_under(self) -> None:
        root = tempfile.mkdtemp(prefix="bolt-mi-")
        self.addCleanup(shutil.rmtree, root)
        info = os.path.join(root, "mountinfo")
        write(info, "1 0 0:1 / / rw - ext4 /dev/vda rw\n"
                    "2 1 0:2 / /srv/a\\040b/.build-x/proc rw - proc proc rw\n"
                    "3 1 0:3 / /srv/a\\040b/.build-xy/proc rw - proc proc rw\n"
                    "4 1 0:4 / /srv/a\\040b/.build-x rw - tmpfs tmpfs rw\n")
        self.assertEqual(images.mounts_under("/srv/a b/.build-x", info),
                         ["/srv/a b/.build-x/proc", "/srv/a b/.build-x"])
        self.assertEqual(images.outermost(["/a/x/y", "/a/x", "/a/xy", "/a/x/z"]), ["/a/x", "/a/xy"])

    def test_processes_using(self) -> None:
        proc = tempfile.mkdtemp(prefix="bolt-proc-")
        self.addCleanup(shutil.rmtree, proc)
        target = "/srv/base/.build-debian-bookworm-t1"

        def fake(pid, root="/", cwd="/", argv=("sh",)):
            os.makedirs(os.path.join(proc, str(pid)))
            os.symlink(root, os.path.join(proc, str(pid), "root"))
            os.symlink(cwd, os.path.join(proc, str(pid), "cwd"))
            write(os.path.join(proc, str(pid), "cmdline"), "\0".join(argv) + "\0")

        fake(10, argv=("/bin/sh", "/usr/sbin/debootstrap", "bookworm", target))
        fake(11, root=target, argv=("dpkg", "--unpack"))
        fake(12, cwd=target + "/var/cache")
        fake(13, argv=("sleep", target + "-other"))
        fake(14)
        os.makedirs(os.path.join(proc, "15"))  # gone meanwhile: no links
        os.makedirs(os.path.join(proc, "self"))
        self.assertEqual(sorted(images.processes_using(target, proc)), [10, 11, 12])
        self.assertEqual(images.settle_processes("/srv/nothing", proc, grace=0), [])

    def test_settle_kills_stragglers(self) -> None:
        """A process still working in a dead build's directory is waited for, then killed."""
        target = tempfile.mkdtemp(prefix="bolt-settle-")
        self.addCleanup(shutil.rmtree, target)
        straggler = subprocess.Popen(["sleep", "60"], cwd=target)
        self.addCleanup(straggler.wait)
        self.addCleanup(lambda: straggler.poll() is None and straggler.kill())
        self.assertEqual(images.processes_using(target), [straggler.pid])
        self.assertEqual(images.settle_processes(target, grace=0.2), [straggler.pid])
        self.assertEqual(straggler.wait(timeout=5), -signal.SIGKILL)
        self.assertEqual(images.processes_using(target), [])

    def test_runner_raising_is_a_build_failure(self) -> None:
        """A runner that raises instead of failing its Deferred still ends as ImageBuildFailed, cleaned up."""
        w = World(self)  # expects nothing: FakeRunner raises UnexpectedCommand
        e = self.failureResultOf(w.store.ensure("debian:bookworm"), ImageBuildFailed).value
        self.assertIn("UnexpectedCommand", str(e))
        self.assertEqual(len(self.flushLoggedErrors(UnexpectedCommand)), 1)
        self.assertEqual(w.leftovers(), [])


class PackageCacheTests(SynchronousTestCase):
    def test_only_debs_in_the_archive_directory_are_removed(self):
        from bolt.host.images import clean_package_cache

        root = self.mktemp()
        archives = os.path.join(root, "var", "cache", "apt", "archives")
        os.makedirs(os.path.join(archives, "partial"))
        outside = os.path.join(root, "outside.deb")
        for path in (os.path.join(archives, "libc6_2.36_amd64.deb"), os.path.join(archives, "lock"), outside):
            with open(path, "w") as f:
                f.write("x")
        os.symlink(outside, os.path.join(archives, "link.deb"))
        clean_package_cache(root)
        self.assertEqual(sorted(os.listdir(archives)), ["link.deb", "lock", "partial"])
        self.assertTrue(os.path.exists(outside))

    def test_archive_directory_that_is_a_symlink_is_left_alone(self):
        from bolt.host.images import clean_package_cache

        root = self.mktemp()
        decoy = self.mktemp()
        os.makedirs(decoy)
        with open(os.path.join(decoy, "precious.deb"), "w") as f:
            f.write("x")
        os.makedirs(os.path.join(root, "var", "cache", "apt"))
        os.symlink(decoy, os.path.join(root, "var", "cache", "apt", "archives"))
        clean_package_cache(root)
        self.assertEqual(os.listdir(decoy), ["precious.deb"])
