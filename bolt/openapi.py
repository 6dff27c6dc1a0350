"""The OpenAPI 3 description of the HTTP API, served at GET /api/openapi.json.

Written by hand next to the routes it describes; a test checks that every route of the Klein app is
described here and that nothing else is.
"""

from __future__ import annotations

from typing import Any

from bolt import __version__

NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "maxLength": 63}
DISTRO = {"type": "string", "pattern": "^(debian|ubuntu):[a-z][a-z0-9-]{0,31}$"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
PORT_MAP = {"type": "object", "additionalProperties": {"type": "integer"},
            "description": "keys are port numbers as strings"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], required: list[str] = (), extra: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": extra}
    if required:
        out["required"] = list(required)
    return out


SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": {"type": "string"}}, ["error"]),
    "Limits": obj({"cpu_quota_us": {"type": "integer", "minimum": 1000,
                                    "description": "µs of CPU per 100000 µs period, at most cores × 100000"},
                   "memory_limit_bytes": {"type": "integer", "minimum": 16777216},
                   "pids_max": {"type": "integer", "minimum": 16}}),
    "Sandbox": obj({"project": NAME, "name": NAME, "distro": DISTRO, "created_at": {"type": "string", "format": "date-time"},
                    "state": {"type": "string", "enum": ["running", "stopped"]}, "pid": {"type": "integer"},
                    "address": {"type": "string"}, "port_mappings": PORT_MAP, "reverse_port_mappings": PORT_MAP},
                   ["project", "name", "distro", "created_at", "state", "port_mappings", "reverse_port_mappings"], True),
    "Project": obj({"name": NAME, "created_at": {"type": "string", "format": "date-time"},
                    "resource_limits": ref("Limits"), "sandboxes": {"type": "array", "items": ref("Sandbox")}},
                   ["name", "created_at", "resource_limits", "sandboxes"]),
    "Image": obj({"distro": DISTRO, "state": {"type": "string", "enum": ["building", "ready", "failed"]},
                  "stage": {"type": "string"}, "elapsed_seconds": {"type": "number"},
                  "size_bytes": {"type": "integer"}, "build_seconds": {"type": "number"},
                  "built_at": {"type": "string"}, "error": {"type": "string"},
                  "sandboxes": {"type": "array", "items": {"type": "string"}}}, ["distro", "state"]),
    "Status": obj({
        "projects": {"type": "array", "items": obj({
            "name": NAME, "created_at": {"type": "string"},
            "resource_limits": obj({"cpu_quota_us": {"type": "integer"}, "memory_limit_bytes": {"type": "integer"}}),
            "sandboxes": {"type": "array", "items": obj({
                "name": NAME, "distro": DISTRO, "created_at": {"type": "string"},
                "port_mappings": PORT_MAP, "reverse_port_mappings": PORT_MAP})}})},
        "system": obj({"cpu_usage": {"type": "number"}, "memory_usage": {"type": "number"},
                       "disk_usage": {"type": "number"}}),
        "version": {"type": "string"}}, ["projects", "system", "version"]),
    "Update": obj({"update_available": {"type": "boolean"}, "latest_version": {"type": ["string", "null"]},
                   "current_version": {"type": "string"}, "reason": {"type": "string"}},
                  ["update_available", "current_version"]),
    "ExecRequest": obj({
        "command": {"oneOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1},
                              {"type": "string", "description": "run by /bin/sh -c"}]},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600, "default": 60},
        "stdin": {"type": "string"}, "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cwd": {"type": "string"}}, ["command"]),
    "ExecResult": obj({"exit_code": {"type": "integer"}, "stdout": {"type": "string"}, "stderr": {"type": "string"},
                       "timed_out": {"type": "boolean"}, "duration": {"type": "number"},
                       "truncated": {"type": "boolean"}, "signal": {"type": ["string", "null"]}},
                      ["exit_code", "stdout", "stderr", "timed_out", "duration"]),
    "ShellTicket": obj({"port": PORT, "token": {"type": "string"}, "expires_at": {"type": "string"},
                        "expires_in": {"type": "integer"}}, ["port", "token", "expires_at"]),
    "Forwards": obj({"port_mappings": PORT_MAP, "reverse_port_mappings": PORT_MAP}),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


ERRORS = {
    "400": _error("bad input: the message states the rule"),
    "401": _error("missing or wrong credentials"),
    "404": _error("no such project, sandbox, image, forward or endpoint"),
    "409": _error("conflicts with the current state (duplicate, in use, not running)"),
    "413": _error("request body over 1 MiB"),
    "429": _error("too many failed logins from this address"),
    "500": _error("internal error"),
    "502": _error("a tool or remote server failed (debootstrap, the update URL)"),
    "503": _error("a pool is exhausted (shell ports, addresses)"),
}


def op(summary: str, status: str, schema: dict[str, Any] | None, body: dict[str, Any] | None = None,
       errors: tuple[str, ...] = ("400", "401", "404", "409")) -> dict[str, Any]:
    response: dict[str, Any] = {"description": summary}
    if schema is not None:
        response["content"] = {"application/json": {"schema": schema}}
    out: dict[str, Any] = {"summary": summary, "responses": {status: response}}
    for code in sorted(set(errors) | {"401", "429", "500"}):
        out["responses"][code] = ERRORS[code]
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        out["responses"]["413"] = ERRORS["413"]
    return out


P = [{"name": "project", "in": "path", "required": True, "schema": NAME}]
S = P + [{"name": "name", "in": "path", "required": True, "schema": NAME}]
DELETED = obj({"deleted": {"type": "string"}}, ["deleted"])
SANDBOX = "/api/projects/{project}/sandboxes/{name}"

PATHS: dict[str, dict[str, Any]] = {
    "/api/status": {"get": op("server status: projects, sandboxes, system figures", "200", ref("Status"), errors=())},
    "/api/update": {"get": op("check for a newer version", "200", ref("Update"), errors=("502",))},
    "/api/openapi.json": {"get": op("this description", "200", {"type": "object"}, errors=())},
    "/api/config": {"put": op("change the admin credentials", "200", obj({"admin_user": {"type": "string"}}),
                              obj({"admin_user": {"type": "string"}, "admin_password": {"type": "string", "minLength": 8}}),
                              errors=("400",))},
    "/api/projects": {
        "get": op("list projects", "200", {"type": "array", "items": ref("Project")}, errors=()),
        "post": op("create a project", "201", ref("Project"), obj({"name": NAME}, ["name"]), errors=("400", "409")),
    },
    "/api/projects/{name}": {
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": NAME}],
        "get": op("one project", "200", ref("Project"), errors=("400", "404")),
        "delete": {**op("delete a project (?force=1 deletes its sandboxes first)", "200", DELETED),
                   "parameters": [{"name": "force", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}}]},
    },
    "/api/projects/{name}/resources": {
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": NAME}],
        "put": op("set the project's pooled limits (applied at once)", "200", ref("Project"), ref("Limits")),
    },
    "/api/images": {
        "get": op("list base images", "200", {"type": "array", "items": ref("Image")}, errors=()),
        "post": {**op("build a base image (202 while building, 200 when ready)", "202", ref("Image"),
                      obj({"distro": DISTRO}, ["distro"]), errors=("400",)),
                 },
    },
    "/api/images/{distro}": {
        "parameters": [{"name": "distro", "in": "path", "required": True, "schema": DISTRO}],
        "get": op("one base image", "200", ref("Image"), errors=("400", "404")),
        "delete": op("remove a ready image no sandbox uses", "200", DELETED),
    },
    "/api/projects/{project}/sandboxes": {
        "parameters": P,
        "get": op("list a project's sandboxes", "200", {"type": "array", "items": ref("Sandbox")}, errors=("400", "404")),
        "post": op("create (and start) a sandbox; waits for its image", "201", ref("Sandbox"),
                   obj({"name": NAME, "distro": DISTRO}, ["name"]), errors=("400", "404", "409", "502", "503")),
    },
    SANDBOX: {"parameters": S,
              "get": op("one sandbox", "200", ref("Sandbox"), errors=("400", "404")),
              "delete": op("delete a sandbox: its processes, files, forwards", "200", DELETED)},
    SANDBOX + "/start": {"parameters": S, "post": op("start a stopped sandbox", "200", ref("Sandbox"))},
    SANDBOX + "/stop": {"parameters": S, "post": op("stop a sandbox (SIGTERM, then SIGKILL)", "200", ref("Sandbox"))},
    SANDBOX + "/exec": {"parameters": S,
                        "post": op("run a command in a running sandbox", "200", ref("ExecResult"), ref("ExecRequest"))},
    SANDBOX + "/ports": {"parameters": S,
                         "post": op("forward a host port (in allowed_ports) to a sandbox port", "200", ref("Forwards"),
                                    obj({"host_port": PORT, "container_port": PORT}, ["host_port", "container_port"]))},
    SANDBOX + "/ports/{host_port}": {
        "parameters": S + [{"name": "host_port", "in": "path", "required": True, "schema": PORT}],
        "delete": op("remove a forward", "200", ref("Forwards"))},
    SANDBOX + "/reverse_ports": {
        "parameters": S,
        "post": op("reach the host's 127.0.0.1:host_port from the sandbox's 127.0.0.1:container_port", "200",
                   ref("Forwards"), obj({"container_port": PORT, "host_port": PORT}, ["container_port", "host_port"]))},
    SANDBOX + "/reverse_ports/{container_port}": {
        "parameters": S + [{"name": "container_port", "in": "path", "required": True, "schema": PORT}],
        "delete": op("remove a reverse forward", "200", ref("Forwards"))},
    SANDBOX + "/shell": {"parameters": S,
                         "post": op("a one-shot token and port for the TCP shell", "200", ref("ShellTicket"),
                                    errors=("400", "404", "409", "503"))},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Bolt sandbox server", "version": __version__,
                 "description": "Lightweight sandboxes on one host. Every endpoint needs HTTP Basic auth."},
        "servers": [{"url": "/"}],
        "security": [{"basic": []}],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}, "schemas": SCHEMAS},
        "paths": PATHS,
    }
