"""Errors the core raises; the faces translate each kind into a status code or an error line.

The core never speaks HTTP: it says *what* went wrong (not found, conflict, invalid...) and the API
maps the kind to 404/409/400... in one table.
"""

from __future__ import annotations


class BoltError(Exception):
    """Base of every error a user may see; ``str(error)`` is the message shown to them."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(BoltError):
    """The request itself is wrong: a bad name, a port out of range, a missing field."""


class NotFound(BoltError):
    """The thing named does not exist."""


class Conflict(BoltError):
    """The request clashes with the current state: a duplicate, a resource still in use."""


class Unavailable(BoltError):
    """A pool is exhausted or a dependency is not ready; retrying later may work."""


class UpstreamFailed(BoltError):
    """A tool or a remote server Bolt relied on failed (debootstrap, the update URL)."""


class ConfigError(BoltError):
    """The configuration file cannot be used; the server refuses to start."""


class StateError(BoltError):
    """The state file cannot be read; the server refuses to start rather than start empty."""
