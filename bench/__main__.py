"""Run every benchmark and print one table: Bolt's figure, the floor measured in the same run, the ratio.

    python -m bench                      # every suite (what ``make bench`` runs)
    python -m bench shell api            # some suites only
    python -m bench --json results.json  # also write the rows as JSON

The ratio is Bolt / floor for every row: for latencies and memory lower is better, for rates (req/s,
MB/s) higher is better.  Below the table: notes from the suites (breakdowns, methods) and the aims.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

from bench import api, common, create, execs, forwards, scale, shell

SUITES = {"create": create, "execs": execs, "shell": shell, "api": api, "forwards": forwards, "scale": scale}


def fmt(summary: dict | None, key: str) -> str:
    if summary is None:
        return "-"
    value = summary.get(key, float("nan"))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    unit = summary.get("unit", "s")
    if unit == "s":
        ms = value * 1000
        return f"{ms:.3f} ms" if ms < 1 else f"{ms:.1f} ms"
    if unit in ("req/s", "KiB"):
        return f"{value:.0f} {unit}"
    return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def ratio(ours: dict, base: dict | None) -> float:
    if base is None or not base.get("p50"):
        return float("nan")
    return ours["p50"] / base["p50"]


def _row(rows, prefix):
    return [r for r in rows if r[0].startswith(prefix)]


def aims(rows) -> list[tuple[str, bool | None, str]]:
    """(aim, met or None when not measured, the figures it was judged on)."""
    out: list[tuple[str, bool | None, str]] = []

    def judge(prefix, text, check, show):
        found = _row(rows, prefix)
        if not found:
            out.append((text, None, "not measured in this run"))
        for name, ours, base in found:
            out.append((text, check(ours, base), f"{name}: {show(ours, base)}"))

    judge("sandbox create", "create p50 under 100 ms and within 3x of its floor",
          lambda o, b: o["p50"] < 0.1 and ratio(o, b) <= 3,
          lambda o, b: f"{o['p50'] * 1000:.1f} ms, {ratio(o, b):.2f}x the floor")
    judge("GET /api/status", "API at least 1,500 req/s and at least half of bare twisted.web",
          lambda o, b: o["p50"] >= 1500 and ratio(o, b) >= 0.5,
          lambda o, b: f"{o['p50']:.0f} req/s, {ratio(o, b):.2f}x bare twisted.web ({b['p50']:.0f} req/s)")
    judge("shell keystroke", "keystroke round trip under 1 ms added",
          lambda o, b: o["p50"] - b["p50"] < 0.001,
          lambda o, b: f"+{(o['p50'] - b['p50']) * 1e6:.0f} us at p50 (+{(o['p99'] - b['p99']) * 1e6:.0f} us at p99)")
    judge("shell output", "shell throughput over 50 MB/s",
          lambda o, b: o["p50"] > 50, lambda o, b: f"{o['p50']:.1f} MB/s (local PTY {b['p50']:.1f} MB/s)")
    judge("forward add", "forward add under 10 ms (1,000 in place)",
          lambda o, b: o["p50"] < 0.010, lambda o, b: f"{o['p50'] * 1000:.2f} ms (p99 {o['p99'] * 1000:.2f} ms)")
    judge("memory per idle sandbox", "under 5 MiB of host memory per idle sandbox",
          lambda o, b: o["p50"] < 5, lambda o, b: f"{o['p50']:.2f} MiB (floor {b['p50']:.2f} MiB)")
    return out


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    mem = common.meminfo_kib("MemTotal") / 1024 / 1024
    return (f"{platform.node()}: {os.cpu_count()} x {model}, {mem:.1f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", metavar="SUITE",
                        help=f"suites to run (default: all of {', '.join(SUITES)})")
    parser.add_argument("--json", metavar="PATH", help="also write the rows, notes and aims as JSON")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    if os.geteuid() != 0:
        print("benchmarks need root (mount, namespaces, cgroups, iptables)", file=sys.stderr)
        return 1
    common.raise_nofile()
    started = time.monotonic()
    rows = []
    for name in args.suites or list(SUITES):
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        rows.extend(SUITES[name].run())
        print(f"== {name}: {time.monotonic() - t0:.0f} s", flush=True)
    header = f"{'figure':42} {'bolt p50':>12} {'bolt p99':>12} {'floor p50':>12} {'floor p99':>12} {'bolt/floor':>10}"
    print(f"\nBolt benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}, on {machine()}\n")
    print(header)
    print("-" * len(header))
    for name, ours, base in rows:
        r = ratio(ours, base)
        print(f"{name:42} {fmt(ours, 'p50'):>12} {fmt(ours, 'p99'):>12} {fmt(base, 'p50'):>12} "
              f"{fmt(base, 'p99'):>12} {'-' if math.isnan(r) else f'{r:.2f}x':>10}")
    if common.NOTES:
        print("\nNotes:")
        for text in common.NOTES:
            print(f"  {text}")
    judged = aims(rows)
    print("\nAims:")
    for text, met, detail in judged:
        verdict = "n/a" if met is None else ("met" if met else "MISSED")
        print(f"  [{verdict:6}] {text}: {detail}")
    print(f"\n{len(rows)} figures in {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": [{"name": n, "bolt": o, "floor": b} for n, o, b in rows],
                       "notes": common.NOTES, "aims": [{"aim": t, "met": m, "detail": d} for t, m, d in judged]},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
