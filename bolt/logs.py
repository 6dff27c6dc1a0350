"""The server's log observer: twistd's classic text lines, at a fraction of twistd's cost per line.

twistd's own text observer formats every event's time through ``datetime`` and a time zone lookup,
parses every format string with :class:`string.Formatter`, and writes and flushes a Python file
object per line.  With one access event per request that was ~17 µs of the reactor thread per
request (measured in a running server), a quarter of a ``GET /api/status``.

:class:`TextObserver` writes the same lines (``<RFC 3339 time> [<system>] <text>``, continuation lines
indented by a tab, tracebacks included) but formats a timestamp once per second, takes a format
without fields as the text it already is, and hands each line to the kernel in one ``write``: no
buffer in between, so nothing written is lost if the process is killed.  Anything unusual (fields,
failures) goes through twisted.logger's own formatter.

It is twistd's initial observer through ``--logger``::

    twistd --nodaemon --logger=bolt.logs.observer bolt ...

and writes to standard output, which the packaged service appends to /var/log/bolt_server.log.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from twisted.logger import ILogObserver, formatEventAsClassicLogText, formatTime
from zope.interface import implementer


@implementer(ILogObserver)
class TextObserver:
    """Writes each event as one classic twistd text line to a file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._second: int | None = None
        self._stamp = "-"

    def __call__(self, event: dict[str, Any]) -> None:
        line = self.format(event)
        if line:
            self._write(line.encode("utf-8", "backslashreplace"))

    def format(self, event: dict[str, Any]) -> str | None:
        """The line twisted.logger's ``formatEventAsClassicLogText`` makes of ``event``."""
        text = event.get("log_format")
        system = event.get("log_system")
        if (type(text) is not str or not text or "{" in text or "}" in text or "log_failure" in event
                or "log_flattened" in event or (system is not None and type(system) is not str)):
            return formatEventAsClassicLogText(event, formatTime=self.time)
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        line = f"{self.time(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"

    def time(self, when: float | None) -> str:
        """twisted.logger's RFC 3339 local time of ``when``, formatted once per second."""
        if when is None:
            return "-"
        second = math.floor(when)
        if second != self._second:
            self._stamp, self._second = formatTime(second), second
        return self._stamp

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


def observer() -> TextObserver:
    """The factory twistd's ``--logger`` names: a :class:`TextObserver` on standard output.

    Called before twistd redirects ``sys.stdout`` into the log, so descriptor 1 is the real output.
    """
    return TextObserver(sys.stdout.fileno())
