"""The shell connection: one token line, then bytes between the socket and a PTY in the sandbox.

Handshake: the client's first line (LF or CRLF) is the token.  A client that ends it with CRLF, or
sends telnet commands, is a telnet client: it gets option negotiation (NAWS for the window size,
TTYPE for TERM, WILL ECHO and SGA so keystrokes are echoed once, by the PTY).  A client that ends it
with a bare LF (nc, socat, scripts) gets plain bytes both ways, with no telnet escaping.

Decisions (token checks, session limits, opening the terminal) belong to the :class:`Gate` the
factory is given; this class only speaks the protocol.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from bolt.shell import telnet

MAX_TOKEN_LINE = 512
HANDSHAKE_TIMEOUT = 30.0
#: How long to wait for a telnet client's TTYPE/NAWS answers before starting the shell anyway.
NEGOTIATION_WAIT = 0.5
DEFAULT_TERM = "xterm"


class Gate(TypingProtocol):
    """What the protocol asks of the server."""

    def redeem(self, port: int, token: str, client: str) -> object:
        """The ticket for a right token; raises ShellRefused with the line to send otherwise."""

    def open(self, ticket: object, term: str, rows: int, columns: int, client: str) -> defer.Deferred:
        """Fire with a Terminal for the ticket's sandbox; fails with ShellRefused."""

    def closed(self, ticket: object, client: str, bytes_in: int, bytes_out: int) -> None:
        """The session ended."""


class ShellRefused(Exception):
    """Why a client gets no shell; the message is the one error line it is sent."""


class ShellProtocol(protocol.Protocol):
    log = Logger()

    def __init__(self, gate: Gate, port: int, clock) -> None:
        self.gate = gate
        self.port = port
        self.clock = clock
        self.state = "token"
        self.buffer = b""
        self.telnet = False
        self.codec = telnet.TelnetCodec()
        self.term = DEFAULT_TERM
        self.size = (24, 80)
        self.ticket = None
        self.terminal = None
        self.pending_input = b""
        self.bytes_in = 0
        self._timer = None
        self._negotiation = None
        self._answered: set[int] = set()

    @property
    def client(self) -> str:
        return getattr(self.transport.getPeer(), "host", "?")

    def connectionMade(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        self._timer = self.clock.callLater(HANDSHAKE_TIMEOUT, self._refuse, "error: no token received in time")

    # -- input -----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state == "token":
            self._token_bytes(data)
        elif self.state in ("negotiating", "opening"):
            self._telnet_or_raw(data, buffer_input=True)
        elif self.state == "session":
            self._telnet_or_raw(data, buffer_input=False)

    def _token_bytes(self, data: bytes) -> None:
        self.buffer += data
        if b"\xff" in self.buffer:  # IAC: only telnet clients send it
            self.telnet = True
        end = telnet.line_end(self.buffer) if self.telnet else self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_TOKEN_LINE:
                self._refuse("error: token line too long")
            return
        line, rest = self.buffer[:end], self.buffer[end + 1:]
        self.buffer = b""
        early: list[object] = []
        if self.telnet or line.endswith(b"\r"):
            self.telnet = True
            line, early = self.codec.feed(line)  # negotiation the client sent before its token
        token = line.rstrip(b"\r").strip().decode("ascii", "replace")
        try:
            self.ticket = self.gate.redeem(self.port, token, self.client)
        except ShellRefused as e:
            self._refuse(str(e))
            return
        self._cancel_timer()
        if self.telnet:
            self.state = "negotiating"
            self.transport.write(telnet.GREETING)
            if self.codec.replies:
                self.transport.write(bytes(self.codec.replies))
                self.codec.replies.clear()
            self._negotiation = self.clock.callLater(NEGOTIATION_WAIT, self._open)
            for event in early:
                self._event(event)
        else:
            self._open()
        if rest:
            self.dataReceived(rest)

    def _telnet_or_raw(self, data: bytes, buffer_input: bool) -> None:
        self.bytes_in += len(data)
        if self.telnet:
            data, events = self.codec.feed(data)
            if self.codec.replies:
                self.transport.write(bytes(self.codec.replies))
                self.codec.replies.clear()
            for event in events:
                self._event(event)
        if not data:
            return
        if buffer_input:
            self.pending_input += data[:65536 - len(self.pending_input)]
        elif self.terminal is not None:
            self.terminal.write(data)

    def _event(self, event: object) -> None:
        if isinstance(event, telnet.WindowSize):
            self.size = (event.rows, event.columns)
            self._answered.add(telnet.NAWS)
            if self.terminal is not None:
                self.terminal.resize(event.rows, event.columns)
        elif isinstance(event, telnet.TerminalType):
            self.term = event.name
            self._answered.add(telnet.TTYPE)
        elif isinstance(event, telnet.OptionAnswer) and event.command in (telnet.WONT, telnet.DONT):
            self._answered.add(event.option)
        if self.state == "negotiating" and {telnet.NAWS, telnet.TTYPE} <= self._answered:
            self._open()

    # -- the session -------------------------------------------------------------------------------

    def _open(self) -> None:
        if self.state not in ("token", "negotiating"):
            return
        if self._negotiation is not None and self._negotiation.active():
            self._negotiation.cancel()
        self.state = "opening"
        d = self.gate.open(self.ticket, self.term, self.size[0], self.size[1], self.client)
        d.addCallbacks(self._attached, self._open_failed)

    def _attached(self, terminal) -> None:
        if self.state != "opening":  # the client left meanwhile
            terminal.hangup()
            self.gate.closed(self.ticket, self.client, self.bytes_in, 0)
            return
        self.state = "session"
        self.terminal = terminal
        terminal.on_output = self._output
        terminal.on_close = self._terminal_closed
        # Flow control both ways: a slow client pauses reading the PTY, a busy PTY pauses the socket.
        self.transport.registerProducer(terminal, True)
        terminal.registerProducer(self.transport, True)
        terminal.start()
        if self.pending_input:
            terminal.write(self.pending_input)
            self.pending_input = b""

    def _open_failed(self, failure: Failure) -> None:
        message = str(failure.value) if failure.check(ShellRefused) else "error: the shell could not be started"
        if not failure.check(ShellRefused):
            self.log.failure("opening a shell failed", failure)
        self._refuse(message)

    def _output(self, data: bytes) -> None:
        self.transport.write(telnet.escape(data) if self.telnet else data)

    def _terminal_closed(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- endings -----------------------------------------------------------------------------------

    def _refuse(self, line: str) -> None:
        self._cancel_timer()
        self.state = "closed"
        self.transport.write(line.encode("utf-8", "replace") + b"\r\n")
        self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason=None) -> None:
        self._cancel_timer()
        if self._negotiation is not None and self._negotiation.active():
            self._negotiation.cancel()
        self.state = "closed"
        if self.terminal is not None:
            terminal, self.terminal = self.terminal, None
            terminal.on_close = lambda: None
            terminal.hangup()
            self.gate.closed(self.ticket, self.client, self.bytes_in, terminal.bytes_out)
        # In "opening", _attached hangs the terminal up (and reports the end) when it arrives.


class ShellFactory(protocol.Factory):
    """One listener's factory: every connection on the ticket's port speaks :class:`ShellProtocol`."""

    noisy = False

    def __init__(self, gate: Gate, port: int, clock) -> None:
        self.gate = gate
        self.port = port
        self.clock = clock

    def buildProtocol(self, addr) -> ShellProtocol:
        p = ShellProtocol(self.gate, self.port, self.clock)
        p.factory = self
        return p
