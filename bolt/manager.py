"""The core: every operation Bolt offers, as one method each.

The manager validates input, orders the steps, persists the result and undoes half-done work when a
step fails.  It raises :mod:`bolt.errors` and knows nothing of HTTP or of the shell protocol.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bolt import __version__
from bolt.errors import Conflict, NotFound
from bolt.limits import validate_limits
from bolt.model import Project, ResourceLimits, utc_now_iso, validate_name
from bolt.store import ProjectStore

SystemFigures = Callable[[], defer.Deferred]


class Manager:
    log = Logger()

    def __init__(self, store: ProjectStore, projects: dict[str, Project], *,
                 default_limits: ResourceLimits, system: SystemFigures, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store
        self.projects = projects
        self.default_limits = default_limits
        self.system = system
        self._busy: set[str] = set()

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
        if name in self.projects or name in self._busy:
            raise Conflict(f"project {name!r} already exists")
        project = Project(name, utc_now_iso(self.reactor.seconds()),
                          ResourceLimits(**self.default_limits.to_json()))
        self._busy.add(name)
        try:
            yield self.store.save(project)
        finally:
            self._busy.discard(name)
        self.projects[name] = project
        self.log.info("project {project} created", project=name)
        return project

    @defer.inlineCallbacks
    def delete_project(self, name: Any, force: bool = False):
        project = self.get_project(name)
        if project.name in self._busy:
            raise Conflict(f"project {project.name!r} is busy; try again")
        self._busy.add(project.name)
        try:
            yield self.store.remove(project.name)
        finally:
            self._busy.discard(project.name)
        del self.projects[project.name]
        self.log.info("project {project} deleted", project=project.name)
        return project

    @defer.inlineCallbacks
    def set_limits(self, name: Any, data: Any):
        project = self.get_project(name)
        limits = validate_limits(data, project.resource_limits)
        previous = project.resource_limits
        project.resource_limits = limits
        try:
            yield self.store.save(project)
        except Exception:
            project.resource_limits = previous
            raise
        self.log.info("project {project} limits set to {limits}", project=project.name, limits=limits.to_json())
        return project

    # -- views ---------------------------------------------------------------------------------

    def project_json(self, project: Project) -> dict[str, Any]:
        return {**project.to_json(), "sandboxes": []}

    @defer.inlineCallbacks
    def status(self):
        """The reference documentation's status shape, with system figures from a thread."""
        figures = yield self.system()
        projects = []
        for p in self.list_projects():
            limits = p.resource_limits
            projects.append({
                "name": p.name,
                "sandboxes": [],
                "resource_limits": {"cpu_quota_us": limits.cpu_quota_us,
                                    "memory_limit_bytes": limits.memory_limit_bytes},
                "created_at": p.created_at,
            })
        return {"projects": projects, "system": figures, "version": __version__}
