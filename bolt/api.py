"""The HTTPS JSON API (Klein): parse, authenticate, call the core, translate errors.

No host calls happen here.  Every route is wrapped by :func:`authorized`, which checks HTTP Basic
credentials (constant time, throttled per client address) before the handler runs.  Core errors map
to status codes in one table, :data:`STATUS`; every error body is {"error": "..."}.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import Any, Callable

from klein import Klein
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed, NotFound as RouteNotFound
from werkzeug.routing import RequestRedirect

from bolt import errors, openapi
from bolt.admin import AdminAccount
from bolt.manager import Manager
from bolt.throttle import Throttle
from bolt.updates import UpdateChecker
from bolt.web import BadURL, KleinRoutes, shield

STATUS: dict[type[errors.BoltError], int] = {
    errors.InvalidInput: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.UpstreamFailed: 502,
    errors.Unavailable: 503,
}


class HTTPError(errors.BoltError):
    """An error that only the HTTP face knows (auth, body size), with its status and headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _json(request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


def read_json(request) -> dict[str, Any]:
    """The request body as a JSON object, or HTTPError 413 / InvalidInput."""
    if getattr(request, "too_large", False):
        raise HTTPError(413, "request body is larger than 1 MiB")
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        raise errors.InvalidInput("request body must be a JSON object")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.InvalidInput("request body is not valid JSON") from None
    except ValueError:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise errors.InvalidInput("request body has a number too long to read") from None
    except RecursionError:  # [[[[...]]]] nested deeper than the interpreter's stack
        raise errors.InvalidInput("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise errors.InvalidInput("request body must be a JSON object")
    return body


def authorized(route: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``route`` only for a request with the admin's Basic credentials."""

    @functools.wraps(route)
    def wrapper(self: "BoltAPI", request, *args: Any, **kwargs: Any) -> Any:
        pending = self.authenticate(request)
        if pending is None:  # verified at once (the usual case): no Deferred in between
            return route(self, request, *args, **kwargs)
        return pending.addCallback(lambda _: route(self, request, *args, **kwargs))

    return wrapper


def _basic_credentials(request) -> tuple[str, str] | None:
    header = request.getHeader(b"authorization")
    if not header or header[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BoltAPI:
    """The Klein application; one instance per server, holding the core it serves."""

    app = Klein()
    log = Logger()

    def __init__(self, manager: Manager, admin: AdminAccount, updates: UpdateChecker, *,
                 reactor=None, run_in_thread: Callable[..., defer.Deferred] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.manager = manager
        self.admin = admin
        self.updates = updates
        self.throttle = Throttle(reactor)
        self._thread = run_in_thread or threads.deferToThread
        # scrypt costs 128 MiB and ~0.3 s; never run more than two at once, whatever arrives.
        self._slow_checks = defer.DeferredSemaphore(2)

    def resource(self) -> KleinRoutes:
        return KleinRoutes(self.app, self.error_response)

    # -- authentication ----------------------------------------------------------------------

    def authenticate(self, request) -> defer.Deferred | None:
        """Check the request's credentials: None when they are good, a Deferred firing once a full
        (scrypt) check passed, or HTTPError 401/429 -- raised, or as the Deferred's failure.

        A pair verified before is recognised synchronously (:meth:`Credentials.check_fast`), so
        the usual request costs neither a Deferred nor a thread.
        """
        client = getattr(request.getClientAddress(), "host", "?")
        wait = self.throttle.retry_after(client)
        if wait > 0:
            raise HTTPError(429, "too many failed logins from this address; try again later",
                            {"Retry-After": str(int(wait) + 1)})
        given = _basic_credentials(request)
        if given is None:
            raise HTTPError(401, "authentication required", {"WWW-Authenticate": 'Basic realm="bolt"'})
        credentials = self.admin.credentials
        if credentials.check_fast(*given):
            self.throttle.succeeded(client)
            return None
        d = self._slow_checks.run(self._thread, credentials.check_slow, *given)

        def checked(ok: bool) -> None:
            ok = ok and credentials is self.admin.credentials  # changed meanwhile: old pair is void
            if not ok:
                self.throttle.failed(client)
                self.log.warn("failed login from {client}", client=client)
                raise HTTPError(401, "invalid credentials", {"WWW-Authenticate": 'Basic realm="bolt"'})
            self.throttle.succeeded(client)

        return d.addCallback(checked)

    # -- errors --------------------------------------------------------------------------------

    def error_response(self, request, failure: Failure) -> bytes:
        """The JSON answer to any failure of a request: :data:`STATUS` for core errors, 401/413/429
        from the face, 404/405 from routing, 500 (logged) for anything else."""
        error = failure.value
        if isinstance(error, HTTPError):
            for name, value in error.headers.items():
                request.setHeader(name.encode(), value.encode())
            return _json(request, error.status, {"error": error.message})
        if isinstance(error, errors.BoltError):
            status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 500)
            return _json(request, status, {"error": error.message})
        if isinstance(error, BadURL):
            return _json(request, 400, {"error": str(error)})
        # RequestRedirect: werkzeug would redirect //api//status to /api/status; an API does not guess.
        if isinstance(error, (RouteNotFound, RequestRedirect)):
            return _json(request, 404, {"error": f"no such endpoint: {request.path.decode('utf-8', 'replace')[:200]}"})
        if isinstance(error, MethodNotAllowed):
            allowed = ", ".join(sorted(error.valid_methods or ()))
            request.setHeader(b"Allow", allowed.encode())
            return _json(request, 405, {"error": f"method {request.method.decode('latin-1')} not allowed here; "
                                                 f"allowed: {allowed}"})
        self.log.failure("internal error on {path}", failure, path=request.path.decode("utf-8", "replace"))
        return _json(request, 500, {"error": "internal error; see the server log"})

    # -- status, update, config --------------------------------------------------------------

    @app.route("/api/status", methods=["GET"])
    @authorized
    def status(self, request):
        return self.manager.status().addCallback(lambda body: _json(request, 200, body))

    @app.route("/api/openapi.json", methods=["GET"])
    @authorized
    def openapi(self, request):
        return _json(request, 200, openapi.document())

    @app.route("/api/update", methods=["GET"])
    @authorized
    @defer.inlineCallbacks
    def update(self, request):
        body = yield shield(self.updates.check())
        return _json(request, 200, body)

    @app.route("/api/config", methods=["PUT"])
    @authorized
    @defer.inlineCallbacks
    def config(self, request):
        result = yield shield(self.admin.change(read_json(request)))
        return _json(request, 200, result)

    # -- projects ------------------------------------------------------------------------------

    @app.route("/api/projects", methods=["GET"])
    @authorized
    def list_projects(self, request):
        return _json(request, 200, [self.manager.project_json(p) for p in self.manager.list_projects()])

    @app.route("/api/projects", methods=["POST"])
    @authorized
    @defer.inlineCallbacks
    def create_project(self, request):
        body = read_json(request)
        _only(body, {"name"}, required={"name"})
        project = yield shield(self.manager.create_project(body["name"]))
        return _json(request, 201, self.manager.project_json(project))

    @app.route("/api/projects/<name>", methods=["GET"])
    @authorized
    def get_project(self, request, name):
        return _json(request, 200, self.manager.project_json(self.manager.get_project(name)))

    @app.route("/api/projects/<name>", methods=["DELETE"])
    @authorized
    @defer.inlineCallbacks
    def delete_project(self, request, name):
        force = _flag(request, b"force")
        project = yield shield(self.manager.delete_project(name, force=force))
        return _json(request, 200, {"deleted": project.name})

    @app.route("/api/projects/<name>/resources", methods=["PUT"])
    @authorized
    @defer.inlineCallbacks
    def set_resources(self, request, name):
        project = yield shield(self.manager.set_limits(name, read_json(request)))
        return _json(request, 200, self.manager.project_json(project))

    # -- images --------------------------------------------------------------------------------

    @app.route("/api/images", methods=["GET"])
    @authorized
    def list_images(self, request):
        return _json(request, 200, self.manager.list_images())

    @app.route("/api/images", methods=["POST"])
    @authorized
    def build_image(self, request):
        body = read_json(request)
        _only(body, {"distro"}, required={"distro"})
        info = self.manager.build_image(body["distro"])
        return _json(request, 202 if info["state"] == "building" else 200, info)

    @app.route("/api/images/<distro>", methods=["GET"])
    @authorized
    def get_image(self, request, distro):
        return _json(request, 200, self.manager.get_image(distro))

    @app.route("/api/images/<distro>", methods=["DELETE"])
    @authorized
    @defer.inlineCallbacks
    def delete_image(self, request, distro):
        result = yield shield(self.manager.delete_image(distro))
        return _json(request, 200, result)

    # -- sandboxes -----------------------------------------------------------------------------

    @app.route("/api/projects/<project>/sandboxes", methods=["GET"])
    @authorized
    def list_sandboxes(self, request, project):
        p = self.manager.get_project(project)
        return _json(request, 200, [self.manager.sandbox_json(p, s) for s in self.manager.list_sandboxes(project)])

    @app.route("/api/projects/<project>/sandboxes", methods=["POST"])
    @authorized
    @defer.inlineCallbacks
    def create_sandbox(self, request, project):
        body = read_json(request)
        _only(body, {"name", "distro"}, required={"name"})
        sandbox = yield shield(self.manager.create_sandbox(project, body["name"], body.get("distro")))
        return _json(request, 201, self.manager.sandbox_json(self.manager.get_project(project), sandbox))

    @app.route("/api/projects/<project>/sandboxes/<name>", methods=["GET"])
    @authorized
    def get_sandbox(self, request, project, name):
        p, sandbox = self.manager.get_sandbox(project, name)
        return _json(request, 200, self.manager.sandbox_json(p, sandbox))

    @app.route("/api/projects/<project>/sandboxes/<name>", methods=["DELETE"])
    @authorized
    @defer.inlineCallbacks
    def delete_sandbox(self, request, project, name):
        sandbox = yield shield(self.manager.delete_sandbox(project, name))
        return _json(request, 200, {"deleted": sandbox.name})

    @app.route("/api/projects/<project>/sandboxes/<name>/start", methods=["POST"])
    @authorized
    @defer.inlineCallbacks
    def start_sandbox(self, request, project, name):
        sandbox = yield shield(self.manager.start_sandbox(project, name))
        return _json(request, 200, self.manager.sandbox_json(self.manager.get_project(project), sandbox))

    @app.route("/api/projects/<project>/sandboxes/<name>/stop", methods=["POST"])
    @authorized
    @defer.inlineCallbacks
    def stop_sandbox(self, request, project, name):
        sandbox = yield shield(self.manager.stop_sandbox(project, name))
        return _json(request, 200, self.manager.sandbox_json(self.manager.get_project(project), sandbox))

    @app.route("/api/projects/<project>/sandboxes/<name>/exec", methods=["POST"])
    @authorized
    @defer.inlineCallbacks
    def exec(self, request, project, name):
        result = yield self.manager.exec(project, name, read_json(request))
        return _json(request, 200, result)

    @app.route("/api/projects/<project>/sandboxes/<name>/shell", methods=["POST"])
    @authorized
    def shell(self, request, project, name):
        return _json(request, 200, self.manager.open_shell(project, name))

    @app.route("/api/projects/<project>/sandboxes/<name>/ports", methods=["POST"])
    @authorized
    @defer.inlineCallbacks
    def add_forward(self, request, project, name):
        result = yield shield(self.manager.add_forward(project, name, read_json(request)))
        return _json(request, 200, result)

    @app.route("/api/projects/<project>/sandboxes/<name>/ports/<host_port>", methods=["DELETE"])
    @authorized
    @defer.inlineCallbacks
    def remove_forward(self, request, project, name, host_port):
        result = yield shield(self.manager.remove_forward(project, name, host_port))
        return _json(request, 200, result)

    @app.route("/api/projects/<project>/sandboxes/<name>/reverse_ports", methods=["POST"])
    @authorized
    @defer.inlineCallbacks
    def add_reverse_forward(self, request, project, name):
        result = yield shield(self.manager.add_reverse_forward(project, name, read_json(request)))
        return _json(request, 200, result)

    @app.route("/api/projects/<project>/sandboxes/<name>/reverse_ports/<container_port>", methods=["DELETE"])
    @authorized
    @defer.inlineCallbacks
    def remove_reverse_forward(self, request, project, name, container_port):
        result = yield shield(self.manager.remove_reverse_forward(project, name, container_port))
        return _json(request, 200, result)


def _only(body: dict[str, Any], allowed: set[str], required: set[str] = frozenset()) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise errors.InvalidInput(f"unknown field {unknown[0]!r}; accepted: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(body))
    if missing:
        raise errors.InvalidInput(f"field {missing[0]!r} is required")


def _flag(request, name: bytes) -> bool:
    values = request.args.get(name, [])
    if not values:
        return False
    value = values[-1].lower()
    if value in (b"1", b"true", b"yes"):
        return True
    if value in (b"0", b"false", b"no", b""):
        return False
    raise errors.InvalidInput(f"query parameter {name.decode()} must be 1 or 0")
