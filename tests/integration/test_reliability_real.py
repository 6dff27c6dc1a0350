"""Reliability of a real ``twistd -n bolt``: crashes at random points, leaks over repeated work, and
load (issue 10, items 1-3).

* :class:`CrashSafety` SIGKILLs the server at random moments of sandbox creates, deletes, forward
  adds and limit changes (the moment drawn from a seeded ``random.Random`` within the operation's
  measured duration; the seed is printed and ``BOLT_RELIABILITY_SEED`` replays it), starts it again
  and checks the stored state against the host after every restart (see
  :mod:`tests.integration.hoststate`): every stored sandbox works (exec ``true``; each forward
  answers an HTTP GET served by busybox httpd inside), every half-made operation is finished or
  rolled back, and every resource that carries the server's names belongs to a listed sandbox.
* :class:`Leaks` runs five rounds of create / exec / shell / forward add / forward remove / delete
  and checks that the server's descriptors do not grow (round 2 against round 5) and that the
  host's mounts, namespaces, links, cgroups, rules and processes of the server are exactly as they
  were before round 1.
* :class:`Load` creates 100 sandboxes 20 at a time, holds 200 shell sessions open at once, keeps
  four API clients busy for a minute, and reads the server's reactor-lag lines (bolt.lag): no
  request may fail and no stall over 100 ms may be logged during the load.

Each test has its own server with unique names and leaves the host as it found it, also when it
fails (``RealServer.cleanup`` plus a final check that nothing with the server's names is left).
Clients are the standard library's (http.client over TLS, raw sockets for shells).
"""

from __future__ import annotations

import base64
import collections
import glob
import http.client
import json
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.integration import hoststate
from tests.integration.server import RealServer, free_allowed_port, free_port
from tests.integration.support import cached_image_root, ensure_test_image, require_root, require_tools

BUSYBOX = "/bin/busybox"
MiB = 1024 * 1024
#: File descriptors the load test's server gets at least: 200 shells, 100 sandboxes and the API clients
#: hold ~860 at the peak, too close to the usual soft limit of 1024 (the systemd unit sets 65536).
MIN_NOFILE = 8192


# --- clients ---------------------------------------------------------------------------------------


class Client:
    """One persistent HTTPS connection to the server (keep-alive), verified against its certificate."""

    def __init__(self, server: RealServer, timeout: float = 120.0) -> None:
        self.server = server
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=server.cert_path)
        token = base64.b64encode(f"admin:{server.password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.send(method, path, body)
        return self.receive()

    def send(self, method: str, path: str, body: Any = None) -> None:
        """Write one request (the answer is read by :meth:`receive`)."""
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.context,
                                                    timeout=self.timeout)
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=headers)
        except BaseException:
            self.close()
            raise

    def receive(self) -> tuple[int, Any]:
        try:
            response = self.conn.getresponse()
            raw = response.read()
        except BaseException:
            self.close()
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Shell:
    """A raw shell session: the token and LF first (plain bytes, no telnet), then a login shell."""

    PROMPT = re.compile(rb"[#$] $")

    def __init__(self, port: int, token: str, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""
        self.sock.sendall(token.encode() + b"\n")

    def read_until(self, pattern: re.Pattern, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            match = pattern.search(self.buffer)
            if match:
                seen, self.buffer = self.buffer[:match.end()], self.buffer[match.end():]
                return seen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern.pattern!r} not received; got {self.buffer[-500:]!r}")
            self.sock.settimeout(min(remaining, 5.0))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise AssertionError(f"connection closed before {pattern.pattern!r}; got {self.buffer[-500:]!r}")
            self.buffer += data

    def prompt(self) -> bytes:
        return self.read_until(self.PROMPT)

    def run(self, line: str, answer: bytes) -> bytes:
        """Type ``line``; wait for ``answer`` alone on a line of output (not in the echo of the line;
        bash may put bracketed-paste escapes and a CR before it)."""
        self.sock.sendall(line.encode() + b"\n")
        return self.read_until(re.compile(rb"[\r\n]" + re.escape(answer) + rb"\r?\n"))

    def exit(self) -> None:
        """``exit``, then the server must close the connection."""
        self.sock.sendall(b"exit\n")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return
        raise AssertionError("the connection stayed open after exit")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def http_get(port: int, timeout: float = 5.0) -> str:
    """GET / from 127.0.0.1:port (through a forward), the body as text."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/index.html")
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        if response.status != 200:
            raise AssertionError(f"GET 127.0.0.1:{port}: {response.status} {body[:200]}")
        return body
    finally:
        conn.close()


def ports_in_rules() -> set[int]:
    """Every --dport in the host's NAT rules (any server's), so forwards never collide."""
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return {int(p) for p in re.findall(r"--dport (\d+)", out)}


def free_forward_port(rng: random.Random, taken: set[int]) -> int:
    """A free port of allowed_ports that no rule of any instance forwards either."""
    return free_allowed_port(rng, ports_in_rules() | taken)


# --- the server --------------------------------------------------------------------------------------


class Server(RealServer):
    """A RealServer whose process gets at least ``nofile`` descriptors (raised with prlimit as soon as
    it runs, before it serves anything), with helpers to read its whole log (rotated files too)."""

    nofile = 0

    def start(self, timeout: float = 60.0) -> "Server":
        try:
            super().start(timeout)
            self.wait_for_api(timeout)
        except AssertionError as e:
            # Another process on this busy machine took the port while the server was down (a
            # restart reuses it): once, take another port.
            if "Address already in use" not in str(e):
                raise
            self.kill()
            self.port = free_port()
            super().start(timeout)
            self.wait_for_api(timeout)
        if self.nofile:
            soft, hard = resource.prlimit(self.process.pid, resource.RLIMIT_NOFILE)
            if soft < self.nofile:
                resource.prlimit(self.process.pid, resource.RLIMIT_NOFILE,
                                 (self.nofile, max(hard, self.nofile)))
        return self

    def wait_for_api(self, timeout: float) -> None:
        """Until a TLS handshake with the server's own certificate succeeds.

        ``RealServer.start`` only waits for a TCP connect to succeed, which any process listening on
        the port satisfies; the handshake tells this server apart (and, if it died after all, the
        message says why).
        """
        context = ssl.create_default_context(cafile=self.cert_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"bolt exited with {self.process.returncode} after it seemed to listen:\n"
                                     f"{self.full_log()[-6000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
                    with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                        return
            except (OSError, ssl.SSLError) as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no TLS handshake with bolt within {timeout} s ({e!r}):\n"
                                         f"{self.full_log()[-6000:]}") from None
                time.sleep(0.05)

    def nofile_limit(self) -> tuple[int, int]:
        return resource.prlimit(self.process.pid, resource.RLIMIT_NOFILE)

    def full_log(self) -> str:
        """The log, rotated parts first (twistd rotates it at 1 MB): append-only text."""
        rotated = sorted(glob.glob(self.log_path + ".*"), key=lambda p: -int(p.rsplit(".", 1)[1])
                         if p.rsplit(".", 1)[1].isdigit() else 0)
        parts = []
        for path in rotated + [self.log_path]:
            try:
                with open(path, errors="replace") as f:
                    parts.append(f.read())
            except FileNotFoundError:
                pass
        return "".join(parts)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


def nothing_left(server: RealServer) -> list[str]:
    """After cleanup: anything at all with the server's names on the host."""
    left = []
    left += [f"mount {m}" for m in hoststate.mounts_below(server.root)]
    left += [f"cgroup {rel or '.'} in {sorted(hs)}" for rel, hs in hoststate.cgroup_dirs(server.cgroup_parent).items()]
    left += [f"link {name}" for name in hoststate.links(server.instance)]
    prefix = server.instance.upper() + "-"
    left += [f"rule {t}: {line}" for t, line in hoststate.iptables_lines(prefix)]
    left += [f"ip6 rule {t}: {line}" for t, line in hoststate.iptables_lines(prefix, "ip6tables")]
    for pid in hoststate.all_pids():
        line = hoststate.cmdline(pid)
        if server.root in line or server.cgroup_parent in line:
            left.append(f"process {pid}: {line[:200]}")
    if os.path.exists(server.root):
        left.append(f"directory {server.root}")
    return left


class ServerTest(unittest.TestCase):
    """A fresh server per test, torn down (and checked to be gone) whatever happens."""

    timeout = 900
    config: dict[str, Any] = {}
    nofile = 0

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "iptables-save", "iptables-restore", "ip", "nsenter", "busybox", "mount", "umount")
        yield ensure_test_image(reactor)
        self.server = Server(config={"base_image_dir": cached_image_root(), **self.config})
        self.server.nofile = self.nofile
        self.addCleanup(self._check_nothing_left)
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def _check_nothing_left(self) -> None:
        left = []
        for _ in range(50):
            left = nothing_left(self.server)
            if not left:
                return
            time.sleep(0.1)
        raise AssertionError(f"left on the host after cleanup: {left}")

    # -- helpers ---------------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> Any:
        try:
            code, data = self.server.api(method, path, body)
        except OSError as e:
            process = self.server.process
            self.fail(f"{method} {path}: {e!r}; server pid {process.pid if process else None} exit status "
                      f"{process.poll() if process else None}\nserver log (end):\n{self.server.full_log()[-6000:]}")
        if expect is not None and code != expect:
            self.fail(f"{method} {path} {body!r}: expected {expect}, got {code} {data}\n"
                      f"server log (end):\n{self.server.log()[-3000:]}")
        return data

    def listing(self) -> list[dict[str, Any]]:
        return self.call("GET", "/api/projects")

    def exec_ok(self, project: str, name: str, command: str) -> str:
        result = self.call("POST", f"/api/projects/{project}/sandboxes/{name}/exec",
                           {"command": command, "timeout": 30})
        self.assertEqual(result["exit_code"], 0, f"{command!r} in {project}/{name}: {result}")
        return result["stdout"]

    def serve_http(self, project: str, name: str) -> str:
        """busybox httpd on port 80 of the sandbox, serving its own name; returns that text."""
        rootfs = os.path.join(self.server.data_dir, "sandboxes", project, name, "rootfs")
        target = os.path.join(rootfs, "usr", "local", "bin", "busybox")
        if not os.path.exists(target):
            shutil.copy(BUSYBOX, target)
        text = f"{project}/{name}"
        self.exec_ok(project, name, f"mkdir -p /srv && echo {text} > /srv/index.html && busybox httpd -p 80 -h /srv")
        return text

    def log_after(self, offset: int) -> str:
        return self.server.full_log()[offset:]

    def log_errors(self, limit: int = 6000) -> str:
        """The error lines of the server's log, each with what follows it (tracebacks), for messages."""
        lines, keep, found = self.server.full_log().splitlines(), False, []
        for line in lines:
            if re.match(r"\d{4}-\d\d-\d\dT", line):
                keep = "#error]" in line or "#critical]" in line or "Unhandled" in line or "Traceback" in line
            if keep:
                found.append(line)
        return "\n".join(found)[-limit:]


# --- 1. crash safety -----------------------------------------------------------------------------------


class CrashSafety(ServerTest):
    """SIGKILL during create, delete, forward add and limit changes; restart; check state == host."""

    #: Rounds per operation (25 in all).
    ROUNDS = {"create": 7, "delete": 6, "forward": 6, "limits": 6}

    def test_kill_at_random_points_then_restart(self):
        seed = int(os.environ.get("BOLT_RELIABILITY_SEED") or secrets.randbits(32))
        print(f"\n[crash safety] seed {seed} (BOLT_RELIABILITY_SEED={seed} replays it)")
        rng = random.Random(seed)
        self.seed = seed
        self.served: dict[tuple[str, str], str] = {}   # sandbox -> the text its httpd serves
        self.ports_used: set[int] = set()
        started = time.monotonic()

        for project in ("crash", "empty"):
            self.call("POST", "/api/projects", {"name": project}, expect=201)
        for name in ("web", "idle"):
            self.call("POST", "/api/projects/crash/sandboxes", {"name": name}, expect=201)
            self.served[("crash", name)] = self.serve_http("crash", name)
        self.add_forward(rng, "web")
        self.call("POST", "/api/projects/crash/sandboxes/idle/stop")  # a stopped sandbox too

        typical = self.measure(rng)
        print("[crash safety] typical durations (ms): " +
              ", ".join(f"{op} {t * 1000:.1f}" for op, t in typical.items()))
        self.check_all("before the first kill")

        ops = [op for op, n in self.ROUNDS.items() for _ in range(n)]
        rng.shuffle(ops)
        outcomes: dict[str, dict[str, int]] = {}
        for number, op in enumerate(ops, 1):
            delay = rng.uniform(0, typical[op])
            outcome = self.round(rng, number, op, delay)
            outcomes.setdefault(op, {}).setdefault(outcome, 0)
            outcomes[op][outcome] += 1
        print(f"[crash safety] {len(ops)} kills in {time.monotonic() - started:.1f} s; outcomes: {outcomes}")

        # Everything deleted through the API leaves nothing with the server's names but the empty
        # cgroup parent and the fixed chains.
        for project in ("crash", "empty"):
            self.call("DELETE", f"/api/projects/{project}?force=1")
        problems = hoststate.ownership_problems(self.server, self.listing())
        self.assertEqual(problems, [], f"seed {seed}")

    # -- the rounds ------------------------------------------------------------------------------

    def measure(self, rng: random.Random) -> dict[str, float]:
        """Median duration of each operation, timed as the rounds send it (warm connection)."""
        client = Client(self.server)
        client.call("GET", "/api/status")
        times: dict[str, list[float]] = {op: [] for op in self.ROUNDS}

        def timed(op, method, path, body=None, expect=200):
            t0 = time.monotonic()
            client.send(method, path, body)
            code, data = client.receive()
            times[op].append(time.monotonic() - t0)
            self.assertEqual(code, expect, data)
            return data

        for i in range(4):
            timed("create", "POST", "/api/projects/crash/sandboxes", {"name": f"m{i}"}, 201)
            self.served[("crash", f"m{i}")] = self.serve_http("crash", f"m{i}")
        for i in (2, 3):
            timed("delete", "DELETE", f"/api/projects/crash/sandboxes/m{i}")
            del self.served[("crash", f"m{i}")]
        for _ in range(3):
            port = free_forward_port(rng, self.ports_used)
            self.ports_used.add(port)
            timed("forward", "POST", "/api/projects/crash/sandboxes/web/ports",
                  {"host_port": port, "container_port": 80})
        for project in ("crash", "empty", "crash"):
            timed("limits", "PUT", f"/api/projects/{project}/resources", self.random_limits(rng))
        client.close()
        return {op: statistics.median(values) for op, values in times.items()}

    @staticmethod
    def random_limits(rng: random.Random) -> dict[str, int]:
        return {"cpu_quota_us": rng.randrange(20000, 200001, 1000),
                "memory_limit_bytes": rng.randrange(256, 2049) * MiB,
                "pids_max": rng.randrange(256, 4097)}

    def add_forward(self, rng: random.Random, name: str) -> int:
        port = free_forward_port(rng, self.ports_used)
        self.ports_used.add(port)
        self.call("POST", f"/api/projects/crash/sandboxes/{name}/ports", {"host_port": port, "container_port": 80})
        return port

    def round(self, rng: random.Random, number: int, op: str, delay: float) -> str:
        listing = {p["name"]: p for p in self.listing()}
        boxes = {s["name"]: s for s in listing["crash"]["sandboxes"]}
        context: dict[str, Any] = {}
        if op == "create":
            name = f"c{number}"
            request = ("POST", "/api/projects/crash/sandboxes", {"name": name})
            context["name"] = name
        elif op == "delete":
            victims = sorted(n for n in boxes if n not in ("web", "idle"))
            if not victims:
                victim = f"v{number}"
                self.call("POST", "/api/projects/crash/sandboxes", {"name": victim}, expect=201)
                self.served[("crash", victim)] = self.serve_http("crash", victim)
                self.add_forward(rng, victim)
                victims = [victim]
            name = rng.choice(victims)
            request = ("DELETE", f"/api/projects/crash/sandboxes/{name}", None)
            context["name"] = name
        elif op == "forward":
            name = rng.choice(sorted(n for n in boxes if n != "idle"))
            port = free_forward_port(rng, self.ports_used)
            self.ports_used.add(port)
            request = ("POST", f"/api/projects/crash/sandboxes/{name}/ports", {"host_port": port, "container_port": 80})
            context.update(name=name, port=port)
        else:
            project = "crash" if number % 2 else "empty"
            old = listing[project]["resource_limits"]
            new = self.random_limits(rng)
            request = ("PUT", f"/api/projects/{project}/resources", new)
            context.update(project=project, old=old, new=new)

        client = Client(self.server)
        client.call("GET", "/api/status")  # connected, authenticated: the request itself is what is timed
        log_offset = len(self.server.full_log())
        t0 = time.monotonic()
        client.send(*request)
        time.sleep(max(0.0, t0 + delay - time.monotonic()))
        os.kill(self.server.process.pid, signal.SIGKILL)
        killed_at = time.monotonic() - t0
        self.server.kill()  # reaps it
        try:
            reply = client.receive()  # an answer the server wrote before it died, if any
        except (OSError, http.client.HTTPException):
            reply = None
        client.close()
        self.server.start()

        label = f"round {number} ({op} {context.get('name') or context.get('project')}, kill at " \
                f"{killed_at * 1000:.1f} ms, seed {self.seed})"
        self.check_all(label)
        restart_log = self.log_after(log_offset)
        errors = [line for line in restart_log.splitlines()
                  if "#error]" in line or "#critical]" in line or "Traceback" in line or "Unhandled" in line]
        self.assertEqual(errors, [], f"{label}: errors in the server's log after the restart")
        listing = {p["name"]: p for p in self.listing()}
        boxes = {s["name"]: s for s in listing["crash"]["sandboxes"]}

        if op == "create":
            exists = context["name"] in boxes
            if reply is not None:
                self.assertEqual(reply[0], 201, f"{label}: {reply}")
                self.assertTrue(exists, f"{label}: answered 201 but gone after the restart")
            if exists:
                self.assertEqual(boxes[context["name"]]["state"], "running", label)
                self.served[("crash", context["name"])] = self.serve_http("crash", context["name"])
            outcome = "created" if exists else "rolled back"
        elif op == "delete":
            exists = context["name"] in boxes
            if reply is not None:
                self.assertEqual(reply[0], 200, f"{label}: {reply}")
                self.assertFalse(exists, f"{label}: answered 200 but back after the restart")
            if not exists:
                self.served.pop(("crash", context["name"]), None)
            outcome = "not started" if exists else "finished"
        elif op == "forward":
            port = context["port"]
            mappings = boxes[context["name"]]["port_mappings"]
            present = str(port) in mappings
            if reply is not None:
                self.assertEqual(reply[0], 200, f"{label}: {reply}")
                self.assertTrue(present, f"{label}: answered 200 but the forward is gone after the restart")
            prefix = self.server.instance.upper() + "-"
            in_rules = any(f"--dport {port} " in line for _, line in hoststate.iptables_lines(prefix))
            self.assertEqual(in_rules, present, f"{label}: forward of {port} listed={present}, in iptables={in_rules}")
            if present:
                self.assertEqual(http_get(port).strip(), self.served[("crash", context["name"])], label)
            outcome = "added" if present else "rolled back"
        else:
            limits = listing[context["project"]]["resource_limits"]
            self.assertIn(limits, (context["old"], context["new"]), label)
            if reply is not None:
                self.assertEqual(reply[0], 200, f"{label}: {reply}")
                self.assertEqual(limits, context["new"], f"{label}: answered 200 but the old limits are back")
            outcome = "new" if limits == context["new"] and limits != context["old"] else "old"
        print(f"[crash safety] {label}: {outcome}" + (" (answered before the kill)" if reply else ""))
        return outcome

    def check_all(self, label: str) -> None:
        """The host against the API, then: every running sandbox execs, every forward answers."""
        listing = self.listing()
        problems = hoststate.ownership_problems(self.server, listing)
        for project in listing:
            for box in project["sandboxes"]:
                key = (project["name"], box["name"])
                if box["state"] != "running":
                    continue
                result = self.call("POST", f"/api/projects/{key[0]}/sandboxes/{key[1]}/exec", {"command": "true"},
                                   expect=None)
                if not isinstance(result, dict) or result.get("exit_code") != 0:
                    problems.append(f"{key}: exec true -> {result}")
                for host_port in box["port_mappings"]:
                    try:
                        body = http_get(int(host_port)).strip()
                    except Exception as e:
                        problems.append(f"{key}: forward {host_port} does not answer: {e!r}")
                        continue
                    if body != self.served.get(key):
                        problems.append(f"{key}: forward {host_port} answered {body!r}")
        if problems:
            problems.append("server log (end):\n" + self.server.log()[-4000:])
            self.fail(f"{label}: " + "\n".join(problems))


# --- 2. leaks ---------------------------------------------------------------------------------------------


class Leaks(ServerTest):
    """Five rounds of everything a user does to a sandbox leave no trace on the host or in the server."""

    ROUNDS = 5
    FD_DRIFT = 2

    def settled_fds(self) -> int:
        """The server's descriptor count once it stops changing (connections the clients closed)."""
        last, same = -1, 0
        for _ in range(100):
            count = self.server.fd_count()
            same = same + 1 if count == last else 0
            if same >= 3:
                return count
            last = count
            time.sleep(0.1)
        return count

    def settled_state(self, baseline: dict[str, Any]) -> dict[str, Any]:
        state = hoststate.comparable(hoststate.snapshot(self.server))
        for _ in range(50):
            if state == baseline:
                break
            time.sleep(0.1)
            state = hoststate.comparable(hoststate.snapshot(self.server))
        return state

    def test_five_rounds_leave_nothing(self):
        self.call("POST", "/api/projects", {"name": "leak"}, expect=201)
        rng = random.Random()
        baseline = hoststate.comparable(hoststate.snapshot(self.server))
        fds = [self.settled_fds()]
        for number in range(1, self.ROUNDS + 1):
            self.one_round(rng, f"r{number}")
            fds.append(self.settled_fds())
            state = self.settled_state(baseline)
            diff = {key: {"before": baseline[key], "after": state[key]} for key in baseline
                    if baseline[key] != state[key]}
            self.assertEqual(diff, {}, f"round {number} left this behind (or took this away)")
        print(f"\n[leaks] server descriptors: before {fds[0]}, after rounds 1-5: {fds[1:]}")
        self.assertLessEqual(abs(fds[5] - fds[2]), self.FD_DRIFT,
                             f"descriptors grew from {fds[2]} (round 2) to {fds[5]} (round 5): "
                             f"{sorted(hoststate.fd_targets(self.server.process.pid))}")

    def one_round(self, rng: random.Random, name: str) -> None:
        base = f"/api/projects/leak/sandboxes/{name}"
        self.call("POST", "/api/projects/leak/sandboxes", {"name": name}, expect=201)
        self.assertEqual(self.exec_ok("leak", name, "echo hi"), "hi\n")

        ticket = self.call("POST", f"{base}/shell")
        shell = Shell(ticket["port"], ticket["token"])
        try:
            shell.prompt()
            shell.run("echo hi", b"hi")
            shell.exit()
        finally:
            shell.close()

        text = self.serve_http("leak", name)
        port = free_forward_port(rng, set())
        self.call("POST", f"{base}/ports", {"host_port": port, "container_port": 80})
        self.assertEqual(http_get(port).strip(), text)
        self.call("DELETE", f"{base}/ports/{port}")
        with self.assertRaises(OSError):
            http_get(port, timeout=2)
        self.call("DELETE", base)


# --- 3. load ---------------------------------------------------------------------------------------------


class Load(ServerTest):
    """100 sandboxes (20 creates at a time), 200 shells at once, four API clients for a minute."""

    SANDBOXES = 100
    CREATORS = 20
    SHELLS = 200
    API_CLIENTS = 4
    LOAD_SECONDS = 60.0
    config = {"max_shell_sessions": 400, "max_shell_sessions_per_sandbox": 20}
    nofile = MIN_NOFILE

    def test_load(self):
        server = self.server
        soft, hard = server.nofile_limit()
        print(f"\n[load] ulimit -n of this process {resource.getrlimit(resource.RLIMIT_NOFILE)}, "
              f"server RLIMIT_NOFILE {soft}/{hard}")
        self.assertGreaterEqual(soft, MIN_NOFILE)
        self.call("POST", "/api/projects", {"name": "load"}, expect=201)
        # Room for 100 sandboxes and 200 login shells in the project's pooled budget.
        self.call("PUT", "/api/projects/load/resources",
                  {"cpu_quota_us": 200000, "memory_limit_bytes": 8192 * MiB, "pids_max": 4096})
        names = [f"s{i:03d}" for i in range(self.SANDBOXES)]
        sessions: list[Shell] = []
        self.addCleanup(lambda: [s.close() for s in sessions])
        stop = threading.Event()
        self.addCleanup(stop.set)
        local = threading.local()
        clients: list[Client] = []
        self.addCleanup(lambda: [c.close() for c in clients])

        def client() -> Client:
            if getattr(local, "client", None) is None:
                local.client = Client(server, timeout=300)
                clients.append(local.client)
            return local.client

        # The API load: its own clients, from the first create to at least a minute later.
        api_results: list[tuple[int, float]] = []
        api_errors: list[str] = []

        def api_loop(index: int) -> None:
            mine = Client(server, timeout=60)
            paths = ["/api/status", "/api/projects/load/sandboxes"]
            i = index
            while not stop.is_set():
                path = paths[i % 2]
                i += 1
                t0 = time.monotonic()
                try:
                    code, _ = mine.call("GET", path)
                except Exception as e:
                    api_errors.append(f"GET {path}: {e!r}")
                    time.sleep(0.1)
                    continue
                api_results.append((code, time.monotonic() - t0))
            mine.close()

        self.call("GET", "/api/status")  # the password is verified (scrypt) once, before the load
        loaders = [threading.Thread(target=api_loop, args=(i,), daemon=True) for i in range(self.API_CLIENTS)]
        log_offset = len(server.full_log())
        load_start_wall = time.time()
        load_start = time.monotonic()
        for t in loaders:
            t.start()

        # 100 creates, 20 at a time, each worker on its own connection.
        def create(name: str) -> tuple[int, float, Any]:
            t0 = time.monotonic()
            code, body = client().call("POST", "/api/projects/load/sandboxes", {"name": name})
            return code, time.monotonic() - t0, body

        with ThreadPoolExecutor(self.CREATORS) as pool:
            created = list(pool.map(create, names))
        create_seconds = time.monotonic() - load_start
        failed = [(n, c, b) for n, (c, _, b) in zip(names, created) if c != 201]
        self.assertEqual(failed, [], f"creates that did not answer 201; errors in the server log:\n{self.log_errors()}")
        latencies = sorted(t for _, t, _ in created)
        print(f"[load] {self.SANDBOXES} creates ({self.CREATORS} at a time) in {create_seconds:.1f} s; "
              f"latency median {statistics.median(latencies) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")

        # 200 shells, all open at once: each gets a prompt, then each answers 42.
        def open_shell(index: int) -> Shell:
            code, ticket = client().call("POST", f"/api/projects/load/sandboxes/{names[index % len(names)]}/shell")
            self.assertEqual(code, 200, ticket)
            shell = Shell(ticket["port"], ticket["token"], timeout=120)
            sessions.append(shell)
            shell.prompt()
            return shell

        t0 = time.monotonic()
        with ThreadPoolExecutor(self.CREATORS) as pool:
            opened = list(pool.map(open_shell, range(self.SHELLS)))
        open_seconds = time.monotonic() - t0
        pids_in_use = sum(len(p) for rel, p in hoststate.snapshot(server).cgroup_pids.items() if rel.count("/") == 1)
        fds_at_peak = server.fd_count()
        t0 = time.monotonic()
        with ThreadPoolExecutor(self.CREATORS) as pool:
            list(pool.map(lambda s: s.run("echo $((6*7))", b"42"), opened))
        answer_seconds = time.monotonic() - t0
        print(f"[load] {self.SHELLS} shells open at once in {open_seconds:.1f} s, all answered 42 in "
              f"{answer_seconds:.1f} s; {pids_in_use} processes in the sandboxes, server fds {fds_at_peak}")

        remaining = self.LOAD_SECONDS - (time.monotonic() - load_start)
        if remaining > 0:
            time.sleep(remaining)
        stop.set()
        for t in loaders:
            t.join(120)
        load_seconds = time.monotonic() - load_start
        load_end_wall = time.time()
        load_log = self.log_after(log_offset)

        with ThreadPoolExecutor(self.CREATORS) as pool:
            list(pool.map(lambda s: s.exit(), opened))

        codes = [c for c, _ in api_results]
        times = sorted(t for _, t in api_results)
        print(f"[load] API load: {len(codes)} requests by {self.API_CLIENTS} clients in {load_seconds:.1f} s, "
              f"statuses {dict(collections.Counter(codes))}, {len(api_errors)} errors; latency median "
              f"{statistics.median(times) * 1000:.1f} ms, p99 {times[int(len(times) * 0.99)] * 1000:.1f} ms, "
              f"max {times[-1] * 1000:.1f} ms")

        stalls = stall_lines(load_log)
        worst = lag_reports(load_log)
        print(f"[load] reactor lag summaries during the load: {worst} ms (worst {max(worst, default=None)} ms); "
              f"stall warnings: {len(stalls)}")
        for line in stalls[:20]:
            print(f"[load]   {line}")

        # Clean up all 100 (20 at a time), timed; stalls during the deletes are reported.
        offset = len(server.full_log())
        t0 = time.monotonic()
        with ThreadPoolExecutor(self.CREATORS) as pool:
            deleted = list(pool.map(lambda n: client().call("DELETE", f"/api/projects/load/sandboxes/{n}"), names))
        delete_seconds = time.monotonic() - t0
        delete_stalls = stall_lines(self.log_after(offset))
        print(f"[load] {self.SANDBOXES} deletes in {delete_seconds:.1f} s; stall warnings during them: "
              f"{len(delete_stalls)} {delete_stalls[:5]}")
        self.assertEqual([(n, c, b) for n, (c, b) in zip(names, deleted) if c != 200], [],
                         f"deletes that failed; errors in the server log:\n{self.log_errors()}")
        self.assertEqual(hoststate.ownership_problems(server, self.listing()), [],
                         "what the deleted sandboxes left behind")

        self.assertEqual(api_errors[:10], [], "API load requests that failed")
        self.assertEqual(collections.Counter(c for c in codes if c != 200), {}, "API load answers other than 200")
        self.assertGreaterEqual(load_seconds, self.LOAD_SECONDS)
        self.assertTrue(worst, f"no reactor lag summary between {load_start_wall} and {load_end_wall}")
        self.assertEqual(stalls, [], "the reactor stalled for more than 100 ms during the load")


_STALL = re.compile(r"reactor stalled for (\d+) ms")
_REPORT = re.compile(r"reactor lag: worst ([0-9.]+) ms")


def stall_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if _STALL.search(line)]


def lag_reports(log: str) -> list[float]:
    return [float(m.group(1)) for line in log.splitlines() if (m := _REPORT.search(line))]
