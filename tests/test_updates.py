"""Tests for bolt.updates: version parsing, the update document, and UpdateChecker against a real
HTTP server on 127.0.0.1 (timeouts driven by a task.Clock)."""

from __future__ import annotations

import json

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent

from bolt import __version__, updates
from bolt.errors import UpstreamFailed
from tests.helpers import TrackingFactory


class ParseVersionTests(unittest.TestCase):
    def test_ordering(self) -> None:
        v = updates.parse_version
        self.assertGreater(v("1.10.0"), v("1.9.0"))
        self.assertGreater(v("1.9.1"), v("1.9"))
        self.assertGreater(v("2.0"), v("1.99.99"))
        self.assertLess(v("0.1.0"), v("0.1.1"))
        self.assertGreater(v("1.0.0.1"), v("1.0"))

    def test_trailing_zeros(self) -> None:
        v = updates.parse_version
        self.assertEqual(v("1.0"), v("1.0.0"))
        self.assertEqual(v("1"), v("1.0.0.0"))
        self.assertEqual(v("1.2.0"), (1, 2))
        self.assertEqual(v("0"), (0,))
        self.assertEqual(v("0.0.0"), (0,))

    def test_prefix_and_spaces(self) -> None:
        self.assertEqual(updates.parse_version("v1.2"), (1, 2))
        self.assertEqual(updates.parse_version(" 1.2.3\n"), (1, 2, 3))
        self.assertEqual(updates.parse_version("v1.2"), updates.parse_version("1.2.0"))

    def test_garbage_raises(self) -> None:
        for bad in ["", "abc", "1.", ".1", "1..2", "1.2-beta", "1.2.3rc1", "V1.2", "vv1", "1,2",
                    "1.2.3.4.5", "1234567", "1 .2", None, 1.2, 3, ["1.2"], b"1.2"]:
            self.assertRaises(ValueError, updates.parse_version, bad)


class DocumentTests(unittest.TestCase):
    def test_plain_shape(self) -> None:
        self.assertEqual(updates.latest_from_document(b'{"version": "1.4.2"}'), "1.4.2")

    def test_pypi_shape(self) -> None:
        body = json.dumps({"info": {"name": "bolt", "version": "2.0.1"}, "releases": {}}).encode()
        self.assertEqual(updates.latest_from_document(body), "2.0.1")

    def test_top_level_wins(self) -> None:
        body = b'{"version": "3.0", "info": {"version": "2.0"}}'
        self.assertEqual(updates.latest_from_document(body), "3.0")

    def test_spaces_stripped(self) -> None:
        self.assertEqual(updates.latest_from_document(b'{"version": " v1.2 "}'), "v1.2")

    def test_invalid_documents(self) -> None:
        for body in [b"", b"not json", b"\xff\xfe", b"[]", b'"1.2.3"', b"null", b"{}",
                     b'{"version": 5}', b'{"version": "latest"}', b'{"info": "1.2"}',
                     b'{"info": {"name": "bolt"}}', b'{"info": {"version": null}}',
                     b'{"Version": "1.2"}']:
            self.assertRaises(UpstreamFailed, updates.latest_from_document, body)

    def test_compare(self) -> None:
        self.assertEqual(updates.compare("1.10.0", "1.9.0"),
                         {"update_available": True, "latest_version": "1.10.0", "current_version": "1.9.0"})
        self.assertFalse(updates.compare("1.0", "1.0.0")["update_available"])
        self.assertFalse(updates.compare("0.9", "1.0")["update_available"])
        self.assertEqual(updates.compare("9.9.9")["current_version"], __version__)


class JSONResource(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, code: int = 200) -> None:
        super().__init__()
        self.body = body
        self.code = code
        self.requests: list = []

    def render_GET(self, request):
        self.requests.append(request)
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        return self.body


class StalledBody(resource.Resource):
    """Sends the headers and part of the body, then nothing."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-length", b"100")
        request.write(b'{"vers')
        request.notifyFinish().addErrback(lambda _: None)
        return server.NOT_DONE_YET


class ChunkedBody(resource.Resource):
    """A body sent in pieces without a Content-Length (chunked), so its size is known only at the end."""

    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def render_GET(self, request):
        request.write(b'{"version": "9.9", "pad": "')
        for _ in range(self.size // 65536):
            request.write(b"x" * 65536)
        request.write(b'"}')
        request.finish()
        return server.NOT_DONE_YET


class Silent(protocol.Protocol):
    """Accepts the connection, reads the request, and never answers."""

    def dataReceived(self, data: bytes) -> None:
        if not self.factory.request_received.called:
            self.factory.request_received.callback(data)


def silent_factory() -> protocol.Factory:
    factory = protocol.Factory.forProtocol(Silent)
    factory.request_received = defer.Deferred()
    return factory


class UpdateCheckerTests(unittest.TestCase):
    def listen(self, factory) -> str:
        tracking = TrackingFactory(factory)
        port = reactor.listenTCP(0, tracking, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(tracking.all_closed)
        self.tracking = tracking
        return f"http://127.0.0.1:{port.getHost().port}/latest.json"

    def serve(self, body: bytes, code: int = 200) -> tuple[str, JSONResource]:
        res = JSONResource(body, code)
        return self.listen(server.Site(res)), res

    @defer.inlineCallbacks
    def assertUpstreamFailed(self, checker, *fragments: str):
        try:
            result = yield checker.check()
        except UpstreamFailed as e:
            for fragment in fragments:
                self.assertIn(fragment, str(e))
            return e
        self.fail(f"expected UpstreamFailed, got {result!r}")

    @defer.inlineCallbacks
    def test_update_available(self) -> None:
        url, res = self.serve(b'{"version": "99.0.0"}')
        result = yield updates.UpdateChecker(url, reactor=reactor, timeout=10).check()
        self.assertEqual(result, {"update_available": True, "latest_version": "99.0.0",
                                  "current_version": __version__})
        self.assertEqual(len(res.requests), 1)
        request = res.requests[0]
        self.assertEqual(request.method, b"GET")
        self.assertEqual(request.path, b"/latest.json")
        self.assertEqual(request.getHeader(b"user-agent"), f"bolt/{__version__}".encode())

    @defer.inlineCallbacks
    def test_pypi_document(self) -> None:
        url, _ = self.serve(json.dumps({"info": {"version": "99.1"}}).encode())
        result = yield updates.UpdateChecker(url, reactor=reactor).check()
        self.assertTrue(result["update_available"])
        self.assertEqual(result["latest_version"], "99.1")

    @defer.inlineCallbacks
    def test_no_update_when_same_version(self) -> None:
        url, _ = self.serve(json.dumps({"version": __version__ + ".0"}).encode())
        result = yield updates.UpdateChecker(url, reactor=reactor).check()
        self.assertFalse(result["update_available"])
        self.assertEqual(result["current_version"], __version__)

    @defer.inlineCallbacks
    def test_no_update_when_older(self) -> None:
        url, _ = self.serve(b'{"version": "0.0.1"}')
        result = yield updates.UpdateChecker(url, reactor=reactor).check()
        self.assertEqual(result, {"update_available": False, "latest_version": "0.0.1",
                                  "current_version": __version__})

    @defer.inlineCallbacks
    def test_server_error(self) -> None:
        url, _ = self.serve(b'{"version": "99.0.0"}', code=500)
        yield self.assertUpstreamFailed(updates.UpdateChecker(url, reactor=reactor), "HTTP 500")

    @defer.inlineCallbacks
    def test_not_found(self) -> None:
        url, _ = self.serve(b"<html>gone</html>", code=404)
        yield self.assertUpstreamFailed(updates.UpdateChecker(url, reactor=reactor), "HTTP 404")

    @defer.inlineCallbacks
    def test_invalid_document_from_server(self) -> None:
        url, _ = self.serve(b"<html>maintenance</html>")
        yield self.assertUpstreamFailed(updates.UpdateChecker(url, reactor=reactor), "not JSON")

    @defer.inlineCallbacks
    def test_too_large_document(self) -> None:
        url, _ = self.serve(b'{"version": "9.9", "pad": "' + b"x" * (1024 * 1024) + b'"}')
        yield self.assertUpstreamFailed(updates.UpdateChecker(url, reactor=reactor), "too large")

    @defer.inlineCallbacks
    def test_too_large_chunked_document(self) -> None:
        url = self.listen(server.Site(ChunkedBody(1024 * 1024 + 65536)))
        yield self.assertUpstreamFailed(updates.UpdateChecker(url, reactor=reactor), "too large")

    @defer.inlineCallbacks
    def test_chunked_document_accepted(self) -> None:
        url = self.listen(server.Site(ChunkedBody(3 * 65536)))
        result = yield updates.UpdateChecker(url, reactor=reactor).check()
        self.assertEqual(result["latest_version"], "9.9")
        self.assertTrue(result["update_available"])

    @defer.inlineCallbacks
    def test_connection_refused(self) -> None:
        port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        checker = updates.UpdateChecker(f"http://127.0.0.1:{number}/v.json", reactor=reactor, timeout=5)
        yield self.assertUpstreamFailed(checker, "update check failed")

    @defer.inlineCallbacks
    def silent_check(self, *fragments: str):
        """Run a check against a server that reads the request and never answers; time out on a Clock."""
        factory = silent_factory()
        url = self.listen(factory)
        clock = task.Clock()
        checker = updates.UpdateChecker(url, reactor=clock, timeout=7, agent=Agent(reactor))
        d = self.assertUpstreamFailed(checker, *fragments)
        request = yield factory.request_received
        self.assertTrue(request.startswith(b"GET /latest.json HTTP/1.1\r\n"), request)
        clock.advance(6.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        yield d

    def test_silent_server_times_out(self):
        return self.silent_check()

    def test_silent_server_timeout_message(self):
        """The message says what happened: no answer within the configured time."""
        return self.silent_check("did not answer within 7 s")

    @defer.inlineCallbacks
    def test_stalled_body_times_out(self) -> None:
        url = self.listen(server.Site(StalledBody()))
        clock = task.Clock()
        checker = updates.UpdateChecker(url, reactor=clock, timeout=7, agent=Agent(reactor))
        d = self.assertUpstreamFailed(checker, "did not answer within 7 s")
        yield self.tracking.connected
        clock.advance(1)  # the body's own timeout will then be due at 1 + 7
        for _ in range(500):
            if any(call.getTime() == 8 for call in clock.getDelayedCalls()):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        else:
            self.fail("the checker never started reading the body")
        clock.advance(6.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        yield d
        # Cancelling readBody aborts the connection; Twisted then errbacks readBody's Deferred a
        # second time and logs AlreadyCalledError (twisted/twisted#12499, open).  The check's
        # outcome above is what bolt controls; let the aborted connection finish, then drop that log.
        yield self.tracking.all_closed()
        yield task.deferLater(reactor, 0, lambda: None)
        self.flushLoggedErrors(defer.AlreadyCalledError)

    @defer.inlineCallbacks
    def test_silent_server_real_timeout(self) -> None:
        """On the real reactor with a short timeout and the checker's own agent."""
        url = self.listen(silent_factory())
        checker = updates.UpdateChecker(url, reactor=reactor, timeout=0.3)
        started = reactor.seconds()
        yield self.assertUpstreamFailed(checker)
        elapsed = reactor.seconds() - started
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 5)

    @defer.inlineCallbacks
    def test_no_url(self) -> None:
        for url in (None, ""):
            result = yield updates.UpdateChecker(url, reactor=task.Clock()).check()
            self.assertFalse(result["update_available"])
            self.assertIsNone(result["latest_version"])
            self.assertEqual(result["current_version"], __version__)
            self.assertIn("update_url", result["reason"])
