"""The reactor stall monitor, on a Clock."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from bolt.lag import LagMonitor


class LagMonitorTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.monitor = LagMonitor(self.clock, interval=0.05, warn_after=0.1, report_every=10)
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)

    def messages(self) -> list[str]:
        return [e["log_format"] for e in self.events]

    def test_on_time_ticks_report_no_stall(self):
        for _ in range(100):
            self.clock.advance(0.05)
        self.assertEqual(self.monitor.worst_ever, 0.0)
        self.assertNotIn("reactor stalled for {stall_ms:.0f} ms", self.messages())

    def test_a_late_tick_is_a_stall_and_is_logged(self):
        self.clock.advance(0.05)
        self.clock.advance(0.35)  # the next tick runs 0.3 s after it was due
        self.assertAlmostEqual(self.monitor.worst_ever, 0.3, places=6)
        stalls = [e for e in self.events if e["log_format"].startswith("reactor stalled")]
        self.assertEqual(len(stalls), 1)
        self.assertAlmostEqual(stalls[0]["stall_ms"], 300, places=3)

    def test_small_lateness_is_measured_but_not_warned(self):
        self.clock.advance(0.05)
        self.clock.advance(0.09)
        self.assertAlmostEqual(self.monitor.worst_ever, 0.04, places=6)
        self.assertFalse([e for e in self.events if e["log_format"].startswith("reactor stalled")])

    def test_a_summary_every_report_period(self):
        self.clock.advance(0.05)
        self.clock.advance(0.12)
        for _ in range(250):
            self.clock.advance(0.05)
        summaries = [e for e in self.events if e["log_format"].startswith("reactor lag")]
        self.assertEqual(len(summaries), 1)
        self.assertAlmostEqual(summaries[0]["worst_ms"], 70, places=3)
        self.assertEqual(self.monitor.worst, 0.0)  # reset after the report
