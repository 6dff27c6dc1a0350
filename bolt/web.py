"""twisted.web plumbing for the API: serving a Klein app's routes, bounded request bodies, the access
log, shielding.

These belong to the HTTP face: they know requests and sites, never sandboxes.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

MAX_BODY = 1024 * 1024
_log = Logger()
_access = Logger(namespace="bolt.access")


class BadURL(ValueError):
    """A request path that is not UTF-8 once percent-decoded: no route can name it."""


class KleinRoutes(resource.Resource):
    """Serves the routes of a Klein app: werkzeug matches, the endpoint runs, ``on_error`` answers failures.

    Klein declares the routes (``@app.route``) and calls them (``execute_endpoint``); this resource
    replaces ``Klein.resource()`` on the way in and out.  KleinResource puts every request through two
    maybeDeferreds, a chain of callbacks and errbacks, an adapter, a werkzeug MapAdapter bound per
    request from the Host header and chunked output, whatever the route returns: about 60 µs a
    request in a running server, more than ``GET /api/status`` itself.  Here the map is bound once,
    an answer that is ready is written at once with its Content-Length, and only a pending Deferred
    is watched -- and cancelled when its client goes away, as Klein does.

    ``on_error(request, failure)`` turns any failure into the response body (it sets the status and
    headers); werkzeug's NotFound, MethodNotAllowed and RequestRedirect and :class:`BadURL` reach it
    like a route's own errors.  It must not raise.
    """

    isLeaf = True

    def __init__(self, app: Klein, on_error: Callable[[Any, Failure], bytes]) -> None:
        super().__init__()
        self._app = app
        self._on_error = on_error
        # Routes match on path and method only, so one binding serves every request.
        self._routes = app.url_map.bind("localhost")

    def render(self, request):
        try:
            path = "/" + "/".join(segment.decode("utf-8") for segment in request.postpath)
        except UnicodeDecodeError:
            return self._body(request, Failure(BadURL("the URL is not valid UTF-8")))
        try:
            rule, arguments = self._routes.match(path, request.method.decode("latin-1"), return_rule=True)
            result = self._app.execute_endpoint(rule.endpoint, request, **arguments)
        except Exception:
            result = Failure()
        if not isinstance(result, defer.Deferred):
            return self._body(request, result)
        gone: list[bool] = []
        result.addBoth(self._answer, request, gone)
        if not request.finished:
            # Still waiting -- also when ``result`` has fired but waits on another Deferred (a
            # password check in a thread): a client that leaves cancels what is under way.
            def left(_: Failure) -> None:
                gone.append(True)
                result.cancel()

            request.notifyFinish().addErrback(left)
        return server.NOT_DONE_YET

    def _answer(self, result: Any, request, gone: list[bool]) -> None:
        if gone:
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                _log.failure("request failed after its client left", result)
            return
        body = self._body(request, result)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _body(self, request, result: Any) -> bytes:
        if isinstance(result, bytes):
            return result
        if not isinstance(result, Failure):
            result = Failure(TypeError(f"a route returned {type(result).__name__}, not bytes"))
        return self._on_error(request, result)


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
    """A Site that logs one structured event per request and nothing of its headers or body.

    Request bodies are never parsed as HTML form submissions: the API reads JSON only, and
    twisted.web's form parsing hands the Content-Type header to the email package, which takes a
    0x85 byte for a line break and raises out of the request parser -- the connection was dropped
    without an answer.
    """

    requestFactory = BoundedRequest
    noisy = False

    def __init__(self, resource, **kw) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, **kw)
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
    host = getattr(addr, "host", None)
    return host if host is not None else str(addr)


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
