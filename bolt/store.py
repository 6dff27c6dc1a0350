"""Persistence of projects: one JSON file per project under ``<data-dir>/projects/``.

Each file is replaced atomically (bolt.atomic), so a crash leaves the old record or the new one.
One file per project keeps a write proportional to one project, and a damaged file names itself.
Loading refuses a file it cannot parse: the server stops with a clear message instead of starting
empty and forgetting what it owned.  Writes happen in a thread, in the order they were asked for;
the JSON is taken when asked for, so later changes to a record do not leak into an earlier write.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from twisted.internet import defer, threads
from twisted.logger import Logger

from bolt.atomic import atomic_unlink, atomic_write
from bolt.errors import StateError
from bolt.model import Project, validate_name

Threads = Callable[..., defer.Deferred]


class ProjectStore:
    log = Logger()

    def __init__(self, directory: str, run_in_thread: Threads | None = None) -> None:
        self.directory = directory
        self._thread = run_in_thread or threads.deferToThread
        self._lock = defer.DeferredLock()

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, validate_name(name, "project name") + ".json")

    def load_all(self) -> dict[str, Project]:
        """Read every project (at start, before the reactor runs). Raises StateError on damage."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        projects: dict[str, Project] = {}
        for entry in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, entry)
            if entry.startswith(".") and entry.endswith(".tmp"):
                os.unlink(path)  # an interrupted atomic write; the real file is intact
                continue
            if not entry.endswith(".json"):
                continue
            try:
                with open(path, "rb") as f:
                    project = Project.from_json(json.loads(f.read().decode("utf-8")))
            except Exception as e:
                raise StateError(f"state file {path} is unreadable ({e.__class__.__name__}: {e}); "
                                 "bolt will not start without it. Restore it from a backup or move it "
                                 "away to forget that project.") from None
            if project.name + ".json" != entry:
                raise StateError(f"state file {path} holds project {project.name!r}, not {entry[:-5]!r}")
            projects[project.name] = project
        return projects

    def save(self, project: Project) -> defer.Deferred[None]:
        # No indent: with one, json uses its pure-Python encoder, and a project of 100 sandboxes and
        # 1,000 forwards took ~3 ms of the reactor thread at every save instead of ~0.6 ms.
        data = (json.dumps(project.to_json(), sort_keys=True) + "\n").encode("utf-8")
        path = self._path(project.name)
        return self._lock.run(self._thread, atomic_write, path, data, 0o600)

    def remove(self, name: str) -> defer.Deferred[None]:
        path = self._path(name)
        return self._lock.run(self._thread, atomic_unlink, path)
