"""A reactor stall monitor: how late the reactor runs a timer is how long something blocked it.

A tick is scheduled every ``interval`` seconds; the delay between when it was due and when it ran is
the stall.  Stalls over ``warn_after`` are logged at once; the worst of each ``report_every``
seconds is logged as a summary, so a log always says how responsive the server has been.
"""

from __future__ import annotations

from twisted.application import service
from twisted.logger import Logger


class LagMonitor(service.Service):
    log = Logger()

    def __init__(self, clock, interval: float = 0.05, warn_after: float = 0.1, report_every: float = 60.0) -> None:
        self.clock = clock
        self.interval = interval
        self.warn_after = warn_after
        self.report_every = report_every
        self.worst = 0.0          # worst stall since the last report, in seconds
        self.worst_ever = 0.0
        self._due = 0.0
        self._next_report = 0.0
        self._call = None

    def startService(self) -> None:
        super().startService()
        now = self.clock.seconds()
        self._next_report = now + self.report_every
        self._schedule(now)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, now: float) -> None:
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self.clock.seconds()
        stall = max(0.0, now - self._due)
        self.worst = max(self.worst, stall)
        self.worst_ever = max(self.worst_ever, stall)
        if stall > self.warn_after:
            self.log.warn("reactor stalled for {stall_ms:.0f} ms", stall_ms=stall * 1000)
        if now >= self._next_report:
            self.log.info("reactor lag: worst {worst_ms:.1f} ms in the last {seconds:.0f} s",
                          worst_ms=self.worst * 1000, seconds=self.report_every)
            self.worst = 0.0
            self._next_report = now + self.report_every
        self._schedule(now)
