"""KleinRoutes: a Klein app's routes served over a real HTTPChannel, checked on the bytes on the wire."""

from __future__ import annotations

from klein import Klein
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from bolt.web import AccessLoggingSite, BadURL, KleinRoutes


class App:
    """A small Klein app: answers now, answers later, fails now, fails later, returns the wrong type."""

    app = Klein()

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []
        self.cancelled = 0
        self.errors: list[Failure] = []

    @app.route("/now/<word>", methods=["GET"])
    def now(self, request, word):
        return f"now {word}".encode()

    @app.route("/later", methods=["GET", "POST"])
    def later(self, request):
        def cancelled(_):
            self.cancelled += 1

        d = defer.Deferred(cancelled)
        self.pending.append(d)
        return d

    @app.route("/chained", methods=["DELETE"])
    def chained(self, request):
        """A Deferred that has fired but waits on another (as a password check in a thread makes)."""
        def cancelled(_):
            self.cancelled += 1

        inner = defer.Deferred(cancelled)
        self.pending.append(inner)
        return defer.succeed(None).addCallback(lambda _: inner).addCallback(lambda _: b"deleted")

    @app.route("/fired", methods=["GET"])
    def fired(self, request):
        return defer.succeed(b"fired")

    @app.route("/boom", methods=["GET"])
    def boom(self, request):
        raise KeyError("boom")

    @app.route("/none", methods=["GET"])
    def none(self, request):
        return None

    def on_error(self, request, failure: Failure) -> bytes:
        self.errors.append(failure)
        request.setResponseCode(599)
        return f"error {failure.type.__name__}".encode()


class KleinRoutesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.app = App()
        site = AccessLoggingSite(KleinRoutes(self.app.app, self.app.on_error))
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
                                         hostAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, Failure(ConnectionError("test over")))

    def send(self, method: bytes, path: bytes, headers: bytes = b"", body: bytes = b""
             ) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """Send one request; (status line, headers, body) of what was written so far."""
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        self.channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: bolt.test\r\n" + headers + length
                                  + b"\r\n" + body)
        return self.written()

    def written(self) -> tuple[bytes, dict[bytes, bytes], bytes]:
        raw = self.transport.value()
        self.transport.clear()
        if not raw:
            return b"", {}, b""
        head, _, body = raw.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
        return status, headers, body

    def test_an_answer_ready_at_once_goes_out_with_its_length_not_chunked(self) -> None:
        status, headers, body = self.send(b"GET", b"/now/hello")
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b"now hello")
        self.assertEqual(headers[b"content-length"], b"9")
        self.assertNotIn(b"transfer-encoding", headers)

    def test_path_segments_are_percent_decoded_utf8(self) -> None:
        _, _, body = self.send(b"GET", b"/now/%C3%A9t%C3%A9")
        self.assertEqual(body, "now été".encode())

    def test_a_fired_deferred_is_answered_in_the_same_turn(self) -> None:
        status, headers, body = self.send(b"GET", b"/fired")
        self.assertEqual((status, body, headers[b"content-length"]), (b"HTTP/1.1 200 OK", b"fired", b"5"))

    def test_a_pending_deferred_is_answered_when_it_fires(self) -> None:
        self.assertEqual(self.send(b"GET", b"/later"), (b"", {}, b""))
        self.app.pending[0].callback(b"done")
        status, headers, body = self.written()
        self.assertEqual((status, body, headers[b"content-length"]), (b"HTTP/1.1 200 OK", b"done", b"4"))
        # The connection is still usable (keep-alive) for the next request.
        self.assertEqual(self.send(b"GET", b"/now/again")[2], b"now again")

    def test_a_pending_deferred_that_fails_goes_to_on_error(self) -> None:
        self.send(b"POST", b"/later")
        self.app.pending[0].errback(ValueError("late"))
        status, _, body = self.written()
        self.assertEqual((status[:12], body), (b"HTTP/1.1 599", b"error ValueError"))

    def leave_during(self, method: bytes, path: bytes) -> None:
        """Send a request whose route is still waiting, hang up, and check it was cancelled quietly."""
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.send(method, path)
        self.channel.connectionLost(Failure(ConnectionError("client went away")))
        self.assertEqual(self.app.cancelled, 1)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.app.errors, [])
        self.assertEqual([e for e in logged if e.get("log_failure") is not None], [])

    def test_a_client_that_leaves_cancels_the_pending_route_and_gets_nothing(self) -> None:
        self.leave_during(b"GET", b"/later")

    def test_a_client_that_leaves_cancels_a_route_waiting_on_another_deferred(self) -> None:
        self.leave_during(b"DELETE", b"/chained")

    def test_errors_of_every_kind_reach_on_error(self) -> None:
        for method, path, kind in [(b"GET", b"/boom", KeyError), (b"GET", b"/none", TypeError),
                                   (b"GET", b"/nowhere", NotFound), (b"DELETE", b"/later", MethodNotAllowed),
                                   (b"GET", b"/now/%ff", BadURL)]:
            status, _, body = self.send(method, path)
            self.assertEqual((status[:12], body), (b"HTTP/1.1 599", f"error {kind.__name__}".encode()), path)
        self.assertEqual(sorted(self.app.errors[3].value.valid_methods), ["GET", "HEAD", "POST"])

    def test_head_gets_the_headers_of_get_and_no_body(self) -> None:
        status, headers, body = self.send(b"HEAD", b"/now/hello")
        self.assertEqual((status, headers[b"content-length"], body), (b"HTTP/1.1 200 OK", b"9", b""))

    def test_bodies_are_not_parsed_as_forms_whatever_their_content_type(self) -> None:
        """A Content-Type with a 0x85 byte made twisted.web's form parsing raise: no answer at all."""
        for ctype in (b"application/json\x85", b"multipart/form-data; boundary=\x85",
                      b"application/x-www-form-urlencoded"):
            status, _, _ = self.send(b"POST", b"/later", b"Content-Type: " + ctype + b"\r\n", b"a=1&b=2")
            self.assertEqual(status, b"", ctype)  # no answer yet: the route is waiting ...
            self.assertFalse(self.transport.disconnecting, ctype)  # ... on a connection still open
            self.app.pending[-1].callback(b"answered")
            self.assertEqual(self.written()[2], b"answered", ctype)
