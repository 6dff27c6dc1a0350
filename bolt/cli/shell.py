"""``bolt shell``: a small telnet client between the local terminal and a sandbox's shell port.

The server's side is bolt.shell.protocol: the first line is the one-shot token, and a token line
ending in CRLF makes this a telnet session.  The server then asks DO NAWS, DO TTYPE, WILL ECHO,
WILL SGA, DO SGA; :class:`TelnetClient` agrees to exactly those (WILL NAWS with the window size in
an SB NAWS, WILL TTYPE and, when asked with SB TTYPE SEND, SB TTYPE IS <$TERM>), refuses every other
option, removes telnet commands from what it passes to the terminal, and doubles 0xFF in what it
sends.  A bare CR typed on the terminal goes out as CR NUL (RFC 854), so the server hands the
sandbox's terminal exactly one Return.

:class:`Session` runs the select loop.  On a terminal it puts stdin in raw mode (so every key,
Ctrl-C included, reaches the sandbox and the sandbox's terminal does the echo), resends the window
size on every SIGWINCH, and restores the terminal however it ends: a finally block, an atexit hook,
and handlers that turn SIGTERM/SIGHUP/SIGINT/SIGQUIT into an orderly exit.  The escape character,
Ctrl-] by default as in telnet, closes the session at once (telnet's Ctrl-] then "quit" in one key).

When stdin is not a terminal it works line by line: input is sent as it comes, the sandbox's
terminal echoes it, and at the end of the input an end-of-file (Ctrl-D) is sent so the shell exits
and the session ends when the server closes it.  That end-of-file is sent once the sandbox has
been quiet for a moment, and again after each further quiet second: typed ahead while a program
runs, the sandbox's terminal would hand it to that program, or lose it when the shell's line editor
switches modes.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import select
import signal
import socket
import ssl
import struct
import termios
import time
import tty

from bolt.shell.telnet import (DO, DONT, ECHO, IAC, NAWS, SB, SE, SGA, TTYPE, TTYPE_IS, TTYPE_SEND, WILL, WONT,
                               TelnetParser, escape)

CTRL_D = b"\x04"
DEFAULT_ESCAPE = 0x1D  # Ctrl-]
#: How long to wait for the server's first answer to the token (its greeting, or an error line).
ANSWER_TIMEOUT = 30.0
#: Line mode, after the end of the input: quiet seconds before the first end-of-file, then between.
EOF_QUIET = (0.5, 1.0)
_MAX_BUFFERED = 256 * 1024


class ShellError(Exception):
    """The shell could not be opened; the message is the server's error line or the reason."""


def encode_input(data: bytes) -> bytes:
    """Keyboard bytes for the wire: 0xFF doubled, a CR not followed by LF sent as CR NUL."""
    out = bytearray()
    for i, byte in enumerate(data):
        if byte == IAC:
            out += b"\xff\xff"
        elif byte == 13 and (i + 1 >= len(data) or data[i + 1] != 10):
            out += b"\r\0"
        else:
            out.append(byte)
    return bytes(out)


def naws(rows: int, columns: int) -> bytes:
    """IAC SB NAWS <width:2> <height:2> IAC SE, with any 0xFF byte of the numbers doubled."""
    body = struct.pack(">HH", max(0, min(columns, 65535)), max(0, min(rows, 65535)))
    return bytes([IAC, SB, NAWS]) + escape(body) + bytes([IAC, SE])


def parse_escape_char(text: str) -> int | None:
    """'^]' -> 0x1d, '^X' -> 0x18, 'none' -> None, a single character -> itself."""
    if text.lower() == "none":
        return None
    if len(text) == 2 and text[0] == "^" and 0x3F <= ord(text[1].upper()) <= 0x5F:
        return ord(text[1].upper()) ^ 0x40
    if len(text) == 1 and ord(text) < 128:
        return ord(text)
    raise ValueError(f"escape character {text!r} must be ^X notation (e.g. ^]), one ASCII character, or none")


class TelnetClient:
    """The client half of the negotiation, pure: bytes in, (terminal bytes, bytes to send) out.

    The byte stream is split by the same :class:`~bolt.shell.telnet.TelnetParser` the server uses;
    what differs is the policy: which options to agree to, and what to answer.
    """

    def __init__(self, term: str, size: tuple[int, int] | None) -> None:
        self.term = term
        self.size = size  # (rows, columns), None when there is no terminal to measure
        self.will: set[int] = set()  # options we agreed to perform (NAWS, TTYPE, SGA)
        self.do: set[int] = set()  # options we asked the server to perform (ECHO, SGA)
        self._parser = TelnetParser()

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        text, commands = self._parser.feed(data)
        replies = b"".join(self._option(*command) if isinstance(command, tuple) else self._subnegotiation(command)
                           for command in commands)
        return text, replies

    def _option(self, command: int, option: int) -> bytes:
        # Answer only changes of state, so two agreeing sides never echo acknowledgements forever.
        if command == DO:
            if option in self.will:
                return b""
            if option == NAWS and self.size is not None:
                self.will.add(NAWS)
                return bytes([IAC, WILL, NAWS]) + naws(*self.size)
            if option in (TTYPE, SGA):
                self.will.add(option)
                return bytes([IAC, WILL, option])
            return bytes([IAC, WONT, option])
        if command == DONT:
            if option in self.will:
                self.will.discard(option)
                return bytes([IAC, WONT, option])
            return b""
        if command == WILL:
            if option in self.do:
                return b""
            if option in (ECHO, SGA):
                self.do.add(option)
                return bytes([IAC, DO, option])
            return bytes([IAC, DONT, option])
        # WONT
        if option in self.do:
            self.do.discard(option)
            return bytes([IAC, DONT, option])
        return b""

    def _subnegotiation(self, body: bytes) -> bytes:
        if body[:2] == bytes([TTYPE, TTYPE_SEND]) and TTYPE in self.will:
            name = self.term.encode("ascii", "replace")[:64]
            return bytes([IAC, SB, TTYPE, TTYPE_IS]) + escape(name) + bytes([IAC, SE])
        return b""

    def resize(self, rows: int, columns: int) -> bytes:
        """The SB NAWS to send for a new window size (nothing before NAWS was agreed)."""
        self.size = (rows, columns)
        return naws(rows, columns) if NAWS in self.will else b""


def terminal_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on ``fd``, or None."""
    try:
        rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, columns) if rows and columns else None


class Interrupted(BaseException):
    """A terminating signal arrived; unwinds the loop so the terminal is restored."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Session:
    """One shell session over a connected socket (plain TCP or TLS)."""

    def __init__(self, sock: socket.socket, token: str, *, stdin_fd: int = 0, stdout_fd: int = 1,
                 term: str | None = None, escape: int | None = DEFAULT_ESCAPE) -> None:
        self.sock = sock
        self.token = token
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.interactive = os.isatty(stdin_fd)
        size = terminal_size(stdin_fd) if self.interactive else None
        if size is None and os.isatty(stdout_fd):
            size = terminal_size(stdout_fd)
        if term is None:
            term = "dumb"
        self.codec = TelnetClient(term, size)
        self.escape = escape if self.interactive else None
        #: Why the session ended: "server" (it closed the connection), "escape", "input" (the
        #: local terminal went away) or "signal".
        self.ended_by = ""
        self._saved_attrs = None
        self._outbox = bytearray()
        self._last_sent = b"\n"

    # -- opening -------------------------------------------------------------------------------------

    def open(self) -> bytes:
        """Send the token and wait for the server's answer; returns the first bytes of the session.

        Raises ShellError with the server's line when the token is refused."""
        self.sock.settimeout(ANSWER_TIMEOUT)
        self.sock.sendall(self.token.encode("ascii") + b"\r\n")
        received = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if b"\xff" in received or len(received) > 4096:
                    return received
        except socket.timeout:
            raise ShellError(f"the shell server did not answer within {ANSWER_TIMEOUT:g} s") from None
        except OSError as e:
            raise ShellError(f"the shell connection failed: {e.strerror or e}") from None
        if received[:2] == b"\x15\x03" or not received:  # a TLS alert, or silence: a TLS port, likely
            raise ShellError("the shell server closed the connection without an answer; if the server "
                             "has shell_tls on, use `bolt shell --tls` (or `bolt remote add --shell-tls`)")
        line = received.decode("utf-8", "replace").strip()
        if line.startswith("error: "):
            line = line[len("error: "):]
        raise ShellError(line or "the shell server closed the connection without an answer")

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Open the session, pass bytes both ways until either side ends it; the exit status."""
        first = self.open()
        handlers: dict[int, object] = {}
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        previous_wakeup = None
        winch = [False]
        try:
            previous_wakeup = signal.set_wakeup_fd(wake_w)
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
                handlers[signum] = signal.signal(signum, self._interrupt)
            handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: winch.__setitem__(0, True))
            if self.interactive:
                self._raw()
            return self._loop(first, wake_r, winch)
        except Interrupted as e:
            self.ended_by = "signal"
            return 128 + e.signum
        finally:
            self._restore()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if previous_wakeup is not None:
                signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            try:
                self.sock.close()
            except OSError:
                pass

    def _interrupt(self, signum, frame) -> None:
        raise Interrupted(signum)

    def _raw(self) -> None:
        self._saved_attrs = termios.tcgetattr(self.stdin_fd)
        atexit.register(self._restore)
        tty.setraw(self.stdin_fd, termios.TCSADRAIN)

    def _restore(self) -> None:
        attrs, self._saved_attrs = self._saved_attrs, None
        if attrs is not None:
            try:
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, attrs)
            except termios.error:
                pass
            atexit.unregister(self._restore)

    def _loop(self, first: bytes, wake_r: int, winch: list[bool]) -> int:
        self.sock.setblocking(False)
        self._received(first)
        stdin_open = True
        eof_due: float | None = None  # line mode, input ended: when to send the next end-of-file
        while True:
            readers = [self.sock, wake_r]
            if stdin_open and len(self._outbox) < _MAX_BUFFERED:
                readers.append(self.stdin_fd)
            writers = [self.sock] if self._outbox else []
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
            timeout = 0 if pending else None
            if eof_due is not None:
                timeout = max(0.0, eof_due - time.monotonic()) if timeout is None else 0
            readable, writable, _ = select.select(readers, writers, [], timeout)
            if eof_due is not None and time.monotonic() >= eof_due and not readable:
                if self._last_sent not in (b"\r", b"\n", b"\0", CTRL_D):
                    self._send(b"\n")
                self._send(CTRL_D)
                self._last_sent = CTRL_D
                eof_due = time.monotonic() + EOF_QUIET[1]
            if wake_r in readable:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            if winch[0]:
                winch[0] = False
                size = terminal_size(self.stdin_fd if self.interactive else self.stdout_fd)
                if size is not None:
                    self._send(self.codec.resize(*size))
            if self.sock in readable or pending:
                if not self._read_socket():
                    self.ended_by = "server"
                    return 0
                if eof_due is not None:
                    eof_due = time.monotonic() + EOF_QUIET[1]
            if self.stdin_fd in readable:
                data = self._read_stdin()
                if data is None:  # end of input
                    stdin_open = False
                    if self.interactive:
                        self.ended_by = "input"  # the terminal went away
                        return 0
                    eof_due = time.monotonic() + EOF_QUIET[0]
                elif self.escape is not None and self.escape in data:
                    self._send(encode_input(data[:data.index(self.escape)]))
                    self._flush_blocking()
                    self.ended_by = "escape"
                    return 0
                elif data:
                    self._send(encode_input(data))
                    self._last_sent = data[-1:]
            if self._outbox and (self.sock in writable or not writers):
                if not self._write_socket():
                    self.ended_by = "server"
                    return 0

    def _read_socket(self) -> bool:
        """Read what is there; False once the server closed the connection."""
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                return False
            raise
        if not chunk:
            return False
        self._received(chunk)
        return True

    def _received(self, data: bytes) -> None:
        text, replies = self.codec.feed(data)
        if replies:
            self._send(replies)
        if text:
            self._write_all(self.stdout_fd, text)

    def _read_stdin(self) -> bytes | None:
        try:
            data = os.read(self.stdin_fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:  # the terminal hung up
                return None
            raise
        return data or None

    def _send(self, data: bytes) -> None:
        if data:
            self._outbox += data

    def _write_socket(self) -> bool:
        """Send what the socket takes now; False once the server is gone."""
        try:
            sent = self.sock.send(self._outbox)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (BrokenPipeError, ConnectionResetError):
            self._outbox.clear()
            return False
        del self._outbox[:sent]
        return True

    def _flush_blocking(self) -> None:
        if not self._outbox:
            return
        self.sock.settimeout(5)
        try:
            self.sock.sendall(bytes(self._outbox))
        except OSError:
            pass
        self._outbox.clear()

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                select.select([], [fd], [])
                continue
            view = view[written:]
