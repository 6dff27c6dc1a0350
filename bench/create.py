"""Sandbox create and delete through the API, beside a floor script doing the same host work directly.

Bolt: ``POST /api/projects/bench/sandboxes`` (then ``DELETE`` of each) over one keep-alive HTTPS
connection, BOLT_BENCH_CREATES (default 50) times, from the cached Debian image (already built: no
debootstrap in the timings).

Floor: :class:`bench.floor.FloorHost` doing the same host work from a plain script -- overlay mount,
cgroup directories, ``bolt-sandbox init`` (the namespaces and pid 1), the veth and its addresses,
the sandbox's iptables rules outside and inside, an fsynced state write -- and, for a delete,
the reverse.  The ratio is what the server (Twisted, Klein, TLS, the core's checks and logging) adds.
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import bench_server, ensure_image, note, summary
from bench.floor import STEPS, FloorHost

ROUNDS = int(os.environ.get("BOLT_BENCH_CREATES", "50"))


def floor(image: str, rounds: int) -> tuple[list[float], list[float]]:
    host = FloorHost(image)
    creates, deletes = [], []
    try:
        for i in range(rounds):
            t0 = time.perf_counter()
            host.create(i)
            creates.append(time.perf_counter() - t0)
        for i in range(rounds):
            t0 = time.perf_counter()
            host.delete(i)
            deletes.append(time.perf_counter() - t0)
    finally:
        host.cleanup()
    parts = ", ".join(f"{s} {statistics.median(host.steps[s]) * 1000:.1f}" for s in STEPS if host.steps[s])
    note(f"create floor, p50 per step (ms): {parts}")
    parts = ", ".join(f"{s} {statistics.median(host.delete_steps[s]) * 1000:.1f}"
                      for s in STEPS if host.delete_steps[s])
    note(f"delete floor, p50 per step (ms): {parts}")
    return creates, deletes


def bolt(rounds: int) -> tuple[list[float], list[float]]:
    creates, deletes = [], []
    with bench_server() as (server, client):
        for i in range(rounds):
            t0 = time.perf_counter()
            code, body = client.call("POST", "/api/projects/bench/sandboxes", {"name": f"s{i}"})
            creates.append(time.perf_counter() - t0)
            assert code == 201, body
        for i in range(rounds):
            t0 = time.perf_counter()
            code, body = client.call("DELETE", f"/api/projects/bench/sandboxes/s{i}")
            deletes.append(time.perf_counter() - t0)
            assert code == 200, body
    return creates, deletes


def run() -> list[tuple[str, dict, dict]]:
    image = ensure_image()
    floor_creates, floor_deletes = floor(image, ROUNDS)
    bolt_creates, bolt_deletes = bolt(ROUNDS)
    return [(f"sandbox create (API, n={ROUNDS})", summary(bolt_creates), summary(floor_creates)),
            (f"sandbox delete (API, n={ROUNDS})", summary(bolt_deletes), summary(floor_deletes))]
