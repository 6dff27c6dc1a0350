"""Pure planning for sandbox networking: the address pool, link names, and bolt's iptables rules.

Nothing here touches the host.  :mod:`bolt.host.network` and :mod:`bolt.host.firewall` turn these
plans into ``ip`` batches and ``iptables-restore`` documents; everything that can be decided with
plain values in and out is decided here, so it is tested without root, a reactor or a runner.

Addressing
----------
Every sandbox gets one address from the pool (config ``sandbox_network``, default 10.213.0.0/16) as a
``/32`` on its ``eth0``.  The pool's first address is the *gateway*: it sits, also as a ``/32``, on the
host end of every sandbox's veth (the same address on many interfaces is fine in Linux), and the host
routes each sandbox address to its own veth.  Nothing is bridged, so sandboxes can only talk through
the host's routing and filtering, one veth each.  A catch-all ``unreachable`` route for the whole pool
keeps traffic for an address without a live link from leaving the host.

Firewall layout (``P`` is the chain prefix, default ``BOLT``; ``bolt+`` the sandbox-link wildcard)
-------------------------------------------------------------------------------------------------
Bolt's rules live only in chains named ``P-*``; each built-in chain gets exactly one jump, inserted at
position 1 when missing::

    raw    PREROUTING  -> P-RAW        drop 127.0.0.0/8 arriving on any interface but lo;
                                       sandbox links go through P-SPOOF
           P-SPOOF                     per sandbox "-i L -s <its address> -j RETURN", then DROP:
                                       a sandbox sends only from its own address, an unknown link
                                       sends nothing
    filter INPUT       -> P-INPUT      from sandbox links: replies, then P-INPUT-ALLOW, then DROP
           P-INPUT-ALLOW               per reverse forward: the DNATed connection to 127.0.0.1:port
           FORWARD     -> P-FORWARD    replies; sandbox->sandbox only through P-ISOLATE, else DROP;
                                       sandbox->elsewhere ACCEPT when outbound is on (else DROP);
                                       elsewhere->sandbox only when DNATed (a forward), else DROP
           P-ISOLATE                   per sandbox "-i L -j P-PJ-<project hash>"
           P-PJ-<hash>                 per member of the project "-o L -j ACCEPT"
    nat    PREROUTING  -> P-PREROUTING sandbox links go through P-REVERSE first; local
                                       destinations through P-FORWARDS
           P-REVERSE                   per reverse forward "-i L -d <gw> --dport C -j DNAT 127.0.0.1:H"
           OUTPUT      -> P-OUTPUT     local destinations through P-FORWARDS (host-local clients)
           P-FORWARDS                  per forward "--dport H -j DNAT <sandbox>:C"
           POSTROUTING -> P-POSTROUTING 127.0.0.0/8 sources leaving on a sandbox link SNAT to the
                                       gateway; the pool MASQUERADEs to elsewhere when outbound is on;
                                       sandbox links go through P-HAIRPIN
           P-HAIRPIN                   per sandbox "-o L -s <its address> -j SNAT <gw>" (a sandbox
                                       reaching its own forward through a host address)

(``L`` stands for one sandbox's host-side link, ``bolt<8 hex>``.)

Chains with per-sandbox rules ("dynamic" chains) hold nothing else except, for P-SPOOF, a fixed
tail; the order of their per-sandbox rules never matters.  That is what makes the incremental path
safe: a new rule is appended (or inserted at 1, ahead of the tail) and a gone one deleted by its exact
text, without ever touching another sandbox's rules.  Every rule carries a comment: ``bolt`` for the
fixed ones, ``bolt:<project>/<sandbox>`` for a sandbox's.

Inside each sandbox's network namespace (its own tables, written through ``nsenter --net``)::

    raw    PREROUTING  -> P-RAW         drop 127.0.0.0/8 arriving on any interface but lo
    nat    OUTPUT      -> P-OUTPUT      per reverse forward "-d 127.0.0.1 --dport C -j DNAT <gw>:C"
           POSTROUTING -> P-POSTROUTING 127.0.0.0/8 sources leaving on eth0 SNAT to the sandbox address
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

# --------------------------------------------------------------------------------------------------
# Address pool

#: The smallest pool accepted (as config does): a /28 leaves 13 sandbox addresses.
MAX_PREFIXLEN = 28

#: Ranges a pool may not overlap: "this network", loopback, link-local, multicast, reserved.
_UNUSABLE = tuple(ipaddress.IPv4Network(n) for n in
                  ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"))


class PoolExhausted(Exception):
    """Every address of the pool is allocated."""


class AddressPool:
    """Sandbox addresses out of one IPv4 network.

    The first address is the gateway; the network and broadcast addresses are never handed out.  The
    pool keeps no state of its own beyond what it is given: build it from the addresses the stored
    sandboxes hold (``used``) and it never hands one of those out again.  Addresses in ``used`` that
    fall outside the pool (the network was changed in the config) are kept in :attr:`foreign` and
    otherwise ignored; the same address twice in ``used`` is a ``ValueError`` (two sandboxes would
    share it).

    Allocation walks forward from the last address handed out (wrapping around), so a released
    address is reused as late as possible -- stale conntrack entries and ARP caches for it have the
    longest time to expire.
    """

    def __init__(self, network: str, used: Iterable[str] = ()) -> None:
        try:
            net = ipaddress.IPv4Network(network, strict=True)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid sandbox network {network!r}: {e}") from None
        if net.prefixlen > MAX_PREFIXLEN:
            raise ValueError(f"sandbox network {net} is too small: a /{MAX_PREFIXLEN} or larger is needed")
        if any(net.overlaps(special) for special in _UNUSABLE):
            raise ValueError(f"sandbox network {net} overlaps a special-purpose range")
        self.network = net
        self.gateway = str(net.network_address + 1)
        self._first = int(net.network_address) + 2
        self._last = int(net.broadcast_address) - 1
        self._used: set[int] = set()
        foreign: list[str] = []
        for address in used:
            value = int(ipaddress.IPv4Address(address))
            if not self._first <= value <= self._last:
                foreign.append(str(address))
                continue
            if value in self._used:
                raise ValueError(f"address {address} is used twice")
            self._used.add(value)
        self.foreign: tuple[str, ...] = tuple(foreign)
        self._next = (max(self._used) + 1) if self._used else self._first

    @property
    def capacity(self) -> int:
        """How many sandbox addresses the pool has in all."""
        return self._last - self._first + 1

    @property
    def available(self) -> int:
        return self.capacity - len(self._used)

    @property
    def used(self) -> frozenset[str]:
        return frozenset(str(ipaddress.IPv4Address(v)) for v in self._used)

    def is_allocated(self, address: str) -> bool:
        return int(ipaddress.IPv4Address(address)) in self._used

    def allocate(self) -> str:
        """Hand out a free address; :class:`PoolExhausted` when there is none."""
        if len(self._used) >= self.capacity:
            raise PoolExhausted(f"no free address left in {self.network}")
        value = self._next
        for _ in range(self.capacity):
            if value > self._last:
                value = self._first
            if value not in self._used:
                self._used.add(value)
                self._next = value + 1
                return str(ipaddress.IPv4Address(value))
            value += 1
        raise PoolExhausted(f"no free address left in {self.network}")  # pragma: no cover

    def claim(self, address: str) -> None:
        """Mark one given address as allocated (a sandbox restored with its stored address)."""
        value = int(ipaddress.IPv4Address(address))
        if not self._first <= value <= self._last:
            raise ValueError(f"address {address} is not a sandbox address of {self.network}")
        if value in self._used:
            raise ValueError(f"address {address} is already allocated")
        self._used.add(value)

    def release(self, address: str) -> bool:
        """Give an address back; False (and nothing else) when it was not allocated."""
        value = int(ipaddress.IPv4Address(address))
        if value in self._used:
            self._used.remove(value)
            return True
        return False


# --------------------------------------------------------------------------------------------------
# Link names

#: Hex digits in a link id: the host end of a sandbox's veth is ``<link prefix><id>``.
LINK_ID_LEN = 8

#: The default link prefix.  Rules match every sandbox link with the wildcard ``<prefix>+``, so the
#: prefix must not start any other interface's name: not "vb", which would also match VirtualBox's
#: ``vboxnet0``.
LINK_PREFIX = "bolt"
LINK_PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9]{0,6}")
_LINK_ID = re.compile(r"[0-9a-f]{%d}" % LINK_ID_LEN)

#: The name of the sandbox's end of its veth, inside its namespace.
SANDBOX_IFNAME = "eth0"


def link_id(project: str, name: str) -> str:
    """A stable 8-hex-digit id for a sandbox's link (a hash of ``project/name``)."""
    return hashlib.sha256(f"{project}/{name}".encode()).hexdigest()[:LINK_ID_LEN]


def check_link_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or LINK_PREFIX_PATTERN.fullmatch(prefix) is None:
        raise ValueError(f"invalid link prefix {prefix!r}: 1-7 characters of a-z, 0-9, starting with a letter")
    return prefix


def link_name(prefix: str, ident: str) -> str:
    """The host-side interface name for a link id (at most 15 characters, as Linux requires)."""
    check_link_prefix(prefix)
    if not isinstance(ident, str) or _LINK_ID.fullmatch(ident) is None:
        raise ValueError(f"invalid link id {ident!r}: {LINK_ID_LEN} lowercase hex digits")
    return prefix + ident


def parse_link_name(prefix: str, name: str) -> str | None:
    """The link id of a host-side interface name, or None when the name is not one of ours."""
    if name.startswith(prefix) and _LINK_ID.fullmatch(name[len(prefix):]):
        return name[len(prefix):]
    return None


# --------------------------------------------------------------------------------------------------
# Desired firewall state

_TAG_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_PREFIX = re.compile(r"[A-Z][A-Z0-9]{0,11}")


@dataclass(frozen=True, order=True)
class Forward:
    """Host -> sandbox: TCP connections to ``host_port`` on any host address reach ``container_port``."""

    host_port: int
    container_port: int

    def __post_init__(self) -> None:
        _check_port(self.host_port, "host_port")
        _check_port(self.container_port, "container_port")


@dataclass(frozen=True, order=True)
class ReverseForward:
    """Sandbox -> host: inside, 127.0.0.1:``container_port`` (and gateway:``container_port``) reach
    the host's 127.0.0.1:``host_port``."""

    container_port: int
    host_port: int

    def __post_init__(self) -> None:
        _check_port(self.container_port, "container_port")
        _check_port(self.host_port, "host_port")


def _check_port(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"invalid {what} {value!r}: 1-65535")


@dataclass(frozen=True)
class SandboxNet:
    """What the firewall needs to know about one sandbox."""

    project: str
    name: str
    address: str
    link: str
    forwards: tuple[Forward, ...] = ()
    reverse_forwards: tuple[ReverseForward, ...] = ()

    def __post_init__(self) -> None:
        for what in ("project", "name"):
            value = getattr(self, what)
            if not isinstance(value, str) or _TAG_PART.fullmatch(value) is None:
                raise ValueError(f"invalid sandbox {what} {value!r}")
        ipaddress.IPv4Address(self.address)
        if not isinstance(self.link, str) or re.fullmatch(r"[a-z][a-z0-9]{1,14}", self.link) is None:
            raise ValueError(f"invalid link name {self.link!r}")
        object.__setattr__(self, "forwards", tuple(sorted(set(self.forwards))))
        object.__setattr__(self, "reverse_forwards", tuple(sorted(set(self.reverse_forwards))))
        ports = [f.host_port for f in self.forwards]
        if len(ports) != len(set(ports)):
            raise ValueError(f"{self.tag}: a host port is forwarded twice")
        inner = [r.container_port for r in self.reverse_forwards]
        if len(inner) != len(set(inner)):
            raise ValueError(f"{self.tag}: a container port is reverse-forwarded twice")

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.name)

    @property
    def tag(self) -> str:
        """The comment every rule of this sandbox carries."""
        return f"bolt:{self.project}/{self.name}"

    def with_forward(self, forward: Forward) -> "SandboxNet":
        return replace(self, forwards=self.forwards + (forward,))

    def without_forward(self, forward: Forward) -> "SandboxNet":
        return replace(self, forwards=tuple(f for f in self.forwards if f != forward))

    def with_reverse_forward(self, reverse: ReverseForward) -> "SandboxNet":
        return replace(self, reverse_forwards=self.reverse_forwards + (reverse,))

    def without_reverse_forward(self, reverse: ReverseForward) -> "SandboxNet":
        return replace(self, reverse_forwards=tuple(r for r in self.reverse_forwards if r != reverse))


class ForwardConflict(ValueError):
    """Two sandboxes forward the same host port."""


@dataclass(frozen=True)
class FirewallConfig:
    """How bolt's rules look on this host: the pool, outbound on/off, chain and link prefixes."""

    network: str = "10.213.0.0/16"
    outbound: bool = True
    prefix: str = "BOLT"
    link_prefix: str = LINK_PREFIX

    def __post_init__(self) -> None:
        net = ipaddress.IPv4Network(self.network, strict=True)
        object.__setattr__(self, "network", str(net))
        if not isinstance(self.prefix, str) or _PREFIX.fullmatch(self.prefix) is None:
            raise ValueError(f"invalid chain prefix {self.prefix!r}: 1-12 of A-Z, 0-9, starting with a letter")
        check_link_prefix(self.link_prefix)

    @property
    def gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.network).network_address + 1)

    @property
    def links(self) -> str:
        """The iptables wildcard matching every sandbox link."""
        return self.link_prefix + "+"

    def chain(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def project_chain(self, project: str) -> str:
        return self.chain("PJ-" + hashlib.sha256(project.encode()).hexdigest()[:12])

    def owns(self, chain: str) -> bool:
        return chain.startswith(self.prefix + "-")


# --------------------------------------------------------------------------------------------------
# Rules

TABLES = ("raw", "filter", "nat")
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
LOOPBACK_NET = "127.0.0.0/8"


def comment(tag: str) -> str:
    return f'-m comment --comment "{tag}"'


FIXED = comment("bolt")


@dataclass(frozen=True)
class Chain:
    """One of bolt's chains: its fixed rules, and where per-sandbox rules go.

    ``tail`` rules come after every per-sandbox rule, so per-sandbox rules are inserted at position 1
    in a chain with a tail and appended otherwise.  A chain that takes per-sandbox rules has no fixed
    rules ahead of them (so position 1 is always right).
    """

    table: str
    name: str
    rules: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    dynamic: bool = False


@dataclass(frozen=True)
class Hook:
    """A jump from a built-in chain to one of bolt's."""

    table: str
    builtin: str
    target: str

    def spec(self) -> str:
        return f"{FIXED} -j {self.target}"


@dataclass(frozen=True, order=True)
class Rule:
    """One per-sandbox rule: table, chain and the rule's text after the chain name."""

    table: str
    chain: str
    spec: str


@dataclass(frozen=True)
class Layout:
    """A complete set of bolt chains and hooks (the host's, or one sandbox's inside)."""

    chains: tuple[Chain, ...]
    hooks: tuple[Hook, ...]

    def chain(self, table: str, name: str) -> Chain | None:
        for c in self.chains:
            if c.table == table and c.name == name:
                return c
        return None


def host_layout(cfg: FirewallConfig) -> Layout:
    """Bolt's fixed chains and jumps on the host, for one config (no sandbox in it yet)."""
    c, L, gw = cfg.chain, cfg.links, cfg.gateway
    established = "-m conntrack --ctstate RELATED,ESTABLISHED"
    outbound = "ACCEPT" if cfg.outbound else "DROP"
    postrouting = [f"-s {LOOPBACK_NET} -o {L} {FIXED} -j SNAT --to-source {gw}"]
    if cfg.outbound:
        postrouting.append(f"-s {cfg.network} ! -o {L} {FIXED} -j MASQUERADE")
    postrouting.append(f"-o {L} {FIXED} -j {c('HAIRPIN')}")
    chains = (
        Chain("raw", c("RAW"), (
            f"! -i lo -d {LOOPBACK_NET} {FIXED} -j DROP",
            f"-i {L} {FIXED} -j {c('SPOOF')}",
        )),
        Chain("raw", c("SPOOF"), tail=(f"{FIXED} -j DROP",), dynamic=True),
        Chain("filter", c("INPUT"), (
            f"-i {L} {established} {FIXED} -j ACCEPT",
            f"-i {L} {FIXED} -j {c('INPUT-ALLOW')}",
            f"-i {L} {FIXED} -j DROP",
        )),
        Chain("filter", c("INPUT-ALLOW"), dynamic=True),
        Chain("filter", c("FORWARD"), (
            f"-o {L} {established} {FIXED} -j ACCEPT",
            f"-i {L} {established} {FIXED} -j ACCEPT",
            f"-i {L} -o {L} {FIXED} -j {c('ISOLATE')}",
            f"-i {L} -o {L} {FIXED} -j DROP",
            f"-i {L} {FIXED} -j {outbound}",
            f"-o {L} -m conntrack --ctstate DNAT {FIXED} -j ACCEPT",
            f"-o {L} {FIXED} -j DROP",
        )),
        Chain("filter", c("ISOLATE"), dynamic=True),
        Chain("nat", c("PREROUTING"), (
            f"-i {L} {FIXED} -j {c('REVERSE')}",
            f"-m addrtype --dst-type LOCAL {FIXED} -j {c('FORWARDS')}",
        )),
        Chain("nat", c("REVERSE"), dynamic=True),
        Chain("nat", c("OUTPUT"), (f"-m addrtype --dst-type LOCAL {FIXED} -j {c('FORWARDS')}",)),
        Chain("nat", c("FORWARDS"), dynamic=True),
        Chain("nat", c("POSTROUTING"), tuple(postrouting)),
        Chain("nat", c("HAIRPIN"), dynamic=True),
    )
    hooks = (
        Hook("raw", "PREROUTING", c("RAW")),
        Hook("filter", "INPUT", c("INPUT")),
        Hook("filter", "FORWARD", c("FORWARD")),
        Hook("nat", "PREROUTING", c("PREROUTING")),
        Hook("nat", "OUTPUT", c("OUTPUT")),
        Hook("nat", "POSTROUTING", c("POSTROUTING")),
    )
    return Layout(chains, hooks)


def host_layout6(cfg: FirewallConfig) -> Layout:
    """ip6tables: sandboxes are IPv4 only, so any IPv6 packet from a sandbox link is dropped."""
    c = cfg.chain
    return Layout((Chain("raw", c("RAW"), (f"-i {cfg.links} {FIXED} -j DROP",)),),
                  (Hook("raw", "PREROUTING", c("RAW")),))


def project_chain(cfg: FirewallConfig, project: str) -> Chain:
    return Chain("filter", cfg.project_chain(project), dynamic=True)


def sandbox_rules(cfg: FirewallConfig, sb: SandboxNet) -> list[Rule]:
    """Every per-sandbox host rule of one sandbox, in render order, without duplicates."""
    c, gw, tag, link, addr = cfg.chain, cfg.gateway, comment(sb.tag), sb.link, sb.address
    net = ipaddress.IPv4Network(cfg.network)
    if ipaddress.IPv4Address(addr) not in net or addr == gw:
        raise ValueError(f"{sb.tag}: address {addr} is not a sandbox address of {cfg.network}")
    if not link.startswith(cfg.link_prefix):
        raise ValueError(f"{sb.tag}: link {link} does not start with {cfg.link_prefix!r}")
    rules = [
        Rule("raw", c("SPOOF"), f"-s {addr}/32 -i {link} {tag} -j RETURN"),
        Rule("filter", c("ISOLATE"), f"-i {link} {tag} -j {cfg.project_chain(sb.project)}"),
        Rule("filter", cfg.project_chain(sb.project), f"-o {link} {tag} -j ACCEPT"),
    ]
    for r in sb.reverse_forwards:
        rules.append(Rule("filter", c("INPUT-ALLOW"),
                          f"-d 127.0.0.1/32 -i {link} -p tcp -m tcp --dport {r.host_port} "
                          f"-m conntrack --ctstate DNAT {tag} -j ACCEPT"))
    for r in sb.reverse_forwards:
        rules.append(Rule("nat", c("REVERSE"),
                          f"-d {gw}/32 -i {link} -p tcp -m tcp --dport {r.container_port} {tag} "
                          f"-j DNAT --to-destination 127.0.0.1:{r.host_port}"))
    for f in sb.forwards:
        rules.append(Rule("nat", c("FORWARDS"),
                          f"-p tcp -m tcp --dport {f.host_port} {tag} -j DNAT --to-destination {addr}:{f.container_port}"))
    rules.append(Rule("nat", c("HAIRPIN"), f"-s {addr}/32 -o {link} {tag} -j SNAT --to-source {gw}"))
    return list(dict.fromkeys(rules))


def check_conflicts(sandboxes: Iterable[SandboxNet]) -> None:
    """Raise :class:`ForwardConflict` when two sandboxes forward one host port, ``ValueError`` when two
    share an address or a link."""
    ports: dict[int, str] = {}
    addresses: dict[str, str] = {}
    links: dict[str, str] = {}
    for sb in sandboxes:
        for f in sb.forwards:
            if f.host_port in ports and ports[f.host_port] != sb.tag:
                raise ForwardConflict(f"host port {f.host_port} is forwarded by {ports[f.host_port]} and {sb.tag}")
            ports[f.host_port] = sb.tag
        for what, seen, value in (("address", addresses, sb.address), ("link", links, sb.link)):
            if value in seen and seen[value] != sb.tag:
                raise ValueError(f"{what} {value} is used by {seen[value]} and {sb.tag}")
            seen[value] = sb.tag


# --------------------------------------------------------------------------------------------------
# What is there now (parsed from iptables-save)


@dataclass(frozen=True)
class Present:
    """Bolt's chains and the jumps into them found in an ``iptables-save`` dump."""

    chains: frozenset[tuple[str, str]] = frozenset()
    #: (table, builtin chain, target, the rule's text after "-A <chain> ")
    jumps: tuple[tuple[str, str, str, str], ...] = ()

    def has_jump(self, hook: Hook) -> bool:
        """True when the built-in chain has bolt's own unconditional jump.  A jump with matches of its
        own (someone's ``-i eth1 -j BOLT-INPUT``) does not count: it would not send every packet."""
        plain = {f"-j {hook.target}", f"-m comment --comment bolt -j {hook.target}", hook.spec()}
        return any((t, b, g) == (hook.table, hook.builtin, hook.target) and spec in plain
                   for t, b, g, spec in self.jumps)


_TARGET = re.compile(r"(?:^|\s)-[jg]\s+(\S+)\s*$")


def parse_save(text: str, prefix: str) -> Present:
    """Find bolt's chains (``<prefix>-*``) and every built-in-chain rule that jumps into one."""
    own = prefix + "-"
    table = ""
    chains: set[tuple[str, str]] = set()
    jumps: list[tuple[str, str, str, str]] = []
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(own):
                chains.add((table, name))
        elif line.startswith("-A "):
            parts = line.split(None, 2)
            if len(parts) < 3 or parts[1] not in BUILTIN_CHAINS:
                continue
            m = _TARGET.search(parts[2])
            if m and m.group(1).startswith(own):
                jumps.append((table, parts[1], m.group(1), parts[2]))
    return Present(frozenset(chains), tuple(jumps))


# --------------------------------------------------------------------------------------------------
# Documents


def _document(sections: Mapping[str, list[str]]) -> str:
    out: list[str] = []
    for table in TABLES:
        lines = sections.get(table)
        if lines:
            out.append(f"*{table}")
            out.extend(lines)
            out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def render_layout(layout: Layout, dynamic: Mapping[tuple[str, str], Sequence[str]],
                  extra_chains: Sequence[Chain] = (), present: Present | None = None) -> str:
    """A complete ``iptables-restore --noflush`` document for a layout.

    Every bolt chain is declared (which creates it or flushes it), then filled; chains bolt owns that
    are no longer wanted are flushed and deleted, with any jump into them; missing jumps are inserted
    at position 1 of their built-in chain.  Applying the same document twice gives the same rules.
    """
    present = present or Present()
    chains = list(layout.chains) + list(extra_chains)
    wanted = {(ch.table, ch.name) for ch in chains}
    stale = sorted(present.chains - wanted)
    sections: dict[str, list[str]] = {t: [] for t in TABLES}
    for ch in chains:
        sections[ch.table].append(f":{ch.name} - [0:0]")
    for table, name in stale:
        sections[table].append(f":{name} - [0:0]")
    for ch in chains:
        for spec in ch.rules:
            sections[ch.table].append(f"-A {ch.name} {spec}")
        for spec in dynamic.get((ch.table, ch.name), ()):
            sections[ch.table].append(f"-A {ch.name} {spec}")
        for spec in ch.tail:
            sections[ch.table].append(f"-A {ch.name} {spec}")
    hooks = set(layout.hooks)
    for table, builtin, target, spec in present.jumps:
        if Hook(table, builtin, target) not in hooks:
            sections[table].append(f"-D {builtin} {spec}")
    for hook in layout.hooks:
        if not present.has_jump(hook):
            sections[hook.table].append(f"-I {hook.builtin} 1 {hook.spec()}")
    for table, name in stale:
        sections[table].append(f"-X {name}")
    return _document(sections)


def render(cfg: FirewallConfig, sandboxes: Iterable[SandboxNet], present: Present | None = None) -> str:
    """The complete host document for the desired state: every bolt chain rebuilt from scratch.

    ``present`` (from :func:`parse_save`) says which jumps already exist and which bolt chains to
    delete; without it the document assumes a host with no bolt rules at all.
    """
    sandboxes = sorted(sandboxes, key=lambda s: s.key)
    check_conflicts(sandboxes)
    layout = host_layout(cfg)
    dynamic: dict[tuple[str, str], list[str]] = {}
    projects: list[str] = []
    for sb in sandboxes:
        if sb.project not in projects:
            projects.append(sb.project)
        for rule in sandbox_rules(cfg, sb):
            dynamic.setdefault((rule.table, rule.chain), []).append(rule.spec)
    extra = [project_chain(cfg, p) for p in projects]
    return render_layout(layout, dynamic, extra, present)


def render6(cfg: FirewallConfig, present: Present | None = None) -> str:
    """The ip6tables document (fixed: no per-sandbox rules)."""
    return render_layout(host_layout6(cfg), {}, (), present)


def render_update(cfg: FirewallConfig, current: Mapping[tuple[str, str], SandboxNet],
                  key: tuple[str, str], new: SandboxNet | None) -> str:
    """The incremental document that turns ``current`` into ``current`` with ``key`` set to ``new``
    (or removed when ``new`` is None): only that sandbox's rules are added or deleted.

    Deletions name the rule's exact text (``-D chain spec``), additions are appended, or inserted at 1
    in a chain with a fixed tail.  A project chain is created with its first member and deleted with
    its last.  Returns "" when nothing changes.
    """
    old = current.get(key)
    if new is not None:
        if new.key != key:
            raise ValueError(f"sandbox {new.tag} given for key {key}")
        others = [sb for k, sb in current.items() if k != key]
        check_conflicts(others + [new])
    old_rules = sandbox_rules(cfg, old) if old is not None else []
    new_rules = sandbox_rules(cfg, new) if new is not None else []
    old_set, new_set = set(old_rules), set(new_rules)
    layout = host_layout(cfg)

    def members(project: str) -> int:
        return sum(1 for k, sb in current.items() if k != key and sb.project == project)

    create: list[Chain] = []
    delete: list[Chain] = []
    if new is not None and (old is None or old.project != new.project) and not members(new.project):
        create.append(project_chain(cfg, new.project))
    if old is not None and (new is None or new.project != old.project) and not members(old.project):
        delete.append(project_chain(cfg, old.project))

    sections: dict[str, list[str]] = {t: [] for t in TABLES}
    for ch in create:
        sections[ch.table].append(f":{ch.name} - [0:0]")
    for rule in old_rules:
        if rule not in new_set:
            sections[rule.table].append(f"-D {rule.chain} {rule.spec}")
    for rule in new_rules:
        if rule not in old_set:
            ch = layout.chain(rule.table, rule.chain)
            if ch is not None and ch.tail:
                sections[rule.table].append(f"-I {rule.chain} 1 {rule.spec}")
            else:
                sections[rule.table].append(f"-A {rule.chain} {rule.spec}")
    for ch in delete:
        sections[ch.table].append(f"-X {ch.name}")
    return _document(sections)


def render_teardown(present: Present) -> str:
    """Remove every jump into bolt's chains and every bolt chain found in ``present``."""
    sections: dict[str, list[str]] = {t: [] for t in TABLES}
    for table, name in sorted(present.chains):
        sections.setdefault(table, []).append(f":{name} - [0:0]")
    for table, builtin, _target, spec in present.jumps:
        sections.setdefault(table, []).append(f"-D {builtin} {spec}")
    for table, name in sorted(present.chains):
        sections[table].append(f"-X {name}")
    return _document(sections)


# --------------------------------------------------------------------------------------------------
# Inside a sandbox's namespace


def inside_layout(cfg: FirewallConfig, sb: SandboxNet) -> tuple[Layout, dict[tuple[str, str], list[str]]]:
    c, tag = cfg.chain, comment(sb.tag)
    chains = (
        Chain("raw", c("RAW"), (f"! -i lo -d {LOOPBACK_NET} {FIXED} -j DROP",)),
        Chain("nat", c("OUTPUT"), dynamic=True),
        Chain("nat", c("POSTROUTING"), (
            f"-s {LOOPBACK_NET} -o {SANDBOX_IFNAME} {tag} -j SNAT --to-source {sb.address}",)),
    )
    hooks = (
        Hook("raw", "PREROUTING", c("RAW")),
        Hook("nat", "OUTPUT", c("OUTPUT")),
        Hook("nat", "POSTROUTING", c("POSTROUTING")),
    )
    dynamic = {("nat", c("OUTPUT")): [
        f"-d 127.0.0.1/32 -p tcp -m tcp --dport {r.container_port} {tag} "
        f"-j DNAT --to-destination {cfg.gateway}:{r.container_port}"
        for r in sb.reverse_forwards]}
    return Layout(chains, hooks), dynamic


def render_inside(cfg: FirewallConfig, sb: SandboxNet, present: Present | None = None) -> str:
    """The document for the rules inside one sandbox's network namespace (always a full rebuild:
    it holds one sandbox's rules only)."""
    layout, dynamic = inside_layout(cfg, sb)
    return render_layout(layout, dynamic, (), present)


__all__ = [
    "AddressPool", "PoolExhausted", "MAX_PREFIXLEN", "LINK_ID_LEN", "SANDBOX_IFNAME",
    "link_id", "link_name", "parse_link_name", "check_link_prefix",
    "Forward", "ReverseForward", "SandboxNet", "FirewallConfig", "ForwardConflict",
    "Chain", "Hook", "Rule", "Layout", "Present",
    "host_layout", "host_layout6", "sandbox_rules", "check_conflicts", "parse_save",
    "render", "render6", "render_update", "render_teardown", "render_inside", "render_layout",
]

