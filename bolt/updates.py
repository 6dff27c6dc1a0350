"""The update check: fetch a small JSON document naming the latest version and compare.

The document is either {"version": "X.Y.Z"} or PyPI's {"info": {"version": "X.Y.Z"}}.  Versions are
compared as tuples of integers, so 1.10.0 is newer than 1.9.0.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import defer
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from bolt import __version__
from bolt.errors import UpstreamFailed

MAX_BODY = 1024 * 1024
_VERSION = re.compile(r"v?(\d{1,6}(?:\.\d{1,6}){0,3})")


def parse_version(text: Any) -> tuple[int, ...]:
    """(1, 10, 0) from "1.10.0"; trailing zeros dropped so 1.0 == 1.0.0. Raises ValueError."""
    if not isinstance(text, str) or (m := _VERSION.fullmatch(text.strip())) is None:
        raise ValueError(f"not a version: {text!r:.60}")
    parts = [int(p) for p in m.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def latest_from_document(body: bytes) -> str:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UpstreamFailed(f"update document is not JSON: {e}") from None
    version = None
    if isinstance(doc, dict):
        version = doc.get("version")
        if version is None and isinstance(doc.get("info"), dict):
            version = doc["info"].get("version")
    try:
        parse_version(version)
    except ValueError:
        raise UpstreamFailed('update document has no "version" (or "info": {"version"}) of the form X.Y.Z') from None
    return version.strip()


def compare(latest: str, current: str = __version__) -> dict[str, Any]:
    return {"update_available": parse_version(latest) > parse_version(current),
            "latest_version": latest, "current_version": current}


class UpdateChecker:
    def __init__(self, url: str | None, reactor=None, timeout: float = 10.0, agent=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.reactor = reactor
        self.timeout = timeout
        self.agent = agent or Agent(reactor, connectTimeout=timeout)

    @defer.inlineCallbacks
    def check(self):
        if not self.url:
            return {"update_available": False, "latest_version": None, "current_version": __version__,
                    "reason": "no update_url is configured"}
        timed_out: list[bool] = []

        def on_timeout(result, timeout):
            timed_out.append(True)
            return result

        try:
            d = self.agent.request(b"GET", self.url.encode("ascii"),
                                   Headers({b"User-Agent": [f"bolt/{__version__}".encode()],
                                            b"Accept": [b"application/json"]}))
            d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=on_timeout)
            response = yield d
            if response.code != 200:
                raise UpstreamFailed(f"update server answered HTTP {response.code}")
            if response.length is not UNKNOWN_LENGTH and response.length > MAX_BODY:
                raise UpstreamFailed("update document is too large")
            body = readBody(response)
            body.addTimeout(self.timeout, self.reactor, onTimeoutCancel=on_timeout)
            data = yield body
        except UpstreamFailed:
            raise
        except Exception as e:
            # A timeout cancels the request; the Agent then reports ResponseNeverReceived or
            # ConnectingCancelledError rather than a TimeoutError, so the flag says what happened.
            if timed_out or isinstance(e, defer.TimeoutError):
                raise UpstreamFailed(f"update server did not answer within {self.timeout:g} s") from None
            raise UpstreamFailed(f"update check failed: {e.__class__.__name__}: {e}") from None
        if len(data) > MAX_BODY:
            raise UpstreamFailed("update document is too large")
        return compare(latest_from_document(data))
