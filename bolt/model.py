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

def ports_json(mappings: dict[int, int]) -> dict[str, int]:
    """A port mapping as JSON has it: port numbers as string keys, in port order."""
    return {str(port): mappings[port] for port in sorted(mappings)} if mappings else {}


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
    """ISO 8601 in UTC ('+00:00' offset), whole seconds; stored as text so it never drifts."""
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
class Sandbox:
    """One sandbox as stored.  ``state`` is what the user asked for: "running" or "stopped"."""

    name: str
    distro: str
    created_at: str
    state: str = "running"
    port_mappings: dict[int, int] = field(default_factory=dict)
    reverse_port_mappings: dict[int, int] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    #: The sandbox's address and link id; kept while the sandbox exists, running or not.
    network: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "distro": self.distro, "created_at": self.created_at,
                "state": self.state, "network": dict(self.network),
                "port_mappings": ports_json(self.port_mappings),
                "reverse_port_mappings": ports_json(self.reverse_port_mappings),
                "runtime": dict(self.runtime)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Sandbox":
        return cls(validate_name(data["name"], "sandbox name"), str(data["distro"]), str(data["created_at"]),
                   str(data.get("state", "running")),
                   {int(k): int(v) for k, v in data.get("port_mappings", {}).items()},
                   {int(k): int(v) for k, v in data.get("reverse_port_mappings", {}).items()},
                   dict(data.get("runtime", {})), dict(data.get("network", {})))


@dataclass
class Project:
    name: str
    created_at: str
    resource_limits: ResourceLimits
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at,
                "resource_limits": self.resource_limits.to_json(),
                "sandboxes": [s.to_json() for _, s in sorted(self.sandboxes.items())]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Project":
        sandboxes = [Sandbox.from_json(s) for s in data.get("sandboxes", [])]
        return cls(validate_name(data["name"], "project name"), str(data["created_at"]),
                   ResourceLimits.from_json(data["resource_limits"]), {s.name: s for s in sandboxes})

