"""The configuration file (/etc/bolt/config.json): defaults, validation, atomic rewrite.

Every key is declared once in :data:`SCHEMA` with its default and its parser.  Loading refuses
invalid JSON, unknown keys and bad values with a message naming the file, the key and the problem:
the server stops rather than run with a configuration nobody wrote.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from bolt import passwords
from bolt.atomic import atomic_write
from bolt.errors import ConfigError
from bolt.model import ResourceLimits

DEFAULT_ALLOWED_PORTS = "10000-19999"
DEFAULT_SHELL_PORTS = "20001-25000"


class _Bad(ValueError):
    """A value's problem, turned into a ConfigError naming file and key by the loader."""


def parse_port_range(value: Any) -> frozenset[int]:
    """A port set from an explicit list of ports or a string "A-B" (inclusive)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", value)
        if m is None:
            raise _Bad('must be a list of ports or a string "FIRST-LAST", e.g. "10000-19999"')
        lo, hi = int(m.group(1)), int(m.group(2))
        if not 1 <= lo <= hi <= 65535:
            raise _Bad(f"range {value!r} must satisfy 1 <= FIRST <= LAST <= 65535")
        return frozenset(range(lo, hi + 1))
    if isinstance(value, list) and value:
        if not all(type(p) is int and 1 <= p <= 65535 for p in value):
            raise _Bad("every port must be an integer between 1 and 65535")
        return frozenset(value)
    raise _Bad('must be a non-empty list of ports or a string "FIRST-LAST"')


def _str(pattern: str, rule: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or re.fullmatch(pattern, value) is None:
            raise _Bad(rule)
        return value
    return parse


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise _Bad(f"must be an integer between {lo} and {hi}")
        return value
    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("must be true or false")
    return value


def _abs_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or ".." in value.split("/"):
        raise _Bad("must be an absolute path without '..'")
    return os.path.normpath(value)


def _optional_url(value: Any) -> str | None:
    if value is None:
        return None
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:  # "http://[::1" and other malformed netlocs
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Bad("must be an http:// or https:// URL, or null")
    return value


def _password_hash(value: Any) -> str:
    if not passwords.is_password_hash(value):
        raise _Bad("must be a scrypt hash written by bolt (plain-text passwords are refused); "
                   "delete the key to generate a new password")
    return value


def _limits(value: Any) -> ResourceLimits:
    if not isinstance(value, dict):
        raise _Bad("must be an object with cpu_quota_us and memory_limit_bytes")
    unknown = set(value) - {"cpu_quota_us", "memory_limit_bytes", "pids_max"}
    if unknown:
        raise _Bad(f"unknown field(s) {sorted(unknown)}")
    try:
        from bolt.limits import validate_limits
        return validate_limits(value, require_all=("cpu_quota_us", "memory_limit_bytes"))
    except Exception as e:  # InvalidInput: keep its message
        raise _Bad(str(e)) from None


def _network(value: Any) -> str:
    try:
        net = ipaddress.IPv4Network(value)
    except (ValueError, TypeError):
        raise _Bad("must be an IPv4 network such as 10.213.0.0/16") from None
    if net.prefixlen > 28:
        raise _Bad("must be a /28 or larger network")
    return str(net)


def _optional_name(value: Any) -> str | None:
    if value is None:
        return None
    return _str(r"[a-z0-9][a-z0-9_-]{0,62}", "must be a name of a-z, 0-9, '-', '_', or null")(value)


def _host(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):  # ip_address() also takes integers: 1 would be 0.0.0.1
        raise _Bad("must be an IP address or null")
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        raise _Bad("must be an IP address or null") from None


def _packages(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(
            isinstance(p, str) and re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in value):
        raise _Bad("must be a list of Debian package names")
    return value


#: key -> (default, parser).  ``None`` defaults that depend on --data-dir are filled by :func:`load`.
SCHEMA: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "admin_user": ("admin", _str(r"[A-Za-z0-9_.@-]{1,64}", "must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '@', '-'")),
    "admin_password": (None, _password_hash),
    "base_image_dir": (None, _abs_path),
    "default_distro": ("debian:bookworm", _str(r"(debian|ubuntu):[a-z][a-z0-9-]{0,31}",
                                                'must be "debian:<suite>" or "ubuntu:<suite>"')),
    "allowed_ports": (DEFAULT_ALLOWED_PORTS, parse_port_range),
    "shell_port_range": (DEFAULT_SHELL_PORTS, parse_port_range),
    "default_resource_limits": ({"cpu_quota_us": 100000, "memory_limit_bytes": 536870912, "pids_max": 1024}, _limits),
    "shell_token_expiry": (3600, _int(10, 7 * 24 * 3600)),
    "update_url": (None, _optional_url),
    "image_variant": ("minbase", _str(r"minbase|buildd|fakechroot|-", "must be minbase, buildd, fakechroot or -")),
    "image_include": ([], _packages),
    "image_mirror": (None, _optional_url),
    "max_concurrent_builds": (2, _int(1, 16)),
    "sandbox_network": ("10.213.0.0/16", _network),
    "sandbox_outbound": (True, _bool),
    "shell_host": (None, _host),
    "shell_tls": (False, _bool),
    "max_shell_sessions": (500, _int(1, 100000)),
    "instance_name": ("bolt", _str(r"[a-z][a-z0-9]{0,6}", "must be 1-7 characters of a-z and 0-9, starting with a letter")),
    "cgroup_parent": (None, _optional_name),
    "max_shell_sessions_per_sandbox": (20, _int(1, 10000)),
}


@dataclass
class Config:
    """A validated configuration: ``values`` holds parsed values, ``raw`` what the file says."""

    path: str
    raw: dict[str, Any]
    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def credentials(self) -> passwords.Credentials:
        return passwords.Credentials(self.values["admin_user"], self.values["admin_password"])

    def with_changes(self, **changes: Any) -> "Config":
        """A new Config with raw values changed and re-validated (the caller then saves it)."""
        raw = dict(self.raw, **changes)
        return Config(self.path, raw, validate(raw, self.path))

    def save(self) -> None:
        """Write the file atomically, mode 0600, in a 0750 directory."""
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o750)
            os.chmod(directory, 0o750)  # makedirs' mode is masked by the umask
        text = json.dumps(self.raw, indent=4, sort_keys=True) + "\n"
        atomic_write(self.path, text.encode("utf-8"), mode=0o600)


def validate(raw: Any, path: str) -> dict[str, Any]:
    """Parse every key of ``raw``; raise ConfigError naming the file, the key and the problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the configuration must be a JSON object")
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(SCHEMA))})")
    values: dict[str, Any] = {}
    for key, (default, parse) in SCHEMA.items():
        if key not in raw:
            raise ConfigError(f"{path}: key {key!r} is missing")
        try:
            values[key] = parse(raw[key])
        except _Bad as e:
            raise ConfigError(f"{path}: key {key!r}: {e}") from None
    overlap = values["allowed_ports"] & values["shell_port_range"]
    if overlap:
        raise ConfigError(f"{path}: key 'allowed_ports' overlaps 'shell_port_range' (e.g. port {min(overlap)}); "
                          "a forward could take over a shell listener")
    return values


def load(path: str, data_dir: str, *, initial_password: str | None = None,
         cost: dict[str, int] | None = None) -> tuple[Config, str | None]:
    """Load the config, creating it (and filling missing keys) with defaults on first start.

    Returns the config and, when a password was generated, that password so the caller can log it
    once.  ``initial_password`` (BOLT_ADMIN_PASSWORD) is used when the file has no password yet.
    """
    raw: dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                raw = json.loads(f.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the configuration must be a JSON object")
    generated = None
    changed = False
    for key, (default, _) in SCHEMA.items():
        if key in raw:
            continue
        changed = True
        if key == "base_image_dir":
            raw[key] = os.path.join(data_dir, "base_images")
        elif key == "admin_password":
            if initial_password:
                problem = passwords.check_new_password(initial_password)
                if problem:
                    raise ConfigError(f"BOLT_ADMIN_PASSWORD: {problem.replace('admin_password', 'the password')}")
                password = initial_password
            else:
                password = generated = passwords.generate_password()
            raw[key] = passwords.hash_password(password, cost)
        else:
            raw[key] = default
    config = Config(path, raw, validate(raw, path))
    if changed:
        config.save()
    return config, generated
