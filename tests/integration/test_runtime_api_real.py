"""What a user of the exec endpoint can check from inside a sandbox, against a real server, as root.

Everything goes through the real ``twistd -n bolt`` (tests.integration.server.RealServer) on the
cached Debian bookworm minbase image: ``POST .../exec`` runs the commands a user would run (the
image has no procps, so processes are read from /proc), and the host side is checked the way an
operator would check it (/proc, /sys/fs/cgroup, /proc/self/mountinfo).

Speed: :class:`ExecEndpointTests` shares one server per run of the class (trial does not call
``setUpClass``, so the first test's ``setUp`` starts it and the class's last test,
``test_zz_...``, deletes everything through the API and checks that no mount, cgroup or process of
the server is left; an ``atexit`` hook tears down a server that a filtered or reordered run left
running).  Each test makes its own sandbox (cheap: an overlay mount and a pid 1), and tests that
change limits make their own project, so no test depends on another's leftovers.
:class:`ServerRestartTests` SIGKILLs its server and so has its own.

Every server gets a unique ``cgroup_parent`` (``bolt-t<hex>``): its cgroups never meet those of
another server on the host, and the leftover checks look only at its own.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.integration.server import RealServer, remove_cgroup_dir
from tests.integration.support import cached_image_root, ensure_test_image, require_root, require_tools

CGROUP_FS = "/sys/fs/cgroup"
#: Docker's default capability set (CapBnd in /proc/self/status).
DOCKER_CAPS = 0x00000000A80425FB
MiB = 1024 * 1024
PR_SET_CHILD_SUBREAPER = 36
API_TIMEOUT = 120.0


# --- host-side helpers -----------------------------------------------------------------------------


def mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f]


def mount_points_under(path: str) -> list[str]:
    path = path.rstrip("/")
    return [e[4] for e in mountinfo() if e[4] == path or e[4].startswith(path + "/")]


def cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup filesystem on the host."""
    found = []
    for e in mountinfo():
        sep = e.index("-")
        fstype = e[sep + 1]
        if fstype in ("cgroup", "cgroup2"):
            found.append((e[4], fstype, set(e[sep + 3].split(","))))
    return found


def cgroup_v2() -> bool:
    """Whether the host runs the unified hierarchy with the controllers Bolt needs (as bolt decides)."""
    try:
        with open(os.path.join(CGROUP_FS, "cgroup.controllers")) as f:
            return {"cpu", "memory", "pids"} <= set(f.read().split())
    except OSError:
        return False


def controller_dir(controller: str) -> str:
    """The hierarchy root that carries ``controller`` (the unified root on v2)."""
    if cgroup_v2():
        return CGROUP_FS
    for point, fstype, options in cgroup_mounts():
        if fstype == "cgroup" and controller in options:
            return point
    raise AssertionError(f"no cgroup v1 hierarchy with the {controller} controller is mounted")


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def pids_current(prefix: str, project: str) -> int:
    return int(read_text(os.path.join(controller_dir("pids"), prefix, project, "pids.current")))


def cpu_usage_seconds(prefix: str, project: str) -> float:
    """CPU time used by the project's cgroup so far, from the kernel's accounting."""
    if cgroup_v2():
        for line in read_text(os.path.join(CGROUP_FS, prefix, project, "cpu.stat")).splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise AssertionError("cpu.stat has no usage_usec")
    return int(read_text(os.path.join(controller_dir("cpuacct"), prefix, project, "cpuacct.usage"))) / 1e9


def sandbox_host_pids(prefix: str, project: str, sandbox: str) -> list[int]:
    """Host pids in the sandbox's cgroup (pids hierarchy), as an operator would list them."""
    path = os.path.join(controller_dir("pids"), prefix, project, sandbox, "cgroup.procs")
    try:
        return [int(line) for line in read_text(path).split()]
    except FileNotFoundError:
        return []


def stat_of(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, start time) of a host process, or None when it does not exist."""
    try:
        text = read_text(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return None
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    return head.split("(", 1)[1], fields[0], int(fields[19])


def running(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process (and still the one that started at start_time)."""
    st = stat_of(pid)
    if st is None or st[1] in ("Z", "X"):
        return False
    return start_time is None or st[2] == start_time


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def processes_in_cgroups(prefix: str) -> list[tuple[int, str]]:
    """Live host processes whose cgroup (in any hierarchy) is under ``<prefix>``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = read_text(f"/proc/{name}/cgroup")
        except OSError:
            continue
        if any(f"/{prefix}/" in line or line.endswith(f"/{prefix}") for line in text.splitlines()):
            st = stat_of(int(name))
            if st is not None and st[1] not in ("Z", "X"):
                found.append((int(name), st[0]))
    return found


def cgroup_dirs_named(prefix: str) -> list[str]:
    """``find /sys/fs/cgroup -maxdepth 2 -name <prefix>``."""
    found = []
    for top in os.listdir(CGROUP_FS):
        path = os.path.join(CGROUP_FS, top)
        if top == prefix:
            found.append(path)
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                if prefix in os.listdir(path):
                    found.append(os.path.join(path, prefix))
            except OSError:
                pass
    return found


def set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- a server and what it must leave behind -------------------------------------------------------------


class Fixture:
    """One real server with a unique cgroup parent, plus the record of every sandbox pid 1 it reported."""

    def __init__(self) -> None:
        self.prefix = "bolt-t" + secrets.token_hex(4)
        self.server = RealServer()
        try:  # (writing the config starts the server once, to let it create the file)
            self.server.write_config({"base_image_dir": cached_image_root(), "cgroup_parent": self.prefix})
        except BaseException:
            self.server.cleanup()
            raise
        self.pid1s: dict[int, int | None] = {}  # host pid of a sandbox's pid 1 -> its start time
        self.closed = False

    def start(self) -> "Fixture":
        self.server.start()
        return self

    def api(self, method: str, path: str, body: Any = None, timeout: float = API_TIMEOUT):
        try:
            code, data = self.server.api(method, path, body, timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"{method} {path}: no answer within {timeout} s\n"
                                 f"server log (end):\n{self.server.log()[-3000:]}") from None
        if isinstance(data, dict) and isinstance(data.get("pid"), int):
            self.note_pid1(data["pid"])
        for sandbox in (data.get("sandboxes") or []) if isinstance(data, dict) else []:
            if isinstance(sandbox, dict) and isinstance(sandbox.get("pid"), int):
                self.note_pid1(sandbox["pid"])
        return code, data

    def note_pid1(self, pid: int) -> None:
        if pid not in self.pid1s:
            st = stat_of(pid)
            self.pid1s[pid] = st[2] if st else None

    def leftovers(self) -> list[str]:
        """What the server left on the host: mounts under its root, its cgroups, processes in them,
        and sandbox pid 1s still running."""
        problems = []
        mounts = mount_points_under(self.server.root)
        if mounts:
            problems.append(f"mounts left: {mounts}")
        dirs = cgroup_dirs_named(self.prefix)
        if dirs:
            problems.append(f"cgroups left: {dirs}")
        procs = processes_in_cgroups(self.prefix)
        if procs:
            problems.append(f"processes left in {self.prefix} cgroups: {procs}")
        alive = [pid for pid, start in self.pid1s.items() if start is not None and running(pid, start)]
        if alive:
            problems.append(f"sandbox pid 1s still running: {alive}")
        return problems

    def close(self) -> list[str]:
        """Delete every project through the API, stop the server, remove the (empty) cgroup parent
        Bolt keeps by design; return what went wrong or was left behind.  Scrubs the host either way."""
        if self.closed:
            return []
        self.closed = True
        problems: list[str] = []
        try:
            if self.server.process and self.server.process.poll() is None:
                code, projects = self.api("GET", "/api/projects")
                if code != 200:
                    problems.append(f"GET /api/projects: {code} {projects}")
                    projects = []
                for project in projects:
                    code, body = self.api("DELETE", f"/api/projects/{project['name']}?force=1")
                    if code != 200:
                        problems.append(f"DELETE project {project['name']}: {code} {body}")
                self.server.stop()
            # Bolt keeps <hierarchy>/<prefix> once made (cgroups.remove_root is for uninstall); it must
            # be empty now: anything below it is a leftover.
            for path in cgroup_dirs_named(self.prefix):
                below = [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]
                if below:
                    problems.append(f"cgroups left under {path}: {below}")
            for pid in list(self.pid1s):
                reap(pid)
            wait_until(lambda: not self.leftovers_without_parent_dirs(), timeout=5)
            problems += self.leftovers_without_parent_dirs()
        finally:
            self.scrub()
        if problems:
            problems.append("server log (end):\n" + self.server.log()[-4000:])
        self.server.cleanup()
        return problems

    def leftovers_without_parent_dirs(self) -> list[str]:
        return [p for p in self.leftovers() if not p.startswith("cgroups left: ")]

    def scrub(self) -> None:
        """Remove whatever is left (independently of Bolt), so a failing run does not pollute the host."""
        self.server.kill()
        for point in sorted(mount_points_under(self.server.root), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], check=False)
        for path in cgroup_dirs_named(self.prefix):
            remove_cgroup_dir(path)
        for pid, start in self.pid1s.items():
            if start is not None and running(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reap(pid)


class ServerTestMixin:
    """Helpers over ``self.fx`` (a :class:`Fixture`): projects, sandboxes, exec, with clear failures."""

    fx: Fixture

    def call(self, method: str, path: str, body: Any = None, expect: int | None = 200):
        code, data = self.fx.api(method, path, body)
        if expect is not None and code != expect:
            self.fail(f"{method} {path} {body!r}: expected {expect}, got {code} {data}\n"
                      f"server log (end):\n{self.fx.server.log()[-3000:]}")
        return data

    def make_project(self, stem: str) -> str:
        name = f"{stem}-{secrets.token_hex(3)}"
        self.call("POST", "/api/projects", {"name": name}, expect=201)
        self.addCleanup(self._delete_project, name)
        return name

    def _delete_project(self, name: str) -> None:
        if self.fx.closed:
            return
        code, body = self.fx.api("DELETE", f"/api/projects/{name}?force=1")
        if code not in (200, 404):
            raise AssertionError(f"could not delete project {name}: {code} {body}")

    def make_sandbox(self, project: str, stem: str = "box") -> dict:
        name = f"{stem}-{secrets.token_hex(3)}"
        body = self.call("POST", f"/api/projects/{project}/sandboxes", {"name": name}, expect=201)
        self.assertEqual(body["state"], "running", body)
        self.addCleanup(self._delete_sandbox, project, name)
        return body

    def _delete_sandbox(self, project: str, name: str) -> None:
        if self.fx.closed:
            return
        code, body = self.fx.api("DELETE", f"/api/projects/{project}/sandboxes/{name}")
        if code not in (200, 404):
            raise AssertionError(f"could not delete sandbox {project}/{name}: {code} {body}")

    def exec(self, box: dict, command, *, expect: int | None = 200, **fields) -> dict:
        """POST .../exec; the JSON result (asserting the HTTP status)."""
        body = {"command": command, **fields}
        return self.call("POST", f"/api/projects/{box['project']}/sandboxes/{box['name']}/exec", body,
                         expect=expect)

    def ok(self, box: dict, command, **fields) -> str:
        """Run a command that must exit 0; its stdout."""
        result = self.exec(box, command, **fields)
        self.assertEqual(result["exit_code"], 0, f"{command!r} failed inside the sandbox: {result}")
        return result["stdout"]

    def inside_cmdlines(self, box: dict) -> list[list[str]]:
        """argv of every process visible in the sandbox (read from /proc inside; no ps in minbase).

        The reader itself (sh, tr) is included; callers look for what they expect or forbid."""
        out = self.ok(box, "for p in /proc/[0-9]*; do tr '\\0' '\\1' < $p/cmdline 2>/dev/null; echo; done")
        return [line.split("\x01")[:-1] if line.endswith("\x01") else line.split("\x01")
                for line in out.splitlines() if line]


# --- the tests against one shared server ------------------------------------------------------------------


class SharedFixture:
    """The one :class:`Fixture` a test module's tests share (trial has no setUpClass): started by the
    first test that asks for it, closed by the module's last test (``test_zz_...``: trial runs tests
    by name) or, when that never ran, at exit."""

    def __init__(self, module: str) -> None:
        self.module = module
        self._fixture: Fixture | None = None
        atexit.register(self._close_at_exit)

    def get(self) -> Fixture:
        if self._fixture is None:
            fixture = Fixture()
            try:
                fixture.start()
            except BaseException:
                fixture.close()
                raise
            self._fixture = fixture
        return self._fixture

    def close(self) -> list[str]:
        """Close the fixture (see :meth:`Fixture.close`); what went wrong or was left behind."""
        fixture, self._fixture = self._fixture, None
        return fixture.close() if fixture is not None else []

    def _close_at_exit(self) -> None:
        problems = self.close()
        if problems:
            sys.stderr.write(f"{self.module}: leftovers at exit:\n" + "\n".join(problems) + "\n")


SHARED = SharedFixture("test_runtime_api_real")


class ExecEndpointTests(ServerTestMixin, unittest.TestCase):
    # The first test may build the shared image (debootstrap) when the cache is empty.
    timeout = 900

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "mount", "umount")
        self.image = os.path.realpath((yield ensure_test_image(reactor)))
        self.fx = SHARED.get()
        self.main = "main"
        code, body = self.fx.api("GET", f"/api/projects/{self.main}")
        if code == 404:
            self.call("POST", "/api/projects", {"name": self.main}, expect=201)

    def sandbox_dir(self, box: dict) -> str:
        return os.path.join(self.fx.server.data_dir, "sandboxes", box["project"], box["name"])

    # 1 -----------------------------------------------------------------------------------------------

    def test_only_the_sandboxs_processes_are_visible(self):
        box = self.make_sandbox(self.main)
        listing = self.ok(box, ["ls", "/proc"]).split()
        pids = sorted(int(n) for n in listing if n.isdigit())
        # pid 1 (the sandbox's init) and the ls itself: not the host's hundreds of processes.
        self.assertIn(1, pids, listing)
        self.assertEqual(len(pids), 2, f"expected only pid 1 and ls in /proc, got {pids}")
        host_count = len([n for n in os.listdir("/proc") if n.isdigit()])
        self.assertGreater(host_count, 10, "the host itself should have many processes")
        server_pid = self.fx.server.process.pid
        self.assertNotIn(server_pid, pids)
        result = self.exec(box, ["cat", f"/proc/{server_pid}/cmdline"])
        self.assertNotEqual(result["exit_code"], 0, f"the server's pid is visible inside: {result}")
        # (The shell expands the glob before cat starts, so cat may not list itself.)
        comms = self.ok(box, "cat /proc/[0-9]*/comm").split()
        self.assertIn("bolt-sandbox", comms)
        self.assertLessEqual(set(comms), {"bolt-sandbox", "sh", "cat"}, f"processes visible inside: {comms}")

    def test_hostname_is_the_sandbox_name(self):
        box = self.make_sandbox(self.main)
        self.assertEqual(self.ok(box, ["hostname"]).strip(), box["name"])
        self.assertNotEqual(box["name"], os.uname().nodename)

    def test_pid1_is_bolt_sandbox_init_without_host_paths(self):
        box = self.make_sandbox(self.main)
        raw = self.ok(box, ["cat", "/proc/1/cmdline"])
        argv = [a for a in raw.split("\0") if a.strip()]
        self.assertEqual(argv, ["bolt-sandbox", "init"], repr(raw))
        for host_path in (self.fx.server.root, self.fx.server.data_dir, "/work", ".venv", "site-packages"):
            self.assertNotIn(host_path, raw)

    # 2 -----------------------------------------------------------------------------------------------

    def test_a_file_written_inside_lands_only_in_the_sandboxs_upper_layer(self):
        box = self.make_sandbox(self.main)
        name = "f-" + secrets.token_hex(4)
        content = secrets.token_hex(8)
        self.ok(box, f"echo {content} > /root/{name}")
        own_dir = self.sandbox_dir(box)
        with open(os.path.join(own_dir, "upper", "root", name)) as f:
            self.assertEqual(f.read(), content + "\n")
        self.assertFalse(os.path.exists(os.path.join(self.image, "root", name)), "written into the shared image")
        self.assertFalse(os.path.exists(os.path.join("/root", name)), "written into the host's /root")
        self.assertFalse(os.path.exists(os.path.join("/tmp", name)))
        # Nowhere else under the server's directory (config, state, other sandboxes).
        for directory, subdirs, files in os.walk(self.fx.server.root):
            if os.path.realpath(directory) == os.path.realpath(own_dir):
                subdirs[:] = []
                continue
            self.assertNotIn(name, files + subdirs, f"{name} found in {directory}")
        self.assertEqual(self.ok(box, f"cat /root/{name}").strip(), content)

    # 3 -----------------------------------------------------------------------------------------------

    def _host_marker(self) -> tuple[str, str]:
        """A directory /tmp/<random> on the host holding a secret; removed after the test."""
        name = "bolt-marker-" + secrets.token_hex(6)
        secret = secrets.token_hex(16)
        os.mkdir(os.path.join("/tmp", name))
        self.addCleanup(shutil.rmtree, os.path.join("/tmp", name), True)
        with open(os.path.join("/tmp", name, "secret"), "w") as f:
            f.write(secret + "\n")
        return name, secret

    def _assert_is_sandbox_root(self, listing: str, what: str, sandbox_marker: str) -> None:
        names = set(listing.split())
        host_only = set(os.listdir("/")) - set(os.listdir(self.image))
        self.assertTrue(host_only, "test precondition: the host's / has entries the image lacks")
        self.assertEqual(names & host_only, set(), f"{what} lists host-only entries: {listing!r}")
        self.assertIn(sandbox_marker, names, f"{what} is not the sandbox's root: {listing!r}")

    def test_host_marker_is_unreachable_through_proc_1_root(self):
        box = self.make_sandbox(self.main)
        marker, secret = self._host_marker()
        mine = "sandbox-" + secrets.token_hex(4)
        self.ok(box, f"touch /{mine}")
        result = self.exec(box, ["ls", "-a", "/proc/1/root/"])
        if result["exit_code"] == 0:
            self._assert_is_sandbox_root(result["stdout"], "/proc/1/root", mine)
        else:
            self.assertIn("Permission denied", result["stderr"], result)
        for path in (f"/proc/1/root/tmp/{marker}/secret", f"/proc/self/root/tmp/{marker}/secret",
                     f"/tmp/{marker}/secret"):
            result = self.exec(box, ["cat", path])
            self.assertNotEqual(result["exit_code"], 0, f"{path} readable inside: {result}")
            self.assertNotIn(secret, result["stdout"])

    def test_climbing_out_with_dotdot_and_chroot_stays_in_the_sandbox(self):
        box = self.make_sandbox(self.main)
        marker, secret = self._host_marker()
        mine = "sandbox-" + secrets.token_hex(4)
        self.ok(box, f"touch /{mine}")
        self._assert_is_sandbox_root(self.ok(box, "cd /../../..; ls -a"), "cd /../../..", mine)
        self._assert_is_sandbox_root(self.ok(box, ["chroot", "/", "ls", "-a", "/"]), "chroot /", mine)
        self._assert_is_sandbox_root(self.ok(box, "chroot / sh -c 'cd ../../../..; ls -a'"),
                                     "chroot / then cd ..", mine)
        # The classic escape: chroot into a subdirectory while keeping the cwd outside it, climb with
        # "..", chroot "." -- from a real root this reaches the host's /.  perl-base is in minbase.
        self.ok(box, ["sh", "-c", "command -v perl"])
        escaped = self.ok(box, [
            "perl", "-e",
            'mkdir "/tmp/jail"; chroot "/tmp/jail" or die "chroot: $!"; '
            'chdir ".." for 1..64; chroot "." or die "chroot: $!"; '
            'opendir(D, "/") or die "opendir: $!"; print join("\\n", readdir(D)), "\\n"; '
            'if (open(F, "<", "/tmp/' + marker + '/secret")) { print <F>; }'])
        self._assert_is_sandbox_root(escaped, "the chroot escape", mine)
        self.assertNotIn(secret, escaped)
        found = self.exec(box, f"find / -xdev -name '{marker}' 2>/dev/null; ls /tmp")
        self.assertNotIn(marker, found["stdout"])

    # 4 -----------------------------------------------------------------------------------------------

    def test_mountinfo_shows_no_host_path(self):
        box = self.make_sandbox(self.main)
        text = self.ok(box, ["cat", "/proc/self/mountinfo"])
        lines = text.splitlines()
        points = {line.split()[4] for line in lines}
        self.assertLessEqual({"/", "/proc", "/sys", "/dev"}, points, text)
        host_root = [e for e in mountinfo() if e[4] == "/"][-1]
        root_dev, root_source = host_root[2], host_root[host_root.index("-") + 2]
        forbidden = [self.fx.server.root, self.fx.server.data_dir, "/var/cache/bolt-tests",
                     cached_image_root(), self.image]
        if root_source.startswith("/"):
            forbidden.append(root_source)
        for line in lines:
            for path in forbidden:
                self.assertNotIn(path, line, f"host path {path} in the sandbox's mountinfo: {line}")
            self.assertNotEqual(line.split()[2], root_dev,
                                f"the host's root filesystem ({root_dev}) is mounted inside: {line}")

    # 5 -----------------------------------------------------------------------------------------------

    def test_capabilities_are_dockers_default_with_no_new_privs(self):
        box = self.make_sandbox(self.main)
        status = self.ok(box, ["cat", "/proc/self/status"])
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        value = {k: fields[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")}
        self.assertEqual(int(value["CapBnd"], 16), DOCKER_CAPS, value)
        self.assertEqual(int(value["CapEff"], 16) & ~DOCKER_CAPS, 0, f"CapEff beyond Docker's set: {value}")
        self.assertEqual(int(value["CapPrm"], 16) & ~DOCKER_CAPS, 0, f"CapPrm beyond Docker's set: {value}")
        self.assertEqual(int(value["CapInh"], 16), 0, value)
        self.assertEqual(int(value["CapAmb"], 16), 0, value)
        self.assertEqual(value["NoNewPrivs"], "1", value)

    # 6 -----------------------------------------------------------------------------------------------

    def test_masked_proc_files_read_empty(self):
        box = self.make_sandbox(self.main)
        checked, nonempty_on_host = [], []
        for name in ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "timer_stats"):
            path = f"/proc/{name}"
            if not os.path.exists(path):
                continue  # this kernel has no such file: nothing to mask
            checked.append(path)
            with open(path, "rb") as f:
                if f.read(1):
                    nonempty_on_host.append(path)
            result = self.exec(box, ["wc", "-c", path])
            self.assertEqual(result["exit_code"], 0, result)
            self.assertEqual(result["stdout"].split()[0], "0", f"{path} is not masked inside: {result}")
        self.assertTrue(checked, "none of the masked /proc files exists on this kernel")
        self.assertTrue(nonempty_on_host, f"test precondition: one of {checked} has content on the host")

    def test_proc_sys_is_read_only(self):
        box = self.make_sandbox(self.main)
        target = next((p for p in ("/proc/sys/kernel/sysrq", "/proc/sys/vm/drop_caches") if os.path.exists(p)),
                      None)
        self.assertIsNotNone(target, "no writable sysctl to try on this kernel")
        before = read_text(target) if target.endswith("sysrq") else None
        result = self.exec(box, f"echo 1 > {target}")
        self.assertNotEqual(result["exit_code"], 0, f"wrote {target} from inside: {result}")
        self.assertIn("Read-only file system", result["stderr"], result)
        if before is not None:
            self.assertEqual(read_text(target), before)
        result = self.exec(box, "echo sandboxed > /proc/sys/kernel/domainname")
        self.assertNotEqual(result["exit_code"], 0, result)

    def test_sys_is_read_only(self):
        box = self.make_sandbox(self.main)
        result = self.exec(box, "touch /sys/x")
        self.assertNotEqual(result["exit_code"], 0, result)
        self.assertIn("Read-only file system", result["stderr"], result)
        result = self.exec(box, "echo 1280 > /sys/class/net/lo/mtu")
        self.assertNotEqual(result["exit_code"], 0, result)
        self.assertIn("Read-only file system", result["stderr"], result)
        options = [line.split()[5] for line in self.ok(box, ["cat", "/proc/self/mountinfo"]).splitlines()
                   if line.split()[4] == "/sys"]
        self.assertEqual(len(options), 1, options)
        self.assertIn("ro", options[0].split(","))

    # 7 -----------------------------------------------------------------------------------------------

    def test_a_command_gets_only_descriptors_0_1_2(self):
        box = self.make_sandbox(self.main)
        # The shell's own descriptors (dash is /bin/sh in Debian and opens nothing for -c).
        self.assertEqual(self.ok(box, ["readlink", "/bin/sh"]).strip(), "dash")
        fds = self.ok(box, ["sh", "-c", "ls /proc/$$/fd"]).split()
        self.assertEqual(sorted(fds, key=int), ["0", "1", "2"])
        # A directly executed ls sees one more: the /proc/self/fd directory it is reading.
        listing = self.ok(box, ["ls", "-l", "/proc/self/fd"])
        extra = {}
        for line in listing.splitlines():
            parts = line.split()
            if "->" in parts:
                extra[parts[parts.index("->") - 1]] = parts[-1]
        self.assertLessEqual({"0", "1", "2"}, set(extra), listing)
        for fd, target in extra.items():
            if fd not in ("0", "1", "2"):
                self.assertRegex(target, r"^/proc/\d+/fd$", f"descriptor {fd} leaked into the command: {listing}")

    # 8 -----------------------------------------------------------------------------------------------

    def test_working_directory(self):
        box = self.make_sandbox(self.main)
        self.assertEqual(self.ok(box, ["pwd"]).strip(), "/")
        self.assertEqual(self.ok(box, ["pwd"], cwd="/tmp").strip(), "/tmp")
        self.assertEqual(self.ok(box, "pwd", cwd="/root").strip(), "/root")
        result = self.exec(box, ["pwd"], cwd="/nonexistent", expect=400)
        self.assertIn("error", result)

    # 9 -----------------------------------------------------------------------------------------------

    def test_memory_limit_kills_the_hog_and_nothing_else(self):
        calm = self.make_sandbox(self.main, "calm")
        project = self.make_project("mem")
        hog = self.make_sandbox(project, "hog")
        previous = self.call("GET", f"/api/projects/{project}")["resource_limits"]["memory_limit_bytes"]
        self.assertGreaterEqual(previous, 256 * MiB, "test precondition: the default limit allows 200 MiB")
        dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]
        # Non-vacuous: with the default limit the same command succeeds.
        self.ok(hog, dd)

        self.call("PUT", f"/api/projects/{project}/resources", {"memory_limit_bytes": 64 * MiB})
        self.addCleanup(self.fx.api, "PUT", f"/api/projects/{project}/resources", {"memory_limit_bytes": previous})
        limit_file = os.path.join(controller_dir("memory"), self.fx.prefix, project,
                                  "memory.max" if cgroup_v2() else "memory.limit_in_bytes")
        self.assertEqual(int(read_text(limit_file)), 64 * MiB)

        # While the hog is killed again and again, the server and other sandboxes carry on.
        outcome: dict[str, Any] = {}

        def hog_loop():
            try:
                outcome["loop"] = self.fx.api(
                    "POST", f"/api/projects/{project}/sandboxes/{hog['name']}/exec",
                    {"command": "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
                                "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; "
                                "echo $?; done", "timeout": 60})
            except Exception as e:  # reported below
                outcome["loop"] = e

        thread = threading.Thread(target=hog_loop)
        thread.start()
        try:
            for _ in range(5):
                self.assertEqual(self.fx.api("GET", "/api/status")[0], 200)
                self.assertEqual(self.ok(calm, ["echo", "fine"]).strip(), "fine")
        finally:
            thread.join(120)
        code, loop = outcome["loop"]
        self.assertEqual(code, 200, loop)
        self.assertEqual(set(loop["stdout"].split()), {"137"}, f"every dd should be killed: {loop}")

        result = self.exec(hog, dd)
        self.assertEqual((result["exit_code"], result["signal"]), (137, "SIGKILL"), result)
        self.assertFalse(result["timed_out"], result)
        # Only the hog died: the sandbox is still running, with the same pid 1.
        again = self.call("GET", f"/api/projects/{project}/sandboxes/{hog['name']}")
        self.assertEqual((again["state"], again["pid"]), ("running", hog["pid"]))
        self.assertEqual(self.ok(hog, ["echo", "survived"]).strip(), "survived")
        self.assertEqual(self.ok(calm, ["echo", "fine"]).strip(), "fine")

        self.call("PUT", f"/api/projects/{project}/resources", {"memory_limit_bytes": previous})
        self.assertEqual(self.call("GET", f"/api/projects/{project}")["resource_limits"]["memory_limit_bytes"],
                         previous)
        self.ok(hog, dd)

    # 10 ----------------------------------------------------------------------------------------------

    def test_fork_bomb_is_held_at_pids_max(self):
        project = self.make_project("forks")
        box = self.make_sandbox(project, "bomb")
        self.call("PUT", f"/api/projects/{project}/resources", {"pids_max": 64})
        pids_max = os.path.join(controller_dir("pids"), self.fx.prefix, project, "pids.max")
        self.assertEqual(read_text(pids_max).strip(), "64")

        outcome: dict[str, Any] = {}

        def bomb():
            try:
                outcome["bomb"] = self.fx.api(
                    "POST", f"/api/projects/{project}/sandboxes/{box['name']}/exec",
                    {"command": ["bash", "-c", ":(){ :|:& };:; sleep 60"], "timeout": 5})
            except Exception as e:
                outcome["bomb"] = e

        thread = threading.Thread(target=bomb)
        thread.start()
        highest, host_forks = 0, 0
        try:
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                highest = max(highest, pids_current(self.fx.prefix, project))
                subprocess.run(["true"], check=True, timeout=10)  # the host can still fork
                host_forks += 1
                time.sleep(0.05)
            self.assertEqual(self.fx.api("GET", "/api/status")[0], 200, "the server stopped answering")
        finally:
            thread.join(60)
        self.assertLessEqual(highest, 64, "the project went past pids_max")
        self.assertGreaterEqual(highest, 56, f"the fork bomb never got near the limit (peak {highest})")
        self.assertGreater(host_forks, 10)
        self.assertFalse(thread.is_alive(), "the exec did not return after its timeout")
        code, result = outcome["bomb"]
        self.assertEqual(code, 200, result)
        self.assertLess(result["duration"], 6, f"the exec outlived its 5 s timeout: {result}")
        self.assertLessEqual(pids_current(self.fx.prefix, project), 64)

        stopped = self.call("POST", f"/api/projects/{project}/sandboxes/{box['name']}/stop")
        self.assertEqual(stopped["state"], "stopped")
        self.assertTrue(wait_until(lambda: pids_current(self.fx.prefix, project) == 0, 10),
                        f"processes left after stop: {pids_current(self.fx.prefix, project)}")
        started = self.call("POST", f"/api/projects/{project}/sandboxes/{box['name']}/start")
        self.assertEqual(started["state"], "running")
        self.assertEqual(self.ok(started, ["echo", "calm again"]).strip(), "calm again")
        self.assertLessEqual(pids_current(self.fx.prefix, project), 3)

    # 11 ----------------------------------------------------------------------------------------------

    def test_cpu_quota_holds_a_busy_loop_to_its_share(self):
        project = self.make_project("cpu")
        box = self.make_sandbox(project, "spin")
        self.call("PUT", f"/api/projects/{project}/resources", {"cpu_quota_us": 20000})
        if not cgroup_v2():
            quota = os.path.join(controller_dir("cpu"), self.fx.prefix, project, "cpu.cfs_quota_us")
            self.assertEqual(int(read_text(quota)), 20000)
        before, start = cpu_usage_seconds(self.fx.prefix, project), time.monotonic()
        result = self.exec(box, "timeout 3 sh -c 'while :; do :; done'")
        after, wall = cpu_usage_seconds(self.fx.prefix, project), time.monotonic() - start
        self.assertEqual(result["exit_code"], 124, f"the busy loop should end by timeout(1): {result}")
        share = (after - before) / wall
        self.assertTrue(0.12 <= share <= 0.30,
                        f"the busy loop used {share:.1%} of a core over {wall:.2f}s; quota is 20%")

    # 12 ----------------------------------------------------------------------------------------------

    def test_a_background_process_outlives_its_exec(self):
        box = self.make_sandbox(self.main, "bg")
        start = time.monotonic()
        result = self.exec(box, "setsid sleep 1000 > /dev/null 2>&1 < /dev/null &")
        self.assertEqual(result["exit_code"], 0, result)
        result = self.exec(box, "sleep 1001 > /dev/null 2>&1 &")
        self.assertEqual(result["exit_code"], 0, result)
        # Even a background process that keeps the exec's stdout open does not hold the exec.
        result = self.exec(box, "sleep 1002 & echo started")
        self.assertEqual((result["exit_code"], result["stdout"]), (0, "started\n"), result)
        self.assertLess(time.monotonic() - start, 10, "exec waited for its background processes")
        time.sleep(1)
        comms = self.ok(box, "cat /proc/[0-9]*/comm").split()
        self.assertEqual(comms.count("sleep"), 3, comms)
        argvs = self.inside_cmdlines(box)
        for seconds in ("1000", "1001", "1002"):
            self.assertIn(["sleep", seconds], argvs)

    # 13 ----------------------------------------------------------------------------------------------

    def test_timeout_kills_the_command_and_its_children(self):
        box = self.make_sandbox(self.main, "slow")
        start = time.monotonic()
        result = self.exec(box, "sleep 100; echo never", timeout=1)
        elapsed = time.monotonic() - start
        self.assertTrue(result["timed_out"], result)
        self.assertNotEqual(result["exit_code"], 0, result)
        self.assertNotIn("never", result["stdout"])
        self.assertGreaterEqual(result["duration"], 0.9, result)
        self.assertLess(elapsed, 10, "the exec was not cut at its timeout")
        argvs = self.inside_cmdlines(box)
        self.assertNotIn(["sleep", "100"], argvs, f"the timed-out command survived: {argvs}")
        self.assertFalse([a for a in argvs if a[:1] == ["/bin/sh"] and "sleep 100" in " ".join(a)], argvs)
        result = self.exec(box, ["sleep", "100"], timeout=1)
        self.assertTrue(result["timed_out"], result)
        self.assertEqual(result["signal"], "SIGKILL", result)
        self.assertNotIn(["sleep", "100"], self.inside_cmdlines(box))

    # 14 ----------------------------------------------------------------------------------------------

    def test_exit_code_is_propagated(self):
        box = self.make_sandbox(self.main)
        result = self.exec(box, "exit 7")
        self.assertEqual((result["exit_code"], result["signal"], result["timed_out"]), (7, None, False), result)
        result = self.exec(box, ["false"])
        self.assertEqual(result["exit_code"], 1, result)

    def test_death_by_signal_is_propagated(self):
        box = self.make_sandbox(self.main)
        result = self.exec(box, "kill -9 $$")
        self.assertEqual((result["exit_code"], result["signal"]), (137, "SIGKILL"), result)
        result = self.exec(box, ["sh", "-c", "kill -TERM $$"])
        self.assertEqual((result["exit_code"], result["signal"]), (143, "SIGTERM"), result)

    def test_stdout_stderr_and_stdin(self):
        box = self.make_sandbox(self.main)
        result = self.exec(box, "echo to-out; echo to-err >&2")
        self.assertEqual((result["stdout"], result["stderr"]), ("to-out\n", "to-err\n"), result)
        self.assertFalse(result["truncated"], result)
        result = self.exec(box, ["cat"], stdin="hello")
        self.assertEqual((result["exit_code"], result["stdout"]), (0, "hello"), result)
        result = self.exec(box, ["cat"])
        self.assertEqual((result["exit_code"], result["stdout"]), (0, ""), "without stdin, cat reads EOF")
        self.assertEqual(self.ok(box, "echo $GREETING", env={"GREETING": "hi there"}), "hi there\n")

    # 15 ----------------------------------------------------------------------------------------------

    def test_stop_ends_every_process_and_start_brings_the_sandbox_back(self):
        box = self.make_sandbox(self.main, "cycle")
        path = f"/api/projects/{self.main}/sandboxes/{box['name']}"
        token = secrets.token_hex(8)
        self.ok(box, f"echo {token} > /root/persist")
        self.ok(box, "setsid sleep 1000 > /dev/null 2>&1 < /dev/null &")
        host_pids = sandbox_host_pids(self.fx.prefix, self.main, box["name"])
        self.assertIn(box["pid"], host_pids)
        self.assertGreaterEqual(len(host_pids), 2, f"pid 1 and the sleep should be in the cgroup: {host_pids}")
        starts = {pid: stat_of(pid)[2] for pid in host_pids if stat_of(pid)}

        stopped = self.call("POST", path + "/stop")
        self.assertEqual(stopped["state"], "stopped", stopped)
        self.assertNotIn("pid", stopped)
        self.assertEqual(self.call("GET", path)["state"], "stopped")
        refused = self.exec(box, ["true"], expect=409)
        self.assertIn("not running", refused["error"])
        gone = wait_until(lambda: not any(running(p, s) for p, s in starts.items()), 10)
        self.assertTrue(gone, f"still running after stop: {[p for p, s in starts.items() if running(p, s)]}")
        self.assertEqual(sandbox_host_pids(self.fx.prefix, self.main, box["name"]), [])

        started = self.call("POST", path + "/start")
        self.assertEqual(started["state"], "running", started)
        self.assertNotEqual(started["pid"], box["pid"])
        self.assertTrue(running(started["pid"]), "the new pid 1 is not running on the host")
        self.assertEqual(stat_of(started["pid"])[0], "bolt-sandbox")
        self.assertEqual(self.call("GET", path)["pid"], started["pid"])
        self.assertEqual(self.ok(box, ["cat", "/root/persist"]).strip(), token)
        self.assertNotIn(["sleep", "1000"], self.inside_cmdlines(box), "a process survived the stop")

    def _enter_helpers(self, pid1: int) -> list[int]:
        """Host pids of the server's ``bolt-sandbox enter --pid <pid1>`` helpers (one per running exec)."""
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                argv = read_text(f"/proc/{name}/cmdline").split("\0")
            except OSError:
                continue
            if len(argv) > 3 and argv[0].endswith("bolt-sandbox") and argv[1:4] == ["enter", "--pid", str(pid1)]:
                found.append(int(name))
        return found

    def test_stop_completes_after_an_exec_helper_was_killed_from_outside(self):
        # The OOM killer (the helper sits in the sandbox's cgroup) or an operator may kill an exec's
        # host-side helper while its command runs; the sandbox must still stop.
        box = self.make_sandbox(self.main, "orphan")
        path = f"/api/projects/{self.main}/sandboxes/{box['name']}"
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(r=self.fx.api(
            "POST", path + "/exec", {"command": ["sleep", "100"], "timeout": 60})))
        thread.start()
        try:
            self.assertTrue(wait_until(lambda: self._enter_helpers(box["pid"]), 10), "no exec helper found")
            helpers = self._enter_helpers(box["pid"])
            self.assertEqual(len(helpers), 1, helpers)
            os.kill(helpers[0], signal.SIGKILL)
        finally:
            thread.join(60)
        self.assertFalse(thread.is_alive(), "the exec did not end when its helper was killed")
        self.assertEqual(outcome["r"][0], 200, outcome)
        code, stopped = self.fx.api("POST", path + "/stop", timeout=30)
        self.assertEqual((code, stopped.get("state")), (200, "stopped"), stopped)
        self.assertTrue(wait_until(lambda: not running(box["pid"]), 10), "pid 1 still running after stop")
        self.assertEqual(sandbox_host_pids(self.fx.prefix, self.main, box["name"]), [])

    # last --------------------------------------------------------------------------------------------

    def test_zz_deleting_everything_leaves_no_process_mount_or_cgroup(self):
        """Runs last (trial orders by name): deletes every project with ?force=1 and stops the server."""
        project = self.make_project("last")
        box = self.make_sandbox(project)
        self.ok(box, "setsid sleep 1000 > /dev/null 2>&1 < /dev/null &")
        self.assertTrue(mount_points_under(self.fx.server.root), "test precondition: overlays are mounted")
        self.assertTrue(processes_in_cgroups(self.fx.prefix), "test precondition: sandbox processes run")
        problems = SHARED.close()
        self.assertEqual(problems, [], "\n".join(problems))
        self.assertEqual(cgroup_dirs_named(self.fx.prefix), [])


# --- restart ----------------------------------------------------------------------------------------------


class ServerRestartTests(ServerTestMixin, unittest.TestCase):
    timeout = 900

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "mount", "umount")
        yield ensure_test_image(reactor)
        # When the server dies its sandboxes' pid 1s are orphaned; as subreaper we adopt (and later
        # reap) them instead of leaving zombies to a host init that may not reap.
        set_subreaper(True)
        self.addCleanup(set_subreaper, False)
        self.fx = Fixture()
        self.addCleanup(self._close)  # runs first: cleanups run last-in, first-out
        self.fx.start()

    def _close(self):
        problems = self.fx.close()
        if problems:
            raise AssertionError("\n".join(problems))

    def test_a_restarted_server_adopts_running_sandboxes(self):
        self.call("POST", "/api/projects", {"name": "p"}, expect=201)
        box = self.make_sandbox("p", "keep")
        path = f"/api/projects/p/sandboxes/{box['name']}"
        self.ok(box, "setsid sleep 1000 > /dev/null 2>&1 < /dev/null &")
        self.assertIn(["sleep", "1000"], self.inside_cmdlines(box))
        pid1 = box["pid"]
        pid1_start = stat_of(pid1)[2]
        sleeps = [p for p in sandbox_host_pids(self.fx.prefix, "p", box["name"])
                  if stat_of(p) and stat_of(p)[0] == "sleep"]
        self.assertEqual(len(sleeps), 1, sandbox_host_pids(self.fx.prefix, "p", box["name"]))
        sleep_pid, sleep_start = sleeps[0], stat_of(sleeps[0])[2]

        self.fx.server.kill()
        self.assertTrue(running(pid1, pid1_start), "the sandbox died with the server")
        self.fx.server.start()

        again = self.call("GET", path)
        self.assertEqual((again["state"], again["pid"]), ("running", pid1), again)
        self.assertTrue(running(pid1, pid1_start), "pid 1 was replaced, not adopted")
        self.assertTrue(running(sleep_pid, sleep_start), "the background sleep did not survive the restart")
        self.assertIn(["sleep", "1000"], self.inside_cmdlines(box))
        # The adopted sandbox is fully usable: stop and start work on it.
        self.assertEqual(self.call("POST", path + "/stop")["state"], "stopped")
        self.assertTrue(wait_until(lambda: not running(pid1, pid1_start) and not running(sleep_pid, sleep_start)),
                        "the adopted sandbox's processes survived stop")
        reap(pid1)
        started = self.call("POST", path + "/start")
        self.assertEqual(started["state"], "running")
        self.assertEqual(self.ok(box, ["echo", "back"]).strip(), "back")
