"""The composition root: twistd options, configuration, and every part wired together.

``twistd -n bolt`` (twisted/plugins/bolt_plugin.py) and ``twistd -ny bolt.tac`` both end in
:func:`makeService`.  Start-up work that must finish before the server answers (loading config and
state, the certificate) happens here, synchronously, before the reactor runs; anything that fails
stops the server with a message naming what to fix.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import sys

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from bolt import __version__
from bolt import config as configuration
from bolt import system, tls
from bolt.admin import AdminAccount
from bolt.api import BoltAPI
from bolt.errors import ConfigError, StateError
from bolt.host.cgroups import CgroupError, Cgroups
from bolt.host.firewall import Firewall
from bolt.host.network import Network, host_port_busy
from bolt.host.images import ImageStore
from bolt.host.process import ReactorRunner
from bolt.host.rootfs import RootFS
from bolt.host.runtime import Runtime, become_subreaper
from bolt.lag import LagMonitor
from bolt.manager import Host, Manager
from bolt.netplan import AddressPool, FirewallConfig
from bolt.shell.gateway import ShellGateway
from bolt.shells import ShellTickets
from bolt.store import ProjectStore
from bolt.updates import UpdateChecker
from bolt.web import AccessLoggingSite

log = Logger(namespace="bolt.service")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Bolt: lightweight sandboxes behind an HTTPS JSON API and a token-authenticated TCP shell."
    optParameters = [
        ["host", None, "0.0.0.0", "Address the API listens on (IPv4 or IPv6)."],
        ["port", None, "5000", "TCP port of the HTTPS API.", int],
        ["config", None, "/etc/bolt/config.json", "Path of the JSON configuration file."],
        ["data-dir", None, "/var/bolt", "Directory of the state, projects/, sandboxes/ and base_images/."],
    ]

    def postOptions(self) -> None:
        try:
            self["host"] = str(ipaddress.ip_address(self["host"]))
        except ValueError:
            raise usage.UsageError(f"--host must be an IP address, got {self['host']!r}") from None
        if not 1 <= self["port"] <= 65535:
            raise usage.UsageError(f"--port must be between 1 and 65535, got {self['port']}")
        for key in ("config", "data-dir"):
            value = self[key]
            if not value or "\0" in value:
                raise usage.UsageError(f"--{key} must be a path")
            self[key] = os.path.abspath(value)
        if os.path.isdir(self["config"]):
            raise usage.UsageError(f"--config {self['config']} is a directory; give the file's path")


class BoltService(service.MultiService):
    """Reconciles the host with the stored state first, then opens the listeners.

    Requests are only answered once every stored sandbox is back, so no client sees a half-restored
    server.  A reconciliation that fails stops the server: starting with state and host disagreeing
    would hide the problem.
    """

    def __init__(self, manager: Manager, reactor) -> None:
        super().__init__()
        self.manager = manager
        self.reactor = reactor

    def privilegedStartService(self) -> None:
        # twistd binds every listener here, before startService; ours must wait for reconciliation.
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        service.Service.startService(self)
        # A sandbox's pid 1 outlives the launcher that started it; as subreaper the server inherits
        # it and can reap it when it stops, instead of leaving a zombie to the host's init.
        become_subreaper()
        d = self.manager.start()
        d.addCallback(self._reconciled)
        d.addErrback(self._failed)

    def _reconciled(self, _) -> None:
        # What exists now (modules, classes, the restored state) lives as long as the process.  Frozen,
        # it is left out of the cyclic collector's full passes, which run on the reactor thread in
        # the middle of whatever allocates: with 100 sandboxes and 200 shells such a pass took 40-60 ms
        # every few seconds over ~75,000 objects; over the ~10,000 created since start it takes ~7 ms.
        gc.collect()
        gc.freeze()
        for child in self:
            child.startService()

    def _failed(self, failure) -> None:
        log.failure("bolt could not reconcile the host with its stored state; stopping", failure)
        self.reactor.stop()

    def stopService(self):
        d = super().stopService()
        d.addBoth(lambda _: self.manager.stop())
        return d


def _fail(message: str) -> SystemExit:
    sys.stderr.write(f"bolt: cannot start: {message}\n")
    return SystemExit(2)


def makeService(options: Options, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    data_dir = options["data-dir"]
    try:
        os.makedirs(data_dir, mode=0o750, exist_ok=True)
        for sub in ("projects", "sandboxes"):
            os.makedirs(os.path.join(data_dir, sub), mode=0o750, exist_ok=True)
        conf, generated = configuration.load(options["config"], data_dir,
                                             initial_password=os.environ.get("BOLT_ADMIN_PASSWORD"))
        store = ProjectStore(os.path.join(data_dir, "projects"))
        projects = store.load_all()
        cert, key = tls.ensure_certificate(os.path.dirname(options["config"]))
        context = tls.context_factory(cert, key)
        cgroups = Cgroups.from_host(conf["cgroup_parent"] or conf["instance_name"])
    except (ConfigError, StateError, CgroupError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"{e.filename or ''}: {e.strerror}") from None
    if generated:
        log.warn(
            "\n{bar}\nNo admin password was configured, so one was generated. Log in as {user!r} with:\n"
            "    {password}\nIt is shown only this once; change it with PUT /api/config.\n{bar}",
            bar="=" * 72, user=conf["admin_user"], password=generated)

    runner = ReactorRunner(reactor)
    host = Host(
        images=ImageStore(conf["base_image_dir"], runner, reactor, variant=conf["image_variant"],
                          include=conf["image_include"], mirror=conf["image_mirror"],
                          max_concurrent_builds=conf["max_concurrent_builds"]),
        rootfs=RootFS(os.path.join(data_dir, "sandboxes"), runner),
        cgroups=cgroups,
        runtime=Runtime(runner, reactor),
        network=Network(runner, pool=AddressPool(conf["sandbox_network"]), link_prefix=conf["instance_name"]),
        firewall=Firewall(runner, FirewallConfig(network=conf["sandbox_network"], outbound=conf["sandbox_outbound"],
                                                 prefix=conf["instance_name"].upper(),
                                                 link_prefix=conf["instance_name"])),
        port_busy=host_port_busy,
    )
    shells = ShellTickets(reactor, conf["shell_port_range"], conf["shell_token_expiry"],
                          max_sessions=conf["max_shell_sessions"],
                          max_per_sandbox=conf["max_shell_sessions_per_sandbox"])
    manager = Manager(store, projects, host=host, default_limits=conf["default_resource_limits"],
                      default_distro=conf["default_distro"], system=system.figures_source(data_dir, clock=reactor),
                      shells=shells, allowed_ports=conf["allowed_ports"], reactor=reactor)
    gateway = ShellGateway(manager, reactor, conf["shell_host"] or options["host"],
                           context if conf["shell_tls"] else None)
    manager.shell_listen = gateway.listen
    api = BoltAPI(manager, AdminAccount(conf), UpdateChecker(conf["update_url"], reactor=reactor),
                  reactor=reactor)
    top = BoltService(manager, reactor)
    endpoint = endpoints.SSL4ServerEndpoint(reactor, options["port"], context, interface=options["host"])
    StreamServerEndpointService(endpoint, AccessLoggingSite(api.resource())).setServiceParent(top)
    LagMonitor(reactor).setServiceParent(top)
    log.info("bolt {version} serving https://{host}:{port}/api with data in {data_dir}",
             version=__version__, host=options["host"], port=options["port"], data_dir=data_dir)
    return top


__all__ = ["Options", "makeService"]
