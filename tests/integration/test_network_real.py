"""Sandbox links and firewall against the real kernel: veths, namespaces, iptables (nf_tables), traffic.

Each test builds a small world and tears it down again:

* three fake sandboxes -- ``unshare --net sleep 600``, whose pid stands for a sandbox's pid 1 -- two in
  project ``p1`` (A, B) and one in ``p2`` (C), attached with :class:`Network` from a random /24;
* an "outside" client: another namespace joined to the host by a test veth with addresses from
  198.18.0.0/15 (the benchmarking range), standing in for another host on the LAN, so forwards are
  exercised through nat PREROUTING as for a real remote client, and outbound traffic has somewhere
  to go that is not the real network;
* small Python echo servers (TCP: answer the peer's address; UDP: log it) inside those namespaces
  and on the host's loopback.

Traffic goes only to loopback or to addresses inside the namespaces the test made.  The chain prefix
(``BT<random>``), the link prefix (``t<random>``) and the ports are random, so nothing real is touched
and parallel runs do not meet.  Cleanup is registered before anything is made and does not use the
adapters: it kills the processes (which takes their namespaces and links with them), deletes any link
with the test's prefixes, every chain with the test's prefix and the jumps into them, and the pool's
route -- also when a test fails.  No host-wide sysctl is changed: instead of ``net.ipv4.ip_forward``
(which :meth:`Network.setup` sets in production) the test turns on ``forwarding`` for its own links
only, which is what the kernel consults for a packet arriving on them; per-link sysctls go with the
links.

Skips when not root, except with CI=true, where not being root is a failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import secrets
import select
import socket
import subprocess
import sys
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from bolt.host.firewall import Firewall
from bolt.host.network import Network, write_proc_sys
from bolt.host.process import ReactorRunner
from bolt.netplan import AddressPool, FirewallConfig, Forward, ReverseForward, SandboxNet, link_id
from tests.integration.support import require_root, require_tools

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
TIMEOUT = 0.6  # seconds a connection attempt that must fail is given

SERVER = r"""
import select, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((host, port)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((host, port))
print("READY", flush=True)
while True:
    for s in select.select([t, u], [], [])[0]:
        if s is t:
            c, peer = t.accept()
            print("tcp", peer[0], flush=True)
            c.sendall(peer[0].encode() + b"\n"); c.close()
        else:
            data, peer = u.recvfrom(2048)
            print("udp", peer[0], data.decode(), flush=True)
"""

CLIENT = r"""
import socket, sys
mode, host, port, timeout, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
try:
    if mode == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if src: s.bind((src, 0))
        s.sendto(b"hello", (host, port)); print("SENT")
    else:
        s = socket.socket(); s.settimeout(timeout)
        if src: s.bind((src, 0))
        s.connect((host, port)); print("OK", s.makefile().readline().strip())
except Exception as e:
    print("FAIL", type(e).__name__, e)
"""


def run(*argv: str, check: bool = True, stdin: bytes | None = None) -> str:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed: {result.stderr.decode()}")
    return result.stdout.decode()


def nsenter(pid: int) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net"]


def free_port() -> int:
    for _ in range(100):
        port = random.randint(20000, 59999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port")


def read_sysctl(key: str, pid: int | None = None) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    if pid is None:
        with open(path) as f:
            return f.read().strip()
    return run(*nsenter(pid), "cat", path).strip()


def write_sysctl(key: str, value: str) -> None:
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def scrub_iptables(prefix: str) -> None:
    """Delete every chain named ``<prefix>-*`` and every built-in-chain jump into one (v4 and v6)."""
    own = prefix + "-"
    for save, restore in (("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")):
        text = run(save, check=False)
        chains: dict[str, list[str]] = {}
        jumps: dict[str, list[str]] = {}
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and line[1:].split()[0].startswith(own):
                chains.setdefault(table, []).append(line[1:].split()[0])
            elif line.startswith("-A ") and not line.split()[1].startswith(own) and f"-j {own}" in line:
                jumps.setdefault(table, []).append("-D " + line[3:])
        doc = []
        for t in sorted(set(chains) | set(jumps)):
            doc.append(f"*{t}")
            doc += [f":{c} - [0:0]" for c in chains.get(t, [])]
            doc += jumps.get(t, [])
            doc += [f"-X {c}" for c in chains.get(t, [])]
            doc.append("COMMIT")
        if doc:
            run(restore, "--noflush", stdin=("\n".join(doc) + "\n").encode())


def links_with(*prefixes: str) -> list[str]:
    out = json.loads(run("ip", "-json", "link", "show") or "[]")
    return [e["ifname"] for e in out if e["ifname"].startswith(prefixes)]


class Server:
    """An echo server in a namespace (or on the host when pid is None)."""

    def __init__(self, owner: "World", host: str, port: int, pid: int | None = None) -> None:
        argv = ([*nsenter(pid)] if pid else []) + [PYTHON, "-u", "-c", SERVER, host, str(port)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        owner.procs.append(self.proc)
        self.port = port
        self.buffer = b""
        line = self._wait_line(5.0)
        if line != "READY":
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read1(4096)!r}")

    def _wait_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def lines(self, wait: float = 0.3) -> list[str]:
        out = []
        while True:
            line = self._wait_line(wait)
            if line is None:
                return out
            out.append(line)


class World:
    """The fake sandboxes, the outside client and everything the test made, with a cleanup that
    does not rely on the adapters."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.procs: list[subprocess.Popen] = []
        self.prefix = "BT" + secrets.token_hex(3).upper()
        self.link_prefix = "t" + secrets.token_hex(2)
        self.client_link = "x" + secrets.token_hex(2) + "c"
        self.network = self._free_network()
        testcase.addCleanup(self.cleanup)
        self.pool = AddressPool(self.network)
        self.gateway = self.pool.gateway
        r = random.randint(0, 255)
        self.client_net = ipaddress.IPv4Network(f"198.18.{r}.0/30")
        self.host_outside = str(self.client_net.network_address + 1)   # the host, seen from outside
        self.client_addr = str(self.client_net.network_address + 2)    # the outside client
        self.runner = ReactorRunner(reactor)

    @staticmethod
    def _free_network() -> str:
        routes = run("ip", "-4", "route", "show", "table", "all")
        for _ in range(50):
            net = f"10.{random.randint(240, 254)}.{random.randint(0, 255)}.0/24"
            if net.rsplit(".", 2)[0] not in routes:
                return net
        raise AssertionError("no free test network")

    def netns_process(self) -> int:
        proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        self.procs.append(proc)
        host_ns = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/net") != host_ns:
                    return proc.pid
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        raise AssertionError("unshare did not make a network namespace")

    def make_client(self) -> int:
        """The outside client's namespace, joined to the host by a plain (non-sandbox) veth."""
        pid = self.netns_process()
        net = self.client_net.prefixlen
        run("ip", "-batch", "-", stdin=(
            f"link add {self.client_link} type veth peer name eth0 netns {pid}\n"
            f"addr add {self.host_outside}/{net} dev {self.client_link}\n"
            f"link set {self.client_link} up\n").encode())
        write_sysctl(f"net.ipv4.conf.{self.client_link}.forwarding", "1")
        run(*nsenter(pid), "ip", "-batch", "-", stdin=(
            "link set lo up\n"
            f"addr add {self.client_addr}/{net} dev eth0\n"
            "link set eth0 up\n"
            f"route add default via {self.host_outside}\n").encode())
        return pid

    def probe(self, host: str, port: int, pid: int | None = None, src: str = "",
              timeout: float = TIMEOUT) -> str | None:
        """Connect (TCP) and return the address the server saw, or None when the connection fails."""
        if pid is None:
            try:
                with socket.create_connection((host, port), timeout=timeout) as s:
                    s.settimeout(2)
                    return s.makefile().readline().strip() or None
            except OSError:
                return None
        out = run(*nsenter(pid), PYTHON, "-c", CLIENT, "tcp", host, str(port), str(timeout), src).strip()
        return out.split()[1] if out.startswith("OK ") else None

    def send_udp(self, pid: int, host: str, port: int, src: str = "") -> None:
        out = run(*nsenter(pid), PYTHON, "-c", CLIENT, "udp", host, str(port), "1", src)
        assert out.startswith("SENT"), out

    def cleanup(self) -> None:
        problems = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"process {proc.pid} did not end")
            for pipe in (proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()
        for name in links_with(self.link_prefix, self.client_link):
            run("ip", "link", "del", name, check=False)
        scrub_iptables(self.prefix)
        run("ip", "route", "del", "unreachable", self.network, "metric", "4294967295", check=False)
        left = links_with(self.link_prefix, self.client_link)
        if left:
            problems.append(f"links left: {left}")
        if self.network.rsplit(".", 1)[0] + "." in run("ip", "-4", "route", "show", "table", "all"):
            problems.append(f"routes into {self.network} left")
        if self.prefix + "-" in run("iptables-save") + run("ip6tables-save"):
            problems.append(f"chains {self.prefix}-* left")
        if problems:
            raise AssertionError("; ".join(problems))


def saved() -> str:
    return run("iptables-save")


class NetworkTestBase(unittest.TestCase):
    timeout = 120

    def setUp(self):
        require_root(self)
        require_tools(self, "ip", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore",
                      "nsenter", "unshare", "sysctl")
        self.world = World(self)
        w = self.world
        self.config = FirewallConfig(network=w.network, prefix=w.prefix, link_prefix=w.link_prefix)
        self.global_sysctls: list[tuple[str, str]] = []
        self.network = Network(w.runner, pool=w.pool, link_prefix=w.link_prefix, sysctl=self.sysctl)
        self.firewall = Firewall(w.runner, self.config)

    def sysctl(self, key: str, value: str) -> None:
        """Per-link sysctls are written for real; the one global one (ip_forward) is only recorded, and
        forwarding is turned on per link instead (the kernel asks the input interface), so the test
        changes nothing host-wide and parallel runs cannot undo each other's settings."""
        if key.startswith("net.ipv4.conf.") or key.startswith("net.ipv6.conf."):
            write_proc_sys(key, value)
        else:
            self.global_sysctls.append((key, value))

    @defer.inlineCallbacks
    def make_sandbox(self, project: str, name: str, forwards=(), reverse=()):
        w = self.world
        pid = w.netns_process()
        address = w.pool.allocate()
        ident = link_id(project, name + w.prefix)
        link = yield self.network.attach(pid, ident, address)
        write_sysctl(f"net.ipv4.conf.{link}.forwarding", "1")
        sb = SandboxNet(project, name, address, link, tuple(forwards), tuple(reverse))
        return pid, sb, ident


class LinkTests(NetworkTestBase):
    """The Network adapter: links, addresses, routes, sysctls."""

    @defer.inlineCallbacks
    def test_attach_configures_both_ends_and_detach_removes_them(self):
        w = self.world
        yield self.network.setup()
        self.assertEqual(self.global_sysctls, [("net.ipv4.ip_forward", "1")])
        self.assertIn(f"unreachable {w.network} metric 4294967295", run("ip", "route", "show"))
        t0 = time.perf_counter()
        pid, sb, ident = yield self.make_sandbox("p1", "a")
        elapsed = time.perf_counter() - t0
        host = sb.link
        self.assertEqual(host, w.link_prefix + ident)

        inside = json.loads(run(*nsenter(pid), "ip", "-json", "addr", "show"))
        by_name = {e["ifname"]: e for e in inside}
        self.assertEqual(set(by_name), {"lo", "eth0"})
        self.assertIn("UP", by_name["lo"]["flags"])
        self.assertIn("UP", by_name["eth0"]["flags"])
        self.assertEqual([(a["family"], a["local"], a["prefixlen"]) for a in by_name["eth0"]["addr_info"]],
                         [("inet", sb.address, 32)])
        routes = run(*nsenter(pid), "ip", "-4", "route", "show")
        self.assertIn(f"default via {w.gateway} dev eth0", routes)
        self.assertIn(f"{w.gateway} dev eth0 scope link", routes)
        self.assertIn(f"{sb.address} dev {host}", run("ip", "-4", "route", "show"))
        host_addrs = json.loads(run("ip", "-json", "addr", "show", "dev", host))[0]["addr_info"]
        self.assertEqual([(a["family"], a["local"], a["prefixlen"]) for a in host_addrs],
                         [("inet", w.gateway, 32)])

        # sysctls: per link on the host, IPv6 off inside
        self.assertEqual(read_sysctl(f"net.ipv4.conf.{host}.route_localnet"), "1")
        self.assertEqual(read_sysctl("net.ipv4.conf.all.route_localnet"), "0")
        self.assertEqual(read_sysctl("net.ipv4.conf.default.route_localnet"), "0")
        self.assertEqual(read_sysctl("net.ipv4.conf.eth0.route_localnet", pid), "1")
        if os.path.exists("/proc/net/if_inet6"):
            self.assertEqual(read_sysctl(f"net.ipv6.conf.{host}.disable_ipv6"), "1")
            self.assertEqual(read_sysctl("net.ipv6.conf.all.disable_ipv6", pid), "1")
            self.assertEqual(read_sysctl("net.ipv6.conf.eth0.disable_ipv6", pid), "1")

        links = yield self.network.list_links()
        self.assertEqual(links, [ident])
        deleted = yield self.network.detach(ident)
        self.assertTrue(deleted)
        # the address is not routed anywhere now: the pool's catch-all route answers "unreachable"
        result = subprocess.run(["ip", "-4", "route", "get", sb.address], capture_output=True, text=True)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("No route to host", result.stderr)
        self.assertEqual(links_with(w.link_prefix), [])
        self.assertNotIn(f"{sb.address} dev", run("ip", "-4", "route", "show"))
        again = yield self.network.detach(ident)
        self.assertFalse(again)
        links = yield self.network.list_links()
        self.assertEqual(links, [])
        print(f"\n    attach took {elapsed * 1000:.1f} ms", file=sys.stderr)

    @defer.inlineCallbacks
    def test_link_goes_with_the_namespace(self):
        w = self.world
        pid, sb, ident = yield self.make_sandbox("p1", "a")
        proc = next(p for p in w.procs if p.pid == pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while links_with(w.link_prefix) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(links_with(w.link_prefix), [])
        gone = yield self.network.detach(ident)
        self.assertFalse(gone)

    @defer.inlineCallbacks
    def test_failed_attach_leaves_no_link(self):
        w = self.world
        pid = w.netns_process()
        yield self.network.attach(pid, "0000000a", w.pool.allocate())
        # a second link into the same namespace fails (eth0 exists there): nothing is left of it
        with self.assertRaises(Exception):
            yield self.network.attach(pid, "0000000b", w.pool.allocate())
        links = yield self.network.list_links()
        self.assertEqual(links, ["0000000a"])


class FirewallTests(NetworkTestBase):
    """Forwards, reverse forwards, isolation, spoofing, outbound, rebuild, teardown."""

    @defer.inlineCallbacks
    def setUp(self):
        NetworkTestBase.setUp(self)
        w = self.world
        yield self.network.setup()
        self.port_a = free_port()          # A's server port inside A (also B's and C's)
        self.forward_port = free_port()    # host port forwarded to A
        self.host_port = free_port()       # a host service on 127.0.0.1, reverse-forwarded to A
        self.rev_port = free_port()        # ...reached inside A at 127.0.0.1:rev_port and gw:rev_port
        self.private_port = free_port()    # a host service on 127.0.0.1, not forwarded
        self.public_port = free_port()     # a host service on 0.0.0.0, not forwarded
        self.client_port = free_port()     # the outside client's server
        self.client_pid = w.client_pid = w.make_client()
        self.pid_a, a, _ = yield self.make_sandbox(
            "p1", "a", [Forward(self.forward_port, self.port_a)], [ReverseForward(self.rev_port, self.host_port)])
        self.pid_b, b, _ = yield self.make_sandbox("p1", "b")
        self.pid_c, c, _ = yield self.make_sandbox("p2", "c")
        self.sb = {"a": a, "b": b, "c": c}
        yield self.firewall.apply([a, b, c])
        yield self.firewall.apply_inside(self.pid_a, a)
        yield self.firewall.apply_inside(self.pid_b, b)
        yield self.firewall.apply_inside(self.pid_c, c)
        self.server = {n: Server(w, "0.0.0.0", self.port_a, pid)
                       for n, pid in (("a", self.pid_a), ("b", self.pid_b), ("c", self.pid_c))}
        self.host_server = Server(w, "127.0.0.1", self.host_port)
        self.private_server = Server(w, "127.0.0.1", self.private_port)
        self.public_server = Server(w, "0.0.0.0", self.public_port)
        self.client_server = Server(w, "0.0.0.0", self.client_port, self.client_pid)

    def addr(self, name: str) -> str:
        return self.sb[name].address

    def assert_forward_works(self):
        w = self.world
        self.assertEqual(w.probe("127.0.0.1", self.forward_port), w.gateway)        # 127 client: SNAT to gw
        self.assertEqual(w.probe(w.gateway, self.forward_port), w.gateway)          # host-local, other address
        self.assertEqual(w.probe(w.host_outside, self.forward_port), w.host_outside)
        self.assertEqual(w.probe(w.host_outside, self.forward_port, w.client_pid), w.client_addr)

    def test_forward_reaches_the_sandbox_from_every_host_address(self):
        self.assert_forward_works()
        w = self.world
        # only through the forward: the outside client cannot reach the sandbox address itself
        self.assertIsNone(w.probe(self.addr("a"), self.port_a, w.client_pid))
        # a sandbox of the same project may use the forward (hairpin for A itself), another project not
        self.assertEqual(w.probe(w.gateway, self.forward_port, self.pid_b), self.addr("b"))
        self.assertEqual(w.probe(w.host_outside, self.forward_port, self.pid_a), w.gateway)
        self.assertIsNone(w.probe(w.host_outside, self.forward_port, self.pid_c))

    def test_reverse_forward_reaches_host_loopback_and_nothing_else(self):
        w = self.world
        a = self.addr("a")
        self.assertEqual(w.probe("127.0.0.1", self.rev_port, self.pid_a), a)
        self.assertEqual(w.probe(w.gateway, self.rev_port, self.pid_a), a)
        self.assertEqual(self.host_server.lines(), [f"tcp {a}", f"tcp {a}"])
        # not forwarded: loopback-only and public host services stay out of reach, at any address
        for port in (self.private_port, self.public_port, self.host_port):
            self.assertIsNone(w.probe("127.0.0.1", port, self.pid_a))
            self.assertIsNone(w.probe(w.gateway, port, self.pid_a))
        self.assertIsNone(w.probe(w.host_outside, self.public_port, self.pid_a))
        # another sandbox does not get A's reverse forward
        self.assertIsNone(w.probe(w.gateway, self.rev_port, self.pid_b))
        self.assertIsNone(w.probe("127.0.0.1", self.rev_port, self.pid_b))
        self.assertEqual(self.private_server.lines(), [])
        self.assertEqual(self.public_server.lines(), [])
        self.assertEqual(self.host_server.lines(), [])

    def test_projects_are_isolated(self):
        w = self.world
        self.assertEqual(w.probe(self.addr("b"), self.port_a, self.pid_a), self.addr("a"))
        self.assertEqual(w.probe(self.addr("a"), self.port_a, self.pid_b), self.addr("b"))
        self.assertIsNone(w.probe(self.addr("c"), self.port_a, self.pid_a))
        self.assertIsNone(w.probe(self.addr("a"), self.port_a, self.pid_c))
        self.assertIsNone(w.probe(self.addr("b"), self.port_a, self.pid_c))
        self.assertEqual(self.server["c"].lines(), [])

    def test_spoofed_sources_are_dropped(self):
        w = self.world
        a, b, c = self.addr("a"), self.addr("b"), self.addr("c")
        # A claims C's address (C is in another project) and sends to B, which A may otherwise reach
        run(*nsenter(self.pid_a), "ip", "addr", "add", f"{c}/32", "dev", "eth0")
        w.send_udp(self.pid_a, b, self.port_a)
        w.send_udp(self.pid_a, b, self.port_a, src=c)
        w.send_udp(self.pid_a, w.client_addr, self.client_port, src=c)
        self.assertEqual(self.server["b"].lines(), [f"udp {a} hello"])
        self.assertEqual(self.client_server.lines(), [])
        self.assertIsNone(w.probe(b, self.port_a, self.pid_a, src=c))
        self.assertEqual(self.server["b"].lines(), [])

    def test_loopback_is_not_reachable_through_a_sandbox_link(self):
        """route_localnet is on for sandbox links, yet a sandbox that routes 127.0.0.0/8 to the host
        reaches nothing there: raw PREROUTING drops it before anything else sees it."""
        w = self.world
        a = self.addr("a")
        target = Server(w, "127.0.0.2", free_port())
        ns = nsenter(self.pid_a)
        run(*ns, "ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
        run(*ns, "ip", "route", "add", "127.0.0.2/32", "via", w.gateway, "dev", "eth0", "src", a)
        before = self.raw_drop_count()
        self.assertIsNone(w.probe("127.0.0.2", target.port, self.pid_a, src=a))
        self.assertGreater(self.raw_drop_count(), before)
        self.assertEqual(target.lines(), [])

    def raw_drop_count(self) -> int:
        out = run("iptables", "-t", "raw", "-L", f"{self.world.prefix}-RAW", "-v", "-x", "-n")
        for line in out.splitlines():
            if "127.0.0.0/8" in line and "DROP" in line:
                return int(line.split()[0])
        raise AssertionError(out)

    @defer.inlineCallbacks
    def test_outbound_is_masqueraded_and_can_be_cut(self):
        w = self.world
        self.assertEqual(w.probe(w.client_addr, self.client_port, self.pid_a), w.host_outside)
        off = Firewall(w.runner, FirewallConfig(network=w.network, prefix=w.prefix, link_prefix=w.link_prefix,
                                                outbound=False))
        yield off.apply(self.sb.values())
        self.assertIsNone(w.probe(w.client_addr, self.client_port, self.pid_a))
        self.assertNotIn("MASQUERADE", "\n".join(l for l in saved().splitlines() if w.prefix in l))
        # cutting outbound leaves forwards and same-project traffic alone
        self.assert_forward_works()
        self.assertEqual(w.probe(self.addr("b"), self.port_a, self.pid_a), self.addr("a"))
        yield self.firewall.apply(self.sb.values())
        self.assertEqual(w.probe(w.client_addr, self.client_port, self.pid_a), w.host_outside)

    @defer.inlineCallbacks
    def test_apply_restores_everything_after_a_flush(self):
        w = self.world
        p = w.prefix
        run("iptables", "-t", "nat", "-F", f"{p}-PREROUTING")
        run("iptables", "-t", "nat", "-F", f"{p}-FORWARDS")
        run("iptables", "-t", "nat", "-D", "OUTPUT", "-m", "comment", "--comment", "bolt", "-j", f"{p}-OUTPUT")
        run("iptables", "-t", "filter", "-F", f"{p}-FORWARD")
        run("iptables", "-t", "raw", "-D", "PREROUTING", "-m", "comment", "--comment", "bolt", "-j", f"{p}-RAW")
        self.assertIsNone(w.probe("127.0.0.1", self.forward_port))
        self.assertIsNone(w.probe(w.host_outside, self.forward_port, w.client_pid))
        # leftovers of an earlier state: a rule of a gone sandbox, a gone project's chain, an old chain
        run("iptables", "-t", "nat", "-A", f"{p}-FORWARDS", "-p", "tcp", "--dport", "1", "-m", "comment",
            "--comment", "bolt:gone/x", "-j", "DNAT", "--to-destination", f"{self.addr('c')}:1")
        run("iptables", "-t", "filter", "-N", f"{p}-PJ-000000000000")
        run("iptables", "-t", "filter", "-A", f"{p}-PJ-000000000000", "-m", "comment", "--comment", "bolt:gone/x",
            "-j", "ACCEPT")
        run("iptables", "-t", "nat", "-N", f"{p}-OLD")
        run("iptables", "-t", "nat", "-I", "PREROUTING", "1", "-j", f"{p}-OLD")

        yield self.firewall.apply(self.sb.values())
        self.assert_forward_works()
        text = saved()
        self.assertNotIn("bolt:gone/x", text)
        self.assertNotIn(f"{p}-PJ-000000000000", text)
        self.assertNotIn(f"{p}-OLD", text)
        for builtin, chain in (("PREROUTING", "RAW"), ("INPUT", "INPUT"), ("FORWARD", "FORWARD"),
                               ("PREROUTING", "PREROUTING"), ("OUTPUT", "OUTPUT"),
                               ("POSTROUTING", "POSTROUTING")):
            self.assertEqual(len(re.findall(rf"^-A {builtin} .*-j {p}-{chain}$", text, re.M)), 1, chain)
        # applying again changes nothing
        yield self.firewall.apply(self.sb.values())
        self.assertEqual(self.rules_of(saved()), self.rules_of(text))
        self.assert_forward_works()

    def rules_of(self, text: str) -> list[str]:
        return [l for l in text.splitlines() if self.world.prefix in l and not l.startswith("#")]

    @defer.inlineCallbacks
    def test_incremental_changes_and_teardown_leave_no_tagged_rule(self):
        w = self.world
        extra_port = free_port()
        extra = Forward(extra_port, self.port_a)
        yield self.firewall.add_forward("p1", "b", extra)
        self.assertEqual(w.probe("127.0.0.1", extra_port), w.gateway)
        self.assertEqual(self.server["b"].lines(), [f"tcp {w.gateway}"])
        yield self.firewall.remove_forward("p1", "b", extra)
        self.assertIsNone(w.probe("127.0.0.1", extra_port))
        self.assertNotIn(f"--dport {extra_port}", saved())
        # the incremental result equals a full rebuild of the same state
        incremental = self.rules_of(saved())
        yield self.firewall.apply(self.firewall.sandboxes.values())
        self.assertEqual(sorted(self.rules_of(saved())), sorted(incremental))

        # reverse forward added later: host half incrementally, inside half rebuilt
        rev = ReverseForward(self.rev_port, self.host_port)
        yield self.firewall.add_reverse_forward("p1", "b", rev)
        yield self.firewall.apply_inside(self.pid_b, self.firewall.sandboxes[("p1", "b")])
        self.assertEqual(w.probe("127.0.0.1", self.rev_port, self.pid_b), self.addr("b"))
        yield self.firewall.remove_reverse_forward("p1", "b", rev)
        yield self.firewall.apply_inside(self.pid_b, self.firewall.sandboxes[("p1", "b")])
        self.assertIsNone(w.probe(w.gateway, self.rev_port, self.pid_b))
        self.assertIsNone(w.probe("127.0.0.1", self.rev_port, self.pid_b))
        self.assertNotIn(f"--dport {self.rev_port}", run(*nsenter(self.pid_b), "iptables-save"))

        # a sandbox's teardown leaves no rule with its tag, and its project's chain goes with the last one
        project2 = self.config.project_chain("p2")
        self.assertIn(project2, saved())
        yield self.firewall.remove_sandbox("p2", "c")
        yield self.network.detach(self.sb["c"].link[len(w.link_prefix):])
        text = saved()
        self.assertNotIn("bolt:p2/c", text)
        self.assertNotIn(project2, text)
        # C's address now leads nowhere, quickly (the pool route), not out of the host
        t0 = time.monotonic()
        self.assertIsNone(w.probe(self.addr("c"), self.port_a, timeout=5))
        self.assertLess(time.monotonic() - t0, 1)
        yield self.firewall.remove_sandbox("p1", "a")
        self.assertNotIn("bolt:p1/a", saved())
        self.assertIsNone(w.probe("127.0.0.1", self.forward_port))
        # B still works after its neighbours left (the shared gateway address included)
        yield self.firewall.add_forward("p1", "b", extra)
        self.assertEqual(w.probe(w.host_outside, extra_port, w.client_pid), w.client_addr)
        yield self.firewall.set_sandbox(self.sb["a"])
        self.assert_forward_works()

        yield self.firewall.teardown_all()
        self.assertNotIn(w.prefix + "-", run("iptables-save") + run("ip6tables-save"))
        yield self.firewall.teardown_all()  # nothing left to remove: still fine

    @defer.inlineCallbacks
    def test_incremental_change_falls_back_to_rebuild(self):
        w = self.world
        run("iptables", "-t", "nat", "-F", f"{w.prefix}-FORWARDS")  # the -D of the next change finds nothing
        yield self.firewall.remove_forward("p1", "a", Forward(self.forward_port, self.port_a))
        extra_port = free_port()
        yield self.firewall.add_forward("p1", "a", Forward(extra_port, self.port_a))
        self.assertEqual(w.probe("127.0.0.1", extra_port), w.gateway)
        self.assertIsNone(w.probe("127.0.0.1", self.forward_port))

    def test_ipv6_guard(self):
        if not os.path.exists("/proc/net/if_inet6"):
            raise unittest.SkipTest("no IPv6 on this host")
        text = run("ip6tables-save", "-t", "raw")
        self.assertIn(f"-A {self.world.prefix}-RAW -i {self.world.link_prefix}+ -m comment --comment bolt -j DROP",
                      text.replace('"bolt"', "bolt"))
        for pid in (self.pid_a, self.pid_b):
            self.assertEqual(json.loads(run(*nsenter(pid), "ip", "-6", "-json", "addr", "show")), [])
