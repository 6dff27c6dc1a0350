"""The installed ``bolt`` console script against the real ``twistd -n bolt``, as root.

Every test gets its own server (tests.integration.server.RealServer on loopback) over the cached
debian:bookworm image, with a unique ``cgroup_parent`` (``bolt-t<hex>``), and its own client config
file (``BOLT_CONFIG``, with ``BOLT_PASSWORD`` set).  The client is run as a user runs it: the
console script ``.venv/bin/bolt`` in a subprocess (on a pseudo-terminal for ``bolt shell``).
Cleanup deletes every project through the API, stops the server and removes its cgroup parent.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from bolt import tls
from tests.integration.server import RealServer, free_allowed_port, remove_cgroup_tree
from tests.integration.support import cached_image_root, ensure_test_image, require_root, require_tools

BOLT = os.path.join(os.path.dirname(sys.executable), "bolt")


class Terminal:
    """A pseudo-terminal for a child: the test types into the master and reads what the child shows."""

    def __init__(self, rows: int, columns: int) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, columns)
        self.seen = b""
        self._pos = 0

    def resize(self, rows: int, columns: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 30.0) -> re.Match:
        """Wait for ``pattern`` (a regex) in the output after the previous match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.seen, self._pos)
            if match:
                self._pos = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen within {timeout} s; output so far:\n"
                                     f"{self.seen[self._pos:]!r}")
            readable, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if readable:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # EIO: no writer left
                    time.sleep(0.05)

    def drain(self) -> None:
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                if not os.read(self.master, 65536):
                    return
            except OSError:
                return

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class CLITestCase(unittest.TestCase):
    timeout = 600
    #: Server settings beyond the image cache and the cgroup parent.
    server_config: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "debootstrap", "mount", "umount")
        if not os.access(BOLT, os.X_OK):
            self.fail(f"{BOLT} is not installed; run `make venv`")
        yield ensure_test_image(reactor)
        self.prefix = "bolt-t" + secrets.token_hex(4)
        self.server = RealServer(config={"base_image_dir": cached_image_root(), "cgroup_parent": self.prefix,
                                         **self.server_config})
        self.addCleanup(self._clean_host)
        self.server.start()
        self.home = tempfile.mkdtemp(prefix="bolt-cli-home-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.config_path = os.path.join(self.home, "bolt", "config.json")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BOLT_")}
        self.env.update(BOLT_CONFIG=self.config_path, BOLT_PASSWORD=self.server.password, HOME=self.home)
        self.bolt_ok("remote", "add", "local", self.server.url, "--yes")

    def _clean_host(self) -> None:
        try:
            if self.server.process and self.server.process.poll() is None:
                code, projects = self.server.api("GET", "/api/projects")
                for project in projects if code == 200 else []:
                    self.server.api("DELETE", f"/api/projects/{project['name']}?force=1")
                self.server.stop()
        finally:
            with open("/proc/self/mounts") as f:
                points = [line.split()[1] for line in f]
            for point in reversed(points):
                if point.startswith(self.server.root + "/"):
                    subprocess.run(["umount", "--lazy", point], check=False)
            remove_cgroup_tree(self.prefix)
            self.server.cleanup()

    # -- running the client ----------------------------------------------------------------------

    def bolt(self, *args: str, stdin: bytes | None = b"", env: dict | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([BOLT, *args], input=stdin, capture_output=True, env=env or self.env, timeout=timeout)

    def bolt_ok(self, *args: str, **kwargs) -> str:
        result = self.bolt(*args, **kwargs)
        self.assertEqual(result.returncode, 0, f"bolt {' '.join(args)}: {result.stderr.decode()}")
        return result.stdout.decode()

    def bolt_json(self, *args: str, **kwargs):
        return json.loads(self.bolt_ok("--json", *args, **kwargs))

    def saved(self) -> dict:
        with open(self.config_path) as f:
            return json.load(f)

    def make_sandbox(self, project: str = "proj", name: str = "box") -> None:
        self.bolt_ok("project", "create", project)
        self.bolt_ok("sandbox", "create", project, name)


class RemoteTests(CLITestCase):
    def test_remote_add_pins_the_servers_certificate(self):
        saved = self.saved()["remotes"]["local"]
        self.assertEqual(saved["fingerprint"], tls.fingerprint_sha256(self.server.cert_path))
        with open(self.server.cert_path) as f:
            self.assertEqual(saved["certificate"].strip(), f.read().strip())
        self.assertEqual(saved["url"], self.server.url)
        self.assertEqual(stat.S_IMODE(os.stat(self.config_path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.config_path)).st_mode), 0o700)
        listed = self.bolt_ok("remote", "list")
        self.assertRegex(listed, rf"\*\s+local\s+{re.escape(self.server.url)}\s+admin\s+"
                                 rf"{re.escape(saved['fingerprint'])}")
        self.assertEqual(self.bolt_json("remote", "list")[0]["default"], True)

    def test_a_different_certificate_is_refused(self):
        other = RealServer()
        self.addCleanup(other.cleanup)
        other.start()
        config = self.saved()
        config["remotes"]["local"]["url"] = other.url  # same address and names, another certificate
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        result = self.bolt("status")
        self.assertEqual(result.returncode, 1)
        err = result.stderr.decode()
        self.assertIn("presented a certificate that is not the one pinned for remote 'local'", err)
        self.assertIn(tls.fingerprint_sha256(self.server.cert_path), err)
        self.assertIn(tls.fingerprint_sha256(other.cert_path), err)
        other.stop()
        self.assertNotIn("/api/status", other.log())  # no request, so no credentials, reached it

    def test_wrong_password_is_refused_and_not_saved(self):
        env = dict(self.env, BOLT_PASSWORD="not-the-password")
        result = self.bolt("remote", "add", "second", self.server.url, "--yes", env=env)
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.decode().splitlines()[-1].startswith("bolt: invalid credentials"))
        self.assertNotIn("second", self.saved()["remotes"])

    def test_set_password_changes_the_server_and_the_stored_password(self):
        without = {k: v for k, v in self.env.items() if k != "BOLT_PASSWORD"}
        self.bolt_ok("config", "set-password", env=dict(without, BOLT_NEW_PASSWORD="changed-by-the-cli"))
        self.assertEqual(self.saved()["remotes"]["local"]["password"], "changed-by-the-cli")
        self.assertEqual(self.server.api("GET", "/api/status", password="changed-by-the-cli")[0], 200)
        self.bolt_ok("status", env=without)  # the stored password
        old = self.bolt("status")  # BOLT_PASSWORD, the old one, overrides it and is refused now
        self.assertEqual(old.returncode, 1)
        self.assertIn(b"bolt: invalid credentials", old.stderr)
        # Back to the server's password, which the cleanup's API calls use.
        self.bolt_ok("config", "set-password", env=dict(without, BOLT_NEW_PASSWORD=self.server.password))


class ProjectAndSandboxTests(CLITestCase):
    def test_projects(self):
        self.assertIn("Project 'demo' created.", self.bolt_ok("project", "create", "demo"))
        listed = self.bolt_ok("project", "list")
        self.assertEqual(listed.splitlines()[0].split(), ["NAME", "SANDBOXES", "CPU", "MEMORY", "PIDS", "CREATED"])
        self.assertTrue(listed.splitlines()[1].startswith("demo "))
        self.assertEqual([p["name"] for p in self.bolt_json("project", "list")], ["demo"])
        shown = self.bolt_ok("project", "show", "demo")
        self.assertIn("name:     demo", shown)
        self.assertIn("No sandboxes.", shown)
        self.assertEqual(self.bolt_json("project", "show", "demo")["name"], "demo")
        duplicate = self.bolt("project", "create", "demo")
        self.assertEqual((duplicate.returncode, duplicate.stdout), (1, b""))
        self.assertEqual(duplicate.stderr.decode(), "bolt: project 'demo' already exists\n")
        missing = self.bolt("project", "show", "nope")
        self.assertEqual(missing.returncode, 1)
        self.assertEqual(missing.stderr.decode(), "bolt: project 'nope' does not exist\n")
        self.bolt_ok("project", "delete", "demo")
        self.assertEqual(self.bolt_json("project", "list"), [])

    def test_sandbox_lifecycle(self):
        self.bolt_ok("project", "create", "proj")
        created = self.bolt_json("sandbox", "create", "proj", "box", "--distro", "debian:bookworm")
        self.assertEqual((created["name"], created["state"]), ("box", "running"))
        listed = self.bolt_ok("sandbox", "list", "proj")
        self.assertRegex(listed, r"box\s+debian:bookworm\s+running")
        self.assertEqual(self.bolt_json("sandbox", "show", "proj", "box")["state"], "running")
        self.assertIn("Sandbox proj/box is stopped.", self.bolt_ok("sandbox", "stop", "proj", "box"))
        self.assertEqual(self.bolt_json("sandbox", "show", "proj", "box")["state"], "stopped")
        refused = self.bolt("exec", "proj", "box", "--", "true")
        self.assertEqual(refused.returncode, 1)
        self.assertIn(b"is not running", refused.stderr)
        self.assertIn("Sandbox proj/box is running.", self.bolt_ok("sandbox", "start", "proj", "box"))
        self.assertIn("state:    running", self.bolt_ok("sandbox", "show", "proj", "box"))
        busy = self.bolt("project", "delete", "proj")
        self.assertEqual(busy.returncode, 1)
        self.assertIn(b"still has 1 sandbox", busy.stderr)
        self.bolt_ok("sandbox", "delete", "proj", "box")
        self.assertEqual(self.bolt_json("sandbox", "list", "proj"), [])
        self.bolt_ok("project", "delete", "proj")

    def test_limits_with_human_sizes(self):
        self.bolt_ok("project", "create", "lim")
        out = self.bolt_ok("limits", "lim", "--memory", "256M", "--cpu", "0.5", "--pids", "300")
        self.assertIn("256 MiB (268435456 bytes)", out)
        code, project = self.server.api("GET", "/api/projects/lim")
        self.assertEqual(project["resource_limits"],
                         {"cpu_quota_us": 50000, "memory_limit_bytes": 268435456, "pids_max": 300})
        self.bolt_ok("limits", "lim", "--cpu", "150%", "--memory", "1.5G")
        self.assertEqual(self.bolt_json("limits", "lim"),
                         {"cpu_quota_us": 150000, "memory_limit_bytes": 1610612736, "pids_max": 300})
        self.bolt_ok("limits", "lim", "--cpu", "20000us")
        shown = self.bolt_ok("limits", "lim")
        self.assertIn("0.2 cores (20000 µs per 100000 µs)", shown)
        refused = self.bolt("limits", "lim", "--memory", "1M")  # under the server's 16 MiB minimum
        self.assertEqual(refused.returncode, 1)
        self.assertIn(b"bolt: memory_limit_bytes must be between", refused.stderr)
        bad = self.bolt("limits", "lim", "--memory", "lots")
        self.assertEqual(bad.returncode, 2)

    def test_images_and_status(self):
        self.make_sandbox()
        images = self.bolt_ok("image", "list")
        self.assertRegex(images, r"debian:bookworm\s+ready\s+\d")
        listed = self.bolt_json("image", "list")
        self.assertEqual([(i["distro"], i["state"]) for i in listed], [("debian:bookworm", "ready")])
        self.assertIn("sandboxes:   proj/box", self.bolt_ok("image", "show", "debian:bookworm"))
        # Building what is cached answers at once (the progress display is unit-tested).
        self.assertIn("Image debian:bookworm is ready", self.bolt_ok("image", "build", "debian:bookworm"))
        bad = self.bolt("image", "build", "fedora:40")
        self.assertEqual(bad.returncode, 1)
        self.assertTrue(bad.stderr.startswith(b"bolt: "), bad.stderr)
        described = json.loads(self.bolt_ok("api", "GET", "/api/openapi.json"))
        self.assertIn("/api/projects/{project}/sandboxes/{name}/exec", described["paths"])
        in_use = self.bolt("image", "rm", "debian:bookworm")
        self.assertEqual(in_use.returncode, 1)
        self.assertIn(b"is used by sandboxes", in_use.stderr)
        status = self.bolt_ok("status")
        self.assertIn(f"server:   {self.server.url} (remote local)", status)
        self.assertRegex(status, r"version:\s+\d+\.\d+")
        self.assertRegex(status, r"proj\s+1\s+1 core\s+512 MiB")
        self.assertRegex(status, r"proj/box\s+debian:bookworm")
        body = self.bolt_json("status")
        self.assertEqual(set(body), {"projects", "system", "version"})
        update = self.bolt_ok("update-check")
        self.assertIn("no update_url is configured", update)


class ExecTests(CLITestCase):
    def test_exec_propagates_output_and_status(self):
        self.make_sandbox()
        result = self.bolt("exec", "proj", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
        self.assertEqual((result.returncode, result.stdout, result.stderr), (3, b"out\n", b"err\n"))
        piped = self.bolt("exec", "proj", "box", "--", "sh", "-c", "tr a-z A-Z; echo done",
                          stdin="hello from stdin\n".encode())
        self.assertEqual((piped.returncode, piped.stdout), (0, b"HELLO FROM STDIN\ndone\n"))
        utf8 = self.bolt("exec", "proj", "box", "--", "printf", "caf\\303\\251 \\342\\234\\223")
        self.assertEqual(utf8.stdout, "café ✓".encode())
        env = self.bolt("exec", "proj", "box", "--env", "GREETING=hi there", "--cwd", "/etc", "--",
                        "sh", "-c", 'echo "$GREETING in $(pwd)"')
        self.assertEqual(env.stdout, b"hi there in /etc\n")
        killed = self.bolt("exec", "proj", "box", "--", "sh", "-c", "kill -9 $$")
        self.assertEqual(killed.returncode, 137)
        timed_out = self.bolt("exec", "proj", "box", "--timeout", "1", "--", "sleep", "30")
        self.assertEqual(timed_out.returncode, 124)
        self.assertIn(b"did not finish within 1 s", timed_out.stderr)
        as_json = self.bolt("--json", "exec", "proj", "box", "--", "sh", "-c", "echo json; exit 5")
        self.assertEqual(as_json.returncode, 5)  # the command's status, in --json mode too
        as_json = json.loads(as_json.stdout)
        self.assertEqual((as_json["stdout"], as_json["exit_code"], as_json["timed_out"]), ("json\n", 5, False))
        missing = self.bolt("exec", "proj", "box", "--", "/no/such/program")
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn(b"No such file or directory", missing.stderr)
        no_sandbox = self.bolt("exec", "proj", "nope", "--", "true")
        self.assertEqual((no_sandbox.returncode, no_sandbox.stderr),
                         (1, b"bolt: sandbox 'nope' does not exist in project 'proj'\n"))


class ShellTests(CLITestCase):
    def start_shell(self, terminal: Terminal, *extra: str) -> subprocess.Popen:
        env = dict(self.env, TERM="xterm-256color")
        process = subprocess.Popen([BOLT, "shell", "proj", "box", *extra], stdin=terminal.slave,
                                   stdout=terminal.slave, stderr=terminal.slave, env=env, start_new_session=True)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        return process

    def shell_on_terminal(self, rows: int, columns: int) -> tuple[Terminal, list, subprocess.Popen]:
        """A sandbox and `bolt shell` on a fresh terminal; the terminal's settings from before."""
        self.make_sandbox()
        terminal = Terminal(rows, columns)
        self.addCleanup(terminal.close)
        before = termios.tcgetattr(terminal.slave)
        return terminal, before, self.start_shell(terminal)

    def test_shell_on_a_terminal(self):
        terminal, before, process = self.shell_on_terminal(33, 111)
        terminal.expect(rb"root@box:[^\r\n]*# ")
        self.assertNotEqual(termios.tcgetattr(terminal.slave), before, "the terminal was not put in raw mode")
        terminal.type(b"stty size\r")
        terminal.expect(rb"[\r\n]33 111\r\n")  # after the echo (and bash's bracketed-paste codes)
        terminal.resize(44, 132)
        process.send_signal(signal.SIGWINCH)
        time.sleep(0.3)
        terminal.type(b"stty size\r")
        terminal.expect(rb"[\r\n]44 132\r\n")
        terminal.type(b"echo $TERM\r")
        terminal.expect(rb"[\r\n]xterm-256color\r\n")
        # A 0xFF byte each way: doubled on the wire (IAC IAC), single on both terminals.
        terminal.type(b"printf 'a\\377b\\n'\r")
        terminal.expect(rb"[\r\n]a\xffb\r\n")
        terminal.type(b"head -c 3 | od -An -c\r")
        time.sleep(0.5)  # typed ahead, readline would take the next line for itself
        terminal.type(b"x\xffy\r")
        terminal.expect(rb"x 377   y")
        terminal.type(b"exit\r")
        self.assertEqual(process.wait(30), 0)
        self.assertEqual(termios.tcgetattr(terminal.slave), before, "the terminal was not restored")

    def test_escape_character_closes_the_session(self):
        terminal, before, process = self.shell_on_terminal(24, 80)
        terminal.expect(rb"# ")
        terminal.type(b"\x1d")
        self.assertEqual(process.wait(30), 0)
        terminal.expect(rb"Connection closed\.")
        self.assertEqual(termios.tcgetattr(terminal.slave), before)

    def test_terminal_restored_when_killed(self):
        terminal, before, process = self.shell_on_terminal(24, 80)
        terminal.expect(rb"# ")
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(30), 128 + signal.SIGTERM)
        self.assertEqual(termios.tcgetattr(terminal.slave), before)

    def test_line_mode_with_piped_input(self):
        self.make_sandbox()
        result = self.bolt("shell", "proj", "box", stdin=b"echo line-mode-$((6*7))\n", timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"line-mode-42", result.stdout)

    def test_stopped_sandbox_has_no_shell(self):
        self.make_sandbox()
        self.bolt_ok("sandbox", "stop", "proj", "box")
        result = self.bolt("shell", "proj", "box")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"is not running", result.stderr)


class PortTests(CLITestCase):
    """Forwards through the CLI (POST/DELETE .../ports and .../reverse_ports)."""

    def test_forwards(self):
        self.make_sandbox()
        host_port, back_port = free_allowed_port(), free_allowed_port()
        self.bolt_ok("port", "add", "proj", "box", str(host_port), "80")
        self.assertRegex(self.bolt_ok("port", "list", "proj", "box"), rf"{host_port}\s+80")
        self.assertEqual(self.bolt_json("port", "list", "proj", "box"), {str(host_port): 80})
        code, sandbox = self.server.api("GET", "/api/projects/proj/sandboxes/box")
        self.assertEqual(sandbox["port_mappings"], {str(host_port): 80})
        self.assertIn(f"host:{host_port}->80", self.bolt_ok("sandbox", "list", "proj"))
        self.bolt_ok("rport", "add", "proj", "box", "5432", str(back_port))
        self.assertEqual(self.bolt_json("rport", "list", "proj", "box"), {"5432": back_port})
        self.bolt_ok("port", "rm", "proj", "box", str(host_port))
        self.bolt_ok("rport", "rm", "proj", "box", "5432")
        code, sandbox = self.server.api("GET", "/api/projects/proj/sandboxes/box")
        self.assertEqual((sandbox["port_mappings"], sandbox["reverse_port_mappings"]), ({}, {}))
        gone = self.bolt("port", "rm", "proj", "box", str(host_port))
        self.assertEqual(gone.returncode, 1)
        self.assertTrue(gone.stderr.startswith(b"bolt: "))


class TLSShellTests(CLITestCase):
    """A server with shell_tls: the shell port speaks TLS with the API's certificate, pinned too."""

    server_config = {"shell_tls": True}

    def test_shell_over_tls(self):
        self.make_sandbox()
        plain = self.bolt("shell", "proj", "box", stdin=b"echo no\n", timeout=60)
        self.assertEqual(plain.returncode, 1)  # a TLS port does not answer a plain token
        self.assertIn(b"bolt shell --tls", plain.stderr)
        result = self.bolt("shell", "--tls", "proj", "box", stdin=b"echo tls-$((6*7))\n", timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"tls-42", result.stdout)
        # Remembered per remote: `remote add --shell-tls`.
        self.bolt_ok("remote", "add", "local", self.server.url, "--yes", "--shell-tls")
        self.assertIn(b"tls-42", self.bolt("shell", "proj", "box", stdin=b"echo tls-$((6*7))\n", timeout=60).stdout)
