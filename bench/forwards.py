"""Firewall and link timings: forward add/remove with many forwards in place, the full rebuild, attach.

Bolt's figures go through the real adapters (:class:`bolt.host.firewall.Firewall`,
:class:`bolt.host.network.Network`) on the reactor; each floor runs the same host work directly with
``subprocess`` (the same iptables-restore document, the same ``ip``/``nsenter`` commands), so the
ratio is what the adapters and the reactor add.

Everything uses a random chain prefix (``BB<hex>``), a random link prefix and a pool from 10.240/12
that no route uses; the fake sandboxes' rules name links that do not exist (rules do not need them),
and the attach rounds use ``unshare --net sleep`` processes.  All of it is removed at the end, also on
failure.  Sizes: BOLT_BENCH_FORWARDS (default 1000) forwards spread over BOLT_BENCH_FWD_SANDBOXES
(default 1000) sandboxes, BOLT_BENCH_FWD_ROUNDS (default 50) timed rounds.

Run alone with ``python -m bench.forwards``.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import sys
import time

from bench.common import summary
from bench.floor import attach_link

FORWARDS = int(os.environ.get("BOLT_BENCH_FORWARDS", "1000"))
SANDBOXES = int(os.environ.get("BOLT_BENCH_FWD_SANDBOXES", "1000"))
ROUNDS = int(os.environ.get("BOLT_BENCH_FWD_ROUNDS", "50"))
RESTORE = ["iptables-restore", "-w", "--noflush"]


def _world():
    from bolt.netplan import AddressPool, FirewallConfig, Forward, SandboxNet

    prefix = "BB" + secrets.token_hex(3).upper()
    link_prefix = "b" + secrets.token_hex(2)
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    second = next(n for n in range(240, 256) if f"10.{n}." not in routes)
    network = f"10.{second}.0.0/16"
    pool = AddressPool(network)
    config = FirewallConfig(network=network, prefix=prefix, link_prefix=link_prefix)
    per = max(1, FORWARDS // SANDBOXES)
    sandboxes = []
    port = 20000
    for i in range(SANDBOXES):
        forwards = []
        for _ in range(per if i < SANDBOXES - 1 else FORWARDS - per * (SANDBOXES - 1)):
            forwards.append(Forward(port, 80))
            port += 1
        sandboxes.append(SandboxNet(f"p{i % 50}", f"s{i}", pool.allocate(), f"{link_prefix}{i:08x}",
                                    tuple(forwards)))
    return config, pool, sandboxes, port


def _cleanup(prefix: str, link_prefix: str, procs: list) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(link_prefix):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    for save, restore in (("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")):
        text = subprocess.run([save], capture_output=True, text=True).stdout
        doc, table, chains, jumps = [], "", {}, {}
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(f":{prefix}-"):
                chains.setdefault(table, []).append(line[1:].split()[0])
            elif line.startswith("-A ") and f"-j {prefix}-" in line and not line.split()[1].startswith(prefix):
                jumps.setdefault(table, []).append("-D " + line[3:])
        for t in set(chains) | set(jumps):
            doc += [f"*{t}"] + [f":{c} - [0:0]" for c in chains.get(t, [])] + jumps.get(t, [])
            doc += [f"-X {c}" for c in chains.get(t, [])] + ["COMMIT"]
        if doc:
            subprocess.run([restore, "--noflush"], input=("\n".join(doc) + "\n").encode(), check=True)


def _netns() -> subprocess.Popen:
    proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    host = os.readlink("/proc/self/ns/net")
    while os.readlink(f"/proc/{proc.pid}/ns/net") == host:
        time.sleep(0.001)
    return proc


def _floor(config, sandboxes, spare_port: int, procs: list) -> dict[str, list[float]]:
    from bolt.netplan import Forward, render, render_update

    out: dict[str, list[float]] = {"add": [], "remove": [], "rebuild": [], "attach": []}
    current = {sb.key: sb for sb in sandboxes}
    first = sandboxes[0]
    added = first.with_forward(Forward(spare_port, 81))
    add_doc = render_update(config, current, first.key, added).encode()
    remove_doc = render_update(config, {**current, first.key: added}, first.key, first).encode()
    full = render(config, sandboxes).encode()
    subprocess.run(RESTORE, input=full, check=True)
    for _ in range(ROUNDS):
        for key, doc in (("add", add_doc), ("remove", remove_doc)):
            t0 = time.perf_counter()
            subprocess.run(RESTORE, input=doc, check=True)
            out[key].append(time.perf_counter() - t0)
    for _ in range(max(5, ROUNDS // 5)):
        t0 = time.perf_counter()
        subprocess.run(["iptables-save"], capture_output=True, check=True)
        subprocess.run(RESTORE, input=full, check=True)   # the jumps exist now: same work as a rebuild
        out["rebuild"].append(time.perf_counter() - t0)
    gw = config.gateway
    for i in range(ROUNDS):
        proc = _netns()
        procs.append(proc)
        link, addr = f"{config.link_prefix}f{i:07x}", f"10.{config.network.split('.')[1]}.255.{i + 2}"
        t0 = time.perf_counter()
        attach_link(proc.pid, link, addr, gw)
        out["attach"].append(time.perf_counter() - t0)
        proc.kill()
        proc.wait()
        procs.remove(proc)
    return out


def _bolt(config, pool, sandboxes, spare_port: int, procs: list) -> dict[str, list[float]]:
    from twisted.internet import defer, task

    from bolt.host.firewall import Firewall
    from bolt.host.network import Network
    from bolt.host.process import ReactorRunner
    from bolt.netplan import Forward

    out: dict[str, list[float]] = {"add": [], "remove": [], "rebuild": [], "attach": []}

    @defer.inlineCallbacks
    def main(reactor):
        runner = ReactorRunner(reactor)
        firewall = Firewall(runner, config)
        network = Network(runner, pool=pool, link_prefix=config.link_prefix)
        t0 = time.perf_counter()
        yield firewall.apply(sandboxes)
        out["first apply"] = [time.perf_counter() - t0]
        first = sandboxes[0]
        extra = Forward(spare_port, 81)
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            yield firewall.add_forward(first.project, first.name, extra)
            out["add"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            yield firewall.remove_forward(first.project, first.name, extra)
            out["remove"].append(time.perf_counter() - t0)
        for _ in range(max(5, ROUNDS // 5)):
            t0 = time.perf_counter()
            yield firewall.apply(sandboxes)
            out["rebuild"].append(time.perf_counter() - t0)
        for i in range(ROUNDS):
            proc = _netns()
            procs.append(proc)
            address = pool.allocate()
            t0 = time.perf_counter()
            yield network.attach(proc.pid, f"a{i:07x}", address)
            out["attach"].append(time.perf_counter() - t0)
            proc.kill()
            proc.wait()
            procs.remove(proc)
            pool.release(address)
        yield firewall.teardown_all()

    try:
        task.react(main)
    except SystemExit as e:
        if e.code:
            raise
    return out


def run() -> list[tuple[str, dict, dict]]:
    config, pool, sandboxes, spare = _world()
    procs: list = []
    try:
        floor = _floor(config, sandboxes, spare, procs)
        _cleanup(config.prefix, config.link_prefix, procs)
        ours = _bolt(config, pool, sandboxes, spare, procs)
    finally:
        _cleanup(config.prefix, config.link_prefix, procs)
    n = f"{FORWARDS} fwds/{SANDBOXES} sb"
    return [
        (f"forward add (adapter, {n})", summary(ours["add"]), summary(floor["add"])),
        (f"forward remove (adapter, {n})", summary(ours["remove"]), summary(floor["remove"])),
        (f"firewall rebuild (adapter, {n})", summary(ours["rebuild"]), summary(floor["rebuild"])),
        ("sandbox link attach (adapter)", summary(ours["attach"]), summary(floor["attach"])),
    ]


def main() -> int:
    if os.geteuid() != 0:
        print("this benchmark needs root (iptables, namespaces)", file=sys.stderr)
        return 1
    rows = run()
    print(f"\nBolt firewall benchmarks on {platform.node()}: {os.cpu_count()} cores, {platform.release()}\n")
    print(f"{'figure':40} {'bolt p50':>10} {'bolt p99':>10} {'floor p50':>10} {'floor p99':>10} {'ratio p50':>10}")
    for name, ours, base in rows:
        ratio = ours["p50"] / base["p50"] if base["p50"] else float("nan")
        print(f"{name:40} {ours['p50'] * 1000:8.2f}ms {ours['p99'] * 1000:8.2f}ms "
              f"{base['p50'] * 1000:8.2f}ms {base['p99'] * 1000:8.2f}ms {ratio:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
