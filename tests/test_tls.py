"""Tests for bolt.tls: the self-signed certificate, the files, and a TLS 1.2+ server on 127.0.0.1
checked with the standard library's ssl client."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, protocol, reactor, threads
from twisted.trial import unittest

from bolt import tls
from tests.helpers import TrackingFactory


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def san(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class SelfSignedTests(unittest.TestCase):
    def test_subject_alt_names(self) -> None:
        cert_pem, _ = tls.generate_self_signed(
            "bolt-host.example", ["192.0.2.7", "2001:db8::1", "not-an-address", "192.0.2.7"])
        dns, ips = san(load_cert(cert_pem))
        self.assertIn("bolt-host.example", dns)
        self.assertIn("localhost", dns)
        for ip in ["127.0.0.1", "::1", "192.0.2.7", "2001:db8::1"]:
            self.assertIn(ip, ips)
        self.assertEqual(len(ips), len(set(ips)), "each address once")
        self.assertNotIn("not-an-address", dns + ips)

    def test_localhost_not_duplicated(self) -> None:
        dns, ips = san(load_cert(tls.generate_self_signed("localhost", [])[0]))
        self.assertEqual(dns, ["localhost"])
        self.assertEqual(sorted(ips), ["127.0.0.1", "::1"])

    def test_key_matches_certificate(self) -> None:
        cert_pem, key_pem = tls.generate_self_signed("bolt-host.example", [])
        cert = load_cert(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(key.public_key().public_bytes(serialization.Encoding.PEM, pub),
                         cert.public_key().public_bytes(serialization.Encoding.PEM, pub))
        # self-signed: the certificate's signature verifies with its own key
        cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        self.assertIn(b"BEGIN PRIVATE KEY", key_pem)
        self.assertNotIn(b"ENCRYPTED", key_pem)

    def test_server_certificate_not_ca(self) -> None:
        cert = load_cert(tls.generate_self_signed("bolt-host.example", [], days=30)[0])
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertIn(ExtendedKeyUsageOID.SERVER_AUTH, list(eku))
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLessEqual(cert.not_valid_before_utc, now)
        self.assertGreater(cert.not_valid_after_utc, now + datetime.timedelta(days=29))
        self.assertLess(cert.not_valid_after_utc, now + datetime.timedelta(days=31))
        self.assertEqual(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "bolt-host.example")

    def test_serials_differ(self) -> None:
        first = load_cert(tls.generate_self_signed("h", [])[0])
        second = load_cert(tls.generate_self_signed("h", [])[0])
        self.assertNotEqual(first.serial_number, second.serial_number)

    def test_fingerprint(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "cert.pem")
        cert_pem, _ = tls.generate_self_signed("h", [])
        with open(path, "wb") as f:
            f.write(cert_pem)
        der = load_cert(cert_pem).public_bytes(serialization.Encoding.DER)
        expected = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        self.assertEqual(tls.fingerprint_sha256(path), expected)


class EnsureCertificateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = os.path.join(os.path.abspath(self.mktemp()), "etc", "bolt")

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def test_creates_files(self) -> None:
        cert_path, key_path = tls.ensure_certificate(self.directory)
        self.assertEqual(cert_path, os.path.join(self.directory, "cert.pem"))
        self.assertEqual(key_path, os.path.join(self.directory, "key.pem"))
        self.assertEqual(mode_of(key_path), 0o600)
        self.assertEqual(sorted(os.listdir(self.directory)), ["cert.pem", "key.pem"])
        dns, ips = san(load_cert(self.read(cert_path)))
        self.assertIn(socket.gethostname(), dns)
        self.assertIn("127.0.0.1", ips)
        self.assertIn("::1", ips)
        for addr in tls.host_addresses():
            self.assertIn(str(ipaddress.ip_address(addr)), ips)

    def test_does_not_overwrite(self) -> None:
        cert_path, key_path = tls.ensure_certificate(self.directory)
        before = (self.read(cert_path), self.read(key_path))
        self.assertEqual(tls.ensure_certificate(self.directory), (cert_path, key_path))
        self.assertEqual((self.read(cert_path), self.read(key_path)), before)

    def test_existing_files_used_as_they_are(self) -> None:
        os.makedirs(self.directory)
        for name, content in [("cert.pem", b"operator's certificate"), ("key.pem", b"operator's key")]:
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(content)
        cert_path, key_path = tls.ensure_certificate(self.directory)
        self.assertEqual(self.read(cert_path), b"operator's certificate")
        self.assertEqual(self.read(key_path), b"operator's key")

    def test_lone_existing_file_not_overwritten(self) -> None:
        """With only one of the two files present, bolt still never overwrites it (module doc:
        "bolt never overwrites existing files"); it may refuse, but not replace the operator's file."""
        for present in ("cert.pem", "key.pem"):
            directory = os.path.join(os.path.abspath(self.mktemp()), "etc")
            os.makedirs(directory)
            path = os.path.join(directory, present)
            with open(path, "wb") as f:
                f.write(b"operator's " + present.encode())
            try:
                tls.ensure_certificate(directory)
            except (OSError, ValueError):
                pass  # refusing is fine
            self.assertEqual(self.read(path), b"operator's " + present.encode(), present)


def make_ca(name: str, issuer=None, issuer_key=None):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(issuer_key or key, hashes.SHA256()))
    return cert, key


def make_leaf(issuer, issuer_key):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def tls_client(port: int, cadata: str, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> str:
    """Connect with the standard library, verify the server for 127.0.0.1, echo one line.

    SECLEVEL=0 lets this client offer TLS 1.0/1.1 at all (OpenSSL 3 refuses them by default), so a
    refusal of those versions can only come from the server.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    ctx.load_verify_locations(cadata=cadata)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"ping\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
            if data != b"ping\n":
                raise AssertionError(f"echo returned {data!r}")
            return conn.version()


class ContextFactoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.cert_path, self.key_path = tls.ensure_certificate(self.directory)
        with open(self.cert_path) as f:
            self.cadata = f.read()

    def serve(self, options) -> int:
        tracking = TrackingFactory(protocol.Factory.forProtocol(Echo))
        port = reactor.listenSSL(0, tracking, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(tracking.all_closed)
        return port.getHost().port

    def connect(self, port: int, minimum, maximum, cadata: str | None = None) -> defer.Deferred:
        return threads.deferToThread(tls_client, port, cadata or self.cadata, minimum, maximum)

    @defer.inlineCallbacks
    def test_tls_1_2_accepted(self) -> None:
        port = self.serve(tls.context_factory(self.cert_path, self.key_path))
        version = yield self.connect(port, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(version, "TLSv1.2")

    @defer.inlineCallbacks
    def test_tls_1_3_accepted(self) -> None:
        port = self.serve(tls.context_factory(self.cert_path, self.key_path))
        version = yield self.connect(port, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED)
        self.assertEqual(version, "TLSv1.3")

    @defer.inlineCallbacks
    def assertRefusedByServer(self, port: int, maximum: ssl.TLSVersion):
        try:
            version = yield self.connect(port, ssl.TLSVersion.TLSv1, maximum)
        except ssl.SSLError as e:
            # an alert *received* from the server: the client did offer the old version
            self.assertIn("ALERT_PROTOCOL_VERSION", e.reason or "", e)
            return
        self.fail(f"the server accepted {version}")

    def lenient_server(self) -> int:
        """bolt's options with the server's OpenSSL security level lowered to 0.

        OpenSSL 3 at its default level cannot do TLS 1.0/1.1 at all, which would refuse them even
        without bolt's minimum; at level 0 only the minimum version bolt sets can refuse them.
        """
        options = tls.context_factory(self.cert_path, self.key_path)
        options.getContext().set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        return self.serve(options)

    @defer.inlineCallbacks
    def test_tls_1_1_refused_by_server(self) -> None:
        port = self.serve(tls.context_factory(self.cert_path, self.key_path))
        yield self.assertRefusedByServer(port, ssl.TLSVersion.TLSv1_1)

    @defer.inlineCallbacks
    def test_tls_1_1_refused_by_minimum_version(self) -> None:
        yield self.assertRefusedByServer(self.lenient_server(), ssl.TLSVersion.TLSv1_1)

    @defer.inlineCallbacks
    def test_tls_1_0_refused_by_minimum_version(self) -> None:
        yield self.assertRefusedByServer(self.lenient_server(), ssl.TLSVersion.TLSv1)

    @defer.inlineCallbacks
    def test_tls_1_2_accepted_by_lenient_server(self) -> None:
        """Control for the two tests above: lowering the level does not break TLS 1.2."""
        version = yield self.connect(self.lenient_server(), ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(version, "TLSv1.2")

    @defer.inlineCallbacks
    def test_chain_sent_after_leaf(self) -> None:
        """A client trusting only the root verifies a leaf whose intermediate is in cert.pem."""
        root, root_key = make_ca("Test Root")
        inter, inter_key = make_ca("Test Intermediate", root, root_key)
        leaf, leaf_key = make_leaf(inter, inter_key)
        cert_path = os.path.join(self.directory, "chain.pem")
        key_path = os.path.join(self.directory, "leaf-key.pem")
        with open(cert_path, "wb") as f:
            f.write(pem(leaf) + b"\n" + pem(inter))
        with open(key_path, "wb") as f:
            f.write(pem(leaf_key))
        port = self.serve(tls.context_factory(cert_path, key_path))
        version = yield self.connect(port, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED,
                                     cadata=pem(root).decode())
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))

    def test_no_certificate_in_file(self) -> None:
        empty = os.path.join(self.directory, "empty.pem")
        with open(empty, "w") as f:
            f.write("no certificate here\n")
        error = self.assertRaises(ValueError, tls.context_factory, empty, self.key_path)
        self.assertIn(empty, str(error))
