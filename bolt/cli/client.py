"""HTTPS to a Bolt server with its certificate pinned, on the standard library alone.

Trust works like ssh's known_hosts: ``bolt remote add`` reads the certificate the server presents,
shows its SHA-256 fingerprint, and on confirmation stores the certificate and the fingerprint.  From
then on every connection is verified, never with verification off:

* the TLS chain must verify against exactly that certificate (an SSL context whose only trust
  anchor is the stored PEM, so a self-signed certificate is trusted as itself and nothing else is),
  and the host name of the URL must be in its subjectAltName (``check_hostname``);
* and the certificate the server presents must have the pinned SHA-256, compared after the
  handshake (this also holds when the pinned certificate is a CA-issued leaf).

A server presenting any other certificate is refused with both fingerprints in the message.  The one
handshake made without verification is the one in :func:`fetch_certificate`, which only *reads* a
certificate so that a person (or ``--fingerprint``) can decide to pin it; nothing is sent over it.

One connection per request: a CLI command makes a handful, and a fresh connection never meets a
keep-alive connection the server has closed meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
from typing import Any
from urllib.parse import quote

from bolt import __version__
from bolt.cli.config import Remote

CONNECT_TIMEOUT = 15.0
DEFAULT_TIMEOUT = 300.0
MAX_RESPONSE = 64 * 1024 * 1024
USER_AGENT = f"bolt-cli/{__version__}"
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH / _IP_ADDRESS_MISMATCH, X509_V_ERR_CERT_HAS_EXPIRED / _NOT_YET_VALID.
_HOSTNAME_MISMATCH = (62, 64)
_EXPIRED = (10, 9)


class ClientError(Exception):
    """Anything that kept a request from getting an answer; the message is for the user."""


class ConnectError(ClientError):
    """The server could not be reached, or the TLS handshake failed for a reason other than trust."""


class PinError(ClientError):
    """The server's certificate is not the pinned one (or the pinned one does not fit the URL)."""


class ApiError(ClientError):
    """The server answered with an error status; ``message`` is its {"error": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as 'AA:BB:...' (the form bolt.tls.fingerprint_sha256 gives)."""
    return hashlib.sha256(der).digest().hex(":").upper()


def path(*segments: str) -> str:
    """'/api/' + the segments, each percent-quoted so a name can never add a path component."""
    return "/api/" + "/".join(quote(str(s), safe=":") for s in segments)


def pinned_context(certificate_pem: str) -> ssl.SSLContext:
    """A client context that trusts ``certificate_pem`` and nothing else, checking host names."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=certificate_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The pinned certificate is the trust anchor even when it is a CA-issued leaf, not a root.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def fetch_certificate(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bytes:
    """The DER certificate ``host:port`` presents, read without trusting it (see the module doc)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as e:
        raise ConnectError(f"TLS handshake with {host}:{port} failed: {e.reason or e}") from None
    except OSError as e:
        raise ConnectError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    if not der:
        raise ConnectError(f"{host}:{port} presented no certificate")
    return der


def describe_certificate(host: str, port: int, certificate_pem: str, timeout: float = CONNECT_TIMEOUT
                         ) -> dict[str, Any]:
    """The decoded fields (subject, subjectAltName, notAfter) of the pinned certificate, read over a
    connection verified against it but without the host-name check (so a mismatch can be shown)."""
    context = pinned_context(certificate_pem)
    context.check_hostname = False
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            if fingerprint(tls.getpeercert(binary_form=True)) != fingerprint(
                    ssl.PEM_cert_to_DER_cert(certificate_pem)):
                raise PinError(f"{host}:{port} changed its certificate while it was being read; try again")
            return tls.getpeercert()


def connect_pinned(remote: Remote, port: int | None = None, timeout: float = CONNECT_TIMEOUT) -> ssl.SSLSocket:
    """A TLS socket to the remote's host (on ``port``, default the API's), verified and pin-checked."""
    port = port or remote.port
    try:
        raw = socket.create_connection((remote.host, port), timeout=timeout)
    except OSError as e:
        raise ConnectError(f"cannot connect to {remote.host}:{port}: {e.strerror or e}") from None
    try:
        tls = pinned_context(remote.certificate).wrap_socket(raw, server_hostname=remote.host)
    except ssl.SSLCertVerificationError as e:
        raw.close()
        raise _trust_error(remote, port, e) from None
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise ConnectError(f"TLS handshake with {remote.host}:{port} failed: "
                           f"{getattr(e, 'reason', None) or e}") from None
    check_pin(remote, tls.getpeercert(binary_form=True), port)
    return tls


def check_pin(remote: Remote, der: bytes | None, port: int | None = None) -> None:
    presented = fingerprint(der or b"")
    if not der or presented != remote.fingerprint:
        raise PinError(_different(remote, presented, port))


def _different(remote: Remote, presented: str, port: int | None) -> str:
    where = remote.url if port in (None, remote.port) else f"{remote.host}:{port}"
    return (f"the server at {where} presented a certificate that is not the one pinned for remote "
            f"{remote.name!r}; refusing to connect.\n"
            f"  pinned:    SHA256 {remote.fingerprint}\n"
            f"  presented: SHA256 {presented}\n"
            f"If the server's certificate was replaced on purpose, pin the new one with "
            f"`bolt remote add {remote.name} {remote.url}`.")


def _trust_error(remote: Remote, port: int, error: ssl.SSLCertVerificationError) -> ClientError:
    """Why verification failed: another certificate (the usual case), or the pinned one is unusable."""
    try:
        presented = fingerprint(fetch_certificate(remote.host, port))
    except ClientError:
        presented = "(could not be read)"
    if presented != remote.fingerprint:
        return PinError(_different(remote, presented, port))
    if error.verify_code in _HOSTNAME_MISMATCH:
        return PinError(f"the certificate pinned for remote {remote.name!r} is not valid for the host name "
                        f"{remote.host!r} (not in its subjectAltName); use a URL with a name or address "
                        f"the certificate lists: {error.verify_message}")
    if error.verify_code in _EXPIRED:
        return PinError(f"the certificate pinned for remote {remote.name!r} is {error.verify_message}; the "
                        f"server needs a new one, then `bolt remote add {remote.name} {remote.url}` again")
    return PinError(f"the certificate of {remote.url} failed verification: {error.verify_message}")


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPSConnection over :func:`connect_pinned`; ``read_timeout`` applies once connected."""

    def __init__(self, remote: Remote, read_timeout: float) -> None:
        super().__init__(remote.host, remote.port, timeout=CONNECT_TIMEOUT,
                         context=pinned_context(remote.certificate))
        self.remote = remote
        self.read_timeout = read_timeout

    def connect(self) -> None:
        self.sock = connect_pinned(self.remote, timeout=self.timeout)
        self.sock.settimeout(self.read_timeout)


class Client:
    """JSON requests to one remote with its credentials; every error is a :class:`ClientError`."""

    def __init__(self, remote: Remote, password: str, *, user: str | None = None) -> None:
        self.remote = remote
        self.user = user or remote.user
        self.password = password

    def _authorization(self) -> str:
        token = base64.b64encode(f"{self.user}:{self.password}".encode("utf-8")).decode("ascii")
        return f"Basic {token}"

    def request(self, method: str, url_path: str, body: Any = None, *, timeout: float = DEFAULT_TIMEOUT,
                raw_body: bytes | None = None) -> Any:
        """The decoded JSON answer of a 2xx response; ApiError with the server's message otherwise."""
        data = raw_body if raw_body is not None else (
            json.dumps(body).encode("utf-8") if body is not None else None)
        headers = {"Authorization": self._authorization(), "Accept": "application/json",
                   "User-Agent": USER_AGENT, "Connection": "close"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        connection = PinnedHTTPSConnection(self.remote, timeout)
        try:
            try:
                connection.request(method, url_path, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read(MAX_RESPONSE + 1)
            except ClientError:
                raise
            except socket.timeout:
                raise ConnectError(f"{self.remote.url} did not answer {method} {url_path} within "
                                   f"{timeout:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                raise ConnectError(f"{method} {self.remote.url}{url_path} failed: "
                                   f"{getattr(e, 'strerror', None) or e.__class__.__name__ + ': ' + str(e)}") from None
        finally:
            connection.close()
        if len(payload) > MAX_RESPONSE:
            raise ConnectError(f"the answer to {method} {url_path} is larger than {MAX_RESPONSE} bytes")
        try:
            decoded = json.loads(payload.decode("utf-8")) if payload.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            decoded = None
            if 200 <= response.status < 300:
                raise ConnectError(f"{method} {url_path}: the server's answer is not JSON "
                                   f"(HTTP {response.status})") from None
        if 200 <= response.status < 300:
            return decoded
        message = decoded.get("error") if isinstance(decoded, dict) else None
        if not isinstance(message, str) or not message:
            message = f"HTTP {response.status} {response.reason}"
        if response.status == 401:
            message += (f" (user {self.user!r} on remote {self.remote.name!r}; set BOLT_PASSWORD or update the "
                        f"stored password with `bolt remote add {self.remote.name} {self.remote.url}`)")
        raise ApiError(response.status, message)
