"""Bolt at scale: 100 idle sandboxes, 1,000 port forwards and 500 idle shell sessions in one server.

Memory per idle sandbox.  Bolt: BOLT_BENCH_SANDBOXES (default 100) sandboxes created through the
API and left idle; floor: as many made by :class:`bench.floor.FloorHost` (the same host work from a
script).  Method: the memory charged to the sandboxes' memory cgroups (``memory.usage_in_bytes`` of
the project's cgroup on v1, ``memory.current`` on v2: their processes' pages and the kernel memory
they allocated -- namespaces, page tables, the devpts and mounts pid 1 makes), 2 s after the last
create, plus for Bolt the growth of the server's RSS, divided by the count.  Not in it: the host
end of each veth, the overlay mount and the iptables rules, which ``ip``/``mount``/``iptables``
allocate outside the sandbox's cgroup.  MemAvailable (/proc/meminfo) would take in everything, but
on a host where other work runs it moves by hundreds of MiB meanwhile; the notes give its drop
anyway, and the sum of PSS (``/proc/PID/smaps_rollup``) of the sandboxes' processes.

Port forwards.  With the sandboxes running, 10 forwards each are added through the API (1,000 in
place), then BOLT_BENCH_FWD_ROUNDS (default 50) times one more is added and removed again, the add
timed.  Floor: ``iptables-restore -w --noflush`` of the very document that add applies, rendered
by :mod:`bolt.netplan` from the server's stored state, against the server's own chains.

Idle shells.  BOLT_BENCH_SESSIONS (default 500) raw sessions opened one after the other into one
sandbox, each waiting for its prompt, then held open.  Figures: the growth of the memory charged to
that sandbox's cgroup (helper + shell processes and their kernel memory) plus the server's RSS
growth, per session; and the server's RSS growth per session alone.  Floor: as many local PTYs,
each with ``nsenter --all /bin/bash -l`` into the same sandbox (moved into its cgroups before the
exec, as Bolt's helper does), held by this script.  The server runs with
max_shell_sessions(_per_sandbox) 1000 and the project with a 16 GiB / 8192-pid budget.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time

from bench.common import (BIG_LIMITS, PROMPT, PtyShell, RawShell, bench_server, ensure_image, figure, note,
                          pss_kib, read_until, rss_kib, settle_mem_available, summary)
from bench.floor import FloorHost
from bench.shell import SHELL_ENV

SANDBOXES = int(os.environ.get("BOLT_BENCH_SANDBOXES", "100"))
SESSIONS = int(os.environ.get("BOLT_BENCH_SESSIONS", "500"))
FWD_ROUNDS = int(os.environ.get("BOLT_BENCH_FWD_ROUNDS", "50"))
FORWARDS_EACH = 10
MiB = 1024


def _cgroup_pids(parent: str) -> list[int]:
    """Every process in the cgroup tree ``parent`` of the pids hierarchy (v1) or the unified one."""
    tops = [os.path.join("/sys/fs/cgroup/pids", parent), os.path.join("/sys/fs/cgroup", parent)]
    pids: set[int] = set()
    for top in tops:
        if not os.path.isdir(top):
            continue
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        pids.update(int(x) for x in f.read().split())
                except OSError:
                    pass
        break
    return sorted(pids)


def _memory_root() -> tuple[str, str]:
    """The memory hierarchy's mount point and the usage file's name in it (v1 or v2)."""
    from bolt.host.cgroups import detect

    with open("/proc/self/mountinfo") as f:
        layout = detect(f.read())
    if layout.version == 2:
        return layout.unified, "memory.current"
    return layout.memory, "memory.usage_in_bytes"


def cgroup_memory_mib(*parts: str) -> float:
    root, name = _memory_root()
    with open(os.path.join(root, *parts, name)) as f:
        return int(f.read()) / 1024 / 1024


def _procs_files(*parts: str) -> list[str]:
    """The cgroup.procs files of one cgroup in every hierarchy Bolt uses (v1) or the unified one."""
    from bolt.host.cgroups import detect

    with open("/proc/self/mountinfo") as f:
        layout = detect(f.read())
    roots = [layout.unified] if layout.version == 2 else \
        sorted({r for r in (layout.cpu, layout.cpuacct, layout.memory, layout.pids) if r})
    return [os.path.join(r, *parts, "cgroup.procs") for r in roots]


def _join(files: list[str]) -> None:
    """preexec_fn: move this (child) process into the given cgroups before it execs."""
    for path in files:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _pss_mib(pids) -> float:
    return sum(pss_kib(p) for p in pids) / MiB


# --- floors -----------------------------------------------------------------------------------------


def floor_sandboxes(image: str) -> dict[str, float]:
    host = FloorHost(image)
    try:
        before = settle_mem_available()
        charged0 = cgroup_memory_mib(host.cgroup_name)
        for i in range(SANDBOXES):
            host.create(i)
        time.sleep(2)
        after = settle_mem_available()
        pids = _cgroup_pids(host.cgroup_name)
        return {"per_sandbox": (cgroup_memory_mib(host.cgroup_name) - charged0) / SANDBOXES,
                "available": (before - after) / SANDBOXES / MiB, "pss": _pss_mib(pids) / SANDBOXES,
                "processes": len(pids)}
    finally:
        host.cleanup()


def floor_sessions(pid: int, cgroup: tuple[str, ...]) -> dict[str, float]:
    shells: list[PtyShell] = []
    procs = _procs_files(*cgroup)
    try:
        before, charged0 = settle_mem_available(), cgroup_memory_mib(*cgroup)
        for _ in range(SESSIONS):
            shell = PtyShell(["nsenter", "--target", str(pid), "--all", "/bin/bash", "-l"], SHELL_ENV,
                             preexec=lambda: _join(procs))
            shells.append(shell)
            read_until(shell, PROMPT)
        time.sleep(1)
        after, charged1 = settle_mem_available(), cgroup_memory_mib(*cgroup)
        pss = _pss_mib([s.proc.pid for s in shells] + [c for s in shells for c in _children(s.proc.pid)])
        return {"per_session": (charged1 - charged0) / SESSIONS, "available": (before - after) / SESSIONS / MiB,
                "pss": pss / SESSIONS}
    finally:
        for shell in shells:
            shell.close()


# --- bolt ---------------------------------------------------------------------------------------------


def _forward_floor(server, rounds: int) -> list[float]:
    """iptables-restore of the add document for one more forward, against the server's own chains."""
    from bolt.netplan import FirewallConfig, Forward, SandboxNet, link_name, render_update

    with open(os.path.join(server.data_dir, "projects", "bench.json")) as f:
        project = json.load(f)
    config = FirewallConfig(network=server.network, prefix=server.instance.upper(), link_prefix=server.instance)
    current = {}
    for sb in project["sandboxes"]:
        net = SandboxNet("bench", sb["name"], sb["network"]["address"], link_name(server.instance, sb["network"]["link"]),
                         tuple(Forward(int(h), c) for h, c in sb["port_mappings"].items()))
        current[net.key] = net
    key = ("bench", "s0")
    extra = current[key].with_forward(Forward(19999, 81))
    add = render_update(config, current, key, extra).encode()
    remove = render_update(config, {**current, key: extra}, key, current[key]).encode()
    argv = ["iptables-restore", "-w", "--noflush"]
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, input=add, check=True)
        samples.append(time.perf_counter() - t0)
        subprocess.run(argv, input=remove, check=True)
    return samples


def measure(image: str) -> dict[str, object]:
    out: dict[str, object] = {}
    config = {"max_shell_sessions": 1000, "max_shell_sessions_per_sandbox": 1000}
    with bench_server(config, limits=BIG_LIMITS) as (server, client):
        pid = server.process.pid
        time.sleep(1)
        project_cgroup = (server.cgroup_parent, "bench")
        rss0, avail0, charged0 = rss_kib(pid), settle_mem_available(), cgroup_memory_mib(*project_cgroup)
        creates = []
        for i in range(SANDBOXES):
            t0 = time.perf_counter()
            code, body = client.call("POST", "/api/projects/bench/sandboxes", {"name": f"s{i}"})
            creates.append(time.perf_counter() - t0)
            assert code == 201, body
        time.sleep(2)
        rss1, avail1, charged1 = rss_kib(pid), settle_mem_available(), cgroup_memory_mib(*project_cgroup)
        pids = _cgroup_pids(server.cgroup_parent)
        out["sandboxes"] = {"per_sandbox": (charged1 - charged0 + (rss1 - rss0) / MiB) / SANDBOXES,
                            "available": (avail0 - avail1) / SANDBOXES / MiB, "pss": _pss_mib(pids) / SANDBOXES,
                            "server_growth": (rss1 - rss0) / MiB, "server_rss": rss1 / MiB, "processes": len(pids),
                            "creates": creates}
        sandbox_pid = client.call("GET", "/api/projects/bench/sandboxes/s0")[1]["pid"]

        # 1,000 forwards, then one more added and removed, timed.
        port = 10000
        for i in range(SANDBOXES):
            for _ in range(FORWARDS_EACH):
                code, body = client.call("POST", f"/api/projects/bench/sandboxes/s{i}/ports",
                                         {"host_port": port, "container_port": 80})
                assert code == 200, body
                port += 1
        adds = []
        for _ in range(FWD_ROUNDS):
            t0 = time.perf_counter()
            code, body = client.call("POST", "/api/projects/bench/sandboxes/s0/ports",
                                     {"host_port": 19999, "container_port": 81})
            adds.append(time.perf_counter() - t0)
            assert code == 200, body
            code, body = client.call("DELETE", "/api/projects/bench/sandboxes/s0/ports/19999")
            assert code == 200, body
        out["forwards"] = {"bolt": adds, "floor": _forward_floor(server, FWD_ROUNDS), "count": port - 10000}

        # Idle shells: the floor's first (same sandbox, nothing of Bolt's open), then Bolt's.
        sandbox_cgroup = (server.cgroup_parent, "bench", "s0")
        # One session of each first, unmeasured: the page cache of bash and its startup files is
        # charged to the sandbox's cgroup by whoever reads it first.
        warm = PtyShell(["nsenter", "--target", str(sandbox_pid), "--all", "/bin/bash", "-l"], SHELL_ENV)
        read_until(warm, PROMPT)
        warm.close()
        code, body = client.call("POST", "/api/projects/bench/sandboxes/s0/shell")
        warm = RawShell(body["port"], body["token"])
        read_until(warm, PROMPT)
        warm.close()
        out["floor_sessions"] = floor_sessions(sandbox_pid, sandbox_cgroup)
        time.sleep(1)
        rss2, avail2, charged2 = rss_kib(pid), settle_mem_available(), cgroup_memory_mib(*sandbox_cgroup)
        shells: list[RawShell] = []
        try:
            for _ in range(SESSIONS):
                code, body = client.call("POST", "/api/projects/bench/sandboxes/s0/shell")
                assert code == 200, body
                shell = RawShell(body["port"], body["token"])
                shells.append(shell)
                read_until(shell, PROMPT)
            prompted = len(shells)
            time.sleep(1)
            rss3, avail3, charged3 = rss_kib(pid), settle_mem_available(), cgroup_memory_mib(*sandbox_cgroup)
            helpers = _children(pid)
            session_pids = helpers + [c for h in helpers for c in _children(h)]
            out["sessions"] = {"per_session": (charged3 - charged2 + (rss3 - rss2) / MiB) / SESSIONS,
                               "available": (avail2 - avail3) / SESSIONS / MiB,
                               "server_per_session": (rss3 - rss2) / SESSIONS, "server_growth": (rss3 - rss2) / MiB,
                               "pss": _pss_mib(session_pids) / SESSIONS, "prompted": prompted,
                               "server_rss": rss3 / MiB}
        finally:
            for shell in shells:
                shell.close()
    return out


def run() -> list[tuple[str, dict, dict | None]]:
    image = ensure_image()
    floor = floor_sandboxes(image)
    ours = measure(image)
    sb, ses, fsess, fwd = ours["sandboxes"], ours["sessions"], ours["floor_sessions"], ours["forwards"]
    note(f"scale: {SANDBOXES} idle sandboxes: charged to their cgroups + server growth {sb['per_sandbox']:.2f} MiB "
         f"each (floor {floor['per_sandbox']:.2f}); MemAvailable drop {sb['available']:.2f} MiB each (floor "
         f"{floor['available']:.2f}; other work on the host moves it); PSS of their processes {sb['pss']:.2f} MiB "
         f"each (floor {floor['pss']:.2f}; {sb['processes']} processes); server RSS {sb['server_rss']:.1f} MiB, "
         f"+{sb['server_growth']:.1f} MiB for the {SANDBOXES}; creates p50 "
         f"{statistics.median(sb['creates']) * 1000:.1f} ms, p99 {summary(sb['creates'])['p99'] * 1000:.1f} ms")
    note(f"scale: {ses['prompted']}/{SESSIONS} shell sessions got their prompt; charged to the sandbox's cgroup + "
         f"server growth {ses['per_session']:.2f} MiB per session (floor {fsess['per_session']:.2f}); MemAvailable "
         f"drop {ses['available']:.2f} MiB per session (floor {fsess['available']:.2f}); PSS of helper + shell "
         f"{ses['pss']:.2f} MiB per session (floor nsenter + shell {fsess['pss']:.2f}); server RSS "
         f"+{ses['server_growth']:.1f} MiB ({ses['server_per_session']:.0f} KiB per session), "
         f"{ses['server_rss']:.1f} MiB in all")
    return [
        (f"forward add (API, {fwd['count']} in place)", summary(fwd["bolt"]), summary(fwd["floor"])),
        (f"memory per idle sandbox ({SANDBOXES})", figure(sb["per_sandbox"], "MiB"), figure(floor["per_sandbox"], "MiB")),
        (f"server RSS growth, {SANDBOXES} sandboxes", figure(sb["server_growth"], "MiB"), None),
        (f"memory per idle shell ({ses['prompted']}/{SESSIONS})", figure(ses["per_session"], "MiB"),
         figure(fsess["per_session"], "MiB")),
        ("server RSS per shell session", figure(ses["server_per_session"], "KiB"), None),
    ]
