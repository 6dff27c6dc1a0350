"""What one Bolt server owns on the host, found by the names it gives its resources, and whether
that matches what its API and its state files say.

A test server (:class:`tests.integration.server.RealServer`) has a unique root directory, cgroup
parent, instance name (link prefix, iptables chain prefix in upper case) and address pool, so its
resources can be told apart from those of every other server on the machine -- including servers
that other test runs start concurrently.  Nothing here changes the host; everything is read from
/proc, /sys/fs/cgroup, ``ip -o link`` and ``iptables-save``, as an operator would.

:func:`snapshot` collects the resources; :func:`ownership_problems` compares them with the API's
listing and the stored state (every resource belongs to a listed sandbox, every listed sandbox has
its resources); :func:`comparable` reduces a snapshot to what must be identical before and after
work that leaves nothing behind (the leak checks).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any, Iterable

CGROUP_FS = "/sys/fs/cgroup"
#: The hierarchies Bolt puts a cgroup v1 tree in (cpuacct only when mounted on its own).
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")

_TAG = re.compile(r'--comment "?bolt:([a-z0-9][a-z0-9_-]*)/([a-z0-9][a-z0-9_-]*)"?')
_DNAT = re.compile(r"--dport (\d+) .*--to-destination ([0-9.]+):(\d+)")
_COUNTERS = re.compile(r"\[\d+:\d+\]")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts_below(top: str) -> list[str]:
    """Mount points at or below ``top`` in the host's (this process's) mount namespace."""
    top = top.rstrip("/")
    found = []
    for line in read("/proc/self/mountinfo").splitlines():
        point = _unescape(line.split(" ")[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return found


def cgroup_hierarchies() -> list[str]:
    """Top directories under /sys/fs/cgroup that are real hierarchies (symlinked aliases skipped,
    as ``find`` skips them)."""
    found = []
    for name in sorted(os.listdir(CGROUP_FS)):
        path = os.path.join(CGROUP_FS, name)
        if os.path.isdir(path) and not os.path.islink(path):
            found.append(name)
    return found


def cgroup_dirs(parent: str) -> dict[str, set[str]]:
    """``find /sys/fs/cgroup -path '*/<parent>/*' -type d`` (plus the parent directories themselves),
    as {path below the parent ("" for the parent, "p", "p/s", ...): hierarchies that have it}."""
    found: dict[str, set[str]] = {}
    for hierarchy in cgroup_hierarchies():
        top = os.path.join(CGROUP_FS, hierarchy, parent)
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in os.walk(top):
            rel = os.path.relpath(dirpath, top)
            found.setdefault("" if rel == "." else rel, set()).add(hierarchy)
    if os.path.exists(os.path.join(CGROUP_FS, "cgroup.controllers")):  # a v2 host: the unified root
        top = os.path.join(CGROUP_FS, parent)
        for dirpath, _, _ in os.walk(top) if os.path.isdir(top) else ():
            rel = os.path.relpath(dirpath, top)
            found.setdefault("" if rel == "." else rel, set()).add("")
    return found


def cgroup_procs(parent: str, rel: str) -> set[int]:
    """Processes in cgroup ``<parent>/<rel>``, in any hierarchy."""
    pids: set[int] = set()
    tops = [os.path.join(CGROUP_FS, h, parent) for h in cgroup_hierarchies()] + [os.path.join(CGROUP_FS, parent)]
    for top in tops:
        try:
            text = read(os.path.join(top, rel, "cgroup.procs"))
        except OSError:
            continue
        pids.update(int(word) for word in text.split())
    return pids


def links(prefix: str) -> dict[str, str]:
    """Host interfaces whose name starts with ``prefix`` (``ip -o link``): name -> the line."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(": ", 2)
        if len(parts) < 2:
            continue
        name = parts[1].split("@")[0]
        if name.startswith(prefix):
            found[name] = line
    return found


def iptables_lines(chain_prefix: str, tool: str = "iptables") -> list[tuple[str, str]]:
    """(table, line) of every ``-A``/chain declaration in ``iptables-save`` that is one of the
    server's chains or a jump into one (counters removed)."""
    out = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=True).stdout
    table = ""
    found = []
    for line in out.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and line[1:].startswith(chain_prefix):
            found.append((table, _COUNTERS.sub("", line).strip()))
        elif line.startswith("-A ") and (line.split()[1].startswith(chain_prefix) or f"-j {chain_prefix}" in line):
            found.append((table, line))
    return found


def tagged_rules(chain_prefix: str) -> dict[tuple[str, str], list[str]]:
    """Rules in the server's chains tagged ``bolt:<project>/<sandbox>``, by (project, sandbox)."""
    rules: dict[tuple[str, str], list[str]] = {}
    for table, line in iptables_lines(chain_prefix):
        if not line.startswith("-A ") or not line.split()[1].startswith(chain_prefix):
            continue
        match = _TAG.search(line)
        if match:
            rules.setdefault((match.group(1), match.group(2)), []).append(f"{table}: {line}")
    return rules


def forwards_in_rules(rules: Iterable[str], chain_prefix: str) -> set[tuple[int, str, int]]:
    """(host port, sandbox address, container port) of the DNAT forward rules among ``rules``."""
    found = set()
    for rule in rules:
        if f"-A {chain_prefix}FORWARDS " in rule:
            match = _DNAT.search(rule)
            if match:
                found.add((int(match.group(1)), match.group(2), int(match.group(3))))
    return found


def proc_stat(pid: int) -> tuple[str, str, int, int] | None:
    """(comm, state, ppid, start time) of a process, or None."""
    try:
        text = read(f"/proc/{pid}/stat")
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    return head.split("(", 1)[1], fields[0], int(fields[1]), int(fields[19])


def alive(pid: int, start_time: int | None = None) -> bool:
    st = proc_stat(pid)
    return st is not None and st[1] not in ("Z", "X") and (start_time is None or st[3] == start_time)


def netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (zombies included), from the ppid links in /proc."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None:
            children.setdefault(st[2], []).append(pid)
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), ()):
            found.append(child)
            queue.append(child)
    return found


def fd_targets(pid: int) -> list[str]:
    found = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for name in names:
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return found


@dataclass
class Snapshot:
    """The resources that carry one server's names, at one moment."""

    mounts: list[str]
    cgroups: dict[str, set[str]]
    cgroup_pids: dict[str, set[int]]             # cgroup path below the parent -> pids in it
    links: dict[str, str]
    rules: dict[tuple[str, str], list[str]]      # (project, sandbox) -> tagged rules
    all_rules: list[tuple[str, str]]             # every line of the server's chains and jumps
    netns_of: dict[int, str]                     # pid (in its cgroups or related) -> net namespace
    related: dict[int, str]                      # processes outside its cgroups that are its own
    host_netns: str
    server_fds: list[str] = field(default_factory=list)

    def sandbox_cgroups(self) -> dict[tuple[str, str], set[str]]:
        return {tuple(rel.split("/")[:2]): hs for rel, hs in self.cgroups.items() if rel.count("/") == 1}

    def project_cgroups(self) -> dict[str, set[str]]:
        return {rel: hs for rel, hs in self.cgroups.items() if rel and "/" not in rel}


def snapshot(server) -> Snapshot:
    """Everything on the host that belongs to ``server`` by its names."""
    parent, root = server.cgroup_parent, server.root
    cgroups = cgroup_dirs(parent)
    cgroup_pids = {rel: cgroup_procs(parent, rel) for rel in cgroups}
    in_cgroups = set().union(*cgroup_pids.values()) if cgroup_pids else set()
    server_pid = server.process.pid if server.process and server.process.poll() is None else None
    related: dict[int, str] = {}
    if server_pid is not None:
        for pid in descendants(server_pid):
            if pid not in in_cgroups:
                st = proc_stat(pid)
                related[pid] = f"{st[0] if st else '?'} {st[1] if st else ''}: {cmdline(pid)[:200]}"
    for pid in all_pids():  # e.g. a helper that outlived a killed server
        if pid not in in_cgroups and pid != server_pid and pid not in related and root in cmdline(pid):
            related[pid] = cmdline(pid)[:200]
    netns_of = {pid: ns for pid in in_cgroups | set(related) if (ns := netns(pid)) is not None}
    return Snapshot(
        mounts=sorted(mounts_below(root)),
        cgroups=cgroups,
        cgroup_pids=cgroup_pids,
        links=links(server.instance),
        rules=tagged_rules(server.instance.upper() + "-"),
        all_rules=iptables_lines(server.instance.upper() + "-")
        + [("ip6:" + t, line) for t, line in iptables_lines(server.instance.upper() + "-", "ip6tables")],
        netns_of=netns_of,
        related=related,
        host_netns=netns(os.getpid()) or "",
        server_fds=fd_targets(server_pid) if server_pid else [],
    )


def stored_projects(server) -> dict[str, dict[str, Any]]:
    """The server's state files, read as they are on disk."""
    directory = os.path.join(server.data_dir, "projects")
    found = {}
    for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        if entry.endswith(".json"):
            with open(os.path.join(directory, entry)) as f:
                data = json.load(f)
            found[data["name"]] = data
    return found


def sandbox_dirs(server) -> set[tuple[str, str]]:
    top = os.path.join(server.data_dir, "sandboxes")
    found = set()
    for project in os.listdir(top) if os.path.isdir(top) else ():
        for name in os.listdir(os.path.join(top, project)):
            found.add((project, name))
    return found


def _cgroup_value(server, hierarchy: str, project: str, name: str) -> str | None:
    try:
        return read(os.path.join(CGROUP_FS, hierarchy, server.cgroup_parent, project, name)).strip()
    except OSError:
        return None


def limit_problems(server, project: str, limits: dict[str, int]) -> list[str]:
    """The project's cgroup files against the API's limits (cgroup v1 files; v2 hosts: cpu.max...)."""
    problems = []
    if os.path.exists(os.path.join(CGROUP_FS, "cgroup.controllers")):
        def v2(name):
            try:
                return read(os.path.join(CGROUP_FS, server.cgroup_parent, project, name)).strip()
            except OSError:
                return None
        found = {"cpu_quota_us": (v2("cpu.max") or "").split(" ")[0], "memory_limit_bytes": v2("memory.max"),
                 "pids_max": v2("pids.max")}
    else:
        found = {"cpu_quota_us": _cgroup_value(server, "cpu", project, "cpu.cfs_quota_us"),
                 "memory_limit_bytes": _cgroup_value(server, "memory", project, "memory.limit_in_bytes"),
                 "pids_max": _cgroup_value(server, "pids", project, "pids.max")}
        memsw = _cgroup_value(server, "memory", project, "memory.memsw.limit_in_bytes")
        if memsw is not None:
            found["memory+swap"] = memsw
    for key, value in found.items():
        want = limits["memory_limit_bytes" if key == "memory+swap" else key]
        if value != str(want):
            problems.append(f"project {project}: cgroup {key} is {value}, the API says {want}")
    return problems


def ownership_problems(server, listing: list[dict[str, Any]], snap: Snapshot | None = None) -> list[str]:
    """Compare the host with the API's listing (``GET /api/projects``) and the state files.

    Every resource carrying the server's names must belong to a listed sandbox (or project), and
    every listed sandbox must have all of its resources: a running one its mount, cgroups (with its
    pid 1 in them), link, tagged rules (forwards exactly as listed) and a network namespace of its
    own shared by all its processes; a stopped one its mount and rules, and no processes.
    """
    snap = snap or snapshot(server)
    problems: list[str] = []
    prefix = server.instance.upper() + "-"
    stored = stored_projects(server)
    projects = {p["name"]: p for p in listing}
    listed = {(p["name"], s["name"]): s for p in listing for s in p["sandboxes"]}
    running = {k for k, s in listed.items() if s["state"] == "running"}

    # The state files and the API agree (no "deleting" survives a start).
    stored_boxes = {(p, s["name"]): s for p, data in stored.items() for s in data["sandboxes"]}
    if set(stored) != set(projects):
        problems.append(f"stored projects {sorted(stored)} != listed {sorted(projects)}")
    if set(stored_boxes) != set(listed):
        problems.append(f"stored sandboxes {sorted(stored_boxes)} != listed {sorted(listed)}")
    for key, s in stored_boxes.items():
        if s["state"] not in ("running", "stopped"):
            problems.append(f"{key} is stored as {s['state']!r}")
        if key in listed and s["state"] == "running" and s["runtime"].get("pid") != listed[key].get("pid"):
            problems.append(f"{key}: stored pid {s['runtime'].get('pid')} != listed {listed[key].get('pid')}")

    # Mounts and files under the data directory.
    sandboxes_dir = os.path.realpath(os.path.join(server.data_dir, "sandboxes"))
    expected_mounts = {os.path.join(sandboxes_dir, p, s, "rootfs"): (p, s) for p, s in listed}
    for point in snap.mounts:
        if point not in expected_mounts:
            problems.append(f"mount {point} belongs to no listed sandbox")
    for point, key in expected_mounts.items():
        if point not in snap.mounts:
            problems.append(f"{key} has no root filesystem mounted at {point}")
    for key in sandbox_dirs(server) - set(listed):
        problems.append(f"sandbox directory {key} belongs to no listed sandbox")

    # Cgroups: projects and sandboxes, in every hierarchy.
    hierarchies = snap.cgroups.get("", set())
    for rel, hs in snap.cgroups.items():
        parts = tuple(rel.split("/")) if rel else ()
        if len(parts) == 1 and parts[0] not in projects:
            problems.append(f"cgroup {rel} ({sorted(hs)}) belongs to no listed project")
        if len(parts) >= 2 and (parts[:2] not in running):
            problems.append(f"cgroup {rel} ({sorted(hs)}) belongs to no listed running sandbox")
    for name in projects:
        if snap.cgroups.get(name, set()) != hierarchies or not hierarchies:
            problems.append(f"project {name} has cgroups in {sorted(snap.cgroups.get(name, set()))}, "
                            f"expected {sorted(hierarchies)}")
        problems += limit_problems(server, name, projects[name]["resource_limits"])
    for p, s in running:
        if snap.cgroups.get(f"{p}/{s}", set()) != hierarchies or not hierarchies:
            problems.append(f"{(p, s)} has cgroups in {sorted(snap.cgroups.get(f'{p}/{s}', set()))}, "
                            f"expected {sorted(hierarchies)}")

    # Processes: only in sandbox cgroups, pid 1 among them; one network namespace per sandbox.
    for rel, pids in snap.cgroup_pids.items():
        parts = tuple(rel.split("/")) if rel else ()
        live = {pid for pid in pids if alive(pid)}
        if live and (len(parts) < 2 or parts[:2] not in running):
            problems.append(f"processes {sorted(live)} in cgroup {rel!r}, which is no running sandbox's")
    seen_netns: dict[str, tuple[str, str]] = {}
    for key in running:
        s, st = listed[key], stored_boxes.get(key, {})
        pid = s.get("pid")
        start = st.get("runtime", {}).get("start_time")
        if not isinstance(pid, int) or not alive(pid, start):
            problems.append(f"{key}: pid 1 {pid} (start {start}) is not running")
            continue
        procs = snap.cgroup_pids.get(f"{key[0]}/{key[1]}", set())
        if pid not in procs:
            problems.append(f"{key}: pid 1 {pid} is not in its cgroup (which holds {sorted(procs)})")
        ns = netns(pid)
        if ns is None or ns == snap.host_netns:
            problems.append(f"{key}: pid 1 has no network namespace of its own ({ns})")
        elif ns in seen_netns:
            problems.append(f"{key} shares network namespace {ns} with {seen_netns[ns]}")
        else:
            seen_netns[ns] = key
        for other in procs:
            if alive(other) and netns(other) not in (ns, None):
                problems.append(f"{key}: process {other} ({cmdline(other)[:80]}) is in network namespace "
                                f"{netns(other)}, not its sandbox's {ns}")
        try:
            if "eth0:" not in read(f"/proc/{pid}/net/dev"):
                problems.append(f"{key}: no eth0 in its network namespace")
        except OSError as e:
            problems.append(f"{key}: cannot read its network devices: {e}")
    for key in set(listed) - running:
        if snap.cgroup_pids.get(f"{key[0]}/{key[1]}"):
            problems.append(f"stopped sandbox {key} has processes")
    for pid, what in snap.related.items():
        ns = snap.netns_of.get(pid)
        if alive(pid):
            problems.append(f"process {pid} of the server outside every sandbox cgroup: {what} (netns {ns})")
    for target in snap.server_fds:
        if target.startswith("net:") and target not in seen_netns:
            problems.append(f"the server holds network namespace {target}, which is no running sandbox's")

    # Links: one per running sandbox, named by its stored link id, and nothing else.
    want_links = {}
    for key in running:
        ident = stored_boxes.get(key, {}).get("network", {}).get("link")
        if ident:
            want_links[server.instance + ident] = key
        else:
            problems.append(f"{key} has no stored link id")
    for name, line in snap.links.items():
        if name not in want_links:
            problems.append(f"link {name} belongs to no listed running sandbox")
        elif "state UP" not in line and ",UP" not in line:
            problems.append(f"link {name} of {want_links[name]} is not up: {line}")
    for name, key in want_links.items():
        if name not in snap.links:
            problems.append(f"{key} has no link {name}")

    # iptables rules: tagged with listed sandboxes only; forwards exactly as listed.
    for key, rules in snap.rules.items():
        if key not in listed:
            problems.append(f"rules tagged bolt:{key[0]}/{key[1]} belong to no listed sandbox: {rules}")
    for key, s in listed.items():
        rules = snap.rules.get(key, [])
        if not rules:
            problems.append(f"{key} has no iptables rules")
            continue
        want = {(int(h), s.get("address"), c) for h, c in s["port_mappings"].items()}
        have = forwards_in_rules(rules, prefix)
        if want != have:
            problems.append(f"{key}: forwards listed {sorted(want)} but rules have {sorted(have)}")
    return problems


def comparable(snap: Snapshot) -> dict[str, Any]:
    """What must be identical before and after work that leaves nothing behind."""
    return {
        "mounts": sorted(snap.mounts),
        "cgroups": {rel: sorted(hs) for rel, hs in sorted(snap.cgroups.items())},
        "processes": {rel: sorted(p for p in pids if alive(p)) for rel, pids in sorted(snap.cgroup_pids.items())},
        "server children": sorted(snap.related.values()),
        "network namespaces": sorted(set(snap.netns_of.values()) | {t for t in snap.server_fds if t.startswith("net:")}),
        "links": sorted(snap.links),
        "iptables": sorted(snap.all_rules),
    }
