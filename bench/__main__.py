"""Run every benchmark and print one table: Bolt's figure, the floor measured in the same run, the ratio."""

from __future__ import annotations

import os
import platform
import sys

from bench import create, forwards

SUITES = [create, forwards]


def main() -> int:
    if os.geteuid() != 0:
        print("benchmarks need root (mount, namespaces)", file=sys.stderr)
        return 1
    rows = []
    for suite in SUITES:
        rows.extend(suite.run())
    print(f"\nBolt benchmarks on {platform.node()}: {os.cpu_count()} cores, {platform.release()}\n")
    print(f"{'figure':34} {'bolt p50':>10} {'bolt p99':>10} {'floor p50':>10} {'floor p99':>10} {'ratio p50':>10}")
    for name, ours, base in rows:
        ratio = ours["p50"] / base["p50"] if base["p50"] else float("nan")
        print(f"{name:34} {ours['p50'] * 1000:8.2f}ms {ours['p99'] * 1000:8.2f}ms "
              f"{base['p50'] * 1000:8.2f}ms {base['p99'] * 1000:8.2f}ms {ratio:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
