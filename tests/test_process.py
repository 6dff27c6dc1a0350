"""Spawner: process starts paced per reactor turn, shared by host commands, execs and terminals."""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.trial import unittest

from bolt.host.process import ReactorRunner, Spawner
from bolt.host.runtime import ExecFailed, Runtime
from bolt.host.terminal import TerminalFailed, open_terminal
from tests.test_runtime import BIN, FakeProcessReactor, FakeProc, KillLog


class RefusingReactor(FakeProcessReactor):
    """Refuses to start the executables named in ``refuse``, as spawnProcess does a missing file;
    :meth:`turn` runs what a reactor's turn runs."""

    def __init__(self, refuse=()) -> None:
        super().__init__()
        self.refuse = set(refuse)

    def turn(self) -> None:
        """Run the calls due now, but not those they schedule: a real reactor runs those in its next
        turn (``Clock.advance(0)`` would run them all at once)."""
        for call in [c for c in self.calls if c.getTime() <= self.seconds()]:
            if call.active():
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)

    def spawnProcess(self, processProtocol, executable, *args, **kwargs):
        if executable in self.refuse:
            raise OSError(2, "No such file or directory", executable)
        return super().spawnProcess(processProtocol, executable, *args, **kwargs)


def started(reactor) -> list[str]:
    return [s["args"][-1] for s in reactor.spawned]


class SpawnerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = RefusingReactor(refuse={"/missing"})
        self.spawner = Spawner(self.reactor)

    def spawn(self, name: str, executable: str = "/bin/true") -> defer.Deferred:
        return self.spawner.spawn(ProcessProtocol(), executable, [executable, name], env={}, childFDs={})

    def test_starts_wait_for_the_next_turn_and_go_a_few_per_turn_in_order(self) -> None:
        ds = [self.spawn(f"p{i}") for i in range(7)]
        self.assertEqual(started(self.reactor), [])  # nothing in the turn that asked
        self.assertEqual(self.spawner.waiting(), 7)
        self.reactor.turn()
        self.assertEqual(started(self.reactor), ["p0", "p1"])
        self.reactor.turn()
        self.assertEqual(started(self.reactor), ["p0", "p1", "p2", "p3"])
        self.reactor.turn()
        self.reactor.turn()
        self.assertEqual(started(self.reactor), [f"p{i}" for i in range(7)])
        transports = [self.successResultOf(d) for d in ds]
        self.assertEqual([t.pid for t in transports], [s["transport"].pid for s in self.reactor.spawned])
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # nothing left scheduled once idle

    def test_a_start_that_spawns_again_still_leaves_one_turn_scheduled(self) -> None:
        self.spawn("a").addCallback(lambda _: self.spawn("c"))
        self.spawn("b")
        self.spawn("d")
        self.reactor.turn()
        self.assertEqual(started(self.reactor), ["a", "b"])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.turn()
        self.assertEqual(started(self.reactor), ["a", "b", "d", "c"])

    def test_a_start_that_fails_fails_its_deferred_only(self) -> None:
        bad = self.spawn("bad", executable="/missing")
        good = self.spawn("good")
        self.reactor.turn()
        self.failureResultOf(bad, OSError)
        self.successResultOf(good)
        self.assertEqual(started(self.reactor), ["good"])

    def test_cancelling_a_waiting_start_means_it_never_starts(self) -> None:
        first, second, third, fourth = (self.spawn(n) for n in ("a", "b", "c", "d"))
        third.cancel()
        self.failureResultOf(third, defer.CancelledError)
        self.reactor.turn()
        self.reactor.turn()
        self.assertEqual(started(self.reactor), ["a", "b", "d"])
        self.successResultOf(fourth)
        first.cancel()  # started already: cancelling changes nothing
        self.successResultOf(first)


class SharedSpawnerTests(unittest.TestCase):
    """Host commands, execs and terminals go through one Spawner: its limit holds for all together."""

    def setUp(self) -> None:
        self.reactor = RefusingReactor(refuse={"/missing"})
        self.runner = ReactorRunner(self.reactor)
        self.runtime = Runtime(self.runner, self.reactor, binary=BIN, proc_dir=FakeProc(self).dir, kill=KillLog())

    def test_the_runtime_uses_the_runners_spawner(self) -> None:
        self.assertIs(self.runtime.spawner, self.runner.spawner)
        self.runner.run(["/bin/true", "one"])
        self.runner.run(["/bin/true", "two"])
        d = self.runtime.exec(42, ["true"], cgroup_procs=[], timeout=5)
        self.reactor.turn()
        self.assertEqual(len(self.reactor.spawned), 2)  # the exec waits for the turn after
        self.reactor.turn()
        self.assertEqual(self.reactor.spawned[2]["executable"], BIN)
        self.reactor.spawned[2]["transport"].end(0)
        self.assertEqual(self.successResultOf(d).exit_code, 0)

    def test_a_command_cancelled_before_its_turn_never_runs(self) -> None:
        self.runner.run(["/bin/true", "one"])
        self.runner.run(["/bin/true", "two"])
        d = self.runner.run(["/bin/true", "three"])
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.reactor.turn()
        self.assertEqual(started(self.reactor), ["one", "two"])

    def test_a_command_that_cannot_start_fails(self) -> None:
        d = self.runner.run(["/missing"])
        self.reactor.turn()
        self.failureResultOf(d, OSError)

    def test_an_exec_cancelled_before_its_turn_never_runs(self) -> None:
        self.runner.run(["/bin/true", "one"])
        self.runner.run(["/bin/true", "two"])
        d = self.runtime.exec(42, ["true"], cgroup_procs=[], timeout=5)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.reactor.turn()
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_an_exec_whose_helper_cannot_start_is_an_exec_failure(self) -> None:
        runtime = Runtime(self.runner, self.reactor, binary="/missing", proc_dir=FakeProc(self).dir)
        d = runtime.exec(42, ["true"], cgroup_procs=[], timeout=5)
        self.reactor.turn()
        failure = self.failureResultOf(d, ExecFailed)
        self.assertIn("could not start /missing", str(failure.value))

    def terminal(self, binary: str = BIN) -> tuple[defer.Deferred, list[socket.socket]]:
        made: list[socket.socket] = []
        real = socket.socketpair

        def socketpair(*args):
            pair = real(*args)
            made.extend(pair)
            return pair

        self.patch(socket, "socketpair", socketpair)
        d = open_terminal(self.reactor, self.runner.spawner, binary, 42, ["/bin/bash"], cgroup_procs=[],
                          env=None, start_time=None)
        return d, made

    def test_a_terminal_whose_helper_cannot_start_fails_and_closes_its_sockets(self) -> None:
        d, made = self.terminal("/missing")
        self.reactor.turn()
        self.assertIn("could not start /missing", str(self.failureResultOf(d, TerminalFailed).value))
        self.assertEqual([s.fileno() for s in made], [-1, -1])

    def test_a_terminal_cancelled_before_its_turn_never_starts_and_closes_its_sockets(self) -> None:
        self.runner.run(["/bin/true", "one"])
        self.runner.run(["/bin/true", "two"])
        d, made = self.terminal()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.reactor.turn()
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual([s.fileno() for s in made], [-1, -1])

    def test_a_started_terminal_helper_keeps_the_only_copy_of_its_end(self) -> None:
        d, made = self.terminal()
        self.assertGreaterEqual(made[1].fileno(), 0)  # kept open for the helper until it starts
        self.reactor.turn()
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(made[1].fileno(), -1)  # ours of the helper's end is closed once it started
        self.assertGreaterEqual(made[0].fileno(), 0)  # the end we read the terminal from stays open
        self.assertNoResult(d)  # until the helper hands over the terminal's master
        self.addCleanup(made[0].close)
