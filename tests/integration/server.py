"""A real ``twistd -n bolt`` on a loopback port, with its own config and data dir, for end-to-end tests.

Clients are real too: curl (the README's client) and the standard library's HTTPS client.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
PASSWORD = "integration-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_allowed_port(rng: random.Random | None = None, taken: set[int] = frozenset()) -> int:
    """A port of the default ``allowed_ports`` (10000-19999) that nothing listens on and that is not in
    ``taken``; drawn from ``rng`` when given (a seeded test replays the same ports)."""
    for _ in range(500):
        port = rng.randint(10000, 19999) if rng is not None else 10000 + secrets.randbelow(10000)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port in 10000-19999")


CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_tops(parent: str) -> list[str]:
    """``<hierarchy>/<parent>`` in every cgroup hierarchy that has it (v2: one; v1: one per controller)."""
    tops = [os.path.join(CGROUP_ROOT, parent)]
    if os.path.isdir(CGROUP_ROOT):
        tops += [os.path.join(CGROUP_ROOT, h, parent) for h in sorted(os.listdir(CGROUP_ROOT))]
    return [top for top in dict.fromkeys(tops) if os.path.isdir(top) and not os.path.islink(top)]


def remove_cgroup_dir(top: str) -> list[str]:
    """SIGKILL every process in the cgroup directory tree ``top`` and remove it, leaves first, waiting
    while the kernel still holds a cgroup whose last process is dying; what could not be removed."""
    left = []
    for directory, _, _ in os.walk(top, topdown=False):
        for _ in range(100):
            try:
                with open(os.path.join(directory, "cgroup.procs")) as f:
                    pids = [int(line) for line in f if line.strip()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        for _ in range(100):
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    left.append(directory)
                    break
                time.sleep(0.02)
        else:
            left.append(directory)
    return left


def remove_cgroup_tree(parent: str) -> list[str]:
    """:func:`remove_cgroup_dir` of ``parent`` in every hierarchy; what could not be removed."""
    return [path for top in cgroup_tops(parent) for path in remove_cgroup_dir(top)]


def remove_links(prefix: str) -> None:
    """Delete the host-side veths named ``<prefix><8 hex>`` (a crashed test's sandboxes)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split(": ")[1].split("@")[0] if ": " in line else ""
        if name.startswith(prefix) and len(name) == len(prefix) + 8:
            subprocess.run(["ip", "link", "del", name], check=False, stderr=subprocess.DEVNULL)


def remove_chains(prefix: str) -> None:
    """Delete every iptables/ip6tables chain starting with ``prefix`` and every rule jumping to one."""
    for tool in ("iptables", "ip6tables"):
        for table in ("raw", "filter", "nat"):
            out = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith("-A ") and f"-j {prefix}" in line and not line.split()[1].startswith(prefix):
                    subprocess.run([tool, "-w", "-t", table, "-D", *line.split()[1:]], check=False,
                                   stderr=subprocess.DEVNULL)
            chains = [line[1:].split()[0] for line in out.splitlines()
                      if line.startswith(":") and line[1:].startswith(prefix)]
            for chain in chains:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], check=False, stderr=subprocess.DEVNULL)
            for chain in chains:
                subprocess.run([tool, "-w", "-t", table, "-X", chain], check=False, stderr=subprocess.DEVNULL)


def unmount_below(top: str) -> None:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in reversed(points):
        point = point.replace("\\040", " ")
        if point == top or point.startswith(top.rstrip("/") + "/"):
            subprocess.run(["umount", "--lazy", point], check=False, stderr=subprocess.DEVNULL)


class RealServer:
    """One bolt server process; ``start``/``kill``/``stop`` it, talk to it with :meth:`api` or :meth:`curl`."""

    def __init__(self, root: str | None = None, *, env: dict[str, str] | None = None,
                 config: dict[str, Any] | None = None, with_password: bool = True, twistd: str = TWISTD) -> None:
        self.twistd = twistd
        self.root = root or tempfile.mkdtemp(prefix="bolt-e2e-")
        self.config_path = os.path.join(self.root, "etc", "config.json")
        self.data_dir = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "bolt_server.log")
        self.port = free_port()
        self.password = PASSWORD
        self.env = dict(os.environ, BOLT_ADMIN_PASSWORD=PASSWORD, **(env or {}))
        self.process: subprocess.Popen | None = None
        # Every test server gets cgroups of its own, so no server ever reconciles another's away.
        self.cgroup_parent = (config or {}).get("cgroup_parent") or f"bolt-t{secrets.token_hex(4)}"
        # ...and its own iptables chains, link names and address pool.
        self.instance = (config or {}).get("instance_name") or f"bt{secrets.token_hex(3)[:5]}"
        self.network = (config or {}).get("sandbox_network") or f"10.251.{secrets.randbelow(256)}.0/24"
        changes = {"cgroup_parent": self.cgroup_parent, "instance_name": self.instance,
                   "sandbox_network": self.network, **(config or {})}
        if with_password:
            self.write_config(changes)
        else:  # the server fills in the rest, and generates a password, at its first start
            os.makedirs(os.path.dirname(self.config_path), mode=0o750)
            with open(self.config_path, "w") as f:
                json.dump(changes, f)
            os.chmod(self.config_path, 0o600)

    def write_config(self, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the config file, creating it first as the server would."""
        if not os.path.exists(self.config_path):
            from bolt import config as configuration
            configuration.load(self.config_path, self.data_dir, initial_password=self.password)
        with open(self.config_path) as f:
            current = json.load(f)
        current.update(changes)
        with open(self.config_path, "w") as f:
            json.dump(current, f)

    def argv(self, *extra: str) -> list[str]:
        return [self.twistd, "-n", "--pidfile=", "--logger=bolt.logs.observer", "bolt",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--config", self.config_path, "--data-dir", self.data_dir, *extra]

    def start(self, timeout: float = 30.0) -> "RealServer":
        # As the packaged service runs: the log on standard output, appended to the log file.
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"bolt exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise AssertionError(f"bolt did not listen within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def cleanup(self) -> None:
        """Leave the host as it was: sandboxes outlive a killed server by design, so end them too."""
        if self.process and self.process.poll() is None:
            try:
                code, projects = self.api("GET", "/api/projects", timeout=30)
                for project in projects if code == 200 else []:
                    self.api("DELETE", f"/api/projects/{project['name']}?force=1", timeout=120)
            except Exception:
                pass
        self.stop()  # with no project left, the server removes its rules, route and cgroup root
        remove_cgroup_tree(self.cgroup_parent)
        remove_links(self.instance)
        remove_chains(self.instance.upper() + "-")
        subprocess.run(["ip", "route", "del", "unreachable", self.network, "metric", "4294967295"],
                       check=False, stderr=subprocess.DEVNULL)
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert_path(self) -> str:
        return os.path.join(os.path.dirname(self.config_path), "cert.pem")

    def api(self, method: str, path: str, body: Any = None, *, user: str = "admin",
            password: str | None = None, raw: bytes | None = None, timeout: float = 120.0
            ) -> tuple[int, Any]:
        """One HTTPS request verified against the server's own certificate; (status, JSON body)."""
        context = ssl.create_default_context(cafile=self.cert_path)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        token = base64.b64encode(f"{user}:{password or self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, text=True)
