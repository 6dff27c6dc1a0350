"""``GET /api/status`` requests per second over HTTPS keep-alive, beside a bare twisted.web on TLS.

Load: ``wrk`` (Debian's package; ``make bench`` installs it) with one thread and
BOLT_BENCH_API_CONNECTIONS (default 8) keep-alive connections, BOLT_BENCH_API_SECONDS (default 5)
per run, the median of BOLT_BENCH_API_RUNS (default 3) runs after a 1 s warm-up, every response
checked to be a 200.  Without wrk, the same load from as many Python processes, each one
``http.client`` keep-alive connection (a slower client: the figures are then lower bounds).

Bolt: its real ``/api/status`` with Basic auth, with 10 sandboxes in the bench project.
Floor: :mod:`bench.bare_web` -- same certificate and TLS options, same reactor type, a JSON body
built per request from the document Bolt returned -- in a separate process.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import bench_server, ensure_image, figure, note

CONNECTIONS = int(os.environ.get("BOLT_BENCH_API_CONNECTIONS", "8"))
SECONDS = float(os.environ.get("BOLT_BENCH_API_SECONDS", "5"))
RUNS = int(os.environ.get("BOLT_BENCH_API_RUNS", "3"))
SANDBOXES = int(os.environ.get("BOLT_BENCH_API_SANDBOXES", "10"))


def _wrk(port: int, auth: str, seconds: float) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-H", f"Authorization: Basic {auth}",
                          f"https://127.0.0.1:{port}/api/status"], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise AssertionError(f"wrk saw failed requests:\n{out}")
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))


def _python_client(args) -> int:
    import http.client

    port, auth, seconds = args
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.request("GET", "/api/status", headers={"Authorization": f"Basic {auth}"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        count += 1
    conn.close()
    return count


def _pool(port: int, auth: str, seconds: float) -> float:
    with multiprocessing.get_context("fork").Pool(CONNECTIONS) as pool:
        t0 = time.perf_counter()
        counts = pool.map(_python_client, [(port, auth, seconds)] * CONNECTIONS)
        return sum(counts) / (time.perf_counter() - t0)


def load(port: int, auth: str) -> list[float]:
    measure = _wrk if shutil.which("wrk") else _pool
    measure(port, auth, 1)  # warm-up
    return [measure(port, auth, SECONDS) for _ in range(RUNS)]


def _listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the bare twisted.web server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the bare twisted.web server did not listen")


def run() -> list[tuple[str, dict, dict]]:
    from tests.integration.server import free_port

    ensure_image()
    if not shutil.which("wrk"):
        note("api: wrk not installed; using Python http.client processes (a slower client)")
    with bench_server() as (server, client):
        for i in range(SANDBOXES):
            code, body = client.call("POST", "/api/projects/bench/sandboxes", {"name": f"a{i}"})
            assert code == 201, body
        code, document = client.call("GET", "/api/status")
        assert code == 200, document
        auth = base64.b64encode(f"admin:{server.password}".encode()).decode()
        ours = load(server.port, auth)
        key = os.path.join(os.path.dirname(server.cert_path), "key.pem")
        tmp = tempfile.mkdtemp(prefix="bolt-bench-web-")
        body_path = os.path.join(tmp, "status.json")
        with open(body_path, "w") as f:
            json.dump(document, f)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "bench.bare_web", str(port), server.cert_path, key, body_path],
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            _listening(port, proc)
            base = load(port, auth)
        finally:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
    note(f"api: GET /api/status req/s per run: bolt {[round(x) for x in ours]}, bare twisted.web "
         f"{[round(x) for x in base]} ({CONNECTIONS} connections, {len(json.dumps(document))}-byte body)")
    return [(f"GET /api/status ({CONNECTIONS} conns)",
             figure(statistics.median(ours), "req/s", samples=ours, higher_is_better=True),
             figure(statistics.median(base), "req/s", samples=base, higher_is_better=True))]
