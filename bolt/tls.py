"""TLS for the API (and optionally the shells): certificate files and a TLS 1.2+ context.

Without cert.pem/key.pem beside the config, a self-signed certificate is generated whose
subjectAltName covers every name a client on this host or its network may use: the host name,
127.0.0.1, ::1 and the addresses of the host's interfaces.  Replace the files with a CA-issued
certificate for production; bolt never overwrites existing files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.logger import Logger

from bolt.atomic import atomic_write

log = Logger()
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def host_addresses() -> list[str]:
    """Every IPv4/IPv6 address of the host's interfaces (netifaces), without scope suffixes."""
    import netifaces

    found: list[str] = []
    for iface in netifaces.interfaces():
        try:
            addresses = netifaces.ifaddresses(iface)
        except ValueError:  # the interface went away since interfaces() listed it (a veth, a sandbox's link)
            continue
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in addresses.get(family, []):
                addr = entry.get("addr", "").split("%")[0]
                if addr and addr not in found:
                    found.append(addr)
    return found


def generate_self_signed(hostname: str, addresses: Iterable[str], days: int = 3650) -> tuple[bytes, bytes]:
    """Return (certificate PEM, private key PEM) for a self-signed ECDSA P-256 certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "bolt"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bolt sandbox server")])
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)] if hostname else []
    if "localhost" != hostname:
        alt.append(x509.DNSName("localhost"))
    ips = {"127.0.0.1", "::1", *addresses}
    for ip in sorted(ips):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            continue
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(directory: str) -> tuple[str, str]:
    """Return the paths of cert.pem and key.pem in ``directory``, generating them when absent."""
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if have_cert and have_key:
        return cert_path, key_path
    if have_cert or have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise OSError(2, f"{present} exists but {missing} does not; provide both (bolt never overwrites "
                         "a certificate or key) or remove both to generate a self-signed pair", missing)
    hostname = socket.gethostname()
    cert_pem, key_pem = generate_self_signed(hostname, host_addresses())
    os.makedirs(directory, mode=0o750, exist_ok=True)
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert_pem, mode=0o644)
    log.info("generated a self-signed certificate for {hostname} at {path}", hostname=hostname, path=cert_path)
    return cert_path, key_path


def context_factory(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """TLS server options: TLS 1.2 at least, the chain in cert.pem sent after the leaf."""
    with open(cert_path, "rb") as f:
        certs = _PEM_CERT.findall(f.read())
    with open(key_path, "rb") as f:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
    if not certs:
        raise ValueError(f"{cert_path}: no PEM certificate found")
    loaded = [crypto.load_certificate(crypto.FILETYPE_PEM, c) for c in certs]
    return ssl.CertificateOptions(
        privateKey=key, certificate=loaded[0], extraCertChain=loaded[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def fingerprint_sha256(cert_path: str) -> str:
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()
