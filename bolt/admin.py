"""The admin account: the credentials every API request is checked against, and changing them.

A change is hashed and written to the config file (atomically, in a thread) before it takes effect;
then the credentials object is swapped, so the old password fails on the very next request.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.logger import Logger

from bolt import passwords
from bolt.config import SCHEMA, Config
from bolt.errors import ConfigError, InvalidInput


class AdminAccount:
    log = Logger()

    def __init__(self, config: Config, run_in_thread: Callable[..., defer.Deferred] | None = None,
                 cost: dict[str, int] | None = None) -> None:
        self.config = config
        self.credentials = config.credentials()
        self._thread = run_in_thread or threads.deferToThread
        self._cost = cost
        self._lock = defer.DeferredLock()

    def change(self, body: Any) -> defer.Deferred[dict[str, str]]:
        """Validate ``body`` ({"admin_user"?, "admin_password"?}) then apply it; see module doc."""
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        unknown = sorted(set(body) - {"admin_user", "admin_password"})
        if unknown:
            raise InvalidInput(f"unknown field {unknown[0]!r}; accepted: admin_user, admin_password")
        if not body:
            raise InvalidInput("give admin_user and/or admin_password")
        user = body.get("admin_user")
        if "admin_user" in body:
            try:
                SCHEMA["admin_user"][1](user)
            except ValueError as e:
                raise InvalidInput(f"admin_user {e}") from None
        password = body.get("admin_password")
        if "admin_password" in body:
            problem = passwords.check_new_password(password)
            if problem:
                raise InvalidInput(problem)
        return self._lock.run(self._apply, user, password)

    @defer.inlineCallbacks
    def _apply(self, user: str | None, password: str | None):
        # Read the current user only now, under the lock: an earlier change may just have renamed it.
        user = user if user is not None else self.config["admin_user"]
        changes: dict[str, Any] = {"admin_user": user}
        if password is not None:
            changes["admin_password"] = yield self._thread(passwords.hash_password, password, self._cost)
        try:
            config = self.config.with_changes(**changes)
        except ConfigError as e:
            raise InvalidInput(str(e)) from None
        yield self._thread(config.save)
        self.config = config
        self.credentials = config.credentials()
        self.log.info("admin credentials changed (user {user})", user=user)
        return {"admin_user": user}
