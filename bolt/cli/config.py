"""The client's configuration: the remotes it knows, in one JSON file.

Where: ``$BOLT_CONFIG`` if set (tests), else ``$XDG_CONFIG_HOME/bolt/config.json``, else
``~/.config/bolt/config.json``.  The file is written atomically (temp file, fsync, rename) with mode
0600, in a directory bolt creates with mode 0700.

What: for each remote its URL, the user, the password, and the server certificate pinned when it
was added (PEM and SHA-256 fingerprint).  The password is stored, like docker's config.json stores
registry credentials and lxc its client certificate: readable by the user alone, so scripts and
shells run without a prompt.  ``BOLT_PASSWORD`` in the environment overrides it for one command.

    {"default": "prod",
     "remotes": {"prod": {"url": "https://bolt.example:5000", "user": "admin", "password": "...",
                          "certificate": "-----BEGIN CERTIFICATE-----...", "fingerprint": "AA:BB:...",
                          "shell_tls": false}}}
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class ConfigFileError(Exception):
    """The configuration file cannot be read or written, or names something wrong."""


@dataclass
class Remote:
    name: str
    url: str
    user: str
    password: str | None
    certificate: str
    fingerprint: str
    shell_tls: bool = False

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["name"]
        return data

    @classmethod
    def from_json(cls, name: str, data: Any, path: str) -> "Remote":
        if not isinstance(data, dict):
            raise ConfigFileError(f"{path}: remote {name!r} must be an object")
        try:
            url = normalize_url(data["url"])
            return cls(name, url, str(data.get("user") or "admin"),
                       data.get("password") if isinstance(data.get("password"), str) else None,
                       str(data["certificate"]), normalize_fingerprint(str(data["fingerprint"])),
                       bool(data.get("shell_tls", False)))
        except KeyError as e:
            raise ConfigFileError(f"{path}: remote {name!r} has no {e.args[0]!r}; add it again with "
                                  f"`bolt remote add {name} URL`") from None
        except ValueError as e:
            raise ConfigFileError(f"{path}: remote {name!r}: {e}") from None


def normalize_url(url: Any) -> str:
    """'https://host:port' from 'https://host:port/', 'host:port' or 'https://host'; refuses http://."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the URL must be https://HOST[:PORT]")
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError(f"the URL must start with https:// (the API is only served over TLS), not {parts.scheme}://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the URL {url!r} has an invalid port") from None
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment \
            or parts.path not in ("", "/"):
        raise ValueError(f"the URL {url!r} must be https://HOST[:PORT] with nothing after it")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}" + (f":{port}" if port else "")


def normalize_fingerprint(text: str) -> str:
    """'AA:BB:...' (upper case, colons) from any spelling of a SHA-256 hex digest."""
    digits = re.sub(r"[\s:]", "", text.strip())
    if digits.lower().startswith("sha256"):
        digits = digits[6:].lstrip("=:")
    if re.fullmatch(r"[0-9A-Fa-f]{64}", digits) is None:
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")
    digits = digits.upper()
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def default_path(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("BOLT_CONFIG"):
        return env["BOLT_CONFIG"]
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is invalid and ignored
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "bolt", "config.json")


class ConfigFile:
    """The file's content: ``remotes`` by name and the ``default`` remote's name."""

    def __init__(self, path: str, remotes: dict[str, Remote] | None = None, default: str | None = None,
                 warnings: list[str] | None = None) -> None:
        self.path = path
        self.remotes = remotes or {}
        self.default = default
        self.warnings = warnings or []

    @classmethod
    def load(cls, path: str | None = None) -> "ConfigFile":
        path = path or default_path()
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                raw = f.read()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise ConfigFileError(f"{path}: {e.strerror}") from None
        warnings = []
        if stat.S_IMODE(mode) & 0o077:
            warnings.append(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}) and holds "
                            "passwords; bolt writes it 0600 on its next change, or run chmod 600")
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigFileError(f"{path}: not valid JSON ({e}); fix or remove the file") from None
        if not isinstance(data, dict) or not isinstance(data.get("remotes", {}), dict):
            raise ConfigFileError(f'{path}: must be a JSON object with "remotes": {{NAME: {{...}}}}')
        remotes = {name: Remote.from_json(name, value, path) for name, value in data.get("remotes", {}).items()}
        default = data.get("default")
        if default is not None and default not in remotes:
            default = None
        return cls(path, remotes, default, warnings)

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default,
                "remotes": {name: r.to_json() for name, r in sorted(self.remotes.items())}}

    def save(self) -> None:
        """Write atomically: mode 0600, in a 0700 directory (created when missing)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)  # makedirs' mode is masked by the umask
        elif os.path.basename(directory) == "bolt":
            # Our own directory (~/.config/bolt): keep it private even if someone widened it.
            info = os.stat(directory)
            if stat.S_IMODE(info.st_mode) != 0o700 and info.st_uid == os.getuid():
                os.chmod(directory, 0o700)
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        fd, temp = tempfile.mkstemp(prefix=".config.json.", dir=directory)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.warnings = []

    # -- remotes -----------------------------------------------------------------------------------

    def choose(self, name: str | None) -> Remote:
        """The remote called ``name``, or the default one; ConfigFileError says what to do otherwise."""
        if name:
            try:
                return self.remotes[name]
            except KeyError:
                known = ", ".join(sorted(self.remotes)) or "none"
                raise ConfigFileError(f"no remote called {name!r} (known: {known}); "
                                      f"add it with `bolt remote add {name} URL`") from None
        if self.default:
            return self.remotes[self.default]
        if len(self.remotes) == 1:
            return next(iter(self.remotes.values()))
        if not self.remotes:
            raise ConfigFileError("no remote configured; add one with `bolt remote add NAME https://HOST:PORT`")
        raise ConfigFileError(f"no default remote; pick one with `bolt remote use NAME` or --remote NAME "
                              f"(known: {', '.join(sorted(self.remotes))})")

    def add(self, remote: Remote) -> None:
        if REMOTE_NAME.fullmatch(remote.name) is None:
            raise ConfigFileError(f"invalid remote name {remote.name!r}: 1-63 characters of letters, digits, "
                                  "'_', '.', '-', starting with a letter or digit")
        self.remotes[remote.name] = remote
        if self.default is None:
            self.default = remote.name

    def remove(self, name: str) -> Remote:
        remote = self.choose(name)
        del self.remotes[name]
        if self.default == name:
            self.default = None
        return remote
