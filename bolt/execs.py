"""The rules of an exec request (pure): what a client may ask to run in a sandbox, and how.

``{"command": [argv...] | "string for /bin/sh -c", "timeout"?: seconds (default 60, at most 3600),
"stdin"?: text, "env"?: {NAME: value}, "cwd"?: absolute path inside the sandbox}``
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from bolt.errors import InvalidInput

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0
MAX_ARGS = 4096
MAX_TEXT = 1024 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
FIELDS = ("command", "timeout", "stdin", "env", "cwd")


@dataclass(frozen=True)
class ExecRequest:
    command: list[str] | str
    timeout: float = DEFAULT_TIMEOUT
    stdin: bytes | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or "\0" in value or len(value) > MAX_TEXT:
        raise InvalidInput(f"{what} must be a string without NUL bytes, at most {MAX_TEXT} characters")
    return value


def parse_exec(body: Any) -> ExecRequest:
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; accepted: {', '.join(FIELDS)}")
    if "command" not in body:
        raise InvalidInput('field "command" is required: a list of arguments or a string for /bin/sh -c')
    command = body["command"]
    if isinstance(command, list):
        if not command or len(command) > MAX_ARGS:
            raise InvalidInput(f"command must have between 1 and {MAX_ARGS} arguments")
        command = [_text(arg, "every argument of command") for arg in command]
        if not command[0]:
            raise InvalidInput("command[0] must not be empty")
    else:
        command = _text(command, "command")
        if not command.strip():
            raise InvalidInput("command must not be empty")
    timeout = body.get("timeout", DEFAULT_TIMEOUT)
    # Compare before math.isfinite: JSON integers may be too large for a float (OverflowError).
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT \
            or not math.isfinite(timeout):
        raise InvalidInput(f"timeout must be a number of seconds greater than 0 and at most {MAX_TIMEOUT:g}")
    stdin = body.get("stdin")
    if stdin is not None:
        stdin = _text(stdin, "stdin").encode("utf-8", "surrogatepass") if isinstance(stdin, str) else _text(stdin, "stdin")
    env = body.get("env")
    if env is not None:
        if not isinstance(env, dict) or len(env) > 1024:
            raise InvalidInput("env must be an object of at most 1024 NAME: value strings")
        for key, value in env.items():
            if _ENV_NAME.fullmatch(key) is None:
                raise InvalidInput(f"env name {key!r:.40} must match [A-Za-z_][A-Za-z0-9_]*")
            _text(value, f"env value of {key}")
    cwd = body.get("cwd")
    if cwd is not None:
        cwd = _text(cwd, "cwd")
        if not cwd.startswith("/") or len(cwd) > 4096:
            raise InvalidInput("cwd must be an absolute path inside the sandbox")
    return ExecRequest(command, float(timeout), stdin, env, cwd)
