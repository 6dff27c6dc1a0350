"""End to end: the real ``twistd -n bolt`` on loopback, real HTTPS clients, SIGKILL and restart."""

from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
import threading
import time

from twisted.trial import unittest

from tests.integration.server import TWISTD, RealServer

STATUS_SHAPE_KEYS = {"projects", "system", "version"}


class ServerTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.server = RealServer()
        self.addCleanup(self.server.cleanup)

    def test_make_run_style_status_with_curl(self):
        s = self.server.start()
        result = s.curl("-k", "-u", f"admin:{s.password}", f"{s.url}/api/status")
        self.assertEqual(result.returncode, 0, result.stderr)
        body = json.loads(result.stdout)
        self.assertEqual(set(body), STATUS_SHAPE_KEYS)
        self.assertEqual(set(body["system"]), {"cpu_usage", "memory_usage", "disk_usage"})
        for value in body["system"].values():
            self.assertTrue(0.0 <= value <= 100.0)
        # The certificate verifies as-is for 127.0.0.1 (its SAN), no -k needed.
        verified = s.curl("--cacert", s.cert_path, "-u", f"admin:{s.password}", f"{s.url}/api/projects")
        self.assertEqual((verified.returncode, json.loads(verified.stdout)), (0, []), verified.stderr)

    def test_projects_survive_sigkill_with_exact_created_at(self):
        s = self.server.start()
        created = {}
        for name in ("alpha", "beta", "gamma"):
            code, body = s.api("POST", "/api/projects", {"name": name})
            self.assertEqual(code, 201)
            created[name] = body["created_at"]
            time.sleep(1.0 if name == "alpha" else 0)  # distinct timestamps
        s.kill()
        s.start()
        code, listed = s.api("GET", "/api/projects")
        self.assertEqual(code, 200)
        self.assertEqual({p["name"]: p["created_at"] for p in listed}, created)
        code, status = s.api("GET", "/api/status")
        self.assertEqual({p["name"]: p["created_at"] for p in status["projects"]}, created)

    def test_sigkill_during_writes_loses_nothing_acknowledged(self):
        s = self.server.start()
        acknowledged: dict[str, str] = {}
        stop = threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                try:
                    code, body = s.api("POST", "/api/projects", {"name": f"p{i}"}, timeout=5)
                except Exception:
                    return  # the server died under us
                if code == 201:
                    acknowledged[body["name"]] = body["created_at"]
                i += 1

        for round_ in range(3):
            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(0.3 + random.random() * 0.4)
            s.kill()
            stop.set()
            thread.join(10)
            stop.clear()
            s.start()
            code, listed = s.api("GET", "/api/projects")
            self.assertEqual(code, 200)
            stored = {p["name"]: p["created_at"] for p in listed}
            for name, created_at in acknowledged.items():
                self.assertEqual(stored.get(name), created_at, f"round {round_}: {name} lost")
        self.assertTrue(acknowledged, "no write was acknowledged; the test proved nothing")
        leftovers = [f for f in os.listdir(os.path.join(s.data_dir, "projects")) if not f.endswith(".json")]
        self.assertEqual(leftovers, [])

    def test_files_modes_and_no_plain_password(self):
        s = self.server.start()
        etc = os.path.dirname(s.config_path)
        self.assertEqual(stat.S_IMODE(os.stat(s.config_path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(etc).st_mode), 0o750)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(etc, "key.pem")).st_mode), 0o600)
        with open(s.config_path) as f:
            text = f.read()
        self.assertNotIn(s.password, text)
        self.assertRegex(json.loads(text)["admin_password"], r"^scrypt\$n=131072,r=8,p=1\$")
        s.api("POST", "/api/projects", {"name": "modes"})
        project_file = os.path.join(s.data_dir, "projects", "modes.json")
        self.assertEqual(stat.S_IMODE(os.stat(project_file).st_mode), 0o600)

    def test_access_log_without_secrets(self):
        s = self.server.start()
        s.api("GET", "/api/status")
        s.api("GET", "/api/status", password="wrong-password")
        s.api("PUT", "/api/config", {"admin_password": "second-secret"})
        s.stop()
        log = s.log()
        self.assertRegex(log, r"GET /api/status 200 127\.0\.0\.1 [\d.]+ms")
        self.assertRegex(log, r"GET /api/status 401 127\.0\.0\.1")
        self.assertRegex(log, r"PUT /api/config 200 127\.0\.0\.1")
        for secret in (s.password, "wrong-password", "second-secret", "Authorization", "Basic "):
            self.assertNotIn(secret, log)

    def test_password_change_over_https(self):
        s = self.server.start()
        self.assertEqual(s.api("GET", "/api/status")[0], 200)
        code, _ = s.api("PUT", "/api/config", {"admin_password": "brand-new-pass"})
        self.assertEqual(code, 200)
        self.assertEqual(s.api("GET", "/api/status")[0], 401)
        self.assertEqual(s.api("GET", "/api/status", password="brand-new-pass")[0], 200)
        s.kill()
        s.start()  # the change was persisted
        self.assertEqual(s.api("GET", "/api/status", password="brand-new-pass")[0], 200)
        self.assertEqual(s.api("GET", "/api/status")[0], 401)

    def test_generated_password_is_logged_once_and_works(self):
        s = RealServer(with_password=False)
        self.addCleanup(s.cleanup)
        del s.env["BOLT_ADMIN_PASSWORD"]
        s.start()
        found = re.findall(r"Log in as 'admin' with:\s*\n\s*(\S+)", s.log())
        self.assertEqual(len(found), 1, s.log())
        s.password = found[0]
        self.assertEqual(s.api("GET", "/api/status")[0], 200)
        s.kill()
        s.start()
        self.assertEqual(len(re.findall("Log in as", s.log())), 1)  # not generated again

    def test_body_over_one_mebibyte_is_413(self):
        s = self.server.start()
        code, body = s.api("POST", "/api/projects", raw=b'{"name": "' + b"a" * (1024 * 1024 + 10) + b'"}')
        self.assertEqual(code, 413)
        self.assertIn("1 MiB", body["error"])
        self.assertEqual(s.api("GET", "/api/projects"), (200, []))

    def test_tls_1_1_refused_1_2_accepted(self):
        s = self.server.start()
        old = subprocess.run(["curl", "-sk", "--tlsv1.0", "--tls-max", "1.1", "--ciphers", "DEFAULT:@SECLEVEL=0",
                              f"{s.url}/api/status"], capture_output=True, text=True)
        self.assertNotEqual(old.returncode, 0)
        self.assertEqual(old.stdout, "")
        new = subprocess.run(["curl", "-sk", "--tlsv1.2", "--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}",
                              f"{s.url}/api/status"], capture_output=True, text=True)
        self.assertEqual(new.stdout, "401")

    def test_plain_http_gets_no_api(self):
        s = self.server.start()
        plain = subprocess.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{s.port}/api/status"],
                               capture_output=True, text=True)
        self.assertNotIn("projects", plain.stdout)


class StartupRefusals(unittest.SynchronousTestCase):
    """Bad options, bad config and damaged state stop the server with a clear message."""

    def setUp(self) -> None:
        self.server = RealServer()
        self.addCleanup(self.server.cleanup)

    def run_server(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv or self.server.argv(), env=self.server.env, capture_output=True,
                              text=True, timeout=60)

    def test_bad_options_are_usage_errors(self):
        for extra in (["--port", "70000"], ["--port", "http"], ["--host", "not-an-address"]):
            result = self.run_server(TWISTD, "-n", "--pidfile=", "bolt", *extra)
            self.assertNotEqual(result.returncode, 0, extra)
            self.assertIn("--", result.stdout + result.stderr)

    def test_unknown_config_key(self):
        self.server.write_config({"colour": "blue"})
        result = self.run_server()
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr + self.server.log()
        self.assertIn(self.server.config_path, output)
        self.assertIn("'colour'", output)

    def test_bad_config_value(self):
        self.server.write_config({"allowed_ports": "20000-10"})
        result = self.run_server()
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr + self.server.log()
        self.assertIn("'allowed_ports'", output)
        self.assertIn(self.server.config_path, output)

    def test_invalid_json_config(self):
        with open(self.server.config_path, "w") as f:
            f.write("{not json")
        result = self.run_server()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("not valid JSON", result.stdout + result.stderr + self.server.log())

    def test_damaged_state_refuses_to_start(self):
        s = self.server.start()
        s.api("POST", "/api/projects", {"name": "precious"})
        s.kill()
        path = os.path.join(s.data_dir, "projects", "precious.json")
        with open(path, "r+") as f:
            f.truncate(20)  # damaged by someone else
        result = self.run_server()
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr + s.log()
        self.assertIn(path, output)
        self.assertIn("will not start", output)
        with open(path) as f:
            self.assertEqual(len(f.read()), 20)  # left as found, not replaced by an empty state


class TacFile(unittest.SynchronousTestCase):
    def test_twistd_ny_bolt_tac(self):
        server = RealServer()
        self.addCleanup(server.cleanup)
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(server.env, BOLT_HOST="127.0.0.1", BOLT_PORT=str(server.port),
                   BOLT_CONFIG=server.config_path, BOLT_DATA_DIR=server.data_dir)
        process = subprocess.Popen([TWISTD, "-ny", os.path.join(repo, "bolt.tac"), "--pidfile=",
                                    "--logfile", server.log_path], env=env, cwd=server.root,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server.process = process
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                code, body = server.api("GET", "/api/status", timeout=2)
                break
            except OSError:
                self.assertIsNone(process.poll(), server.log())
                time.sleep(0.1)
        else:
            self.fail("bolt.tac never answered: " + server.log())
        self.assertEqual(code, 200)
        self.assertEqual(set(body), STATUS_SHAPE_KEYS)
