"""Tests for bolt.throttle: blocking repeated failures per client address, on a task.Clock."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest

from bolt.throttle import Throttle


class ThrottleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000)  # not at 0, so "time 0" cannot hide an off-by-one
        self.throttle = Throttle(self.clock)

    def fail_times(self, key: str, count: int, spacing: float = 0.0) -> None:
        for i in range(count):
            if i and spacing:
                self.clock.advance(spacing)
            self.throttle.failed(key)

    def test_unknown_key_not_blocked(self) -> None:
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)

    def test_nine_failures_do_not_block(self) -> None:
        self.fail_times("192.0.2.1", 9)
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)

    def test_ten_failures_within_window_block_for_block_time(self) -> None:
        self.fail_times("192.0.2.1", 10, spacing=5)  # 45 s from first to last
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 60)
        self.clock.advance(59.5)
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0.5)
        self.clock.advance(0.5)
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)

    def test_other_keys_unaffected(self) -> None:
        self.fail_times("192.0.2.1", 10)
        self.assertGreater(self.throttle.retry_after("192.0.2.1"), 0)
        self.assertEqual(self.throttle.retry_after("192.0.2.2"), 0)
        self.assertEqual(self.throttle.retry_after("2001:db8::1"), 0)
        self.fail_times("192.0.2.2", 9)
        self.assertEqual(self.throttle.retry_after("192.0.2.2"), 0)

    def test_unblocked_key_starts_afresh(self) -> None:
        self.fail_times("192.0.2.1", 10)
        self.clock.advance(61)
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)
        self.throttle.failed("192.0.2.1")
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0, "one failure after a block is not a block")
        self.fail_times("192.0.2.1", 9)
        self.assertGreater(self.throttle.retry_after("192.0.2.1"), 0)

    def test_failures_older_than_window_do_not_count(self) -> None:
        self.fail_times("192.0.2.1", 9)
        self.clock.advance(61)
        self.throttle.failed("192.0.2.1")
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)

    def test_failures_inside_window_count(self) -> None:
        self.fail_times("192.0.2.1", 9)
        self.clock.advance(59)
        self.throttle.failed("192.0.2.1")
        self.assertGreater(self.throttle.retry_after("192.0.2.1"), 0)

    def test_sliding_window(self) -> None:
        """One failure every 7 s: never 10 within 60 s, so never blocked."""
        self.fail_times("192.0.2.1", 50, spacing=7)
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)
        # ... but one every 6 s puts 10 inside a 60 s window (54 s from first to tenth)
        self.fail_times("192.0.2.9", 10, spacing=6)
        self.assertGreater(self.throttle.retry_after("192.0.2.9"), 0)

    def test_success_resets(self) -> None:
        self.fail_times("192.0.2.1", 9)
        self.throttle.succeeded("192.0.2.1")
        self.throttle.failed("192.0.2.1")
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)
        self.fail_times("192.0.2.1", 8)
        self.assertEqual(self.throttle.retry_after("192.0.2.1"), 0)
        self.throttle.failed("192.0.2.1")
        self.assertGreater(self.throttle.retry_after("192.0.2.1"), 0)

    def test_success_of_other_key_does_not_reset(self) -> None:
        self.fail_times("192.0.2.1", 9)
        self.throttle.succeeded("192.0.2.2")
        self.throttle.failed("192.0.2.1")
        self.assertGreater(self.throttle.retry_after("192.0.2.1"), 0)

    def test_custom_parameters(self) -> None:
        throttle = Throttle(self.clock, limit=3, window=10, block=300)
        for _ in range(3):
            throttle.failed("k")
        self.assertEqual(throttle.retry_after("k"), 300)
        self.clock.advance(299)
        self.assertEqual(throttle.retry_after("k"), 1)


class MemoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()

    def test_oldest_address_forgotten_first(self) -> None:
        throttle = Throttle(self.clock, limit=2, max_tracked=3)
        for key in ["a", "b", "c", "d"]:  # "a" is pushed out by "d"
            throttle.failed(key)
        throttle.failed("a")
        self.assertEqual(throttle.retry_after("a"), 0, "a's first failure was forgotten")
        throttle.failed("d")
        self.assertGreater(throttle.retry_after("d"), 0, "d's first failure was remembered")

    def test_recent_failure_refreshes_position(self) -> None:
        throttle = Throttle(self.clock, limit=3, max_tracked=3)
        for key in ["a", "b", "c"]:
            throttle.failed(key)
        throttle.failed("a")  # a is now the most recent; b the oldest
        throttle.failed("d")  # pushes out b, not a
        throttle.failed("a")
        self.assertGreater(throttle.retry_after("a"), 0, "a kept all three failures")
        throttle.failed("b")
        throttle.failed("b")
        self.assertEqual(throttle.retry_after("b"), 0, "b's first failure was forgotten")

    def test_failure_memory_bounded(self) -> None:
        throttle = Throttle(self.clock, limit=10, max_tracked=100)
        for i in range(5000):
            throttle.failed(f"198.51.{i // 256}.{i % 256}")
            self.clock.advance(0.001)
        self.assertLessEqual(len(throttle._failures), 100)

    def test_blocked_memory_bounded(self) -> None:
        """Addresses that got blocked count against max_tracked too (module doc: "at most
        max_tracked addresses are remembered")."""
        throttle = Throttle(self.clock, limit=1, max_tracked=100)
        for i in range(5000):
            throttle.failed(f"198.51.{i // 256}.{i % 256}")
        self.assertLessEqual(len(throttle._failures) + len(throttle._blocked_until), 100)

    def test_expired_blocks_dropped(self) -> None:
        throttle = Throttle(self.clock, limit=1, block=60, max_tracked=10)
        for i in range(10):
            throttle.failed(f"old-{i}")
        self.clock.advance(61)
        for i in range(5):
            throttle.failed(f"new-{i}")
        self.assertLessEqual(len(throttle._blocked_until), 10)
        for i in range(5):
            self.assertGreater(throttle.retry_after(f"new-{i}"), 0)
