"""The sandbox runtime against the real kernel, as root: bolt-sandbox init/enter over the cached Debian image.

Every test gets a throwaway overlay over the shared bookworm image (tests.integration.support), a
throwaway cgroup (``bolt-test-<random>/sb`` in every hierarchy) and a fresh sandbox.  Cleanups are
registered before each step they undo, so a failure anywhere leaves no process, mount or cgroup
behind; the last cleanup checks exactly that.

The overlay is mounted with options relative to the test's directory (``lowerdir=lower`` via a symlink
to the image, ``upperdir=upper``, ``workdir=work``): overlayfs shows its mount options verbatim in
/proc/self/mountinfo, also inside the sandbox, so this is how host paths stay out of it.

While a sandbox runs, the test process is a child subreaper: the sandbox's pid 1 (orphaned when
``bolt-sandbox init`` exits) is re-parented to us, so we can reap it instead of leaving a zombie on
hosts whose pid 1 does not reap.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from bolt.host.process import ReactorRunner
from bolt.host.runtime import ExecFailed, Runtime, SandboxGone, read_stat
from tests.integration.support import _skip, ensure_test_image, require_root, require_tools

CGROUP_ROOT = "/sys/fs/cgroup"
V1_HIERARCHIES = ("cpu", "memory", "pids")
DOCKER_CAPS = "00000000a80425fb"
PR_SET_CHILD_SUBREAPER = 36


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in_namespace(ns: str) -> list[int]:
    """Host pids of live (non-zombie) processes in the pid namespace ``ns``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and pid_namespace(int(name)) == ns:
            st = read_stat(int(name))
            if st is not None and st.state not in ("Z", "X"):
                found.append(int(name))
    return found


def cgroup_dirs() -> tuple[list[str], str]:
    """The directories a test cgroup goes into (one per v1 hierarchy, or the v2 root) and the version."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        return [CGROUP_ROOT], "v2"
    dirs = [os.path.join(CGROUP_ROOT, h) for h in V1_HIERARCHIES]
    if all(os.path.exists(os.path.join(d, "cgroup.procs")) for d in dirs):
        return dirs, "v1"
    return [], "none"


def read_procs(path: str) -> list[int]:
    try:
        with open(path) as f:
            return [int(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class SandboxRuntimeTests(unittest.TestCase):
    # The first run on a host may debootstrap the shared image.
    timeout = 900

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "mount", "umount")
        roots, version = cgroup_dirs()
        if not roots:
            _skip(self, "no usable cgroup hierarchies for cpu, memory and pids")
        self.image = yield ensure_test_image(reactor)
        self.runner = ReactorRunner(reactor)
        self.runtime = Runtime(self.runner, reactor)

        # Directory, overlay.
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="bolt-test-runtime-"))
        self.addCleanup(self._remove_tmp)
        for sub in ("upper", "work", "rootfs"):
            os.mkdir(os.path.join(self.tmp, sub))
        os.chmod(os.path.join(self.tmp, "upper"), 0o755)
        os.symlink(self.image, os.path.join(self.tmp, "lower"))
        self.marker = "host-marker-" + secrets.token_hex(6)
        with open(os.path.join(self.tmp, self.marker), "w") as f:
            f.write("only on the host\n")
        self.upper = os.path.join(self.tmp, "upper")
        self.rootfs = os.path.join(self.tmp, "rootfs")
        self.addCleanup(self._unmount)
        yield self.runner.run(["mount", "-t", "overlay", "overlay", "-o",
                               "lowerdir=lower,upperdir=upper,workdir=work", "rootfs"], path=self.tmp)

        # Cgroups.
        self.cgroup_name = "bolt-test-" + secrets.token_hex(4)
        self.cgroups = [os.path.join(root, self.cgroup_name, "sb") for root in roots]
        self.addCleanup(self._remove_cgroups)
        for path in self.cgroups:
            os.makedirs(path)
        self.procs = [os.path.join(path, "cgroup.procs") for path in self.cgroups]

        # Sandbox.
        set_subreaper(True)
        self.addCleanup(set_subreaper, False)
        self.hostname = "rt-" + secrets.token_hex(3)
        self.sandbox = None
        self.addCleanup(self._stop_sandbox)
        self.sandbox = yield self.runtime.start(self.rootfs, self.hostname, self.procs)
        self.pid_ns = pid_namespace(self.sandbox.pid)

    # --- cleanup (registered in setUp; they run in reverse order) ---

    @defer.inlineCallbacks
    def _stop_sandbox(self):
        if self.sandbox is None:
            return
        self.runtime.kill(self.sandbox.pid, self.sandbox.start_time)
        for _ in range(200):
            if not self.runtime.alive(self.sandbox.pid, self.sandbox.start_time):
                break
            yield sleep(0.025)
        self._reap(self.sandbox.pid)

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (we were not its subreaper): its parent reaps it

    @defer.inlineCallbacks
    def _remove_cgroups(self):
        for path in self.cgroups:
            procs = os.path.join(path, "cgroup.procs")
            for _ in range(200):
                pids = read_procs(procs)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                yield sleep(0.025)
            for directory in (path, os.path.dirname(path)):
                for _ in range(40):
                    try:
                        os.rmdir(directory)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        yield sleep(0.025)
        left = [os.path.dirname(p) for p in self.cgroups if os.path.exists(os.path.dirname(p))]
        if left:
            raise AssertionError(f"cgroups left behind: {left}")

    def _unmount(self):
        for point in sorted((p for p in mount_points() if p == self.rootfs or p.startswith(self.rootfs + "/")),
                            key=len, reverse=True):
            os.spawnvp(os.P_WAIT, "umount", ["umount", "--recursive", "--lazy", point])
        left = [p for p in mount_points() if p.startswith(self.tmp)]
        if left:
            raise AssertionError(f"mounts left behind: {left}")

    def _remove_tmp(self):
        if any(p.startswith(self.tmp) for p in mount_points()):
            raise AssertionError(f"{self.tmp} still has mounts; not removing it")
        shutil.rmtree(self.tmp)

    # --- helpers ---

    def execute(self, command, **kw):
        kw.setdefault("cgroup_procs", self.procs)
        kw.setdefault("timeout", 30)
        kw.setdefault("start_time", self.sandbox.start_time)
        return self.runtime.exec(self.sandbox.pid, command, **kw)

    @defer.inlineCallbacks
    def ok(self, command, **kw):
        """Run a command that must succeed; fire with its stdout as text."""
        result = yield self.execute(command, **kw)
        self.assertEqual(result.exit_code, 0, f"{command!r} failed: {result.to_json()}")
        return result.stdout.decode()

    @defer.inlineCallbacks
    def sandbox_processes(self):
        """[(pid, comm, state, ppid)] of every process visible inside the sandbox."""
        out = yield self.ok("cat /proc/[0-9]*/stat")
        procs = []
        for line in out.splitlines():
            head, _, tail = line.rpartition(")")
            pid, comm = head.split(" (", 1)
            fields = tail.split()
            procs.append((int(pid), comm, fields[0], int(fields[1])))
        return procs

    def host_only_names(self) -> set[str]:
        return set(os.listdir("/")) - set(os.listdir(self.image))

    # --- the tests ---

    @defer.inlineCallbacks
    def test_only_the_sandbox_processes_are_visible(self):
        procs = yield self.sandbox_processes()
        by_pid = {pid: (comm, state, ppid) for pid, comm, state, ppid in procs}
        self.assertEqual(by_pid[1][0], "bolt-sandbox")
        self.assertEqual(by_pid[1][2], 0)
        # Nothing but pid 1 and the command itself (sh, cat): not the host's hundreds.
        self.assertLessEqual({comm for comm, _, _ in by_pid.values()}, {"bolt-sandbox", "sh", "cat"})
        self.assertLessEqual(len(procs), 3)
        listing = (yield self.ok("ls /proc")).split()
        self.assertLessEqual(len([n for n in listing if n.isdigit()]), 3)

    @defer.inlineCallbacks
    def test_pid1_shows_no_host_paths(self):
        cmdline = yield self.ok("tr '\\0' ' ' < /proc/1/cmdline")
        self.assertEqual(cmdline.split(), ["bolt-sandbox", "init"])
        # Non-dumpable: its root, exe and fds are off limits to sandbox processes (no CAP_SYS_PTRACE).
        result = yield self.execute("ls /proc/1/root/ /proc/1/exe")
        self.assertNotEqual(result.exit_code, 0)
        self.assertIn(b"Permission denied", result.stderr)
        # Seen from the host, pid 1 kept no descriptor but /dev/null on 0, 1 and 2.
        fds = sorted(os.listdir(f"/proc/{self.sandbox.pid}/fd"))
        self.assertEqual(fds, ["0", "1", "2"])

    @defer.inlineCallbacks
    def test_hostname(self):
        self.assertEqual((yield self.ok("hostname")).strip(), self.hostname)
        self.assertEqual((yield self.ok("cat /proc/sys/kernel/hostname")).strip(), self.hostname)
        self.assertNotEqual(self.hostname, os.uname().nodename)

    @defer.inlineCallbacks
    def test_writes_land_in_the_upper_directory(self):
        name = "written-inside-" + secrets.token_hex(4)
        yield self.ok(f"echo data > /{name}")
        with open(os.path.join(self.upper, name)) as f:
            self.assertEqual(f.read(), "data\n")
        self.assertFalse(os.path.exists("/" + name))
        self.assertFalse(os.path.exists(os.path.join(self.image, name)))

    @defer.inlineCallbacks
    def test_host_filesystem_is_unreachable(self):
        host_only = self.host_only_names() | {self.marker}
        listings = [
            (yield self.ok("ls -a /")),
            (yield self.ok("cd /../../..; ls -a")),
            (yield self.ok("chroot / ls -a /")),
            # A classic chroot escape (chroot into a subdirectory, climb out with "..", chroot "."):
            # it only ever reaches the sandbox's own root, since the host's root is not mounted here.
            (yield self.ok(
                "perl -e 'mkdir \"/tmp/jail\"; chroot \"/tmp/jail\" or die \"chroot: $!\"; "
                "chdir \"..\" for 1..64; chroot \".\" or die \"chroot: $!\"; "
                "opendir(D, \"/\") or die; print join(\"\\n\", readdir(D)), \"\\n\"'")),
        ]
        image_names = set(os.listdir(self.image))
        for listing in listings:
            names = set(listing.split())
            self.assertEqual(names & host_only, set(), listing)
            self.assertLessEqual(image_names, names | {"lost+found"}, listing)
        # The host's temporary directory is nowhere to be found, under any name.
        found = yield self.execute(f"find / -xdev -name '{self.marker}' 2>/dev/null; ls -d {self.tmp}")
        self.assertNotIn(self.marker.encode(), found.stdout)
        self.assertNotEqual(found.exit_code, 0)

    @defer.inlineCallbacks
    def test_mountinfo_shows_no_host_mounts(self):
        mountinfo = yield self.ok("cat /proc/self/mountinfo")
        lines = mountinfo.splitlines()
        self.assertTrue(lines)
        for line in lines:
            self.assertNotIn(self.tmp, line)
        entries = [line.split() for line in lines]
        roots = [e for e in entries if e[4] == "/"]
        self.assertEqual(len(roots), 1, mountinfo)
        self.assertEqual(roots[0][roots[0].index("-") + 1], "overlay", mountinfo)
        # The host's root filesystem (its device numbers) appears nowhere.
        with open("/proc/self/mountinfo") as f:
            host_root = [line.split()[2] for line in f if line.split()[4] == "/"][-1]
        self.assertNotIn(host_root, [e[2] for e in entries], mountinfo)
        mount_points_inside = {e[4] for e in entries}
        self.assertLessEqual({"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/proc/sys"}, mount_points_inside)

    @defer.inlineCallbacks
    def test_capabilities_and_no_new_privs(self):
        status = yield self.ok("cat /proc/self/status")
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        self.assertEqual(fields["CapBnd"].strip(), DOCKER_CAPS)
        self.assertEqual(fields["CapEff"].strip(), DOCKER_CAPS)
        self.assertEqual(fields["CapPrm"].strip(), DOCKER_CAPS)
        self.assertEqual(fields["CapInh"].strip(), "0000000000000000")
        self.assertEqual(fields["CapAmb"].strip(), "0000000000000000")
        self.assertEqual(fields["NoNewPrivs"].strip(), "1")
        with open(f"/proc/{self.sandbox.pid}/status") as f:
            pid1 = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        self.assertEqual(pid1["CapBnd"].strip(), DOCKER_CAPS)
        self.assertEqual(pid1["NoNewPrivs"].strip(), "1")

    @defer.inlineCallbacks
    def test_privileged_operations_fail(self):
        for command in ("mount -t tmpfs none /mnt", "umount /proc/sys", "hostname other",
                        "echo other > /proc/sys/kernel/hostname"):
            result = yield self.execute(command)
            self.assertNotEqual(result.exit_code, 0, command)
        self.assertEqual((yield self.ok("hostname")).strip(), self.hostname)
        # CAP_MKNOD stays (Docker's list), but every writable filesystem is nodev: a node made in
        # the sandbox cannot be opened, whatever device it names (1:1 is /dev/mem).
        for where in ("/tmp", "/dev", "/dev/shm", "/root"):
            result = yield self.execute(f"mknod {where}/mem c 1 1 && head -c 1 {where}/mem")
            self.assertNotEqual(result.exit_code, 0, where)
            self.assertIn(b"Permission denied", result.stderr, where)

    @defer.inlineCallbacks
    def test_proc_masks_and_read_only_paths(self):
        for name in ("kcore", "keys", "timer_list", "sched_debug"):
            if not os.path.exists(f"/proc/{name}"):
                continue  # this kernel has no such file: nothing to mask
            result = yield self.execute(f"wc -c < /proc/{name}")
            self.assertEqual(result.stdout.strip(), b"0", name)
        if os.path.exists("/proc/sysrq-trigger"):
            result = yield self.execute("echo h > /proc/sysrq-trigger")
            self.assertNotEqual(result.exit_code, 0)
            self.assertIn(b"Read-only file system", result.stderr)
        result = yield self.execute("echo 1 > /proc/sys/vm/drop_caches")
        self.assertNotEqual(result.exit_code, 0)
        self.assertIn(b"Read-only file system", result.stderr)
        result = yield self.execute("touch /sys/x")
        self.assertIn(b"Read-only file system", result.stderr)

    @defer.inlineCallbacks
    def test_dev(self):
        listing = set((yield self.ok("ls /dev")).split())
        self.assertEqual(listing, {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
                                   "fd", "stdin", "stdout", "stderr"})
        self.assertEqual((yield self.ok("head -c 4 /dev/zero | od -An -tx1")).split(), ["00"] * 4)
        self.assertEqual((yield self.ok("head -c 16 /dev/urandom | wc -c")).strip(), "16")
        self.assertEqual((yield self.ok("echo x > /dev/null; readlink /dev/ptmx")).strip(), "pts/ptmx")
        self.assertEqual((yield self.ok("ls /dev/pts")).split(), ["ptmx"])  # a private devpts instance
        self.assertEqual((yield self.ok("stat -c %a /dev/shm")).strip(), "1777")
        # A pty can be allocated in the private instance.
        out = yield self.ok("perl -e 'open(my $m, \"+<\", \"/dev/ptmx\") or die $!; print \"ok\\n\"'")
        self.assertEqual(out.strip(), "ok")

    @defer.inlineCallbacks
    def test_network_is_loopback_only_and_up(self):
        self.assertEqual((yield self.ok("ls /sys/class/net")).split(), ["lo"])
        flags = int((yield self.ok("cat /sys/class/net/lo/flags")).strip(), 16)
        self.assertTrue(flags & 0x1, "IFF_UP")
        # Something can listen and connect on 127.0.0.1 inside.
        out = yield self.ok(
            "perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(Listen => 1, LocalAddr => \"127.0.0.1:4242\") "
            "or die $!; $c = IO::Socket::INET->new(\"127.0.0.1:4242\") or die $!; print \"connected\\n\"'")
        self.assertEqual(out.strip(), "connected")

    @defer.inlineCallbacks
    def test_only_standard_descriptors_reach_a_command(self):
        fds = (yield self.ok("ls /proc/self/fd")).split()
        # 0, 1, 2 and the directory ls is reading.
        self.assertEqual(fds[:3], ["0", "1", "2"])
        self.assertLessEqual(len(fds), 4)
        fds = (yield self.ok("ls /proc/$$/fd")).split()
        self.assertEqual(sorted(fds, key=int)[:3], ["0", "1", "2"])
        self.assertEqual([fd for fd in fds if int(fd) > 2 and int(fd) < 10], [])

    @defer.inlineCallbacks
    def test_working_directory_environment_and_stdin(self):
        self.assertEqual((yield self.ok("pwd")).strip(), "/")
        self.assertEqual((yield self.ok("pwd", cwd="/tmp")).strip(), "/tmp")
        yield self.assertFailure(self.execute("pwd", cwd="/nonexistent"), ExecFailed)
        out = yield self.ok("echo $FOO $HOME $LANG; echo $PATH", env={"FOO": "bar baz"})
        self.assertEqual(out.splitlines(), ["bar baz /root C.UTF-8",
                                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        env = (yield self.ok(["/usr/bin/env"])).splitlines()
        self.assertEqual(sorted(env), sorted(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                              "HOME=/root", "TERM=xterm", "LANG=C.UTF-8"]))
        self.assertEqual((yield self.ok("tr a-z A-Z", stdin=b"hello\n")), "HELLO\n")
        result = yield self.execute(["/no/such/program"])
        self.assertEqual(result.exit_code, 127)

    @defer.inlineCallbacks
    def test_exit_codes_and_signals(self):
        result = yield self.execute("exit 7")
        self.assertEqual((result.exit_code, result.signal, result.timed_out), (7, None, False))
        result = yield self.execute("kill -9 $$")
        self.assertEqual((result.exit_code, result.signal), (137, "SIGKILL"))
        result = yield self.execute("kill -TERM $$")
        self.assertEqual((result.exit_code, result.signal), (143, "SIGTERM"))
        result = yield self.execute("echo out; echo err >&2")
        self.assertEqual((result.stdout, result.stderr), (b"out\n", b"err\n"))

    @defer.inlineCallbacks
    def test_output_cap(self):
        result = yield self.execute("head -c 1000000 /dev/zero; echo done >&2", max_output=1000)
        self.assertEqual(result.exit_code, 0)
        self.assertEqual(len(result.stdout), 1000)
        self.assertTrue(result.stdout_truncated)
        self.assertEqual(result.stderr, b"done\n")

    @defer.inlineCallbacks
    def test_timeout_kills_the_whole_tree(self):
        result = yield self.execute("sleep 100 & sleep 101 & sh -c 'sleep 102' & sleep 103", timeout=1)
        self.assertTrue(result.timed_out)
        self.assertEqual((result.exit_code, result.signal), (137, "SIGKILL"))
        self.assertLess(result.duration, 10)
        yield sleep(0.1)
        procs = yield self.sandbox_processes()
        self.assertEqual([p for p in procs if p[1] == "sleep"], [])
        # From the host: only pid 1 is left in the cgroups.
        for procs_file in self.procs:
            self.assertEqual(read_procs(procs_file), [self.sandbox.pid], procs_file)

    @defer.inlineCallbacks
    def test_background_processes_outlive_the_exec(self):
        result = yield self.execute("setsid sleep 1000 &")
        self.assertEqual(result.exit_code, 0)
        self.assertLess(result.duration, 5)  # the exec does not wait for the sleep's copy of stdout
        result = yield self.execute("nohup sleep 1001 > /dev/null 2>&1 &")
        self.assertEqual(result.exit_code, 0)
        procs = yield self.sandbox_processes()
        sleeps = [p for p in procs if p[1] == "sleep"]
        self.assertEqual(len(sleeps), 2)
        for _, _, state, ppid in sleeps:
            self.assertEqual(ppid, 1)  # re-parented to the sandbox's pid 1
            self.assertIn(state, ("S", "R"))

    @defer.inlineCallbacks
    def test_pid1_reaps_orphans(self):
        for _ in range(3):
            yield self.ok("(sleep 0.2 &) ; exit")
        yield sleep(0.8)
        procs = yield self.sandbox_processes()
        self.assertEqual([p for p in procs if p[2] == "Z"], [])
        self.assertEqual([p for p in procs if p[1] == "sleep"], [])

    @defer.inlineCallbacks
    def test_every_sandbox_process_is_in_the_cgroups(self):
        yield self.ok("setsid sleep 1000 & setsid sh -c 'sleep 1001' &")
        yield sleep(0.2)
        inside = sorted(processes_in_namespace(self.pid_ns))
        self.assertGreaterEqual(len(inside), 4)  # pid 1, sleep, sh, sleep
        for procs_file in self.procs:
            self.assertEqual(sorted(read_procs(procs_file)), inside, procs_file)

    @defer.inlineCallbacks
    def test_killing_pid1_ends_the_sandbox(self):
        yield self.ok("setsid sleep 1000 & setsid sh -c 'trap \"\" TERM; sleep 1001' &")
        yield sleep(0.2)
        self.assertGreaterEqual(len(processes_in_namespace(self.pid_ns)), 3)
        self.assertTrue(self.runtime.alive(self.sandbox.pid, self.sandbox.start_time))
        self.assertTrue(self.runtime.kill(self.sandbox.pid, self.sandbox.start_time))
        for _ in range(100):
            if not processes_in_namespace(self.pid_ns):
                break
            yield sleep(0.02)
        self.assertEqual(processes_in_namespace(self.pid_ns), [])
        self.assertFalse(self.runtime.alive(self.sandbox.pid, self.sandbox.start_time))
        for procs_file in self.procs:
            self.assertEqual(read_procs(procs_file), [])
        yield self.assertFailure(self.execute("true"), SandboxGone)

    @defer.inlineCallbacks
    def test_stop_is_graceful_then_forceful(self):
        yield self.ok("setsid sleep 1000 &")
        yield self.ok("setsid sh -c 'trap \"\" TERM; while :; do sleep 0.05; done' > /dev/null 2>&1 &")
        yield sleep(0.2)
        yield self.runtime.stop(self.sandbox.pid, self.sandbox.start_time, grace=1.0)
        self.assertFalse(self.runtime.alive(self.sandbox.pid, self.sandbox.start_time))
        for _ in range(100):
            if not processes_in_namespace(self.pid_ns):
                break
            yield sleep(0.02)
        self.assertEqual(processes_in_namespace(self.pid_ns), [])

    @defer.inlineCallbacks
    def test_stop_of_a_quiet_sandbox_is_quick(self):
        yield self.ok("setsid sleep 1000 &")
        started = reactor.seconds()
        yield self.runtime.stop(self.sandbox.pid, self.sandbox.start_time, grace=5.0)
        self.assertLess(reactor.seconds() - started, 2.0)  # pid 1 forwarded SIGTERM and left

    @defer.inlineCallbacks
    def test_pid_reuse_is_detected(self):
        with self.assertRaises(ValueError):
            self.runtime.exec(self.sandbox.pid, "true", cgroup_procs=[], timeout=5, start_time=-5)
        yield self.assertFailure(
            self.runtime.exec(self.sandbox.pid, "true", cgroup_procs=self.procs, timeout=5,
                              start_time=self.sandbox.start_time + 1),
            SandboxGone)


class StartFailureTests(unittest.TestCase):
    """A start that cannot work fails with the reason and leaves nothing running."""

    def setUp(self):
        require_root(self)

    @defer.inlineCallbacks
    def test_rootfs_without_the_needed_directories(self):
        from bolt.host.runtime import StartFailed
        tmp = os.path.realpath(tempfile.mkdtemp(prefix="bolt-test-runtime-"))
        self.addCleanup(shutil.rmtree, tmp)
        os.symlink("/", os.path.join(tmp, "proc"))  # a planted link must not be mounted through
        runtime = Runtime(ReactorRunner(reactor), reactor)
        before = set(mount_points())
        e = yield self.assertFailure(runtime.start(tmp, "broken", []), StartFailed)
        self.assertIn("proc in the root filesystem is not a directory", str(e))
        self.assertEqual(set(mount_points()), before)

    @defer.inlineCallbacks
    def test_missing_cgroup(self):
        from bolt.host.runtime import StartFailed
        tmp = os.path.realpath(tempfile.mkdtemp(prefix="bolt-test-runtime-"))
        self.addCleanup(shutil.rmtree, tmp)
        runtime = Runtime(ReactorRunner(reactor), reactor)
        e = yield self.assertFailure(
            runtime.start(tmp, "broken", [f"/sys/fs/cgroup/pids/bolt-test-{secrets.token_hex(4)}/cgroup.procs"]),
            StartFailed)
        self.assertIn("join cgroup", str(e))
