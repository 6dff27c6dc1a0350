"""The core: every operation Bolt offers, as one method each.

The manager validates input, orders the steps, persists the result and undoes half-done work when a
step fails.  It raises :mod:`bolt.errors` and knows nothing of HTTP or of the shell protocol.  Host
work goes through the adapters in :class:`Host`.

Crash safety rests on two rules.  A sandbox is stored only once every host step of its creation
succeeded, and at start everything on the host that belongs to no stored sandbox is removed; so a
crash during a create leaves nothing.  A delete first stores the sandbox as "deleting", then tears
down, then forgets it; a crash in between is finished at the next start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bolt import __version__
from bolt.errors import Conflict, InvalidInput, NotFound, Unavailable, UpstreamFailed
from bolt.execs import parse_exec
from bolt.host import cgroups as cgrouping
from bolt.host import images as imaging
from bolt.host import runtime as running
from bolt.netplan import AddressPool, Forward, PoolExhausted, ReverseForward, SandboxNet, link_id
from bolt.limits import validate_limits
from bolt.model import Project, ResourceLimits, Sandbox, ports_json, utc_now_iso, validate_name
from bolt.rollback import Rollback
from bolt.shells import ShellTickets, Ticket
from bolt.store import ProjectStore

SystemFigures = Callable[[], defer.Deferred]


@dataclass
class Host:
    """The host adapters the core drives (see bolt.host)."""

    images: Any
    rootfs: Any
    cgroups: Any
    runtime: Any
    network: Any
    firewall: Any
    port_busy: Callable[[int], bool] = lambda port: False


def _cgroup_limits(limits: ResourceLimits) -> cgrouping.Limits:
    return cgrouping.Limits(limits.cpu_quota_us, limits.memory_limit_bytes, limits.pids_max)


class Manager:
    log = Logger()

    def __init__(self, store: ProjectStore, projects: dict[str, Project], *, host: Host,
                 default_limits: ResourceLimits, default_distro: str, system: SystemFigures,
                 shells: ShellTickets | None = None, allowed_ports: frozenset[int] = frozenset(range(10000, 20000)),
                 reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store
        self.projects = projects
        self.host = host
        self.default_limits = default_limits
        self.default_distro = default_distro
        self.system = system
        self.allowed_ports = allowed_ports
        self.pool: AddressPool = host.network.pool
        for project in projects.values():
            for sandbox in project.sandboxes.values():
                if sandbox.network.get("address") and not self.pool.is_allocated(sandbox.network["address"]):
                    self.pool.claim(sandbox.network["address"])
        self.shells = shells or ShellTickets(self.reactor, frozenset(range(20001, 25001)), 3600)
        self._terminals: dict[tuple[str, str], set[Any]] = {}
        #: Opens a listener for a shell ticket (set by the shell face; see bolt.shell.gateway).
        self.shell_listen: Callable[[int, Ticket], Callable[[], object]] | None = None
        # Names with an operation in flight: ("p", project) or ("s", project, sandbox).
        self._busy: set[tuple[str, ...]] = set()

    def _claim(self, *key: str) -> None:
        if key in self._busy:
            what = "project" if key[0] == "p" else "sandbox"
            raise Conflict(f"{what} {'/'.join(key[1:])!r} is busy with another operation; try again")
        self._busy.add(key)

    def _release(self, *key: str) -> None:
        self._busy.discard(key)

    # -- start ---------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        """Bring the host in line with the stored state (after a crash, a reboot, a restart)."""
        yield self.host.images.recover()
        yield self.host.network.setup()
        for project in self.list_projects():
            for sandbox in list(project.sandboxes.values()):
                if sandbox.state == "deleting":
                    yield self._finish_delete(project, sandbox)
        # Rules first (unknown links are dropped by default), then links, then sandboxes.
        yield self.host.firewall.apply([self._net(p, s) for p in self.list_projects()
                                        for s in p.sandboxes.values() if s.network])
        owned = {s.network.get("link") for p in self.projects.values() for s in p.sandboxes.values()}
        for ident in (yield self.host.network.list_links()):
            if ident not in owned:
                self.log.warn("removing stray sandbox link {link}", link=ident)
                yield self.host.network.detach(ident)
        known: set[tuple[str, str]] = set()
        for project in self.list_projects():
            # Every project's cgroup gets its stored limits back, with or without sandboxes: a crash
            # between writing new limits and storing them must not leave the cgroup disagreeing.
            try:
                self.host.cgroups.ensure_project(project.name, _cgroup_limits(project.resource_limits))
            except cgrouping.CgroupError as e:
                self.log.error("limits of project {project} could not be restored: {error}",
                               project=project.name, error=e)
            for sandbox in list(project.sandboxes.values()):
                known.add((project.name, sandbox.name))
                try:
                    yield self._restore(project, sandbox)
                except Exception as e:
                    self.log.error("sandbox {project}/{sandbox} could not be restored: {error}",
                                   project=project.name, sandbox=sandbox.name, error=e)
        self._remove_stray_cgroups(known)
        for mount_point in self.host.rootfs.stray_mounts(known):
            self.log.warn("removing stray mount {path}", path=mount_point)
            yield self.host.rootfs.unmount_stray(mount_point)
        for project_name, name in self.host.rootfs.list_on_disk():
            if (project_name, name) not in known:
                self.log.warn("removing stray sandbox files of {project}/{sandbox}", project=project_name, sandbox=name)
                yield self.host.rootfs.remove_stray(project_name, name)

    @defer.inlineCallbacks
    def _restore(self, project: Project, sandbox: Sandbox):
        """Adopt a running sandbox as it is, or bring back what a reboot or crash took away."""
        self.host.cgroups.ensure_project(project.name, _cgroup_limits(project.resource_limits))
        if sandbox.state == "running" and self._alive(sandbox):
            links = yield self.host.network.list_links()
            if sandbox.network["link"] not in links:
                yield self.host.network.attach(sandbox.runtime["pid"], sandbox.network["link"],
                                               sandbox.network["address"])
            yield self.host.firewall.apply_inside(sandbox.runtime["pid"], self._net(project, sandbox))
            self.log.info("sandbox {project}/{sandbox} adopted: pid {pid} still running",
                          project=project.name, sandbox=sandbox.name, pid=sandbox.runtime["pid"])
            return
        paths = self.host.rootfs.paths(project.name, sandbox.name)
        if not self.host.rootfs.is_mounted(paths.rootfs):
            lower = self._image_path(sandbox.distro)
            yield self.host.rootfs.mount(project.name, sandbox.name, lower)
            self.log.info("sandbox {project}/{sandbox} root filesystem mounted again",
                          project=project.name, sandbox=sandbox.name)
        self._clear_cgroup(project.name, sandbox.name)  # whatever outlived its pid 1
        if sandbox.state == "running":
            sandbox.runtime = yield self._boot(project, sandbox)
            yield self.store.save(project)
            self.log.info("sandbox {project}/{sandbox} started again (its pid 1 was gone)",
                          project=project.name, sandbox=sandbox.name)
        else:
            sandbox.runtime = {}

    def _remove_stray_cgroups(self, known: set[tuple[str, str]]) -> None:
        cgroups = self.host.cgroups
        for project_name in cgroups.list_projects():
            for name in cgroups.list_sandboxes(project_name):
                if (project_name, name) not in known:
                    self.log.warn("removing stray cgroup of {project}/{sandbox}", project=project_name, sandbox=name)
                    self._clear_cgroup(project_name, name)
            if project_name not in self.projects:
                cgroups.remove_project(project_name)

    def _clear_cgroup(self, project: str, name: str) -> None:
        if name in self.host.cgroups.list_sandboxes(project):
            self.host.cgroups.kill_sandbox(project, name)
            self.host.cgroups.remove_sandbox(project, name)

    def _alive(self, sandbox: Sandbox) -> bool:
        rt = sandbox.runtime
        return bool(rt) and self.host.runtime.alive(rt["pid"], rt["start_time"])

    @defer.inlineCallbacks
    def _boot(self, project: Project, sandbox: Sandbox, fresh: bool = False):
        """Start a sandbox's pid 1 in its own cgroup and wire its network; returns the runtime record.

        ``fresh``: a sandbox being created, whose link id no link can have yet (ids are unique among
        stored sandboxes, and links of no stored sandbox are removed at start), so there is no
        earlier link to delete first -- one process less per create.
        """
        cgroups, name = self.host.cgroups, sandbox.name
        cgroups.ensure_project(project.name, _cgroup_limits(project.resource_limits))
        cgroups.ensure_sandbox(project.name, name)
        process = None
        try:
            paths = self.host.rootfs.paths(project.name, name)
            process = yield self.host.runtime.start(paths.rootfs, name, cgroups.procs_files(project.name, name))
            net = sandbox.network
            if not fresh:
                yield self.host.network.detach(net["link"])  # a link of an earlier life, if any
            yield self.host.network.attach(process.pid, net["link"], net["address"])
            yield self.host.firewall.set_sandbox(self._net(project, sandbox))
            yield self.host.firewall.apply_inside(process.pid, self._net(project, sandbox))
        except BaseException:
            if process is not None:
                yield self.host.runtime.stop(process.pid, process.start_time)
                yield self.host.network.detach(sandbox.network["link"])
            self._clear_cgroup(project.name, name)
            raise
        return {"pid": process.pid, "start_time": process.start_time}

    def _net(self, project: Project, sandbox: Sandbox) -> SandboxNet:
        """What the firewall needs to know of a sandbox, from its record."""
        return SandboxNet(project.name, sandbox.name, sandbox.network["address"],
                          self.host.network.link_name(sandbox.network["link"]),
                          tuple(Forward(h, c) for h, c in sandbox.port_mappings.items()),
                          tuple(ReverseForward(c, h) for c, h in sandbox.reverse_port_mappings.items()))

    @defer.inlineCallbacks
    def _halt(self, project: Project, sandbox: Sandbox):
        """Stop every process of a sandbox (SIGTERM, then SIGKILL after a grace period)."""
        self.shells.revoke(project.name, sandbox.name)
        # An interactive shell ignores SIGTERM; hang its terminal up first so it leaves at once.
        for terminal in list(self._terminals.pop((project.name, sandbox.name), ())):
            terminal.hangup()
        rt = sandbox.runtime
        if rt:
            yield self.host.runtime.stop(rt["pid"], rt["start_time"])
        if sandbox.network:
            yield self.host.network.detach(sandbox.network["link"])
        self._clear_cgroup(project.name, sandbox.name)
        sandbox.runtime = {}

    def _image_path(self, distro: str) -> str:
        info = self.host.images.get(distro)
        if info.state != "ready" or not info.path:
            raise NotFound(f"image {distro} is not ready")
        return info.path

    @defer.inlineCallbacks
    def stop(self):
        """Server shutdown: sandboxes keep running (they are adopted at the next start)."""
        self.shells.close_all()
        yield self.host.images.stop()
        if not self.projects:  # nothing of ours is left on the host: leave no trace either
            self.host.cgroups.remove_root()
            yield self.host.firewall.teardown_all()
            yield self.host.network.teardown()

    # -- projects ------------------------------------------------------------------------------

    def list_projects(self) -> list[Project]:
        return [self.projects[n] for n in sorted(self.projects)]

    def get_project(self, name: Any) -> Project:
        name = validate_name(name, "project name")
        try:
            return self.projects[name]
        except KeyError:
            raise NotFound(f"project {name!r} does not exist") from None

    @defer.inlineCallbacks
    def create_project(self, name: Any):
        name = validate_name(name, "project name")
        if name in self.projects:
            raise Conflict(f"project {name!r} already exists")
        self._claim("p", name)
        try:
            project = Project(name, utc_now_iso(self.reactor.seconds()),
                              ResourceLimits(**self.default_limits.to_json()))
            self.host.cgroups.ensure_project(name, _cgroup_limits(project.resource_limits))
            try:
                yield self.store.save(project)
            except BaseException:
                self.host.cgroups.remove_project(name)
                raise
            self.projects[name] = project
        finally:
            self._release("p", name)
        self.log.info("project {project} created", project=name)
        return project

    @defer.inlineCallbacks
    def delete_project(self, name: Any, force: bool = False):
        project = self.get_project(name)
        if project.sandboxes and not force:
            raise Conflict(f"project {project.name!r} still has {len(project.sandboxes)} sandbox(es); "
                           "delete them first or use ?force=1")
        if any(k[:2] == ("s", project.name) for k in self._busy):
            raise Conflict(f"project {project.name!r} has sandbox operations in flight; try again")
        self._claim("p", project.name)
        try:
            for sandbox_name in sorted(project.sandboxes):
                yield self._delete_sandbox(project, project.sandboxes[sandbox_name])
            yield self.store.remove(project.name)
            del self.projects[project.name]
            self.host.cgroups.remove_project(project.name)
        finally:
            self._release("p", project.name)
        self.log.info("project {project} deleted", project=project.name)
        return project

    @defer.inlineCallbacks
    def set_limits(self, name: Any, data: Any):
        project = self.get_project(name)
        limits = validate_limits(data, project.resource_limits)
        previous = project.resource_limits
        try:
            self.host.cgroups.set_limits(project.name, _cgroup_limits(limits))
        except cgrouping.CgroupError as e:
            raise Conflict(f"limits not applied: {e}") from None
        project.resource_limits = limits
        try:
            yield self.store.save(project)
        except Exception:
            project.resource_limits = previous
            self.host.cgroups.set_limits(project.name, _cgroup_limits(previous))
            raise
        self.log.info("project {project} limits set to {limits}", project=project.name, limits=limits.to_json())
        return project

    # -- images --------------------------------------------------------------------------------

    def _distro(self, distro: Any, *, known_suite: bool = True) -> str:
        try:
            if known_suite:
                return self.host.images.validate(distro)
            return str(imaging.parse_distro(distro))
        except imaging.InvalidDistro as e:
            raise InvalidInput(str(e)) from None

    def list_images(self) -> list[dict[str, Any]]:
        return [self._image_json(info) for info in self.host.images.list()]

    def get_image(self, distro: Any) -> dict[str, Any]:
        try:
            return self._image_json(self.host.images.get(self._distro(distro, known_suite=False)))
        except imaging.ImageNotFound:
            raise NotFound(f"no image for {distro}") from None

    def build_image(self, distro: Any) -> dict[str, Any]:
        return self._image_json(self.host.images.start(self._distro(distro)))

    def _image_json(self, info) -> dict[str, Any]:
        users = [f"{p.name}/{s.name}" for p in self.list_projects() for s in p.sandboxes.values()
                 if s.distro == info.distro]
        return {**info.to_json(), "sandboxes": users}

    @defer.inlineCallbacks
    def delete_image(self, distro: Any):
        key = self._distro(distro, known_suite=False)
        in_use = any(s.distro == key for p in self.projects.values() for s in p.sandboxes.values())
        in_use = in_use or any(k[0] == "s" for k in self._busy)  # a create may be about to use it
        try:
            yield self.host.images.remove(key, in_use)
        except imaging.ImageInUse:
            raise Conflict(f"image {key} is used by sandboxes; delete them first") from None
        except imaging.ImageBusy:
            raise Conflict(f"image {key} is being built") from None
        except imaging.ImageNotFound:
            raise NotFound(f"no image for {key}") from None
        self.log.info("image {distro} removed", distro=key)
        return {"deleted": key}

    # -- sandboxes -----------------------------------------------------------------------------

    def get_sandbox(self, project_name: Any, name: Any) -> tuple[Project, Sandbox]:
        project = self.get_project(project_name)
        name = validate_name(name, "sandbox name")
        sandbox = project.sandboxes.get(name)
        if sandbox is None or sandbox.state == "deleting":
            raise NotFound(f"sandbox {name!r} does not exist in project {project.name!r}")
        return project, sandbox

    def list_sandboxes(self, project_name: Any) -> list[Sandbox]:
        project = self.get_project(project_name)
        return [s for _, s in sorted(project.sandboxes.items()) if s.state != "deleting"]

    @defer.inlineCallbacks
    def create_sandbox(self, project_name: Any, name: Any, distro: Any = None):
        project = self.get_project(project_name)
        name = validate_name(name, "sandbox name")
        distro = self._distro(self.default_distro if distro is None else distro)
        if name in project.sandboxes:
            raise Conflict(f"sandbox {name!r} already exists in project {project.name!r}")
        if ("p", project.name) in self._busy:
            raise Conflict(f"project {project.name!r} is busy with another operation; try again")
        self._claim("s", project.name, name)
        undo = Rollback(f"create sandbox {project.name}/{name}")
        try:
            try:
                lower = yield self.host.images.ensure(distro)
            except imaging.ImageBuildFailed as e:
                raise UpstreamFailed(str(e)) from None
            yield self.host.rootfs.create(project.name, name, lower)
            undo.push("root filesystem", lambda: self.host.rootfs.destroy(project.name, name))
            sandbox = Sandbox(name, distro, utc_now_iso(self.reactor.seconds()))
            sandbox.network = {"address": self._allocate_address(), "link": self._new_link_id(project.name, name)}
            undo.push("address", lambda: self.pool.release(sandbox.network["address"]))
            undo.push("firewall rules", lambda: self.host.firewall.remove_sandbox(project.name, name))
            sandbox.runtime = yield self._boot(project, sandbox, fresh=True)
            undo.push("processes", lambda: self._halt(project, sandbox))
            project.sandboxes[name] = sandbox
            undo.push("record", lambda: project.sandboxes.pop(name, None))
            yield self.store.save(project)
        except BaseException:
            yield undo.run()
            raise
        finally:
            self._release("s", project.name, name)
        self.log.info("sandbox {project}/{sandbox} created from {distro}", project=project.name,
                      sandbox=name, distro=distro)
        return sandbox

    def delete_sandbox(self, project_name: Any, name: Any) -> defer.Deferred:
        try:
            project, sandbox = self.get_sandbox(project_name, name)
        except Exception:
            return defer.fail()
        return self._delete_sandbox(project, sandbox)

    @defer.inlineCallbacks
    def _delete_sandbox(self, project: Project, sandbox: Sandbox):
        self._claim("s", project.name, sandbox.name)
        try:
            previous = sandbox.state
            sandbox.state = "deleting"
            try:
                yield self.store.save(project)
            except Exception:
                sandbox.state = previous
                raise
            yield self._finish_delete(project, sandbox)
        finally:
            self._release("s", project.name, sandbox.name)
        self.log.info("sandbox {project}/{sandbox} deleted", project=project.name, sandbox=sandbox.name)
        return sandbox

    @defer.inlineCallbacks
    def _finish_delete(self, project: Project, sandbox: Sandbox):
        yield self._halt(project, sandbox)
        yield self.host.firewall.remove_sandbox(project.name, sandbox.name)
        yield self.host.rootfs.destroy(project.name, sandbox.name)
        project.sandboxes.pop(sandbox.name, None)
        yield self.store.save(project)
        if sandbox.network.get("address"):
            self.pool.release(sandbox.network["address"])

    def _allocate_address(self) -> str:
        try:
            return self.pool.allocate()
        except PoolExhausted:
            raise Unavailable(f"no free address left in sandbox_network {self.pool.network}") from None

    def _new_link_id(self, project: str, name: str) -> str:
        """A link id no other sandbox uses (a hash of the names; rehashed on the rare collision)."""
        taken = {s.network.get("link") for p in self.projects.values() for s in p.sandboxes.values()}
        for attempt in range(100):
            ident = link_id(project, name if attempt == 0 else f"{name}#{attempt}")
            if ident not in taken:
                return ident
        raise Unavailable("no free link id")

    # -- running ---------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stop_sandbox(self, project_name: Any, name: Any):
        project, sandbox = self.get_sandbox(project_name, name)
        if sandbox.state == "stopped":
            return sandbox
        self._claim("s", project.name, sandbox.name)
        try:
            yield self._halt(project, sandbox)
            sandbox.state = "stopped"
            yield self.store.save(project)
        finally:
            self._release("s", project.name, sandbox.name)
        self.log.info("sandbox {project}/{sandbox} stopped", project=project.name, sandbox=sandbox.name)
        return sandbox

    @defer.inlineCallbacks
    def start_sandbox(self, project_name: Any, name: Any):
        project, sandbox = self.get_sandbox(project_name, name)
        if sandbox.state == "running" and self._alive(sandbox):
            return sandbox
        self._claim("s", project.name, sandbox.name)
        try:
            paths = self.host.rootfs.paths(project.name, sandbox.name)
            if not self.host.rootfs.is_mounted(paths.rootfs):
                yield self.host.rootfs.mount(project.name, sandbox.name, self._image_path(sandbox.distro))
            self._clear_cgroup(project.name, sandbox.name)
            runtime = yield self._boot(project, sandbox)
            previous = (sandbox.state, sandbox.runtime)
            sandbox.state, sandbox.runtime = "running", runtime
            try:
                yield self.store.save(project)
            except BaseException:
                sandbox.state, sandbox.runtime = previous
                yield self._halt(project, Sandbox(sandbox.name, sandbox.distro, "", runtime=runtime))
                raise
        finally:
            self._release("s", project.name, sandbox.name)
        self.log.info("sandbox {project}/{sandbox} started", project=project.name, sandbox=sandbox.name)
        return sandbox

    def _running(self, project_name: Any, name: Any) -> tuple[Project, Sandbox]:
        project, sandbox = self.get_sandbox(project_name, name)
        if sandbox.state != "running" or not self._alive(sandbox):
            raise Conflict(f"sandbox {project.name}/{sandbox.name} is not running; start it first")
        return project, sandbox

    @defer.inlineCallbacks
    def exec(self, project_name: Any, name: Any, body: Any):
        """Run a command in a running sandbox; see bolt.execs for the request's rules."""
        request = parse_exec(body)
        project, sandbox = self._running(project_name, name)
        try:
            result = yield self.host.runtime.exec(
                sandbox.runtime["pid"], request.command,
                cgroup_procs=self.host.cgroups.procs_files(project.name, sandbox.name),
                env=request.env, cwd=request.cwd, stdin=request.stdin, timeout=request.timeout,
                start_time=sandbox.runtime["start_time"])
        except running.SandboxGone:
            raise Conflict(f"sandbox {project.name}/{sandbox.name} is not running") from None
        except running.ExecFailed as e:
            raise InvalidInput(f"command could not be started: {e}") from None
        self.log.info("exec in {project}/{sandbox}: exit {code} in {duration:.3f}s", project=project.name,
                      sandbox=sandbox.name, code=result.exit_code, duration=result.duration)
        return result.to_json()

    # -- port forwards ----------------------------------------------------------------------------

    def _port(self, body: dict[str, Any], field: str, *, allowed: bool) -> int:
        value = body.get(field)
        if value is None:
            raise InvalidInput(f"field {field!r} is required")
        if type(value) is not int:
            raise InvalidInput(f"{field} must be an integer, got {value!r:.40}")
        if allowed:
            if value not in self.allowed_ports:
                lo, hi = min(self.allowed_ports), max(self.allowed_ports)
                raise InvalidInput(f"{field} {value} is not in allowed_ports ({lo}-{hi} as configured)")
        elif not 1 <= value <= 65535:
            raise InvalidInput(f"{field} must be between 1 and 65535, got {value}")
        return value

    @staticmethod
    def _fields(body: Any, fields: set[str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        unknown = sorted(set(body) - fields)
        if unknown:
            raise InvalidInput(f"unknown field {unknown[0]!r}; accepted: {', '.join(sorted(fields))}")
        return body

    @defer.inlineCallbacks
    def add_forward(self, project_name: Any, name: Any, body: Any):
        """Host port -> sandbox port, on every host address (see bolt.host.firewall)."""
        body = self._fields(body, {"host_port", "container_port"})
        project, sandbox = self.get_sandbox(project_name, name)
        host_port = self._port(body, "host_port", allowed=True)
        container_port = self._port(body, "container_port", allowed=False)
        for p in self.projects.values():
            for s in p.sandboxes.values():
                if host_port in s.port_mappings:
                    raise Conflict(f"host port {host_port} is already forwarded to {p.name}/{s.name}")
        if self.host.port_busy(host_port):
            raise Conflict(f"host port {host_port} is in use by a program on the host")
        self._claim("s", project.name, sandbox.name)
        forward = Forward(host_port, container_port)
        try:
            # The rules and the record are written at the same time: the record's durable write (two
            # fsyncs and a rename) takes about as long as the iptables-restore, and doing one after
            # the other doubled the wait.  If either fails the other is undone.  A crash in between
            # is settled at the next start, which rebuilds the rules from the records.
            sandbox.port_mappings[host_port] = container_port
            applied = self.host.firewall.add_forward(project.name, sandbox.name, forward)
            saved = self.store.save(project)
            (rules_ok, rules), (record_ok, record) = yield defer.DeferredList([applied, saved], consumeErrors=True)
            if not (rules_ok and record_ok):
                del sandbox.port_mappings[host_port]
                if rules_ok:
                    yield self.host.firewall.remove_forward(project.name, sandbox.name, forward)
                if record_ok:
                    yield self.store.save(project)
                (record if rules_ok else rules).raiseException()
        finally:
            self._release("s", project.name, sandbox.name)
        self.log.info("forward host port {host_port} -> {project}/{sandbox}:{container_port}", host_port=host_port,
                      project=project.name, sandbox=sandbox.name, container_port=container_port)
        return self._forwards_json(sandbox)

    @defer.inlineCallbacks
    def remove_forward(self, project_name: Any, name: Any, host_port: Any):
        project, sandbox = self.get_sandbox(project_name, name)
        port = _path_port(host_port, "host_port")
        if port not in sandbox.port_mappings:
            raise NotFound(f"host port {port} is not forwarded to {project.name}/{sandbox.name}")
        self._claim("s", project.name, sandbox.name)
        try:
            container_port = sandbox.port_mappings[port]
            yield self.host.firewall.remove_forward(project.name, sandbox.name, Forward(port, container_port))
            del sandbox.port_mappings[port]
            yield self.store.save(project)
        finally:
            self._release("s", project.name, sandbox.name)
        self.log.info("forward of host port {port} removed", port=port)
        return self._forwards_json(sandbox)

    @defer.inlineCallbacks
    def add_reverse_forward(self, project_name: Any, name: Any, body: Any):
        """Sandbox 127.0.0.1:container_port (and gateway:container_port) -> host 127.0.0.1:host_port."""
        body = self._fields(body, {"host_port", "container_port"})
        project, sandbox = self.get_sandbox(project_name, name)
        container_port = self._port(body, "container_port", allowed=False)
        host_port = self._port(body, "host_port", allowed=True)
        if container_port in sandbox.reverse_port_mappings:
            raise Conflict(f"container port {container_port} of {project.name}/{sandbox.name} is already forwarded")
        self._claim("s", project.name, sandbox.name)
        try:
            reverse = ReverseForward(container_port, host_port)
            yield self.host.firewall.add_reverse_forward(project.name, sandbox.name, reverse)
            sandbox.reverse_port_mappings[container_port] = host_port
            try:
                yield self._apply_inside(project, sandbox)
                yield self.store.save(project)
            except BaseException:
                del sandbox.reverse_port_mappings[container_port]
                yield self.host.firewall.remove_reverse_forward(project.name, sandbox.name, reverse)
                yield self._apply_inside(project, sandbox)
                raise
        finally:
            self._release("s", project.name, sandbox.name)
        self.log.info("reverse forward {project}/{sandbox}:{container_port} -> host 127.0.0.1:{host_port}",
                      project=project.name, sandbox=sandbox.name, container_port=container_port, host_port=host_port)
        return self._forwards_json(sandbox)

    @defer.inlineCallbacks
    def remove_reverse_forward(self, project_name: Any, name: Any, container_port: Any):
        project, sandbox = self.get_sandbox(project_name, name)
        port = _path_port(container_port, "container_port")
        if port not in sandbox.reverse_port_mappings:
            raise NotFound(f"container port {port} of {project.name}/{sandbox.name} is not forwarded")
        self._claim("s", project.name, sandbox.name)
        try:
            reverse = ReverseForward(port, sandbox.reverse_port_mappings[port])
            yield self.host.firewall.remove_reverse_forward(project.name, sandbox.name, reverse)
            del sandbox.reverse_port_mappings[port]
            yield self._apply_inside(project, sandbox)
            yield self.store.save(project)
        finally:
            self._release("s", project.name, sandbox.name)
        self.log.info("reverse forward of {project}/{sandbox}:{port} removed", project=project.name,
                      sandbox=sandbox.name, port=port)
        return self._forwards_json(sandbox)

    def _apply_inside(self, project: Project, sandbox: Sandbox) -> defer.Deferred:
        if sandbox.state == "running" and self._alive(sandbox):
            return self.host.firewall.apply_inside(sandbox.runtime["pid"], self._net(project, sandbox))
        return defer.succeed(None)

    @staticmethod
    def _forwards_json(sandbox: Sandbox) -> dict[str, Any]:
        return {"port_mappings": ports_json(sandbox.port_mappings),
                "reverse_port_mappings": ports_json(sandbox.reverse_port_mappings)}

    # -- shells ----------------------------------------------------------------------------------

    def open_shell(self, project_name: Any, name: Any) -> dict[str, Any]:
        """A one-shot token and the port to present it on (see bolt.shells)."""
        project, sandbox = self._running(project_name, name)
        if self.shell_listen is None:
            raise Unavailable("the shell service is not running")
        token, ticket = self.shells.issue(project.name, sandbox.name, self.shell_listen)
        return {"port": ticket.port, "token": token, "expires_at": utc_now_iso(ticket.expires_at),
                "expires_in": round(ticket.expires_at - self.reactor.seconds())}

    def redeem_shell(self, port: int, token: str) -> Ticket | None:
        return self.shells.redeem(port, token)

    def attach_shell(self, ticket: Ticket, term: str, rows: int, columns: int, client: str) -> defer.Deferred:
        """A terminal with a login shell in the ticket's sandbox (bash if it has one, else sh)."""
        project, sandbox = self._running(ticket.project, ticket.sandbox)
        self.shells.session_open(ticket.key)
        command = ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"]
        try:
            d = self.host.runtime.open_terminal(
                sandbox.runtime["pid"], command,
                cgroup_procs=self.host.cgroups.procs_files(project.name, sandbox.name),
                env={"TERM": term, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash"},
                start_time=sandbox.runtime["start_time"], rows=rows, columns=columns)
        except BaseException:
            self.shells.session_close(ticket.key)
            raise

        def opened(terminal):
            self._terminals.setdefault(ticket.key, set()).add(terminal)
            self.log.info("shell session opened in {project}/{sandbox} for {client}", project=project.name,
                          sandbox=sandbox.name, client=client)
            return terminal

        def failed(failure):
            self.shells.session_close(ticket.key)
            if failure.check(Exception) and getattr(failure.value, "kind", "") == "gone":
                raise Conflict(f"sandbox {project.name}/{sandbox.name} is not running")
            return failure

        return d.addCallbacks(opened, failed)

    def shell_closed(self, ticket: Ticket, client: str, bytes_in: int, bytes_out: int) -> None:
        self.shells.session_close(ticket.key)
        live = {t for t in self._terminals.get(ticket.key, ()) if getattr(t, "fd", -1) >= 0}  # still open
        if live:
            self._terminals[ticket.key] = live
        else:
            self._terminals.pop(ticket.key, None)
        self.log.info("shell session closed in {project}/{sandbox} for {client}: {bytes_in} bytes in, "
                      "{bytes_out} bytes out", project=ticket.project, sandbox=ticket.sandbox, client=client,
                      bytes_in=bytes_in, bytes_out=bytes_out)

    # -- views ---------------------------------------------------------------------------------

    def sandbox_json(self, project: Project, sandbox: Sandbox) -> dict[str, Any]:
        data = sandbox.to_json()
        runtime = data.pop("runtime", {})
        network = data.pop("network", {})
        if sandbox.state == "running":
            data["pid"] = runtime.get("pid")
        if network.get("address"):
            data["address"] = network["address"]
            data["gateway"] = self.pool.gateway
        return {"project": project.name, **data}

    def project_json(self, project: Project) -> dict[str, Any]:
        data = project.to_json()
        data["sandboxes"] = [self.sandbox_json(project, s) for s in self.list_sandboxes(project.name)]
        return data

    def status(self) -> defer.Deferred:
        """The reference documentation's status shape, with system figures from a thread."""
        return self.system().addCallback(self._status)

    def _status(self, figures: dict[str, float]) -> dict[str, Any]:
        projects = []
        for p in self.list_projects():
            limits = p.resource_limits
            projects.append({
                "name": p.name,
                "sandboxes": [{"name": s.name, "distro": s.distro, "created_at": s.created_at,
                               "port_mappings": ports_json(s.port_mappings),
                               "reverse_port_mappings": ports_json(s.reverse_port_mappings)}
                              for s in self.list_sandboxes(p.name)],
                "resource_limits": {"cpu_quota_us": limits.cpu_quota_us,
                                    "memory_limit_bytes": limits.memory_limit_bytes},
                "created_at": p.created_at,
            })
        return {"projects": projects, "system": figures, "version": __version__}


def _path_port(value: Any, what: str) -> int:
    """A port number from a URL path segment."""
    # isascii: str.isdigit() is also true of "²" (which int() refuses) and of other scripts' digits.
    if (not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 5
            or not 1 <= int(value) <= 65535):
        raise InvalidInput(f"{what} in the path must be a port number between 1 and 65535")
    return int(value)
