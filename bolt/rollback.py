"""Undo steps for multi-step operations: a failure undoes what was done, newest first."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

Step = Callable[[], Any]


class Rollback:
    """Collect an undo action after each step succeeds; :meth:`run` them in reverse on failure.

    An undo that fails is logged and the rest still run: leaving less behind is better than
    stopping half-way through the cleanup too.
    """

    log = Logger()

    def __init__(self, what: str) -> None:
        self.what = what
        self._undo: list[tuple[str, Step]] = []

    def push(self, description: str, undo: Step) -> None:
        self._undo.append((description, undo))

    @defer.inlineCallbacks
    def run(self):
        while self._undo:
            description, undo = self._undo.pop()
            try:
                yield defer.maybeDeferred(undo)
            except Exception:
                self.log.failure("rollback of {what}: undoing '{step}' failed", what=self.what, step=description)
