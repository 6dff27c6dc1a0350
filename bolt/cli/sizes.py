"""Human quantities for the command line: memory sizes and CPU shares (pure functions).

Sizes are binary, as docker and systemd read them: ``K``, ``M``, ``G``, ``T`` (with or without a
trailing ``B``, ``iB`` or ``i``) are powers of 1024, so ``512M``, ``512MB`` and ``512MiB`` are all
536870912 bytes.  A bare number is bytes.  Fractions are allowed (``1.5G``) and rounded down to a
whole byte.

CPU is given as a number of cores (``0.5``, ``2``), a percentage of one core as ``top`` shows it
(``50%``, ``150%``), or the raw cgroup quota in µs per 100000 µs period (``50000us``, ``50000µs``).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

CPU_PERIOD_US = 100_000
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?b?)\s*", re.I)
_CPU_US = re.compile(r"\s*(\d+)\s*(us|µs|usec)\s*", re.I)
_CPU_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")
_CPU_CORES = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(cores?|cpus?)?\s*", re.I)
#: A bare CPU number above this is almost certainly µs written without the unit.
_MAX_CORES = 4096


class QuantityError(ValueError):
    """The text is not a quantity of the expected kind; the message says what is accepted."""


def parse_size(text: str) -> int:
    """Bytes from "512M", "1G", "1.5GiB", "268435456", "64k"; see the module doc."""
    match = _SIZE.fullmatch(text or "")
    if match is None:
        raise QuantityError(f"invalid size {text!r}: use a number of bytes or a number with K, M, G or T "
                            "(binary: 512M = 512 MiB; 1.5G, 1GiB and 1GB are accepted)")
    number, unit, suffix = match.group(1), match.group(2).lower(), (match.group(3) or "").lower()
    if suffix in ("i", "ib") and not unit:
        raise QuantityError(f"invalid size {text!r}: 'i' needs a unit before it (KiB, MiB, GiB, TiB)")
    try:
        value = int(Decimal(number) * _UNITS[unit])
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise QuantityError(f"invalid size {text!r}") from None
    return value


def format_size(value: int | None) -> str:
    """'512 MiB', '1.5 GiB', '300 B': the largest binary unit that keeps the number at least 1."""
    if value is None:
        return "-"
    for unit, name in ((1024 ** 4, "TiB"), (1024 ** 3, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB")):
        if abs(value) >= unit:
            number = value / unit
            text = f"{number:.1f}".rstrip("0").rstrip(".") if number < 100 else f"{number:.0f}"
            return f"{text} {name}"
    return f"{value} B"


def parse_cpu(text: str) -> int:
    """The cgroup quota in µs per 100000 µs period from "0.5", "50%" or "50000us"."""
    text = text or ""
    if (match := _CPU_US.fullmatch(text)) is not None:
        return int(match.group(1))
    if (match := _CPU_PERCENT.fullmatch(text)) is not None:
        return int(Decimal(match.group(1)) * CPU_PERIOD_US / 100)
    if (match := _CPU_CORES.fullmatch(text)) is not None:
        cores = Decimal(match.group(1))
        if cores > _MAX_CORES:
            raise QuantityError(f"invalid CPU {text!r}: {cores} cores is more than any host has; "
                                f"for a quota in microseconds write {match.group(1)}us")
        return int(cores * CPU_PERIOD_US)
    raise QuantityError(f"invalid CPU {text!r}: give cores (0.5, 2), a percentage of one core (50%, 150%) "
                        "or a quota in µs per 100000 µs period (50000us)")


def format_cpu(quota_us: int | None) -> str:
    """'0.5 cores', '1 core', '2 cores'."""
    if quota_us is None:
        return "-"
    cores = quota_us / CPU_PERIOD_US
    text = f"{cores:.3f}".rstrip("0").rstrip(".")
    return f"{text} core" if text == "1" else f"{text} cores"
