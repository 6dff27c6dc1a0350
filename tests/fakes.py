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
