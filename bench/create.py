"""Sandbox create and delete through the API, beside a floor script doing the same host work directly.

The floor for issue 3's part of a create is an overlay mount over the same image (mkdir + mount);
later layers (namespaces, cgroups, network) add their own floor steps here as they land.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from bench.common import Client, ensure_image, summary
from tests.integration.server import RealServer
from tests.integration.support import cached_image_root

ROUNDS = int(os.environ.get("BOLT_BENCH_CREATES", "50"))


def floor(image: str, rounds: int) -> tuple[list[float], list[float]]:
    """mkdir + mount -t overlay (create) and umount + rm -r (delete), timed one by one."""
    top = tempfile.mkdtemp(prefix="bolt-bench-floor-")
    creates, deletes = [], []
    try:
        for i in range(rounds):
            base = os.path.join(top, f"s{i}")
            t0 = time.perf_counter()
            for sub in ("upper", "work", "rootfs"):
                os.makedirs(os.path.join(base, sub))
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={image},upperdir={base}/upper,workdir={base}/work,index=off,metacopy=off",
                            f"{base}/rootfs"], check=True)
            creates.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(["umount", f"{base}/rootfs"], check=True)
            shutil.rmtree(base)
            deletes.append(time.perf_counter() - t0)
    finally:
        subprocess.run(["umount", "--recursive", "--lazy", top], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(top, ignore_errors=True)
    return creates, deletes


def bolt(rounds: int) -> tuple[list[float], list[float]]:
    server = RealServer(config={"base_image_dir": cached_image_root()})
    creates, deletes = [], []
    try:
        server.start()
        client = Client(server.port, server.cert_path, "admin", server.password)
        client.call("GET", "/api/status")  # the first login pays scrypt once; not part of a create
        client.call("POST", "/api/projects", {"name": "bench"})
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
        client.close()
    finally:
        server.cleanup()
    return creates, deletes


def run() -> list[tuple[str, dict, dict]]:
    image = ensure_image()
    floor_creates, floor_deletes = floor(image, ROUNDS)
    bolt_creates, bolt_deletes = bolt(ROUNDS)
    return [("sandbox create (API)", summary(bolt_creates), summary(floor_creates)),
            ("sandbox delete (API)", summary(bolt_deletes), summary(floor_deletes))]
