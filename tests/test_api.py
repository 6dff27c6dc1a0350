"""The Klein API through treq's StubTreq: routes, auth, errors, JSON shapes; no network."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import PASSWORD, World

BASE = "https://bolt.test"
AUTH = ("admin", PASSWORD)


class APITestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.http = StubTreq(self.world.api.resource())

    @defer.inlineCallbacks
    def call(self, method: str, path: str, body=None, auth=AUTH, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = yield self.http.request(method, BASE + path, data=data, auth=auth, headers=headers)
        content = yield response.content()
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"], content)
        return response.code, json.loads(content), response

    # -- auth ------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_every_route_needs_credentials(self):
        for method, path in [("GET", "/api/status"), ("GET", "/api/projects"), ("POST", "/api/projects"),
                             ("GET", "/api/projects/p"), ("DELETE", "/api/projects/p"),
                             ("PUT", "/api/config"), ("GET", "/api/update"), ("PUT", "/api/projects/p/resources")]:
            code, body, response = yield self.call(method, path, {"name": "p"}, auth=None)
            self.assertEqual(code, 401, (method, path))
            self.assertEqual(body, {"error": "authentication required"})
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [b'Basic realm="bolt"'])
        self.assertEqual(self.world.manager.list_projects(), [])

    @defer.inlineCallbacks
    def test_wrong_password_and_wrong_user(self):
        for auth in [("admin", "wrong password"), ("root", PASSWORD), ("admin", "")]:
            code, body, _ = yield self.call("GET", "/api/status", auth=auth)
            self.assertEqual((code, body), (401, {"error": "invalid credentials"}))

    @defer.inlineCallbacks
    def test_garbage_authorization_header(self):
        for value in [b"Basic !!!", b"Bearer abc", b"Basic " + b"bm9jb2xvbg==", b"Basic"]:
            code, _, _ = yield self.call("GET", "/api/status", auth=None, headers={b"Authorization": [value]})
            self.assertEqual(code, 401, value)

    @defer.inlineCallbacks
    def test_throttled_after_ten_failures_per_address(self):
        for _ in range(10):
            code, _, _ = yield self.call("GET", "/api/status", auth=("admin", "nope-nope"))
            self.assertEqual(code, 401)
        code, body, response = yield self.call("GET", "/api/status")  # right password, still refused
        self.assertEqual(code, 429)
        self.assertIn("too many failed logins", body["error"])
        self.assertTrue(int(response.headers.getRawHeaders(b"retry-after")[0]) > 0)
        self.world.clock.advance(61)
        code, _, _ = yield self.call("GET", "/api/status")
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_password_change_takes_effect_at_once(self):
        code, _, _ = yield self.call("GET", "/api/status")  # the old pair is now remembered (fast path)
        self.assertEqual(code, 200)
        code, body, _ = yield self.call("PUT", "/api/config", {"admin_password": "a new secret"})
        self.assertEqual((code, body), (200, {"admin_user": "admin"}))
        code, _, _ = yield self.call("GET", "/api/status")
        self.assertEqual(code, 401)
        code, _, _ = yield self.call("GET", "/api/status", auth=("admin", "a new secret"))
        self.assertEqual(code, 200)
        self.assertNotIn("a new secret", json.dumps(self.world.config_on_disk()))

    @defer.inlineCallbacks
    def test_user_change(self):
        code, _, _ = yield self.call("PUT", "/api/config", {"admin_user": "boss"})
        self.assertEqual(code, 200)
        code, _, _ = yield self.call("GET", "/api/status")
        self.assertEqual(code, 401)
        code, _, _ = yield self.call("GET", "/api/status", auth=("boss", PASSWORD))
        self.assertEqual(code, 200)
        self.assertEqual(self.world.config_on_disk()["admin_user"], "boss")

    @defer.inlineCallbacks
    def test_bad_config_changes_are_refused_and_change_nothing(self):
        before = self.world.config_on_disk()
        for body in [{"admin_password": ""}, {"admin_password": "short"}, {"admin_password": 12345678},
                     {"admin_user": ""}, {"admin_user": "a b"}, {"colour": "red"}, {}]:
            code, answer, _ = yield self.call("PUT", "/api/config", body)
            self.assertEqual(code, 400, body)
            self.assertIsInstance(answer["error"], str)
        self.assertEqual(self.world.config_on_disk(), before)
        code, _, _ = yield self.call("GET", "/api/status")
        self.assertEqual(code, 200)

    # -- projects ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_project_lifecycle(self):
        code, created, _ = yield self.call("POST", "/api/projects", {"name": "web-1"})
        self.assertEqual(code, 201)
        self.assertEqual(created["name"], "web-1")
        self.assertEqual(created["created_at"], "2026-05-28T20:26:40+00:00")
        self.assertEqual(created["resource_limits"],
                         {"cpu_quota_us": 100000, "memory_limit_bytes": 536870912, "pids_max": 1024})
        self.assertEqual(created["sandboxes"], [])
        code, listed, _ = yield self.call("GET", "/api/projects")
        self.assertEqual((code, listed), (200, [created]))
        code, one, _ = yield self.call("GET", "/api/projects/web-1")
        self.assertEqual((code, one), (200, created))
        code, _, _ = yield self.call("POST", "/api/projects", {"name": "web-1"})
        self.assertEqual(code, 409)
        code, body, _ = yield self.call("DELETE", "/api/projects/web-1")
        self.assertEqual((code, body), (200, {"deleted": "web-1"}))
        code, _, _ = yield self.call("GET", "/api/projects/web-1")
        self.assertEqual(code, 404)
        code, _, _ = yield self.call("DELETE", "/api/projects/web-1")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_project_names_follow_the_rule(self):
        for name in ["", "-a", "_a", "A", "a.b", "a/b", "a" * 64, 7, None, "../x", "é"]:
            code, body, _ = yield self.call("POST", "/api/projects", {"name": name})
            self.assertEqual(code, 400, name)
            self.assertIn("1-63 characters of a-z, 0-9, '-' and '_'", body["error"])
        for name in ["a", "0", "a" * 63, "a_b-c"]:
            code, _, _ = yield self.call("POST", "/api/projects", {"name": name})
            self.assertEqual(code, 201, name)

    @defer.inlineCallbacks
    def test_bad_bodies(self):
        cases = [(b"", 400), (b"not json", 400), (b"[1, 2]", 400), (b'"x"', 400), (b"\xff\xfe", 400),
                 (b'{"name": "x", "extra": 1}', 400), (b"{}", 400)]
        for raw, expected in cases:
            code, body, _ = yield self.call("POST", "/api/projects", raw=raw)
            self.assertEqual(code, expected, raw)
            self.assertIn("error", body)
        self.assertEqual(self.world.manager.list_projects(), [])

    @defer.inlineCallbacks
    def test_unknown_route_and_wrong_method(self):
        code, body, _ = yield self.call("GET", "/api/nothing-here")
        self.assertEqual(code, 404)
        self.assertIn("no such endpoint", body["error"])
        code, body, response = yield self.call("PATCH", "/api/projects")
        self.assertEqual(code, 405)
        self.assertIn(b"POST", response.headers.getRawHeaders(b"allow")[0])

    @defer.inlineCallbacks
    def test_resources(self):
        yield self.call("POST", "/api/projects", {"name": "p"})
        code, body, _ = yield self.call("PUT", "/api/projects/p/resources",
                                        {"cpu_quota_us": 50000, "memory_limit_bytes": 268435456})
        self.assertEqual(code, 200)
        self.assertEqual(body["resource_limits"],
                         {"cpu_quota_us": 50000, "memory_limit_bytes": 268435456, "pids_max": 1024})
        for bad in [{"cpu_quota_us": 10}, {"memory_limit_bytes": "1G"}, {"pids_max": 1}, {"nice": 5}, {}]:
            code, body, _ = yield self.call("PUT", "/api/projects/p/resources", bad)
            self.assertEqual(code, 400, bad)
        code, _, _ = yield self.call("PUT", "/api/projects/nope/resources", {"pids_max": 100})
        self.assertEqual(code, 404)
        self.assertEqual(self.world.manager.get_project("p").resource_limits.cpu_quota_us, 50000)

    # -- status and update ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_status_shape(self):
        yield self.call("POST", "/api/projects", {"name": "project1"})
        code, body, _ = yield self.call("GET", "/api/status")
        self.assertEqual(code, 200)
        self.assertEqual(set(body), {"projects", "system", "version"})
        self.assertEqual(body["projects"], [{
            "name": "project1", "sandboxes": [],
            "resource_limits": {"cpu_quota_us": 100000, "memory_limit_bytes": 536870912},
            "created_at": "2026-05-28T20:26:40+00:00"}])
        self.assertEqual(body["system"], {"cpu_usage": 1.5, "memory_usage": 20.0, "disk_usage": 30.0})
        self.assertRegex(body["version"], r"^\d+\.\d+\.\d+$")

    @defer.inlineCallbacks
    def test_update_without_url(self):
        code, body, _ = yield self.call("GET", "/api/update")
        self.assertEqual(code, 200)
        self.assertFalse(body["update_available"])
        self.assertIn("update_url", body["reason"])


class ClientLeavesTests(unittest.TestCase):
    """A client that hangs up while its password is being checked (scrypt, in a thread) changes nothing."""

    def test_a_delete_whose_client_left_during_the_password_check_does_not_happen(self) -> None:
        import base64

        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        from bolt.api import BoltAPI
        from bolt.updates import UpdateChecker
        from bolt.web import AccessLoggingSite
        from tests.helpers import HeldThreads

        world = World(self)
        held = HeldThreads()
        api = BoltAPI(world.manager, world.admin, UpdateChecker(None, reactor=world.clock), reactor=world.clock,
                      run_in_thread=held)
        self.successResultOf(world.manager.create_project("p"))
        channel = AccessLoggingSite(api.resource()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        auth = base64.b64encode(f"admin:{PASSWORD}".encode())
        channel.dataReceived(b"DELETE /api/projects/p HTTP/1.1\r\nHost: bolt.test\r\nAuthorization: Basic "
                             + auth + b"\r\n\r\n")
        self.assertEqual(len(held.calls), 1)  # the password check, waiting for its thread
        channel.connectionLost(Failure(ConnectionError("client went away")))
        held.run_all()
        self.assertEqual([p.name for p in world.manager.list_projects()], ["p"])
        self.assertEqual(transport.value(), b"")


class AccessLogTests(unittest.TestCase):
    """One bolt.access event per request: a ready-rendered line, with the fields beside it."""

    def test_line_and_fields(self) -> None:
        from twisted.logger import formatEvent, globalLogPublisher
        from twisted.web.test.requesthelper import DummyChannel

        from bolt.web import AccessLoggingSite, BoundedRequest

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        request = BoundedRequest(DummyChannel())
        request.method, request.path, request.code = b"GET", b"/api/{odd}", 404
        AccessLoggingSite(None).log(request)
        [event] = [e for e in events if e.get("log_namespace") == "bolt.access"]
        self.assertEqual(formatEvent(event), "GET /api/{odd} 404 192.168.1.1 0.0ms")
        self.assertEqual((event["method"], event["path"], event["status"], event["client"]),
                         ("GET", "/api/{odd}", 404, "192.168.1.1"))
