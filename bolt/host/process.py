"""Run host commands without blocking the reactor.

Every host tool Bolt drives (debootstrap, mount, iptables-restore, ip, ...) goes through
:class:`ProcessRunner`, a thin Deferred wrapper around ``reactor.spawnProcess``.  Adapters take a
runner in their constructor so unit tests can hand them a fake that expects exact command lines.

Commands are always argv lists: no shell ever parses a string that came from a user.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

#: How many trailing output lines a failure keeps, to say why a command failed.
TAIL_LINES = 20

#: Seconds between SIGTERM and SIGKILL when a running command is cancelled.
KILL_GRACE = 5.0

#: The environment commands get unless the caller passes one: predictable, and never the server's own.
DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


@dataclass(frozen=True)
class ProcessResult:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    exit_code: int | None
    signal: int | None
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exit code {self.exit_code}"


@dataclass
class ProcessFailed(Exception):
    """A command ended with a non-zero exit code or a signal."""

    result: ProcessResult
    tail: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        name = os.path.basename(self.result.argv[0]) if self.result.argv else "command"
        text = f"{name} failed ({self.result.describe()})"
        if self.tail:
            text += ": " + "\n".join(self.tail)
        return text


OutputCallback = Callable[[str], None]


class ProcessRunner(Protocol):
    """What adapters need from a runner; the real one and the test fake both provide it."""

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        stdin: bytes | None = None,
        on_line: OutputCallback | None = None,
        check: bool = True,
    ) -> defer.Deferred[ProcessResult]:
        ...


class _Collector(protocol.ProcessProtocol):
    """Collects output, feeds complete lines to an observer, fires a Deferred at the end."""

    def __init__(self, argv: tuple[str, ...], stdin: bytes | None, on_line: OutputCallback | None,
                 check: bool, deferred: defer.Deferred[ProcessResult]) -> None:
        self.argv = argv
        self.stdin = stdin
        self.on_line = on_line
        self.check = check
        self.deferred = deferred
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = {1: b"", 2: b""}
        self.on_end: Callable[[], None] | None = None

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        (self.out if fd == 1 else self.err).append(data)
        buffered = self._partial.get(fd, b"") + data
        *lines, self._partial[fd] = buffered.split(b"\n")
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line:
            return
        self.tail.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def processEnded(self, reason) -> None:
        if self.on_end is not None:
            self.on_end()
        for fd in (1, 2):
            if self._partial.get(fd):
                self._line(self._partial[fd])
        exit_code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        result = ProcessResult(self.argv, exit_code, sig, b"".join(self.out), b"".join(self.err))
        if self.deferred.called:
            return
        if self.check and not result.ok:
            self.deferred.errback(ProcessFailed(result, list(self.tail)))
        else:
            self.deferred.callback(result)


class ReactorRunner:
    """The real runner: ``spawnProcess`` with a clean environment and no inherited descriptors.

    Cancelling the returned Deferred terminates the command (SIGTERM, then SIGKILL after
    :data:`KILL_GRACE` seconds) and fails the Deferred with ``CancelledError``.
    """

    log = Logger()

    #: Processes started per turn of the reactor, at most.  Starting one blocks the reactor thread
    #: until the child has called exec (posix_spawn waits for it as vfork does): ~2.5 ms on the
    #: development VM when idle, 5-30 ms and more when its CPUs are busy, because the child must be
    #: scheduled first.  Twenty sandbox creates in flight finish a step together and would start
    #: twenty processes in one turn -- 100-200 ms without a timer or a request being served.  Queued
    #: and started a few per turn, they let the reactor handle everything else in between.
    SPAWNS_PER_TURN = 2

    def __init__(self, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._queue: deque[tuple[_Collector, dict]] = deque()
        self._turn = None

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        stdin: bytes | None = None,
        on_line: OutputCallback | None = None,
        check: bool = True,
    ) -> defer.Deferred[ProcessResult]:
        args = tuple(argv)
        if not args or not all(isinstance(a, str) for a in args):
            raise TypeError("argv must be a non-empty sequence of str")
        collector: _Collector | None = None
        spawn = dict(executable=args[0], args=args, env=dict(env if env is not None else DEFAULT_ENV),
                     path=path, childFDs={0: "w", 1: "r", 2: "r"})

        def cancel(d: defer.Deferred) -> None:
            transport = collector.transport if collector else None
            if transport is None or transport.pid is None:
                # Not started yet: it never will be (the Deferred fails with CancelledError).
                if (collector, spawn) in self._queue:
                    self._queue.remove((collector, spawn))
                return
            self._signal(transport, "TERM")
            kill = self.reactor.callLater(KILL_GRACE, self._signal, transport, "KILL")
            collector.on_end = lambda: kill.cancel() if kill.active() else None

        d: defer.Deferred[ProcessResult] = defer.Deferred(cancel)
        collector = _Collector(args, stdin, on_line, check, d)
        self._queue.append((collector, spawn))
        if self._turn is None:
            self._turn = self.reactor.callLater(0, self._start_some)
        return d

    def _start_some(self) -> None:
        """Start the next few queued processes; the rest wait for the next turn of the reactor."""
        self._turn = None
        for _ in range(self.SPAWNS_PER_TURN):
            if not self._queue:
                return
            collector, spawn = self._queue.popleft()
            self.log.debug("running {argv}", argv=list(spawn["args"]))
            try:
                self.reactor.spawnProcess(collector, **spawn)
            except Exception:
                collector.deferred.errback()
        if self._queue:
            self._turn = self.reactor.callLater(0, self._start_some)

    @staticmethod
    def _signal(transport, name: str) -> None:
        try:
            transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass
