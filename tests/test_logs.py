"""bolt.logs.TextObserver writes exactly the lines twistd's text observer would, one write per line."""

from __future__ import annotations

import os
import subprocess
import sys
from unittest import mock

from twisted.logger import LogLevel, Logger, eventAsJSON, eventFromJSON, formatEventAsClassicLogText, formatTime
from twisted.python.failure import Failure
from twisted.trial import unittest

from bolt.logs import TextObserver

T = 1_780_000_000.25  # a moment, with a fraction of a second


def events() -> list[dict]:
    """Events of every shape the server emits, and the odd ones."""
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    plain = {"log_format": "GET /api/status 200 127.0.0.1 0.4ms", "log_namespace": "bolt.access",
             "log_level": LogLevel.info, "log_time": T, "method": "GET", "status": 200}
    return [
        plain,
        {**plain, "log_format": "two\nlines"},
        {**plain, "log_system": "-"},
        {**plain, "log_system": 42},
        {**plain, "log_format": "sandbox {name} started in {ms:.1f} ms", "name": "web", "ms": 65.83},
        {**plain, "log_format": "a path with {{braces}}"},
        {**plain, "log_format": "no such field {missing}"},
        {**plain, "log_format": "failed", "log_failure": failure},
        {**plain, "log_format": None},
        {**plain, "log_format": ""},
        {**plain, "log_format": "no time", "log_time": None},
        {"log_format": "bare"},
        eventFromJSON(eventAsJSON({**plain, "log_format": "flattened {status}"})),
        {**plain, "log_format": "caf\u00e9 \U0001f680"},
        {**plain, "log_system": "two\nlines"},
        {**plain, "log_namespace": "name\nspace", "log_format": "and\ntext"},
    ]


class TextObserverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.read_end, write_end = os.pipe()
        self.addCleanup(os.close, self.read_end)
        self.addCleanup(os.close, write_end)
        self.observer = TextObserver(write_end)

    def output(self) -> bytes:
        os.set_blocking(self.read_end, False)
        try:
            return os.read(self.read_end, 1 << 20)
        except BlockingIOError:
            return b""

    def test_lines_are_twisteds_classic_text(self) -> None:
        for event in events():
            expected = formatEventAsClassicLogText(event) or ""
            self.observer(dict(event))
            self.assertEqual(self.output().decode("utf-8"), expected, event.get("log_format"))

    def test_a_real_logger_event(self) -> None:
        log = Logger(namespace="bolt.test", observer=self.observer)
        log.warn("disk {path} is {percent}% full", path="/var/bolt", percent=91)
        line = self.output().decode()
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[bolt\.test#warn\] "
                               r"disk /var/bolt is 91% full\n$")

    def test_the_timestamp_follows_the_second(self) -> None:
        for when in (T, T + 0.5, T + 0.75, T + 1, T + 3600.9):
            self.assertEqual(self.observer.time(when), formatTime(when))
        self.assertEqual(self.observer.time(None), "-")

    def test_each_line_is_one_write_and_short_writes_are_finished(self) -> None:
        chunks: list[bytes] = []

        def short_write(fd: int, data) -> int:
            chunks.append(bytes(data[:3]))
            return len(chunks[-1])

        with mock.patch("bolt.logs.os.write", short_write):
            self.observer({"log_format": "hello there", "log_system": "x", "log_time": T})
        self.assertEqual(b"".join(chunks), (formatTime(T) + " [x] hello there\n").encode())

    def test_an_event_without_text_writes_nothing(self) -> None:
        with mock.patch("bolt.logs.os.write") as write:
            self.observer({"log_namespace": "x", "log_time": T})
        write.assert_not_called()


class TwistdLoggerTests(unittest.TestCase):
    def test_twistd_takes_it_as_its_logger_and_it_writes_to_standard_output(self) -> None:
        """``twistd --logger=bolt.logs.observer`` runs an app whose lines arrive on stdout, prints included."""
        tac = self.mktemp()
        with open(tac, "w") as f:
            f.write("from twisted.application import service\n"
                    "from twisted.internet import reactor\n"
                    "from twisted.logger import Logger\n"
                    "application = service.Application('t')\n"
                    "Logger(namespace='bolt.t').info('hello {who}', who='world')\n"
                    "reactor.callWhenRunning(print, 'printed')\n"
                    "reactor.callWhenRunning(reactor.stop)\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        done = subprocess.run([twistd, "-n", "--pidfile=", "--logger=bolt.logs.observer", "-y", tac],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertRegex(done.stdout, r"\[bolt\.t#info\] hello world\n")
        self.assertRegex(done.stdout, r"\[stdout#info\] printed\n")
        self.assertIn("Server Shut Down.", done.stdout)
