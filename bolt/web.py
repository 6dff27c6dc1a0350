"""twisted.web plumbing for the API: bounded request bodies, the access log, shielding.

These belong to the HTTP face: they know requests and sites, never sandboxes.
"""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

MAX_BODY = 1024 * 1024
_log = Logger()
_access = Logger(namespace="bolt.access")


class BoundedRequest(server.Request):
    """A request that stops buffering its body past :data:`MAX_BODY` and remembers that it did.

    The API answers such a request 413 without ever holding more than the limit in memory.
    """

    too_large = False

    def gotLength(self, length):
        super().gotLength(length)
        self._bolt_started = time.monotonic()
        if length is not None and length > MAX_BODY:
            self.too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class AccessLoggingSite(server.Site):
    """A Site that logs one structured event per request and nothing of its headers or body."""

    requestFactory = BoundedRequest
    noisy = False

    def __init__(self, resource, **kw) -> None:
        super().__init__(resource, **kw)
        self.requestFactory = BoundedRequest

    def log(self, request) -> None:  # type: ignore[override]  (twisted.web's access-log hook)
        started = getattr(request, "_bolt_started", None)
        duration_ms = (time.monotonic() - started) * 1000 if started is not None else 0.0
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        client = _client(request)
        # The line is rendered here and handed over as the event's format (braces escaped), with the
        # fields alongside for structured observers: twistd's text observer then has no fields to
        # look up and format, which was a third of the cost of an access line.
        line = f"{method} {path} {request.code} {client} {duration_ms:.1f}ms"
        _access.info(line.replace("{", "{{").replace("}", "}}"), method=method, path=path,
                     status=request.code, client=client, duration_ms=duration_ms)


def _client(request) -> str:
    addr = request.getClientAddress()
    return getattr(addr, "host", str(addr))


def shield(d: defer.Deferred) -> defer.Deferred:
    """A Deferred that follows ``d`` but whose cancellation leaves ``d`` running.

    Klein cancels a route's Deferred when the client hangs up; an operation on the host (a mount, a
    build) must still finish or roll back as a whole, never stop half-way because a client left.
    """
    out: defer.Deferred = defer.Deferred(lambda _: None)

    def relay(result):
        if not out.called:
            (out.errback if isinstance(result, Failure) else out.callback)(result)
        elif isinstance(result, Failure) and not result.check(defer.CancelledError):
            _log.failure("operation failed after its client left", result)
        return None

    d.addBoth(relay)
    return out
