"""System figures for the status endpoint, read with psutil in a thread, at most once a second.

``cpu_percent(interval=None)`` compares with the previous call instead of sleeping, so the first
figure after start is 0.0 and every later one covers the time since the previous reading.

Readings are shared: a status request within :data:`MAX_AGE` seconds of the last reading gets its
figures, and requests that arrive while a reading is in flight wait for that one.  So a burst of
status requests costs one thread hop and one round of /proc reads per second, not one per request
(a hop per request also made the reactor thread fight the worker for the GIL on every request).
"""

from __future__ import annotations

from typing import Callable

import psutil
from twisted.internet import defer, threads

#: Seconds a reading is reused for.
MAX_AGE = 1.0


def read_figures(data_dir: str) -> dict[str, float]:
    return {
        "cpu_usage": float(psutil.cpu_percent(interval=None)),
        "memory_usage": float(psutil.virtual_memory().percent),
        "disk_usage": float(psutil.disk_usage(data_dir).percent),
    }


class _SharedReading:
    """The callable :func:`figures_source` returns: one reading in flight at a time, reused for a while."""

    def __init__(self, data_dir: str, run: Callable[..., defer.Deferred], clock, max_age: float) -> None:
        self.data_dir = data_dir
        self.run = run
        self.clock = clock
        self.max_age = max_age
        self.figures: dict[str, float] | None = None
        self.read_at = 0.0
        self.waiting: list[defer.Deferred] | None = None

    def __call__(self) -> defer.Deferred:
        if self.figures is not None and self.clock.seconds() - self.read_at < self.max_age:
            return defer.succeed(dict(self.figures))
        d: defer.Deferred = defer.Deferred()
        if self.waiting is not None:
            self.waiting.append(d)
            return d
        self.waiting = [d]
        self.run(read_figures, self.data_dir).addBoth(self._done)
        return d

    def _done(self, result) -> None:
        waiting, self.waiting = self.waiting or [], None
        if isinstance(result, dict):
            self.figures, self.read_at = result, self.clock.seconds()
        for d in waiting:
            if isinstance(result, dict):
                d.callback(dict(result))
            else:
                d.errback(result)  # a failed reading is not cached: the next request tries again


def figures_source(data_dir: str, run_in_thread: Callable[..., defer.Deferred] | None = None, *,
                   clock=None, max_age: float = MAX_AGE) -> Callable[[], defer.Deferred]:
    """A callable the core uses to get figures without blocking the reactor (see the module doc)."""
    if clock is None:
        from twisted.internet import reactor as clock
    run = run_in_thread or threads.deferToThread
    psutil.cpu_percent(interval=None)  # prime the counter so the first request has a baseline
    return _SharedReading(data_dir, run, clock, max_age)
