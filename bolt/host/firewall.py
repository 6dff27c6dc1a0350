"""Bolt's iptables rules: host-side filtering and NAT for sandboxes, and the rules inside each sandbox.

The chain layout, and why each rule is there, is described in :mod:`bolt.netplan`, which also renders
every document this adapter applies; this module only runs them.  Rules:

* Bolt's rules live only in its own chains (``<prefix>-*``, prefix ``BOLT`` by default; tests use a
  random one), each rule tagged ``-m comment --comment "bolt:<project>/<sandbox>"`` (or ``"bolt"``
  for the fixed ones).  Each built-in chain gets one jump, inserted at position 1, only when missing.
  No rule bolt did not create is ever touched: documents only name bolt's chains, and the only
  built-in-chain rules ever deleted are jumps into bolt's chains.
* Every change is one ``iptables-restore -w --noflush`` run (never a process per rule).
* :meth:`Firewall.apply` is the full rebuild from the desired state: ``iptables-save`` to see what is
  there, then one document that flushes and refills every bolt chain, deletes bolt chains no longer
  wanted and adds missing jumps.  Idempotent: the server calls it at start, and after ``iptables -F``
  or a reboot it brings every stored forward back and leaves no stale rule.
* The incremental methods (:meth:`~Firewall.set_sandbox`, :meth:`~Firewall.add_forward`, ...) change
  one sandbox's rules only (``-A``/``-I``/``-D`` of exact rules), without reading the ruleset.  If
  one fails -- someone flushed a chain, so a ``-D`` finds nothing -- the adapter falls back to a full
  rebuild of the same desired state, so the outcome is the same either way.

IPv6: sandboxes get IPv4 only.  Their links have IPv6 disabled on both ends (see
:mod:`bolt.host.network`), and when the host has IPv6 the adapter also keeps an ip6tables raw-table
rule dropping every IPv6 packet that arrives on a sandbox link (defence in depth, and it covers the
instant between a link's creation and its sysctls).  So IPv6 cannot be used to reach the host, other
sandboxes or the outside from a sandbox.

Timings on the development VM (2 cores, nf_tables backend, 1,000 forwards in place, ``python -m
bench.forwards``): adding a forward ~5 ms; removing one ~15-23 ms, of which ~11 ms is the kernel's
RCU grace period that every nf_tables rule deletion waits for (``nft delete rule ... handle N`` costs
the same) and the rest iptables-nft reading the ruleset to find the rule; the full rebuild ~120 ms
(100 sandboxes) to ~220 ms (1,000 sandboxes, ~8,000 rules).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from twisted.internet import defer
from twisted.logger import Logger

from bolt.host.process import ProcessFailed, ProcessRunner
from bolt.netplan import (
    FirewallConfig, Forward, ReverseForward, SandboxNet, check_conflicts, parse_save, render, render6,
    render_inside, render_teardown, render_update,
)

IPTABLES_SAVE = ("iptables-save",)
IPTABLES_RESTORE = ("iptables-restore", "-w", "--noflush")
IP6TABLES_SAVE = ("ip6tables-save",)
IP6TABLES_RESTORE = ("ip6tables-restore", "-w", "--noflush")

Key = tuple[str, str]


class UnknownSandbox(KeyError):
    """The firewall holds no rules for this sandbox."""


def host_has_ipv6() -> bool:
    """True when the running kernel has IPv6 (then ip6tables gets bolt's guard rule)."""
    return os.path.exists("/proc/net/if_inet6")


def netns_argv(pid: int, *argv: str) -> list[str]:
    """``argv`` run in the network namespace of ``pid`` (only the network namespace: the host's
    binaries and filesystem are still the ones used)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError(f"invalid pid {pid!r}")
    return ["nsenter", f"--net=/proc/{pid}/ns/net", *argv]


class Firewall:
    """Applies bolt's iptables rules through an injected runner.

    Host operations are serialized (one at a time, in call order); the desired state they reached is
    :attr:`sandboxes`.  Each returns a Deferred that fires with None.
    """

    log = Logger()

    def __init__(self, runner: ProcessRunner, config: FirewallConfig | None = None, *,
                 ipv6: bool | None = None) -> None:
        self.runner = runner
        self.config = config or FirewallConfig()
        self.ipv6 = host_has_ipv6() if ipv6 is None else ipv6
        self._lock = defer.DeferredLock()
        self._current: dict[Key, SandboxNet] = {}

    @property
    def sandboxes(self) -> dict[Key, SandboxNet]:
        """The desired state last applied: sandbox key -> its network description."""
        return dict(self._current)

    # -- full rebuild -------------------------------------------------------------------------------

    def apply(self, sandboxes: Iterable[SandboxNet]) -> defer.Deferred:
        """Rebuild all of bolt's host rules for exactly these sandboxes (start, reconcile)."""
        wanted = list(sandboxes)
        keys = [sb.key for sb in wanted]
        if len(keys) != len(set(keys)):
            return defer.fail(ValueError("a sandbox is listed twice"))
        try:
            check_conflicts(wanted)
        except ValueError:
            return defer.fail()
        return self._lock.run(self._apply, wanted)

    @defer.inlineCallbacks
    def _apply(self, wanted: list[SandboxNet]):
        saved = yield self.runner.run(list(IPTABLES_SAVE))
        present = parse_save(saved.stdout.decode("utf-8", "replace"), self.config.prefix)
        yield self._restore(IPTABLES_RESTORE, render(self.config, wanted, present))
        if self.ipv6:
            saved6 = yield self.runner.run(list(IP6TABLES_SAVE))
            present6 = parse_save(saved6.stdout.decode("utf-8", "replace"), self.config.prefix)
            yield self._restore(IP6TABLES_RESTORE, render6(self.config, present6))
        self._current = {sb.key: sb for sb in wanted}
        self.log.info("firewall rebuilt for {count} sandboxes", count=len(wanted))

    # -- incremental --------------------------------------------------------------------------------

    def set_sandbox(self, sandbox: SandboxNet) -> defer.Deferred:
        """Add a sandbox's host rules, or bring them to this description if it has some already."""
        return self._change(sandbox.key, lambda old: sandbox)

    def remove_sandbox(self, project: str, name: str) -> defer.Deferred:
        """Delete every host rule tagged with this sandbox (nothing happens when it has none)."""
        return self._change((project, name), lambda old: None)

    def add_forward(self, project: str, name: str, forward: Forward) -> defer.Deferred:
        return self._change((project, name), lambda old: _known(old, project, name).with_forward(forward))

    def remove_forward(self, project: str, name: str, forward: Forward) -> defer.Deferred:
        return self._change((project, name), lambda old: _known(old, project, name).without_forward(forward))

    def add_reverse_forward(self, project: str, name: str, reverse: ReverseForward) -> defer.Deferred:
        """The host half of a reverse forward; :meth:`apply_inside` does the sandbox's half."""
        return self._change((project, name),
                            lambda old: _known(old, project, name).with_reverse_forward(reverse))

    def remove_reverse_forward(self, project: str, name: str, reverse: ReverseForward) -> defer.Deferred:
        return self._change((project, name),
                            lambda old: _known(old, project, name).without_reverse_forward(reverse))

    def _change(self, key: Key, make: Callable[[SandboxNet | None], SandboxNet | None]) -> defer.Deferred:
        return self._lock.run(self._do_change, key, make)

    @defer.inlineCallbacks
    def _do_change(self, key: Key, make: Callable[[SandboxNet | None], SandboxNet | None]):
        old = self._current.get(key)
        new = make(old)
        doc = render_update(self.config, self._current, key, new)  # raises on a conflict: no change
        wanted = dict(self._current)
        if new is None:
            wanted.pop(key, None)
        else:
            wanted[key] = new
        if doc:
            try:
                yield self._restore(IPTABLES_RESTORE, doc)
            except ProcessFailed as e:
                self.log.warn("incremental firewall change for {key} failed ({error}); rebuilding all",
                              key="/".join(key), error=str(e))
                yield self._apply(list(wanted.values()))
                return
        self._current = wanted

    # -- inside a sandbox ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def apply_inside(self, pid: int, sandbox: SandboxNet):
        """Rebuild the rules inside the network namespace of ``pid`` (the sandbox's pid 1) for this
        sandbox's reverse forwards.  Call after the sandbox's link is attached, and again after its
        reverse forwards change."""
        saved = yield self.runner.run(netns_argv(pid, *IPTABLES_SAVE))
        present = parse_save(saved.stdout.decode("utf-8", "replace"), self.config.prefix)
        yield self._restore(netns_argv(pid, *IPTABLES_RESTORE), render_inside(self.config, sandbox, present))

    # -- uninstall ----------------------------------------------------------------------------------

    def teardown_all(self) -> defer.Deferred:
        """Remove every bolt chain (this prefix) and every jump into one, IPv4 and IPv6."""
        return self._lock.run(self._teardown_all)

    @defer.inlineCallbacks
    def _teardown_all(self):
        commands = [(IPTABLES_SAVE, IPTABLES_RESTORE)]
        if self.ipv6:
            commands.append((IP6TABLES_SAVE, IP6TABLES_RESTORE))
        for save, restore in commands:
            saved = yield self.runner.run(list(save))
            doc = render_teardown(parse_save(saved.stdout.decode("utf-8", "replace"), self.config.prefix))
            if doc:
                yield self._restore(restore, doc)
        self._current = {}
        self.log.info("firewall chains {prefix}-* removed", prefix=self.config.prefix)

    def _restore(self, argv, doc: str) -> defer.Deferred:
        return self.runner.run(list(argv), stdin=doc.encode())


def _known(sb: SandboxNet | None, project: str, name: str) -> SandboxNet:
    if sb is None:
        raise UnknownSandbox(f"{project}/{name}")
    return sb


__all__ = ["Firewall", "UnknownSandbox", "host_has_ipv6", "netns_argv",
           "IPTABLES_SAVE", "IPTABLES_RESTORE", "IP6TABLES_SAVE", "IP6TABLES_RESTORE"]
