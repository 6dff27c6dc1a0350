"""Exec of ``true`` through the API, beside ``nsenter`` into the same sandbox.

Bolt: ``POST .../exec {"command": ["true"]}`` over one keep-alive HTTPS connection (the server runs
``bolt-sandbox enter``: cgroups, namespaces, capabilities, a session, exit status and output back).
Floor: ``nsenter --target PID --all true`` from a plain script, into the same sandbox's pid 1.
BOLT_BENCH_EXECS (default 200) of each, after 10 unmeasured warm-up rounds.
"""

from __future__ import annotations

import os
import subprocess
import time

from bench.common import bench_server, ensure_image, summary

ROUNDS = int(os.environ.get("BOLT_BENCH_EXECS", "200"))


def run() -> list[tuple[str, dict, dict]]:
    ensure_image()
    ours, floor = [], []
    with bench_server() as (server, client):
        code, body = client.call("POST", "/api/projects/bench/sandboxes", {"name": "ex"})
        assert code == 201, body
        pid = body["pid"]
        path = "/api/projects/bench/sandboxes/ex/exec"
        for i in range(ROUNDS + 10):
            t0 = time.perf_counter()
            code, body = client.call("POST", path, {"command": ["true"]})
            if i >= 10:
                ours.append(time.perf_counter() - t0)
            assert code == 200 and body["exit_code"] == 0, body
        argv = ["nsenter", "--target", str(pid), "--all", "true"]
        for i in range(ROUNDS + 10):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True)
            if i >= 10:
                floor.append(time.perf_counter() - t0)
    return [(f"exec true (API vs nsenter, n={ROUNDS})", summary(ours), summary(floor))]
