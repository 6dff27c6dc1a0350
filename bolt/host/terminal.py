"""Interactive terminals inside a sandbox: a PTY from the sandbox's own devpts, driven by the reactor.

``bolt-sandbox enter --pty-fd 5`` opens the pair inside the sandbox (see the helper's source) and sends
the master back over a unix socket; :func:`open_terminal` receives it and wraps it in a
:class:`Terminal`, a file descriptor on the reactor with flow control both ways:

* output is read only while the consumer wants it (``pauseProducing`` stops reading the master, so a
  ``yes`` inside fills the PTY buffer and blocks instead of filling the server's memory);
* input is written through the reactor's buffered writer.

Closing the master hangs the terminal up: the kernel sends SIGHUP to the session's foreground group,
which is what a dropped connection should do to a shell.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios
from typing import Callable, Mapping, Sequence

from twisted.internet import abstract, defer, error, protocol
from twisted.python.failure import Failure

from bolt.host.process import Spawner
from bolt.host.runtime import (ENV_FD, STATUS_FD, encode_environment, enter_argv, exec_environment,
                               parse_status)

PTY_FD = 5
READ_SIZE = 65536


class TerminalFailed(Exception):
    """The terminal could not be opened; the message says why (``gone`` when the sandbox is not running)."""

    def __init__(self, message: str, kind: str = "setup") -> None:
        super().__init__(message)
        self.kind = kind


class Terminal(abstract.FileDescriptor):
    """The master side of a sandbox PTY on the reactor.

    ``on_output(bytes)`` receives what the programs print; ``on_close()`` runs once when the terminal
    is gone (the shell exited, or :meth:`hangup`).
    """

    def __init__(self, fd: int, helper: "_HelperProtocol", reactor) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.helper = helper
        self.on_output: Callable[[bytes], None] = lambda data: None
        self.on_close: Callable[[], None] = lambda: None
        self.bytes_out = 0
        self.connected = 1
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def start(self) -> None:
        self.startReading()

    def doRead(self):
        # A PTY master hands out at most one line-discipline buffer (4 KiB) per read.  Reading on
        # while more is there, up to READ_SIZE, passes bulk output on in larger pieces: one socket
        # send (one TCP segment with TCP_NODELAY) per up to 64 KiB instead of per 4 KiB.
        # The end (EIO once every slave descriptor is closed: the shell exited) is reported by the
        # next call, after what was read before it has been passed on.
        chunks: list[bytes] = []
        size = 0
        while size < READ_SIZE:
            try:
                data = os.read(self.fd, READ_SIZE - size)
            except OSError as e:
                if chunks or e.errno in (errno.EAGAIN, errno.EINTR):
                    break
                return error.ConnectionDone()
            if not data:
                if chunks:
                    break
                return error.ConnectionDone()
            chunks.append(data)
            size += len(data)
        if chunks:
            self.bytes_out += size
            self.on_output(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        return None

    def writeSomeData(self, data: bytes):
        try:
            return os.write(self.fd, data)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return 0
            return error.ConnectionLost()

    def resize(self, rows: int, columns: int) -> None:
        """TIOCSWINSZ: the kernel sends SIGWINCH to the foreground group, full-screen programs redraw."""
        if self.fd >= 0:
            fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def hangup(self) -> None:
        """Close the master now (SIGHUP to the shell's session) and tell the helper too.

        Input the PTY has not taken yet is dropped: ``loseConnection`` would wait for it to drain,
        which a busy or dead shell never does, and the master (and the session) would stay open.
        """
        self.helper.signal("HUP")
        if self.connected and not self.disconnected:
            self.connectionLost(Failure(error.ConnectionDone("terminal hung up")))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.helper.signal("HUP")
        callback, self.on_close = self.on_close, lambda: None
        callback()

    def window_size(self) -> tuple[int, int]:
        rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, columns


class _HelperProtocol(protocol.ProcessProtocol):
    """Feeds the helper its environment, collects its error report, notes when it ends."""

    def __init__(self, env_blob: bytes) -> None:
        self.env_blob = env_blob
        self.status = b""
        self.stderr = b""
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.writeToChild(ENV_FD, self.env_blob)
        self.transport.closeChildFD(ENV_FD)
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == STATUS_FD:
            self.status = (self.status + data)[-4096:]
        elif fd == 2:
            self.stderr = (self.stderr + data)[-4096:]

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, AttributeError, OSError):
            pass

    def failure(self) -> TerminalFailed:
        report = parse_status(self.status)
        if report is not None:
            return TerminalFailed(report[1], report[0])
        text = self.stderr.decode("utf-8", "replace").strip() or "the sandbox helper exited"
        return TerminalFailed(text)


class _MasterReceiver(abstract.FileDescriptor):
    """Reads the one message carrying the master descriptor from the helper's socket."""

    def __init__(self, sock: socket.socket, reactor, received: defer.Deferred) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.received = received
        self.connected = 1

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self):
        try:
            _, fds, _, _ = socket.recv_fds(self.sock, 1, 1)
        except BlockingIOError:
            return None
        except OSError as e:
            return error.ConnectionLost(str(e))
        if not self.received.called:
            if fds:
                self.received.callback(fds[0])
            else:
                self.received.errback(TerminalFailed("the helper closed the socket without a terminal"))
        for extra in fds[1:]:
            os.close(extra)
        return error.ConnectionDone()

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.sock.close()
        if not self.received.called:
            self.received.errback(TerminalFailed("the helper ended before handing over a terminal"))


def open_terminal(reactor, spawner: Spawner, binary: str, pid: int, command: Sequence[str], *,
                  cgroup_procs: Sequence[str], env: Mapping[str, str] | None, start_time: int | None,
                  rows: int = 24, columns: int = 80, cwd: str | None = None) -> defer.Deferred[Terminal]:
    """Start ``command`` on a new terminal inside the sandbox of ``pid``; fire with its :class:`Terminal`.

    The helper is started by ``spawner`` (perhaps a turn or two later); cancelling before then
    means it never starts.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    argv = enter_argv(binary, pid, command, cgroup_procs=cgroup_procs, cwd=cwd, start_time=start_time)
    dash = argv.index("--")
    argv[dash:dash] = ["--pty-fd", str(PTY_FD), "--winsize", f"{int(rows)},{int(columns)}"]
    helper = _HelperProtocol(encode_environment(exec_environment(env)))
    started = spawner.spawn(helper, binary, argv, env={},
                            childFDs={0: "w", 1: "r", 2: "r", ENV_FD: "w", STATUS_FD: "r", PTY_FD: theirs.fileno()})

    def not_started(failure: Failure):
        theirs.close()
        ours.close()
        if failure.check(defer.CancelledError):
            return failure
        return Failure(TerminalFailed(f"could not start {binary}: {failure.getErrorMessage()}"))

    def spawned(_) -> defer.Deferred[Terminal]:
        theirs.close()  # the helper has its own copy
        received: defer.Deferred[int] = defer.Deferred()
        receiver = _MasterReceiver(ours, reactor, received)
        receiver.startReading()

        def ended_first(_):
            if not received.called:
                receiver.loseConnection()

        helper.ended.addBoth(ended_first)

        def wrap(fd: int) -> Terminal:
            return Terminal(fd, helper, reactor)

        def failed(failure: Failure):
            if failure.check(TerminalFailed):
                # The helper's own report says more than "socket closed"; wait for it to end.
                d = defer.Deferred()
                helper.ended.addBoth(lambda _: d.errback(helper.failure()))
                helper.signal("KILL")
                return d
            return failure

        return received.addCallbacks(wrap, failed)

    return started.addCallbacks(spawned, not_started)


__all__ = ["Terminal", "TerminalFailed", "open_terminal", "PTY_FD"]
