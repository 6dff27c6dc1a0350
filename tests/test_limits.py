"""Tests for bolt.limits (resource-limit validation) and bolt.system (status figures)."""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from bolt import system
from bolt.errors import InvalidInput
from bolt.limits import max_cpu_quota, validate_limits
from bolt.model import ResourceLimits

MiB = 1024 * 1024
GOOD = {"cpu_quota_us": 100000, "memory_limit_bytes": 512 * MiB}
BOTH = ("cpu_quota_us", "memory_limit_bytes")


def validate(data, **kwargs):
    """validate_limits as the config loader calls it for a complete set (no base)."""
    kwargs.setdefault("require_all", BOTH)
    return validate_limits(data, **kwargs)


class ValidateLimitsTests(unittest.TestCase):
    def refused(self, data, *fragments, **kwargs) -> str:
        kwargs.setdefault("cpus", 4)
        if "base" not in kwargs:
            kwargs.setdefault("require_all", BOTH)
        error = self.assertRaises(InvalidInput, validate_limits, data, **kwargs)
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        return str(error)

    def test_full_set(self) -> None:
        limits = validate(dict(GOOD, pids_max=64), cpus=4)
        self.assertEqual(limits, ResourceLimits(100000, 512 * MiB, 64))

    def test_full_set_without_base_or_require_all(self) -> None:
        """Every required field is present, so no base is needed to fill anything in."""
        try:
            limits = validate_limits(dict(GOOD, pids_max=64), cpus=4)
        except InvalidInput as e:
            self.fail(f"a complete set of limits was refused: {e}")
        self.assertEqual(limits, ResourceLimits(100000, 512 * MiB, 64))

    def test_pids_default(self) -> None:
        self.assertEqual(validate(GOOD, cpus=4).pids_max, 1024)

    def test_cpu_bounds_follow_cpu_count(self) -> None:
        self.assertEqual(validate(dict(GOOD, cpu_quota_us=1000), cpus=2).cpu_quota_us, 1000)
        self.assertEqual(validate(dict(GOOD, cpu_quota_us=200000), cpus=2).cpu_quota_us, 200000)
        self.refused(dict(GOOD, cpu_quota_us=999), "cpu_quota_us", "between 1000 and 200000", cpus=2)
        self.refused(dict(GOOD, cpu_quota_us=200001), "cpu_quota_us", "between 1000 and 200000", cpus=2)
        self.assertEqual(validate(dict(GOOD, cpu_quota_us=800000), cpus=8).cpu_quota_us, 800000)
        self.refused(dict(GOOD, cpu_quota_us=0), "cpu_quota_us", cpus=8)
        self.refused(dict(GOOD, cpu_quota_us=-100000), "cpu_quota_us", cpus=8)

    def test_cpu_bound_defaults_to_host(self) -> None:
        host = (os.cpu_count() or 1) * 100000
        self.assertEqual(max_cpu_quota(), host)
        self.assertEqual(validate(dict(GOOD, cpu_quota_us=host)).cpu_quota_us, host)
        self.assertRaises(InvalidInput, validate_limits, dict(GOOD, cpu_quota_us=host + 1))

    def test_memory_minimum(self) -> None:
        self.assertEqual(validate(dict(GOOD, memory_limit_bytes=16 * MiB), cpus=1).memory_limit_bytes,
                         16 * MiB)
        self.refused(dict(GOOD, memory_limit_bytes=16 * MiB - 1), "memory_limit_bytes",
                     f"between {16 * MiB} and", "bytes")
        self.refused(dict(GOOD, memory_limit_bytes=0), "memory_limit_bytes")
        self.refused(dict(GOOD, memory_limit_bytes=-1), "memory_limit_bytes")

    def test_pids_bounds(self) -> None:
        self.assertEqual(validate(dict(GOOD, pids_max=16), cpus=1).pids_max, 16)
        self.refused(dict(GOOD, pids_max=15), "pids_max", "between 16 and")
        self.refused(dict(GOOD, pids_max=0), "pids_max")
        self.refused(dict(GOOD, pids_max=4_194_305), "pids_max")

    def test_non_integers_refused(self) -> None:
        for field in ("cpu_quota_us", "memory_limit_bytes", "pids_max"):
            for value in (True, False, 1.5, 100000.0, "100000", None, [100000], {"v": 1}):
                message = self.refused(dict(GOOD, **{field: value}), field, "must be an integer")
                self.assertIn(field, message, (field, value))

    def test_unknown_field_refused(self) -> None:
        self.refused(dict(GOOD, swap_bytes=1), "'swap_bytes'", "unknown field")
        self.refused({"cpu_quota": 100000, "memory_limit_bytes": 512 * MiB}, "'cpu_quota'")

    def test_not_an_object(self) -> None:
        for data in (None, [], "cpu_quota_us=1000", 5):
            self.refused(data, "JSON object")

    def test_both_required_without_base(self) -> None:
        for kwargs in ({}, {"require_all": BOTH}):
            self.assertIn("memory_limit_bytes", str(self.assertRaises(
                InvalidInput, validate_limits, {"cpu_quota_us": 100000}, **kwargs)))
            self.assertIn("cpu_quota_us", str(self.assertRaises(
                InvalidInput, validate_limits, {"memory_limit_bytes": 512 * MiB}, **kwargs)))
            self.assertRaises(InvalidInput, validate_limits, {}, **kwargs)

    def test_require_all(self) -> None:
        base = ResourceLimits(100000, 512 * MiB, 256)
        self.refused({"cpu_quota_us": 5000}, "memory_limit_bytes", "required", base=base,
                     require_all=("cpu_quota_us", "memory_limit_bytes"))

    def test_merge_over_base(self) -> None:
        base = ResourceLimits(150000, 1024 * MiB, 256)
        self.assertEqual(validate_limits({"pids_max": 32}, base, cpus=2),
                         ResourceLimits(150000, 1024 * MiB, 32))
        self.assertEqual(validate_limits({"memory_limit_bytes": 64 * MiB}, base, cpus=2),
                         ResourceLimits(150000, 64 * MiB, 256))
        self.assertEqual(validate_limits({"cpu_quota_us": 20000}, base, cpus=2),
                         ResourceLimits(20000, 1024 * MiB, 256))
        self.assertEqual(base, ResourceLimits(150000, 1024 * MiB, 256), "the base is not modified")

    def test_merge_still_validates(self) -> None:
        base = ResourceLimits(150000, 1024 * MiB, 256)
        self.refused({"pids_max": 1}, "pids_max", base=base)
        self.refused({"cpu_quota_us": "fast"}, "cpu_quota_us", "integer", base=base)

    def test_empty_change_over_base_refused(self) -> None:
        self.refused({}, "at least one", base=ResourceLimits(150000, 1024 * MiB, 256))

    def test_long_value_shortened_in_message(self) -> None:
        message = self.refused(dict(GOOD, cpu_quota_us="9" * 500), "cpu_quota_us")
        self.assertLess(len(message), 200)


class SystemFiguresTests(unittest.TestCase):
    def test_read_figures(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        figures = system.read_figures(directory)
        self.assertEqual(set(figures), {"cpu_usage", "memory_usage", "disk_usage"})
        for key, value in figures.items():
            self.assertIsInstance(value, float, key)
            self.assertTrue(0.0 <= value <= 100.0, (key, value))

    def test_figures_source_runs_in_thread_with_data_dir(self) -> None:
        calls = []

        def fake_thread(f, *args):
            calls.append((f, args))
            return defer.succeed({"cpu_usage": 1.0, "memory_usage": 2.0, "disk_usage": 3.0})

        source = system.figures_source("/var/bolt", run_in_thread=fake_thread)
        self.assertEqual(calls, [], "nothing is read until asked")
        result = self.successResultOf(source())
        self.assertEqual(calls, [(system.read_figures, ("/var/bolt",))])
        self.assertEqual(result, {"cpu_usage": 1.0, "memory_usage": 2.0, "disk_usage": 3.0})

    def test_figures_reused_for_a_second(self) -> None:
        clock = task.Clock()
        calls = []

        def fake_thread(f, *args):
            calls.append(args)
            return defer.succeed({"cpu_usage": float(len(calls)), "memory_usage": 2.0, "disk_usage": 3.0})

        source = system.figures_source("/var/bolt", run_in_thread=fake_thread, clock=clock)
        self.assertEqual(self.successResultOf(source())["cpu_usage"], 1.0)
        clock.advance(system.MAX_AGE / 2)
        self.assertEqual(self.successResultOf(source())["cpu_usage"], 1.0)
        self.assertEqual(len(calls), 1, "a fresh reading is reused")
        clock.advance(system.MAX_AGE)
        self.assertEqual(self.successResultOf(source())["cpu_usage"], 2.0)
        self.assertEqual(len(calls), 2)

    def test_requests_during_a_reading_share_it(self) -> None:
        clock = task.Clock()
        pending = []

        def fake_thread(f, *args):
            pending.append(defer.Deferred())
            return pending[-1]

        source = system.figures_source("/var/bolt", run_in_thread=fake_thread, clock=clock)
        first, second = source(), source()
        self.assertEqual(len(pending), 1, "one reading in flight at a time")
        self.assertNoResult(first)
        pending[0].callback({"cpu_usage": 5.0, "memory_usage": 2.0, "disk_usage": 3.0})
        mine = self.successResultOf(first)
        self.assertEqual(mine, self.successResultOf(second))
        mine["cpu_usage"] = -1.0  # callers get copies
        self.assertEqual(self.successResultOf(source())["cpu_usage"], 5.0)

    def test_failed_reading_is_not_reused(self) -> None:
        clock = task.Clock()
        results = [defer.fail(OSError("no /proc")),
                   defer.succeed({"cpu_usage": 1.0, "memory_usage": 2.0, "disk_usage": 3.0})]

        source = system.figures_source("/var/bolt", run_in_thread=lambda f, *a: results.pop(0), clock=clock)
        self.failureResultOf(source(), OSError)
        self.assertEqual(self.successResultOf(source())["cpu_usage"], 1.0)

    def test_figures_source_default_thread(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        d = system.figures_source(directory)()

        def check(figures):
            self.assertEqual(set(figures), {"cpu_usage", "memory_usage", "disk_usage"})
        return d.addCallback(check)
