"""Records and the pure validation rules for what users name and send.

Everything here is plain data: no I/O, no reactor.  The manager validates with these functions
before it touches the host, so a bad request changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from bolt.errors import InvalidInput

NAME_RULE = ("a name is 1-63 characters of a-z, 0-9, '-' and '_', "
             "starting with a letter or digit")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def validate_name(value: Any, what: str = "name") -> str:
    """Return ``value`` if it is a valid project or sandbox name, else raise InvalidInput."""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidInput(f"invalid {what} {_show(value)}: {NAME_RULE}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def utc_now_iso(now: float) -> str:
    """ISO 8601 in UTC with a 'Z'-free '+00:00' offset, microseconds dropped; stable across restarts."""
    return datetime.fromtimestamp(now, tz=timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class ResourceLimits:
    cpu_quota_us: int
    memory_limit_bytes: int
    pids_max: int = 1024

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ResourceLimits":
        return cls(int(data["cpu_quota_us"]), int(data["memory_limit_bytes"]),
                   int(data.get("pids_max", 1024)))


@dataclass
class Project:
    name: str
    created_at: str
    resource_limits: ResourceLimits

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at,
                "resource_limits": self.resource_limits.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Project":
        return cls(validate_name(data["name"], "project name"), str(data["created_at"]),
                   ResourceLimits.from_json(data["resource_limits"]))


@dataclass
class State:
    """Everything Bolt persists; one JSON document written atomically."""

    projects: dict[str, Project] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "projects": [p.to_json() for p in self.projects.values()]}

    @classmethod
    def from_json(cls, data: Any) -> "State":
        if not isinstance(data, dict) or not isinstance(data.get("projects"), list):
            raise ValueError("expected an object with a 'projects' list")
        projects = [Project.from_json(p) for p in data["projects"]]
        return cls({p.name: p for p in projects})
