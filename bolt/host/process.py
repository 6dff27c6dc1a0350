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


class Spawner:
    """The one way Bolt starts processes: ``reactor.spawnProcess``, at most :attr:`PER_TURN` per turn.

    Starting a process blocks the reactor thread until the child has called exec (posix_spawn waits
    for it as vfork does): ~2.5 ms on the development VM when idle, 5-30 ms and more when its CPUs
    are busy, because the child must be scheduled first.  Twenty sandbox creates in flight finish a
    step together, or a hundred clients open shells at once, and would start that many processes in
    one turn -- 100-200 ms without a timer or a request being served.  Here every start waits for
    the next turn of the reactor, where at most :attr:`PER_TURN` of them run, in order; the rest wait
    for later turns, and the reactor serves everything else in between.  (Starting the first ones at
    once would let two starts at the end of one turn meet two at the beginning of the next.)

    Host commands (:class:`ReactorRunner`), execs and shell helpers (bolt.host.runtime and
    bolt.host.terminal) share one Spawner, so the limit holds for all of them together.
    """

    log = Logger()

    PER_TURN = 2

    def __init__(self, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._queue: deque[tuple[defer.Deferred, protocol.ProcessProtocol, dict]] = deque()
        self._turn = None

    def spawn(self, process_protocol: protocol.ProcessProtocol, executable: str, args: Sequence[str], *,
              env: Mapping[str, str], childFDs: dict, path: str | None = None) -> defer.Deferred:
        """Start a process in the next turn of the reactor, or a later one.

        Fires with its transport once started, or fails with what ``spawnProcess`` raised.
        Cancelling it before the start drops the process from the queue: it never starts.
        """
        d: defer.Deferred = defer.Deferred(self._drop)
        self._queue.append((d, process_protocol, dict(executable=executable, args=tuple(args), env=dict(env),
                                                      path=path, childFDs=childFDs)))
        if self._turn is None:
            self._turn = self.reactor.callLater(0, self._next_turn)
        return d

    def waiting(self) -> int:
        """How many processes wait for a later turn."""
        return len(self._queue)

    def _start(self, entry: tuple[defer.Deferred, protocol.ProcessProtocol, dict]) -> None:
        d, process_protocol, kwargs = entry
        self.log.debug("running {argv}", argv=list(kwargs["args"]))
        try:
            transport = self.reactor.spawnProcess(process_protocol, **kwargs)
        except Exception:
            d.errback()
        else:
            d.callback(transport)

    def _drop(self, d: defer.Deferred) -> None:
        for entry in self._queue:
            if entry[0] is d:
                self._queue.remove(entry)
                return

    def _next_turn(self) -> None:
        self._turn = None
        for _ in range(self.PER_TURN):
            if not self._queue:
                return
            self._start(self._queue.popleft())
        if self._queue and self._turn is None:  # (a start's callbacks may have spawned, and scheduled)
            self._turn = self.reactor.callLater(0, self._next_turn)


class ReactorRunner:
    """The real runner: processes started by a :class:`Spawner`, with a clean environment and no
    inherited descriptors.

    Cancelling the returned Deferred terminates the command (SIGTERM, then SIGKILL after
    :data:`KILL_GRACE` seconds) and fails the Deferred with ``CancelledError``; a command that has
    not started yet never starts.
    """

    def __init__(self, reactor=None, spawner: Spawner | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.spawner = spawner or Spawner(reactor)

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
        started: defer.Deferred | None = None

        def cancel(d: defer.Deferred) -> None:
            transport = collector.transport if collector else None
            if transport is None or transport.pid is None:
                if started is not None:
                    started.cancel()  # not started yet: it never will be
                return
            self._signal(transport, "TERM")
            kill = self.reactor.callLater(KILL_GRACE, self._signal, transport, "KILL")
            collector.on_end = lambda: kill.cancel() if kill.active() else None

        d: defer.Deferred[ProcessResult] = defer.Deferred(cancel)
        collector = _Collector(args, stdin, on_line, check, d)
        started = self.spawner.spawn(collector, args[0], args, env=env if env is not None else DEFAULT_ENV,
                                     path=path, childFDs={0: "w", 1: "r", 2: "r"})
        started.addErrback(_unless_cancelled, d)
        return d

    @staticmethod
    def _signal(transport, name: str) -> None:
        try:
            transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


def _unless_cancelled(failure, d: defer.Deferred) -> None:
    """A process that could not start fails ``d``; one dropped from the queue was cancelled by ``d``."""
    if not failure.check(defer.CancelledError) and not d.called:
        d.errback(failure)
