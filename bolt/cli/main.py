"""``bolt``: the command tree (argparse) and one small function per command.

Exit status: 0 on success; 1 when the server refused (its message is printed as ``bolt: ...`` on
stderr), could not be reached, or its certificate is not the pinned one; 2 for usage errors (bad
arguments, a size that does not parse); 130 when interrupted with Ctrl-C.  ``bolt exec`` exits with
the command's status: its exit code, 128+N when a signal N killed it, 124 when it ran out of time
(as coreutils ``timeout`` does).  ``bolt shell`` exits 0 when the session ends (the telnet protocol
carries no exit status).

``--json`` (before or after the command) prints the server's JSON instead of tables;
``--remote NAME`` picks a remote other than the default.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import ssl
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

from bolt import __version__
from bolt.cli import completion, output
from bolt.cli.client import (ApiError, Client, ClientError, ConnectError, PinError, connect_pinned,
                             describe_certificate, fetch_certificate, fingerprint, path)
from bolt.cli.config import (REMOTE_NAME, ConfigFile, ConfigFileError, Remote, normalize_fingerprint,
                             normalize_url)
from bolt.cli.output import clean, fields, table
from bolt.cli.shell import Session, ShellError, parse_escape_char
from bolt.cli.sizes import CPU_PERIOD_US, QuantityError, format_cpu, format_size, parse_cpu, parse_size

EXIT_API = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXEC_TIMEOUT_DEFAULT = 60.0
LONG_TIMEOUT = 3600.0  # creating a sandbox may wait for its image to be built


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see; exits 2."""


class CommandFailed(Exception):
    """The command could not do its work for a reason the user must fix; exits 1."""


# -- the context a command runs in ------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO,
                 env: Mapping[str, str]) -> None:
        self.args = args
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.env = env
        self.out = output.Printer(stdout, bool(getattr(args, "json", False)))
        self._config: ConfigFile | None = None

    @property
    def json(self) -> bool:
        return self.out.json

    def config(self) -> ConfigFile:
        if self._config is None:
            self._config = ConfigFile.load(self.env.get("BOLT_CONFIG") or None)
            for warning in self._config.warnings:
                self.warn(warning)
        return self._config

    def remote(self) -> Remote:
        return self.config().choose(getattr(self.args, "remote", None) or self.env.get("BOLT_REMOTE"))

    def password(self, remote: Remote) -> str:
        if self.env.get("BOLT_PASSWORD"):
            return self.env["BOLT_PASSWORD"]
        if remote.password is not None:
            return remote.password
        if self.interactive():
            return getpass.getpass(f"Password for {remote.user} at {remote.url}: ")
        raise CommandFailed(f"no password for remote {remote.name!r}: set BOLT_PASSWORD or run on a terminal")

    def client(self) -> Client:
        remote = self.remote()
        return Client(remote, self.password(remote))

    def interactive(self) -> bool:
        try:
            return self.stdin.isatty()
        except (AttributeError, ValueError):
            return False

    def warn(self, text: str) -> None:
        self.stderr.write(f"bolt: warning: {text}\n")
        self.stderr.flush()

    def say(self, text: str) -> None:
        """A line of dialogue for the person at the terminal (stderr, so stdout stays the result)."""
        self.stderr.write(text + "\n")
        self.stderr.flush()


# -- remotes -------------------------------------------------------------------------------------


def cmd_remote_add(ctx: Context, a) -> int:
    try:
        url = normalize_url(a.url)
        expected = normalize_fingerprint(a.fingerprint) if a.fingerprint else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    if REMOTE_NAME.fullmatch(a.name) is None:
        raise UsageError(f"invalid remote name {a.name!r}: 1-63 characters of letters, digits, '_', '.', '-', "
                         "starting with a letter or digit")
    config = ctx.config()
    probe = Remote(a.name, url, "", None, "", "0" * 64)
    der = fetch_certificate(probe.host, probe.port)
    pem = ssl.DER_cert_to_PEM_cert(der)
    presented = fingerprint(der)
    ctx.say(f"The server at {url} presents this certificate:")
    try:
        details = describe_certificate(probe.host, probe.port, pem)
    except (ClientError, ssl.SSLError, OSError) as e:
        details = {}
        ctx.say(f"  (its details could not be read: {getattr(e, 'verify_message', None) or e})")
    for line in _certificate_lines(details):
        ctx.say("  " + line)
    ctx.say(f"  SHA-256 fingerprint: {presented}")
    if expected is not None:
        if expected != presented:
            raise PinError(f"the certificate's fingerprint is not the expected one; nothing was saved.\n"
                           f"  expected:  SHA256 {expected}\n  presented: SHA256 {presented}")
        ctx.say("  This is the expected fingerprint (--fingerprint).")
    elif not a.yes:
        if not ctx.interactive():
            raise UsageError("the certificate must be confirmed: run on a terminal, or pass --yes, or "
                             "--fingerprint SHA256 with the fingerprint you expect")
        ctx.stderr.write(f"Trust this certificate and pin it for remote {a.name!r}? [y/N] ")
        ctx.stderr.flush()
        answer = ctx.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise CommandFailed("not confirmed; nothing was saved")
    user = a.user
    if user is None:
        user = "admin"
        if ctx.interactive() and not ctx.env.get("BOLT_PASSWORD"):
            ctx.stderr.write("User [admin]: ")
            ctx.stderr.flush()
            user = ctx.stdin.readline().strip() or "admin"
    password = ctx.env.get("BOLT_PASSWORD")
    if not password:
        if not ctx.interactive():
            raise UsageError("no password: set BOLT_PASSWORD or run on a terminal")
        password = getpass.getpass(f"Password for {user} at {url}: ")
    remote = Remote(a.name, url, user, None if a.no_save_password else password, pem, presented,
                    shell_tls=a.shell_tls)
    # From here on the pinned certificate is the only one trusted: this request checks the chain,
    # the host name in its subjectAltName, the fingerprint, and the credentials.
    status = Client(remote, password).request("GET", "/api/status")
    replaced = a.name in config.remotes
    try:
        config.add(remote)
    except ConfigFileError as e:
        raise UsageError(str(e)) from None
    if a.default:
        config.default = a.name
    config.save()
    summary = {"name": a.name, "url": url, "user": user, "fingerprint": presented,
               "default": config.default == a.name, "server_version": status.get("version")}
    text = (f"Remote {a.name!r} {'replaced' if replaced else 'added'}: {url} (bolt {clean(status.get('version'))}), "
            f"certificate pinned.")
    if config.default == a.name:
        text += "\nIt is the default remote."
    if not a.no_save_password:
        text += f"\nThe password is stored in {config.path} (mode 0600)."
    ctx.out.result(summary, text)
    return 0


def _certificate_lines(details: dict[str, Any]) -> list[str]:
    lines = []
    subject = ", ".join(f"{k}={v}" for rdn in details.get("subject", ()) for k, v in rdn)
    if subject:
        lines.append(f"subject: {clean(subject)}")
    names = [f"{kind} {value}" for kind, value in details.get("subjectAltName", ())]
    if names:
        lines.append(f"names:   {clean(', '.join(names))}")
    if details.get("notAfter"):
        lines.append(f"expires: {clean(details['notAfter'])}")
    return lines


def cmd_remote_list(ctx: Context, a) -> int:
    config = ctx.config()
    remotes = [config.remotes[n] for n in sorted(config.remotes)]
    data = [{"name": r.name, "url": r.url, "user": r.user, "fingerprint": r.fingerprint,
             "default": r.name == config.default, "shell_tls": r.shell_tls} for r in remotes]
    rows = [("*" if d["default"] else "", d["name"], d["url"], d["user"], d["fingerprint"]) for d in data]
    ctx.out.result(data, table(["default", "name", "url", "user", "fingerprint (sha-256)"], rows)
                   if rows else "No remotes; add one with `bolt remote add NAME https://HOST:PORT`.")
    return 0


def cmd_remote_use(ctx: Context, a) -> int:
    config = ctx.config()
    config.choose(a.name)
    config.default = a.name
    config.save()
    ctx.out.result({"default": a.name}, f"Default remote is now {a.name!r}.")
    return 0


def cmd_remote_remove(ctx: Context, a) -> int:
    config = ctx.config()
    removed = config.remove(a.name)
    config.save()
    ctx.out.result({"removed": removed.name}, f"Remote {removed.name!r} removed.")
    return 0


# -- projects ------------------------------------------------------------------------------------


def _ports(sandbox: dict[str, Any]) -> str:
    forwards = [f"host:{h}->{c}" for h, c in sorted((sandbox.get("port_mappings") or {}).items(), key=_port_key)]
    reverse = [f"{c}->host:{h}" for c, h in sorted((sandbox.get("reverse_port_mappings") or {}).items(), key=_port_key)]
    return ", ".join(forwards + reverse) or "-"


def _port_key(item) -> int:
    try:
        return int(item[0])
    except (TypeError, ValueError):
        return 0


def _limits_fields(limits: dict[str, Any]) -> list[tuple[str, Any]]:
    cpu, memory = limits.get("cpu_quota_us"), limits.get("memory_limit_bytes")
    return [("cpu", f"{format_cpu(cpu)} ({cpu} µs per {CPU_PERIOD_US} µs)" if cpu is not None else "-"),
            ("memory", f"{format_size(memory)} ({memory} bytes)" if memory is not None else "-"),
            ("pids", limits.get("pids_max"))]


def cmd_project_create(ctx: Context, a) -> int:
    project = ctx.client().request("POST", path("projects"), {"name": a.name})
    ctx.out.result(project, f"Project {clean(project['name'])!r} created.")
    return 0


def cmd_project_delete(ctx: Context, a) -> int:
    result = ctx.client().request("DELETE", path("projects", a.name) + ("?force=1" if a.force else ""),
                                  timeout=LONG_TIMEOUT)
    ctx.out.result(result, f"Project {clean(result.get('deleted'))!r} deleted.")
    return 0


def cmd_project_list(ctx: Context, a) -> int:
    projects = ctx.client().request("GET", path("projects"))
    rows = [(p["name"], len(p.get("sandboxes", [])), format_cpu(p["resource_limits"].get("cpu_quota_us")),
             format_size(p["resource_limits"].get("memory_limit_bytes")), p["resource_limits"].get("pids_max"),
             p.get("created_at")) for p in projects]
    ctx.out.result(projects, table(["name", "sandboxes", "cpu", "memory", "pids", "created"], rows)
                   if rows else "No projects.")
    return 0


def cmd_project_show(ctx: Context, a) -> int:
    p = ctx.client().request("GET", path("projects", a.name))
    text = fields([("name", p["name"]), ("created", p.get("created_at"))] + _limits_fields(p["resource_limits"]))
    sandboxes = p.get("sandboxes", [])
    if sandboxes:
        text += "\n" + _sandbox_table(sandboxes)
    else:
        text += "\nNo sandboxes.\n"
    ctx.out.result(p, text)
    return 0


# -- sandboxes -----------------------------------------------------------------------------------


def _sandbox_table(sandboxes: list[dict[str, Any]]) -> str:
    rows = [(s["name"], s.get("distro"), s.get("state"), s.get("pid"), s.get("address"), _ports(s),
             s.get("created_at")) for s in sandboxes]
    return table(["sandbox", "distro", "state", "pid", "address", "ports", "created"], rows)


def _sandbox_fields(s: dict[str, Any]) -> str:
    pairs = [("project", s.get("project")), ("name", s["name"]), ("distro", s.get("distro")),
             ("state", s.get("state")), ("pid", s.get("pid")), ("address", s.get("address")),
             ("ports", _ports(s)), ("created", s.get("created_at"))]
    return fields([(k, v) for k, v in pairs if v is not None or k in ("state", "ports")])


def _sandbox_path(a, *rest: str) -> str:
    return path("projects", a.project, "sandboxes", a.name, *rest)


def cmd_sandbox_create(ctx: Context, a) -> int:
    body = {"name": a.name}
    if a.distro:
        body["distro"] = a.distro
    if not ctx.json and ctx.interactive():
        ctx.say(f"Creating sandbox {a.project}/{a.name} (the first sandbox of a distro waits for its image)...")
    s = ctx.client().request("POST", path("projects", a.project, "sandboxes"), body, timeout=LONG_TIMEOUT)
    ctx.out.result(s, f"Sandbox {clean(a.project)}/{clean(s['name'])} created ({clean(s.get('distro'))}, "
                      f"{clean(s.get('state'))}).")
    return 0


def cmd_sandbox_delete(ctx: Context, a) -> int:
    result = ctx.client().request("DELETE", _sandbox_path(a), timeout=LONG_TIMEOUT)
    ctx.out.result(result, f"Sandbox {clean(a.project)}/{clean(result.get('deleted'))} deleted.")
    return 0


def cmd_sandbox_list(ctx: Context, a) -> int:
    sandboxes = ctx.client().request("GET", path("projects", a.project, "sandboxes"))
    ctx.out.result(sandboxes, _sandbox_table(sandboxes) if sandboxes else f"No sandboxes in {clean(a.project)}.")
    return 0


def cmd_sandbox_show(ctx: Context, a) -> int:
    s = ctx.client().request("GET", _sandbox_path(a))
    ctx.out.result(s, _sandbox_fields(s))
    return 0


def cmd_sandbox_start(ctx: Context, a) -> int:
    s = ctx.client().request("POST", _sandbox_path(a, "start"), timeout=LONG_TIMEOUT)
    ctx.out.result(s, f"Sandbox {clean(a.project)}/{clean(a.name)} is {clean(s.get('state'))}.")
    return 0


def cmd_sandbox_stop(ctx: Context, a) -> int:
    s = ctx.client().request("POST", _sandbox_path(a, "stop"), timeout=LONG_TIMEOUT)
    ctx.out.result(s, f"Sandbox {clean(a.project)}/{clean(a.name)} is {clean(s.get('state'))}.")
    return 0


# -- exec and shell ------------------------------------------------------------------------------


def exec_status(result: dict[str, Any]) -> int:
    """The local exit status for an exec result: 124 on timeout, else the command's (128+N for
    signal N, as the server reports it), within 0-255."""
    if result.get("timed_out"):
        return EXIT_TIMEOUT
    code = result.get("exit_code")
    if not isinstance(code, int):
        return EXIT_API
    if code < 0:
        code = 128 - code
    return min(code, 255)


def _env_pairs(items: Sequence[str], local: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise UsageError(f"--env {item!r}: expected NAME=VALUE")
        if not sep:  # like docker's -e NAME: the local value
            if name not in local:
                raise UsageError(f"--env {name}: no '=' and no {name} in the local environment")
            value = local[name]
        env[name] = value
    return env


def cmd_exec(ctx: Context, a) -> int:
    command = list(a.command)
    if not command:
        raise UsageError("give the command after --, e.g. bolt exec PROJECT NAME -- uname -a")
    body: dict[str, Any] = {"command": " ".join(command) if a.sh else command}
    if a.timeout is not None:
        if not 0 < a.timeout <= 3600:
            raise UsageError("--timeout must be more than 0 and at most 3600 seconds")
        body["timeout"] = a.timeout
    if a.env:
        body["env"] = _env_pairs(a.env, ctx.env)
    if a.cwd:
        body["cwd"] = a.cwd
    if not a.no_stdin and not ctx.interactive():
        data = _read_stdin(ctx)
        if data:
            try:
                body["stdin"] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise CommandFailed("stdin is not UTF-8 text; the exec API carries text only "
                                    "(encode binary input, e.g. with base64)") from None
    client = ctx.client()
    result = client.request("POST", _sandbox_path(a, "exec"), body,
                            timeout=(a.timeout or EXEC_TIMEOUT_DEFAULT) + 60)
    if ctx.json:
        ctx.out.result(result, None)
    else:
        _write_bytes(ctx.stdout, result.get("stdout") or "")
        _write_bytes(ctx.stderr, result.get("stderr") or "")
    if result.get("truncated"):
        ctx.warn("the server kept only the first part of the command's output (truncated)")
    if result.get("timed_out"):
        ctx.warn(f"the command did not finish within {body.get('timeout', EXEC_TIMEOUT_DEFAULT):g} s and was killed")
    return exec_status(result)


def _read_stdin(ctx: Context) -> bytes:
    stream = getattr(ctx.stdin, "buffer", ctx.stdin)
    data = stream.read()
    return data.encode("utf-8") if isinstance(data, str) else data


def _write_bytes(stream: TextIO, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    target = getattr(stream, "buffer", None)
    stream.flush()
    if target is not None:
        target.write(data)
        target.flush()
    else:
        stream.write(text)
        stream.flush()


def cmd_shell(ctx: Context, a) -> int:
    try:
        escape = parse_escape_char(a.escape_char)
    except ValueError as e:
        raise UsageError(str(e)) from None
    client = ctx.client()
    remote = client.remote
    ticket = client.request("POST", _sandbox_path(a, "shell"))
    port = int(ticket["port"])
    if a.tls or remote.shell_tls:
        sock = connect_pinned(remote, port)
    else:
        try:
            sock = socket.create_connection((remote.host, port), timeout=15)
        except OSError as e:
            raise ConnectError(f"cannot connect to the shell at {remote.host}:{port}: {e.strerror or e}") from None
    stdin_fd, stdout_fd = ctx.stdin.fileno(), ctx.stdout.fileno()
    ctx.stdout.flush()
    term = (ctx.env.get("TERM") or "xterm") if (os.isatty(stdin_fd) or os.isatty(stdout_fd)) else "dumb"
    session = Session(sock, ticket["token"], stdin_fd=stdin_fd, stdout_fd=stdout_fd, term=term, escape=escape)
    try:
        status = session.run()
    except ShellError as e:
        raise CommandFailed(str(e)) from None
    if session.ended_by == "escape":
        ctx.say("Connection closed.")
    return status


# -- forwards ------------------------------------------------------------------------------------


def cmd_port_add(ctx: Context, a) -> int:
    result = ctx.client().request("POST", _sandbox_path(a, "ports"),
                                  {"host_port": a.host_port, "container_port": a.container_port})
    ctx.out.result(result, f"Host port {a.host_port} now forwards to {clean(a.project)}/{clean(a.name)} "
                           f"port {a.container_port}.")
    return 0


def cmd_port_rm(ctx: Context, a) -> int:
    result = ctx.client().request("DELETE", _sandbox_path(a, "ports", str(a.host_port)))
    ctx.out.result(result, f"Forward of host port {a.host_port} removed.")
    return 0


def cmd_port_list(ctx: Context, a) -> int:
    s = ctx.client().request("GET", _sandbox_path(a))
    mappings = s.get("port_mappings") or {}
    rows = sorted(((int(h), c) for h, c in mappings.items()))
    ctx.out.result(mappings, table(["host port", "container port"], rows) if rows else "No port forwards.")
    return 0


def cmd_rport_add(ctx: Context, a) -> int:
    result = ctx.client().request("POST", _sandbox_path(a, "reverse_ports"),
                                  {"container_port": a.container_port, "host_port": a.host_port})
    ctx.out.result(result, f"Port {a.container_port} in {clean(a.project)}/{clean(a.name)} now reaches "
                           f"host port {a.host_port}.")
    return 0


def cmd_rport_rm(ctx: Context, a) -> int:
    result = ctx.client().request("DELETE", _sandbox_path(a, "reverse_ports", str(a.container_port)))
    ctx.out.result(result, f"Reverse forward of port {a.container_port} removed.")
    return 0


def cmd_rport_list(ctx: Context, a) -> int:
    s = ctx.client().request("GET", _sandbox_path(a))
    mappings = s.get("reverse_port_mappings") or {}
    rows = sorted(((int(c), h) for c, h in mappings.items()))
    ctx.out.result(mappings, table(["container port", "host port"], rows) if rows else "No reverse forwards.")
    return 0


# -- limits ---------------------------------------------------------------------------------------


def cmd_limits(ctx: Context, a) -> int:
    changes: dict[str, int] = {}
    try:
        if a.cpu is not None:
            changes["cpu_quota_us"] = parse_cpu(a.cpu)
        if a.memory is not None:
            changes["memory_limit_bytes"] = parse_size(a.memory)
    except QuantityError as e:
        raise UsageError(str(e)) from None
    if a.pids is not None:
        changes["pids_max"] = a.pids
    client = ctx.client()
    if changes:
        project = client.request("PUT", path("projects", a.project, "resources"), changes)
    else:
        project = client.request("GET", path("projects", a.project))
    limits = project["resource_limits"]
    heading = f"Limits of project {clean(project['name'])}" + (" (set)" if changes else "") + ":\n"
    ctx.out.result(limits, heading + fields(_limits_fields(limits)))
    return 0


# -- images --------------------------------------------------------------------------------------


def _image_fields(info: dict[str, Any]) -> str:
    pairs = [("distro", info["distro"]), ("state", info.get("state")), ("stage", info.get("stage")),
             ("size", format_size(info["size_bytes"]) if "size_bytes" in info else None),
             ("built", info.get("built_at")),
             ("build time", f"{info['build_seconds']:.0f} s" if "build_seconds" in info else None),
             ("error", info.get("error")), ("sandboxes", ", ".join(info.get("sandboxes") or []) or None)]
    return fields([(k, v) for k, v in pairs if v is not None])


def cmd_image_build(ctx: Context, a) -> int:
    client = ctx.client()
    info = client.request("POST", path("images"), {"distro": a.distro})
    if not a.no_wait and info.get("state") == "building":
        info = _wait_for_image(ctx, client, a.distro, info)
    if info.get("state") == "failed":
        raise CommandFailed(f"image {clean(a.distro)} failed to build: {clean(info.get('error'))}")
    if info.get("state") == "ready":
        text = f"Image {clean(a.distro)} is ready ({format_size(info.get('size_bytes'))})."
    else:
        text = f"Image {clean(a.distro)} is {clean(info.get('state'))}; follow it with `bolt image show {a.distro}`."
    ctx.out.result(info, text)
    return 0


def _wait_for_image(ctx: Context, client: Client, distro: str, info: dict[str, Any],
                    interval: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll GET /api/images/<distro> every ``interval`` until it is ready or failed, showing progress
    on stderr: one line rewritten in place on a terminal, a line per stage change otherwise."""
    stream = ctx.stderr
    live = hasattr(stream, "isatty") and stream.isatty()
    started = time.monotonic()
    last_stage = None
    try:
        while info.get("state") == "building":
            elapsed = info.get("elapsed_seconds", time.monotonic() - started)
            stage = clean(info.get("stage") or "building")
            if live:
                stream.write(f"\r\x1b[KBuilding {clean(distro)}: {stage} ({elapsed:.0f} s)")
                stream.flush()
            elif stage != last_stage:
                stream.write(f"Building {clean(distro)}: {stage} ({elapsed:.0f} s)\n")
                stream.flush()
            last_stage = stage
            sleep(interval)
            info = client.request("GET", path("images", distro))
    except KeyboardInterrupt:
        if live:
            stream.write("\n")
        ctx.say(f"Stopped waiting; the build goes on on the server (`bolt image show {distro}`).")
        raise
    if live:
        stream.write("\r\x1b[K")
        stream.flush()
    return info


def cmd_image_list(ctx: Context, a) -> int:
    images = ctx.client().request("GET", path("images"))
    rows = [(i["distro"], i.get("state"), format_size(i.get("size_bytes")), i.get("built_at"),
             len(i.get("sandboxes") or []), i.get("error") or i.get("stage")) for i in images]
    ctx.out.result(images, table(["distro", "state", "size", "built", "sandboxes", "note"], rows)
                   if rows else "No images.")
    return 0


def cmd_image_show(ctx: Context, a) -> int:
    info = ctx.client().request("GET", path("images", a.distro))
    ctx.out.result(info, _image_fields(info))
    return 0


def cmd_image_rm(ctx: Context, a) -> int:
    result = ctx.client().request("DELETE", path("images", a.distro), timeout=LONG_TIMEOUT)
    ctx.out.result(result, f"Image {clean(result.get('deleted'))} removed.")
    return 0


# -- server -----------------------------------------------------------------------------------------


def cmd_status(ctx: Context, a) -> int:
    client = ctx.client()
    status = client.request("GET", path("status"))
    system = status.get("system", {})
    text = fields([("server", f"{client.remote.url} (remote {client.remote.name})"),
                   ("version", status.get("version")),
                   ("cpu", f"{system.get('cpu_usage', 0):.1f}%"),
                   ("memory", f"{system.get('memory_usage', 0):.1f}%"),
                   ("disk", f"{system.get('disk_usage', 0):.1f}%")])
    projects = status.get("projects", [])
    if projects:
        text += "\n" + table(["project", "sandboxes", "cpu", "memory", "created"], [
            (p["name"], len(p.get("sandboxes", [])), format_cpu(p.get("resource_limits", {}).get("cpu_quota_us")),
             format_size(p.get("resource_limits", {}).get("memory_limit_bytes")), p.get("created_at"))
            for p in projects])
        sandboxes = [(f"{p['name']}/{s['name']}", s.get("distro"), _ports(s), s.get("created_at"))
                     for p in projects for s in p.get("sandboxes", [])]
        if sandboxes:
            text += "\n" + table(["sandbox", "distro", "ports", "created"], sandboxes)
    else:
        text += "\nNo projects.\n"
    ctx.out.result(status, text)
    return 0


def cmd_update_check(ctx: Context, a) -> int:
    update = ctx.client().request("GET", path("update"), timeout=60)
    current, latest = update.get("current_version"), update.get("latest_version")
    if update.get("reason"):
        text = f"Cannot tell whether an update exists: {clean(update['reason'])} (server runs bolt {clean(current)})."
    elif update.get("update_available"):
        text = f"An update is available: bolt {clean(latest)} (the server runs {clean(current)})."
    else:
        text = f"The server runs bolt {clean(current)}, the latest version."
    ctx.out.result(update, text)
    return 0


def cmd_set_password(ctx: Context, a) -> int:
    new = ctx.env.get("BOLT_NEW_PASSWORD")
    if not new:
        if not ctx.interactive():
            raise UsageError("no new password: set BOLT_NEW_PASSWORD or run on a terminal")
        new = getpass.getpass("New password: ")
        if new != getpass.getpass("New password again: "):
            raise UsageError("the two passwords differ; nothing was changed")
    if not new:
        raise UsageError("the new password is empty")
    client = ctx.client()
    result = client.request("PUT", path("config"), {"admin_password": new})
    config = ctx.config()
    remote = config.remotes[client.remote.name]
    text = f"Password of {clean(result.get('admin_user'))} on {remote.url} changed."
    if remote.password is not None:
        remote.password = new
        config.save()
        text += f"\nThe stored password of remote {remote.name!r} is updated."
    ctx.out.result(result, text)
    return 0


def cmd_api(ctx: Context, a) -> int:
    if not a.path.startswith("/api/"):
        raise UsageError("PATH must start with /api/, e.g. /api/openapi.json")
    raw = None
    if a.data is not None:
        text = ctx.stdin.read() if a.data == "-" else a.data
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--data is not JSON: {e}") from None
        raw = text.encode("utf-8")
    result = ctx.client().request(a.method.upper(), a.path, raw_body=raw, timeout=LONG_TIMEOUT)
    ctx.stdout.write(output.to_json(result))
    return 0


def cmd_completion(ctx: Context, a) -> int:
    ctx.stdout.write(completion.bash(build_parser()))
    return 0


# -- the tree ------------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is not between 1 and 65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    # --json and --remote are accepted before and after the command.  In subcommands their default
    # is SUPPRESS, so a subparser never overwrites a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the server's JSON instead of tables")
    common.add_argument("--remote", metavar="NAME", default=argparse.SUPPRESS,
                        help="the remote to talk to (default: the default remote, or $BOLT_REMOTE)")

    top = argparse.ArgumentParser(
        prog="bolt", formatter_class=_Formatter,
        description="Command-line client for a Bolt sandbox server: its HTTPS API and its shells.",
        epilog="Environment: BOLT_PASSWORD (overrides the stored password), BOLT_REMOTE, BOLT_CONFIG "
               "(the config file;\ndefault $XDG_CONFIG_HOME/bolt/config.json).  Exit status: 0 ok, 1 error, "
               "2 usage error;\n`bolt exec` exits with the command's status (124 on timeout).")
    top.add_argument("--json", action="store_true", default=False, help="print the server's JSON instead of tables")
    top.add_argument("--remote", metavar="NAME", default=None,
                     help="the remote to talk to (default: the default remote, or $BOLT_REMOTE)")
    top.add_argument("--version", action="version", version=f"bolt {__version__}")
    commands = top.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def group(parent, name: str, help_text: str, **kw) -> argparse._SubParsersAction:
        parser = parent.add_parser(name, help=help_text, description=help_text, parents=[common],
                                   formatter_class=_Formatter, **kw)
        return parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    def leaf(parent, name: str, func, help_text: str, **kw) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text, description=kw.pop("description", help_text),
                                   parents=[common], formatter_class=_Formatter, **kw)
        parser.set_defaults(func=func)
        return parser

    # remote
    remote = group(commands, "remote", "manage the servers this client knows (URL, credentials, pinned certificate)")
    p = leaf(remote, "add", cmd_remote_add, "add a remote: pin its certificate, check the credentials, save",
             description="Connect to URL, show the SHA-256 fingerprint of the certificate it presents and pin\n"
                         "it on confirmation (or with --yes, or when it equals --fingerprint).  Every later\n"
                         "connection must present exactly that certificate.  The credentials are checked\n"
                         "with GET /api/status, then stored in the config file (mode 0600).")
    p.add_argument("name", metavar="NAME")
    p.add_argument("url", metavar="URL", help="https://HOST:PORT")
    p.add_argument("--user", help="the admin user (default: asked on a terminal, else admin)")
    p.add_argument("--yes", "-y", action="store_true", help="pin the presented certificate without asking")
    p.add_argument("--fingerprint", metavar="SHA256", help="pin only if the certificate has this SHA-256 fingerprint")
    p.add_argument("--default", action="store_true", help="make it the default remote")
    p.add_argument("--no-save-password", action="store_true",
                   help="do not store the password; ask for it (or read BOLT_PASSWORD) each time")
    p.add_argument("--shell-tls", action="store_true", help="the server's shells use TLS (its shell_tls setting)")
    leaf(remote, "list", cmd_remote_list, "list remotes (* marks the default)", aliases=["ls"])
    p = leaf(remote, "use", cmd_remote_use, "make a remote the default")
    p.add_argument("name", metavar="NAME")
    p = leaf(remote, "remove", cmd_remote_remove, "forget a remote", aliases=["rm"])
    p.add_argument("name", metavar="NAME")

    # project
    project = group(commands, "project", "create, list, show and delete projects")
    p = leaf(project, "create", cmd_project_create, "create a project")
    p.add_argument("name", metavar="PROJECT")
    p = leaf(project, "delete", cmd_project_delete, "delete a project", aliases=["rm"])
    p.add_argument("name", metavar="PROJECT")
    p.add_argument("--force", action="store_true", help="delete its sandboxes first")
    leaf(project, "list", cmd_project_list, "list projects", aliases=["ls"])
    p = leaf(project, "show", cmd_project_show, "show a project: limits and sandboxes")
    p.add_argument("name", metavar="PROJECT")

    # sandbox
    sandbox = group(commands, "sandbox", "create, list, show, start, stop and delete sandboxes")
    for name, func, help_text, extra in (
            ("create", cmd_sandbox_create, "create and start a sandbox (waits for its image)", {}),
            ("delete", cmd_sandbox_delete, "delete a sandbox: its processes, files and forwards", {"aliases": ["rm"]}),
            ("show", cmd_sandbox_show, "show a sandbox", {}),
            ("start", cmd_sandbox_start, "start a stopped sandbox", {}),
            ("stop", cmd_sandbox_stop, "stop a sandbox (SIGTERM, then SIGKILL)", {})):
        p = leaf(sandbox, name, func, help_text, **extra)
        p.add_argument("project", metavar="PROJECT")
        p.add_argument("name", metavar="NAME")
        if name == "create":
            p.add_argument("--distro", metavar="D", help="debian:SUITE or ubuntu:SUITE (default: the server's)")
    p = leaf(sandbox, "list", cmd_sandbox_list, "list a project's sandboxes", aliases=["ls"])
    p.add_argument("project", metavar="PROJECT")

    # exec
    p = leaf(commands, "exec", cmd_exec, "run a command in a sandbox",
             description="Run CMD in a running sandbox and exit with its status: its exit code, 128+N when\n"
                         "signal N killed it, 124 when it ran out of time.  Its stdout and stderr are written\n"
                         "to bolt's (after it ended; the API returns them whole).  When bolt's stdin is not a\n"
                         "terminal it is read and given to the command (UTF-8 text; -n to skip).",
             usage="bolt exec [options] PROJECT NAME -- CMD [ARG...]")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")
    p.add_argument("command", metavar="CMD", nargs="*", help="the command and its arguments, after --")
    p.add_argument("--timeout", type=_seconds, metavar="S", help="seconds before the command is killed (default 60)")
    p.add_argument("--env", "-e", action="append", default=[], metavar="K=V",
                   help="set an environment variable (repeatable; K alone takes the local value)")
    p.add_argument("--cwd", metavar="DIR", help="working directory inside the sandbox")
    p.add_argument("--sh", action="store_true", help="join CMD with spaces and run it with /bin/sh -c")
    p.add_argument("--no-stdin", "-n", action="store_true", help="do not read stdin")

    # shell
    p = leaf(commands, "shell", cmd_shell, "open an interactive shell in a sandbox",
             description="Open a login shell in a running sandbox over the server's telnet shell port.\n"
                         "On a terminal: raw mode, window size and $TERM sent to the sandbox; Ctrl-] closes\n"
                         "the session.  With stdin not a terminal: lines are sent as read, then end-of-file.")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--escape-char", default="^]", metavar="C",
                   help="the key that closes the session: ^X notation or 'none' (default ^])")
    p.add_argument("--tls", action="store_true", help="the shell port speaks TLS (the server's shell_tls)")

    # port / rport
    port = group(commands, "port", "forward host ports to a sandbox")
    p = leaf(port, "add", cmd_port_add, "forward HOST_PORT on the host to CONTAINER_PORT in the sandbox")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")
    p.add_argument("host_port", metavar="HOST_PORT", type=_port)
    p.add_argument("container_port", metavar="CONTAINER_PORT", type=_port)
    p = leaf(port, "rm", cmd_port_rm, "remove the forward of HOST_PORT", aliases=["remove"])
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")
    p.add_argument("host_port", metavar="HOST_PORT", type=_port)
    p = leaf(port, "list", cmd_port_list, "list a sandbox's forwards", aliases=["ls"])
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")

    rport = group(commands, "rport", "let a sandbox reach host ports (reverse forwards)")
    p = leaf(rport, "add", cmd_rport_add, "make CONTAINER_PORT in the sandbox reach HOST_PORT on the host")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")
    p.add_argument("container_port", metavar="CONTAINER_PORT", type=_port)
    p.add_argument("host_port", metavar="HOST_PORT", type=_port)
    p = leaf(rport, "rm", cmd_rport_rm, "remove the reverse forward of CONTAINER_PORT", aliases=["remove"])
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")
    p.add_argument("container_port", metavar="CONTAINER_PORT", type=_port)
    p = leaf(rport, "list", cmd_rport_list, "list a sandbox's reverse forwards", aliases=["ls"])
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("name", metavar="NAME")

    # limits
    p = leaf(commands, "limits", cmd_limits, "show or set a project's pooled CPU, memory and process limits",
             description="Without options, show the project's limits; with any, set those (applied at once).\n"
                         "CPU: cores (0.5, 2), percent of one core (50%, 150%), or µs per 100000 µs (50000us).\n"
                         "Memory: bytes or K/M/G/T, binary (512M = 512 MiB; 1.5G, 1GiB, 1GB accepted).")
    p.add_argument("project", metavar="PROJECT")
    p.add_argument("--cpu", metavar="CPU", help="0.5 | 50%% | 50000us")
    p.add_argument("--memory", metavar="SIZE", help="512M | 1G | 1.5GiB | bytes")
    p.add_argument("--pids", type=_positive_int, metavar="N", help="most processes at once")

    # image
    image = group(commands, "image", "build, list, show and remove base images")
    p = leaf(image, "build", cmd_image_build, "build a base image with debootstrap, showing progress")
    p.add_argument("distro", metavar="DISTRO", help="debian:SUITE or ubuntu:SUITE")
    p.add_argument("--no-wait", action="store_true", help="start the build and return")
    leaf(image, "list", cmd_image_list, "list base images", aliases=["ls"])
    p = leaf(image, "show", cmd_image_show, "show one base image")
    p.add_argument("distro", metavar="DISTRO")
    p = leaf(image, "rm", cmd_image_rm, "remove a base image no sandbox uses", aliases=["remove"])
    p.add_argument("distro", metavar="DISTRO")

    # server
    leaf(commands, "status", cmd_status, "the server's version, load, projects and sandboxes")
    leaf(commands, "update-check", cmd_update_check, "ask the server whether a newer bolt exists")
    config = group(commands, "config", "change the server's settings")
    leaf(config, "set-password", cmd_set_password, "change the admin password (and the stored one)",
         description="Change the admin password of the server (asked twice, or BOLT_NEW_PASSWORD), then\n"
                     "the password stored for the remote.")
    p = leaf(commands, "api", cmd_api, "send one raw API request and print the JSON answer")
    p.add_argument("method", metavar="METHOD", choices=["GET", "POST", "PUT", "DELETE", "get", "post", "put", "delete"])
    p.add_argument("path", metavar="PATH", help="e.g. /api/openapi.json")
    p.add_argument("--data", metavar="JSON", help="the request body ('-' reads stdin)")
    completion_cmds = group(commands, "completion", "print a shell completion script")
    leaf(completion_cmds, "bash", cmd_completion, "bash completion: eval \"$(bolt completion bash)\"",
         description="Print a bash completion script generated from this command tree.  Use it with\n"
                     "  eval \"$(bolt completion bash)\"   or save it to /etc/bash_completion.d/bolt")
    return top


# -- running -------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
        stderr: TextIO | None = None, env: Mapping[str, str] | None = None) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    env = os.environ if env is None else env
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    head, tail = split_command(argv)
    try:
        args = parser.parse_args(head)
    except SystemExit as e:  # --help, --version, or a usage error argparse already reported
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if tail is not None:
        args.command = list(args.command) + tail
    ctx = Context(args, stdin, stdout, stderr, env)
    try:
        return args.func(ctx, args) or 0
    except UsageError as e:
        stderr.write(f"bolt: {e}\n")
        return EXIT_USAGE
    except (ClientError, ConfigFileError, CommandFailed) as e:
        stderr.write(f"bolt: {_one_message(e)}\n")
        return EXIT_API
    except KeyboardInterrupt:
        stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `bolt ... | head`: the reader left.  Say nothing, as coreutils do, and point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_API
    except OSError as e:  # the config file or its directory, most likely
        where = f"{e.filename}: " if e.filename else ""
        stderr.write(f"bolt: {where}{e.strerror or e}\n")
        return EXIT_API


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For ``bolt ... exec ... -- CMD...``: (the words before --, CMD...), else (argv, None).

    argparse cannot take options after the positionals *and* a command whose own options follow
    ``--`` (REMAINDER swallows ``--timeout``), so the command is cut off before parsing."""
    if "--" not in argv:
        return argv, None
    cut = argv.index("--")
    i = 0
    while i < cut:  # the first word that is not a global option names the command
        word = argv[i]
        if word == "--remote":
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        return (argv[:cut], argv[cut + 1:]) if word == "exec" else (argv, None)
    return argv, None


def _one_message(error: Exception) -> str:
    text = error.message if isinstance(error, ApiError) else str(error)
    lines = text.splitlines() or [""]
    return "\n".join([output.clean(lines[0])] + ["  " + output.clean(line.strip()) for line in lines[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
