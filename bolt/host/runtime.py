"""The sandbox runtime: a long-lived pid 1 per sandbox, and commands run inside it.

Everything namespace-related is done by the small native helper ``bolt-sandbox`` (C, in
:mod:`bolt.host.native`); this module builds its command lines, runs it without blocking the reactor
and reads its answers.

Starting a sandbox (:meth:`Runtime.start`) runs ``bolt-sandbox init`` through the injected
:class:`~bolt.host.process.ProcessRunner`.  The helper joins the sandbox's cgroups, unshares mount,
UTS, IPC, network, cgroup and pid namespaces, and forks the sandbox's pid 1, which mounts /proc, a
read-only /sys and a minimal /dev, masks and write-protects the dangerous parts of /proc, sets the
hostname, brings up loopback, ``pivot_root``\\ s into the root filesystem and detaches the host's
tree, then keeps only Docker's default capabilities (bounding, effective and permitted sets; nothing
inheritable or ambient) with ``no_new_privs`` set, and installs a seccomp filter that refuses what
Docker's default profile refuses (module loading, mounts, new namespaces, keyrings, bpf, the clock,
...; the list and where it differs from Docker's are in the helper's source).  The helper prints
``READY <pid>`` once pid 1 reports success and exits; pid 1 keeps running (reaping orphans) until the
sandbox is stopped.  A :class:`SandboxProcess` names pid 1 by host pid *and* start time (field 22 of
``/proc/PID/stat``), so a recycled pid is never mistaken for the sandbox.

Running a command (:meth:`Runtime.exec`) starts ``bolt-sandbox enter`` with its own process
protocol rather than through the runner, because it needs a capped, streaming capture and a
timeout; the same :class:`~bolt.host.process.Spawner` as everything else starts it.  The helper
joins the cgroups and namespaces of pid 1, forks, drops the same capabilities, installs the same
seccomp filter and executes the command in a session of its own.  Descriptors of
the helper::

    0  stdin of the command          (written by us, then closed)
    1  stdout of the command         (captured up to max_output, the rest counted as truncated)
    2  stderr of the command         (same)
    3  the command's environment     ("KEY=VALUE\\0" entries; written by us, then closed)
    4  the helper's status           ("error <kind> <message>\\n" when the command could not start)

The environment travels on a descriptor, never in the helper's own environment: the helper runs
as root on the host before it enters the sandbox, and ``LD_PRELOAD`` or ``GLIBC_TUNABLES`` from a
request must never reach the dynamic loader of a host process.  The helper's own environment is
empty.

An exec ends when the command ends, even if processes it started in the background still hold its
stdout or stderr: output already written is drained, then our ends of the pipes are closed (a
background process that writes later gets ``EPIPE``).  Background processes keep running until the
sandbox stops.  On timeout, or when the returned Deferred is cancelled, the command's whole process
tree is stopped (``SIGSTOP``, repeated until no new descendant appears), then ``SIGKILL``\\ ed, helper
last.

Stopping a sandbox is the cgroup adapter's job (signal everything in its cgroup); :meth:`Runtime.stop`
and :meth:`Runtime.kill` act on pid 1 only and serve as a fallback.  pid 1 answers ``SIGTERM`` by
forwarding it to every process of the sandbox and exiting once they are gone (at most 10 s, or at a
second ``SIGTERM``); when pid 1 exits, the kernel kills whatever is left in its pid namespace.

Blocking: the few reads of ``/proc`` here (liveness, start time, the process tree on timeout) are
reads of an in-memory filesystem that return in microseconds to a few milliseconds, so they run in
the reactor thread, like the cgroup adapter's writes.
"""

from __future__ import annotations

import errno as errno_mod
import math
import os
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from bolt.host.process import KILL_GRACE, ProcessRunner, Spawner

#: Hostnames follow the rule for project and sandbox names.  ('_' is not valid in DNS host names,
#: but sethostname(2) accepts it, and a sandbox's hostname is its name.)
HOSTNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: Environment variable names a command may be given.
ENV_KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: What every command gets, under whatever the caller adds or overrides.
DEFAULT_EXEC_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": "xterm",
    "LANG": "C.UTF-8",
}

#: Bytes of stdout (and, separately, of stderr) an exec keeps by default.
DEFAULT_MAX_OUTPUT = 10 * 1024 * 1024

#: The helper's limit for the environment block (bolt-sandbox.c: MAX_ENV_BYTES).
MAX_ENV_BYTES = 4 * 1024 * 1024

#: Descriptor numbers of the helper for the command's environment and the helper's status.
ENV_FD = 3
STATUS_FD = 4

#: The helper's exit code when the command could not be started (the reason is on STATUS_FD).
EXIT_SETUP = 125

_STATUS_LIMIT = 64 * 1024
_DRAIN_CHUNK = 65536
_STOP_POLL = 0.05
_FREEZE_ROUNDS = 20


# --- errors -------------------------------------------------------------------------------------


class SandboxRuntimeError(Exception):
    """Base of the runtime's errors."""


class StartFailed(SandboxRuntimeError):
    """``bolt-sandbox init`` did not produce a running pid 1; the message says why."""


class ExecFailed(SandboxRuntimeError):
    """The command could not be started inside the sandbox (the helper said why)."""


class SandboxGone(ExecFailed):
    """The sandbox's pid 1 is not running (or the pid now belongs to another process)."""


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxProcess:
    """A sandbox's pid 1: its host pid and its start time in clock ticks since boot."""

    pid: int
    start_time: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}


@dataclass(frozen=True)
class ExecResult:
    """How a command run with :meth:`Runtime.exec` ended.

    ``exit_code`` is 128 + N when the command was killed by signal N (``signal`` then names it,
    e.g. ``"SIGKILL"``).  ``stdout``/``stderr`` hold at most ``max_output`` bytes each; the
    ``*_truncated`` flags say whether more was produced and dropped.
    """

    exit_code: int
    signal: str | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "timed_out": self.timed_out,
            "duration": round(self.duration, 6),
            "truncated": self.truncated,
            "signal": self.signal,
        }


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the runtime uses."""

    pid: int
    state: str
    ppid: int
    start_time: int


# --- pure helpers -------------------------------------------------------------------------------


def validate_hostname(hostname: object) -> str:
    if not isinstance(hostname, str) or HOSTNAME_PATTERN.fullmatch(hostname) is None:
        raise ValueError(f"invalid hostname {hostname!r}: 1-63 characters of a-z, 0-9, '-' and '_', "
                         f"starting with a letter or digit")
    return hostname


def _check_path(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError(f"{what} must be an absolute path, not {value!r}")
    return value


def _check_pid(pid: object) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"invalid pid {pid!r}")
    return pid


def _check_start_time(start_time: object) -> int:
    if isinstance(start_time, bool) or not isinstance(start_time, int) or start_time < 0:
        raise ValueError(f"invalid start time {start_time!r}")
    return start_time


def exec_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """The defaults overlaid with ``env``, after checking every name and value."""
    merged = dict(DEFAULT_EXEC_ENV)
    if env is None:
        return merged
    if not isinstance(env, Mapping):
        raise ValueError("env must be a mapping of names to values")
    for key, value in env.items():
        if not isinstance(key, str) or ENV_KEY_PATTERN.fullmatch(key) is None:
            raise ValueError(f"invalid environment variable name {key!r}")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"invalid value for environment variable {key}: must be a string without NUL")
        merged[key] = value
    return merged


def encode_environment(env: Mapping[str, str]) -> bytes:
    """``KEY=VALUE\\0`` entries, the format the helper reads from its environment descriptor."""
    try:
        blob = b"".join(f"{key}={value}".encode("utf-8") + b"\0" for key, value in env.items())
    except UnicodeEncodeError as e:
        raise ValueError(f"environment is not valid UTF-8: {e}") from None
    if len(blob) > MAX_ENV_BYTES:
        raise ValueError(f"environment too large ({len(blob)} bytes, at most {MAX_ENV_BYTES})")
    return blob


def command_argv(argv: Sequence[str] | str) -> list[str]:
    """A command as an argv list; a string is a shell command line for ``/bin/sh -c``."""
    if isinstance(argv, str):
        if not argv.strip() or "\0" in argv:
            raise ValueError("command must be a non-empty string without NUL")
        return ["/bin/sh", "-c", argv]
    if isinstance(argv, (bytes, bytearray)) or not isinstance(argv, Sequence) or not argv:
        raise ValueError("argv must be a non-empty list of strings or a string")
    out = list(argv)
    for arg in out:
        if not isinstance(arg, str) or "\0" in arg:
            raise ValueError(f"invalid argument {arg!r}: arguments are strings without NUL")
    if not out[0]:
        raise ValueError("the program name must not be empty")
    return out


def init_argv(binary: str, rootfs: str, hostname: str, cgroup_procs: Iterable[str]) -> list[str]:
    """The command line of ``bolt-sandbox init``."""
    argv = [binary, "init", "--rootfs", _check_path(rootfs, "rootfs"), "--hostname", validate_hostname(hostname)]
    for path in _cgroup_list(cgroup_procs):
        argv += ["--cgroup-procs", path]
    return argv


def enter_argv(binary: str, pid: int, command: Sequence[str], *, cgroup_procs: Iterable[str],
               cwd: str | None = None, start_time: int | None = None, setsid: bool = True,
               env_fd: int | None = ENV_FD, status_fd: int | None = STATUS_FD) -> list[str]:
    """The command line of ``bolt-sandbox enter`` running ``command`` in the sandbox of ``pid``."""
    argv = [binary, "enter", "--pid", str(_check_pid(pid))]
    if start_time is not None:
        argv += ["--start-time", str(_check_start_time(start_time))]
    for path in _cgroup_list(cgroup_procs):
        argv += ["--cgroup-procs", path]
    if cwd is not None:
        argv += ["--cwd", _check_path(cwd, "cwd")]
    if setsid:
        argv.append("--setsid")
    if env_fd is not None:
        argv += ["--env-fd", str(env_fd)]
    if status_fd is not None:
        argv += ["--status-fd", str(status_fd)]
    return argv + ["--"] + command_argv(command)


def _cgroup_list(cgroup_procs: Iterable[str]) -> list[str]:
    if isinstance(cgroup_procs, str):
        raise ValueError("cgroup_procs must be a list of paths, not one string")
    return [_check_path(p, "cgroup.procs path") for p in cgroup_procs]


def parse_ready(stdout: bytes) -> int:
    """The pid from the helper's ``READY <pid>`` line; ``ValueError`` for anything else."""
    text = stdout.decode("ascii", "replace").strip()
    match = re.fullmatch(r"READY ([1-9][0-9]{0,9})", text)
    if match is None:
        raise ValueError(f"unexpected answer from bolt-sandbox init: {text[:200]!r}")
    return int(match.group(1))


def parse_stat(text: str) -> ProcStat:
    """Parse ``/proc/PID/stat``.  The command name may contain spaces and parentheses."""
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError("malformed stat line")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # fields[0] is field 3 (state); field 4 is the ppid and field 22 the start time.
    return ProcStat(pid=pid, state=fields[0], ppid=int(fields[1]), start_time=int(fields[19]))


def read_stat(pid: int, proc_dir: str = "/proc") -> ProcStat | None:
    """The stat of a process, or ``None`` when it does not exist (any more)."""
    try:
        with open(os.path.join(proc_dir, str(pid), "stat"), "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    try:
        return parse_stat(data.decode("utf-8", "replace"))
    except (ValueError, IndexError):
        return None


def processes(proc_dir: str = "/proc") -> Iterator[ProcStat]:
    """The stat of every process there is (those that end while being listed are skipped)."""
    try:
        names = os.listdir(proc_dir)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            st = read_stat(int(name), proc_dir)
            if st is not None:
                yield st


def descendants(root: int, proc_dir: str = "/proc") -> list[int]:
    """Every process below ``root`` in the host's process tree, parents before children."""
    children: dict[int, list[int]] = {}
    for st in processes(proc_dir):
        children.setdefault(st.ppid, []).append(st.pid)
    found: list[int] = []
    queue = [root]
    seen = {root}
    while queue:
        for child in sorted(children.get(queue.pop(0), ())):
            if child not in seen:
                seen.add(child)
                found.append(child)
                queue.append(child)
    return found


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def exit_status(exit_code: int | None, signal_number: int | None) -> tuple[int, str | None]:
    """``(exit code, signal name)``: a death by signal N is exit code 128 + N, like a shell says."""
    if signal_number is not None:
        return 128 + signal_number, signal_name(signal_number)
    return (exit_code if exit_code is not None else -1), None


def parse_status(data: bytes) -> tuple[str, str] | None:
    """The helper's ``error <kind> <message>`` report, or ``None`` when it reported nothing."""
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("error "):
            kind, _, message = line[len("error "):].partition(" ")
            return kind, message
    return None


# --- the exec protocol --------------------------------------------------------------------------


class _Capture:
    """Bytes of one stream up to a limit; the rest is counted, not kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            self.truncated = True
            data = data[:max(room, 0)]
        if data:
            self.parts.append(data)
            self.size += len(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


class _ExecProtocol(protocol.ProcessProtocol):
    def __init__(self, runtime: "Runtime", deferred: defer.Deferred, env_blob: bytes, stdin: bytes | None,
                 max_output: int, timeout: float) -> None:
        self.runtime = runtime
        self.deferred = deferred
        self.env_blob = env_blob
        self.stdin = stdin
        self.timeout = timeout
        self.captures = {1: _Capture(max_output), 2: _Capture(max_output), STATUS_FD: _Capture(_STATUS_LIMIT)}
        self.started = 0.0  # when the helper started (it may wait for its turn: see Spawner)
        self.ended: float | None = None
        self.timed_out = False
        self.killed = False
        self.exit: tuple[int | None, int | None] | None = None
        self.timer = None

    # lifecycle

    def connectionMade(self) -> None:
        self.started = self.runtime.reactor.seconds()
        self.transport.writeToChild(ENV_FD, self.env_blob)
        self.transport.closeChildFD(ENV_FD)
        if self.stdin:
            self.transport.writeToChild(0, self.stdin)
        self.transport.closeStdin()
        self.timer = self.runtime.reactor.callLater(self.timeout, self._expire)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        capture = self.captures.get(childFD)
        if capture is not None:
            capture.add(data)

    def processExited(self, reason) -> None:
        self._record(reason)
        # The command is over.  What it wrote is in the pipes already; take it, then close our ends
        # so that background processes still holding the pipes do not keep the exec open.
        self._drain()
        for fd in list(getattr(self.transport, "pipes", {}) or {}):
            try:
                self.transport.closeChildFD(fd)
            except (KeyError, OSError):
                pass

    def processEnded(self, reason) -> None:
        self._record(reason)
        self._cancel_timer()
        if self.killed:  # the helper may have died before reaping its command: see reap_orphans
            reap_orphans(self.runtime.proc_dir)
        if self.deferred.called:
            return
        status = parse_status(self.captures[STATUS_FD].value())
        exit_code, signal_number = self.exit or (None, None)
        if status is not None and not self.timed_out:
            kind, message = status
            cls = SandboxGone if kind == "gone" else ExecFailed
            self.deferred.errback(cls(message))
            return
        code, name = exit_status(exit_code, signal_number)
        result = ExecResult(
            exit_code=code,
            signal=name,
            stdout=self.captures[1].value(),
            stderr=self.captures[2].value(),
            timed_out=self.timed_out,
            duration=max(0.0, (self.ended if self.ended is not None else self.runtime.reactor.seconds())
                         - self.started),
            stdout_truncated=self.captures[1].truncated,
            stderr_truncated=self.captures[2].truncated,
        )
        self.deferred.callback(result)

    # helpers

    def _record(self, reason) -> None:
        if self.exit is not None:
            return
        self.ended = self.runtime.reactor.seconds()
        value = reason.value
        self.exit = (getattr(value, "exitCode", None), getattr(value, "signal", None))

    def _drain(self) -> None:
        pipes = getattr(self.transport, "pipes", None) or {}
        for fd in (1, 2, STATUS_FD):
            reader = pipes.get(fd)
            if reader is None or not hasattr(reader, "fileno"):
                continue
            try:
                fileno = reader.fileno()
            except Exception:
                continue
            if fileno < 0:
                continue
            while True:
                try:
                    data = os.read(fileno, _DRAIN_CHUNK)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if not data:
                    break
                self.childDataReceived(fd, data)

    def _expire(self) -> None:
        self.timer = None
        self.timed_out = True
        self.kill()

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def kill(self) -> None:
        pid = getattr(self.transport, "pid", None)
        if pid is not None:
            self.killed = True
            self.runtime.kill_tree(pid)


# --- the adapter --------------------------------------------------------------------------------


def reap(pid: int) -> bool:
    """Collect ``pid``'s exit status if it is a finished child of this process (see below).

    The server makes itself a child subreaper, so a sandbox's pid 1 becomes its child once the
    launcher exits; Twisted only reaps the processes it spawned itself, so stopped sandboxes are
    reaped here and leave no zombie behind.
    """
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


def _pid_depth(pid: int, proc_dir: str) -> int | None:
    """How many pid namespaces ``pid`` is seen in (the entries of ``NSpid`` in its status)."""
    try:
        with open(os.path.join(proc_dir, str(pid), "status"), "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return len(line.split()) - 1
    except OSError:
        return None
    return None


def reap_orphans(proc_dir: str = "/proc") -> list[int]:
    """Reap sandbox processes that were handed to this process and have exited; returns their pids.

    When a ``bolt-sandbox enter`` helper dies before it has reaped its command (SIGKILLed on
    timeout before it could, by the OOM killer, by an operator), the kernel re-parents the command
    -- which lives in the sandbox's pid namespace -- to the nearest subreaper: the server.  Twisted
    reaps only what it spawned, and until that zombie is reaped the sandbox's pid 1 cannot finish
    exiting (the kernel waits for every process of the namespace), so a stop would wait forever.
    Only zombies in a deeper pid namespace than ours are collected: Twisted spawns nothing there,
    so no exit status that it waits for is taken.
    """
    me = os.getpid()
    own = _pid_depth(me, proc_dir)
    if own is None:
        return []
    reaped = []
    for st in processes(proc_dir):
        if st.ppid != me or st.state != "Z":
            continue
        depth = _pid_depth(st.pid, proc_dir)
        if depth is not None and depth > own and reap(st.pid):
            reaped.append(st.pid)
    return reaped


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphans of our children (a sandbox's pid 1) are re-parented to us."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER


class Runtime:
    """Start sandboxes (pid 1 in new namespaces) and run commands inside them.

    ``runner`` runs ``bolt-sandbox init``; ``spawner`` starts ``bolt-sandbox enter`` for execs and
    terminals (by default the runner's, so all of them share one pace); ``reactor`` provides the
    clock for timeouts; ``binary`` is the helper's path (default: the one built into the package,
    found on first use).  ``proc_dir`` and ``kill`` exist for tests.
    """

    log = Logger()

    def __init__(self, runner: ProcessRunner, reactor=None, binary: str | None = None, *,
                 spawner: Spawner | None = None, proc_dir: str = "/proc",
                 kill: Callable[[int, int], None] = os.kill) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.runner = runner
        self.reactor = reactor
        self.spawner = spawner or getattr(runner, "spawner", None) or Spawner(reactor)
        self._binary = binary
        self.proc_dir = proc_dir
        self._kill = kill

    @property
    def binary(self) -> str:
        if self._binary is None:
            from bolt.host.native import binary_path
            self._binary = binary_path()
        return self._binary

    # --- pid 1 ---

    def start(self, rootfs: str, hostname: str, cgroup_procs: Sequence[str]) -> defer.Deferred[SandboxProcess]:
        """Start a sandbox's pid 1 over the mounted root filesystem ``rootfs``.

        ``cgroup_procs`` are the sandbox cgroups' ``cgroup.procs`` files (one per v1 hierarchy, one
        on v2).  Fires with the :class:`SandboxProcess`, or fails with :class:`StartFailed`.
        """
        argv = init_argv(self.binary, rootfs, hostname, cgroup_procs)
        d = self.runner.run(argv, env={}, check=False)

        def started(result) -> SandboxProcess:
            if result.exit_code != 0:
                message = result.stderr.decode("utf-8", "replace").strip()
                for prefix in ("bolt-sandbox: init: ", "bolt-sandbox: "):
                    if message.startswith(prefix):
                        message = message[len(prefix):]
                        break
                raise StartFailed(f"sandbox {hostname} did not start ({result.describe()})"
                                  + (f": {message}" if message else ""))
            try:
                pid = parse_ready(result.stdout)
            except ValueError as e:
                raise StartFailed(f"sandbox {hostname}: {e}") from None
            st = read_stat(pid, self.proc_dir)
            if st is None or st.state in ("Z", "X"):
                raise StartFailed(f"sandbox {hostname}: pid 1 ({pid}) exited right after it started")
            self.log.info("sandbox {hostname} started: pid {pid}", hostname=hostname, pid=pid, rootfs=rootfs)
            return SandboxProcess(pid, st.start_time)

        return d.addCallback(started)

    def alive(self, pid: int, start_time: int) -> bool:
        """Whether ``pid`` is running and is the process that started at ``start_time``."""
        st = read_stat(_check_pid(pid), self.proc_dir)
        return st is not None and st.start_time == start_time and st.state not in ("Z", "X")

    def kill(self, pid: int, start_time: int | None = None) -> bool:
        """SIGKILL a sandbox's pid 1, which ends every process of the sandbox.

        With ``start_time`` nothing is sent unless the pid is still that process.  Returns whether
        the signal was sent.
        """
        _check_pid(pid)
        if start_time is not None and not self.alive(pid, start_time):
            return False
        return self._signal(pid, signal.SIGKILL)

    def stop(self, pid: int, start_time: int, grace: float = KILL_GRACE) -> defer.Deferred[None]:
        """SIGTERM pid 1 (it forwards SIGTERM to the sandbox and exits when it is empty), SIGKILL after
        ``grace`` seconds; fires once pid 1 is gone."""
        _check_pid(pid)
        done: defer.Deferred[None] = defer.Deferred()
        if not self.alive(pid, start_time):
            done.callback(None)
            return done
        self._signal(pid, signal.SIGTERM)
        deadline = self.reactor.seconds() + grace
        killed = [False]

        def poll() -> None:
            reap_orphans(self.proc_dir)  # else pid 1 may wait forever for a zombie only we can reap
            if not self.alive(pid, start_time):
                reap(pid)
                self.log.info("sandbox pid {pid} stopped", pid=pid)
                done.callback(None)
                return
            if not killed[0] and self.reactor.seconds() >= deadline:
                killed[0] = True
                self.log.warn("sandbox pid {pid} still running after {grace}s: SIGKILL", pid=pid, grace=grace)
                self._signal(pid, signal.SIGKILL)
            self.reactor.callLater(_STOP_POLL, poll)

        self.reactor.callLater(0, poll)
        return done

    # --- terminals ---

    def open_terminal(self, pid: int, command: Sequence[str], *, cgroup_procs: Sequence[str],
                      env: Mapping[str, str] | None, start_time: int | None, rows: int, columns: int):
        """A new PTY inside the sandbox running ``command``; see :mod:`bolt.host.terminal`."""
        from bolt.host.terminal import open_terminal
        return open_terminal(self.reactor, self.spawner, self.binary, pid, command, cgroup_procs=cgroup_procs,
                             env=env, start_time=start_time, rows=rows, columns=columns)

    # --- commands ---

    def exec(self, pid: int, argv: Sequence[str] | str, *, cgroup_procs: Sequence[str],
             env: Mapping[str, str] | None = None, cwd: str | None = None, stdin: bytes | None = None,
             timeout: float, max_output: int = DEFAULT_MAX_OUTPUT,
             start_time: int | None = None) -> defer.Deferred[ExecResult]:
        """Run a command in the sandbox whose pid 1 is ``pid``, inside its cgroups.

        ``argv`` is a list, or a string for ``/bin/sh -c``.  Fires with an :class:`ExecResult`
        (also on timeout, with ``timed_out`` set) or fails with :class:`ExecFailed` when the command
        could not be started (:class:`SandboxGone` when the sandbox is not running).  Cancelling
        kills the command's process tree.  With ``start_time`` the helper refuses a pid that now
        belongs to another process.
        """
        command = command_argv(argv)
        blob = encode_environment(exec_environment(env))
        if stdin is not None and not isinstance(stdin, (bytes, bytearray)):
            raise ValueError("stdin must be bytes or None")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0:
            raise ValueError(f"max_output must be a non-negative int, not {max_output!r}")
        args = enter_argv(self.binary, pid, command, cgroup_procs=cgroup_procs, cwd=cwd, start_time=start_time)

        proto: _ExecProtocol | None = None
        started: defer.Deferred | None = None

        def cancel(d: defer.Deferred) -> None:
            if started is not None and not started.called:
                started.cancel()  # still waiting for its turn: it never starts
            elif proto is not None:
                proto.kill()

        d: defer.Deferred[ExecResult] = defer.Deferred(cancel)
        proto = _ExecProtocol(self, d, blob, bytes(stdin) if stdin is not None else None, max_output, float(timeout))
        self.log.debug("exec in sandbox pid {pid}: {argv}", pid=pid, argv=command)
        started = self.spawner.spawn(proto, self.binary, args, env={},
                                     childFDs={0: "w", 1: "r", 2: "r", ENV_FD: "w", STATUS_FD: "r"})

        def not_started(failure: Failure) -> None:
            if not failure.check(defer.CancelledError) and not d.called:
                d.errback(ExecFailed(f"could not start {self.binary}: {failure.getErrorMessage()}"))

        started.addErrback(not_started)
        return d

    def kill_tree(self, root: int) -> list[int]:
        """SIGKILL ``root`` and every process below it; returns the pids signalled.

        The tree is frozen first (SIGSTOP, walking again until no new descendant shows up) so that
        nothing forks away or gets re-parented while it is being killed; ``root`` goes last.
        """
        frozen: list[int] = []
        seen: set[int] = set()
        for _ in range(_FREEZE_ROUNDS):
            new = [p for p in descendants(root, self.proc_dir) if p not in seen]
            if not new:
                break
            for p in new:
                seen.add(p)
                frozen.append(p)
                self._signal(p, signal.SIGSTOP)
        for p in frozen:
            self._signal(p, signal.SIGKILL)
        self._signal(root, signal.SIGKILL)
        return frozen + [root]

    def _signal(self, pid: int, sig: int) -> bool:
        try:
            self._kill(pid, sig)
        except ProcessLookupError:
            return False
        except OSError as e:
            if e.errno == errno_mod.ESRCH:
                return False
            raise
        return True


__all__ = [
    "DEFAULT_EXEC_ENV", "DEFAULT_MAX_OUTPUT", "ExecFailed", "ExecResult", "Runtime", "SandboxGone",
    "SandboxProcess", "SandboxRuntimeError", "StartFailed", "command_argv", "descendants", "enter_argv",
    "exec_environment", "init_argv", "parse_ready", "parse_stat", "validate_hostname",
]
