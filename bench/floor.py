"""The floor of a sandbox's life: the host work of a create and a delete, done directly by a script.

:class:`FloorHost` does, with plain ``subprocess``/``os`` calls and no reactor, what Bolt's create does
on the host (see ``Manager.create_sandbox``), step by step:

1. ``rootfs``: mkdir ``upper``/``work``/``rootfs`` and the ``lower`` symlink, ``mount -t overlay``
   with the same options, run in the sandbox's directory like Bolt does;
2. ``cgroups``: mkdir of the sandbox's cgroup in every hierarchy Bolt uses (the project's, with its
   limits, is made once beforehand);
3. ``namespaces``: ``bolt-sandbox init`` itself (the helper Bolt runs: it joins the cgroups,
   unshares mount, UTS, IPC, net, cgroup and pid namespaces, builds /proc, /dev, pivots and drops
   capabilities), reading its ``READY <pid>``;
4. ``link``: the veth with its peer in the new namespace, addresses and routes (``ip -batch`` on the
   host, two ``/proc/sys`` writes, ``nsenter --net sysctl`` and ``nsenter --net ip -batch`` inside);
5. ``iptables``: the same incremental ``iptables-restore --noflush`` document for the sandbox's host
   rules, then ``iptables-save``/``iptables-restore`` inside its namespace (rendered by
   :mod:`bolt.netplan`, as the server's adapter renders them);
6. ``state``: one atomic, fsynced write of a small JSON file (Bolt persists the project).

A delete: state write, SIGTERM to pid 1 and wait for it to end (a pidfd: no polling), ``ip link
del``, the sandbox's host rules removed, cgroup directories removed, ``umount`` and ``rm -r``, state
write.  Everything is named with a random prefix and removed by :meth:`FloorHost.cleanup`, also
after a failure half-way.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time

from bolt.atomic import atomic_write
from bolt.host.cgroups import detect
from bolt.host.native import binary_path
from bolt.netplan import FirewallConfig, SandboxNet, parse_save, render, render_inside, render_update

STEPS = ("rootfs", "cgroups", "namespaces", "link", "iptables", "state")
RESTORE = ["iptables-restore", "-w", "--noflush"]


def attach_link(pid: int, link: str, address: str, gateway: str) -> None:
    """What Bolt's network adapter does for a sandbox, scripted: a veth from the host into the netns
    of ``pid`` (eth0 there), a /32 each side with routes, route_localnet, IPv6 off."""
    ns = ["nsenter", f"--net=/proc/{pid}/ns/net"]
    subprocess.run(["ip", "-batch", "-"], check=True, input=(
        f"link add {link} type veth peer name eth0 netns {pid}\naddr add {gateway}/32 dev {link}\n"
        f"link set {link} up\nroute add {address}/32 dev {link}\n").encode())
    for key in (f"net/ipv4/conf/{link}/route_localnet", f"net/ipv6/conf/{link}/disable_ipv6"):
        with open("/proc/sys/" + key, "w") as f:
            f.write("1")
    subprocess.run([*ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.conf.eth0.route_localnet=1"], check=True)
    subprocess.run([*ns, "ip", "-batch", "-"], check=True, input=(
        f"link set lo up\naddr add {address}/32 dev eth0\nlink set eth0 up\n"
        f"route add {gateway}/32 dev eth0 scope link\nroute add default via {gateway} dev eth0\n").encode())


def _free_network() -> str:
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for _ in range(200):
        net = f"10.252.{secrets.randbelow(256)}.0"
        if net.rsplit(".", 1)[0] + "." not in routes:
            return net + "/24"
    raise RuntimeError("no free 10.252.x.0/24 for the floor's sandboxes")


class FloorSandbox:
    def __init__(self, index: int, base: str, cgroup_dirs: list[str], link: str, address: str) -> None:
        self.index = index
        self.base = base
        self.cgroup_dirs = cgroup_dirs
        self.link = link
        self.address = address
        self.pid: int | None = None
        self.net: SandboxNet | None = None


class FloorHost:
    """Creates and deletes floor sandboxes over ``image``; ``steps`` collects per-step timings."""

    def __init__(self, image: str) -> None:
        self.image = image
        tag = secrets.token_hex(3)
        self.top = tempfile.mkdtemp(prefix="bolt-bench-floor-")
        os.chmod(self.top, 0o750)
        self.state = os.path.join(self.top, "project.json")
        self.binary = binary_path()
        self.cgroup_name = f"bolt-bf{tag}"
        self.link_prefix = "bf" + tag[:4]
        self.network = _free_network()
        self.config = FirewallConfig(network=self.network, prefix="BF" + tag.upper(), link_prefix=self.link_prefix)
        self.gateway = self.config.gateway
        self.sandboxes: dict[int, FloorSandbox] = {}
        self.current: dict[tuple[str, str], SandboxNet] = {}
        self.steps: dict[str, list[float]] = {s: [] for s in STEPS}
        self.delete_steps: dict[str, list[float]] = {s: [] for s in STEPS}
        with open("/proc/self/mountinfo") as f:
            layout = detect(f.read())
        if layout.version == 2:
            self.roots = [layout.unified]
        else:
            self.roots = []
            for root in (layout.cpu, layout.cpuacct, layout.memory, layout.pids):
                if root and root not in self.roots:
                    self.roots.append(root)
        self.version = layout.version
        self._setup()

    # -- once --------------------------------------------------------------------------------------

    def _setup(self) -> None:
        for root in self.roots:
            os.makedirs(os.path.join(root, self.cgroup_name, "p"))
        if self.version == 2:
            top = os.path.join(self.roots[0], self.cgroup_name)
            for d in (top,):
                with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
                    f.write("+cpu +memory +pids")
        subprocess.run(["ip", "route", "replace", "unreachable", self.network, "metric", "4294967295"], check=True)
        subprocess.run(RESTORE, input=render(self.config, []).encode(), check=True)

    # -- create ------------------------------------------------------------------------------------

    def _step(self, table: dict[str, list[float]], name: str, t0: float) -> float:
        now = time.perf_counter()
        table[name].append(now - t0)
        return now

    def create(self, index: int) -> FloorSandbox:
        base = os.path.join(self.top, f"s{index}")
        link = f"{self.link_prefix}{index:08x}"
        address = f"{self.network.rsplit('.', 1)[0]}.{index + 2}"
        sb = FloorSandbox(index, base, [os.path.join(r, self.cgroup_name, "p", f"s{index}") for r in self.roots],
                          link, address)
        self.sandboxes[index] = sb
        t0 = time.perf_counter()
        os.mkdir(base, 0o750)
        os.mkdir(os.path.join(base, "upper"), 0o755)
        os.mkdir(os.path.join(base, "work"), 0o750)
        os.mkdir(os.path.join(base, "rootfs"), 0o750)
        os.symlink(self.image, os.path.join(base, "lower"))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "lowerdir=lower,upperdir=upper,workdir=work,index=off,metacopy=off", "rootfs"],
                       cwd=base, check=True)
        t0 = self._step(self.steps, "rootfs", t0)
        for d in sb.cgroup_dirs:
            os.mkdir(d)
        t0 = self._step(self.steps, "cgroups", t0)
        argv = [self.binary, "init", "--rootfs", os.path.join(base, "rootfs"), "--hostname", f"s{index}"]
        for d in sb.cgroup_dirs:
            argv += ["--cgroup-procs", os.path.join(d, "cgroup.procs")]
        out = subprocess.run(argv, capture_output=True, check=True, env={}).stdout.decode()
        sb.pid = int(out.split()[1])
        t0 = self._step(self.steps, "namespaces", t0)
        ns = ["nsenter", f"--net=/proc/{sb.pid}/ns/net"]
        attach_link(sb.pid, link, address, self.gateway)
        t0 = self._step(self.steps, "link", t0)
        sb.net = SandboxNet("p", f"s{index}", address, link)
        subprocess.run(RESTORE, check=True, input=render_update(self.config, self.current, sb.net.key, sb.net).encode())
        self.current[sb.net.key] = sb.net
        saved = subprocess.run([*ns, "iptables-save"], capture_output=True, check=True).stdout.decode()
        inside = render_inside(self.config, sb.net, parse_save(saved, self.config.prefix))
        subprocess.run([*ns, *RESTORE], check=True, input=inside.encode())
        t0 = self._step(self.steps, "iptables", t0)
        self._save()
        self._step(self.steps, "state", t0)
        return sb

    def _save(self) -> None:
        doc = {"name": "p", "sandboxes": {f"s{i}": {"pid": s.pid, "address": s.address, "link": s.link}
                                          for i, s in self.sandboxes.items()}}
        atomic_write(self.state, json.dumps(doc).encode())

    # -- delete ------------------------------------------------------------------------------------

    def delete(self, index: int) -> None:
        sb = self.sandboxes[index]
        t0 = time.perf_counter()
        self._save()
        t0 = self._step(self.delete_steps, "state", t0)
        self._stop(sb.pid)
        t0 = self._step(self.delete_steps, "namespaces", t0)
        # Usually gone with the namespace already; Bolt runs the command anyway (detach is idempotent).
        subprocess.run(["ip", "link", "del", sb.link], check=False, stderr=subprocess.DEVNULL)
        t0 = self._step(self.delete_steps, "link", t0)
        subprocess.run(RESTORE, check=True, input=render_update(self.config, self.current, sb.net.key, None).encode())
        del self.current[sb.net.key]
        t0 = self._step(self.delete_steps, "iptables", t0)
        for d in sb.cgroup_dirs:
            os.rmdir(d)
        t0 = self._step(self.delete_steps, "cgroups", t0)
        subprocess.run(["umount", os.path.join(sb.base, "rootfs")], check=True)
        shutil.rmtree(sb.base)
        del self.sandboxes[index]
        t0 = self._step(self.delete_steps, "rootfs", t0)
        self._save()
        self._step(self.delete_steps, "state", t0)

    @staticmethod
    def _stop(pid: int | None, timeout: float = 15.0) -> None:
        if pid is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            os.kill(pid, signal.SIGTERM)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(timeout * 1000):
                os.kill(pid, signal.SIGKILL)
                poller.poll(timeout * 1000)
        finally:
            os.close(fd)

    # -- the end -----------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove everything, whatever state a failure left it in."""
        from tests.integration.server import remove_cgroup_tree, remove_chains, remove_links, unmount_below

        for sb in list(self.sandboxes.values()):
            if sb.pid:
                try:
                    os.kill(sb.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        remove_cgroup_tree(self.cgroup_name)
        remove_links(self.link_prefix)
        remove_chains(self.config.prefix + "-")
        subprocess.run(["ip", "route", "del", "unreachable", self.network, "metric", "4294967295"],
                       check=False, stderr=subprocess.DEVNULL)
        unmount_below(self.top)
        shutil.rmtree(self.top, ignore_errors=True)
        self.sandboxes.clear()
