"""Shared pieces of the benchmarks: timing statistics, a keep-alive HTTPS client, the cached image."""

from __future__ import annotations

import base64
import http.client
import json
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


def summary(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50": percentile(samples, 50), "p99": percentile(samples, 99),
            "mean": statistics.fmean(samples) if samples else float("nan")}


@contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    yield box
    box.append(time.perf_counter() - start)


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


def ensure_image() -> str:
    """The cached debian:bookworm test image, built with the real ImageStore when absent."""
    from twisted.internet import task

    from tests.integration.support import ensure_test_image

    box: list[str] = []

    def main(reactor):
        return ensure_test_image(reactor).addCallback(box.append)

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise
    return box[0]
