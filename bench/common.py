"""Shared pieces of the benchmarks: timing statistics, a keep-alive HTTPS client, the cached image,
a bench server, raw shell clients and memory readings.

A row of the table is ``(name, bolt, floor)`` where ``bolt`` and ``floor`` are summaries:
:func:`summary` of timings in seconds, or :func:`figure` of one measured quantity in another unit
(``"req/s"``, ``"MB/s"``, ``"MiB"``...).  ``floor`` may be ``None`` when a figure has no floor.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import resource
import select
import socket
import ssl
import statistics
import time
from contextlib import contextmanager
from typing import Any, Iterator


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(samples: list[float]) -> dict[str, Any]:
    """Timings in seconds: n, p50, p99, mean."""
    return {"n": len(samples), "p50": percentile(samples, 50), "p99": percentile(samples, 99),
            "mean": statistics.fmean(samples) if samples else float("nan"), "unit": "s"}


def figure(value: float, unit: str, *, samples: list[float] | None = None, higher_is_better: bool = False,
           note: str = "") -> dict[str, Any]:
    """One measured quantity that is not a latency (a rate, an amount of memory).

    ``value`` is what the table shows (the median of ``samples`` when there are several runs).
    """
    return {"n": len(samples) if samples else 1, "p50": value, "p99": float("nan"), "mean": value,
            "unit": unit, "higher_is_better": higher_is_better, "samples": samples or [value], "note": note}


@contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    yield box
    box.append(time.perf_counter() - start)


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's descriptor limit (inherited by the servers it starts); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, min(wanted, hard))
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise the hard limit
            return wanted
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class Client:
    """One keep-alive HTTPS connection to the server, verified against its own certificate."""

    def __init__(self, port: int, cert: str, user: str, password: str) -> None:
        context = ssl.create_default_context(cafile=cert)
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=300)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.conn.close()


_IMAGE: list[str] = []


def ensure_image() -> str:
    """The cached debian:bookworm test image, built with the real ImageStore when absent.

    Found (or built) in a child process, once: a reactor cannot run twice in one process, and
    bench.forwards runs its own.
    """
    if not _IMAGE:
        import subprocess
        import sys

        code = ("from twisted.internet import task\n"
                "from tests.integration.support import ensure_test_image\n"
                "task.react(lambda reactor: ensure_test_image(reactor).addCallback(lambda p: print('IMAGE', p)))\n")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("IMAGE ")]
        if out.returncode or not lines:
            raise RuntimeError(f"the test image could not be found or built:\n{out.stdout}\n{out.stderr}")
        _IMAGE.append(lines[-1].split(" ", 1)[1])
    return _IMAGE[0]


#: Limits of the bench project: the defaults (512 MiB, 1024 pids) are too small for 500 shells.
BIG_LIMITS = {"cpu_quota_us": 200000, "memory_limit_bytes": 16 * 1024 ** 3, "pids_max": 8192}


@contextmanager
def bench_server(config: dict[str, Any] | None = None, project: str = "bench",
                 limits: dict[str, int] | None = None) -> Iterator[tuple[Any, Client]]:
    """A real ``twistd -n bolt`` (tests.integration.server.RealServer) with one project, and a
    logged-in keep-alive client; everything it made is removed on the way out, also on failure."""
    from tests.integration.server import RealServer
    from tests.integration.support import cached_image_root

    raise_nofile()
    server = RealServer(config={"base_image_dir": cached_image_root(), **(config or {})})
    client = None
    try:
        server.start()
        client = Client(server.port, server.cert_path, "admin", server.password)
        client.call("GET", "/api/status")  # the first login pays scrypt once; no later request does
        code, body = client.call("POST", "/api/projects", {"name": project})
        assert code == 201, body
        if limits:
            code, body = client.call("PUT", f"/api/projects/{project}/resources", limits)
            assert code == 200, body
        yield server, client
    finally:
        if client is not None:
            client.close()
        server.cleanup()


# --- shells ---------------------------------------------------------------------------------------

#: The end of a root prompt of bash ("root@host:~# "), after any escape sequences.
PROMPT = re.compile(rb"# (\x1b\[[0-9;?]*[a-zA-Z])*$")


class RawShell:
    """A raw (non-telnet) shell client: the token line with a bare LF, then plain bytes."""

    def __init__(self, port: int, token: str, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(token.encode() + b"\n")
        self.timeout = timeout

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, size: int = 65536) -> bytes:
        data = self.sock.recv(size)
        if not data:
            raise EOFError("the shell closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


class PtyShell:
    """A shell on a local PTY (the floor of the shell figures): same methods as :class:`RawShell`."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str = "/root", preexec=None) -> None:
        import subprocess

        def setup() -> None:
            _take_tty()
            if preexec is not None:
                preexec()

        master, slave = os.openpty()
        self.master = master
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                     start_new_session=True, preexec_fn=setup, close_fds=True)
        os.close(slave)

    def fileno(self) -> int:
        return self.master

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def recv(self, size: int = 65536) -> bytes:
        try:
            data = os.read(self.master, size)
        except OSError:
            data = b""
        if not data:
            raise EOFError("the shell ended")
        return data

    def close(self) -> None:
        os.close(self.master)
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def _take_tty() -> None:
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def read_until(shell, pattern: re.Pattern | bytes, timeout: float = 30.0, keep: int = 4096) -> bytes:
    """Read from ``shell`` until ``pattern`` (a regex searched at the tail, or bytes) shows up."""
    deadline = time.monotonic() + timeout
    tail = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {pattern!r} within {timeout} s; last bytes {tail[-200:]!r}")
        ready, _, _ = select.select([shell], [], [], left)
        if not ready:
            continue
        tail = (tail + shell.recv())[-keep:]
        if isinstance(pattern, bytes):
            if pattern in tail:
                return tail
        elif pattern.search(tail):
            return tail


def drain(shell, quiet: float = 0.05) -> None:
    """Read whatever ``shell`` prints until it has been quiet for ``quiet`` seconds."""
    while select.select([shell], [], [], quiet)[0]:
        shell.recv()


# --- memory ---------------------------------------------------------------------------------------


def meminfo_kib(key: str = "MemAvailable") -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (shared pages divided among their users), or 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def settle_mem_available(samples: int = 5, interval: float = 0.2) -> int:
    """MemAvailable in KiB, the median of a few readings (other work on the host makes it jitter)."""
    values = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        values.append(meminfo_kib())
    return int(statistics.median(values))


#: Lines the suites want printed under the table (breakdowns, methods, caveats).
NOTES: list[str] = []


def note(text: str) -> None:
    NOTES.append(text)
    print(text, flush=True)
