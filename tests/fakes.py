"""Fakes for host adapters, used by unit tests of logic.

The fake runner follows buildbot's idea: a test states the exact commands it expects, in order, and
what each one answers; anything unexpected fails the test at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from twisted.internet import defer

from bolt.host.process import ProcessFailed, ProcessResult


@dataclass
class Expect:
    """One expected command and the answer it gets.

    ``lines`` are fed to the caller's ``on_line`` observer before the command ends.  With
    ``hold=True`` the command does not end by itself: the test fires it later through
    :meth:`FakeRunner.finish` (or the caller cancels it).
    """

    argv: Sequence[str]
    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    lines: Sequence[str] = ()
    signal: int | None = None
    hold: bool = False
    check_env: Mapping[str, str] | None = None
    side_effect: Callable[[], None] | None = None


@dataclass
class Running:
    """A held command, with what the test needs to end it later."""

    expect: Expect
    deferred: defer.Deferred
    on_line: Callable[[str], None] | None
    check: bool
    cancelled: bool = False


class UnexpectedCommand(AssertionError):
    pass


@dataclass
class FakeRunner:
    expected: list[Expect] = field(default_factory=list)
    ran: list[tuple[str, ...]] = field(default_factory=list)
    running: list[Running] = field(default_factory=list)

    def expect(self, *items: Expect) -> "FakeRunner":
        self.expected.extend(items)
        return self

    def run(self, argv, *, env=None, path=None, stdin=None, on_line=None, check=True):
        args = tuple(argv)
        self.ran.append(args)
        if not self.expected:
            raise UnexpectedCommand(f"unexpected command {list(args)!r}")
        exp = self.expected.pop(0)
        if tuple(exp.argv) != args:
            raise UnexpectedCommand(f"expected {list(exp.argv)!r}, got {list(args)!r}")
        if exp.check_env is not None:
            for key, value in exp.check_env.items():
                if (env or {}).get(key) != value:
                    raise UnexpectedCommand(f"{args[0]}: env {key}={(env or {}).get(key)!r}, expected {value!r}")
        if exp.side_effect is not None:
            exp.side_effect()
        if exp.hold:
            running: Running

            def cancel(d):
                running.cancelled = True

            d = defer.Deferred(cancel)
            running = Running(exp, d, on_line, check)
            self.running.append(running)
            for line in exp.lines:
                if on_line:
                    on_line(line)
            return d
        for line in exp.lines:
            if on_line:
                on_line(line)
        return self._answer(exp, check)

    def finish(self, index: int = 0, exit_code: int = 0, signal: int | None = None) -> None:
        """End a held command with the given outcome."""
        running = self.running.pop(index)
        exp = running.expect
        exp.exit_code, exp.signal = exit_code, signal
        result = self._answer(exp, running.check)
        result.chainDeferred(running.deferred)

    def emit(self, line: str, index: int = 0) -> None:
        """Send an output line from a held command."""
        running = self.running[index]
        if running.on_line:
            running.on_line(line)

    @staticmethod
    def _answer(exp: Expect, check: bool) -> defer.Deferred:
        code = None if exp.signal is not None else exp.exit_code
        result = ProcessResult(tuple(exp.argv), code, exp.signal, exp.stdout, exp.stderr)
        if check and not result.ok:
            tail = [ln for ln in (exp.stdout + exp.stderr).decode().splitlines() if ln] or list(exp.lines)
            return defer.fail(ProcessFailed(result, tail[-20:]))
        return defer.succeed(result)

    def assertDone(self) -> None:
        if self.expected:
            raise AssertionError(f"commands never ran: {[list(e.argv) for e in self.expected]!r}")


class FakeImages:
    """The ImageStore's interface over a dict; builds are held until the test finishes them."""

    scripts_dir = "/nonexistent"

    def __init__(self, ready: tuple[str, ...] = ("debian:bookworm",)) -> None:
        from bolt.host.images import ImageInfo
        self._info = ImageInfo
        self.ready = {d: f"/images/{d.replace(':', '/')}" for d in ready}
        self.builds: dict[str, list[defer.Deferred]] = {}
        self.removed: list[str] = []
        self.known_suites = {"bookworm", "bullseye", "trixie", "jammy", "noble"}

    def validate(self, distro):
        return self._check(distro)

    def _check(self, distro):
        from bolt.host.images import InvalidDistro, parse_distro
        parsed = parse_distro(distro)
        if parsed.suite not in self.known_suites:
            raise InvalidDistro("unknown suite")
        return str(parsed)

    def ensure(self, distro):
        key = self._check(distro)
        if key in self.ready:
            return defer.succeed(self.ready[key])
        d = defer.Deferred()
        self.builds.setdefault(key, []).append(d)
        return d

    def finish_build(self, distro: str, error: Exception | None = None) -> None:
        for d in self.builds.pop(distro):
            if error is None:
                self.ready[distro] = f"/images/{distro.replace(':', '/')}"
                d.callback(self.ready[distro])
            else:
                d.errback(error)

    def get(self, distro):
        from bolt.host.images import ImageNotFound
        if distro in self.ready:
            return self._info(distro, "ready", path=self.ready[distro], size_bytes=1, build_seconds=1.0,
                              built_at="2026-01-01T00:00:00+00:00")
        if distro in self.builds:
            return self._info(distro, "building", stage="Retrieving Release", elapsed_seconds=1.0)
        raise ImageNotFound(distro)

    def list(self):
        return [self.get(d) for d in sorted(set(self.ready) | set(self.builds))]

    def start(self, distro):
        key = self._check(distro)
        if key not in self.ready and key not in self.builds:
            self.builds[key] = []
        return self.get(key)

    def remove(self, distro, in_use):
        from bolt.host.images import ImageInUse, ImageNotFound
        if distro not in self.ready:
            return defer.fail(ImageNotFound(distro))
        if in_use:
            return defer.fail(ImageInUse(distro))
        del self.ready[distro]
        self.removed.append(distro)
        return defer.succeed(None)

    def recover(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)


@dataclass(frozen=True)
class _Paths:
    base: str
    upper: str
    work: str
    rootfs: str


class FakeRootFS:
    """Overlay mounts as a set; ``fail_create`` makes the next create fail like a mount error."""

    def __init__(self) -> None:
        self.mounted: dict[tuple[str, str], str] = {}
        self.on_disk: set[tuple[str, str]] = set()
        self.destroyed: list[tuple[str, str]] = []
        self.fail_create: Exception | None = None
        self.fail_destroy: Exception | None = None

    def paths(self, project, name):
        base = f"/data/sandboxes/{project}/{name}"
        return _Paths(base, base + "/upper", base + "/work", base + "/rootfs")

    def create(self, project, name, lower):
        if self.fail_create is not None:
            error, self.fail_create = self.fail_create, None
            return defer.fail(error)
        self.mounted[(project, name)] = lower
        self.on_disk.add((project, name))
        return defer.succeed(self.paths(project, name))

    def mount(self, project, name, lower):
        self.mounted[(project, name)] = lower
        return defer.succeed(self.paths(project, name))

    def is_mounted(self, path):
        return any(self.paths(*key).rootfs == path for key in self.mounted)

    def destroy(self, project, name):
        if self.fail_destroy is not None:
            return defer.fail(self.fail_destroy)
        self.mounted.pop((project, name), None)
        self.on_disk.discard((project, name))
        self.destroyed.append((project, name))
        return defer.succeed(None)

    def stray_mounts(self, known):
        return [self.paths(*key).rootfs for key in self.mounted if key not in set(known)]

    def unmount_stray(self, mount_point):
        for key in [k for k in self.mounted if self.paths(*k).rootfs == mount_point]:
            del self.mounted[key]
        return defer.succeed(None)

    def list_on_disk(self):
        return sorted(self.on_disk)

    def remove_stray(self, project, name):
        self.on_disk.discard((project, name))
        self.destroyed.append((project, name))
        return defer.succeed(None)


class FakeCgroups:
    """Project and sandbox cgroups as dicts; ``procs_files`` names files nobody opens."""

    def __init__(self) -> None:
        self.projects: dict[str, object] = {}
        self.sandboxes: dict[str, set[str]] = {}
        self.killed: list[tuple[str, str]] = []
        self.refuse_limits: Exception | None = None

    def ensure_project(self, project, limits):
        self.projects[project] = limits
        self.sandboxes.setdefault(project, set())

    def set_limits(self, project, limits):
        if self.refuse_limits is not None:
            raise self.refuse_limits
        self.projects[project] = limits

    def remove_project(self, project):
        self.projects.pop(project, None)
        self.sandboxes.pop(project, None)

    def ensure_sandbox(self, project, sandbox):
        self.sandboxes.setdefault(project, set()).add(sandbox)

    def procs_files(self, project, sandbox):
        return [f"/fake/cgroup/{project}/{sandbox}/cgroup.procs"]

    def kill_sandbox(self, project, sandbox):
        self.killed.append((project, sandbox))

    def remove_sandbox(self, project, sandbox):
        self.sandboxes.get(project, set()).discard(sandbox)

    def list_projects(self):
        return sorted(self.sandboxes)

    def list_sandboxes(self, project):
        return sorted(self.sandboxes.get(project, ()))

    def remove_root(self):
        self.root_removed = not self.sandboxes


class FakeTerminal:
    """A PTY master that only records being hung up."""

    def __init__(self) -> None:
        self.fd = 3
        self.hung_up = False

    def hangup(self) -> None:
        self.hung_up, self.fd = True, -1


class FakeRuntime:
    """pid 1s as a dict of live pids; execs answered from a queue of results."""

    def __init__(self) -> None:
        self.next_pid = 1000
        self.live: dict[int, int] = {}
        self.started: list[tuple[str, str, list[str]]] = []
        self.stopped: list[int] = []
        self.execs: list[dict] = []
        self.exec_results: list = []
        self.fail_start: Exception | None = None
        self.terminals: list[FakeTerminal] = []

    def start(self, rootfs, hostname, cgroup_procs):
        from bolt.host.runtime import SandboxProcess
        if self.fail_start is not None:
            error, self.fail_start = self.fail_start, None
            return defer.fail(error)
        self.next_pid += 1
        self.live[self.next_pid] = 77
        self.started.append((rootfs, hostname, list(cgroup_procs)))
        return defer.succeed(SandboxProcess(self.next_pid, 77))

    def alive(self, pid, start_time):
        return self.live.get(pid) == start_time

    def stop(self, pid, start_time, grace=5.0):
        self.live.pop(pid, None)
        self.stopped.append(pid)
        return defer.succeed(None)

    def open_terminal(self, pid, command, **kwargs):
        terminal = FakeTerminal()
        self.terminals.append(terminal)
        return defer.succeed(terminal)

    def exec(self, pid, argv, **kwargs):
        from bolt.host.runtime import ExecResult
        self.execs.append({"pid": pid, "argv": argv, **kwargs})
        if self.exec_results:
            outcome = self.exec_results.pop(0)
            return defer.fail(outcome) if isinstance(outcome, Exception) else defer.succeed(outcome)
        return defer.succeed(ExecResult(0, None, b"ok\n", b"", False, 0.01, False, False))


class FakeNetwork:
    """Links as a dict of id -> (pid, address), over a real AddressPool."""

    def __init__(self, network: str = "10.213.0.0/16") -> None:
        from bolt.netplan import AddressPool
        self.pool = AddressPool(network)
        self.links: dict[str, tuple[int, str]] = {}
        self.setups = 0
        self.fail_attach: Exception | None = None

    def link_name(self, ident):
        return f"bolt{ident}"

    def setup(self):
        self.setups += 1
        return defer.succeed(None)

    def teardown(self):
        self.setups = 0
        return defer.succeed(None)

    def attach(self, pid, ident, address):
        if self.fail_attach is not None:
            error, self.fail_attach = self.fail_attach, None
            return defer.fail(error)
        self.links[ident] = (pid, address)
        return defer.succeed(self.link_name(ident))

    def detach(self, ident):
        return defer.succeed(self.links.pop(ident, None) is not None)

    def list_links(self):
        return defer.succeed(sorted(self.links))


class FakeFirewall:
    """The desired state the core asked for, keyed like the real Firewall's."""

    def __init__(self) -> None:
        self.sandboxes: dict[tuple[str, str], object] = {}
        self.inside: dict[int, object] = {}
        self.applies = 0
        self.fail_next: Exception | None = None

    def _maybe_fail(self):
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            return defer.fail(error)
        return None

    def apply(self, sandboxes):
        self.applies += 1
        self.sandboxes = {sb.key: sb for sb in sandboxes}
        return defer.succeed(None)

    def set_sandbox(self, sb):
        self.sandboxes[sb.key] = sb
        return defer.succeed(None)

    def remove_sandbox(self, project, name):
        self.sandboxes.pop((project, name), None)
        return defer.succeed(None)

    def add_forward(self, project, name, forward):
        failed = self._maybe_fail()
        if failed:
            return failed
        self.sandboxes[(project, name)] = self.sandboxes[(project, name)].with_forward(forward)
        return defer.succeed(None)

    def remove_forward(self, project, name, forward):
        self.sandboxes[(project, name)] = self.sandboxes[(project, name)].without_forward(forward)
        return defer.succeed(None)

    def add_reverse_forward(self, project, name, reverse):
        self.sandboxes[(project, name)] = self.sandboxes[(project, name)].with_reverse_forward(reverse)
        return defer.succeed(None)

    def remove_reverse_forward(self, project, name, reverse):
        self.sandboxes[(project, name)] = self.sandboxes[(project, name)].without_reverse_forward(reverse)
        return defer.succeed(None)

    def apply_inside(self, pid, sb):
        self.inside[pid] = sb
        return defer.succeed(None)

    def teardown_all(self):
        self.sandboxes.clear()
        self.torn_down = True
        return defer.succeed(None)
