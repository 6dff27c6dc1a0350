"""Validation of project resource limits (pure: numbers in, ResourceLimits or InvalidInput out).

The CPU period is fixed at 100000 µs, so ``cpu_quota_us`` is the share of one core in millionths of
ten: 50000 is half a core, 200000 two cores.  A quota above every core of the host means nothing,
one under 1000 µs starves the sandbox, so both are refused.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from bolt.errors import InvalidInput
from bolt.model import ResourceLimits

CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
MIN_MEMORY_BYTES = 16 * 1024 * 1024
MIN_PIDS = 16
MAX_PIDS = 4_194_304
DEFAULT_PIDS = 1024
FIELDS = ("cpu_quota_us", "memory_limit_bytes", "pids_max")


def max_cpu_quota(cpus: int | None = None) -> int:
    return (cpus or os.cpu_count() or 1) * CPU_PERIOD_US


def _check(name: str, value: Any, lo: int, hi: int, unit: str) -> int:
    if type(value) is not int:
        raise InvalidInput(f"{name} must be an integer ({unit}), got {value!r:.40}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi} {unit}, got {value}")
    return value


def validate_limits(data: Any, base: ResourceLimits | None = None, *, cpus: int | None = None,
                    require_all: Iterable[str] = ()) -> ResourceLimits:
    """Merge ``data`` over ``base`` after checking every field; unknown fields are refused."""
    if not isinstance(data, dict):
        raise InvalidInput("resource limits must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; accepted: {', '.join(FIELDS)}")
    for name in require_all:
        if name not in data:
            raise InvalidInput(f"{name} is required")
    if base is None and not {"cpu_quota_us", "memory_limit_bytes"} <= set(data):
        raise InvalidInput("cpu_quota_us and memory_limit_bytes are required")
    if not data:
        raise InvalidInput(f"give at least one of {', '.join(FIELDS)}")
    cpu = data.get("cpu_quota_us", base.cpu_quota_us if base else None)
    mem = data.get("memory_limit_bytes", base.memory_limit_bytes if base else None)
    pids = data.get("pids_max", base.pids_max if base else DEFAULT_PIDS)
    return ResourceLimits(
        cpu_quota_us=_check("cpu_quota_us", cpu, MIN_CPU_QUOTA_US, max_cpu_quota(cpus),
                            f"µs per {CPU_PERIOD_US} µs period"),
        memory_limit_bytes=_check("memory_limit_bytes", mem, MIN_MEMORY_BYTES, 2 ** 62, "bytes"),
        pids_max=_check("pids_max", pids, MIN_PIDS, MAX_PIDS, "processes"),
    )
