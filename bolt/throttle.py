"""Throttling of repeated failures per client address (API auth and shell tokens).

After ``limit`` failures within ``window`` seconds an address is refused for ``block`` seconds;
other addresses are unaffected.  Memory stays bounded: old entries are dropped, and at most
``max_tracked`` addresses are remembered (the oldest forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict, deque


class Throttle:
    def __init__(self, clock, limit: int = 10, window: float = 60.0, block: float = 60.0,
                 max_tracked: int = 10_000) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.block = block
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked_until: OrderedDict[str, float] = OrderedDict()

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it is not blocked."""
        until = self._blocked_until.get(key)
        if until is None:
            return 0.0
        remaining = until - self.clock.seconds()
        if remaining <= 0:
            del self._blocked_until[key]
            return 0.0
        return remaining

    def failed(self, key: str) -> None:
        now = self.clock.seconds()
        times = self._failures.pop(key, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            self._blocked_until.pop(key, None)
            self._blocked_until[key] = now + self.block  # newest last, so the oldest go first
            times.clear()
        else:
            self._failures[key] = times
            while len(self._failures) > self.max_tracked:
                self._failures.popitem(last=False)
        if len(self._blocked_until) > self.max_tracked:
            for k in [k for k, t in self._blocked_until.items() if t <= now]:
                del self._blocked_until[k]
            while len(self._blocked_until) > self.max_tracked:
                self._blocked_until.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
