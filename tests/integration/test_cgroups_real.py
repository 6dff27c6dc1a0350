"""The cgroups adapter against the host's real cgroupfs (v1 here, v2 on current Debian/Ubuntu).

Everything happens under a unique prefix (``bolt-test-<random>``) at the top of each hierarchy, so
nothing real is touched, and each test's cleanup kills and removes whatever is under that prefix --
independently of the adapter, so a bug in it cannot leave cgroups or processes behind.

Skips when not root, except with CI=true, where not being root is a failure.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from unittest import SkipTest

from twisted.trial import unittest

from bolt.host.cgroups import CPU_PERIOD_US, CgroupError, CgroupLayout, Cgroups, Limits, detect
from tests.integration.server import remove_cgroup_dir
from tests.integration.support import require_root

PR_SET_CHILD_SUBREAPER = 36
MiB = 1 << 20


def host_layout() -> CgroupLayout:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return detect(f.read())


def roots_of(layout: CgroupLayout) -> list[str]:
    roots: list[str] = []
    for root in (layout.unified, layout.cpu, layout.cpuacct, layout.memory, layout.pids):
        if root and root not in roots:
            roots.append(root)
    return roots


def read(*path: str) -> str:
    with open(os.path.join(*path)) as f:
        return f.read().strip()


def scrub(layout: CgroupLayout, prefix: str) -> list[str]:
    """Kill every process under ``<root>/<prefix>`` and rmdir the tree, leaves first, in every
    hierarchy; return what could not be removed.  Uses no adapter code on purpose."""
    left = []
    for root in roots_of(layout):
        top = os.path.join(root, prefix)
        if os.path.isdir(top):
            left += remove_cgroup_dir(top)
    return left


class RealCgroupsTests(unittest.TestCase):

    def setUp(self) -> None:
        require_root(self)
        self.layout = host_layout()
        self.prefix = "bolt-test-" + secrets.token_hex(4)
        self.cg = Cgroups(self.layout, self.prefix)
        self.addCleanup(self._scrub)

    def _scrub(self) -> None:
        left = scrub(self.layout, self.prefix)
        self.assertEqual(left, [], "cgroups left behind")
        for root in roots_of(self.layout):
            self.assertFalse(os.path.exists(os.path.join(root, self.prefix)))

    # -- helpers ----------------------------------------------------------------------------------

    def spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a child that is always killed and reaped at cleanup."""
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kwargs)

        def end() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
        self.addCleanup(end)
        return proc

    def become_subreaper(self) -> None:
        """Make this process the reaper of its orphaned descendants for the test's duration.

        A sandbox's pid 1 reaps its orphans; in a test the shell that forks may die before its
        children, and they would go to the host's init -- which may not reap them (it does not on
        this VM).  As a subreaper, this process gets them and reaps them at cleanup.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            self.fail(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
        self.addCleanup(libc.prctl, PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def reap(self, pids: set[int]) -> None:
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def project_dir(self, root: str | None, project: str, *more: str) -> str:
        assert root is not None
        return os.path.join(root, self.prefix, project, *more)

    def assertLimits(self, project: str, limits: Limits) -> None:
        layout = self.layout
        if layout.version == 2:
            d = self.project_dir(layout.unified, project)
            quota = "max" if limits.cpu_quota_us is None else str(limits.cpu_quota_us)
            self.assertEqual(read(d, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            self.assertEqual(read(d, "memory.max"),
                             "max" if limits.memory_limit_bytes is None else str(limits.memory_limit_bytes))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                self.assertEqual(read(d, "memory.swap.max"), "0")
            self.assertEqual(read(d, "pids.max"), "max" if limits.pids_max is None else str(limits.pids_max))
            for d in (os.path.join(layout.unified, self.prefix), self.project_dir(layout.unified, project)):
                self.assertEqual(set(read(d, "cgroup.subtree_control").split()) & {"cpu", "memory", "pids"},
                                 {"cpu", "memory", "pids"})
            return
        cpu = self.project_dir(layout.cpu, project)
        memory = self.project_dir(layout.memory, project)
        self.assertEqual(read(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        self.assertEqual(read(cpu, "cpu.cfs_quota_us"),
                         "-1" if limits.cpu_quota_us is None else str(limits.cpu_quota_us))
        files = ["memory.limit_in_bytes"]
        if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
            files.append("memory.memsw.limit_in_bytes")
        for name in files:
            value = int(read(memory, name))
            if limits.memory_limit_bytes is None:
                self.assertGreaterEqual(value, 1 << 62, name)
            else:
                self.assertEqual(value, limits.memory_limit_bytes, name)
        self.assertEqual(read(memory, "..", "memory.use_hierarchy"), "1")
        self.assertEqual(read(self.project_dir(layout.pids, project), "pids.max"),
                         "max" if limits.pids_max is None else str(limits.pids_max))

    # -- tests ------------------------------------------------------------------------------------

    def test_detected_layout(self) -> None:
        """This VM is a v1 hybrid; a host with cgroup2 at /sys/fs/cgroup must come out v2."""
        expected = 2 if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else 1
        self.assertEqual(self.layout.version, expected)
        self.assertEqual(Cgroups.from_host(self.prefix).layout, self.layout)
        for root in roots_of(self.layout):
            self.assertTrue(os.path.ismount(root), root)
        if expected == 1:
            for root in (self.layout.cpu, self.layout.memory, self.layout.pids):
                self.assertTrue(os.path.exists(os.path.join(root, "cgroup.procs")), root)

    def test_limits_read_back(self) -> None:
        first = Limits(cpu_quota_us=50_000, memory_limit_bytes=256 * MiB, pids_max=64)
        self.cg.ensure_project("limits", first)
        self.assertLimits("limits", first)
        self.assertEqual(self.cg.list_projects(), ["limits"])
        for root in roots_of(self.layout):
            self.assertTrue(os.path.isdir(self.project_dir(root, "limits")), root)

        raised = Limits(cpu_quota_us=200_000, memory_limit_bytes=1024 * MiB, pids_max=128)
        self.cg.set_limits("limits", raised)
        self.assertLimits("limits", raised)
        lowered = Limits(cpu_quota_us=10_000, memory_limit_bytes=64 * MiB, pids_max=8)
        self.cg.set_limits("limits", lowered)
        self.assertLimits("limits", lowered)
        unlimited = Limits(None, None, None)
        self.cg.set_limits("limits", unlimited)
        self.assertLimits("limits", unlimited)
        self.cg.ensure_project("limits", first)  # idempotent, re-applies
        self.assertLimits("limits", first)

        with self.assertRaises(CgroupError) as caught:
            self.cg.set_limits("limits", Limits(cpu_quota_us=10, memory_limit_bytes=256 * MiB))
        self.assertIn("EINVAL", str(caught.exception))
        self.assertIn("cpu", str(caught.exception))

        usage = self.cg.usage("limits")
        self.assertEqual(set(usage), {"memory_current_bytes", "cpu_usage_usec", "pids_current"})
        self.assertEqual(usage["pids_current"], 0)

        self.cg.remove_project("limits")
        self.cg.remove_root()
        for root in roots_of(self.layout):
            self.assertFalse(os.path.exists(os.path.join(root, self.prefix)), root)

    def test_process_lifecycle(self) -> None:
        self.cg.ensure_project("life", Limits(cpu_quota_us=100_000, memory_limit_bytes=128 * MiB))
        self.cg.ensure_sandbox("life", "box")
        self.assertEqual(self.cg.list_sandboxes("life"), ["box"])
        proc = self.spawn(["sleep", "60"])
        self.cg.add_process("life", "box", proc.pid)

        self.assertEqual(self.cg.pids("life", "box"), [proc.pid])
        with open(f"/proc/{proc.pid}/cgroup") as f:
            membership = f.read()
        where = f"/{self.prefix}/life/box"
        if self.layout.version == 2:
            self.assertIn(f"0::{where}\n", membership)
        else:
            for controller in ("cpu", "memory", "pids"):
                self.assertRegex(membership, rf"(?m)^\d+:([a-z_,]*,)?{controller}(,[a-z_,]*)?:{where}$")
        self.assertEqual(self.cg.usage("life")["pids_current"], 1)
        # a live cgroup cannot be removed; the error says why
        with self.assertRaises(CgroupError) as caught:
            self.cg.remove_sandbox("life", "box")
        self.assertIn("EBUSY", str(caught.exception))

        self.cg.kill_sandbox("life", "box")
        self.assertEqual(proc.wait(timeout=10), -signal.SIGKILL)
        self.assertEqual(self.cg.pids("life", "box"), [])
        self.cg.kill_sandbox("life", "box")  # nothing left: a no-op

        self.cg.remove_sandbox("life", "box")
        self.cg.remove_project("life")
        self.cg.remove_root()
        for root in roots_of(self.layout):
            self.assertFalse(os.path.exists(os.path.join(root, self.prefix)), root)

    def test_pids_limit(self) -> None:
        """A fork loop inside a project limited to 16 processes never gets past 16."""
        self.become_subreaper()
        self.cg.ensure_project("forky", Limits(cpu_quota_us=None, memory_limit_bytes=None, pids_max=16))
        self.cg.ensure_sandbox("forky", "box")
        # The shell waits for a line before forking, so it is inside the cgroup before its first fork.
        sh = self.spawn(["sh", "-c", "read x; for i in $(seq 40); do sleep 30 & done; wait"])
        self.cg.add_process("forky", "box", sh.pid)
        sh.stdin.write(b"go\n")
        sh.stdin.flush()

        project = self.project_dir(self.layout.pids or self.layout.unified, "forky")
        box = os.path.join(project, "box")

        def refused() -> int:
            # v1 counts a refused fork in the forking cgroup, v2 in the one whose limit was hit
            return sum(int(read(d, "pids.events").split()[1]) for d in (project, box))

        highest, seen = 0, set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            highest = max(highest, int(read(project, "pids.current")))
            seen.update(self.cg.pids("forky", "box"))
            if refused() and len(seen) >= 15:
                break
            time.sleep(0.002)
        seen.update(self.cg.pids("forky", "box"))

        self.assertGreater(refused(), 0, "no fork was refused")
        self.assertLessEqual(highest, 16)
        self.assertGreaterEqual(highest, 15)
        if os.path.exists(os.path.join(project, "pids.peak")):
            self.assertEqual(int(read(project, "pids.peak")), 16)

        self.cg.kill_sandbox("forky", "box")
        _, err = sh.communicate(timeout=10)
        self.assertIn(b"fork", err.lower())
        self.reap(seen - {sh.pid})
        self.assertEqual(self.cg.pids("forky", "box"), [])
        self.cg.remove_sandbox("forky", "box")
        self.cg.remove_project("forky")

    def test_cpu_quota_throttles(self) -> None:
        """A busy loop in a project with 10% of a CPU is throttled, and its CPU time is accounted."""
        self.cg.ensure_project("busy", Limits(cpu_quota_us=10_000, memory_limit_bytes=None))
        self.cg.ensure_sandbox("busy", "box")
        proc = self.spawn(["sh", "-c", "read x; while :; do :; done"])
        self.cg.add_process("busy", "box", proc.pid)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        time.sleep(0.5)
        cpu_dir = self.project_dir(self.layout.cpu or self.layout.unified, "busy")
        stat = dict(line.split() for line in read(cpu_dir, "cpu.stat").splitlines())
        self.assertGreater(int(stat["nr_throttled"]), 0, stat)
        usage = self.cg.usage("busy")
        if usage["cpu_usage_usec"] is not None:
            self.assertGreater(usage["cpu_usage_usec"], 0)
            self.assertLess(usage["cpu_usage_usec"], 300_000)  # ~10% of 0.5 s, with slack
        self.cg.kill_sandbox("busy", "box")
        self.assertEqual(proc.wait(timeout=10), -signal.SIGKILL)

    def test_memory_limit_below_usage(self) -> None:
        """v1 refuses (EBUSY) to put a limit under what is in use; the error says so, nothing changes."""
        if self.layout.version == 2:
            raise SkipTest("cgroup v2 does not refuse: it reclaims and OOM-kills instead")
        limits = Limits(cpu_quota_us=100_000, memory_limit_bytes=256 * MiB, pids_max=32)
        self.cg.ensure_project("mem", limits)
        self.cg.ensure_sandbox("mem", "box")
        hog = ("import sys\n"
               "sys.stdin.readline()\n"
               "block = b'x' * (64 << 20)\n"
               "print('ready', flush=True)\n"
               "sys.stdin.readline()\n")
        proc = self.spawn([sys.executable, "-c", hog])
        self.cg.add_process("mem", "box", proc.pid)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        self.assertEqual(proc.stdout.readline(), b"ready\n")
        self.assertGreaterEqual(self.cg.usage("mem")["memory_current_bytes"], 64 * MiB)

        with self.assertRaises(CgroupError) as caught:
            self.cg.set_limits("mem", Limits(cpu_quota_us=50_000, memory_limit_bytes=8 * MiB, pids_max=8))
        err = caught.exception
        self.assertEqual(err.errno, 16)  # EBUSY
        self.assertIn("memory.", str(err))
        self.assertIn("EBUSY", str(err))
        self.assertIn("below what the project's processes use now", str(err))
        self.assertLimits("mem", limits)  # memory goes first: a refusal changes nothing

        self.cg.kill_sandbox("mem", "box")
        self.assertEqual(proc.wait(timeout=10), -signal.SIGKILL)
        self.cg.remove_sandbox("mem", "box")
        self.cg.remove_project("mem")
