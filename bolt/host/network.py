"""Sandbox links: one veth pair per sandbox between the host and the sandbox's network namespace.

The sandbox's namespace belongs to its long-lived pid 1 (created by ``unshare``); this adapter is
given that pid and reaches the namespace through ``/proc/<pid>/ns/net`` -- no named netns in
``/run/netns``.  A link, for a sandbox with address A and the pool's gateway G::

    host namespace                             sandbox namespace (pid 1)
    bolt<id>  G/32, route A/32 dev bolt<id>  <---->  eth0  A/32, route G dev eth0, default via G; lo up

The veth is created with its peer directly inside the namespace and already named ``eth0`` (``ip link
add bolt<id> type veth peer name eth0 netns <pid>``), so there is no move or rename step.  An attach is
three short processes -- ``ip -batch -`` on the host, then ``sysctl`` and ``ip -batch -`` through
``nsenter --net`` -- plus two writes under ``/proc/sys`` on the host: 10-17 ms in all on the
development VM, where the same commands run bare from a script take 7-12 ms.  Deleting the host end deletes both ends, and so does the namespace's end: when pid 1 dies the link
goes with it, which is why :meth:`Network.detach` is idempotent.

Sysctls -- only these, and only where stated:

``net.ipv4.ip_forward = 1`` (host, global; :meth:`Network.setup`)
    The host routes between sandbox links and its other interfaces: outbound traffic, forwards from
    other hosts.  What may cross is decided by bolt's FORWARD chain (see :mod:`bolt.netplan`); the
    host's own FORWARD rules and policy are left as they are for every other interface.

``net.ipv4.conf.<sandbox link>.route_localnet = 1`` (host, per sandbox link only)
    Loopback addresses may be routed through this one link.  Needed twice: a host-local client
    connecting to 127.0.0.1:<forwarded port> is DNATed to the sandbox and leaves on the link with
    source 127.0.0.1 (then SNATed to the gateway), and a reverse forward DNATs traffic arriving on the
    link to 127.0.0.1:<host port>.  It is never set on ``all``/``default`` or any other interface, and
    the firewall drops every packet addressed to 127.0.0.0/8 that arrives on any interface but ``lo``
    (raw PREROUTING, before DNAT), so no other host -- and no sandbox -- can reach a loopback-only
    service directly; only DNATed reverse-forward connections get there.

``net.ipv6.conf.<sandbox link>.disable_ipv6 = 1`` (host, per sandbox link only)
    Sandboxes are IPv4 only.  With IPv6 off on the host end, the kernel drops every IPv6 packet that
    arrives on the link before any other processing, and the host never sends one into it.

``net.ipv6.conf.all.disable_ipv6 = 1``, ``net.ipv6.conf.default.disable_ipv6 = 1`` (inside the sandbox)
    No IPv6 in the sandbox at all (``lo`` included, so ``localhost`` is 127.0.0.1 only, where the
    reverse forwards listen).

``net.ipv4.conf.eth0.route_localnet = 1`` (inside the sandbox, on eth0 only)
    A reverse forward DNATs 127.0.0.1:<port> inside the sandbox to the gateway, so the packet leaves
    on eth0 with source 127.0.0.1 (then SNATed to the sandbox's address), and the replies come back
    to 127.0.0.1.  The sandbox's own raw PREROUTING drops 127.0.0.0/8 arriving on eth0.

Sysctls on a link vanish with it; inside ones vanish with the namespace.  ``ip_forward`` is left on.

The pool's catch-all route (host, :meth:`Network.setup`): ``unreachable <pool> metric 4294967295``.
Each sandbox address has its own ``/32`` route to its link, which wins while the link exists; when it
does not (a stopped sandbox whose forwards are still configured, an address nobody holds), traffic to
it fails at once with "host unreachable" instead of following the default route out of the host.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from bolt.host.firewall import host_has_ipv6, netns_argv
from bolt.host.process import ProcessFailed, ProcessRunner
from bolt.netplan import LINK_PREFIX, SANDBOX_IFNAME, AddressPool, link_name, parse_link_name

SysctlWriter = Callable[[str, str], None]

#: The metric of the pool's catch-all route: the largest, so it never displaces a route of the
#: admin's for the same network (``ip route replace`` only replaces a route with the same metric).
POOL_ROUTE_METRIC = "4294967295"


def write_proc_sys(key: str, value: str) -> None:
    """Set a sysctl of the current (host) network namespace by writing ``/proc/sys``.

    Synchronous on purpose: a /proc/sys write is a few microseconds of kernel work, cheaper than a
    thread hop or a process.  Keys are dotted names without dots in their parts (bolt's link names
    never contain one).
    """
    path = "/proc/sys/" + key.replace(".", "/")
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class Network:
    """Creates and removes sandbox links through an injected runner.

    ``pool`` gives the gateway address; the core allocates sandbox addresses from it (and stores
    them) and passes each one to :meth:`attach`.
    """

    log = Logger()

    def __init__(self, runner: ProcessRunner, *, pool: AddressPool, link_prefix: str = LINK_PREFIX,
                 sysctl: SysctlWriter | None = None, ipv6: bool | None = None) -> None:
        self.runner = runner
        self.pool = pool
        self.link_prefix = link_prefix
        link_name(link_prefix, "0" * 8)  # validates the prefix
        self.sysctl = sysctl or write_proc_sys
        self.ipv6 = host_has_ipv6() if ipv6 is None else ipv6

    @property
    def gateway(self) -> str:
        return self.pool.gateway

    def link_name(self, ident: str) -> str:
        """The host-side interface name of a link id."""
        return link_name(self.link_prefix, ident)

    def _pool_route(self, verb: str) -> list[str]:
        return ["ip", "route", verb, "unreachable", str(self.pool.network), "metric", POOL_ROUTE_METRIC]

    def setup(self) -> defer.Deferred:
        """Host-wide settings, once at start (idempotent): ``net.ipv4.ip_forward=1`` and the pool's
        catch-all ``unreachable`` route."""
        self.sysctl("net.ipv4.ip_forward", "1")
        return self.runner.run(self._pool_route("replace")).addCallback(lambda _: None)

    @defer.inlineCallbacks
    def teardown(self):
        """Remove the pool's catch-all route (uninstall, tests); ``ip_forward`` is left as it is."""
        result = yield self.runner.run(self._pool_route("del"), check=False)
        if not result.ok and b"No such process" not in result.stderr:
            raise ProcessFailed(result, result.stderr.decode("utf-8", "replace").splitlines()[-5:])

    @defer.inlineCallbacks
    def attach(self, pid: int, ident: str, address: str):
        """Join the network namespace of ``pid`` to the host with a new link and configure both ends.

        Fires with the host-side interface name.  On failure nothing is left behind (the half-made
        link is deleted) and the Deferred fails.  A link of that id must not exist yet: after a
        restart, :meth:`detach` the old one first (it is idempotent).
        """
        host = self.link_name(ident)
        addr = ipaddress.IPv4Address(address)
        if addr not in self.pool.network or str(addr) == self.gateway:
            raise ValueError(f"{address} is not a sandbox address of {self.pool.network}")
        gw = self.gateway
        ns = netns_argv(pid)  # validates pid
        host_batch = (
            f"link add {host} type veth peer name {SANDBOX_IFNAME} netns {pid}\n"
            f"addr add {gw}/32 dev {host}\n"
            f"link set {host} up\n"
            f"route add {addr}/32 dev {host}\n"
        )
        yield self.runner.run(["ip", "-batch", "-"], stdin=host_batch.encode())
        try:
            self.sysctl(f"net.ipv4.conf.{host}.route_localnet", "1")
            if self.ipv6:
                self.sysctl(f"net.ipv6.conf.{host}.disable_ipv6", "1")
            inside_sysctls = [f"net.ipv4.conf.{SANDBOX_IFNAME}.route_localnet=1"]
            if self.ipv6:
                inside_sysctls[:0] = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
            yield self.runner.run([*ns, "sysctl", "-q", "-w", *inside_sysctls])
            inside_batch = (
                "link set lo up\n"
                f"addr add {addr}/32 dev {SANDBOX_IFNAME}\n"
                f"link set {SANDBOX_IFNAME} up\n"
                f"route add {gw}/32 dev {SANDBOX_IFNAME} scope link\n"
                f"route add default via {gw} dev {SANDBOX_IFNAME}\n"
            )
            yield self.runner.run([*ns, "ip", "-batch", "-"], stdin=inside_batch.encode())
        except BaseException:
            try:
                yield self.detach(ident)
            except Exception as e:
                self.log.error("could not remove half-made link {link}: {error}", link=host, error=str(e))
            raise
        self.log.info("link {link} attached to pid {pid} with {address}", link=host, pid=pid, address=str(addr))
        return host

    @defer.inlineCallbacks
    def detach(self, ident: str):
        """Delete a sandbox's link (both ends; its host route goes with it).  Fires with True when a
        link was deleted, False when there was none.

        "No such device" counts as none too: when a sandbox's pid 1 has just exited, the kernel
        destroys its network namespace, and with it the link, in the background; ``ip`` may find the
        name and then see the link vanish before its delete request (seen with 20 deletes at once).
        """
        host = self.link_name(ident)
        result = yield self.runner.run(["ip", "link", "del", host], check=False)
        if result.ok:
            return True
        if any(gone in result.stderr for gone in (b"Cannot find device", b"does not exist", b"No such device")):
            return False
        raise ProcessFailed(result, result.stderr.decode("utf-8", "replace").splitlines()[-5:])

    @defer.inlineCallbacks
    def list_links(self):
        """The link ids of every bolt link (this prefix) present on the host, sorted."""
        result = yield self.runner.run(["ip", "-json", "link", "show", "type", "veth"])
        found = []
        for entry in json.loads(result.stdout or b"[]"):
            ident = parse_link_name(self.link_prefix, entry.get("ifname", ""))
            if ident is not None:
                found.append(ident)
        return sorted(found)


def host_port_busy(port: int) -> bool:
    """Whether a host socket listens on TCP ``port`` (on any address, IPv4 or dual-stack IPv6).

    A forward takes the port over on every host address (DNAT happens before a connection reaches a
    listener), so a port a host service listens on is refused rather than silently hijacked.
    Binding the wildcard address fails with EADDRINUSE exactly when some listener holds the port;
    SO_REUSEADDR keeps sockets in TIME_WAIT from counting.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


__all__ = ["Network", "POOL_ROUTE_METRIC", "write_proc_sys", "host_port_busy"]
