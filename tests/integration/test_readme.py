"""README.rst's curl commands, run in order against a real server: the manual stays true."""

from __future__ import annotations

import json
import os
import re
import subprocess

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.integration.server import RealServer
from tests.integration.support import cached_image_root, ensure_test_image, require_root, require_tools

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.rst")


def readme_commands() -> list[str]:
    """Every command of README.rst's literal blocks that starts with curl (continuations joined)."""
    with open(README) as f:
        text = f.read().replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line.strip()) for line in text.splitlines()
            if line.startswith("    curl ")]


class ReadmeCommands(unittest.TestCase):
    timeout = 600

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "curl")
        yield ensure_test_image(reactor)
        # The README's examples use port 10001/10002 for forwards: allowed and free here.
        self.server = RealServer(config={"base_image_dir": cached_image_root()})
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def test_every_curl_command_of_the_readme_succeeds(self):
        commands = readme_commands()
        self.assertGreaterEqual(len(commands), 25, "the README lost its API examples")
        env = dict(os.environ, BOLT=self.server.url, AUTH=f"admin:{self.server.password}")
        for command in commands:
            command = command.replace("https://127.0.0.1:5000", self.server.url)
            command = command.replace("admin:PASSWORD", f"admin:{self.server.password}")
            result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
            self.assertEqual(result.returncode, 0, f"{command}\n{result.stdout}\n{result.stderr}")
            body = json.loads(result.stdout)  # every answer is JSON
            self.assertNotIn("error", body if isinstance(body, dict) else {}, command)
        self.server.password = "a-new-secret"  # the README's last command changed it
        code, projects = self.server.api("GET", "/api/projects")
        self.assertEqual((code, [p["name"] for p in projects]), (200, ["demo"]))  # "web" was force-deleted
