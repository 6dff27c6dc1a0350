"""System figures for the status endpoint, read with psutil in a thread.

``cpu_percent(interval=None)`` compares with the previous call instead of sleeping, so the first
figure after start is 0.0 and every later one covers the time since the last status request.
"""

from __future__ import annotations

from typing import Callable

import psutil
from twisted.internet import defer, threads


def read_figures(data_dir: str) -> dict[str, float]:
    return {
        "cpu_usage": float(psutil.cpu_percent(interval=None)),
        "memory_usage": float(psutil.virtual_memory().percent),
        "disk_usage": float(psutil.disk_usage(data_dir).percent),
    }


def figures_source(data_dir: str, run_in_thread: Callable[..., defer.Deferred] | None = None
                   ) -> Callable[[], defer.Deferred]:
    """A callable the core uses to get figures without blocking the reactor."""
    run = run_in_thread or threads.deferToThread
    psutil.cpu_percent(interval=None)  # prime the counter so the first request has a baseline
    return lambda: run(read_figures, data_dir)
