"""Unit tests for bolt.host.runtime: command lines, answers, exec results, timeouts.  No root, no helper."""

from __future__ import annotations

import os
import signal
import sys
import tempfile

from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from bolt.host import native
from bolt.host import runtime as rt
from bolt.host.runtime import (
    DEFAULT_EXEC_ENV, ExecFailed, ExecResult, Runtime, SandboxGone, SandboxProcess, StartFailed,
)
from tests.fakes import Expect, FakeRunner

BIN = "/opt/bolt/bolt-sandbox"
CGROUPS = ["/sys/fs/cgroup/cpu/bolt/p/s/cgroup.procs", "/sys/fs/cgroup/pids/bolt/p/s/cgroup.procs"]


# --- fakes ----------------------------------------------------------------------------------------


class FakeReader:
    """Stands for a Twisted ProcessReader: a real descriptor our drain can read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class FakeProcessTransport:
    def __init__(self, proto, pid: int) -> None:
        self.proto = proto
        self.pid = pid
        self.written: dict[int, bytes] = {}
        self.closed: list[int] = []
        self.pipes: dict = {}

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd not in self.closed, f"write to closed fd {fd}"
        self.written[fd] = self.written.get(fd, b"") + data

    def closeChildFD(self, fd: int) -> None:
        self.closed.append(fd)
        self.pipes.pop(fd, None)

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def signalProcess(self, name) -> None:  # the runtime signals by pid, never through this
        raise AssertionError("unexpected signalProcess")

    # test controls

    def output(self, fd: int, data: bytes) -> None:
        self.proto.childDataReceived(fd, data)

    def end(self, exit_code: int = 0, sig: int | None = None) -> None:
        if sig is None and exit_code == 0:
            reason = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(exit_code if sig is None else None, sig))
        self.pid = None
        self.proto.processExited(reason)
        self.proto.processEnded(reason)


class FakeProcessReactor(MemoryReactorClock):
    """A MemoryReactorClock that also records spawnProcess and hands back a transport we control."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict] = []
        self.next_pid = 4000

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None, uid=None, gid=None,
                     usePTY=False, childFDs=None):
        transport = FakeProcessTransport(processProtocol, self.next_pid)
        self.next_pid += 1
        self.spawned.append(dict(protocol=processProtocol, executable=executable, args=list(args), env=env,
                                 path=path, usePTY=usePTY, childFDs=childFDs, transport=transport))
        processProtocol.makeConnection(transport)
        return transport


class FakeProc:
    """A directory laid out like /proc, with stat files only."""

    def __init__(self, testcase) -> None:
        self.dir = tempfile.mkdtemp(prefix="bolt-fakeproc-")
        testcase.addCleanup(_rmtree, self.dir)

    def add(self, pid: int, ppid: int = 1, start_time: int = 1000, state: str = "S",
            comm: str = "sleep") -> None:
        os.makedirs(os.path.join(self.dir, str(pid)), exist_ok=True)
        fields = [state, str(ppid)] + ["0"] * 17 + [str(start_time), "0", "0"]
        with open(os.path.join(self.dir, str(pid), "stat"), "w") as f:
            f.write(f"{pid} ({comm}) " + " ".join(fields) + "\n")

    def remove(self, pid: int) -> None:
        _rmtree(os.path.join(self.dir, str(pid)))


def _rmtree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


class KillLog:
    def __init__(self, alive: set[int] | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.alive = alive

    def __call__(self, pid: int, sig: int) -> None:
        self.calls.append((pid, signal.Signals(sig).name))
        if self.alive is not None and pid not in self.alive:
            raise ProcessLookupError(pid)


def make_runtime(testcase, runner=None, kill=None):
    reactor = FakeProcessReactor()
    proc = FakeProc(testcase)
    runtime = Runtime(runner or FakeRunner(), reactor, binary=BIN, proc_dir=proc.dir, kill=kill or KillLog())
    return runtime, reactor, proc


# --- command lines and parsing ------------------------------------------------------------------


class CommandLineTests(unittest.TestCase):
    def test_init_argv(self):
        self.assertEqual(
            rt.init_argv(BIN, "/var/bolt/sandboxes/p/s/rootfs", "web-1", CGROUPS),
            [BIN, "init", "--rootfs", "/var/bolt/sandboxes/p/s/rootfs", "--hostname", "web-1",
             "--cgroup-procs", CGROUPS[0], "--cgroup-procs", CGROUPS[1]],
        )

    def test_init_argv_refuses_bad_input(self):
        for hostname in ("", "Web", "-a", "_a", "a.b", "a b", "a" * 64, "ä", None, 5):
            self.assertRaises(ValueError, rt.init_argv, BIN, "/r", hostname, [])
        rt.init_argv(BIN, "/r", "a_b", [])  # '_' is allowed: sethostname accepts it
        rt.init_argv(BIN, "/r", "a" * 63, [])
        self.assertRaises(ValueError, rt.init_argv, BIN, "relative/rootfs", "a", [])
        self.assertRaises(ValueError, rt.init_argv, BIN, "/r\0x", "a", [])
        self.assertRaises(ValueError, rt.init_argv, BIN, "/r", "a", "/one/string/cgroup.procs")
        self.assertRaises(ValueError, rt.init_argv, BIN, "/r", "a", ["relative/cgroup.procs"])

    def test_enter_argv(self):
        self.assertEqual(
            rt.enter_argv(BIN, 42, ["ls", "-l"], cgroup_procs=CGROUPS, cwd="/srv", start_time=777),
            [BIN, "enter", "--pid", "42", "--start-time", "777",
             "--cgroup-procs", CGROUPS[0], "--cgroup-procs", CGROUPS[1],
             "--cwd", "/srv", "--setsid", "--env-fd", "3", "--status-fd", "4", "--", "ls", "-l"],
        )

    def test_enter_argv_minimal(self):
        self.assertEqual(
            rt.enter_argv(BIN, 42, "echo hi", cgroup_procs=[], setsid=False, env_fd=None, status_fd=None),
            [BIN, "enter", "--pid", "42", "--", "/bin/sh", "-c", "echo hi"],
        )

    def test_enter_argv_refuses_bad_input(self):
        for pid in (0, -1, True, "42", 1.5):
            self.assertRaises(ValueError, rt.enter_argv, BIN, pid, ["true"], cgroup_procs=[])
        self.assertRaises(ValueError, rt.enter_argv, BIN, 42, ["true"], cgroup_procs=[], cwd="tmp")
        self.assertRaises(ValueError, rt.enter_argv, BIN, 42, ["true"], cgroup_procs=[], start_time=-1)

    def test_command_argv(self):
        self.assertEqual(rt.command_argv("exit 7"), ["/bin/sh", "-c", "exit 7"])
        self.assertEqual(rt.command_argv(("a", "b c")), ["a", "b c"])
        # Arguments that look like options of the helper stay after "--".
        self.assertEqual(rt.command_argv(["--pid", "1"]), ["--pid", "1"])
        for bad in ([], "", "   ", ["a\0b"], ["ok", 3], [""], b"ls", None, "a\0"):
            self.assertRaises(ValueError, rt.command_argv, bad)

    def test_parse_ready(self):
        self.assertEqual(rt.parse_ready(b"READY 12345\n"), 12345)
        for bad in (b"", b"READY\n", b"READY 0\n", b"READY -1\n", b"READY 12 13\n", b"hello\nREADY 5\n",
                    b"READY 99999999999\n"):
            self.assertRaises(ValueError, rt.parse_ready, bad)

    def test_parse_stat_with_awkward_command_name(self):
        fields = ["S", "77"] + ["0"] * 17 + ["123456", "0"]
        st = rt.parse_stat("4242 (a) b (c)) " + " ".join(fields))
        self.assertEqual((st.pid, st.state, st.ppid, st.start_time), (4242, "S", 77, 123456))
        self.assertRaises(ValueError, rt.parse_stat, "garbage")

    def test_parse_status(self):
        self.assertEqual(rt.parse_status(b"error gone sandbox process 5 is not running\n"),
                         ("gone", "sandbox process 5 is not running"))
        self.assertIsNone(rt.parse_status(b""))

    def test_exit_status(self):
        self.assertEqual(rt.exit_status(0, None), (0, None))
        self.assertEqual(rt.exit_status(7, None), (7, None))
        self.assertEqual(rt.exit_status(None, 9), (137, "SIGKILL"))
        self.assertEqual(rt.exit_status(None, 15), (143, "SIGTERM"))
        self.assertEqual(rt.exit_status(None, 63), (191, rt.signal_name(63)))


class EnvironmentTests(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(rt.exec_environment(None), {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "TERM": "xterm", "LANG": "C.UTF-8",
        })

    def test_merge_and_override(self):
        env = rt.exec_environment({"PATH": "/bin", "_X1": "a=b c", "EMPTY": ""})
        self.assertEqual(env["PATH"], "/bin")
        self.assertEqual(env["_X1"], "a=b c")
        self.assertEqual(env["EMPTY"], "")
        self.assertEqual(env["HOME"], "/root")

    def test_invalid_names_and_values(self):
        for key in ("", "1A", "A-B", "A=B", "A B", "Ä", 5, None):
            self.assertRaises(ValueError, rt.exec_environment, {key: "x"})
        for value in ("a\0b", 5, None, b"x"):
            self.assertRaises(ValueError, rt.exec_environment, {"A": value})
        self.assertRaises(ValueError, rt.exec_environment, [("A", "b")])

    def test_encoding(self):
        self.assertEqual(rt.encode_environment({"A": "1", "B": "x=y"}), b"A=1\0B=x=y\0")
        self.assertEqual(rt.encode_environment({"U": "\u00e9"}), b"U=\xc3\xa9\0")
        self.assertRaises(ValueError, rt.encode_environment, {"A": "\udcff"})
        self.assertRaises(ValueError, rt.encode_environment, {"A": "x" * rt.MAX_ENV_BYTES})


# --- start / alive / kill / stop -----------------------------------------------------------------


class StartTests(unittest.TestCase):
    def test_start(self):
        runner = FakeRunner()
        runtime, reactor, proc = make_runtime(self, runner)
        proc.add(5151, ppid=1, start_time=98765, comm="bolt-sandbox")
        runner.expect(Expect(rt.init_argv(BIN, "/r/rootfs", "web", CGROUPS), stdout=b"READY 5151\n",
                             check_env={}))
        result = self.successResultOf(runtime.start("/r/rootfs", "web", CGROUPS))
        self.assertEqual(result, SandboxProcess(5151, 98765))
        self.assertEqual(result.to_json(), {"pid": 5151, "start_time": 98765})
        runner.assertDone()

    def test_start_failure_carries_the_reason(self):
        runner = FakeRunner()
        runtime, _, _ = make_runtime(self, runner)
        runner.expect(Expect(rt.init_argv(BIN, "/r", "web", []), exit_code=1,
                             stderr=b"bolt-sandbox: init: mount proc: Operation not permitted\n"))
        failure = self.failureResultOf(runtime.start("/r", "web", []), StartFailed)
        self.assertIn("mount proc: Operation not permitted", str(failure.value))
        self.assertNotIn("bolt-sandbox: init:", str(failure.value))

    def test_start_with_garbled_answer(self):
        runner = FakeRunner()
        runtime, _, _ = make_runtime(self, runner)
        runner.expect(Expect(rt.init_argv(BIN, "/r", "web", []), stdout=b"hello\n"))
        self.failureResultOf(runtime.start("/r", "web", []), StartFailed)

    def test_start_when_pid1_is_already_gone(self):
        runner = FakeRunner()
        runtime, _, proc = make_runtime(self, runner)
        runner.expect(Expect(rt.init_argv(BIN, "/r", "web", []), stdout=b"READY 77\n"),
                      Expect(rt.init_argv(BIN, "/r", "web", []), stdout=b"READY 78\n"))
        self.failureResultOf(runtime.start("/r", "web", []), StartFailed)
        proc.add(78, state="Z")
        self.failureResultOf(runtime.start("/r", "web", []), StartFailed)

    def test_start_validates_before_running_anything(self):
        runtime, _, _ = make_runtime(self)
        self.assertRaises(ValueError, runtime.start, "/r", "Bad.Name", [])
        self.assertRaises(ValueError, runtime.start, "r", "ok", [])


class AliveKillStopTests(unittest.TestCase):
    def test_alive(self):
        runtime, _, proc = make_runtime(self)
        proc.add(10, start_time=500)
        proc.add(11, start_time=600, state="Z")
        self.assertTrue(runtime.alive(10, 500))
        self.assertFalse(runtime.alive(10, 501))  # recycled pid
        self.assertFalse(runtime.alive(11, 600))  # zombie: exited, not yet reaped
        self.assertFalse(runtime.alive(12, 500))

    def test_kill(self):
        kill = KillLog(alive={10})
        runtime, _, proc = make_runtime(self, kill=kill)
        proc.add(10, start_time=500)
        self.assertTrue(runtime.kill(10, 500))
        self.assertFalse(runtime.kill(10, 1))  # not the same process: nothing sent
        self.assertFalse(runtime.kill(99))  # no such process
        self.assertEqual(kill.calls, [(10, "SIGKILL"), (99, "SIGKILL")])

    def test_stop_terminates_then_kills_after_grace(self):
        kill = KillLog()
        runtime, reactor, proc = make_runtime(self, kill=kill)
        proc.add(10, start_time=500)
        d = runtime.stop(10, 500, grace=2.0)
        self.assertEqual(kill.calls, [(10, "SIGTERM")])
        reactor.pump([0.05] * 30)  # 1.5 s
        self.assertNoResult(d)
        self.assertEqual(kill.calls, [(10, "SIGTERM")])
        reactor.pump([0.05] * 12)  # past 2 s
        self.assertEqual(kill.calls, [(10, "SIGTERM"), (10, "SIGKILL")])
        self.assertNoResult(d)
        proc.remove(10)
        reactor.pump([0.05] * 2)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stop_when_already_gone(self):
        kill = KillLog()
        runtime, _, _ = make_runtime(self, kill=kill)
        self.assertIsNone(self.successResultOf(runtime.stop(10, 500)))
        self.assertEqual(kill.calls, [])


# --- exec ------------------------------------------------------------------------------------------


class ExecTests(unittest.TestCase):
    def setUp(self):
        self.kill = KillLog()
        self.runtime, self.reactor, self.proc = make_runtime(self, kill=self.kill)

    def run_exec(self, argv="true", **kw):
        kw.setdefault("cgroup_procs", CGROUPS)
        kw.setdefault("timeout", 30)
        d = self.runtime.exec(42, argv, **kw)
        self.reactor.advance(0)  # the turn ends (see Spawner): whatever waited for a turn has started
        spawned = self.reactor.spawned[-1]
        return d, spawned, spawned["transport"]

    def test_spawn(self):
        d, spawned, transport = self.run_exec(["ls", "-l"], cwd="/srv", start_time=9, env={"A": "1"},
                                             stdin=b"input")
        self.assertEqual(spawned["executable"], BIN)
        self.assertEqual(spawned["args"], rt.enter_argv(BIN, 42, ["ls", "-l"], cgroup_procs=CGROUPS, cwd="/srv",
                                                        start_time=9))
        self.assertEqual(spawned["env"], {})  # the helper's own environment is empty
        self.assertEqual(spawned["childFDs"], {0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        self.assertFalse(spawned["usePTY"])
        env = dict(DEFAULT_EXEC_ENV, A="1")
        self.assertEqual(transport.written[3], rt.encode_environment(env))
        self.assertEqual(transport.written[0], b"input")
        self.assertEqual(transport.closed, [3, 0])
        self.assertNoResult(d)

    def test_no_stdin_closes_it_at_once(self):
        _, _, transport = self.run_exec()
        self.assertNotIn(0, transport.written)
        self.assertIn(0, transport.closed)

    def test_success(self):
        d, _, transport = self.run_exec("echo hi")
        transport.output(1, b"h")
        transport.output(1, b"i\n")
        transport.output(2, b"warn\n")
        self.reactor.advance(1.5)
        transport.end(0)
        result = self.successResultOf(d)
        self.assertEqual(result, ExecResult(0, None, b"hi\n", b"warn\n", False, 1.5))
        self.assertEqual(result.to_json(), {"exit_code": 0, "stdout": "hi\n", "stderr": "warn\n",
                                            "timed_out": False, "duration": 1.5, "truncated": False,
                                            "signal": None})
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # the timeout was cancelled

    def test_exit_code(self):
        d, _, transport = self.run_exec("exit 7")
        transport.end(7)
        result = self.successResultOf(d)
        self.assertEqual((result.exit_code, result.signal, result.timed_out), (7, None, False))

    def test_killed_by_signal(self):
        for sig, code, name in ((9, 137, "SIGKILL"), (15, 143, "SIGTERM"), (11, 139, "SIGSEGV")):
            d, _, transport = self.run_exec("kill -9 $$")
            transport.end(sig=sig)
            result = self.successResultOf(d)
            self.assertEqual((result.exit_code, result.signal), (code, name))
            self.assertEqual(result.to_json()["signal"], name)

    def test_output_is_capped_per_stream(self):
        d, _, transport = self.run_exec("yes", max_output=5)
        transport.output(1, b"abc")
        transport.output(1, b"defgh")
        transport.output(1, b"ijk")
        transport.output(2, b"12345")
        transport.end(0)
        result = self.successResultOf(d)
        self.assertEqual(result.stdout, b"abcde")
        self.assertEqual(result.stderr, b"12345")
        self.assertTrue(result.stdout_truncated)
        self.assertFalse(result.stderr_truncated)
        self.assertTrue(result.truncated)
        self.assertTrue(result.to_json()["truncated"])

    def test_zero_max_output(self):
        d, _, transport = self.run_exec("echo", max_output=0)
        transport.output(1, b"x")
        transport.end(0)
        result = self.successResultOf(d)
        self.assertEqual((result.stdout, result.truncated), (b"", True))

    def test_invalid_utf8_is_replaced_in_json(self):
        d, _, transport = self.run_exec("printf")
        transport.output(1, b"ok \xff\xfe")
        transport.end(0)
        self.assertEqual(self.successResultOf(d).to_json()["stdout"], "ok \ufffd\ufffd")

    def test_timeout_kills_the_process_tree(self):
        d, _, transport = self.run_exec("sleep 100", timeout=5)
        helper = transport.pid
        self.proc.add(helper, ppid=1)
        self.proc.add(helper + 100, ppid=helper)       # the command
        self.proc.add(helper + 101, ppid=helper + 100)  # its child
        self.proc.add(helper + 102, ppid=helper + 101)  # and grandchild
        self.proc.add(helper + 200, ppid=1)             # unrelated
        self.reactor.advance(4.9)
        self.assertEqual(self.kill.calls, [])
        self.reactor.advance(0.1)
        tree = [helper + 100, helper + 101, helper + 102]
        self.assertEqual(self.kill.calls,
                         [(p, "SIGSTOP") for p in tree] + [(p, "SIGKILL") for p in tree] + [(helper, "SIGKILL")])
        self.assertNoResult(d)
        transport.end(sig=9)
        result = self.successResultOf(d)
        self.assertTrue(result.timed_out)
        self.assertEqual((result.exit_code, result.signal), (137, "SIGKILL"))
        self.assertEqual(result.duration, 5.0)

    def test_cancel_kills_the_tree(self):
        d, _, transport = self.run_exec("sleep 100")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.kill.calls, [(transport.pid, "SIGKILL")])
        transport.end(sig=9)  # the late end is ignored
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_helper_error_is_an_exec_failure(self):
        d, _, transport = self.run_exec("pwd", cwd="/nope")
        transport.output(4, b"error setup cannot change to working directory /nope: No such file or directory\n")
        transport.end(125)
        failure = self.failureResultOf(d, ExecFailed)
        self.assertEqual(str(failure.value), "cannot change to working directory /nope: No such file or directory")

    def test_sandbox_gone(self):
        d, _, transport = self.run_exec("true")
        transport.output(4, b"error gone sandbox process 42 is not running\n")
        transport.end(125)
        self.failureResultOf(d, SandboxGone)

    def test_exit_125_of_the_command_itself_is_a_result(self):
        d, _, transport = self.run_exec("exit 125")
        transport.end(125)
        self.assertEqual(self.successResultOf(d).exit_code, 125)

    def test_exit_drains_pipes_held_by_background_processes(self):
        d, _, transport = self.run_exec("echo done; sleep 1000 &")
        fds = {}
        for child_fd in (1, 2, 4):
            r, w = os.pipe()
            os.set_blocking(r, False)
            self.addCleanup(os.close, r)
            self.addCleanup(os.close, w)
            fds[child_fd] = (r, w)
            transport.pipes[child_fd] = FakeReader(r)
        os.write(fds[1][1], b"done\n")  # written before the command exited, not yet read
        os.write(fds[2][1], b"note\n")
        reason = Failure(error.ProcessDone(0))
        transport.proto.processExited(reason)
        # The write ends stay open (a background process holds them), yet everything was taken
        # and our ends were closed, so the process can end.
        self.assertEqual(sorted(fd for fd in transport.closed if fd in (1, 2, 4)), [1, 2, 4])
        transport.proto.processEnded(reason)
        result = self.successResultOf(d)
        self.assertEqual((result.stdout, result.stderr), (b"done\n", b"note\n"))

    def test_invalid_arguments(self):
        for kw in (dict(timeout=0), dict(timeout=-1), dict(timeout=float("nan")), dict(timeout=float("inf")),
                   dict(timeout=True), dict(max_output=-1), dict(max_output=1.5), dict(stdin="text"),
                   dict(env={"A-B": "x"}), dict(env={"A": "x\0"}), dict(cwd="relative")):
            args = dict(cgroup_procs=[], timeout=5)
            args.update(kw)
            self.assertRaises(ValueError, self.runtime.exec, 42, "true", **args)
        self.assertRaises(ValueError, self.runtime.exec, 0, "true", cgroup_procs=[], timeout=5)
        self.assertRaises(ValueError, self.runtime.exec, 42, [], cgroup_procs=[], timeout=5)
        self.assertEqual(self.reactor.spawned, [])


class TreeTests(unittest.TestCase):
    def test_descendants(self):
        proc = FakeProc(self)
        for pid, ppid in ((1, 0), (10, 1), (11, 10), (12, 10), (13, 12), (20, 1), (21, 20)):
            proc.add(pid, ppid=ppid)
        self.assertEqual(rt.descendants(10, proc.dir), [11, 12, 13])
        self.assertEqual(rt.descendants(13, proc.dir), [])
        self.assertEqual(rt.descendants(99, proc.dir), [])

    def test_kill_tree_ignores_processes_that_already_left(self):
        proc = FakeProc(self)
        proc.add(10, ppid=1)
        proc.add(11, ppid=10)
        kill = KillLog(alive={10})
        runtime = Runtime(FakeRunner(), FakeProcessReactor(), binary=BIN, proc_dir=proc.dir, kill=kill)
        self.assertEqual(runtime.kill_tree(10), [11, 10])
        self.assertEqual(kill.calls, [(11, "SIGSTOP"), (11, "SIGKILL"), (10, "SIGKILL")])


class NativeTests(unittest.TestCase):
    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="bolt-native-")
        self.addCleanup(_rmtree, path)
        return path

    def install(self, top: str, executable: bool = True) -> str:
        path = os.path.join(top, "bolt", "host", "native", "bolt-sandbox")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("#!/bin/true\n")
        os.chmod(path, 0o755 if executable else 0o644)
        return path

    def test_missing_binary_is_a_clear_error(self):
        empty = self.tempdir()
        self.patch(native, "__file__", os.path.join(empty, "__init__.py"))
        self.patch(sys, "path", [self.tempdir(), ""])
        e = self.assertRaises(native.HelperMissing, native.binary_path)
        self.assertIn(os.path.join(empty, "bolt-sandbox"), str(e))
        self.assertIn("cc -O2", str(e))
        self.assertIsInstance(e, FileNotFoundError)

    def test_found_next_to_the_module_first(self):
        checkout = self.tempdir()
        site = self.tempdir()
        here = os.path.dirname(self.install(checkout, executable=False))
        installed = self.install(site)
        self.patch(native, "__file__", os.path.join(here, "__init__.py"))
        self.patch(sys, "path", ["", site])
        self.assertEqual(native.binary_path(), installed)  # the local one is not executable
        os.chmod(os.path.join(here, "bolt-sandbox"), 0o755)
        self.assertEqual(native.binary_path(), os.path.join(here, "bolt-sandbox"))

    def test_runtime_finds_the_helper_lazily(self):
        self.patch(native, "__file__", os.path.join(self.tempdir(), "__init__.py"))
        self.patch(sys, "path", [])
        runtime = Runtime(FakeRunner(), FakeProcessReactor())  # constructing never fails
        self.assertRaises(native.HelperMissing, runtime.start, "/r", "web", [])
