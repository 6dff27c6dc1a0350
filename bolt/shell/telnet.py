"""A small telnet codec (RFC 854/855) for the shell: options NAWS, TTYPE, ECHO and SGA.

Pure and incremental: :meth:`TelnetCodec.feed` takes bytes as they arrive and returns the plain data
for the PTY plus the events the protocol acts on (a window size, a terminal type, a refused option).
Only what a shell needs is implemented; every other option is refused, as RFC 855 asks.
"""

from __future__ import annotations

from dataclasses import dataclass

IAC, DONT, DO, WONT, WILL, SB, SE, NOP = 255, 254, 253, 252, 251, 250, 240, 241
ECHO, SGA, TTYPE, NAWS = 1, 3, 24, 31
TTYPE_IS, TTYPE_SEND = 0, 1

#: What the server asks for when a client turns out to speak telnet: the client's window size and
#: terminal type, and character-at-a-time mode with the server (the PTY) doing the echo.
GREETING = bytes([IAC, DO, NAWS, IAC, DO, TTYPE, IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, SGA])
ASK_TTYPE = bytes([IAC, SB, TTYPE, TTYPE_SEND, IAC, SE])

_MAX_SUBNEGOTIATION = 256


@dataclass(frozen=True)
class WindowSize:
    columns: int
    rows: int


@dataclass(frozen=True)
class TerminalType:
    name: str


@dataclass(frozen=True)
class OptionAnswer:
    """The client's answer to one of our requests: ``command`` is WILL/WONT/DO/DONT."""

    command: int
    option: int


def escape(data: bytes) -> bytes:
    """Output for a telnet client: a literal 0xFF byte is sent as IAC IAC."""
    return data.replace(b"\xff", b"\xff\xff")


def line_end(data: bytes) -> int:
    """Index of the first LF outside telnet commands in ``data``, or -1.

    A subnegotiation may carry 0x0A bytes (a window 10 rows high), which do not end a line.
    """
    i, n, in_sb = 0, len(data), False
    while i < n:
        byte = data[i]
        if byte == IAC:
            command = data[i + 1] if i + 1 < n else None
            if command in (WILL, WONT, DO, DONT):
                i += 3
                continue
            if command == SB:
                in_sb = True
            elif command == SE:
                in_sb = False
            i += 2  # also IAC IAC and one-byte commands
            continue
        if byte == 10 and not in_sb:
            return i
        i += 1
    return -1


class TelnetParser:
    """The byte-level state machine both ends of a shell session share (the server's
    :class:`TelnetCodec`, the ``bolt shell`` client): splits a stream into data and commands.

    :meth:`feed` is incremental (a command may arrive split over several reads) and returns the
    plain data, with IAC IAC as one 0xFF byte, and the commands in the order they came:
    ``(command, option)`` pairs for WILL/WONT/DO/DONT and ``bytes`` bodies of subnegotiations (IAC
    IAC inside one unescaped, at most 256 bytes kept).  Other commands (NOP, GA, AYT...) need no
    answer from a shell and are dropped.
    """

    def __init__(self) -> None:
        self._state = "data"
        self._command = 0
        self._sub = bytearray()
        #: True once the peer sent any telnet command: it speaks telnet.
        self.seen_command = False

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int] | bytes]]:
        out = bytearray()
        commands: list[tuple[int, int] | bytes] = []
        for byte in data:
            state = self._state
            if state == "data":
                if byte == IAC:
                    self._state = "iac"
                    self.seen_command = True
                else:
                    out.append(byte)
            elif state == "iac":
                if byte == IAC:
                    out.append(IAC)
                    self._state = "data"
                elif byte in (WILL, WONT, DO, DONT):
                    self._command = byte
                    self._state = "option"
                elif byte == SB:
                    self._sub.clear()
                    self._state = "sb"
                else:
                    self._state = "data"
            elif state == "option":
                self._state = "data"
                commands.append((self._command, byte))
            elif state == "sb":
                if byte == IAC:
                    self._state = "sb-iac"
                elif len(self._sub) < _MAX_SUBNEGOTIATION:
                    self._sub.append(byte)
            elif state == "sb-iac":
                if byte == SE:
                    self._state = "data"
                    commands.append(bytes(self._sub))
                else:
                    if len(self._sub) < _MAX_SUBNEGOTIATION:
                        self._sub.append(byte)  # IAC IAC inside SB is a literal 255
                    self._state = "sb"
        return bytes(out), commands


class TelnetCodec:
    """The server's side: data for the PTY and option events; refuses requests it does not know.

    ``replies`` collects bytes the codec wants sent back (refusals of unknown options); the caller
    drains it after each :meth:`feed`.
    """

    def __init__(self) -> None:
        self._parser = TelnetParser()
        self._after_cr = False
        self.replies = bytearray()
        self._accepted = {(DO, ECHO), (DO, SGA), (WILL, NAWS), (WILL, TTYPE), (WILL, SGA)}

    def feed(self, data: bytes) -> tuple[bytes, list[object]]:
        text, commands = self._parser.feed(data)
        events: list[object] = []
        for command in commands:
            if isinstance(command, tuple):
                self._option(*command, events)
            else:
                self._subnegotiation(command, events)
        return self._line_ends(text), events

    def _line_ends(self, text: bytes) -> bytes:
        """NVT end of line: CR LF or CR NUL from the client is one Return (CR) for the PTY."""
        out = bytearray()
        for byte in text:
            if self._after_cr and byte in (0, 10):
                self._after_cr = False
            else:
                self._after_cr = byte == 13
                out.append(byte)
        return bytes(out)

    def _option(self, command: int, option: int, events: list[object]) -> None:
        if (command, option) in self._accepted:
            events.append(OptionAnswer(command, option))
            if (command, option) == (WILL, TTYPE):
                self.replies += ASK_TTYPE
        elif command == WILL:
            self.replies += bytes([IAC, DONT, option])
        elif command == DO:
            self.replies += bytes([IAC, WONT, option])
        else:
            events.append(OptionAnswer(command, option))  # WONT/DONT: acknowledge by doing nothing

    @staticmethod
    def _subnegotiation(body: bytes, events: list[object]) -> None:
        if not body:
            return
        if body[0] == NAWS and len(body) == 5:
            columns, rows = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big")
            if 0 < columns <= 10000 and 0 < rows <= 10000:
                events.append(WindowSize(columns, rows))
        elif body[0] == TTYPE and len(body) >= 2 and body[1] == TTYPE_IS:
            name = body[2:].decode("ascii", "replace").lower()
            if name and all(c.isalnum() or c in "-_.+" for c in name) and len(name) <= 64:
                events.append(TerminalType(name))
