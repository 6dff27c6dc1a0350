"""Schemathesis against a real server, driven by the server's own description (/api/openapi.json).

Every operation of the document gets bounded, derandomized runs (see :data:`EXAMPLES`) of data that
fits its schema and of data that does not, once with random path parameters and once aimed at a
project and sandbox that exist (``fz``/``sb``, recreated whenever a run deleted or stopped them), so
the deep routes are reached.  The answers must show:

- no 5xx, ever;
- every 4xx is ``{"error": "..."}`` JSON;
- the answers conform to the document (status codes, content types, response schemas), and data
  that breaks the document is refused;
- a request without the admin's credentials gets 401, whatever it asks (schemathesis' negative runs
  drop the Authorization header too; :meth:`test_no_operation_without_credentials` tries every
  operation, PUT /api/config included, on purpose).

Left out of the fuzzing, or fenced: PUT /api/config (it would change the password under the fuzzer;
its refusals are fuzzed on their own), image builds of suites debootstrap knows (a real download),
and the removal of the shared cached test image.  The server uses the cached image
(``base_image_dir = cached_image_root()``), so sandbox creation is an overlay mount and a pid 1;
RealServer.cleanup deletes every project the fuzzer made.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.python import log
from twisted.trial import unittest

from bolt.host.images import InvalidDistro, validate_distro
from tests.integration.server import RealServer
from tests.integration.support import (
    TEST_DISTRO, _skip, cached_image_root, ensure_test_image, require_root, require_tools,
)

#: Examples per operation, per generation mode (positive, negative) and per variant (random or
#: pinned path parameters): 4 x 40 per operation, about half a minute in all.
EXAMPLES = 40
PROJECT, SANDBOX = "fz", "sb"
#: A forward and a reverse forward of the fixture sandbox, so the DELETE routes find one; ports in
#: allowed_ports that no other test uses.
FORWARD = {"host_port": 17311, "container_port": 80}
REVERSE = {"container_port": 8080, "host_port": 17312}
DEFAULT_LIMITS = {"cpu_quota_us": 100000, "memory_limit_bytes": 536870912, "pids_max": 1024}
EXEC_TIMEOUT = 5  # seconds: a generated command never holds a run for the documented 60
NOT_FUZZED = {("PUT", "/api/config")}


def _import_schemathesis():
    try:
        import requests  # noqa: F401  (a dependency of schemathesis)
        import schemathesis
    except ImportError:
        return None
    return schemathesis


class SchemathesisTests(unittest.TestCase):
    timeout = 900

    @defer.inlineCallbacks
    def setUp(self):
        require_root(self)
        require_tools(self, "debootstrap", "iptables")
        self.st = _import_schemathesis()
        if self.st is None:
            _skip(self, "schemathesis is not installed (pip install '.[test]')")
        import requests
        yield ensure_test_image(reactor)
        self.server = RealServer(config={"base_image_dir": cached_image_root()})
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.authorization = "Basic " + base64.b64encode(f"admin:{self.server.password}".encode()).decode()
        self.session = requests.Session()
        self.addCleanup(self.session.close)
        self.schema = self.st.openapi.from_url(self.server.url + "/api/openapi.json",
                                               auth=("admin", self.server.password), verify=self.server.cert_path)
        self.fixture()

    # -- helpers -------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.server.api(method, path, body, timeout=120)

    def last_error(self) -> str:
        """The server log's last traceback (or its tail): what a 5xx left behind."""
        log = self.server.log()
        start = log.rfind("Traceback")
        return log[max(0, start - 500):start + 3000] if start >= 0 else log[-2000:]

    def fixture(self) -> None:
        """Make sure fz/sb exists and runs, with its forwards, whatever the last run did to them."""
        base = f"/api/projects/{PROJECT}"
        code, project = self.api("GET", base)
        if code == 404:
            code, project = self.api("POST", "/api/projects", {"name": PROJECT})
            self.assertEqual(code, 201, project)
        if project["resource_limits"] != DEFAULT_LIMITS:  # a fuzzed PUT .../resources may have starved it
            self.assertEqual(self.api("PUT", f"{base}/resources", DEFAULT_LIMITS)[0], 200)
        code, sandbox = self.api("GET", f"{base}/sandboxes/{SANDBOX}")
        if code == 404:
            code, sandbox = self.api("POST", f"{base}/sandboxes", {"name": SANDBOX})
            self.assertEqual(code, 201, f"{sandbox}\n{self.last_error()}")
        if sandbox["state"] != "running":
            code, sandbox = self.api("POST", f"{base}/sandboxes/{SANDBOX}/start")
            self.assertEqual(code, 200, f"{sandbox}\n{self.last_error()}")
        if str(FORWARD["host_port"]) not in sandbox["port_mappings"]:
            self.assertEqual(self.api("POST", f"{base}/sandboxes/{SANDBOX}/ports", FORWARD)[0], 200)
        if str(REVERSE["container_port"]) not in sandbox["reverse_port_mappings"]:
            self.assertEqual(self.api("POST", f"{base}/sandboxes/{SANDBOX}/reverse_ports", REVERSE)[0], 200)

    def operations(self):
        for result in self.schema.get_all_operations():
            yield result.ok()

    @staticmethod
    def pinned(operation) -> dict[str, Any]:
        """Path parameters naming the fixture (never an image: that one is shared)."""
        names = {p.name for p in operation.path_parameters}
        values = {"project": PROJECT, "host_port": FORWARD["host_port"], "container_port": REVERSE["container_port"],
                  "name": SANDBOX if "project" in names else PROJECT}
        return {k: v for k, v in values.items() if k in names}

    def run_cases(self, operation, strategy, examples: int, on_case) -> None:
        from hypothesis import HealthCheck, Phase, given, settings

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            on_case(case)

        run()

    def send(self, case, authorized: bool = True):
        headers = {"Authorization": self.authorization} if authorized else None
        if not authorized:
            (case.headers or {}).pop("Authorization", None)
        return case.call(base_url=self.server.url, session=self.session, headers=headers, timeout=120,
                         verify=self.server.cert_path)

    # -- the fuzzing ---------------------------------------------------------------------------

    def test_fuzz_every_operation(self):
        from schemathesis import GenerationMode
        from schemathesis.specs.openapi.checks import (
            content_type_conformance, negative_data_rejection, response_schema_conformance, status_code_conformance,
        )

        problems: dict[tuple[str, str], str] = {}
        statuses: collections.Counter = collections.Counter()
        skipped: collections.Counter = collections.Counter()
        started = time.monotonic()

        def problem(case, kind: str, detail: str) -> None:
            problems.setdefault((case.operation.label, kind), f"{detail}\n    reproduce: {case.as_curl_command()}")

        def on_case(case, mode):
            reason = unsafe(case)
            if reason:
                skipped[reason] += 1
                return
            response = self.send(case)
            sent = response.request.headers.get("Authorization")
            statuses[(case.operation.label, response.status_code)] += 1
            where = f"{mode.value}: {case.operation.label} -> {response.status_code} {response.text[:300]!r}"
            if response.status_code >= 500:
                problem(case, "5xx", f"{where}\n{self.last_error()}")
            if sent != self.authorization and response.status_code != 401:
                problem(case, "answered without credentials", f"{where} (Authorization: {sent!r:.60})")
            if 400 <= response.status_code < 500:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str)):
                    problem(case, "4xx body is not {error: str}", where)
            checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
            if mode == GenerationMode.NEGATIVE:
                checks.append(negative_data_rejection)
            for check in checks:
                try:
                    case.validate_response(response, checks=[check], headers={"Authorization": self.authorization},
                                           transport_kwargs={"verify": self.server.cert_path})
                except (Exception, BaseExceptionGroup) as e:  # schemathesis' FailureGroup: collected, reported together
                    problem(case, check.__name__, f"{where}\n    {str(e)[:600]}")

        for operation in self.operations():
            if (operation.method.upper(), operation.path) in NOT_FUZZED:
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for pin in (False, True):
                    if pin and not operation.path_parameters:
                        continue
                    self.fixture()
                    params = self.pinned(operation) if pin else None
                    strategy = operation.as_strategy(generation_mode=mode, path_parameters=params)
                    self.run_cases(operation, strategy, EXAMPLES, lambda case, mode=mode: on_case(case, mode))
        elapsed = time.monotonic() - started
        log.msg(f"schemathesis: {sum(statuses.values())} requests in {elapsed:.1f} s; statuses "
                f"{sorted(statuses.items())}; skipped {dict(skipped)}")

        report = "\n".join(f"{label} [{kind}]: {detail}" for (label, kind), detail in sorted(problems.items()))
        if problems:
            self.fail(f"{len(problems)} problem(s) in {elapsed:.0f} s:\n{report}")
        # The run reached past the front door: successes and refusals of several kinds, deep routes too.
        codes = collections.Counter()
        for (_, code), n in statuses.items():
            codes[code] += n
        for code in (200, 201, 400, 401, 404):
            self.assertGreater(codes[code], 0, dict(codes))
        deep = sum(n for (label, code), n in statuses.items() if "{name}/" in label and code == 200)
        self.assertGreater(deep, 10, statuses)
        self.assertLess(skipped["image build"] + skipped["shared image"], sum(codes.values()) / 10, skipped)
        # Nothing the fuzzer did broke the server: the fixture still works end to end.
        self.fixture()
        code, result = self.api("POST", f"/api/projects/{PROJECT}/sandboxes/{SANDBOX}/exec",
                                {"command": ["echo", "alive"]})
        self.assertEqual((code, result.get("stdout")), (200, "alive\n"), result)

    def test_no_operation_without_credentials(self):
        """Every operation, PUT /api/config included, with data that fits and no credentials: 401."""
        from schemathesis import GenerationMode

        before = self.api("GET", "/api/projects")
        answers: list[tuple[str, int]] = []
        for operation in self.operations():
            strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE,
                                             path_parameters=self.pinned(operation) or None)

            def on_case(case):
                if unsafe(case):
                    return
                case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
                response = self.send(case, authorized=False)
                self.assertNotIn("Authorization", response.request.headers)
                answers.append((case.operation.label, response.status_code))
                self.assertEqual(response.status_code, 401, f"{case.operation.label}: {response.text[:300]}")
                self.assertEqual(response.json(), {"error": "authentication required"})
                self.assertEqual(response.headers.get("www-authenticate"), ['Basic realm="bolt"'])

            self.run_cases(operation, strategy, 5, on_case)
        self.assertEqual({label for label, _ in answers}, {op.label for op in self.operations()})
        # ...and nothing changed: same projects, same password.
        self.assertEqual(self.api("GET", "/api/projects"), before)

    def test_config_refusals(self):
        """PUT /api/config with data that breaks its schema: always 400, and the password stays."""
        from schemathesis import GenerationMode

        operation = self.schema["/api/config"]["PUT"]
        with open(self.server.config_path) as f:
            stored = json.load(f)["admin_password"]
        seen: list[int] = []

        def on_case(case):
            if acceptable_config_change(case.body):
                return  # negative generation may still produce a change the server rightly accepts
            response = self.send(case)
            if response.request.headers.get("Authorization") != self.authorization:
                # a negative case may be one without credentials (schemathesis drops the header)
                self.assertEqual(response.status_code, 401, response.text[:300])
                return
            seen.append(response.status_code)
            self.assertEqual(response.status_code, 400, f"{case.body!r:.200} -> {response.text[:300]}")
            self.assertEqual(set(response.json()), {"error"})

        self.run_cases(operation, operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), 40, on_case)
        self.assertGreater(len(seen), 20)
        with open(self.server.config_path) as f:
            self.assertEqual(json.load(f)["admin_password"], stored)
        self.assertEqual(self.api("GET", "/api/status")[0], 200)


def acceptable_config_change(body: Any) -> bool:
    """What bolt.admin accepts: admin_user and/or admin_password, each valid (mirrors its rules)."""
    import re
    if not isinstance(body, dict) or not body or not set(body) <= {"admin_user", "admin_password"}:
        return False
    if "admin_user" in body and not (isinstance(body["admin_user"], str)
                                     and re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", body["admin_user"])):
        return False
    if "admin_password" in body:
        password = body["admin_password"]
        if not isinstance(password, str) or not 8 <= len(password) <= 1024:
            return False
    return True


def unsafe(case) -> str | None:
    """Why a generated case must not be sent to a server that shares the cached test image."""
    method, path = case.operation.method.upper(), case.operation.path
    body = case.body if isinstance(case.body, dict) else {}
    distros = [body.get("distro")] + [(case.path_parameters or {}).get("distro")]
    for distro in distros:
        if isinstance(distro, str) and distro != TEST_DISTRO and method == "POST":
            try:
                validate_distro(distro)
            except InvalidDistro:
                continue
            return "image build"  # a suite debootstrap knows: a real download and minutes of dpkg
    if method == "DELETE" and path == "/api/images/{distro}" and isinstance(distros[1], str) and (
            distros[1] == TEST_DISTRO or os.path.exists(os.path.join(cached_image_root(),
                                                                     distros[1].replace(":", "/") + ".json"))):
        return "shared image"  # every test run on this host builds on it
    if path.endswith("/exec") and isinstance(case.body, dict) and "command" in case.body:
        timeout = case.body.get("timeout", 60)  # the default is 60 s: too long for a fuzzing run
        # Only timeouts the server would take are shortened: a negative case stays negative.
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and EXEC_TIMEOUT < timeout <= 3600:
            case.body["timeout"] = EXEC_TIMEOUT
    return None
