"""Shell tickets: one-shot tokens, each bound to one sandbox and one listening port.

The API asks for a ticket; the shell face opens a listener on the ticket's port and, when a client
sends the right token, redeems it.  A ticket ends (its listener closed, its port back in the pool)
when it is redeemed, when it expires, or when its sandbox stops or is deleted.

Tokens are 256 random bits from :mod:`secrets`.  Only their SHA-256 digest is kept, and a presented
token is compared with :func:`hmac.compare_digest`, so neither memory nor timing gives one away.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Callable

from twisted.logger import Logger

from bolt.errors import Unavailable

#: Opens a listener for a ticket on a port and returns a callable that closes it; raises OSError
#: (or CannotListenError) when the port cannot be used.
Listen = Callable[[int, "Ticket"], Callable[[], object]]

_random = secrets.SystemRandom()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(eq=False)
class Ticket:
    project: str
    sandbox: str
    port: int
    expires_at: float
    digest: bytes = field(repr=False)
    ended: bool = False
    _close: Callable[[], object] | None = field(default=None, repr=False)
    _timer: object = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.project, self.sandbox


class ShellTickets:
    log = Logger()

    def __init__(self, clock, ports: frozenset[int], expiry: float, *, max_sessions: int = 500,
                 max_per_sandbox: int = 20) -> None:
        self.clock = clock
        self.ports = sorted(ports)
        self.expiry = expiry
        self.max_sessions = max_sessions
        self.max_per_sandbox = max_per_sandbox
        self._by_port: dict[int, Ticket] = {}
        self._sessions: dict[tuple[str, str], int] = {}

    # -- live sessions ---------------------------------------------------------------------------

    def session_open(self, key: tuple[str, str]) -> None:
        """Count a new session, or raise Unavailable when a limit is reached."""
        if sum(self._sessions.values()) >= self.max_sessions:
            raise Unavailable(f"the server holds its maximum of {self.max_sessions} shell sessions")
        if self._sessions.get(key, 0) >= self.max_per_sandbox:
            raise Unavailable(f"sandbox {key[0]}/{key[1]} has its maximum of {self.max_per_sandbox} shell sessions")
        self._sessions[key] = self._sessions.get(key, 0) + 1

    def session_close(self, key: tuple[str, str]) -> None:
        left = self._sessions.get(key, 0) - 1
        if left > 0:
            self._sessions[key] = left
        else:
            self._sessions.pop(key, None)

    def sessions(self, key: tuple[str, str] | None = None) -> int:
        return sum(self._sessions.values()) if key is None else self._sessions.get(key, 0)

    def issue(self, project: str, sandbox: str, listen: Listen) -> tuple[str, Ticket]:
        """A new token and its ticket, with a listener open on a free port of the range."""
        token = secrets.token_urlsafe(32)
        ticket = Ticket(project, sandbox, 0, self.clock.seconds() + self.expiry, _digest(token))
        for port in self._candidates():
            try:
                ticket._close = listen(port, ticket)
            except Exception as e:  # taken by another program, most likely: try the next one
                self.log.debug("shell port {port} unusable: {error}", port=port, error=e)
                continue
            ticket.port = port
            self._by_port[port] = ticket
            ticket._timer = self.clock.callLater(self.expiry, self._expire, ticket)
            self.log.info("shell ticket for {project}/{sandbox} on port {port}", project=project,
                          sandbox=sandbox, port=port)
            return token, ticket
        raise Unavailable(f"no free port left in shell_port_range ({len(self.ports)} ports, "
                          f"{len(self._by_port)} waiting for a client); try again later")

    def _candidates(self):
        free = len(self.ports) - len(self._by_port)
        if free <= 0:
            return
        for _ in range(min(32, free)):  # random first: a port number says nothing about a ticket
            port = _random.choice(self.ports)
            if port not in self._by_port:
                yield port
        for port in self.ports:
            if port not in self._by_port:
                yield port

    def redeem(self, port: int, token: str) -> Ticket | None:
        """The ticket if ``token`` is right for the ticket on ``port``; it ends there (single use)."""
        ticket = self._by_port.get(port)
        if ticket is None or ticket.ended:
            return None
        if not hmac.compare_digest(_digest(token), ticket.digest):
            return None
        if self.clock.seconds() >= ticket.expires_at:
            self._end(ticket, "expired")
            return None
        self._end(ticket, "used")
        return ticket

    def revoke(self, project: str, sandbox: str | None = None) -> int:
        """End every ticket of a sandbox (or of a whole project); returns how many."""
        doomed = [t for t in self._by_port.values()
                  if t.project == project and (sandbox is None or t.sandbox == sandbox)]
        for ticket in doomed:
            self._end(ticket, "revoked")
        return len(doomed)

    def pending(self) -> list[Ticket]:
        return list(self._by_port.values())

    def close_all(self) -> None:
        for ticket in list(self._by_port.values()):
            self._end(ticket, "server stopping")

    def _expire(self, ticket: Ticket) -> None:
        ticket._timer = None
        self._end(ticket, "expired")

    def _end(self, ticket: Ticket, why: str) -> None:
        if ticket.ended:
            return
        ticket.ended = True
        if ticket._timer is not None and ticket._timer.active():
            ticket._timer.cancel()
        self._by_port.pop(ticket.port, None)
        if ticket._close is not None:
            try:
                ticket._close()
            except Exception:
                self.log.failure("closing the shell listener on port {port} failed", port=ticket.port)
        self.log.info("shell ticket on port {port} ended: {why}", port=ticket.port, why=why)
