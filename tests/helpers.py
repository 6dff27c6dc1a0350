"""Shared builders for unit tests: a core and an API wired with fakes, no network, no threads."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.internet import defer, task

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
