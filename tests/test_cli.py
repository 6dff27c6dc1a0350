"""Unit tests for the ``bolt`` command-line client (bolt.cli): no root, no real server.

HTTPS is tested against a small standard-library HTTPS server in a thread, on loopback, with
certificates from bolt.tls.generate_self_signed; the shell's loop against a socketpair.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from twisted.trial import unittest

from bolt import tls
from bolt.cli import client as clientmod
from bolt.cli import completion, config as configmod, main as climain, output, shell, sizes
from bolt.cli.config import ConfigFile, Remote
from bolt.shell import telnet as server_telnet

PASSWORD = "unit-secret"


# -- sizes -------------------------------------------------------------------------------------------


class SizeTests(unittest.SynchronousTestCase):
    def test_binary_units_as_docker_and_systemd_read_them(self):
        MiB, GiB = 1024 ** 2, 1024 ** 3
        for text, value in [("512M", 512 * MiB), ("256M", 268435456), ("1G", GiB), ("1.5GiB", GiB + GiB // 2),
                            ("1.5G", 1610612736), ("1GB", GiB), ("1gib", GiB), ("64k", 65536), ("64KiB", 65536),
                            ("2T", 2 * 1024 ** 4), ("268435456", 268435456), ("100B", 100), ("100", 100),
                            (" 512 M ", 512 * MiB), ("0.5M", MiB // 2), (".5G", GiB // 2), ("1Mi", MiB)]:
            self.assertEqual(sizes.parse_size(text), value, text)

    def test_fractions_round_down_to_a_whole_byte(self):
        self.assertEqual(sizes.parse_size("0.1K"), 102)

    def test_refused(self):
        for text in ["", "M", "12Q", "-1M", "1.2.3G", "1 G B", "5iB", "1e6", "one", "1GG"]:
            with self.assertRaises(sizes.QuantityError, msg=text) as caught:
                sizes.parse_size(text)
            self.assertIn("size", str(caught.exception))

    def test_format(self):
        self.assertEqual(sizes.format_size(268435456), "256 MiB")
        self.assertEqual(sizes.format_size(1610612736), "1.5 GiB")
        self.assertEqual(sizes.format_size(300), "300 B")
        self.assertEqual(sizes.format_size(2048), "2 KiB")
        self.assertEqual(sizes.format_size(200 * 1024 ** 3), "200 GiB")
        self.assertEqual(sizes.format_size(None), "-")


class CpuTests(unittest.SynchronousTestCase):
    def test_cores_percent_and_microseconds(self):
        for text, value in [("0.5", 50000), ("2", 200000), ("1", 100000), (".25", 25000), ("1.5cores", 150000),
                            ("50%", 50000), ("150%", 150000), ("12.5%", 12500), ("100 %", 100000),
                            ("50000us", 50000), ("50000µs", 50000), ("2000 usec", 2000), ("1 core", 100000)]:
            self.assertEqual(sizes.parse_cpu(text), value, text)

    def test_a_bare_large_number_points_at_microseconds(self):
        with self.assertRaises(sizes.QuantityError) as caught:
            sizes.parse_cpu("50000")
        self.assertIn("50000us", str(caught.exception))

    def test_refused(self):
        for text in ["", "half", "50%%", "-1", "1.5ms", "us", "%"]:
            with self.assertRaises(sizes.QuantityError, msg=text):
                sizes.parse_cpu(text)

    def test_format(self):
        self.assertEqual(sizes.format_cpu(50000), "0.5 cores")
        self.assertEqual(sizes.format_cpu(100000), "1 core")
        self.assertEqual(sizes.format_cpu(250000), "2.5 cores")
        self.assertEqual(sizes.format_cpu(None), "-")


# -- the command tree ----------------------------------------------------------------------------------


def run_cli(argv, env=None, stdin_text="", isatty=False):
    """(exit status, stdout, stderr) of one CLI run with in-memory streams."""
    stdin = io.TextIOWrapper(io.BytesIO(stdin_text.encode()), encoding="utf-8")
    stdin.isatty = lambda: isatty
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    code = climain.run(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env or {})
    return code, stdout.buffer.getvalue().decode(), stderr.buffer.getvalue().decode()


class TreeTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.parser = climain.build_parser()
        self.paths = {path: parser for path, parser in completion.walk(self.parser)}

    def test_every_command_has_help(self):
        self.assertGreater(len(self.paths), 40)
        for path, parser in self.paths.items():
            out = io.StringIO()
            with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as caught:
                self.parser.parse_args(list(path) + ["--help"])
            self.assertEqual(caught.exception.code, 0, path)
            self.assertIn("usage: bolt", out.getvalue(), path)
            self.assertIn("--json", out.getvalue(), path)
            self.assertIn("--remote", out.getvalue(), path)

    def test_every_leaf_runs_a_function(self):
        leaves = [path for path, parser in self.paths.items() if not completion.subcommands(parser)]
        expected = {
            ("remote", "add"), ("remote", "list"), ("remote", "use"), ("remote", "remove"),
            ("project", "create"), ("project", "delete"), ("project", "list"), ("project", "show"),
            ("sandbox", "create"), ("sandbox", "delete"), ("sandbox", "list"), ("sandbox", "show"),
            ("sandbox", "start"), ("sandbox", "stop"), ("exec",), ("shell",), ("port", "add"), ("port", "rm"),
            ("port", "list"), ("rport", "add"), ("rport", "rm"), ("rport", "list"), ("limits",),
            ("image", "build"), ("image", "list"), ("image", "show"), ("image", "rm"), ("status",),
            ("update-check",), ("config", "set-password"), ("completion", "bash"), ("api",)}
        self.assertLessEqual(expected, set(leaves))
        for path in leaves:
            self.assertTrue(callable(self.paths[path].get_default("func")), path)

    def test_global_options_before_and_after_the_command(self):
        for argv in (["--json", "--remote", "r", "project", "list"], ["project", "list", "--json", "--remote", "r"],
                     ["project", "--json", "list", "--remote=r"]):
            args = self.parser.parse_args(argv)
            self.assertEqual((args.json, args.remote), (True, "r"), argv)
        args = self.parser.parse_args(["project", "list"])
        self.assertEqual((args.json, args.remote), (False, None))

    def test_exec_command_after_double_dash_keeps_its_own_options(self):
        head, tail = climain.split_command(["--remote", "r", "exec", "p", "s", "--timeout", "5", "-e", "A=1",
                                            "--", "sh", "-c", "echo --json", "--timeout"])
        self.assertEqual(tail, ["sh", "-c", "echo --json", "--timeout"])
        args = self.parser.parse_args(head)
        self.assertEqual((args.project, args.name, args.timeout, args.env, args.json), ("p", "s", 5.0, ["A=1"], False))
        # Only exec takes a command; elsewhere -- means what argparse says.
        self.assertEqual(climain.split_command(["project", "create", "--", "x"]),
                         (["project", "create", "--", "x"], None))

    def test_usage_errors_exit_2(self):
        for argv in ([], ["project"], ["nonsense"], ["port", "add", "p", "s", "0", "80"],
                     ["port", "add", "p", "s", "70000", "80"], ["limits", "p", "--pids", "-3"],
                     ["exec", "p", "s"], ["limits", "p", "--memory", "12Q"], ["limits", "p", "--cpu", "half"],
                     ["shell", "p", "s", "--escape-char", "^^^"]):
            with contextlib.redirect_stderr(io.StringIO()):
                code, out, err = run_cli(argv, env={"BOLT_CONFIG": "/nonexistent/bolt.json"})
            self.assertEqual(code, 2, argv)

    def test_no_remote_is_an_error_with_advice(self):
        code, out, err = run_cli(["project", "list"], env={"BOLT_CONFIG": "/nonexistent/bolt.json"})
        self.assertEqual(code, 1)
        self.assertEqual(err, "bolt: no remote configured; add one with `bolt remote add NAME https://HOST:PORT`\n")

    def test_version(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            self.parser.parse_args(["--version"])
        self.assertRegex(out.getvalue(), r"^bolt \d+\.\d+")

    def test_exec_status(self):
        self.assertEqual(climain.exec_status({"exit_code": 3, "timed_out": False}), 3)
        self.assertEqual(climain.exec_status({"exit_code": 137, "signal": "SIGKILL", "timed_out": False}), 137)
        self.assertEqual(climain.exec_status({"exit_code": 137, "signal": "SIGKILL", "timed_out": True}), 124)
        self.assertEqual(climain.exec_status({"exit_code": -9, "timed_out": False}), 137)
        self.assertEqual(climain.exec_status({"exit_code": 300, "timed_out": False}), 255)

    def test_env_pairs(self):
        self.assertEqual(climain._env_pairs(["A=1", "B=x=y", "C="], {}), {"A": "1", "B": "x=y", "C": ""})
        self.assertEqual(climain._env_pairs(["HOME"], {"HOME": "/h"}), {"HOME": "/h"})
        with self.assertRaises(climain.UsageError):
            climain._env_pairs(["MISSING"], {})
        with self.assertRaises(climain.UsageError):
            climain._env_pairs(["=1"], {})

    def test_the_cli_is_a_face_standard_library_only(self):
        """It imports neither the core, the host adapters, Twisted nor any other third-party package; of
        the server's modules only the shell's telnet codec (pure, standard library), the wire protocol
        both ends speak."""
        code = ("import sys, bolt.cli.main; "
                "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('bolt', 'twisted', 'klein', 'OpenSSL', 'cryptography', 'psutil', 'netifaces', 'treq'))))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        modules = set(result.stdout.split())
        self.assertEqual({m for m in modules if not m.startswith("bolt.cli")},
                         {"bolt", "bolt.shell", "bolt.shell.telnet"})
        with open(server_telnet.__file__) as f:
            imports = {line.split()[1] for line in f if line.startswith(("import ", "from "))}
        self.assertEqual(imports, {"__future__", "dataclasses"})


class CompletionTests(unittest.SynchronousTestCase):
    def complete(self, *words: str) -> list[str]:
        script = completion.bash(climain.build_parser())
        quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
        program = (f"{script}\nCOMP_WORDS=(bolt {quoted}); COMP_CWORD={len(words)}; _bolt_complete; "
                   'printf "%s\\n" "${COMPREPLY[@]}"')
        result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
        return result.stdout.split()

    def test_script_is_valid_bash(self):
        script = completion.bash(climain.build_parser())
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        self.assertIn("complete -o default -F _bolt_complete bolt", script)

    def test_commands_subcommands_and_options(self):
        self.assertIn("sandbox", self.complete(""))
        self.assertEqual(self.complete("sa"), ["sandbox"])
        self.assertEqual(sorted(self.complete("sandbox", "st")), ["start", "stop"])
        self.assertEqual(self.complete("--remote", "prod", "image", "b"), ["build"])
        self.assertEqual(self.complete("sandbox", "create", "p", "s", "--d"), ["--distro"])
        self.assertIn("--timeout", self.complete("exec", "p", "s", "--"))
        self.assertEqual(self.complete("exec", "p", "s", "--", "ls", "--"), [])  # the command's own words
        self.assertEqual(self.complete("--remote", ""), [])  # a value: nothing to offer


# -- output ------------------------------------------------------------------------------------------


class OutputTests(unittest.SynchronousTestCase):
    def test_table_aligns_columns(self):
        text = output.table(["name", "sandboxes", "created"], [("alpha", 2, "2024-01-01"), ("b", 10, None)])
        self.assertEqual(text, "NAME   SANDBOXES  CREATED\n"
                               "alpha  2          2024-01-01\n"
                               "b      10         -\n")

    def test_table_refuses_ragged_rows(self):
        with self.assertRaises(ValueError):
            output.table(["a", "b"], [("x",)])

    def test_control_characters_never_reach_the_terminal(self):
        self.assertEqual(output.clean("evil\x1b]0;title\x07name\r\n"), "evil?]0;title?name? ")
        self.assertEqual(output.clean(True), "yes")
        self.assertNotIn("\x1b", output.table(["n"], [("\x1b[2J",)]))

    def test_fields(self):
        self.assertEqual(output.fields([("cpu", "1 core"), ("memory", 5)]), "cpu:     1 core\nmemory:  5\n")

    def test_printer_modes(self):
        out = io.StringIO()
        output.Printer(out, json_mode=True).result({"a": 1}, "people text")
        self.assertEqual(json.loads(out.getvalue()), {"a": 1})
        out = io.StringIO()
        printer = output.Printer(out, json_mode=False)
        printer.result({"a": 1}, "people text")
        self.assertEqual(out.getvalue(), "people text\n")


# -- the config file ---------------------------------------------------------------------------------


def sample_remote(name="prod", **changes) -> Remote:
    pem, _ = tls.generate_self_signed("bolt-host.example", [])
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    values = dict(url="https://127.0.0.1:5000", user="admin", password="pw", certificate=pem.decode(),
                  fingerprint=clientmod.fingerprint(der))
    values.update(changes)
    return Remote(name, **values)


class ConfigTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="bolt-cli-unit-")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.dir])
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)

    def test_paths(self):
        self.assertEqual(configmod.default_path({"BOLT_CONFIG": "/x/c.json", "XDG_CONFIG_HOME": "/y"}), "/x/c.json")
        self.assertEqual(configmod.default_path({"XDG_CONFIG_HOME": "/y"}), "/y/bolt/config.json")
        home = os.path.expanduser("~")
        self.assertEqual(configmod.default_path({"XDG_CONFIG_HOME": "relative"}),
                         os.path.join(home, ".config", "bolt", "config.json"))
        self.assertEqual(configmod.default_path({}), os.path.join(home, ".config", "bolt", "config.json"))

    def test_saved_private_and_read_back(self):
        path = os.path.join(self.dir, "xdg", "bolt", "config.json")
        config = ConfigFile.load(path)
        self.assertEqual(config.remotes, {})
        remote = sample_remote()
        config.add(remote)
        config.save()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["config.json"])  # no temp file left
        again = ConfigFile.load(path)
        self.assertEqual(again.remotes["prod"], remote)
        self.assertEqual(again.default, "prod")
        self.assertEqual(again.warnings, [])

    def test_a_widened_bolt_directory_and_file_are_tightened(self):
        path = os.path.join(self.dir, "bolt", "config.json")
        os.makedirs(os.path.dirname(path), mode=0o755)
        with open(path, "w") as f:
            f.write("{}")
        os.chmod(path, 0o644)
        config = ConfigFile.load(path)
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("readable by others", config.warnings[0])
        config.add(sample_remote())
        config.save()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)

    def test_bad_files(self):
        path = os.path.join(self.dir, "config.json")
        for content, expected in [("{not json", "not valid JSON"), ("[]", "JSON object"),
                                  ('{"remotes": {"x": {"url": "https://h"}}}', "add it again"),
                                  ('{"remotes": {"x": {"url": "http://h", "certificate": "", "fingerprint": ""}}}',
                                   "https://")]:
            with open(path, "w") as f:
                f.write(content)
            with self.assertRaises(configmod.ConfigFileError) as caught:
                ConfigFile.load(path)
            self.assertIn(expected, str(caught.exception))

    def test_choose(self):
        config = ConfigFile("/x")
        with self.assertRaises(configmod.ConfigFileError):
            config.choose(None)
        config.add(sample_remote("a"))
        config.add(sample_remote("b"))
        self.assertEqual(config.default, "a")  # the first one added
        self.assertEqual(config.choose(None).name, "a")
        self.assertEqual(config.choose("b").name, "b")
        with self.assertRaises(configmod.ConfigFileError) as caught:
            config.choose("c")
        self.assertIn("known: a, b", str(caught.exception))
        config.remove("a")
        self.assertIsNone(config.default)
        self.assertEqual(config.choose(None).name, "b")  # the only one left
        with self.assertRaises(configmod.ConfigFileError):
            config.add(sample_remote("bad name"))

    def test_urls(self):
        for given, expected in [("https://h:5000", "https://h:5000"), ("https://h:5000/", "https://h:5000"),
                                ("h:5000", "https://h:5000"), ("https://[::1]:5000", "https://[::1]:5000"),
                                ("https://H.example", "https://h.example")]:
            self.assertEqual(configmod.normalize_url(given), expected)
        for bad in ["http://h:5000", "https://h:5000/api", "https://u:p@h", "https://h:99999", "", "https://"]:
            with self.assertRaises(ValueError, msg=bad):
                configmod.normalize_url(bad)

    def test_fingerprints(self):
        digest = "ab" * 32
        expected = ":".join(["AB"] * 32)
        for text in [digest, digest.upper(), expected, "SHA256:" + expected, "sha256 " + digest]:
            self.assertEqual(configmod.normalize_fingerprint(text), expected)
        for bad in ["ab" * 31, "zz" * 32, ""]:
            with self.assertRaises(ValueError):
                configmod.normalize_fingerprint(bad)


# -- telnet, client side ------------------------------------------------------------------------------


class TelnetClientTests(unittest.SynchronousTestCase):
    def test_answers_the_servers_greeting(self):
        codec = shell.TelnetClient("xterm-256color", (33, 111))
        data, replies = codec.feed(server_telnet.GREETING + b"hello")
        self.assertEqual(data, b"hello")
        self.assertEqual(replies, bytes([255, 251, 31, 255, 250, 31, 0, 111, 0, 33, 255, 240,  # WILL NAWS, SB
                                         255, 251, 24,  # WILL TTYPE
                                         255, 253, 1,  # DO ECHO
                                         255, 253, 3,  # DO SGA
                                         255, 251, 3]))  # WILL SGA
        data, replies = codec.feed(server_telnet.ASK_TTYPE)
        self.assertEqual(replies, b"\xff\xfa\x18\x00xterm-256color\xff\xf0")

    def test_the_server_codec_understands_the_answers(self):
        """Round trip through bolt.shell.telnet: the server sees the window size and the terminal type."""
        client = shell.TelnetClient("xterm-256color", (33, 111))
        server = server_telnet.TelnetCodec()
        _, replies = client.feed(server_telnet.GREETING)
        data, events = server.feed(replies)
        self.assertEqual(data, b"")
        _, more = client.feed(bytes(server.replies))  # the server's SB TTYPE SEND after WILL TTYPE
        data, more_events = server.feed(more + client.resize(44, 132) + shell.encode_input(b"ls\r\xff"))
        events += more_events
        self.assertIn(server_telnet.WindowSize(columns=111, rows=33), events)
        self.assertIn(server_telnet.TerminalType("xterm-256color"), events)
        self.assertIn(server_telnet.WindowSize(columns=132, rows=44), events)
        self.assertEqual(data, b"ls\r\xff")

    def test_commands_are_removed_and_iac_iac_is_one_byte(self):
        codec = shell.TelnetClient("xterm", (24, 80))
        stream = b"a\xff\xffb\xff\xf1c\xff\xfa\x05junk\xff\xff\xff\xf0d"  # IAC IAC, NOP, an unknown SB
        received = b""
        for i in range(len(stream)):  # one byte at a time: state survives between reads
            data, replies = codec.feed(stream[i:i + 1])
            received += data
            self.assertEqual(replies, b"")
        self.assertEqual(received, b"a\xffbcd")

    def test_unknown_options_refused_and_no_acknowledgement_loops(self):
        codec = shell.TelnetClient("xterm", (24, 80))
        self.assertEqual(codec.feed(b"\xff\xfd\x05")[1], b"\xff\xfc\x05")  # DO STATUS -> WONT
        self.assertEqual(codec.feed(b"\xff\xfb\x05")[1], b"\xff\xfe\x05")  # WILL STATUS -> DONT
        self.assertEqual(codec.feed(b"\xff\xfb\x01")[1], b"\xff\xfd\x01")  # WILL ECHO -> DO ECHO
        self.assertEqual(codec.feed(b"\xff\xfb\x01")[1], b"")  # already agreed: silence
        self.assertEqual(codec.feed(b"\xff\xfc\x01")[1], b"\xff\xfe\x01")  # WONT ECHO -> DONT
        self.assertEqual(codec.feed(b"\xff\xfc\x01")[1], b"")
        self.assertEqual(codec.feed(b"\xff\xfe\x1f")[1], b"")  # DONT NAWS before agreeing: silence

    def test_without_a_terminal_naws_is_refused(self):
        codec = shell.TelnetClient("dumb", None)
        self.assertEqual(codec.feed(b"\xff\xfd\x1f")[1], b"\xff\xfc\x1f")
        self.assertEqual(codec.resize(10, 10), b"")

    def test_window_size_bytes_escape_255(self):
        self.assertEqual(shell.naws(255, 80), b"\xff\xfa\x1f\x00\x50\x00\xff\xff\xff\xf0")
        self.assertEqual(shell.naws(24, 0x1FF), b"\xff\xfa\x1f\x01\xff\xff\x00\x18\xff\xf0")
        codec = shell.TelnetClient("xterm", (24, 80))
        self.assertEqual(codec.resize(30, 100), b"")  # not agreed yet
        codec.feed(b"\xff\xfd\x1f")
        self.assertEqual(codec.resize(30, 100), shell.naws(30, 100))

    def test_input_encoding(self):
        self.assertEqual(shell.encode_input(b"a\xffb"), b"a\xff\xffb")
        self.assertEqual(shell.encode_input(b"ls\r"), b"ls\r\0")
        self.assertEqual(shell.encode_input(b"ls\r\n"), b"ls\r\n")
        self.assertEqual(shell.encode_input(b"a\rb\n"), b"a\r\0b\n")

    def test_escape_characters(self):
        self.assertEqual(shell.parse_escape_char("^]"), 0x1D)
        self.assertEqual(shell.parse_escape_char("^x"), 0x18)
        self.assertEqual(shell.parse_escape_char("~"), ord("~"))
        self.assertIsNone(shell.parse_escape_char("none"))
        for bad in ["^^^", "ab", "é"]:
            with self.assertRaises(ValueError):
                shell.parse_escape_char(bad)


class FakeShellServer(threading.Thread):
    """The server end of a socketpair: reads the token line, then plays ``script``."""

    def __init__(self, sock: socket.socket, script) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.script = script
        self.received = b""

    def read_until(self, marker: bytes, timeout: float = 5) -> bytes:
        self.sock.settimeout(timeout)
        while marker not in self.received:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.received += chunk
        return self.received

    def run(self) -> None:
        try:
            self.script(self)
        finally:
            self.sock.close()


class SessionLoopTests(unittest.SynchronousTestCase):
    """Session.run over a socketpair, in line mode (stdin a pipe), in the main thread (signals)."""

    def session(self, script, stdin_data: bytes):
        self.patch(shell, "EOF_QUIET", (0.05, 0.1))
        ours, theirs = socket.socketpair()
        server = FakeShellServer(theirs, script)
        server.start()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.write(in_w, stdin_data)
        os.close(in_w)
        session = shell.Session(ours, "TOKEN", stdin_fd=in_r, stdout_fd=out_w, term="dumb")
        try:
            status = session.run()
        finally:
            os.close(in_r)
            os.close(out_w)
            server.join(10)
        with os.fdopen(out_r, "rb") as f:
            printed = f.read()
        return status, printed, server.received, session

    def test_line_mode_session(self):
        def script(server):
            server.read_until(b"TOKEN\r\n")
            server.sock.sendall(server_telnet.GREETING + b"prompt$ \xff\xff")
            server.read_until(b"\x04")  # the end-of-file sent after the input ended
            server.sock.sendall(b"bye\r\n")

        status, printed, received, session = self.session(script, b"echo \xff\r\n")
        self.assertEqual(status, 0)
        self.assertEqual(session.ended_by, "server")
        self.assertEqual(printed, b"prompt$ \xffbye\r\n")
        self.assertTrue(received.startswith(b"TOKEN\r\n"))
        self.assertIn(b"\xff\xfc\x1f", received)  # WONT NAWS: no terminal to measure
        self.assertIn(b"\xff\xfb\x18", received)  # WILL TTYPE
        self.assertIn(b"echo \xff\xff\r\n", received)
        self.assertTrue(received.endswith(b"\x04"))

    def test_refused_token(self):
        def script(server):
            server.read_until(b"\r\n")
            server.sock.sendall(b"error: invalid, expired or already used token\r\n")

        with self.assertRaises(shell.ShellError) as caught:
            self.session(script, b"")
        self.assertEqual(str(caught.exception), "invalid, expired or already used token")


# -- HTTPS with a pinned certificate --------------------------------------------------------------------


class StubAPI(BaseHTTPRequestHandler):
    """Answers like Bolt would; records requests on the server object."""

    def log_message(self, *args):
        pass

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((method, self.path, body))
        expected = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            status, reply = 401, {"error": "invalid credentials"}
        else:
            missing = (404, {"error": f"no such endpoint: {self.path}"})
            status, reply = self.server.routes.get((method, self.path), missing)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")

    def do_PUT(self):
        self._answer("PUT")

    def do_DELETE(self):
        self._answer("DELETE")


def start_stub(testcase, host: str = "127.0.0.1", cert: tuple[bytes, bytes] | None = None):
    """An HTTPS stub on loopback with a fresh self-signed certificate; returns (server, cert PEM)."""
    cert_pem, key_pem = cert or tls.generate_self_signed("bolt-unit", [])
    directory = tempfile.mkdtemp(prefix="bolt-cli-tls-")
    testcase.addCleanup(subprocess.run, ["rm", "-rf", directory])
    with open(os.path.join(directory, "cert.pem"), "wb") as f:
        f.write(cert_pem)
    with open(os.path.join(directory, "key.pem"), "wb") as f:
        f.write(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
    server = ThreadingHTTPServer((host, 0), StubAPI)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.requests = []
    server.routes = {("GET", "/api/status"): (200, {"projects": [], "system": {"cpu_usage": 1.0, "memory_usage": 2.0,
                                                                               "disk_usage": 3.0}, "version": "9.9.9"})}
    server.cert_path = os.path.join(directory, "cert.pem")
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    testcase.addCleanup(thread.join, 5)
    testcase.addCleanup(server.server_close)
    testcase.addCleanup(server.shutdown)
    return server, cert_pem.decode()


def remote_for(server, pem: str, name: str = "stub", host: str = "127.0.0.1", fingerprint: str | None = None) -> Remote:
    der = ssl.PEM_cert_to_DER_cert(pem)
    return Remote(name, f"https://{host}:{server.server_address[1]}", "admin", PASSWORD, pem,
                  fingerprint or clientmod.fingerprint(der))


class PinnedClientTests(unittest.SynchronousTestCase):
    def test_fingerprint_form_matches_bolt_tls(self):
        server, pem = start_stub(self)
        der = clientmod.fetch_certificate("127.0.0.1", server.server_address[1])
        self.assertEqual(clientmod.fingerprint(der), tls.fingerprint_sha256(server.cert_path))
        self.assertEqual(ssl.DER_cert_to_PEM_cert(der).strip(), pem.strip())

    def test_the_pinned_certificate_is_accepted(self):
        server, pem = start_stub(self)
        client = clientmod.Client(remote_for(server, pem), PASSWORD)
        self.assertEqual(client.request("GET", "/api/status")["version"], "9.9.9")

    def test_a_different_certificate_is_refused(self):
        """Two self-signed certificates for the same names: the one not pinned is refused."""
        server, pem = start_stub(self)
        other_pem, _ = tls.generate_self_signed("bolt-unit", [])
        remote = remote_for(server, other_pem.decode())
        with self.assertRaises(clientmod.PinError) as caught:
            clientmod.Client(remote, PASSWORD).request("GET", "/api/status")
        message = str(caught.exception)
        self.assertIn("not the one pinned for remote 'stub'", message)
        self.assertIn(remote.fingerprint, message)
        self.assertIn(tls.fingerprint_sha256(server.cert_path), message)
        self.assertEqual(server.requests, [])  # nothing, credentials included, was sent

    def test_a_fingerprint_that_does_not_match_is_refused_even_when_the_chain_verifies(self):
        server, pem = start_stub(self)
        remote = remote_for(server, pem, fingerprint=":".join(["00"] * 32))
        with self.assertRaises(clientmod.PinError):
            clientmod.Client(remote, PASSWORD).request("GET", "/api/status")
        self.assertEqual(server.requests, [])

    def test_the_host_name_must_be_in_the_certificate(self):
        # 127.0.0.2 is loopback too, but not in the certificate's subjectAltName.
        server, pem = start_stub(self, host="127.0.0.2")
        remote = remote_for(server, pem, host="127.0.0.2")
        with self.assertRaises(clientmod.PinError) as caught:
            clientmod.Client(remote, PASSWORD).request("GET", "/api/status")
        self.assertIn("not valid for the host name '127.0.0.2'", str(caught.exception))

    def test_api_errors_carry_the_servers_message(self):
        server, pem = start_stub(self)
        server.routes[("POST", "/api/projects")] = (409, {"error": "project 'x' already exists"})
        client = clientmod.Client(remote_for(server, pem), PASSWORD)
        with self.assertRaises(clientmod.ApiError) as caught:
            client.request("POST", "/api/projects", {"name": "x"})
        self.assertEqual((caught.exception.status, caught.exception.message), (409, "project 'x' already exists"))

    def test_nothing_listening(self):
        server, pem = start_stub(self)
        remote = remote_for(server, pem)
        remote.url = f"https://127.0.0.1:{socket_port_unused()}"
        with self.assertRaises(clientmod.ConnectError):
            clientmod.Client(remote, PASSWORD).request("GET", "/api/status")

    def test_paths_are_quoted(self):
        self.assertEqual(clientmod.path("projects", "a/b", "sandboxes", "c?d"), "/api/projects/a%2Fb/sandboxes/c%3Fd")
        self.assertEqual(clientmod.path("images", "debian:bookworm"), "/api/images/debian:bookworm")


def socket_port_unused() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CommandTests(unittest.SynchronousTestCase):
    """Whole commands against the stub: what they send, print and exit with."""

    def setUp(self):
        self.server, self.pem = start_stub(self)
        self.dir = tempfile.mkdtemp(prefix="bolt-cli-cmd-")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.dir])
        self.env = {"BOLT_CONFIG": os.path.join(self.dir, "bolt", "config.json"), "BOLT_PASSWORD": PASSWORD}
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"

    def add(self):
        code, out, err = run_cli(["remote", "add", "stub", self.url, "--yes"], self.env)
        self.assertEqual(code, 0, err)
        return out, err

    def test_remote_add_pins_and_saves(self):
        out, err = self.add()
        self.assertIn(tls.fingerprint_sha256(self.server.cert_path), err)
        self.assertIn("certificate pinned", out)
        path = self.env["BOLT_CONFIG"]
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            saved = json.load(f)
        self.assertEqual(saved["default"], "stub")
        self.assertEqual(saved["remotes"]["stub"]["fingerprint"], tls.fingerprint_sha256(self.server.cert_path))
        self.assertEqual(saved["remotes"]["stub"]["password"], PASSWORD)
        self.assertEqual(self.server.requests[-1][:2], ("GET", "/api/status"))
        code, out, err = run_cli(["remote", "list"], self.env)
        self.assertIn("*        stub", out)

    def test_remote_add_needs_a_confirmation(self):
        code, out, err = run_cli(["remote", "add", "stub", self.url], self.env)
        self.assertEqual(code, 2)
        self.assertIn("--yes", err)
        code, out, err = run_cli(["remote", "add", "stub", self.url], self.env, stdin_text="n\n", isatty=True)
        self.assertEqual(code, 1)
        self.assertIn("not confirmed", err)
        self.assertFalse(os.path.exists(self.env["BOLT_CONFIG"]))

    def test_remote_add_with_an_expected_fingerprint(self):
        wrong = ":".join(["AB"] * 32)
        code, out, err = run_cli(["remote", "add", "stub", self.url, "--fingerprint", wrong], self.env)
        self.assertEqual(code, 1)
        self.assertIn("not the expected one", err)
        self.assertFalse(os.path.exists(self.env["BOLT_CONFIG"]))
        right = tls.fingerprint_sha256(self.server.cert_path).replace(":", "").lower()
        code, out, err = run_cli(["remote", "add", "stub", self.url, "--fingerprint", right], self.env)
        self.assertEqual(code, 0, err)

    def test_remote_add_checks_the_credentials(self):
        env = dict(self.env, BOLT_PASSWORD="wrong")
        code, out, err = run_cli(["remote", "add", "stub", self.url, "--yes"], env)
        self.assertEqual(code, 1)
        self.assertTrue(err.splitlines()[-1].startswith("bolt: invalid credentials"), err)
        self.assertFalse(os.path.exists(self.env["BOLT_CONFIG"]))

    def test_api_error_printed_and_exit_1(self):
        self.add()
        self.server.routes[("POST", "/api/projects")] = (409, {"error": "project 'demo' already exists"})
        code, out, err = run_cli(["project", "create", "demo"], self.env)
        self.assertEqual((code, out, err), (1, "", "bolt: project 'demo' already exists\n"))

    def test_limits_sends_parsed_quantities(self):
        self.add()
        limits = {"cpu_quota_us": 50000, "memory_limit_bytes": 268435456, "pids_max": 100}
        self.server.routes[("PUT", "/api/projects/p/resources")] = (200, {"name": "p", "resource_limits": limits})
        code, out, err = run_cli(["limits", "p", "--cpu", "50%", "--memory", "256M", "--pids", "100"], self.env)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.server.requests[-1], ("PUT", "/api/projects/p/resources", limits))
        self.assertIn("0.5 cores", out)
        self.assertIn("256 MiB (268435456 bytes)", out)
        code, out, err = run_cli(["limits", "p", "--json", "--memory", "256M"], self.env)
        self.assertEqual(json.loads(out), limits)

    def test_exec_passes_stdin_and_propagates_output_and_status(self):
        self.add()
        self.server.routes[("POST", "/api/projects/p/sandboxes/s/exec")] = (200, {
            "exit_code": 3, "stdout": "out é\n", "stderr": "err\n", "timed_out": False, "duration": 0.1,
            "truncated": False, "signal": None})
        code, out, err = run_cli(["exec", "p", "s", "--env", "A=1", "--cwd", "/tmp", "--timeout", "5", "--",
                                  "sh", "-c", "cat; exit 3"], self.env, stdin_text="input\n")
        self.assertEqual((code, out, err), (3, "out é\n", "err\n"))
        self.assertEqual(self.server.requests[-1][2], {"command": ["sh", "-c", "cat; exit 3"], "timeout": 5.0,
                                                       "env": {"A": "1"}, "cwd": "/tmp", "stdin": "input\n"})

    def test_exec_timeout_exits_124(self):
        self.add()
        self.server.routes[("POST", "/api/projects/p/sandboxes/s/exec")] = (200, {
            "exit_code": 137, "stdout": "", "stderr": "", "timed_out": True, "duration": 1.0,
            "truncated": False, "signal": "SIGKILL"})
        code, out, err = run_cli(["exec", "p", "s", "-n", "--", "sleep", "9"], self.env)
        self.assertEqual(code, 124)
        self.assertIn("did not finish", err)
        self.assertNotIn("stdin", self.server.requests[-1][2])

    def test_tables_and_json(self):
        self.add()
        projects = [{"name": "alpha", "created_at": "2024-01-01T00:00:00+00:00", "sandboxes": [],
                     "resource_limits": {"cpu_quota_us": 50000, "memory_limit_bytes": 536870912, "pids_max": 1024}}]
        self.server.routes[("GET", "/api/projects")] = (200, projects)
        code, out, err = run_cli(["project", "list"], self.env)
        self.assertEqual(out.splitlines()[0].split(), ["NAME", "SANDBOXES", "CPU", "MEMORY", "PIDS", "CREATED"])
        self.assertEqual(out.splitlines()[1].split(), ["alpha", "0", "0.5", "cores", "512", "MiB", "1024",
                                                       "2024-01-01T00:00:00+00:00"])
        code, out, err = run_cli(["project", "list", "--json"], self.env)
        self.assertEqual(json.loads(out), projects)

    def test_remote_add_confirmed_on_a_terminal(self):
        code, out, err = run_cli(["remote", "add", "stub", self.url, "--user", "admin"], self.env,
                                 stdin_text="y\n", isatty=True)
        self.assertEqual(code, 0, err)
        self.assertIn("Trust this certificate and pin it for remote 'stub'? [y/N]", err)

    def test_remote_use_and_remove(self):
        self.add()
        code, out, err = run_cli(["remote", "add", "second", self.url, "--yes", "--no-save-password"], self.env)
        self.assertEqual(code, 0, err)
        self.assertEqual(ConfigFile.load(self.env["BOLT_CONFIG"]).default, "stub")  # the first stays default
        self.assertIsNone(ConfigFile.load(self.env["BOLT_CONFIG"]).remotes["second"].password)
        self.assertEqual(run_cli(["remote", "use", "second"], self.env)[0], 0)
        self.assertEqual(ConfigFile.load(self.env["BOLT_CONFIG"]).default, "second")
        code, out, err = run_cli(["remote", "use", "third"], self.env)
        self.assertEqual(code, 1)
        self.assertIn("no remote called 'third'", err)
        self.assertEqual(run_cli(["remote", "remove", "second"], self.env)[0], 0)
        config = ConfigFile.load(self.env["BOLT_CONFIG"])
        self.assertEqual((sorted(config.remotes), config.default), (["stub"], None))
        # Without a stored password and without BOLT_PASSWORD, a script gets a clear error.
        run_cli(["remote", "add", "nopw", self.url, "--yes", "--no-save-password"], self.env)
        env = {"BOLT_CONFIG": self.env["BOLT_CONFIG"]}
        code, out, err = run_cli(["--remote", "nopw", "status"], env)
        self.assertEqual(code, 1)
        self.assertIn("no password for remote 'nopw'", err)

    def test_set_password_updates_the_stored_one(self):
        self.add()
        self.server.routes[("PUT", "/api/config")] = (200, {"admin_user": "admin"})
        code, out, err = run_cli(["config", "set-password"], dict(self.env, BOLT_NEW_PASSWORD="brand-new-pass"))
        self.assertEqual(code, 0, err)
        self.assertEqual(self.server.requests[-1], ("PUT", "/api/config", {"admin_password": "brand-new-pass"}))
        self.assertEqual(ConfigFile.load(self.env["BOLT_CONFIG"]).remotes["stub"].password, "brand-new-pass")
        code, out, err = run_cli(["config", "set-password"], self.env)  # no terminal, no BOLT_NEW_PASSWORD
        self.assertEqual(code, 2)

    def test_failed_password_change_keeps_the_stored_one(self):
        self.add()
        self.server.routes[("PUT", "/api/config")] = (400, {"error": "admin_password must be at least 8 characters"})
        code, out, err = run_cli(["config", "set-password"], dict(self.env, BOLT_NEW_PASSWORD="short"))
        self.assertEqual((code, err), (1, "bolt: admin_password must be at least 8 characters\n"))
        self.assertEqual(ConfigFile.load(self.env["BOLT_CONFIG"]).remotes["stub"].password, PASSWORD)


class ImageProgressTests(unittest.SynchronousTestCase):
    class FakeClient:
        def __init__(self, answers):
            self.answers = list(answers)
            self.asked = []

        def request(self, method, url_path, body=None, **kwargs):
            self.asked.append((method, url_path))
            return self.answers.pop(0)

    def wait(self, tty: bool):
        stderr = io.StringIO()
        stderr.isatty = lambda: tty
        ctx = climain.Context(climain.build_parser().parse_args(["status"]), io.StringIO(), io.StringIO(),
                              stderr, {})
        client = self.FakeClient([
            {"distro": "debian:trixie", "state": "building", "stage": "debootstrap", "elapsed_seconds": 2.0},
            {"distro": "debian:trixie", "state": "building", "stage": "debootstrap", "elapsed_seconds": 3.0},
            {"distro": "debian:trixie", "state": "ready", "size_bytes": 200 * 1024 ** 2}])
        slept = []
        info = climain._wait_for_image(ctx, client, "debian:trixie",
                                       {"distro": "debian:trixie", "state": "building", "stage": "queued",
                                        "elapsed_seconds": 0.0}, sleep=slept.append)
        self.assertEqual(info["state"], "ready")
        self.assertEqual(slept, [1.0, 1.0, 1.0])
        self.assertEqual(client.asked, [("GET", "/api/images/debian:trixie")] * 3)
        return stderr.getvalue()

    def test_plain_lines_when_not_a_terminal(self):
        self.assertEqual(self.wait(tty=False), "Building debian:trixie: queued (0 s)\n"
                                                "Building debian:trixie: debootstrap (2 s)\n")

    def test_one_updating_line_on_a_terminal(self):
        text = self.wait(tty=True)
        self.assertEqual(text.count("\n"), 0)
        self.assertEqual(text.split("\r\x1b[K"), ["", "Building debian:trixie: queued (0 s)",
                                                  "Building debian:trixie: debootstrap (2 s)",
                                                  "Building debian:trixie: debootstrap (3 s)", ""])
