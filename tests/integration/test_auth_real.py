"""Authentication of the real server: timing, throttling per address, TLS versions and certificate,
password changes.

Clients bind their sockets to other loopback addresses (127.0.0.2, 127.0.0.3, ...: all of 127/8 is
local on Linux) to appear to the server as distinct clients, while the server listens on 127.0.0.1
as everywhere else.

The shell token race (two clients present one token at once, exactly one gets a shell) is
tests/integration/test_shell_real.py's ``test_two_clients_racing_one_token``.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import statistics
import time
import warnings

from twisted.python import log
from twisted.trial import unittest

from tests.integration.server import RealServer
from tests.integration.support import require_root

#: Wrong passwords per kind for the timing test (three kinds); scrypt at OWASP cost is ~0.3-0.8 s
#: a check here, so the test takes about two minutes.
SAMPLES = 50
#: Failures per source address: the server blocks an address at its 10th failure within a minute.
PER_ADDRESS = 8


class Client:
    """One keep-alive HTTPS connection from a chosen loopback source address, verified against the
    server's certificate."""

    def __init__(self, server: RealServer, source: str = "127.0.0.1") -> None:
        context = ssl.create_default_context(cafile=server.cert_path)
        self.server = server
        self.connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=60,
                                                      source_address=(source, 0))
        self.connection.connect()

    def request(self, method: str, path: str, user: str = "admin", password: str | None = None,
                body=None) -> tuple[int, dict, dict]:
        token = base64.b64encode(f"{user}:{password if password is not None else self.server.password}".encode())
        headers = {"Authorization": "Basic " + token.decode()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        answer = json.loads(response.read())
        return response.status, answer, dict(response.getheaders())

    def timed(self, password: str, user: str = "admin") -> float:
        started = time.perf_counter()
        code, _, _ = self.request("GET", "/api/status", user=user, password=password)
        elapsed = time.perf_counter() - started
        if code != 401:
            raise AssertionError(f"a wrong password got {code}")
        return elapsed

    def close(self) -> None:
        self.connection.close()


def sources(first: int):
    """127.0.0.<first>, 127.0.0.<first+1>, ... (never 127.0.0.1)."""
    n = first
    while True:
        yield str(ipaddress.IPv4Address("127.0.0.0") + n)
        n += 1


class AuthTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        require_root(self)
        self.addresses_at_start = interface_addresses()  # before the server makes its certificate
        self.server = RealServer()
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def client(self, source: str = "127.0.0.1") -> Client:
        client = Client(self.server, source)
        self.addCleanup(client.close)
        return client

    def test_wrong_password_timing_does_not_depend_on_how_much_matches(self):
        """Same length, sharing 0 or all but the last character with the right one: the same time.

        Each failure costs a full scrypt (the server has never verified these pairs), so the times
        are dominated by it; what must not show is any shortcut for a longer matching prefix (or for
        a wrong user name, which is checked against a decoy hash).  Kinds are interleaved in a
        rotating order, so drift in the machine's load hits every kind alike; medians, so a few
        stragglers (another test's burst) do not count.
        """
        right = self.server.password
        kinds = {
            "shares 0": "".join("x" if c != "x" else "y" for c in right),
            "shares all but the last": right[:-1] + ("x" if right[-1] != "x" else "y"),
            "wrong user": right,
        }
        users = {"wrong user": "nobody"}
        self.assertTrue(all(len(p) == len(right) for p in kinds.values()))
        self.assertEqual(self.client().request("GET", "/api/status")[0], 200)  # warm: the server is up and idle
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        addresses = sources(10)
        client, used = None, PER_ADDRESS
        order = list(kinds)
        for i in range(SAMPLES):
            order = order[1:] + order[:1]  # rotate which kind goes first
            for kind in order:
                if used == PER_ADDRESS:
                    client, used = self.client(next(addresses)), 0
                times[kind].append(client.timed(kinds[kind], users.get(kind, "admin")))
                used += 1
        medians = {kind: statistics.median(t) for kind, t in times.items()}
        spread = {kind: [round(q, 4) for q in statistics.quantiles(t, n=4)] for kind, t in times.items()}
        tolerance = max(0.15 * min(medians.values()), 0.005)
        detail = f"medians {medians}, quartiles {spread}, tolerance {tolerance:.4f} s"
        log.msg(f"wrong-password timing: {detail}")  # in trial's test.log, for whoever tunes this
        self.assertLessEqual(max(medians.values()) - min(medians.values()), tolerance, detail)
        self.assertGreater(min(medians.values()), 0.02, f"no scrypt on the failure path? {detail}")

    def test_throttling_is_per_address(self):
        blocked = self.client("127.0.0.2")
        for attempt in range(10):
            code, body, _ = blocked.request("GET", "/api/status", password=f"wrong-{attempt}")
            self.assertEqual((code, body), (401, {"error": "invalid credentials"}), attempt)
        code, body, headers = blocked.request("GET", "/api/status")  # the right password, all the same
        self.assertEqual(code, 429, body)
        self.assertIn("too many failed logins", body["error"])
        self.assertGreater(int(headers["Retry-After"]), 0)
        self.assertLessEqual(int(headers["Retry-After"]), 61)
        # ...and refused at once, without a password check: a blocked address costs the server nothing.
        started = time.perf_counter()
        self.assertEqual(self.client("127.0.0.2").request("GET", "/api/status", password="another-guess")[0], 429)
        self.assertLess(time.perf_counter() - started, 0.25)
        # Another address is not affected, and neither is the server's own 127.0.0.1.
        self.assertEqual(self.client("127.0.0.3").request("GET", "/api/status")[0], 200)
        self.assertEqual(self.server.api("GET", "/api/status")[0], 200)
        # A new connection from the blocked address is still blocked (the key is the address).
        self.assertEqual(self.client("127.0.0.2").request("GET", "/api/projects")[0], 429)

    def test_tls_versions(self):
        """TLS 1.0 and 1.1 refused by the server (alert protocol_version), TLS 1.2 and 1.3 served."""
        for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            with self.tls(version) as connection:
                self.assertEqual(connection.version(), name)
                token = base64.b64encode(f"admin:{self.server.password}".encode()).decode()
                connection.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                   b"Authorization: Basic " + token.encode() + b"\r\n\r\n")
                answer = b""
                while chunk := connection.recv(65536):
                    answer += chunk
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:200])
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with self.assertRaises(ssl.SSLError) as caught:
                with self.tls(version):
                    pass
            # The server's alert, not a client that could not offer the version.
            self.assertEqual(caught.exception.reason, "TLSV1_ALERT_PROTOCOL_VERSION", caught.exception)

    def tls(self, version: ssl.TLSVersion) -> ssl.SSLSocket:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.server.cert_path)
        with warnings.catch_warnings():  # TLSv1 and TLSv1_1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what old versions need
        raw = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        try:
            return context.wrap_socket(raw, server_hostname="127.0.0.1")
        except BaseException:
            raw.close()
            raise

    def test_certificate_names_every_way_to_reach_the_host(self):
        from cryptography import x509

        with open(self.server.cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        names = set(san.get_values_for_type(x509.DNSName))
        self.assertIn(socket.gethostname(), names)
        self.assertTrue({"127.0.0.1", "::1"} <= ips, ips)
        # The host's addresses, as netifaces lists them; other tests add and remove sandbox links
        # (with gateway addresses) all the time, so only the addresses present both when the
        # certificate was made and now are required.
        stable = interface_addresses() & self.addresses_at_start
        self.assertTrue(stable, "no interface address found")
        self.assertLessEqual(stable, ips)
        # ...and a client verifies it for 127.0.0.1 as it is.
        context = ssl.create_default_context(cafile=self.server.cert_path)
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                self.assertIsNotNone(tls.getpeercert())

    def test_old_password_refused_right_after_a_change(self):
        client = self.client()
        old = self.server.password
        self.assertEqual(client.request("GET", "/api/status")[0], 200)  # the old pair is now on the fast path
        code, body, _ = client.request("PUT", "/api/config", body={"admin_password": "changed-secret-1"})
        self.assertEqual((code, body), (200, {"admin_user": "admin"}))
        # The very next request on the same connection, then on a new one.
        self.assertEqual(client.request("GET", "/api/status", password=old)[0], 401)
        self.assertEqual(self.client().request("GET", "/api/status", password=old)[0], 401)
        self.assertEqual(client.request("GET", "/api/status", password="changed-secret-1")[0], 200)
        self.server.password = "changed-secret-1"  # for cleanup
        # A user rename works the same way: the old name is refused at once.
        code, _, _ = client.request("PUT", "/api/config", password="changed-secret-1", body={"admin_user": "boss"})
        self.assertEqual(code, 200)
        self.assertEqual(client.request("GET", "/api/status", password="changed-secret-1")[0], 401)
        self.assertEqual(client.request("GET", "/api/status", user="boss", password="changed-secret-1")[0], 200)
        code, _, _ = client.request("PUT", "/api/config", user="boss", password="changed-secret-1",
                                    body={"admin_user": "admin"})
        self.assertEqual(code, 200)


def interface_addresses() -> set[str]:
    """Every address of every interface (netifaces), scope suffixes dropped."""
    import netifaces

    found = set()
    for name in netifaces.interfaces():
        try:
            entries = netifaces.ifaddresses(name)
        except ValueError:  # gone meanwhile
            continue
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in entries.get(family, []):
                found.add(str(ipaddress.ip_address(entry["addr"].split("%")[0])))
    return found
