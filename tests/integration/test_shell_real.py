"""The TCP shell for real: a real ``twistd -n bolt``, real sandboxes, and real clients on loopback --
a Python socket, the stock ``telnet`` driven on a pseudo-terminal, ``socat``, ``nc``, ``openssl
s_client`` -- and the host's own view (/proc, cgroups) of what the server did.

Starting a server and a sandbox costs a few seconds, so each class shares one server (and one
project) between its tests: the first test starts it, the last one (or, when only some tests run,
the end of the process) deletes the project and cleans the server up.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import glob
import os
import re
import secrets
import select
import signal
import socket
import ssl
import struct
import subprocess
import termios
import threading
import time

import psutil
from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.integration.server import RealServer
from tests.integration.support import cached_image_root, ensure_test_image, require_root, require_tools

PROMPT_TIMEOUT = 20.0
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------
# Clients and host probes
# ---------------------------------------------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection before what we waited for arrived."""


class RawClient:
    """A plain TCP (or TLS) shell client over the standard library's sockets."""

    def __init__(self, host: str, port: int, *, source: str | None = None, tls: ssl.SSLContext | None = None,
                 timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def read_until(self, needle: bytes, timeout: float = PROMPT_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not received in {timeout}s; got {self.buffer[-2000:]!r}")
            if not self._recv(deadline):
                raise Closed(f"connection closed before {needle!r}; got {self.buffer[-2000:]!r}")
        end = self.buffer.index(needle) + len(needle)
        seen, self.buffer = self.buffer[:end], self.buffer[end:]
        return seen

    def read_to_eof(self, timeout: float = PROMPT_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.eof:
            if time.monotonic() > deadline:
                raise AssertionError(f"connection still open after {timeout}s; got {self.buffer[-2000:]!r}")
            self._recv(deadline)
        seen, self.buffer = self.buffer, b""
        return seen

    def run(self, command: str, timeout: float = PROMPT_TIMEOUT) -> str:
        """Type ``command``; return what it printed, found between two markers the echo cannot contain."""
        mark = secrets.token_hex(4)
        self.send(f"echo B-{mark}-$((1+1)); {command}; echo E-{mark}-$((6*7))\n".encode())
        seen = self.read_until(f"E-{mark}-42".encode(), timeout).decode(errors="replace")
        return plain(seen.split(f"B-{mark}-2", 1)[1].rsplit(f"E-{mark}-42", 1)[0])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def plain(text: str) -> str:
    """Terminal output as plain lines: no escape sequences (bracketed paste...), no carriage returns."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
    return "\n".join(line for line in text.split("\n") if line.strip()).strip()


def connect_refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def sandbox_pids(server: RealServer, project: str, sandbox: str) -> set[int]:
    """Host pids in the sandbox's cgroup (v1: the pids hierarchy; v2: the unified tree)."""
    pids: set[int] = set()
    patterns = [f"/sys/fs/cgroup/pids/{server.cgroup_parent}/{project}/{sandbox}/cgroup.procs",
                f"/sys/fs/cgroup/{server.cgroup_parent}/{project}/{sandbox}/cgroup.procs"]
    for pattern in patterns:
        for path in glob.glob(pattern):
            with open(path) as f:
                pids.update(int(line) for line in f if line.strip())
    return pids


def proc_stat(pid: int) -> dict:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return {"comm": comm, "state": fields[0], "ppid": int(fields[1]), "pgrp": int(fields[2]),
            "session": int(fields[3]), "tty_nr": int(fields[4]), "tpgid": int(fields[5])}


def ns_pid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def pids_running(server, project, sandbox, argv: list[str]) -> list[int]:
    return [p for p in sandbox_pids(server, project, sandbox) if cmdline(p) == argv]


_SYS_PIDFD_GETFD = 438


def server_tcp_nodelay(server_pid: int, server_port: int, client_port: int) -> int:
    """TCP_NODELAY of the server's end of one loopback connection (borrowed with pidfd_getfd)."""
    inode = None
    with open(f"/proc/{server_pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, remote = parts[1], parts[2]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                inode = parts[9]
    if inode is None:
        raise AssertionError(f"no server socket for port {server_port} <- {client_port}")
    target = f"socket:[{inode}]"
    fd = next(int(n) for n in os.listdir(f"/proc/{server_pid}/fd")
              if os.readlink(f"/proc/{server_pid}/fd/{n}") == target)
    pidfd = os.pidfd_open(server_pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mine = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if mine < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
    finally:
        os.close(pidfd)
    with socket.socket(fileno=mine) as borrowed:
        return borrowed.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def listening_addresses(port: int) -> list[str]:
    """The IPv4 addresses something listens on at ``port`` (from /proc/net/tcp, state 0A)."""
    found = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            address, hexport = parts[1].split(":")
            if parts[3] == "0A" and int(hexport, 16) == port:
                found.append(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


def leftovers(server: RealServer) -> list[str]:
    """What a cleaned-up server left on the host: mounts, cgroups, processes (and so listeners)."""
    left = []
    with open("/proc/self/mounts") as f:
        left += [f"mount {line.split()[1]}" for line in f if line.split()[1].startswith(server.root)]
    left += [f"cgroup {path}" for path in glob.glob(f"/sys/fs/cgroup/*/{server.cgroup_parent}")
             + glob.glob(f"/sys/fs/cgroup/{server.cgroup_parent}")]
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if server.cgroup_parent in line or server.root in line:
            left.append(f"process {proc.info['pid']}: {line[:200]}")
    # A listener cannot outlive the process that holds it; with none of those left (the server,
    # helpers), no API or shell listener is left either.
    return left


class PtyProgram:
    """A program (telnet) on a fresh pseudo-terminal that it holds as its controlling terminal."""

    def __init__(self, argv: list[str], *, rows: int, columns: int, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        # setsid -c: a session of its own with this pty as controlling terminal (no preexec_fn,
        # which is unsafe in a process with threads).  Not a group leader, so setsid does not fork
        # and the pid is the program's.
        self.process = subprocess.Popen(["setsid", "-c", *argv], stdin=slave, stdout=slave, stderr=slave,
                                        env=env, close_fds=True)
        os.close(slave)
        self.output = b""
        self.cursor = 0

    def read_until(self, needle: bytes, timeout: float = PROMPT_TIMEOUT) -> bytes:
        """What the terminal showed up to and including ``needle`` (since the last read_until)."""
        deadline = time.monotonic() + timeout
        while needle not in self.output[self.cursor:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen in {timeout}s; got {self.output[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the program exited and closed the terminal
                    data = b""
                if not data:
                    raise Closed(f"terminal closed before {needle!r}; got {self.output[-2000:]!r}")
                self.output += data
        end = self.output.index(needle, self.cursor) + len(needle)
        seen, self.cursor = self.output[self.cursor:end], end
        return seen

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def resize(self, rows: int, columns: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        os.kill(self.process.pid, signal.SIGWINCH)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        try:
            os.close(self.master)
        except OSError:
            pass


class Piped:
    """A client program (socat, nc, openssl) with pipes; stdin stays open until :meth:`finish`.

    Closing stdin early would make socat shut its sending side down, which the server (rightly)
    takes for the client hanging up.
    """

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.output = b""
        self.errors = b""
        self._lock = threading.Lock()
        self._readers = [threading.Thread(target=self._pump, args=(self.process.stdout, "output"), daemon=True),
                         threading.Thread(target=self._pump, args=(self.process.stderr, "errors"), daemon=True)]
        for t in self._readers:
            t.start()

    def _pump(self, stream, attribute) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self._lock:
                setattr(self, attribute, getattr(self, attribute) + chunk)

    def send(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def wait_output(self, needle: bytes, timeout: float = PROMPT_TIMEOUT) -> bytes:
        wait_for(lambda: needle in self.output or self.process.poll() is not None, timeout,
                 what=f"{needle!r} from {self.process.args[0]}")
        time.sleep(0.05)
        if needle not in self.output:
            raise AssertionError(f"{self.process.args[0]} ended without {needle!r}: out={self.output[-2000:]!r} "
                                 f"err={self.errors[-2000:]!r}")
        return self.output

    def finish(self, timeout: float = PROMPT_TIMEOUT) -> int:
        """Wait for the program to end by itself (the server closed the connection), then close stdin."""
        try:
            code = self.process.wait(timeout)
        finally:
            self.close()
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for t in self._readers:
            t.join(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


# ---------------------------------------------------------------------------------------------------
# One server per class
# ---------------------------------------------------------------------------------------------------


class ServerTestCase(unittest.TestCase):
    """Starts the class's server at its first test and cleans it up after its last one."""

    timeout = 900  # the first test may have to build the cached image
    config: dict = {}
    sandboxes: tuple[str, ...] = ("box",)
    shell_host = "127.0.0.1"
    tools: tuple[str, ...] = ()

    server: RealServer | None = None
    issued_tokens: list[str]
    _left = 0

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "debootstrap", "mount", "umount", "setsid", *self.tools)
        yield ensure_test_image(reactor)
        cls = type(self)
        if cls.server is None:
            cls._start()
        self.server = cls.server
        self.addCleanup(cls._one_done)

    @classmethod
    def _start(cls) -> None:
        config = {"base_image_dir": cached_image_root(), "cgroup_parent": f"bolt-t5e11{secrets.token_hex(3)}",
                  **cls.config}
        server = RealServer(config=config)
        cls.server = server
        cls.issued_tokens = []
        cls._left = len([name for name in dir(cls) if name.startswith("test_")])
        atexit.register(cls._cleanup)
        server.start()
        code, body = server.api("POST", "/api/projects", {"name": "proj"})
        assert code == 201, body
        for name in cls.sandboxes:
            code, body = server.api("POST", "/api/projects/proj/sandboxes", {"name": name})
            assert code == 201, body

    @classmethod
    def _one_done(cls) -> None:
        cls._left -= 1
        if cls._left <= 0:
            cls._cleanup()

    @classmethod
    def _cleanup(cls) -> None:
        server, cls.server = cls.server, None
        if server is None:
            return
        try:
            if server.process and server.process.poll() is None:
                code, body = server.api("DELETE", "/api/projects/proj?force=1", timeout=120)
                assert code == 200, body
        finally:
            server.cleanup()
        left = leftovers(server)
        assert not left, f"the shell tests left behind: {left}"

    # -- helpers -----------------------------------------------------------------------------------

    def ticket(self, sandbox: str = "box") -> dict:
        code, body = self.server.api("POST", f"/api/projects/proj/sandboxes/{sandbox}/shell")
        self.assertEqual(code, 200, body)
        type(self).issued_tokens.append(body["token"])
        return body

    def client(self, ticket: dict, **kwargs) -> RawClient:
        client = RawClient(self.shell_host, ticket["port"], **kwargs)
        self.addCleanup(client.close)
        return client

    def shell(self, sandbox: str = "box", **kwargs) -> RawClient:
        """A raw-mode session at its first prompt."""
        ticket = self.ticket(sandbox)
        client = self.client(ticket, **kwargs)
        client.send(ticket["token"].encode() + b"\n")
        client.read_until(b"# ")
        return client

    def exec(self, sandbox: str, command: str) -> dict:
        code, body = self.server.api("POST", f"/api/projects/proj/sandboxes/{sandbox}/exec", {"command": command})
        self.assertEqual(code, 200, body)
        return body


# ---------------------------------------------------------------------------------------------------
# Plain TCP shells
# ---------------------------------------------------------------------------------------------------


class ShellSessions(ServerTestCase):
    sandboxes = ("box", "stopme", "delme", "other")
    tools = ("telnet", "socat", "nc")

    def test_raw_python_client_gets_a_login_shell_in_the_sandbox(self):
        ticket = self.ticket()
        self.assertEqual(set(ticket), {"port", "token", "expires_at", "expires_in"})
        self.assertIn(ticket["port"], range(20001, 25001))
        self.assertGreater(ticket["expires_in"], 3500)
        self.assertEqual(listening_addresses(ticket["port"]), ["127.0.0.1"])  # the API's --host
        client = self.client(ticket)
        client.send(ticket["token"].encode() + b"\n")
        self.assertEqual(client.run("hostname").strip(), "box")
        self.assertRegex(client.run("tty").strip(), r"^/dev/pts/\d+$")
        self.assertEqual(client.run("echo $TERM").strip(), "xterm")
        self.assertEqual(client.run("echo $HOME").strip(), "/root")
        self.assertIn("/usr/bin", client.run("echo $PATH").strip().split(":"))
        self.assertEqual(client.run("id -u").strip(), "0")
        self.assertEqual(client.run("shopt -q login_shell && echo login-bash").strip(), "login-bash")
        inner = int(client.run("echo $$").strip())
        size = client.run("stty size").strip()
        self.assertEqual(size, "24 80")

        # The host's view: that bash is in the sandbox's cgroup and namespaces, leads a session of
        # its own, and has the PTY as its controlling terminal.
        _, sandbox = self.server.api("GET", "/api/projects/proj/sandboxes/box")
        pid1 = sandbox["pid"]
        shells = [p for p in sandbox_pids(self.server, "proj", "box")
                  if proc_stat(p)["comm"] == "bash" and ns_pid(p)[-1] == inner]
        self.assertEqual(len(shells), 1, "the shell is not in the sandbox's cgroup")
        host_pid = shells[0]
        for ns in ("pid", "mnt", "net", "uts", "ipc", "cgroup"):
            self.assertEqual(os.readlink(f"/proc/{host_pid}/ns/{ns}"), os.readlink(f"/proc/{pid1}/ns/{ns}"), ns)
        stat = proc_stat(host_pid)
        self.assertEqual(stat["session"], host_pid)  # a new session, led by the shell
        self.assertNotEqual(stat["tty_nr"], 0)
        self.assertNotEqual(stat["session"], proc_stat(pid1)["session"])

        client.send(b"exit\n")
        client.read_to_eof(10)
        wait_for(lambda: not os.path.exists(f"/proc/{host_pid}") or proc_stat(host_pid)["state"] == "Z",
                 what="the shell to end")

    def test_token_with_crlf_from_a_script_is_a_telnet_session(self):
        ticket = self.ticket()
        client = self.client(ticket)
        client.send(ticket["token"].encode() + b"\r\n")
        greeting = client.read_until(b"\xff\xfd\x03")  # ... IAC DO SGA ends the greeting
        self.assertIn(b"\xff\xfd\x1f", greeting)  # DO NAWS
        self.assertIn(b"\xff\xfd\x18", greeting)  # DO TTYPE
        self.assertIn(b"\xff\xfb\x01", greeting)  # WILL ECHO
        client.send(b"\xff\xfb\x1f\xff\xfa\x1f\x00\x64\x00\x1e\xff\xf0")  # WILL NAWS, 100x30
        client.send(b"\xff\xfb\x18")  # WILL TTYPE
        client.read_until(b"\xff\xfa\x18\x01\xff\xf0")  # SB TTYPE SEND
        client.send(b"\xff\xfa\x18\x00ANSI\xff\xf0")
        client.read_until(b"# ")
        client.send(b"echo $TERM; stty size\r\n")
        out = client.read_until(b"30 100")
        self.assertIn(b"ansi\r\n", out)
        client.send(b"\xff\xfa\x1f\x00\x50\x00\x19\xff\xf0stty size\r\n")  # resize to 80x25 then ask
        client.read_until(b"25 80")
        client.send(b"printf '\\377\\n'\r\n")
        client.read_until(b"\xff\xff\r\n")  # a 0xFF byte of output arrives escaped
        client.send(b"exit\r\n")
        client.read_to_eof(10)

    def test_a_client_that_negotiates_before_its_token(self):
        # As PuTTY does: options first; a 10-row window puts a 0x0A byte before the token's end.
        ticket = self.ticket()
        client = self.client(ticket)
        client.send(b"\xff\xfb\x1f\xff\xfa\x1f\x00\x50\x00\x0a\xff\xf0\xff\xfb\x18")  # 80x10, WILL TTYPE
        client.send(ticket["token"].encode() + b"\r\n")
        client.read_until(b"\xff\xfa\x18\x01\xff\xf0")  # SB TTYPE SEND
        client.send(b"\xff\xfa\x18\x00VT100\xff\xf0")
        client.read_until(b"# ")
        client.send(b"echo T=$TERM S=$(stty size)\r\n")
        client.read_until(b"T=vt100 S=10 80\r\n")
        client.send(b"exit\r\n")
        client.read_to_eof(10)

    def test_telnet_on_a_terminal(self):
        ticket = self.ticket()
        telnet = PtyProgram(["telnet", "127.0.0.1", str(ticket["port"])], rows=30, columns=100,
                            env={"TERM": "vt220", "PATH": "/usr/bin:/bin", "HOME": "/tmp"})
        self.addCleanup(telnet.close)
        telnet.read_until(b"Escape character is")
        telnet.type(ticket["token"].encode() + b"\r")
        telnet.read_until(b"# ")
        telnet.type(b"stty size\r")
        telnet.read_until(b"30 100\r\n")
        telnet.read_until(b"# ")
        telnet.resize(40, 120)
        wait_for(lambda: self._stty_size(telnet) == "40 120", timeout=10, interval=0.2,
                 what="the new window size inside")
        telnet.type(b"echo $TERM\r")
        telnet.read_until(b"vt220\r\n")
        telnet.read_until(b"# ")
        typed = b"echo once-$((40+2))"
        telnet.type(typed + b"\r")
        out = telnet.read_until(b"once-42") + telnet.read_until(b"# ")
        self.assertEqual(out.count(typed), 1, out)  # echoed by the PTY only, not by telnet as well
        self.assertEqual(out.count(b"once-42"), 1, out)
        telnet.type(b"exit\r")
        telnet.read_until(b"Connection closed by foreign host")
        self.assertEqual(telnet.process.wait(10), 0)

    @staticmethod
    def _stty_size(telnet: PtyProgram) -> str:
        mark = secrets.token_hex(3)
        telnet.type(f"echo S-{mark}-$((1+1)) $(stty size) E-{mark}-$((2+2))\r".encode())
        out = telnet.read_until(f"E-{mark}-4".encode()).decode(errors="replace")
        telnet.read_until(b"# ")
        found = re.findall(rf"S-{mark}-2 (\d+ \d+) E-{mark}-4", out)
        return found[-1] if found else ""

    def test_socat_raw_client(self):
        ticket = self.ticket()
        socat = Piped(["socat", "-", f"TCP:127.0.0.1:{ticket['port']}"])
        self.addCleanup(socat.close)
        socat.send(ticket["token"].encode() + b"\necho hi-$((6*7))\nexit\n")
        socat.wait_output(b"hi-42")
        self.assertEqual(socat.finish(), 0)  # the shell exited: the server closed, socat ended
        self.assertNotIn(b"\xff", socat.output)  # raw mode: no telnet negotiation

    def test_nc_raw_client(self):
        ticket = self.ticket()
        nc = Piped(["nc", "127.0.0.1", str(ticket["port"])])
        self.addCleanup(nc.close)
        nc.send(ticket["token"].encode() + b"\n")
        nc.send(b"echo nc-$((6*7)) $(tty)\n")
        out = nc.wait_output(b"nc-42")
        self.assertRegex(out, rb"nc-42 /dev/pts/\d+")
        nc.send(b"exit\n")
        nc.wait_output(b"logout")
        # nc (OpenBSD) keeps running while its stdin is open; its socket shows the server's close.
        wait_for(lambda: [c.status for c in psutil.Process(nc.process.pid).net_connections("tcp")] == ["CLOSE_WAIT"],
                 what="the server to close the connection")
        nc.process.stdin.close()
        self.assertEqual(nc.finish(), 0)

    def test_wrong_token_gets_one_error_line_then_eof(self):
        ticket = self.ticket()
        client = self.client(ticket, source="127.0.0.5")
        client.send(b"not-the-token\n")
        out = client.read_to_eof(10)
        self.assertEqual(out, b"error: invalid, expired or already used token\r\n")
        # The ticket is still good for its rightful owner.
        right = self.client(ticket)
        right.send(ticket["token"].encode() + b"\n")
        self.assertEqual(right.run("echo ok").strip(), "ok")

    def test_used_token_is_refused_and_the_listener_closes(self):
        ticket = self.ticket()
        first = self.client(ticket)
        second = self.client(ticket)  # connected before the token was used
        first.send(ticket["token"].encode() + b"\n")
        first.read_until(b"# ")
        wait_for(lambda: connect_refused("127.0.0.1", ticket["port"]), what="the listener to close")
        second.send(ticket["token"].encode() + b"\n")
        self.assertEqual(second.read_to_eof(10), b"error: invalid, expired or already used token\r\n")
        self.assertEqual(first.run("echo still-$((1+1))").strip(), "still-2")

    def test_two_clients_racing_one_token(self):
        ticket = self.ticket()
        results: list = [None, None]
        barrier = threading.Barrier(2)

        def race(i: int) -> None:
            try:
                client = RawClient("127.0.0.1", ticket["port"])
            except ConnectionRefusedError:
                results[i] = "refused"
                return
            try:
                barrier.wait(5)
                client.send(ticket["token"].encode() + b"\necho won-$((20+1))\n")
                try:
                    client.read_until(b"won-21", 15)
                    results[i] = "shell"
                    client.send(b"exit\n")
                    client.read_to_eof(10)
                except Closed:
                    results[i] = client.buffer
            finally:
                client.close()

        threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(results.count("shell"), 1, results)
        loser = [r for r in results if r != "shell"][0]
        self.assertIn(loser, ("refused", b"error: invalid, expired or already used token\r\n"))

    def test_failed_attempts_are_throttled_per_address(self):
        ticket = self.ticket()
        for _ in range(10):
            c = RawClient("127.0.0.1", ticket["port"], source="127.0.0.9")
            c.send(b"guess\n")
            self.assertEqual(c.read_to_eof(10), b"error: invalid, expired or already used token\r\n")
            c.close()
        c = RawClient("127.0.0.1", ticket["port"], source="127.0.0.9")
        c.send(ticket["token"].encode() + b"\n")  # the right token, but from a blocked address
        self.assertIn(b"too many failed attempts", c.read_to_eof(10))
        c.close()
        other = self.client(ticket, source="127.0.0.10")
        other.send(ticket["token"].encode() + b"\n")
        self.assertEqual(other.run("echo fine").strip(), "fine")

    def test_stop_revokes_pending_tokens_and_closes_open_sessions(self):
        pending = self.ticket("stopme")
        session = self.shell("stopme")
        code, body = self.server.api("POST", "/api/projects/proj/sandboxes/stopme/stop")
        self.assertEqual(code, 200, body)
        self.assertTrue(connect_refused("127.0.0.1", pending["port"]))
        session.read_to_eof(15)  # the server closed the session
        code, body = self.server.api("POST", "/api/projects/proj/sandboxes/stopme/shell")
        self.assertEqual(code, 409, body)
        self.assertIn("not running", body["error"])

    def test_delete_revokes_pending_tokens(self):
        pending = self.ticket("delme")
        code, body = self.server.api("DELETE", "/api/projects/proj/sandboxes/delme")
        self.assertEqual(code, 200, body)
        self.assertTrue(connect_refused("127.0.0.1", pending["port"]))

    def test_closing_the_socket_hangs_up_the_shell(self):
        client = self.shell("other")
        client.send(b"sleep 987\n")
        sleepers = wait_for(lambda: pids_running(self.server, "proj", "other", ["sleep", "987"]),
                            what="sleep to start")
        bash = proc_stat(sleepers[0])["ppid"]
        self.assertEqual(proc_stat(sleepers[0])["tpgid"], proc_stat(sleepers[0])["pgrp"])  # in the foreground
        client.close()
        probe = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done | grep -c '^sleep 987' || true"
        wait_for(lambda: self.exec("other", probe)["stdout"].strip() == "0", timeout=10, interval=0.2,
                 what="sleep 987 to be hung up")
        wait_for(lambda: not os.path.exists(f"/proc/{bash}") or proc_stat(bash)["state"] == "Z",
                 what="the shell to end")

    def test_a_fast_producer_does_not_fill_the_servers_memory(self):
        client = self.shell()
        process = psutil.Process(self.server.process.pid)
        client.send(b"yes 0123456789abcdefghijklmnopqrstuvwxyz\n")
        before = process.memory_info().rss
        time.sleep(3)  # not reading: the socket fills, then the PTY, then `yes` blocks
        after = process.memory_info().rss
        self.assertLess(after - before, 20 * MIB, f"server RSS grew from {before} to {after}")
        argv = ["yes", "0123456789abcdefghijklmnopqrstuvwxyz"]
        yes = pids_running(self.server, "proj", "box", argv)
        self.assertEqual(len(yes), 1)
        states = []
        for _ in range(5):
            states.append(proc_stat(yes[0])["state"])
            time.sleep(0.1)
        self.assertIn("S", states, "yes never blocks: nothing stops it")
        self.assertLess(process.cpu_percent(0.5), 50.0)  # the server is idle, not spinning
        # Reading again lets the stream flow, and it is still the right stream.
        received = 0
        client.sock.settimeout(5)
        while received < 8 * MIB:
            data = client.sock.recv(1 << 20)
            self.assertTrue(data)
            received += len(data)
        self.assertIn(b"0123456789abcdefghijklmnopqrstuvwxyz\r\n", data)
        self.assertLess(process.memory_info().rss - before, 20 * MIB)
        client.close()
        wait_for(lambda: not pids_running(self.server, "proj", "box", argv),
                 what="yes to be hung up")

    def test_a_flood_of_input_is_not_buffered_without_bound_and_a_hangup_drops_it(self):
        process = psutil.Process(self.server.process.pid)
        fds_before = process.num_fds()
        client = self.shell("other")
        # A job that ignores SIGHUP keeps the terminal open after the shell is gone, so only the
        # server closing its end ends the PTY.
        client.send(b"(trap '' HUP; exec sleep 655) &\n")
        client.send(b"sleep 654\n")  # the shell does not read its terminal while sleep runs
        wait_for(lambda: pids_running(self.server, "proj", "other", ["sleep", "654"]), what="sleep to start")
        rss_before = process.memory_info().rss
        client.sock.setblocking(False)
        sent, chunk, deadline = 0, b"x" * 65536, time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += client.sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
        self.assertGreater(sent, 1 * MIB)
        self.assertLess(sent, 64 * MIB, "the server kept reading input nobody consumes")
        self.assertLess(process.memory_info().rss - rss_before, 20 * MIB)
        client.close()  # with input still waiting for the PTY
        wait_for(lambda: not pids_running(self.server, "proj", "other", ["sleep", "654"]),
                 what="sleep 654 to be hung up")
        # Everything of the session is gone from the server too: socket, PTY master, helper pipes.
        wait_for(lambda: process.num_fds() <= fds_before, what=f"the server's descriptors back to {fds_before}")

    def test_tcp_nodelay_is_on(self):
        ticket = self.ticket()
        client = self.client(ticket)
        client.send(ticket["token"].encode() + b"\n")
        client.read_until(b"# ")
        local_port = client.sock.getsockname()[1]
        self.assertNotEqual(server_tcp_nodelay(self.server.process.pid, ticket["port"], local_port), 0)

    def test_sessions_are_logged_without_content_or_tokens(self):
        marker = "do-not-log-" + secrets.token_hex(6)
        client = self.shell()
        client.run(f"echo {marker}")
        client.send(b"exit\n")
        client.read_to_eof(10)
        pattern = re.compile(r"shell session closed in proj/box for 127\.0\.0\.1: (\d+) bytes in, (\d+) bytes out")
        log = wait_for(lambda: pattern.search(self.server.log()) and self.server.log(), what="the closing log line")
        self.assertIn("shell session opened in proj/box for 127.0.0.1", log)
        self.assertTrue(any(int(i) > 0 and int(o) > 0 for i, o in pattern.findall(log)))
        self.assertNotIn(marker, log)
        for token in type(self).issued_tokens:
            self.assertNotIn(token, log)


# ---------------------------------------------------------------------------------------------------
# TLS shells
# ---------------------------------------------------------------------------------------------------


class TLSShellSessions(ServerTestCase):
    config = {"shell_tls": True}
    tools = ("openssl", "socat")

    def test_openssl_s_client(self):
        ticket = self.ticket()
        s_client = Piped(["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{ticket['port']}"])
        self.addCleanup(s_client.close)
        s_client.send(ticket["token"].encode() + b"\n")
        s_client.send(b"echo tls-$((40+2)) $(hostname)\n")
        self.assertIn(b"tls-42 box", s_client.wait_output(b"tls-42 box"))
        s_client.send(b"exit\n")
        s_client.finish()

    def test_socat_openssl(self):
        ticket = self.ticket()
        socat = Piped(["socat", "-", f"OPENSSL:127.0.0.1:{ticket['port']},verify=0"])
        self.addCleanup(socat.close)
        socat.send(ticket["token"].encode() + b"\necho via-socat-$((6*7))\nexit\n")
        socat.wait_output(b"via-socat-42")
        self.assertEqual(socat.finish(), 0)

    def test_a_fast_producer_over_tls_does_not_fill_the_servers_memory(self):
        ticket = self.ticket()
        context = ssl.create_default_context(cafile=self.server.cert_path)
        client = self.client(ticket, tls=context)
        client.send(ticket["token"].encode() + b"\n")
        client.read_until(b"# ")
        process = psutil.Process(self.server.process.pid)
        client.send(b"yes tls-0123456789abcdefghijklmnopqrstuvwxyz\n")
        before = process.memory_info().rss
        time.sleep(3)
        after = process.memory_info().rss
        self.assertLess(after - before, 20 * MIB, f"server RSS grew from {before} to {after}")
        self.assertLess(process.cpu_percent(0.5), 50.0)
        received = 0
        client.sock.settimeout(5)
        while received < 4 * MIB:
            data = client.sock.recv(1 << 20)
            self.assertTrue(data)
            received += len(data)
        self.assertIn(b"tls-0123456789abcdefghijklmnopqrstuvwxyz\r\n", data)
        client.close()
        yes = ["yes", "tls-0123456789abcdefghijklmnopqrstuvwxyz"]
        wait_for(lambda: not pids_running(self.server, "proj", "box", yes), what="yes to be hung up")

    def test_a_flood_of_input_over_tls_is_not_buffered_without_bound(self):
        ticket = self.ticket()
        client = self.client(ticket, tls=ssl.create_default_context(cafile=self.server.cert_path))
        client.send(ticket["token"].encode() + b"\n")
        client.read_until(b"# ")
        client.send(b"sleep 653\n")
        wait_for(lambda: pids_running(self.server, "proj", "box", ["sleep", "653"]), what="sleep to start")
        process = psutil.Process(self.server.process.pid)
        before = process.memory_info().rss
        client.sock.setblocking(False)
        sent, chunk, deadline = 0, b"x" * 16384, time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sent += client.sock.send(chunk)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                time.sleep(0.05)
        self.assertGreater(sent, 1 * MIB)
        self.assertLess(sent, 64 * MIB, "the server kept reading input nobody consumes")
        self.assertLess(process.memory_info().rss - before, 20 * MIB)
        client.close()
        wait_for(lambda: not pids_running(self.server, "proj", "box", ["sleep", "653"]), what="sleep to be hung up")

    def test_tcp_nodelay_is_on_under_tls(self):
        ticket = self.ticket()
        client = self.client(ticket, tls=ssl.create_default_context(cafile=self.server.cert_path))
        client.send(ticket["token"].encode() + b"\n")
        client.read_until(b"# ")
        local_port = client.sock.getsockname()[1]
        self.assertNotEqual(server_tcp_nodelay(self.server.process.pid, ticket["port"], local_port), 0)

    def test_python_client_sees_the_apis_certificate(self):
        ticket = self.ticket()
        context = ssl.create_default_context(cafile=self.server.cert_path)
        client = self.client(ticket, tls=context)
        with open(self.server.cert_path) as f:
            api_cert = ssl.PEM_cert_to_DER_cert(f.read())
        self.assertEqual(client.sock.getpeercert(binary_form=True), api_cert)
        client.send(ticket["token"].encode() + b"\n")
        self.assertEqual(client.run("echo $TERM").strip(), "xterm")
        client.send(b"exit\n")
        client.read_to_eof(10)

    def test_a_plaintext_client_gets_nothing_and_does_not_use_the_token(self):
        ticket = self.ticket()
        plain = self.client(ticket)
        plain.send(ticket["token"].encode() + b"\necho leaked\n")
        out = plain.read_to_eof(15)
        self.assertNotIn(b"leaked", out)
        self.assertNotIn(b"# ", out)
        context = ssl.create_default_context(cafile=self.server.cert_path)
        client = self.client(ticket, tls=context)
        client.send(ticket["token"].encode() + b"\n")
        self.assertEqual(client.run("echo still-good").strip(), "still-good")


# ---------------------------------------------------------------------------------------------------
# Limits: sessions, ports, expiry, the shell_host setting
# ---------------------------------------------------------------------------------------------------


def _free_port_pair(host: str) -> int:
    for _ in range(200):
        base = 42000 + secrets.randbelow(6000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, base))
                b.bind((host, base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no free pair of ports")


class ShellLimits(ServerTestCase):
    shell_host = "127.0.0.3"
    _base = _free_port_pair("127.0.0.3")
    config = {"shell_host": "127.0.0.3", "max_shell_sessions_per_sandbox": 1, "max_shell_sessions": 2,
              "shell_token_expiry": 10, "shell_port_range": f"{_base}-{_base + 1}"}
    sandboxes = ("a", "b", "c", "d")

    def test_listeners_bind_to_shell_host(self):
        ticket = self.ticket("d")
        self.assertIn(ticket["port"], (self._base, self._base + 1))
        self.assertEqual(listening_addresses(ticket["port"]), ["127.0.0.3"])
        self.assertTrue(connect_refused("127.0.0.1", ticket["port"]))
        client = self.client(ticket)
        client.send(ticket["token"].encode() + b"\n")
        self.assertEqual(client.run("hostname").strip(), "d")
        client.send(b"exit\n")
        client.read_to_eof(10)

    def test_a_port_taken_by_another_program_is_skipped(self):
        squatter = socket.socket()
        self.addCleanup(squatter.close)
        squatter.bind(("127.0.0.3", self._base))
        squatter.listen()
        ticket = self.ticket("d")
        self.assertEqual(ticket["port"], self._base + 1)
        code, body = self.server.api("POST", "/api/projects/proj/sandboxes/d/shell")
        self.assertEqual(code, 503, body)  # the only other port is busy
        client = self.client(ticket)
        client.send(ticket["token"].encode() + b"\n")
        self.assertEqual(client.run("hostname").strip(), "d")
        client.send(b"exit\n")
        client.read_to_eof(10)

    def test_port_exhaustion_and_expiry(self):
        first, second = self.ticket("d"), self.ticket("d")
        self.assertEqual({first["port"], second["port"]}, {self._base, self._base + 1})
        self.assertEqual(first["expires_in"], 10)
        code, body = self.server.api("POST", "/api/projects/proj/sandboxes/d/shell")
        self.assertEqual(code, 503, body)
        self.assertIn("shell_port_range", body["error"])
        wait_for(lambda: connect_refused("127.0.0.3", first["port"]) and connect_refused("127.0.0.3", second["port"]),
                 timeout=15, interval=0.25, what="the tickets to expire")
        again = self.ticket("d")  # the ports are back in the pool
        client = self.client(again)
        client.send(again["token"].encode() + b"\n")
        client.read_until(b"# ")
        client.send(b"exit\n")
        client.read_to_eof(10)

    def test_session_limits(self):
        a1 = self.shell("a")
        ticket = self.ticket("a")
        a2 = self.client(ticket)
        a2.send(ticket["token"].encode() + b"\n")
        line = a2.read_to_eof(10)
        self.assertEqual(line, b"error: sandbox proj/a has its maximum of 1 shell sessions\r\n")
        b1 = self.shell("b")  # another sandbox: fine, and the server now holds its maximum of two
        ticket = self.ticket("c")
        c1 = self.client(ticket)
        c1.send(ticket["token"].encode() + b"\n")
        self.assertEqual(c1.read_to_eof(10), b"error: the server holds its maximum of 2 shell sessions\r\n")
        a1.send(b"exit\n")
        a1.read_to_eof(10)
        c1 = self.shell("c")  # a session ended: room again
        self.assertEqual(c1.run("hostname").strip(), "c")
        for client in (b1, c1):
            client.send(b"exit\n")
            client.read_to_eof(10)
