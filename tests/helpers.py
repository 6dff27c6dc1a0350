"""Shared builders for unit tests: a core and an API wired with fakes, and a factory wrapper for the few
tests that listen on loopback."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.internet import defer, task
from twisted.protocols.policies import WrappingFactory

from bolt import config as configuration
from bolt.admin import AdminAccount
from bolt.api import BoltAPI
from bolt.manager import Host, Manager
from bolt.store import ProjectStore
from bolt.updates import UpdateChecker
from tests.fakes import FakeCgroups, FakeFirewall, FakeImages, FakeNetwork, FakeRootFS, FakeRuntime

#: scrypt cost for tests: fast, still the real algorithm.
CHEAP = {"n": 2 ** 10, "r": 8, "p": 1}
PASSWORD = "correct horse"


def inline(f, *args, **kwargs) -> defer.Deferred:
    """A run_in_thread that runs in the caller's thread, so tests stay synchronous."""
    return defer.maybeDeferred(f, *args, **kwargs)


class HeldThreads:
    """A run_in_thread that holds every call until the test runs it, to interleave or order them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, f, *args) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def run_next(self) -> None:
        f, args, d = self.calls.pop(0)
        defer.maybeDeferred(f, *args).chainDeferred(d)

    def run_all(self) -> None:
        while self.calls:
            self.run_next()


def figures() -> defer.Deferred:
    return defer.succeed({"cpu_usage": 1.5, "memory_usage": 20.0, "disk_usage": 30.0})


class World:
    """A temp data dir and config, a manager, an API, and a Clock for time."""

    def __init__(self, testcase) -> None:
        self.dir = tempfile.mkdtemp(prefix="bolt-unit-")
        testcase.addCleanup(_rmtree, self.dir)
        self.clock = task.Clock()
        self.clock.advance(1_780_000_000)
        self.config_path = os.path.join(self.dir, "etc", "config.json")
        self.data_dir = os.path.join(self.dir, "data")
        self.config, _ = configuration.load(self.config_path, self.data_dir, initial_password=PASSWORD, cost=CHEAP)
        self.store = ProjectStore(os.path.join(self.data_dir, "projects"), inline)
        self.busy_ports: set[int] = set()
        self.host = Host(images=FakeImages(), rootfs=FakeRootFS(), cgroups=FakeCgroups(), runtime=FakeRuntime(),
                         network=FakeNetwork(), firewall=FakeFirewall(), port_busy=self.busy_ports.__contains__)
        self.manager = self.new_manager()
        self.admin = AdminAccount(self.config, inline, cost=CHEAP)
        self.api = BoltAPI(self.manager, self.admin, UpdateChecker(None, reactor=self.clock),
                           reactor=self.clock, run_in_thread=inline)

    def new_manager(self) -> Manager:
        """A manager over what is stored now, as a restarted server would build it."""
        return Manager(self.store, self.store.load_all(), host=self.host,
                       default_limits=self.config["default_resource_limits"],
                       default_distro=self.config["default_distro"], system=figures,
                       allowed_ports=self.config["allowed_ports"], reactor=self.clock)

    def config_on_disk(self) -> dict:
        with open(self.config_path) as f:
            return json.load(f)


def _rmtree(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


class TrackingFactory(WrappingFactory):
    """Remembers server-side connections, so a test can wait for the first and make sure every one
    has ended before it does (trial fails a test that leaves a connection behind)."""

    def __init__(self, wrapped) -> None:
        super().__init__(wrapped)
        self.connected: defer.Deferred = defer.Deferred()
        self._idle: list[defer.Deferred] = []

    def registerProtocol(self, p) -> None:
        super().registerProtocol(p)
        if not self.connected.called:
            self.connected.callback(None)

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> defer.Deferred:
        """Abort what is still open; fires once every connection has ended."""
        if not self.protocols:
            return defer.succeed(None)
        for p in list(self.protocols):
            p.transport.abortConnection()
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d
