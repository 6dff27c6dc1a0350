"""Password hashing with scrypt, and a fast path for credentials already verified.

scrypt at OWASP cost (N=2**17, r=8, p=1) takes a few hundred milliseconds and 128 MiB; HTTP Basic
sends the password with every request.  So a password is verified with scrypt once (in a thread, by
the caller) and then remembered as a keyed BLAKE2b digest under a per-process random key: later
requests compare digests in constant time.  Changing the credentials forgets every digest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

#: OWASP's recommended minimum for scrypt (Password Storage Cheat Sheet).
OWASP_COST = {"n": 2 ** 17, "r": 8, "p": 1}
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
# ASCII digits, few of them: int() refuses numbers of over 4300 digits with a ValueError.
_FORMAT = re.compile(r"scrypt\$n=([0-9]{1,10}),r=([0-9]{1,10}),p=([0-9]{1,10})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * 1024 * 1024, dklen=32)


def hash_password(password: str, cost: dict[str, int] | None = None) -> str:
    """Return a self-describing hash: ``scrypt$n=..,r=..,p=..$salt$digest`` (base64)."""
    c = cost or OWASP_COST
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, c["n"], c["r"], c["p"])
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt$n={c['n']},r={c['r']},p={c['p']}${b64(salt)}${b64(digest)}"


def is_password_hash(value: object) -> bool:
    """True for a hash :func:`verify_password` can use: sane scrypt parameters, a 32-byte digest."""
    m = _FORMAT.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return False
    n, r, p = (int(x) for x in m.group(1, 2, 3))
    if not (2 <= n <= 2 ** 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16
            and 128 * n * r * p <= 256 * 1024 * 1024):
        return False
    try:
        salt, digest = base64.b64decode(m.group(4), validate=True), base64.b64decode(m.group(5), validate=True)
    except ValueError:
        return False
    return len(salt) >= 8 and len(digest) == 32


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a stored hash in constant time. Slow by design: call off the reactor."""
    m = _FORMAT.fullmatch(stored)
    if m is None or not is_password_hash(stored):
        return False
    n, r, p = (int(x) for x in m.group(1, 2, 3))
    salt, expected = base64.b64decode(m.group(4)), base64.b64decode(m.group(5))
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


def check_new_password(password: object) -> str | None:
    """The reason a new password is refused, or None when it is acceptable."""
    if not isinstance(password, str) or not password:
        return "admin_password must be a non-empty string"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"admin_password must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"admin_password must be at most {MAX_PASSWORD_LENGTH} characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "admin_password must be valid Unicode text (no lone surrogates)"
    return None


def generate_password() -> str:
    """A random initial password: 24 URL-safe characters (~143 bits)."""
    return secrets.token_urlsafe(18)


@dataclass
class Credentials:
    """The admin user and password hash, with the remembered digest of the last verified pair."""

    user: str
    password_hash: str

    def __post_init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._verified: bytes | None = None
        # A hash of a random password: unknown users still cost one scrypt, so timing tells nothing.
        self._decoy = self.password_hash

    def _digest(self, user: str, password: str) -> bytes:
        data = user.encode("utf-8", "surrogatepass") + b"\0" + password.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, key=self._key, digest_size=32).digest()

    def check_fast(self, user: str, password: str) -> bool:
        """True when this exact pair was verified before; constant time in the inputs."""
        return self._verified is not None and hmac.compare_digest(self._digest(user, password), self._verified)

    def check_slow(self, user: str, password: str) -> bool:
        """Full scrypt verification (call in a thread); remembers the pair on success."""
        user_ok = hmac.compare_digest(user.encode("utf-8", "surrogatepass"), self.user.encode("utf-8"))
        password_ok = verify_password(password, self.password_hash if user_ok else self._decoy)
        if user_ok and password_ok:
            self._verified = self._digest(user, password)
            return True
        return False
