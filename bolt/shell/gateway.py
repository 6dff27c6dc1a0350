"""The shell face's glue: listeners for tickets, and the decisions the protocol asks for.

The core issues tickets and calls :meth:`ShellGateway.listen` to open a listener on the ticket's
port (TCP, or TLS with the API's certificate when ``shell_tls`` is on).  Connections on it speak
:class:`~bolt.shell.protocol.ShellProtocol`, whose questions land here: is this token right (with
failed attempts throttled per address, like API logins), and open me a terminal.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bolt.errors import BoltError
from bolt.shell.protocol import ShellFactory, ShellRefused
from bolt.throttle import Throttle


class ShellGateway:
    log = Logger()

    def __init__(self, manager: Any, reactor, host: str, tls_context=None) -> None:
        self.manager = manager
        self.reactor = reactor
        self.host = host
        self.tls_context = tls_context
        self.throttle = Throttle(reactor)

    def listen(self, port: int, ticket: Any) -> Callable[[], object]:
        factory = ShellFactory(self, port, self.reactor)
        if self.tls_context is not None:
            listening = self.reactor.listenSSL(port, factory, self.tls_context, interface=self.host)
        else:
            listening = self.reactor.listenTCP(port, factory, interface=self.host)
        return listening.stopListening

    def redeem(self, port: int, token: str, client: str) -> Any:
        if self.throttle.retry_after(client) > 0:
            raise ShellRefused("error: too many failed attempts from your address; try again later")
        ticket = self.manager.redeem_shell(port, token)
        if ticket is None:
            self.throttle.failed(client)
            self.log.warn("refused shell token from {client} on port {port}", client=client, port=port)
            raise ShellRefused("error: invalid, expired or already used token")
        self.throttle.succeeded(client)
        return ticket

    def open(self, ticket: Any, term: str, rows: int, columns: int, client: str) -> defer.Deferred:
        try:
            d = self.manager.attach_shell(ticket, term, rows, columns, client)
        except BoltError as e:
            return defer.fail(ShellRefused(f"error: {e}"))

        def refused(failure):
            failure.trap(BoltError)
            raise ShellRefused(f"error: {failure.value}")

        return d.addErrback(refused)

    def closed(self, ticket: Any, client: str, bytes_in: int, bytes_out: int) -> None:
        self.manager.shell_closed(ticket, client, bytes_in, bytes_out)
