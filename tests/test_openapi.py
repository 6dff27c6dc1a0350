"""The OpenAPI description matches the Klein app: every route described, nothing else."""

from __future__ import annotations

import json
import re

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest

from bolt import openapi
from bolt.api import BoltAPI
from tests.helpers import PASSWORD, World


def app_routes() -> set[tuple[str, str]]:
    routes = set()
    for rule in BoltAPI.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def described_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, item in openapi.PATHS.items() for method in item if method != "parameters"}


class OpenAPITests(unittest.TestCase):
    def test_every_route_is_described_and_nothing_else(self):
        self.assertEqual(described_routes(), app_routes())

    def test_path_parameters_are_declared(self):
        for path, item in openapi.PATHS.items():
            names = set(re.findall(r"{([^}]+)}", path))
            declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
            self.assertEqual(names, declared, path)

    def test_every_operation_documents_its_errors_and_refs_resolve(self):
        text = json.dumps(openapi.document())
        for name in re.findall(r'"#/components/schemas/([^"]+)"', text):
            self.assertIn(name, openapi.SCHEMAS)
        for path, item in openapi.PATHS.items():
            for method, operation in item.items():
                if method == "parameters":
                    continue
                self.assertIn("401", operation["responses"], (path, method))
                self.assertTrue(any(code.startswith("2") for code in operation["responses"]), (path, method))

    @defer.inlineCallbacks
    def test_served_at_api_openapi_json(self):
        http = StubTreq(World(self).api.resource())
        response = yield http.get("https://bolt.test/api/openapi.json", auth=("admin", PASSWORD))
        body = json.loads((yield response.content()))
        self.assertEqual(response.code, 200)
        self.assertEqual(body["openapi"], "3.1.0")
        self.assertIn("/api/projects/{project}/sandboxes/{name}/exec", body["paths"])
        response = yield http.get("https://bolt.test/api/openapi.json")
        self.assertEqual(response.code, 401)
