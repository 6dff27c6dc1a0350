"""Unit tests for bolt.host.cgroups: detection from mountinfo text, and both backends against fake
cgroupfs trees in temporary directories.  No root needed.

A plain directory does not grow control files on mkdir the way cgroupfs does, so the backends take
``mkdir``/``rmdir``/``kill``/``sleep`` callables; :class:`FakeCgroupFS` supplies versions that
create (and remove) the control files a kernel would, and that play the kernel's part in killing.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from bolt.host.cgroups import (
    CPU_PERIOD_US, CgroupError, CgroupLayout, Cgroups, CgroupsV1, CgroupsV2, CgroupUnavailable,
    Limits, check_name, detect,
)

# --------------------------------------------------------------------------------------------------
# mountinfo samples

#: This machine (Debian 12 VM, kernel 6.x, hybrid: v1 controllers, empty cgroup2 at .../unified),
#: trimmed from /proc/self/mountinfo.
HYBRID_V1 = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334824k,nr_inodes=3083706,mode=755
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

#: Debian 12 / Ubuntu 22.04 default: the unified hierarchy only.
PURE_V2 = """\
22 29 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 29 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
24 29 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4008532k,nr_inodes=1002133,mode=755
29 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
26 22 0:7 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 22 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
32 22 0:28 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:11 - bpf bpf rw,mode=700
"""

#: Debian 10 / Ubuntu 20.04 style hybrid: systemd mounts cpu and cpuacct together (and net_cls,net_prio).
COMBINED_V1 = """\
18 24 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
32 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
33 25 0:30 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,cpuset
34 25 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
"""

NO_CGROUPS = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
"""

ALL_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc\n"


class Reader:
    """A fake ``read_controllers``: answers from a dict and records what was asked."""

    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[str] = []

    def __call__(self, mount_point: str) -> str:
        self.asked.append(mount_point)
        return self.answers.get(mount_point, "")


class DetectTests(unittest.TestCase):

    def test_hybrid_is_v1(self) -> None:
        """This machine: v1 hierarchies for cpu, cpuacct, memory, pids; the empty cgroup2 at
        /sys/fs/cgroup/unified is not the conventional root and is not even asked about."""
        reader = Reader({"/sys/fs/cgroup/unified": "hugetlb\n"})
        layout = detect(HYBRID_V1, reader)
        self.assertEqual(layout, CgroupLayout.v1(
            cpu="/sys/fs/cgroup/cpu", memory="/sys/fs/cgroup/memory", pids="/sys/fs/cgroup/pids",
            cpuacct="/sys/fs/cgroup/cpuacct"))
        self.assertEqual(reader.asked, [])

    def test_pure_v2(self) -> None:
        reader = Reader({"/sys/fs/cgroup": ALL_CONTROLLERS})
        self.assertEqual(detect(PURE_V2, reader), CgroupLayout.v2("/sys/fs/cgroup"))
        self.assertEqual(reader.asked, ["/sys/fs/cgroup"])

    def test_v2_without_pids_controller(self) -> None:
        """cgroup2 at the root but a needed controller missing and no v1 to fall back to."""
        with self.assertRaises(CgroupUnavailable) as caught:
            detect(PURE_V2, Reader({"/sys/fs/cgroup": "cpuset cpu io memory\n"}))
        message = str(caught.exception)
        self.assertIn("cgroup2 at /sys/fs/cgroup without controllers pids", message)
        self.assertIn("cgroup.controllers", message)

    def test_combined_cpu_cpuacct(self) -> None:
        layout = detect(COMBINED_V1, Reader())
        self.assertEqual(layout.version, 1)
        self.assertEqual(layout.cpu, "/sys/fs/cgroup/cpu,cpuacct")
        self.assertEqual(layout.cpuacct, "/sys/fs/cgroup/cpu,cpuacct")
        self.assertEqual(layout.memory, "/sys/fs/cgroup/memory")
        self.assertEqual(layout.pids, "/sys/fs/cgroup/pids")

    def test_nothing(self) -> None:
        with self.assertRaises(CgroupUnavailable) as caught:
            detect(NO_CGROUPS, Reader())
        self.assertIn("no cgroup mounts at all", str(caught.exception))
        self.assertIsInstance(caught.exception, CgroupError)

    def test_empty_text(self) -> None:
        self.assertRaises(CgroupUnavailable, detect, "", Reader())

    def test_v1_without_pids(self) -> None:
        text = "\n".join(line for line in HYBRID_V1.splitlines() if "/pids " not in line)
        with self.assertRaises(CgroupUnavailable) as caught:
            detect(text, Reader())
        self.assertIn("but none for pids", str(caught.exception))
        self.assertIn("cgroup2 at /sys/fs/cgroup/unified (not at /sys/fs/cgroup", str(caught.exception))

    def test_cpuset_is_not_cpu(self) -> None:
        """Controllers are matched as whole mount options: ``cpuset`` does not provide ``cpu``."""
        text = "\n".join(line for line in HYBRID_V1.splitlines() if "/cpu " not in line)
        with self.assertRaises(CgroupUnavailable) as caught:
            detect(text, Reader())
        self.assertIn("none for cpu", str(caught.exception))

    def test_v2_preferred_when_both(self) -> None:
        """cgroup2 at the conventional root with the controllers wins over stray v1 mounts."""
        text = PURE_V2 + "40 30 0:40 / /run/v1cpu rw - cgroup cgroup rw,cpu\n"
        layout = detect(text, Reader({"/sys/fs/cgroup": ALL_CONTROLLERS}))
        self.assertEqual(layout.version, 2)

    def test_hidden_mount_ignored(self) -> None:
        """A later mount on the same mount point hides the cgroup2 under it."""
        text = PURE_V2 + "50 22 0:50 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        self.assertRaises(CgroupUnavailable, detect, text, Reader({"/sys/fs/cgroup": ALL_CONTROLLERS}))

    def test_escaped_mount_points(self) -> None:
        text = (
            "1 0 0:1 / /cg\\040v1/cpu rw - cgroup cgroup rw,cpu\n"
            "2 0 0:2 / /cg\\040v1/mem rw - cgroup cgroup rw,memory\n"
            "3 0 0:3 /sub /cg\\040v1/pids-sub rw - cgroup cgroup rw,pids\n"
            "4 0 0:3 / /cg\\040v1/pids rw - cgroup cgroup rw,pids\n"
        )
        layout = detect(text, Reader())
        self.assertEqual((layout.cpu, layout.memory, layout.pids, layout.cpuacct),
                         ("/cg v1/cpu", "/cg v1/mem", "/cg v1/pids", None))

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_garbage_never_crashes(self, text: str) -> None:
        """Whatever the text, detect either returns a layout or says why not."""
        try:
            detect(text, Reader())
        except CgroupUnavailable:
            pass


class ValueTests(unittest.TestCase):

    def test_limits(self) -> None:
        self.assertEqual(Limits(50_000, 1 << 30).pids_max, 1024)
        Limits(None, None, None)
        for bad in (0, -1, True, 1.5, "100"):
            self.assertRaises(ValueError, Limits, bad, 1 << 20)
            self.assertRaises(ValueError, Limits, 1000, bad)
            self.assertRaises(ValueError, Limits, 1000, 1 << 20, bad)

    def test_layouts(self) -> None:
        self.assertRaises(ValueError, CgroupLayout, version=3)
        self.assertRaises(ValueError, CgroupLayout, version=2)
        self.assertRaises(ValueError, CgroupLayout, version=1, cpu="/a", memory="/b")
        self.assertRaises(ValueError, CgroupsV1, CgroupLayout.v2("/x"))
        self.assertRaises(ValueError, CgroupsV2, CgroupLayout.v1("/a", "/b", "/c"))
        self.assertIsInstance(Cgroups(CgroupLayout.v2("/x")).backend, CgroupsV2)
        self.assertIsInstance(Cgroups(CgroupLayout.v1("/a", "/b", "/c")).backend, CgroupsV1)
        self.assertEqual(Cgroups(CgroupLayout.v1("/a", "/b", "/c")).version, 1)

    def test_check_name(self) -> None:
        for good in ("a", "0", "web", "my-project_2", "a" * 63):
            self.assertEqual(check_name("project", good), good)
        for bad in ("", "A", "-x", "_x", "a/b", "..", ".", "a" * 64, "a\n", "a b", "a.b", "é", None, 5):
            self.assertRaises(ValueError, check_name, "project", bad)

    @given(st.text(alphabet="ab-_./\n\x00A9", max_size=70))
    def test_check_name_never_yields_a_path(self, name: str) -> None:
        try:
            check_name("sandbox", name)
        except ValueError:
            return
        self.assertNotIn("/", name)
        self.assertNotIn(".", name)
        self.assertNotIn("\n", name)
        self.assertTrue(1 <= len(name) <= 63)

    def test_from_host(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(HYBRID_V1)
        c = Cgroups.from_host("bolt-x", mountinfo=path)
        self.assertEqual((c.version, c.prefix, c.layout.pids), (1, "bolt-x", "/sys/fs/cgroup/pids"))
        self.assertRaises(ValueError, Cgroups.from_host, "Bad/Prefix", mountinfo=path)


# --------------------------------------------------------------------------------------------------
# Fake cgroupfs

V2_FILES = {
    "cgroup.procs": "", "cgroup.controllers": "", "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": "", "cgroup.type": "domain\n",
    "cpu.max": "max 100000\n", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
    "memory.max": "max\n", "memory.swap.max": "max\n", "memory.current": "0\n", "memory.oom.group": "0\n",
    "pids.max": "max\n", "pids.current": "0\n",
}
V1_COMMON = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0\n", "cgroup.clone_children": "0\n"}
V1_FILES = {
    "cpu": {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n", "cpu.shares": "1024\n", "cpu.stat": ""},
    "cpuacct": {"cpuacct.usage": "0\n", "cpuacct.stat": "user 0\nsystem 0\n"},
    "memory": {"memory.limit_in_bytes": "9223372036854771712\n",
               "memory.memsw.limit_in_bytes": "9223372036854771712\n", "memory.usage_in_bytes": "0\n",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
               "memory.use_hierarchy": None},  # None: inherited from the parent, as the kernel does
    "pids": {"pids.max": "max\n", "pids.current": "0\n", "pids.events": "max 0\n"},
}


class FakeCgroupFS:
    """A temporary directory laid out like cgroupfs mounts, and the kernel's side of the bargain.

    ``mkdir`` makes a directory and fills it with the control files of its hierarchy (minus
    ``without``); ``rmdir`` refuses (EBUSY) while there are child cgroups or processes, then removes
    the files and the directory; ``kill`` records signals and, for pids in ``mortal``, takes the
    process out of every cgroup.procs; ``sleep`` records naps and acts out cgroup.kill writes.
    """

    def __init__(self, testcase: unittest.TestCase, version: int, *, without: tuple[str, ...] = (),
                 combined_cpu: bool = False, cpuacct: bool = True, root_subtree: str = "",
                 root_controllers: str = ALL_CONTROLLERS, use_hierarchy: str = "1\n") -> None:
        self.base = tempfile.mkdtemp(prefix="bolt-fake-cgroupfs-")
        testcase.addCleanup(shutil.rmtree, self.base, True)
        self.version = version
        self.without = set(without)
        self.killed: list[tuple[int, int]] = []
        self.naps: list[float] = []
        self.mortal: set[int] = set()
        self.on_kill = None
        self.on_sleep = None
        self.roots: dict[str, str] = {}  # mount point -> kind
        if version == 2:
            self.unified = self._mount("unified", "unified")
            self.write(self.unified, "cgroup.controllers", root_controllers)
            self.write(self.unified, "cgroup.subtree_control", root_subtree)
            self.layout = CgroupLayout.v2(self.unified)
        else:
            self.cpu = self._mount("cpu,cpuacct" if combined_cpu else "cpu", "cpu")
            self.cpuacct = self.cpu if combined_cpu else (self._mount("cpuacct", "cpuacct") if cpuacct else None)
            self.memory = self._mount("memory", "memory")
            self.pids = self._mount("pids", "pids")
            self.write(self.memory, "memory.use_hierarchy", use_hierarchy)
            self.layout = CgroupLayout.v1(self.cpu, self.memory, self.pids, self.cpuacct)

    def _mount(self, name: str, kind: str) -> str:
        path = os.path.join(self.base, name)
        os.mkdir(path)
        self.roots[path] = kind
        for file, content in self._files(path).items():
            self.write(path, file, content if content is not None else "1\n")
        return path

    def _files(self, path: str) -> dict[str, str | None]:
        root = next(r for r in self.roots if path == r or path.startswith(r + "/"))
        if self.version == 2:
            files = dict(V2_FILES)
        else:
            files = dict(V1_COMMON)
            if os.path.basename(root) == "cpu,cpuacct":
                files.update(V1_FILES["cpu"])
                files.update(V1_FILES["cpuacct"])
            else:
                files.update(V1_FILES[self.roots[root]])
        return {k: v for k, v in files.items() if k not in self.without}

    def cgroups(self, prefix: str = "bolt", attempts: int = 5) -> Cgroups:
        return Cgroups(self.layout, prefix, mkdir=self.mkdir, rmdir=self.rmdir, kill=self.kill,
                       sleep=self.sleep, attempts=attempts, interval=0.01)

    # the kernel's part

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        for file, content in self._files(path).items():
            if content is None:  # inherited
                content = self.read(os.path.dirname(path), file)
            self.write(path, file, content)

    def rmdir(self, path: str) -> None:
        if any(entry.is_dir(follow_symlinks=False) for entry in os.scandir(path)):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        procs = os.path.join(path, "cgroup.procs")
        if os.path.exists(procs) and self.read(path, "cgroup.procs").strip():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        for entry in os.scandir(path):
            os.unlink(entry.path)
        os.rmdir(path)

    def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))
        if self.on_kill:
            self.on_kill(pid, sig)
        if pid not in self.mortal:
            return
        for procs in self._all("cgroup.procs"):
            pids = [p for p in open(procs).read().split() if int(p) != pid]
            with open(procs, "w") as f:
                f.write("".join(p + "\n" for p in pids))

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        if self.on_sleep:
            self.on_sleep()
        for kill in self._all("cgroup.kill"):
            if open(kill).read().strip() == "1":
                with open(os.path.join(os.path.dirname(kill), "cgroup.procs"), "w"):
                    pass
                with open(kill, "w"):
                    pass

    def _all(self, name: str) -> list[str]:
        found = []
        for dirpath, _, files in os.walk(self.base):
            if name in files:
                found.append(os.path.join(dirpath, name))
        return found

    # test helpers

    @staticmethod
    def read(*path: str) -> str:
        with open(os.path.join(*path)) as f:
            return f.read()

    @staticmethod
    def write(*path_and_text: str) -> None:
        *path, text = path_and_text
        with open(os.path.join(*path), "w") as f:
            f.write(text)

    def put_pids(self, dirpath: str, *pids: int) -> None:
        self.write(dirpath, "cgroup.procs", "".join(f"{p}\n" for p in pids))


class LogCapture:
    def __init__(self, testcase: unittest.TestCase) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events)

    def formats(self) -> list[str]:
        return [e.get("log_format", "") for e in self.events]


LIMITS = Limits(cpu_quota_us=50_000, memory_limit_bytes=256 << 20, pids_max=64)


# --------------------------------------------------------------------------------------------------
# v2


class V2Tests(unittest.TestCase):

    def setUp(self) -> None:
        self.fs = FakeCgroupFS(self, 2)
        self.cg = self.fs.cgroups()
        self.root = self.fs.unified
        self.bolt = os.path.join(self.root, "bolt")
        self.proj = os.path.join(self.bolt, "web")
        self.box = os.path.join(self.proj, "dev1")

    def test_ensure_project(self) -> None:
        log = LogCapture(self)
        self.cg.ensure_project("web", LIMITS)
        read = self.fs.read
        self.assertEqual(read(self.root, "cgroup.subtree_control"), "+cpu +memory +pids")
        self.assertEqual(read(self.bolt, "cgroup.subtree_control"), "+cpu +memory +pids")
        self.assertEqual(read(self.proj, "cgroup.subtree_control"), "+cpu +memory +pids")
        self.assertEqual(read(self.proj, "cpu.max"), "50000 100000")
        self.assertEqual(read(self.proj, "memory.max"), str(256 << 20))
        self.assertEqual(read(self.proj, "memory.swap.max"), "0")
        self.assertEqual(read(self.proj, "pids.max"), "64")
        # the bolt root carries no limits of its own
        self.assertEqual(read(self.bolt, "memory.max"), "max\n")
        self.assertEqual(read(self.bolt, "cpu.max"), "max 100000\n")
        created = [e for e in log.events if "project" in e and e.get("what") == "created"]
        self.assertEqual(len(created), 1)
        self.assertEqual((created[0]["project"], created[0]["limits"]), ("web", LIMITS))

    def test_ensure_project_idempotent(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_project("web", Limits(100_000, 1 << 30, 10))
        self.assertEqual(self.fs.read(self.proj, "cpu.max"), "100000 100000")
        self.assertEqual(self.fs.read(self.proj, "memory.max"), str(1 << 30))
        self.assertEqual(self.fs.read(self.proj, "pids.max"), "10")
        self.assertEqual(self.cg.list_projects(), ["web"])

    def test_root_controllers_already_enabled_untouched(self) -> None:
        self.fs.write(self.root, "cgroup.subtree_control", "cpuset cpu io memory pids\n")
        self.cg.ensure_project("web", LIMITS)
        self.assertEqual(self.fs.read(self.root, "cgroup.subtree_control"), "cpuset cpu io memory pids\n")

    def test_root_enables_only_missing(self) -> None:
        self.fs.write(self.root, "cgroup.subtree_control", "memory pids\n")
        self.cg.ensure_project("web", LIMITS)
        self.assertEqual(self.fs.read(self.root, "cgroup.subtree_control"), "+cpu")

    def test_controller_unavailable(self) -> None:
        fs = FakeCgroupFS(self, 2, root_controllers="cpuset cpu io memory\n")
        with self.assertRaises(CgroupUnavailable) as caught:
            fs.cgroups().ensure_project("web", LIMITS)
        self.assertIn("pids", str(caught.exception))
        self.assertIn("cgroup.controllers", str(caught.exception))
        self.assertFalse(os.path.exists(os.path.join(fs.unified, "bolt")))

    def test_root_subtree_control_refused(self) -> None:
        """If the root's subtree_control will not take the controllers, the error says so."""
        SpyWrites(self.cg.backend, fail={"cgroup.subtree_control": errno.EBUSY})
        with self.assertRaises(CgroupError) as caught:
            self.cg.ensure_project("web", LIMITS)
        message = str(caught.exception)
        self.assertIn(os.path.join(self.root, "cgroup.subtree_control"), message)
        self.assertIn("EBUSY", message)
        self.assertIn("could not enable cpu, memory, pids for the hierarchy root", message)
        self.assertFalse(os.path.exists(self.bolt))

    def test_unlimited(self) -> None:
        self.cg.ensure_project("web", Limits(None, None, None))
        self.assertEqual(self.fs.read(self.proj, "cpu.max"), "max 100000")
        self.assertEqual(self.fs.read(self.proj, "memory.max"), "max")
        self.assertEqual(self.fs.read(self.proj, "pids.max"), "max")

    def test_failed_limits_undo_new_project(self) -> None:
        SpyWrites(self.cg.backend, fail={"memory.max": errno.EINVAL})
        self.assertRaises(CgroupError, self.cg.ensure_project, "web", LIMITS)
        self.assertFalse(os.path.exists(self.proj))
        self.assertEqual(self.cg.list_projects(), [])

    def test_failed_limits_keep_existing_project(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        SpyWrites(self.cg.backend, fail={"memory.max": errno.EINVAL})
        self.assertRaises(CgroupError, self.cg.ensure_project, "web", LIMITS)
        self.assertTrue(os.path.isdir(self.box))
        self.assertEqual(self.fs.read(self.proj, "memory.max"), str(256 << 20))

    def test_no_swap_file(self) -> None:
        fs = FakeCgroupFS(self, 2, without=("memory.swap.max",))
        fs.cgroups().ensure_project("web", LIMITS)
        self.assertFalse(os.path.exists(os.path.join(fs.unified, "bolt", "web", "memory.swap.max")))
        self.assertEqual(fs.read(fs.unified, "bolt", "web", "memory.max"), str(256 << 20))

    def test_set_limits_needs_project(self) -> None:
        with self.assertRaises(CgroupError) as caught:
            self.cg.set_limits("nope", LIMITS)
        self.assertEqual(caught.exception.errno, errno.ENOENT)
        self.assertIn("nope", str(caught.exception))

    def test_missing_control_file_named(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        os.unlink(os.path.join(self.proj, "memory.max"))
        with self.assertRaises(CgroupError) as caught:
            self.cg.set_limits("web", LIMITS)
        self.assertIn(os.path.join(self.proj, "memory.max"), str(caught.exception))
        self.assertIn("ENOENT", str(caught.exception))
        self.assertEqual(caught.exception.path, os.path.join(self.proj, "memory.max"))
        # writes never create files
        self.assertFalse(os.path.exists(os.path.join(self.proj, "memory.max")))

    def test_sandbox_and_processes(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        self.cg.ensure_sandbox("web", "dev1")  # idempotent
        self.assertTrue(os.path.isdir(self.box))
        # limits stay on the project; the sandbox keeps defaults
        self.assertEqual(self.fs.read(self.box, "memory.max"), "max\n")
        self.assertEqual(self.fs.read(self.box, "pids.max"), "max\n")
        self.assertEqual(self.fs.read(self.box, "memory.oom.group"), "0\n")
        self.cg.add_process("web", "dev1", 4242)
        self.assertEqual(self.fs.read(self.box, "cgroup.procs"), "4242")
        self.assertEqual(self.cg.pids("web", "dev1"), [4242])
        self.assertEqual(self.cg.procs_files("web", "dev1"), [os.path.join(self.box, "cgroup.procs")])
        self.assertEqual(self.cg.list_sandboxes("web"), ["dev1"])

    def test_sandbox_needs_project(self) -> None:
        with self.assertRaises(CgroupError) as caught:
            self.cg.ensure_sandbox("web", "dev1")
        self.assertEqual(caught.exception.errno, errno.ENOENT)
        self.assertIn("ensure_project first", str(caught.exception))

    def test_add_process_bad_pid(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        for bad in (0, -1, True, "12", 1.0):
            self.assertRaises(ValueError, self.cg.add_process, "web", "dev1", bad)
        self.assertEqual(self.fs.read(self.box, "cgroup.procs"), "")

    def test_kill_with_cgroup_kill(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        self.fs.put_pids(self.box, 10, 11)
        self.cg.kill_sandbox("web", "dev1")
        self.assertEqual(self.fs.killed, [])
        self.assertEqual(self.cg.pids("web", "dev1"), [])
        self.assertEqual(len(self.fs.naps), 1)

    def test_kill_without_cgroup_kill(self) -> None:
        fs = FakeCgroupFS(self, 2, without=("cgroup.kill",))
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        cg.ensure_sandbox("web", "dev1")
        box = os.path.join(fs.unified, "bolt", "web", "dev1")
        fs.put_pids(box, 10, 11)
        fs.mortal = {10, 11, 12}
        # 10 forks 12 just before it dies: the second round must catch it
        forked = []

        def fork(pid, sig):
            if pid == 10 and not forked:
                forked.append(12)
                with open(os.path.join(box, "cgroup.procs"), "a") as f:
                    f.write("12\n")
        fs.on_kill = fork
        cg.kill_sandbox("web", "dev1")
        self.assertEqual(fs.killed, [(10, signal.SIGKILL), (11, signal.SIGKILL), (12, signal.SIGKILL)])
        self.assertEqual(cg.pids("web", "dev1"), [])

    def test_kill_gives_up(self) -> None:
        fs = FakeCgroupFS(self, 2, without=("cgroup.kill",))
        cg = fs.cgroups(attempts=3)
        cg.ensure_project("web", LIMITS)
        cg.ensure_sandbox("web", "dev1")
        fs.put_pids(os.path.join(fs.unified, "bolt", "web", "dev1"), 77)  # never dies
        with self.assertRaises(CgroupError) as caught:
            cg.kill_sandbox("web", "dev1")
        self.assertIn("[77]", str(caught.exception))
        self.assertEqual(fs.killed, [(77, signal.SIGKILL)] * 3)
        self.assertEqual(len(fs.naps), 3)

    def test_kill_missing_sandbox_is_noop(self) -> None:
        self.cg.kill_sandbox("web", "dev1")
        self.assertEqual((self.fs.killed, self.fs.naps), ([], []))

    def test_kill_ignores_vanished_pid(self) -> None:
        fs = FakeCgroupFS(self, 2, without=("cgroup.kill",))
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        cg.ensure_sandbox("web", "dev1")
        fs.put_pids(os.path.join(fs.unified, "bolt", "web", "dev1"), 5)

        def gone(pid, sig):
            fs.put_pids(os.path.join(fs.unified, "bolt", "web", "dev1"))
            raise ProcessLookupError(pid)
        fs.on_kill = gone
        cg.kill_sandbox("web", "dev1")

    def test_kill_permission_error(self) -> None:
        fs = FakeCgroupFS(self, 2, without=("cgroup.kill",))
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        cg.ensure_sandbox("web", "dev1")
        fs.put_pids(os.path.join(fs.unified, "bolt", "web", "dev1"), 5)

        def denied(pid, sig):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        fs.on_kill = denied
        with self.assertRaises(CgroupError) as caught:
            cg.kill_sandbox("web", "dev1")
        self.assertEqual(caught.exception.errno, errno.EPERM)
        self.assertIn("EPERM", str(caught.exception))

    def test_remove(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        with self.assertRaises(CgroupError) as caught:
            self.cg.remove_project("web")
        self.assertIn("dev1", str(caught.exception))
        self.assertEqual(caught.exception.errno, errno.EBUSY)
        self.cg.remove_sandbox("web", "dev1")
        self.assertFalse(os.path.exists(self.box))
        self.cg.remove_sandbox("web", "dev1")  # idempotent
        self.cg.remove_project("web")
        self.assertFalse(os.path.exists(self.proj))
        self.cg.remove_project("web")  # idempotent
        self.assertEqual(self.cg.list_projects(), [])
        self.cg.remove_root()
        self.assertFalse(os.path.exists(self.bolt))
        self.cg.remove_root()  # idempotent
        self.assertEqual(self.fs.naps, [])

    def test_remove_root_keeps_projects(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.remove_root()
        self.assertTrue(os.path.isdir(self.proj))

    def test_remove_busy_sandbox_retries_then_fails(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        self.fs.put_pids(self.box, 99)
        with self.assertRaises(CgroupError) as caught:
            self.cg.remove_sandbox("web", "dev1")
        self.assertEqual(caught.exception.errno, errno.EBUSY)
        self.assertIn("EBUSY", str(caught.exception))
        self.assertIn("still has processes", str(caught.exception))
        self.assertEqual(len(self.fs.naps), 5)
        self.assertTrue(os.path.isdir(self.box))

    def test_remove_sandbox_waits_for_exit(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        self.fs.put_pids(self.box, 99)
        self.fs.on_sleep = lambda: len(self.fs.naps) == 2 and self.fs.put_pids(self.box)
        self.cg.remove_sandbox("web", "dev1")
        self.assertFalse(os.path.exists(self.box))
        self.assertEqual(len(self.fs.naps), 2)

    def test_usage(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.fs.write(self.proj, "memory.current", "123456\n")
        self.fs.write(self.proj, "cpu.stat", "usage_usec 987\nuser_usec 900\nsystem_usec 87\n")
        self.fs.write(self.proj, "pids.current", "7\n")
        self.assertEqual(self.cg.usage("web"),
                         {"memory_current_bytes": 123456, "cpu_usage_usec": 987, "pids_current": 7})
        self.assertRaises(CgroupError, self.cg.usage, "other")

    def test_listing_ignores_foreign_entries(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_project("db", LIMITS)
        os.mkdir(os.path.join(self.bolt, "Not.Ours"))
        os.symlink(self.proj, os.path.join(self.bolt, "alias"))
        self.assertEqual(self.cg.list_projects(), ["db", "web"])
        self.assertEqual(self.cg.list_sandboxes("web"), [])
        self.assertEqual(self.cg.list_sandboxes("nope"), [])

    def test_prefix(self) -> None:
        cg = self.fs.cgroups(prefix="bolt-test-1")
        cg.ensure_project("web", LIMITS)
        self.assertTrue(os.path.isdir(os.path.join(self.root, "bolt-test-1", "web")))
        self.assertEqual(self.cg.list_projects(), [])


# --------------------------------------------------------------------------------------------------
# v1


class SpyWrites:
    """Records the control-file writes a backend makes, in order; can make some fail."""

    def __init__(self, backend, fail: dict[str, int] | None = None) -> None:
        self.backend = backend
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or {}
        self.real = backend._write
        backend._write = self

    def __call__(self, root, parts, name, value, hints=None):
        self.calls.append((name, value))
        if name in self.fail:
            err = OSError(self.fail[name], os.strerror(self.fail[name]))
            raise self.backend._error("write", os.path.join(root, *parts, name), err, hints)
        return self.real(root, parts, name, value, hints)


class V1Tests(unittest.TestCase):

    def setUp(self) -> None:
        self.fs = FakeCgroupFS(self, 1)
        self.cg = self.fs.cgroups()

    def at(self, hierarchy: str, *parts: str) -> str:
        return os.path.join(getattr(self.fs, hierarchy), "bolt", *parts)

    def test_ensure_project(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        read = self.fs.read
        self.assertEqual(read(self.at("cpu", "web"), "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        self.assertEqual(read(self.at("cpu", "web"), "cpu.cfs_quota_us"), "50000")
        self.assertEqual(read(self.at("memory", "web"), "memory.limit_in_bytes"), str(256 << 20))
        self.assertEqual(read(self.at("memory", "web"), "memory.memsw.limit_in_bytes"), str(256 << 20))
        self.assertEqual(read(self.at("memory", "web"), "memory.oom_control"),
                         "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
        self.assertEqual(read(self.at("pids", "web"), "pids.max"), "64")
        self.assertTrue(os.path.isdir(self.at("cpuacct", "web")))
        # nothing written on the bolt root, and nothing in the wrong hierarchy
        self.assertEqual(read(self.at("cpu"), "cpu.cfs_quota_us"), "-1\n")
        self.assertEqual(read(self.at("memory"), "memory.limit_in_bytes"), "9223372036854771712\n")
        self.assertEqual(read(self.at("memory"), "memory.use_hierarchy"), "1\n")
        self.assertEqual(read(self.at("pids"), "pids.max"), "max\n")
        self.assertFalse(os.path.exists(os.path.join(self.at("cpu", "web"), "memory.limit_in_bytes")))
        self.assertEqual(self.cg.list_projects(), ["web"])

    def test_use_hierarchy_turned_on(self) -> None:
        fs = FakeCgroupFS(self, 1, use_hierarchy="0\n")
        fs.cgroups().ensure_project("web", LIMITS)
        self.assertEqual(fs.read(fs.memory, "bolt", "memory.use_hierarchy"), "1")
        self.assertEqual(fs.read(fs.memory, "bolt", "web", "memory.use_hierarchy"), "1")
        self.assertEqual(fs.read(fs.memory, "memory.use_hierarchy"), "0\n")

    def test_unlimited(self) -> None:
        self.cg.ensure_project("web", Limits(None, None, None))
        self.assertEqual(self.fs.read(self.at("cpu", "web"), "cpu.cfs_quota_us"), "-1")
        self.assertEqual(self.fs.read(self.at("memory", "web"), "memory.limit_in_bytes"), "-1")
        self.assertEqual(self.fs.read(self.at("memory", "web"), "memory.memsw.limit_in_bytes"), "-1")
        self.assertEqual(self.fs.read(self.at("pids", "web"), "pids.max"), "max")

    def test_memory_write_order(self) -> None:
        """memsw >= memory at every moment: lower memory first, raise memsw first."""
        spy = SpyWrites(self.cg.backend)
        self.cg.ensure_project("web", LIMITS)  # from unlimited: lowering
        memory_writes = [c for c in spy.calls if c[0].startswith("memory.")]
        self.assertEqual(memory_writes, [("memory.limit_in_bytes", str(256 << 20)),
                                         ("memory.memsw.limit_in_bytes", str(256 << 20))])
        spy.calls.clear()
        self.cg.set_limits("web", Limits(50_000, 512 << 20, 64))  # raising
        self.assertEqual(spy.calls[:2], [("memory.memsw.limit_in_bytes", str(512 << 20)),
                                         ("memory.limit_in_bytes", str(512 << 20))])
        spy.calls.clear()
        self.cg.set_limits("web", Limits(50_000, None, 64))  # raising to unlimited
        self.assertEqual(spy.calls[:2], [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1")])
        self.assertEqual([c[0] for c in spy.calls[2:]], ["cpu.cfs_period_us", "cpu.cfs_quota_us", "pids.max"])

    def test_memory_busy_is_clear_and_changes_nothing(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        SpyWrites(self.cg.backend, fail={"memory.limit_in_bytes": errno.EBUSY})
        with self.assertRaises(CgroupError) as caught:
            self.cg.set_limits("web", Limits(1000, 1 << 20, 8))
        err = caught.exception
        self.assertEqual(err.errno, errno.EBUSY)
        self.assertIn("memory.limit_in_bytes", str(err))
        self.assertIn("EBUSY", str(err))
        self.assertIn("below what the project's processes use now", str(err))
        # memory goes first, so nothing else changed
        self.assertEqual(self.fs.read(self.at("cpu", "web"), "cpu.cfs_quota_us"), "50000")
        self.assertEqual(self.fs.read(self.at("pids", "web"), "pids.max"), "64")

    def test_memsw_failure_restores_memory(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        spy = SpyWrites(self.cg.backend, fail={"memory.memsw.limit_in_bytes": errno.EBUSY})
        with self.assertRaises(CgroupError):
            self.cg.set_limits("web", Limits(50_000, 128 << 20, 64))
        self.assertEqual(spy.calls, [("memory.limit_in_bytes", str(128 << 20)),
                                     ("memory.memsw.limit_in_bytes", str(128 << 20)),
                                     ("memory.limit_in_bytes", str(256 << 20))])
        self.assertEqual(self.fs.read(self.at("memory", "web"), "memory.limit_in_bytes"), str(256 << 20))

    def test_no_swap_accounting(self) -> None:
        fs = FakeCgroupFS(self, 1, without=("memory.memsw.limit_in_bytes",))
        fs.cgroups().ensure_project("web", LIMITS)
        web = os.path.join(fs.memory, "bolt", "web")
        self.assertEqual(fs.read(web, "memory.limit_in_bytes"), str(256 << 20))
        self.assertFalse(os.path.exists(os.path.join(web, "memory.memsw.limit_in_bytes")))

    def test_cpu_quota_error_names_file(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        SpyWrites(self.cg.backend, fail={"cpu.cfs_quota_us": errno.EINVAL})
        with self.assertRaises(CgroupError) as caught:
            self.cg.set_limits("web", Limits(500, 256 << 20, 64))
        self.assertIn(os.path.join(self.at("cpu", "web"), "cpu.cfs_quota_us"), str(caught.exception))
        self.assertIn("EINVAL", str(caught.exception))
        self.assertIn("at least 1000", str(caught.exception))

    def test_sandbox_in_every_hierarchy(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        for hierarchy in ("cpu", "cpuacct", "memory", "pids"):
            self.assertTrue(os.path.isdir(self.at(hierarchy, "web", "dev1")), hierarchy)
        # children keep the kernel defaults: the budget is the project's
        self.assertEqual(self.fs.read(self.at("memory", "web", "dev1"), "memory.limit_in_bytes"),
                         "9223372036854771712\n")
        self.assertEqual(self.fs.read(self.at("cpu", "web", "dev1"), "cpu.cfs_quota_us"), "-1\n")
        self.cg.add_process("web", "dev1", 4242)
        for hierarchy in ("cpu", "cpuacct", "memory", "pids"):
            self.assertEqual(self.fs.read(self.at(hierarchy, "web", "dev1"), "cgroup.procs"), "4242")
        self.assertEqual(self.cg.procs_files("web", "dev1"),
                         [os.path.join(self.at(h, "web", "dev1"), "cgroup.procs")
                          for h in ("cpu", "cpuacct", "memory", "pids")])
        self.assertEqual(self.cg.pids("web", "dev1"), [4242])

    def test_sandbox_needs_project_everywhere(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.fs.rmdir(self.at("pids", "web"))
        with self.assertRaises(CgroupError) as caught:
            self.cg.ensure_sandbox("web", "dev1")
        self.assertIn(self.at("pids", "web"), str(caught.exception))
        self.assertFalse(os.path.exists(self.at("cpu", "web", "dev1")))

    def test_pids_union(self) -> None:
        """A process that joined only some hierarchies still shows (and gets killed)."""
        self.cg.ensure_project("web", LIMITS)
        self.cg.ensure_sandbox("web", "dev1")
        self.fs.put_pids(self.at("cpu", "web", "dev1"), 5, 6)
        self.fs.put_pids(self.at("memory", "web", "dev1"), 6, 7)
        self.assertEqual(self.cg.pids("web", "dev1"), [5, 6, 7])
        self.fs.mortal = {5, 6, 7}
        self.cg.kill_sandbox("web", "dev1")
        self.assertEqual(sorted(self.fs.killed), [(5, 9), (6, 9), (7, 9)])
        self.assertEqual(self.cg.pids("web", "dev1"), [])
        self.cg.remove_sandbox("web", "dev1")
        self.cg.remove_project("web")
        self.cg.remove_root()
        for hierarchy in ("cpu", "cpuacct", "memory", "pids"):
            self.assertEqual(os.listdir(getattr(self.fs, hierarchy)).count("bolt"), 0)

    def test_combined_cpu_cpuacct(self) -> None:
        fs = FakeCgroupFS(self, 1, combined_cpu=True)
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        cg.ensure_sandbox("web", "dev1")
        self.assertEqual(len(cg.procs_files("web", "dev1")), 3)
        fs.write(fs.cpu, "bolt", "web", "cpuacct.usage", "5000000\n")
        self.assertEqual(cg.usage("web")["cpu_usage_usec"], 5000)

    def test_usage(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.fs.write(self.at("memory", "web"), "memory.usage_in_bytes", "4096\n")
        self.fs.write(self.at("cpuacct", "web"), "cpuacct.usage", "1234567\n")
        self.fs.write(self.at("pids", "web"), "pids.current", "3\n")
        self.assertEqual(self.cg.usage("web"),
                         {"memory_current_bytes": 4096, "cpu_usage_usec": 1234, "pids_current": 3})

    def test_usage_without_cpuacct(self) -> None:
        fs = FakeCgroupFS(self, 1, cpuacct=False)
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        self.assertEqual(cg.usage("web"), {"memory_current_bytes": 0, "cpu_usage_usec": None, "pids_current": 0})

    def test_usage_garbage(self) -> None:
        self.cg.ensure_project("web", LIMITS)
        self.fs.write(self.at("pids", "web"), "pids.current", "lots\n")
        with self.assertRaises(CgroupError) as caught:
            self.cg.usage("web")
        self.assertIn("pids.current", str(caught.exception))

    def test_list_union(self) -> None:
        """Reconciliation sees a project even if only one hierarchy has it (a half-made one)."""
        os.makedirs(os.path.join(self.fs.memory, "bolt", "half", "box"))
        self.assertEqual(self.cg.list_projects(), ["half"])
        self.assertEqual(self.cg.list_sandboxes("half"), ["box"])


# --------------------------------------------------------------------------------------------------
# names and links


class SafetyTests(unittest.TestCase):
    BAD = ("", "A", "-x", "../x", "..", "a/b", "a" * 64, "a\n", "a.b", None)

    def test_names_validated_everywhere(self) -> None:
        for version in (1, 2):
            fs = FakeCgroupFS(self, version)
            cg = fs.cgroups()
            cg.ensure_project("ok", LIMITS)
            cg.ensure_sandbox("ok", "ok")
            for bad in self.BAD:
                calls = [
                    (cg.ensure_project, bad, LIMITS), (cg.set_limits, bad, LIMITS), (cg.remove_project, bad),
                    (cg.ensure_sandbox, bad, "ok"), (cg.ensure_sandbox, "ok", bad),
                    (cg.add_process, bad, "ok", 1), (cg.add_process, "ok", bad, 1),
                    (cg.pids, "ok", bad), (cg.kill_sandbox, bad, "ok"), (cg.kill_sandbox, "ok", bad),
                    (cg.remove_sandbox, "ok", bad), (cg.remove_sandbox, bad, "ok"),
                    (cg.usage, bad), (cg.list_sandboxes, bad), (cg.procs_files, "ok", bad),
                ]
                for call, *args in calls:
                    self.assertRaises(ValueError, call, *args)
            self.assertEqual(cg.list_projects(), ["ok"])
            self.assertEqual(cg.list_sandboxes("ok"), ["ok"])
            self.assertRaises(ValueError, fs.cgroups, "../etc")

    def outside(self, content: str = "untouched") -> str:
        path = os.path.join(tempfile.mkdtemp(prefix="bolt-outside-"), "target")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        with open(path, "w") as f:
            f.write(content)
        return path

    def test_control_file_symlink_refused(self) -> None:
        fs = FakeCgroupFS(self, 2)
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        target = self.outside()
        link = os.path.join(fs.unified, "bolt", "web", "memory.max")
        os.unlink(link)
        os.symlink(target, link)
        with self.assertRaises(CgroupError) as caught:
            cg.set_limits("web", LIMITS)
        self.assertEqual(caught.exception.errno, errno.ELOOP)
        self.assertIn(link, str(caught.exception))
        self.assertIn("symbolic link", str(caught.exception))
        self.assertEqual(fs.read(target), "untouched")

    def test_procs_symlink_refused(self) -> None:
        fs = FakeCgroupFS(self, 1)
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        cg.ensure_sandbox("web", "dev1")
        target = self.outside()
        link = os.path.join(fs.memory, "bolt", "web", "dev1", "cgroup.procs")
        os.unlink(link)
        os.symlink(target, link)
        self.assertRaises(CgroupError, cg.add_process, "web", "dev1", 1234)
        self.assertRaises(CgroupError, cg.pids, "web", "dev1")
        self.assertEqual(fs.read(target), "untouched")

    def test_directory_symlink_refused(self) -> None:
        """A project directory swapped for a link to elsewhere: no write, no mkdir, no rmdir there."""
        fs = FakeCgroupFS(self, 2)
        cg = fs.cgroups()
        cg.ensure_project("web", LIMITS)
        elsewhere = tempfile.mkdtemp(prefix="bolt-elsewhere-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        for name in ("cpu.max", "memory.max", "pids.max", "cgroup.subtree_control"):
            fs.write(elsewhere, name, "untouched")
        os.mkdir(os.path.join(elsewhere, "dev1"))
        project = os.path.join(fs.unified, "bolt", "web")
        fs.rmdir(project)
        os.symlink(elsewhere, project)
        for call, *args in [(cg.set_limits, "web", LIMITS), (cg.ensure_project, "web", LIMITS),
                            (cg.ensure_sandbox, "web", "dev2"), (cg.remove_sandbox, "web", "dev1"),
                            (cg.list_sandboxes, "web"), (cg.usage, "web"), (cg.kill_sandbox, "web", "dev1"),
                            (cg.remove_project, "web")]:
            self.assertRaises(CgroupError, call, *args)
        self.assertEqual(sorted(os.listdir(elsewhere)),
                         ["cgroup.subtree_control", "cpu.max", "dev1", "memory.max", "pids.max"])
        for name in ("cpu.max", "memory.max", "pids.max", "cgroup.subtree_control"):
            self.assertEqual(fs.read(elsewhere, name), "untouched")

    def test_bolt_root_symlink_refused(self) -> None:
        fs = FakeCgroupFS(self, 1)
        elsewhere = tempfile.mkdtemp(prefix="bolt-elsewhere-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        os.symlink(elsewhere, os.path.join(fs.pids, "bolt"))
        cg = fs.cgroups()
        self.assertRaises(CgroupError, cg.ensure_project, "web", LIMITS)
        self.assertRaises(CgroupError, cg.list_projects)
        self.assertEqual(os.listdir(elsewhere), [])

